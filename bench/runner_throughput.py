"""Stream engine figures (issues 8 and 10): throughput, scaling, checkpoint bytes, recovery, CTR overhead.

All on one embedded Kafka broker this script starts on free ports, with real ``driftline worker``
processes. Sections (``--sections``, default all):

  throughput  no-op ``tally`` worker draining a backlog of ``--events`` SYNTHETIC observations
              produced before it starts; events/s counted from the moment every worker applies
              events (group joined, partitions restored) until every event is applied, and steady
              state between 10% and 90%;
              the same backlog with 1, 2 and 3 workers (fresh consumer groups): events/s, speed-up
              and per-core efficiency (speed-up / min(workers, cores))
  checkpoint  checkpoint bytes per event, "before" (a checkpoint after every batch, as the first
              release did: DRIFTLINE_CHECKPOINT_EVENTS=1, DRIFTLINE_CHECKPOINT_INTERVAL_S=0; a lower
              bound, since the runner skips a checkpoint while the previous one is still writing) and
              "after" (the defaults), from ``driftline_checkpoint_bytes_total`` and
              ``driftline_events_total``, for tally (synthetic) and ctr (MovieLens-100K)
  ctr         CTR samples/s through Kafka (a ctr worker with default options draining
              ``--impressions`` MovieLens-100K impressions) against ``CtrService.process`` on the
              same impressions in batches of the same size in this process, run after run
              (``--repeats`` pairs, each Kafka drain in a fresh consumer group); the ratio per pair
              and the median. ``--before REV`` adds, in each repeat, a drain by a worker of git
              revision REV (its tree exported with ``git archive``; the checkout is not touched),
              so a change is compared with what it changes on the same broker, load and records;
              ``--ctr-option ctr.threads=1`` (repeatable) builds both sides' model with that option
  recovery    SIGKILL a tally worker mid-stream and restart it at once on the same port (same
              static member); seconds from restart to ``/ready`` and until applied events grow
  inprocess   ``CtrService.process`` alone, ``--repeats`` times, on the device the models pick
              (CUDA when present, else CPU; DRIFTLINE_DEVICE overrides): no broker starts, so it
              runs on a GPU machine that has no Java. Not part of the default sections.

Usage: python bench/runner_throughput.py [--events 1000000] [--impressions 50000] [--repeats 3]
       [--sections throughput,checkpoint,ctr,recovery] [--before REV] [--ctr-option ctr.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Worker,
    broker,
    exported,
    load,
    observations,
    produce,
    running,
    say,
    table,
    wait_for,
)
from streams.cli import parse_options
from streams.config import Settings, shared_data_dir
from streams.producer import send_all

BEFORE = {"DRIFTLINE_CHECKPOINT_EVENTS": "1", "DRIFTLINE_CHECKPOINT_INTERVAL_S": "0"}
CORES = os.cpu_count() or 1


def drain(workers: list[Worker], total: int) -> dict[str, float]:
    """Start tally ``workers`` on a backlog of ``total`` events and time them draining it.

    Counted from the moment every worker has applied events (the group joined, each member's
    partitions restored): events applied before it are subtracted, so the rate is the joined
    group's alone. Not from ``/ready``: a worker is ready only once it has caught up with what its
    topics held when it started, which here is the whole backlog.
    """
    with running(workers, wait=False):
        wait_for(lambda: all(w.applied() > 0 for w in workers), 300, "every worker applies events", 0.05)
        ready = time.monotonic()
        before = sum(w.applied() for w in workers)
        if before >= total:
            raise RuntimeError(
                f"the {total:,} events were applied before every worker was; use more --events"
            )
        marks: dict[float, float] = {}
        applied = before
        last_report = ready
        while applied < total:
            time.sleep(0.25)
            applied = sum(w.applied() for w in workers)
            now = time.monotonic()
            for share in (0.1, 0.9):
                if share not in marks and applied >= share * total:
                    marks[share] = now
            if now - last_report > 5:
                say(f"  {len(workers)} worker(s): {applied:,}/{total:,} applied")
                last_report = now
        seconds = time.monotonic() - ready
    span = marks[0.9] - marks[0.1]
    return {
        "before": before,
        "seconds": seconds,
        "rate": (total - before) / seconds,
        "steady": 0.8 * total / span if span > 0 else float("nan"),
    }


def wait_quiet(read: Callable[[], float], quiet_s: float, timeout_s: float = 120.0) -> None:
    """Return once ``read()`` has not changed for ``quiet_s`` seconds."""
    value, since, started = read(), time.monotonic(), time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() - started < timeout_s:
        time.sleep(0.5)
        now = read()
        if now != value:
            value, since = now, time.monotonic()


def throughput(bootstrap: str, tmp: Path, events: int, counts: list[int]) -> None:
    rows = []
    base: float | None = None
    for n in counts:
        say(f"throughput: {n} tally worker(s) draining {events:,} events")
        store = {"DRIFTLINE_CHECKPOINT_STORE": str(tmp / f"store-scale{n}")}
        workers = [
            Worker(bootstrap, tmp / f"scale{n}-w{i}", "tally", env=store, app_id=f"scale{n}")
            for i in range(n)
        ]
        got = drain(workers, events)
        base = base or got["rate"]
        speedup = got["rate"] / base
        efficiency = speedup / min(n, CORES)
        figures = [got["seconds"], got["rate"], got["steady"], speedup, efficiency]
        rows.append([n, events, int(got["before"]), *figures, load()])
    table(
        f"no-op tally worker(s), SYNTHETIC observations (30 series, 12 partitions), {CORES} cores",
        ["workers", "events", "applied before joined", "s joined->all", "events/s after joined",
         "steady 10-90% ev/s", "speed-up", "per-core eff.", "load after"],
        rows,
    )  # fmt: skip


def drain_rate(worker: Worker, service: str, total: int) -> float:
    """Events/s from the first applied events seen (the group has joined) until ``total`` are applied.

    ``/ready`` can answer only after a short backlog is gone, so the clock starts at the first
    ``driftline_events_total`` sample above zero and what was applied by then is not counted. It
    stops at the worker's own time of its last batch (``driftline_last_batch_timestamp_seconds``),
    so ``/metrics`` is read only twice a second while the worker drains.
    """
    wait_for(lambda: worker.applied(service) > 0, 300, f"{service} applies events", 0.05)
    first, started = worker.applied(service), time.time()
    wait_for(lambda: worker.applied(service) >= total, 900, f"{service} applies {total}", 0.5)
    finished = worker.metric("driftline_last_batch_timestamp_seconds", service=service)
    return (total - first) / (finished - started) if total > first else float("nan")


def policy_run(
    bootstrap: str,
    tmp: Path,
    service: str,
    policy: str,
    total: int,
    tag: str = "",
    tree: Path | None = None,
    options: Sequence[str] = (),
) -> list[object]:
    """One worker of ``service`` with ``policy`` draining ``total`` events; its checkpoint figures.

    ``tag`` makes the worker's consumer group (and checkpoint store) a fresh one; ``tree`` runs
    the worker from that source tree (:func:`exported`) instead of this checkout; ``options`` are
    its ``--option`` values."""
    before = policy.startswith("before")
    name = f"{service}-{'before' if before else 'after'}{tag}"
    env = {**(BEFORE if before else {}), "DRIFTLINE_CHECKPOINT_STORE": str(tmp / f"store-{name}")}
    say(f"checkpoint bytes: {service}, {policy}{f', worker from {tree.name}' if tree else ''}")
    worker = Worker(bootstrap, tmp / name, service, options, env=env, app_id=name)
    if tree is not None:  # ``python -m`` imports from the working directory first
        worker.command = ["env", "-C", str(tree), *worker.command]
        worker.env = {**worker.env, "DRIFTLINE_DATA_DIR": str(shared_data_dir())}
    with running([worker], wait=False):
        rate = drain_rate(worker, service, total)
        # The last checkpoint is written in the background (before), or when the interval comes
        # round as in a steady stream (after): read once checkpoints have stopped for that long.
        quiet_s = 2.0 if before else float(Settings.from_env().checkpoint_interval_s) + 2.0
        wait_quiet(lambda: worker.metric("driftline_checkpoint_bytes_total", service=service), quiet_s)
        written = worker.metric("driftline_checkpoint_bytes_total", service=service)
        applied = worker.metric("driftline_events_total", service=service)
    return [service, policy, int(applied), int(written), written / applied, rate, load()]


def checkpoint_bytes(bootstrap: str, tmp: Path, events: int, impressions: int) -> None:
    rows = [
        policy_run(bootstrap, tmp, service, policy, total)
        for service, total in (("tally", events), ("ctr", impressions))
        for policy in ("before: every batch", "after: defaults")
    ]
    table(
        "checkpoint bytes per event (tally: SYNTHETIC observations; ctr: MovieLens-100K impressions)",
        ["service", "policy", "events", "checkpoint bytes", "bytes/event", "drain ev/s", "load after"],
        rows,
    )


def ctr_ratio(
    bootstrap: str,
    tmp: Path,
    records: list,
    repeats: int,
    before: str | None = None,
    options: Sequence[str] = (),
) -> None:
    """CTR samples/s through Kafka and in process, one after the other, ``repeats`` times; with
    ``before``, also through Kafka by a worker of that git revision, in the same repeat. Both
    sides build the model from the same ``ctr.KEY=VALUE`` ``options``."""
    tree = exported(before, tmp / f"tree-{before}") if before else None
    rows: list[list[object]] = []
    for attempt in range(1, repeats + 1):
        kafka = [
            policy_run(
                bootstrap, tmp, "ctr", "after: defaults", len(records), f"run{attempt}-{i}", source, options
            )
            for i, source in enumerate([None, tree] if tree else [None])
        ]
        in_process = ctr_in_process(tmp / f"run{attempt}", records, options)
        row: list[object] = [attempt, in_process, load()]
        for drain in kafka:
            rate = float(drain[5])  # type: ignore[arg-type]
            row += [rate, drain[6], rate / in_process]
        rows.append(row)
    medians = [statistics.median(float(r[i]) for r in rows) for i in range(5, len(rows[0]), 3)]  # type: ignore[arg-type]
    rows.append(["median", "", "", *itertools.chain.from_iterable(("", "", m) for m in medians)])
    drains = ["through Kafka: worker drain", "load", "ratio"]
    if before:
        drains += [f"through Kafka: worker of {before}", "load", f"ratio of {before}"]
    table(
        f"CTR samples/s, {len(records):,} MovieLens-100K impressions, "
        f"{' '.join(options) or 'default ctr options'} "
        f"(DeepFM, batch 4096), CPU, {CORES} cores",
        ["run", "in process: CtrService.process", "load", *drains],
        rows,
    )


def ctr_in_process(tmp: Path, records: list, options: Sequence[str] = ()) -> float:
    """``CtrService.process`` on the worker's batches (``ctr.KEY=VALUE`` ``options``, else the
    defaults), samples/s.

    The first batch (lazy initialisation, first published version) is not timed, as the Kafka
    drain's clock also starts after the first applied batch. What this process holds (the parsed
    impressions, imports, the model) is frozen out of the garbage collector's scans, as the
    worker freezes its start-up heap: the collector's work on this bench's own objects is no
    part of the model's speed.
    """
    from models.ctr.service import build_service
    from streams.topics import topic_name

    os.environ["DRIFTLINE_CHECKPOINT_STORE"] = str(tmp / "store-inprocess")
    service = build_service(tmp / "inprocess" / "ctr", **parse_options(options).get("ctr", {}))
    gc.collect()
    gc.freeze()
    size = service.batch_size
    say(f"ctr in process: {len(records):,} impressions in batches of {size}")

    def train() -> float:
        started = 0.0
        for start in range(0, len(records), size):
            with service.lock:
                service.process(topic_name("impressions"), records[start : start + size])
            started = started or time.perf_counter()
        return (len(records) - size) / (time.perf_counter() - started)

    # In a thread of its own, as the worker trains: this bench's main thread trained at 2.3-2.8k
    # samples/s where a thread of the same process did 14-21k (measured, 2 cores, load 3-5).
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(train).result()


def ctr_on_device(impressions: int, repeats: int) -> None:
    """The in-process CTR rows alone, with the device's name: the GPU rows of issue 9."""
    import tempfile

    from models.ctr.movielens import iter_impressions
    from models.device import default_device

    device = default_device()
    name = torch_device_name(device)
    records = list(itertools.islice(iter_impressions(), impressions))
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(1, repeats + 1):
            rows.append([attempt, ctr_in_process(Path(tmp) / f"run{attempt}", records), load()])
    rates = [float(r[1]) for r in rows]  # type: ignore[arg-type]
    rows.append(["median", statistics.median(rates), ""])
    table(
        f"CTR samples/s in process, {len(records):,} MovieLens-100K impressions, default ctr options, "
        f"{name}, {CORES} cores",
        ["run", "CtrService.process", "load"],
        rows,
    )


def torch_device_name(device: object) -> str:
    """``NVIDIA H200`` for a CUDA device, ``CPU`` otherwise."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.get_device_name(device)  # type: ignore[arg-type]
    return "CPU"


#: INFO log lines of the worker that mark each part of a restart (streams/consumer.py), in order;
#: before them, the first line the new process logs comes right after its imports.
PHASES = {
    "connected": "connected; joining group",
    "assigned": "partition(s); restoring",
    "restored": "to replay before serving",
    "caught up": "caught up; ready",
}


def restart_parts(log_text: str, since: float) -> dict[str, float]:
    """Seconds from ``since`` (wall clock) to the new process's first log line and to each phase."""
    found: dict[str, float] = {}
    for line in log_text.splitlines():
        try:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if stamp < since:
            continue
        found.setdefault("first log line", stamp - since)
        for phase, marker in PHASES.items():
            if marker in line:
                found.setdefault(phase, stamp - since)
    return found


def recovery(bootstrap: str, tmp: Path, kills: int, rate: float = 5_000.0) -> None:
    """Kill -9 and restart a tally worker while a paced SYNTHETIC stream keeps arriving.

    Each restart is split into its parts from the worker's INFO log: process start and imports
    (to its first log line), topic check, services, producer, HTTP and consumer start (to
    "connected"), the group join (to "assigned"), the checkpoint load (to "restored") and the
    replay of the backlog (to "caught up")."""
    env = {"DRIFTLINE_CHECKPOINT_STORE": str(tmp / "store-recovery"), "DRIFTLINE_LOGLEVEL": "info"}
    worker = Worker(bootstrap, tmp / "recovery", "tally", env=env, app_id="recovery")
    stop = threading.Event()
    stream = threading.Thread(target=_stream, args=(bootstrap, rate, stop), daemon=True)
    rows = []
    with running([worker]):
        stream.start()
        try:
            for attempt in range(1, kills + 1):
                wait_for(lambda: worker.applied() > 0, 60, "the worker applies the stream", 0.1)
                time.sleep(3.0)  # mid-stream: applied events not yet checkpointed
                worker.kill()
                restarted, wall = time.monotonic(), time.time()
                worker.start(wait=False)
                worker.wait_ready()
                to_ready = time.monotonic() - restarted
                wait_for(lambda: worker.applied() > 0, 120, "applied events grow", 0.05)
                to_apply = time.monotonic() - restarted
                parts = restart_parts((worker.home / "worker.log").read_text(errors="replace"), wall)
                say(f"recovery {attempt}: ready {to_ready:.2f}s, applying {to_apply:.2f}s, parts {parts}")
                marks = [parts.get(p, float("nan")) for p in ("first log line", *PHASES)]
                rows.append([attempt, *marks, to_ready, to_apply, load()])
        finally:
            stop.set()
            stream.join()
    medians = [statistics.median(float(r[i]) for r in rows) for i in range(1, 8)]  # type: ignore[arg-type]
    rows.append(["median", *medians, load()])
    table(
        f"recovery after kill -9 and immediate restart (same static member), tally, "
        f"SYNTHETIC stream at {rate:,.0f} events/s; seconds from the restart",
        ["kill", "imports (1st log)", "connected", "assigned (joined)", "restored", "caught up",
         "/ready", "applied events grow", "load"],
        rows,
    )  # fmt: skip


def _stream(bootstrap: str, rate: float, stop: threading.Event) -> None:
    """Send SYNTHETIC observations at ``rate`` per second until ``stop`` is set."""
    from streams.producer import make_producer

    producer = make_producer(bootstrap)
    try:
        for round_ in itertools.count():
            if stop.is_set():
                return
            send_all(
                producer,
                "observations",
                observations(int(rate), seed=100 + round_),
                rate=rate,
                progress=False,
            )
    finally:
        producer.close()


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="synthetic observations in the backlog")
    parser.add_argument("--impressions", type=int, default=50_000, help="MovieLens impressions for ctr")
    parser.add_argument("--workers", default="1,2,3", help="worker counts for the scaling runs")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="Kafka / in-process pairs for ctr")
    parser.add_argument("--sections", default="throughput,checkpoint,ctr,recovery")
    parser.add_argument("--before", metavar="REV", help="ctr: also drain with a worker of this git revision")
    parser.add_argument(
        "--ctr-option",
        action="append",
        default=[],
        metavar="ctr.KEY=VALUE",
        help="ctr: build both sides' model with this worker option (repeatable), e.g. ctr.threads=1",
    )
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    if "inprocess" in sections:
        ctr_on_device(args.impressions, args.repeats)
        sections.discard("inprocess")
    if not sections:
        return
    print(f"stream engine bench, Kafka embedded, {CORES} cores, start {load()}")
    with broker(partitions=12) as (node, tmp):
        if sections & {"throughput", "checkpoint"}:
            say(f"producing {args.events:,} SYNTHETIC observations before any worker starts")
            seconds = produce(node.bootstrap, "observations", observations(args.events))
            rate = args.events / seconds
            print(
                f"produced {args.events:,} SYNTHETIC observations in {seconds:.1f}s ({rate:,.0f}/s)", load()
            )
        if "throughput" in sections:
            throughput(node.bootstrap, tmp, args.events, [int(n) for n in args.workers.split(",")])
        if sections & {"checkpoint", "ctr"}:
            from models.ctr.movielens import iter_impressions

            records = list(itertools.islice(iter_impressions(), args.impressions))
            say(f"producing {len(records):,} MovieLens impressions")
            produce(node.bootstrap, "impressions", records)
            if "checkpoint" in sections:
                checkpoint_bytes(node.bootstrap, tmp, args.events, len(records))
            if "ctr" in sections:
                ctr_ratio(node.bootstrap, tmp, records, args.repeats, args.before, args.ctr_option)
        if "recovery" in sections:
            recovery(node.bootstrap, tmp, args.kills)


if __name__ == "__main__":
    main()
