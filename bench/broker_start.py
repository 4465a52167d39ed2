"""Embedded Kafka start-up: jar resolution, cold start (format + boot), warm restart.

Usage: python bench/broker_start.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.broker import EmbeddedBroker, KafkaJars
from streams.config import Settings


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        resolve = timed(lambda: KafkaJars(Path(tmp) / "cache").resolve())  # Maven, ~/.m2 warm
    cache = Settings.from_env().cache
    KafkaJars(cache).resolve()
    cold, warm, stop = [], [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            broker = EmbeddedBroker.on_free_ports(Path(tmp), cache)
            cold.append(timed(broker.start))
            stop.append(timed(broker.stop))
            warm.append(timed(broker.start))
            broker.stop()
    rows = [
        ("resolve jars with Maven (local repo warm)", [resolve]),
        ("cold start: format KRaft storage + boot to ready", cold),
        ("warm restart on an existing log dir", warm),
        ("controlled shutdown", stop),
    ]
    print(f"Apache Kafka {KafkaJars(cache).version}, single KRaft node, {args.repeats} repeats")
    print(f"{'step':<52}{'median s':>10}{'min s':>8}{'max s':>8}")
    for name, values in rows:
        print(f"{name:<52}{statistics.median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}")


if __name__ == "__main__":
    main()
