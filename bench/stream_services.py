"""Each model service end to end through Kafka on this machine: events/s and query latency.

For every service: a fresh worker consumes a replay of its real data set from the embedded
broker; we time from the first event sent until the worker has applied (or dead-lettered) all of
them, and meanwhile load its query route from concurrent clients (latency while it trains), then
load the route again once it is idle.

  forecast  ETTh2 cut into ``--series`` contiguous segments, one series each, interleaved by time
  ctr       MovieLens-100K impressions in time order (``--impressions``)
  rank      the MSLR-WEB slice's 43 queries

Usage: python bench/stream_services.py [--services forecast,ctr,rank] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import HEADER, LoadReport, load  # noqa: E402
from roles.main_job import stop_process, wait_http  # noqa: E402
from streams.broker import EmbeddedBroker, free_port  # noqa: E402
from streams.client import get_json, post_json  # noqa: E402
from streams.config import Settings, shared_data_dir  # noqa: E402
from streams.producer import make_producer, observations_from_csv, send_all  # noqa: E402
from streams.schemas import Observation, Record  # noqa: E402


@dataclass
class Case:
    """One service under test: its records, its worker options and one query to load it with."""

    service: str
    topic: str
    records: list[Record]
    options: list[str]
    method: str
    path: Callable[[int], str]
    body: Callable[[int], Any] | None
    #: After the replay: act as users would before the route can answer (annotators labeling).
    prepare: Callable[[str], str] | None = None


def forecast_case(series: int, rows: int, kind: str) -> Case:
    frame = list(observations_from_csv(shared_data_dir() / "timeseries" / "ETTh2.csv", "ETTh2"))
    segment = len(frame) // series
    streams = [
        [
            Observation(series=f"ETTh2-{k}", ts=o.ts, values=o.values)
            for o in frame[k * segment : k * segment + rows]
        ]
        for k in range(series)
    ]
    records = [r for group in zip(*streams, strict=True) for r in group]
    return Case(
        "forecast", "observations", records,
        [f"forecast.kind={kind}", "forecast.seq_len=60", "forecast.horizon=24", "forecast.batch_size=512"],
        "GET", lambda i: f"/forecast/ETTh2-{i % series}?horizon=24", None,
    )  # fmt: skip


def ctr_case(impressions: int) -> Case:
    from models.ctr.movielens import iter_impressions

    records = list(itertools.islice(iter_impressions(), impressions))
    candidates = [{"categorical": dict(r.categorical), "dense": dict(r.dense)} for r in records[:100]]
    return Case(
        "ctr", "impressions", records, ["ctr.swap_interval_s=2", "ctr.batch_size=4096"],
        "POST", lambda i: "/ctr/score", lambda i: {"candidates": candidates},
    )  # fmt: skip


def rank_case() -> Case:
    from rankers.data import load_letor, mslr_path
    from rankers.records import query_records

    queries, truth = query_records(load_letor(mslr_path()))
    docs = [{"doc_id": d.doc_id, "features": list(d.features)} for d in queries[0].documents]

    def annotate(base: str) -> str:
        """Truthful annotators grade ``labels`` tasks over HTTP; time until the model learned them all."""
        started = time.perf_counter()
        for _ in range(labels):
            _, view = get_json(f"{base}/labeling/next?annotator=bench")
            task = view["task"]
            code, body = post_json(
                f"{base}/labeling/{task['task_id']}",
                {"grades": truth[task["query_id"]], "annotator": "bench"},
            )
            assert code == 202, body
        while get_json(f"{base}/labeling/status")[1]["labeled_queries"] < labels:
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        return f"{labels} labels submitted over HTTP -> labels topic -> retrain: {seconds:.1f}s"

    labels = 8
    return Case(
        "rank", "queries", list(queries), ["rank.budget=43", "rank.budget_window=43"],
        "POST", lambda i: "/rank", lambda i: {"documents": docs}, annotate,
    )  # fmt: skip


def applied(base: str, service: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(("driftline_events_total{", "driftline_dead_letters_total{")) and service in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_case(case: Case, bootstrap: str, home: Path, requests: int, concurrency: int) -> list[tuple]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ, "DRIFTLINE_BOOTSTRAP_SERVERS": bootstrap, "DRIFTLINE_TOPIC_PREFIX": f"b{port}.",
        "DRIFTLINE_APP_ID": f"bench-{case.service}-{port}", "DRIFTLINE_DEVICE": "cpu",
    }  # fmt: skip
    command = [sys.executable, "-m", "streams.cli", "--home", str(home), "worker",
               "--services", case.service, "--http-port", str(port)]  # fmt: skip
    for option in case.options:
        command += ["--option", option]
    log = open(home / f"{case.service}.log", "wb")  # noqa: SIM115 - handed to the child
    worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    rows: list[tuple] = []
    try:
        wait_http(f"{base}/health", process=worker)
        os.environ["DRIFTLINE_TOPIC_PREFIX"] = env["DRIFTLINE_TOPIC_PREFIX"]
        producer = make_producer(bootstrap)
        started = time.perf_counter()
        sender = threading.Thread(
            target=send_all, args=(producer, case.topic, case.records), kwargs={"progress": False}
        )
        sender.start()
        busy: LoadReport | None = None
        while applied(base, case.service) < len(case.records):
            if (
                busy is None
                and case.prepare is None
                and applied(base, case.service) >= len(case.records) * 0.3
            ):
                busy = load(case.method, lambda i: base + case.path(i), case.body, concurrency, requests, 60)
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        sender.join()
        producer.close()
        note = case.prepare(base) if case.prepare else ""
        idle = load(case.method, lambda i: base + case.path(i), case.body, concurrency, requests, 60)
        rows.append((case.service, len(case.records), seconds, busy, idle, note))
    finally:
        stop_process(worker)
        log.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", default="forecast,ctr,rank")
    parser.add_argument("--series", type=int, default=16, help="forecast: ETTh2 segments, one series each")
    parser.add_argument("--rows", type=int, default=400, help="forecast: observations per series")
    parser.add_argument("--kind", default="onenet", help="forecast: model kind")
    parser.add_argument("--impressions", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.series, args.rows, args.impressions, args.requests = 4, 150, 10_000, 200
    builders: dict[str, Callable[[], Case]] = {
        "forecast": lambda: forecast_case(args.series, args.rows, args.kind),
        "ctr": lambda: ctr_case(args.impressions),
        "rank": rank_case,
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker.on_free_ports(Path(tmp) / "kafka", Settings.from_env().cache)
        broker.start()
        try:
            for name in args.services.split(","):
                home = Path(tmp) / name
                home.mkdir()
                results += run_case(builders[name](), broker.bootstrap, home, args.requests, args.concurrency)
        finally:
            broker.stop()
    print(f"End to end through Kafka 4.1.1 (embedded), CPU only, {os.cpu_count()} cores; "
          f"load: {args.concurrency} concurrent clients, <= {args.requests} requests")  # fmt: skip
    print(f"{'service':<10}{'events':>9}{'seconds':>9}{'events/s':>10}")
    for service, events, seconds, _, _, note in results:
        print(f"{service:<10}{events:>9}{seconds:>9.1f}{events / seconds:>10,.1f}  {note}")
    print()
    print(HEADER)
    for service, _, _, busy, idle, _ in results:
        if busy is not None:
            print(busy.row(f"{service}: while the worker trains"))
        print(idle.row(f"{service}: worker idle"))


if __name__ == "__main__":
    main()
