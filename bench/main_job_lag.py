"""Does the main job keep up? Consumer lag of each service while ``driftline run`` replays real data.

Runs ``driftline run --rate R --duration S --http-port P`` (default services forecast,ctr,rank on
their real data sets, a worker process per service; its home in a temp dir, its embedded broker on
free ports, a unique topic prefix), samples ``driftline_consumer_lag`` from /metrics of the job's one
HTTP port (every worker's series) every ``--interval`` seconds and keeps, per service, the summed lag
of the samples taken while that service's replay was still producing. Prints max and p99 of it and
whether it stayed under the target (200 events) throughout, then what explains it: per service the
applied events/s, the batches (count, events per batch, mean and p99 time from
``driftline_batch_seconds``) and the last online metrics, and each process's share of the CPU
(the job, its broker, each worker) from the first sample until the last replay ended: on 2 cores a
worker that keeps up needs what the others leave.

Usage: flock /tmp/driftline-bench.lock python bench/main_job_lag.py [--duration 300] [--rate 200]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, Samples, scrape, total
from bench.common import load as loadavg
from bench.machine import command_line, cpu_seconds, process_tree
from roles.main_job import CTR_REPLAY, FORECAST_REPLAY, RANK_REPLAY, stop_process
from streams.broker import free_ports

TARGET_LAG = 200
#: The label ``driftline run`` prints for each replay (``replayed N events of <label> at R/s``) -> service.
#: Whole labels: the ctr and rank replays both start "MovieLens-100K".
REPLAY_LABELS = {FORECAST_REPLAY: "forecast", CTR_REPLAY: "ctr", RANK_REPLAY: "rank"}


def replay_ended(line: str) -> str | None:
    """The service whose replay ``line`` (of the job's output) reports as done, else None."""
    found = re.search(r"replayed \d+ events of (.+) at [\d,.]+/s$", line.rstrip())
    return REPLAY_LABELS.get(found.group(1)) if found else None


class JobOutput:
    """Reads the main job's stdout: when the worker was ready and when each service's replay ended."""

    def __init__(self, process: subprocess.Popen[str], log: Path) -> None:
        self.ready_at: float | None = None
        self.replay_done: dict[str, float] = {}
        self.thread = threading.Thread(target=self._read, args=(process, log), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen[str], log: Path) -> None:
        assert process.stdout is not None
        log.parent.mkdir(parents=True, exist_ok=True)  # var/ is not in a fresh clone
        with open(log, "w") as out:
            for line in process.stdout:
                out.write(line)
                if "worker ready" in line and self.ready_at is None:
                    self.ready_at = time.monotonic()
                service = replay_ended(line)
                if service is not None:
                    self.replay_done[service] = time.monotonic()


def histogram_row(samples: Samples, service: str) -> str:
    """Batches, events per batch, mean and p99 (bucket upper bound) batch time (driftline_batch_seconds)."""
    count = total(samples, "driftline_batch_seconds_count", service=service)
    if not count:
        return "no batch applied"
    events = total(samples, "driftline_events_total", service=service)
    mean = total(samples, "driftline_batch_seconds_sum", service=service) / count
    buckets = sorted(
        (float(dict(ls)["le"]), v)
        for (n, ls), v in samples.items()
        if n == "driftline_batch_seconds_bucket" and dict(ls).get("service") == service
    )
    p99 = next(le for le, v in buckets if v >= 0.99 * count)
    return f"{int(count)} batches of {events / count:.0f} events, mean {mean * 1000:.0f} ms, p99 <= {p99:g} s"


def process_label(pid: int, root: int) -> str:
    """What a process of the job is: the job itself, its broker, or ``worker <services>``."""
    args = command_line(pid)
    if pid == root:
        return "driftline run"
    if any("kafka.Kafka" in a for a in args):
        return "broker"
    if "--services" in args:
        return f"worker {args[args.index('--services') + 1]}"
    return " ".join(args)[:40] or str(pid)


class CpuShares:
    """CPU seconds of every process of the job between the first :meth:`mark` and the last."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.labels: dict[int, str] = {}
        self.seconds = 0.0
        self._started: float | None = None

    def _read(self) -> dict[int, float]:
        seconds = {}
        for pid in process_tree(self.root):
            try:
                seconds[pid] = cpu_seconds(pid)
            except OSError:  # exited meanwhile
                continue
        return seconds

    def mark(self) -> None:
        now = time.monotonic()
        if self._started is None:
            self.first, self._started = self._read(), now
            self.labels = {pid: process_label(pid, self.root) for pid in self.first}
            return
        self.last.update(self._read())  # a worker stopped before the last mark keeps its last reading
        self.seconds = now - self._started

    def rows(self) -> list[str]:
        if not self.seconds:
            return []
        shares = sorted(
            ((self.labels.get(pid, str(pid)), (cpu - self.first.get(pid, 0.0)) / self.seconds)
             for pid, cpu in self.last.items()),
            key=lambda row: -row[1],
        )  # fmt: skip
        return [f"    {label:<22}{share:.2f}" for label, share in shares if share >= 0.005]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200.0, help="replay rate, events/s per data set")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds the main job runs")
    parser.add_argument("--services", default="forecast,ctr,rank")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between lag samples")
    parser.add_argument("--option", action="append", default=[], metavar="SERVICE.KEY=VALUE",
                        help="service option passed on to driftline run (repeatable)")  # fmt: skip
    args = parser.parse_args()
    services = args.services.split(",")
    kafka_port, controller_port, http_port = free_ports(3)
    tag = f"lag{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {
            **os.environ,
            "DRIFTLINE_KAFKA_PORT": str(kafka_port),
            "DRIFTLINE_CONTROLLER_PORT": str(controller_port),
            "DRIFTLINE_TOPIC_PREFIX": f"{tag}.",
            "DRIFTLINE_APP_ID": tag,
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("DRIFTLINE_BOOTSTRAP_SERVERS", None)  # the job's own embedded broker
        command = [
            sys.executable, "-m", "streams.cli", "--home", str(home), "run", "--rate", str(args.rate),
            "--duration", str(args.duration), "--http-port", str(http_port), "--services", args.services,
            *(f"--option={option}" for option in args.option),
        ]  # fmt: skip
        job = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        output = JobOutput(job, ROOT / "var" / f"main_job_lag-{tag}.log")
        base = f"http://127.0.0.1:{http_port}"
        lags: dict[str, list[float]] = {s: [] for s in services}
        cpu = CpuShares(job.pid)
        #: Per service, the last scrape holding its series (a worker stopping first has none).
        last: dict[str, Samples] = {s: {} for s in services}
        try:
            while job.poll() is None:
                time.sleep(args.interval)
                if output.ready_at is None:
                    continue
                try:
                    samples = scrape(base)
                except (urllib.error.URLError, OSError):
                    continue
                now = time.monotonic()
                if any(s not in output.replay_done for s in services):
                    cpu.mark()
                for service in services:
                    if not any(
                        n == "driftline_consumer_lag" and ("service", service) in ls for n, ls in samples
                    ):
                        continue  # its worker did not answer this scrape (it is stopping)
                    last[service] = samples
                    if service not in output.replay_done or now <= output.replay_done[service]:
                        lags[service].append(total(samples, "driftline_consumer_lag", service=service))
        finally:
            stop_process(job)  # type: ignore[arg-type]
            output.thread.join(5)
        print(f"driftline run --rate {args.rate:g} --duration {args.duration:g} ({args.services}; "
              f"options: {args.option or 'defaults'}); "
              f"lag sampled every {args.interval:g} s while each replay produced; {loadavg()}")  # fmt: skip
        print(f"{'service':<10}{'samples':>8}{'max lag':>9}{'p99 lag':>9}  < {TARGET_LAG} throughout")
        for service in services:
            values = np.array(lags[service])
            if not len(values):
                print(f"{service:<10}{0:>8}  no sample (the worker never became ready?)")
                continue
            ok = "yes" if values.max() < TARGET_LAG else "NO"
            print(f"{service:<10}{len(values):>8}{values.max():>9.0f}{np.percentile(values, 99):>9.0f}  {ok}")
        print("\nwhy (the workers' last /metrics before they stopped):")
        for service in services:
            applied = total(last[service], "driftline_events_total", service=service)
            dead = total(last[service], "driftline_dead_letters_total", service=service)
            online = {
                dict(ls)["metric"]: v
                for (n, ls), v in last[service].items()
                if n == "driftline_online_metric" and dict(ls)["service"] == service
            }
            shown = ", ".join(f"{k}={v:.4g}" for k, v in online.items())
            print(f"  {service}: applied {applied:.0f}, dead letters {dead:.0f}, "
                  f"{total(last[service], 'driftline_events_per_second', service=service):.0f} ev/s "
                  f"(10 s window); {histogram_row(last[service], service)}; online: {shown}")  # fmt: skip
            if lags[service] and max(lags[service]) >= TARGET_LAG:
                trace = " ".join(f"{v:.0f}" for v in lags[service])
                print(f"    {service} summed lag, every sample: {trace}")
        print(f"  CPU, cores, from the first sample until the last replay ended ({cpu.seconds:.0f} s):")
        print("\n".join(cpu.rows()))
        print(f"  main job log: var/main_job_lag-{tag}.log")


if __name__ == "__main__":
    main()
