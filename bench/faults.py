"""Fault scenarios against real ``driftline worker`` processes (issue 10): pass/fail and figures.

Each scenario starts its own embedded broker on free ports and replays SYNTHETIC observations
to ``tally`` workers, whose per-series counts must equal what was produced at the end:

  outage   the broker stopped ``--outage-s`` seconds mid-stream and started again on the same
           ports and log dir: ``/health`` answers 200 with status ``degraded`` meanwhile, the
           worker reconnects by itself, tallies exact
  storm    3 workers sharing a checkpoint store; a random one is killed -9 and restarted at once
           ``--kills`` times during a 50,000-event replay: tallies exact (asked of any worker, it
           proxies), dead-letter topic empty, every worker owns partitions at the end
  corrupt  the newest checkpoint of every shard truncated or overwritten: the worker falls back
           to the previous version and replays the difference, tallies exact
  diskfull the ``disk-full`` switch of ``DRIFTLINE_FAULT_DIR`` on: ``/health`` degraded with the
           reason, no offsets committed meanwhile, back to ok once removed, tallies exact

Usage: python bench/faults.py [--scenarios outage,storm,corrupt,diskfull]
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Worker,
    broker,
    committed,
    load,
    observations,
    produce,
    running,
    say,
    table,
    tallies_exact,
    wait_for,
)
from streams.tally import expected_counts
from streams.topics import topic_name


@dataclass
class Outcome:
    """One scenario's verdict: every check by name, and the figures measured on the way."""

    name: str
    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


def outage(outage_s: float) -> Outcome:
    result = Outcome("broker stopped mid-stream")
    with broker() as (node, tmp):
        worker = Worker(node.bootstrap, tmp / "w", "tally", options=["tally.emit=true"], app_id="outage")
        first = observations(20_000, seed=1)
        with running([worker]):
            produce(node.bootstrap, "observations", first, progress=False)
            wait_for(lambda: worker.applied() >= len(first), 120, "the first half applied")
            say(f"outage: stopping the broker for {outage_s:.0f}s")
            node.stop()
            stopped = time.monotonic()
            samples: list[tuple[float, int, str, str]] = []
            while time.monotonic() - stopped < outage_s:
                code, body = worker.json("/health")
                problems = "; ".join(body.get("problems", []))
                samples.append((time.monotonic() - stopped, code, body.get("status", "-"), problems))
                time.sleep(1.0)
            say("outage: starting the broker again")
            node.start(timeout=180)
            restarted = time.monotonic()
            second = observations(10_000, seed=2, start=len(first))
            produce(node.bootstrap, "observations", second, progress=False)
            wrong = tallies_exact(worker, expected_counts(first + second), timeout_s=180)
            caught_up_s = time.monotonic() - restarted
            code, body = worker.json("/health")
        late = [s for s in samples if s[0] >= 10.0]
        result.checks["/health answered 200 throughout"] = all(s[1] == 200 for s in samples)
        result.checks["status degraded from 10 s into the outage on"] = bool(late) and all(
            s[2] == "degraded" for s in late
        )
        result.checks["tallies exact after reconnecting"] = not wrong
        result.checks["status ok again afterwards"] = code == 200 and body.get("status") == "ok"
        degraded = [s for s in samples if s[2] == "degraded"]
        result.figures["first degraded after s"] = round(degraded[0][0], 1) if degraded else "never"
        result.figures["health samples (200 / total)"] = f"{sum(s[1] == 200 for s in samples)}/{len(samples)}"
        result.figures["statuses seen"] = sorted({s[2] for s in samples})
        result.figures["reason given"] = next((s[3] for s in reversed(samples) if s[3]), "none")
        result.figures["s from broker start to tallies exact"] = round(caught_up_s, 1)
        result.figures["mismatched series"] = len(wrong)
    return result


def storm(kills: int, events: int, seed: int) -> Outcome:
    result = Outcome(f"restart storm: {kills} x kill -9 of 3 workers")
    rng = random.Random(seed)
    with broker() as (node, tmp):
        store = {"DRIFTLINE_CHECKPOINT_STORE": str(tmp / "store")}
        workers = [
            Worker(node.bootstrap, tmp / f"w{i}", "tally", env=store, app_id="storm") for i in range(3)
        ]
        records = observations(events, seed=3)
        with running(workers):
            rate = events / (kills * 2.5)
            sender = threading.Thread(target=_paced, args=(node.bootstrap, records, rate))
            sender.start()
            victims = []
            for _ in range(kills):
                time.sleep(2.5)
                victim = rng.randrange(len(workers))
                workers[victim].kill()
                workers[victim].start(wait=False)
                victims.append(victim)
                say(f"storm: killed and restarted w{victim}")
            sender.join()
            for worker in workers:
                worker.wait_ready()
            started = time.monotonic()
            wrong = tallies_exact(workers[rng.randrange(3)], expected_counts(records), timeout_s=180)
            exact_s = time.monotonic() - started
            try:
                spread_s = wait_for(lambda: all(w.partitions() for w in workers), 90, "every worker owns")
            except TimeoutError:
                spread_s = float("nan")
            owned = [len(w.partitions()) for w in workers]
        dead = _topic_size(node.bootstrap, topic_name("dead-letter"))
        result.checks["tallies exact"] = not wrong
        result.checks["dead-letter topic empty"] = dead == 0
        result.checks["no worker without partitions"] = all(owned) and sum(owned) == 12
        result.figures["victims"] = "".join(str(v) for v in victims)
        result.figures["s from last restart to tallies exact"] = round(exact_s, 1)
        result.figures["partitions per worker at the end"] = owned
        result.figures["s until every worker owns some"] = round(spread_s, 1)
        result.figures["dead letters"] = dead
        result.figures["mismatched series"] = len(wrong)
    return result


def corrupt() -> Outcome:
    result = Outcome("newest checkpoint truncated / corrupted")
    with broker() as (node, tmp):
        store = tmp / "store"
        env = {"DRIFTLINE_CHECKPOINT_STORE": str(store), "DRIFTLINE_CHECKPOINT_INTERVAL_S": "0.5"}
        worker = Worker(node.bootstrap, tmp / "w", "tally", env=env, app_id="corrupt")
        records: list = []
        with running([worker]):
            for round_ in range(4):  # several checkpoint versions per shard
                chunk = observations(5_000, seed=10 + round_, start=len(records))
                produce(node.bootstrap, "observations", chunk, progress=False)
                records += chunk
                total = len(records)
                wait_for(lambda: worker.applied() >= total, 120, "chunk applied")  # noqa: B023
                time.sleep(1.5)
        damaged = damage_newest(store / "worker-tally")
        later = observations(5_000, seed=20, start=len(records))
        produce(node.bootstrap, "observations", later, progress=False)
        records += later
        with running([worker]):
            wrong = tallies_exact(worker, expected_counts(records), timeout_s=120)
        fallbacks = worker.log_tail(10**7).count("falling back to the previous version")
        result.checks["every damaged shard fell back to the previous version"] = fallbacks >= len(damaged)
        result.checks["tallies exact after replay"] = not wrong
        kinds = list(damaged.values())
        result.figures["shards damaged (truncated, garbage)"] = (
            f"{kinds.count('truncated')}, {kinds.count('garbage')}"
        )
        result.figures["fall-backs logged"] = fallbacks
        result.figures["mismatched series"] = len(wrong)
    return result


def _committed(bootstrap: str) -> int:
    """Events below the disk-full scenario's committed offsets."""
    return committed(bootstrap, "diskfull.tally", topic_name("observations"))


def diskfull() -> Outcome:
    result = Outcome("checkpoint disk full")
    with broker() as (node, tmp):
        switches = tmp / "faults"
        switches.mkdir()
        env = {"DRIFTLINE_FAULT_DIR": str(switches), "DRIFTLINE_CHECKPOINT_INTERVAL_S": "1"}
        worker = Worker(node.bootstrap, tmp / "w", "tally", env=env, app_id="diskfull")
        first = observations(10_000, seed=4)
        second = observations(10_000, seed=5, start=len(first))
        with running([worker]):
            produce(node.bootstrap, "observations", first, progress=False)
            wait_for(
                lambda: _committed(node.bootstrap) == len(first),
                60,
                "offsets committed",
            )
            (switches / "disk-full").touch()
            full = time.monotonic()
            produce(node.bootstrap, "observations", second, progress=False)
            wait_for(lambda: worker.applied() >= len(first) + len(second), 60, "the second half applied")
            degraded_s = _until_status(worker, "degraded", 30)
            _, body = worker.json("/health")
            committed_then = _committed(node.bootstrap)
            time.sleep(5.0)
            committed_later = _committed(node.bootstrap)
            (switches / "disk-full").unlink()
            cleared = time.monotonic()
            ok_s = _until_status(worker, "ok", 30)
            try:
                commit_s = wait_for(
                    lambda: _committed(node.bootstrap) == len(first) + len(second),
                    30,
                    "offsets committed",
                )
            except TimeoutError:
                commit_s = float("nan")
            wrong = tallies_exact(worker, expected_counts(first + second), timeout_s=60)
        result.checks["/health degraded with the reason"] = degraded_s is not None and any(
            "No space left" in p for p in body.get("problems", [])
        )
        result.checks["no offsets committed while full"] = committed_then == committed_later == len(first)
        result.checks["ok again once the switch is removed"] = ok_s is not None
        result.checks["offsets committed again"] = commit_s == commit_s  # not NaN
        result.checks["tallies exact"] = not wrong
        result.figures["s from switch on to degraded"] = _round(degraded_s, full)
        result.figures["reason given"] = "; ".join(body.get("problems", []))
        result.figures["committed offsets: before / while full"] = f"{len(first)} / {committed_later}"
        result.figures["s from switch off to ok"] = _round(ok_s, cleared)
        result.figures["s from switch off to all committed"] = round(commit_s, 1)
        result.figures["mismatched series"] = len(wrong)
    return result


# -- helpers -----------------------------------------------------------------------------------
def _paced(bootstrap: str, records: list, rate: float) -> None:
    from streams.producer import make_producer, send_all

    producer = make_producer(bootstrap)
    try:
        send_all(producer, "observations", records, rate=rate, progress=False)
    finally:
        producer.close()


def _topic_size(bootstrap: str, topic: str) -> int:
    """Records ever written to ``topic`` (sum of end offsets over its partitions)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def _until_status(worker: Worker, status: str, timeout_s: float) -> float | None:
    """Monotonic time when ``/health`` first says ``status``, or None if it does not in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code, body = worker.json("/health")
        if code == 200 and body.get("status") == status:
            return time.monotonic()
        time.sleep(0.2)
    return None


def _round(at: float | None, since: float) -> object:
    return "never" if at is None else round(at - since, 1)


def damage_newest(service_dir: Path) -> dict[str, str]:
    """Truncate (even shards) or overwrite with garbage (odd) each shard's CURRENT version."""
    damaged: dict[str, str] = {}
    for index, shard in enumerate(sorted(p for p in service_dir.iterdir() if (p / "CURRENT").exists())):
        state = shard / f"v{int((shard / 'CURRENT').read_text()):06d}" / "state.pt"
        payload = state.read_bytes()
        if index % 2 == 0:
            state.write_bytes(payload[: len(payload) // 2])
            damaged[shard.name] = "truncated"
        else:
            state.write_bytes(b"\x00garbage" * (len(payload) // 8 + 1))
            damaged[shard.name] = "garbage"
    return damaged


SCENARIOS: dict[str, Callable[[argparse.Namespace], Outcome]] = {
    "outage": lambda a: outage(a.outage_s),
    "storm": lambda a: storm(a.kills, a.events, a.seed),
    "corrupt": lambda a: corrupt(),
    "diskfull": lambda a: diskfull(),
}


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    print(f"fault scenarios, tally workers, SYNTHETIC observations, start {load()}")
    verdicts = []
    for name in args.scenarios.split(","):
        say(f"scenario {name}")
        outcome = SCENARIOS[name](args)
        rows = [[check, "pass" if ok else "FAIL"] for check, ok in outcome.checks.items()]
        rows += [[figure, str(value)] for figure, value in outcome.figures.items()]
        table(f"{outcome.name}: {'PASS' if outcome.passed else 'FAIL'}", ["check / figure", "result"], rows)
        verdicts.append([outcome.name, "PASS" if outcome.passed else "FAIL"])
    table("summary", ["scenario", "verdict"], verdicts)
    sys.exit(0 if all(v[1] == "PASS" for v in verdicts) else 1)


if __name__ == "__main__":
    main()
