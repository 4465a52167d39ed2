"""Helpers the stream benches share: an embedded broker, role processes, metrics and exact tallies.

Every bench starts its own broker on free ports and its own ``driftline worker`` / ``driftline
serve`` processes (the same code paths as a deployment), so it measures the real path (Kafka,
aiokafka, HTTP) and never touches another run's topics: a bench that runs several setups on one
broker gives each its own topic prefix and app id.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.machine import load  # noqa: E402  (the benches import it from here too)
from roles.main_job import stop_process, wait_http  # noqa: E402
from streams.broker import EmbeddedBroker, free_port  # noqa: E402
from streams.client import get_json  # noqa: E402
from streams.config import Settings  # noqa: E402
from streams.producer import make_producer, send_all  # noqa: E402
from streams.schemas import Observation, Record  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402

PREFIX = "bench."

#: A metric sample: (name, sorted label pairs) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def say(message: str) -> None:
    """Progress on stderr, so the tables on stdout stay clean."""
    print(f"[{time.strftime('%H:%M:%S')}] {message} ({load()})", file=sys.stderr, flush=True)


def exported(rev: str, into: Path) -> Path:
    """The source tree of git revision ``rev`` under ``into`` (``git archive``: no checkout changes),
    for a bench to run an older revision beside the working tree."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


@contextlib.contextmanager
def broker(partitions: int = 12) -> Iterator[tuple[EmbeddedBroker, Path]]:
    """A fresh embedded broker with the project's topics, and a scratch directory beside it."""
    with tempfile.TemporaryDirectory(prefix="driftline-bench-") as tmp:
        node = EmbeddedBroker.on_free_ports(Path(tmp) / "kafka", Settings.from_env().cache)
        say("starting the embedded broker")
        node.start(timeout=180)
        try:
            os.environ["DRIFTLINE_TOPIC_PREFIX"] = PREFIX  # topic_name() in this process
            ensure_topics(node.bootstrap, partitions=partitions)
            yield node, Path(tmp)
        finally:
            node.stop()


class Worker:
    """One ``driftline worker`` (or, with ``command="serve"``, serving replica) process on a fixed
    HTTP port: a restart is the same static member. ``cpus`` pins it with ``taskset -c``."""

    def __init__(
        self,
        bootstrap: str,
        home: Path,
        services: str,
        options: Sequence[str] = (),
        env: dict[str, str] | None = None,
        app_id: str = "bench",
        command: str = "worker",
        prefix: str = PREFIX,
        cpus: str | None = None,
    ) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "streams.cli", "--home", str(home), command,
            "--services", services, "--http-port", str(self.port),
        ]  # fmt: skip
        for option in options:
            self.command += ["--option", option]
        if cpus is not None:
            self.command = ["taskset", "-c", cpus, *self.command]
        self.env = {
            **os.environ,
            "DRIFTLINE_BOOTSTRAP_SERVERS": bootstrap,
            "DRIFTLINE_TOPIC_PREFIX": prefix,
            "DRIFTLINE_APP_ID": app_id,
            "DRIFTLINE_DEVICE": "cpu",
            **(env or {}),
        }
        self.log = home / f"{command}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Worker:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        wait_http(f"{self.base}/ready", timeout_s=timeout_s, process=self.process)

    def kill(self) -> None:
        """SIGKILL: no final checkpoint, no commit, no leave-group."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process)

    def json(self, path: str) -> tuple[int, dict]:
        """GET ``path``; (0, {}) while the process is not listening."""
        try:
            return get_json(f"{self.base}{path}")
        except (OSError, ValueError):
            return 0, {}

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` carrying ``labels`` on ``/metrics`` (0 if absent)."""
        return total(scrape(self.base), name, **labels)

    def applied(self, service: str = "tally") -> int:
        try:
            return int(self.metric("driftline_events_total", service=service))
        except OSError:
            return 0

    def partitions(self, service: str = "tally") -> list[str]:
        status, body = self.json("/health")
        return body["services"][service]["partitions"] if status == 200 else []

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def start_role(
    command: str,
    services: str,
    home: Path,
    bootstrap: str,
    prefix: str,
    options: Sequence[str] = (),
    cpus: str | None = None,
    env: dict[str, str] | None = None,
) -> Worker:
    """Start ``driftline <command> --services <services>`` under its own topic prefix and app id,
    without waiting (start several, then :func:`wait_ready` each)."""
    app_id = f"bench-{prefix.strip('.')}"
    return Worker(bootstrap, home, services, options, env, app_id, command, prefix, cpus).start(wait=False)


def wait_ready(worker: Worker, timeout_s: float = 180.0) -> None:
    """Wait until ``worker`` answers ``/ready`` (fails early if its process died)."""
    worker.wait_ready(timeout_s)


def scrape(base: str, timeout_s: float = 30.0) -> Samples:
    """Every sample of ``base``/metrics (long timeout: a busy worker can stall its loop for seconds)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=timeout_s) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


@contextlib.contextmanager
def running(workers: list[Worker], wait: bool = True) -> Iterator[list[Worker]]:
    """Start ``workers`` (all at once, then wait for each), stop them whatever happens."""
    try:
        for worker in workers:
            worker.start(wait=False)
        if wait:
            for worker in workers:
                worker.wait_ready()
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> float:
    """Seconds until ``predicate`` holds; raise if it does not within ``timeout_s``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - started


def observations(n: int, series: int = 30, seed: int = 0, start: int = 0) -> list[Observation]:
    """Synthetic observations (seeded): ``series`` keys, one value each, timestamps ``start..``."""
    rng = random.Random(seed)
    return [
        Observation(
            series=f"k{rng.randrange(series)}", ts=float(start + i), values=[round(rng.uniform(-5, 5), 3)]
        )
        for i in range(n)
    ]


def produce(bootstrap: str, topic: str, records: list[Record], progress: bool = True) -> float:
    """Send ``records`` in order and flush; return the seconds it took."""
    producer = make_producer(bootstrap)
    try:
        return send_all(producer, topic, records, total=len(records), progress=progress).seconds
    finally:
        producer.close()


def committed(bootstrap: str, group: str, topic: str) -> int:
    """Sum of ``group``'s committed offsets over ``topic``'s partitions (0 where none)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in partitions)
    finally:
        consumer.close()


def tally_mismatches(worker: Worker, want: dict[str, tuple[int, float]]) -> list[str]:
    """Series whose ``/tally/{series}`` (proxied to the owner) differs from ``want``."""
    wrong = []
    for series, (count, total) in sorted(want.items()):
        status, body = worker.json(f"/tally/{series}")
        if status != 200 or body["count"] != count or abs(body["sum"] - total) > 1e-6:
            wrong.append(f"{series}: want {count}, got {body.get('count') if status == 200 else status}")
    return wrong


def tallies_exact(worker: Worker, want: dict[str, tuple[int, float]], timeout_s: float = 120.0) -> list[str]:
    """Wait until every tally is exact (empty list) or the timeout passes (the mismatches)."""
    deadline = time.monotonic() + timeout_s
    while True:
        wrong = tally_mismatches(worker, want)
        if not wrong or time.monotonic() > deadline:
            return wrong
        time.sleep(0.5)


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    """Print a fixed-width table with the load average under its title."""
    print(f"\n{title}  [{load()}]")
    cells = [[str(h) for h in header], *([_fmt(v) for v in row] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    for line in cells:
        padded = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        print("  ".join(padded))
    sys.stdout.flush()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
