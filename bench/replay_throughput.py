"""Replay throughput: CLI -> Kafka, and Kafka -> no-op (tally) worker, on the embedded broker.

The replay is the real ETTh2 series (17,420 rows x 7 channels) sent ``--rounds`` times with
``driftline replay``; the worker then drains the backlog with micro-batches of each size in
``--batch-sizes`` (a fresh consumer group per size), and we time until every event is applied.

Usage: python bench/replay_throughput.py [--rounds 3] [--batch-sizes 100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from roles.main_job import stop_process, wait_http  # noqa: E402
from streams.broker import EmbeddedBroker, free_port  # noqa: E402
from streams.config import Settings, shared_data_dir  # noqa: E402


def applied(base: str) -> int:
    with urllib.request.urlopen(f"{base}/tally", timeout=5) as answer:
        return int(json.loads(answer.read())["events"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="times the ETTh2 file is replayed")
    parser.add_argument("--batch-sizes", default="100,1000")
    args = parser.parse_args()
    csv_path = shared_data_dir() / "timeseries" / "ETTh2.csv"
    cli = [sys.executable, "-m", "streams.cli"]

    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker.on_free_ports(Path(tmp) / "kafka", Settings.from_env().cache)
        broker.start()
        env = {
            **os.environ,
            "DRIFTLINE_BOOTSTRAP_SERVERS": broker.bootstrap,
            "DRIFTLINE_TOPIC_PREFIX": "bench.",
        }
        rows = []
        try:
            subprocess.run([*cli, "topics"], env=env, check=True, capture_output=True)
            total = 0
            for _ in range(args.rounds):
                started = time.perf_counter()
                out = subprocess.run(
                    [*cli, "replay", str(csv_path), "--topic", "observations", "--quiet"],
                    env=env, check=True, capture_output=True, text=True,
                ).stdout  # fmt: skip
                wall = time.perf_counter() - started
                sent, seconds = re.search(r"replayed (\d+) events in ([\d.]+)s", out).groups()
                total += int(sent)
                rows.append(("CLI replay -> Kafka (send+flush)", int(sent), float(seconds)))
                rows.append(("  same, whole CLI process", int(sent), wall))
            for size in [int(s) for s in args.batch_sizes.split(",")]:
                port = free_port()
                home = Path(tmp) / f"worker-{size}"
                home.mkdir()
                worker_env = {**env, "DRIFTLINE_APP_ID": f"bench-{size}"}
                command = [*cli, "--home", str(home), "worker", "--services", "tally",
                           "--http-port", str(port), "--option", f"tally.batch_size={size}"]  # fmt: skip
                with open(home / "worker.log", "wb") as log:
                    worker = subprocess.Popen(command, env=worker_env, stdout=log, stderr=subprocess.STDOUT)
                base = f"http://127.0.0.1:{port}"
                try:
                    wait_http(f"{base}/health", process=worker)
                    started = time.perf_counter()
                    while applied(base) < total:
                        time.sleep(0.05)
                    rows.append(
                        (f"Kafka -> no-op worker, batch {size}", total, time.perf_counter() - started)
                    )
                finally:
                    stop_process(worker)
        finally:
            broker.stop()

    print(f"ETTh2 replay ({args.rounds} x 17,420 events), Kafka 4.1.1 embedded, {os.cpu_count()} CPUs")
    print(f"{'stage':<40}{'events':>9}{'seconds':>9}{'events/s':>11}")
    for name, events, seconds in rows:
        print(f"{name:<40}{events:>9}{seconds:>9.2f}{events / seconds:>11,.0f}")


if __name__ == "__main__":
    main()
