"""Queue latency of the rank service: a query arrives -> its task is available at GET /labeling/next.

In process (no Kafka, no socket): the clock starts when a micro-batch of MSLR-WEB queries is handed to
``RankService.process`` (what the worker does after consuming it) and stops when
``GET /labeling/next`` has leased the task to an annotator. Selection runs with a trained committee
(warmed up on truthful labels of seed queries), the budget admits every query, so every query
becomes a task. Reported per query: p50/p99 of the whole path and of its two parts.

    .venv/bin/python bench/rank_queue.py             # 200 queries, one per micro-batch
    .venv/bin/python bench/rank_queue.py --batch 16  # micro-batches of 16 queries
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
import torch

from rankers.data import load_letor, mslr_path
from rankers.records import query_records
from rankers.service import RankService
from streams.schemas import Query
from streams.service import ApiRequest, Output
from streams.topics import topic_name

QUERIES, LABELS = topic_name("queries"), topic_name("labels")


async def next_task(service: RankService, annotator: str) -> dict:
    handler = next(r.handler for r in service.routes() if r.path == "/labeling/next")
    answer = await handler(ApiRequest("GET", {}, {"annotator": annotator}))
    return answer.body


async def warm_up(service: RankService, queries: list[Query], truth: dict, rounds: int) -> None:
    """Label ``rounds`` chunks of seed queries truthfully, one retrain (committee member) per chunk."""
    emitted: list[Output] = []

    async def emit(output: Output) -> None:
        emitted.append(output)

    service.emit = emit
    submit = next(r.handler for r in service.routes() if r.path == "/labeling/{task}")
    for chunk in np.array_split(np.arange(len(queries)), rounds):
        service.process(QUERIES, [queries[i] for i in chunk])
        while (view := await next_task(service, "warm-up"))["task"] is not None:
            task = view["task"]
            body = {"grades": truth[task["query_id"]], "annotator": "warm-up"}
            await submit(ApiRequest("POST", {"task": task["task_id"]}, {}, body))
        service.process(LABELS, [o.record for o in emitted])
        emitted.clear()


async def measure(args: argparse.Namespace) -> None:
    data = load_letor(mslr_path(), 136)
    queries, truth = query_records(data)
    n_seed = 8
    service = RankService(
        budget=10**9, budget_window=10**9, min_quantile=0.0,
        committee_size=args.committee, selector=args.selector,
    )  # fmt: skip
    await warm_up(service, queries[:n_seed], truth, rounds=args.committee)
    stream = [queries[n_seed + i % (len(queries) - n_seed)] for i in range(args.queries)]
    stream = [q.model_copy(update={"ts": 1e6 + i}) for i, q in enumerate(stream)]  # distinct task ids
    total, select, lease = [], [], []
    for start in range(0, len(stream), args.batch):
        batch = stream[start : start + args.batch]
        t0 = time.perf_counter()
        with service.lock:
            result = service.process(QUERIES, batch)
        t1 = time.perf_counter()
        assert len(result.outputs) == len(batch), "every query should become a task"
        handed_out = []
        for i in range(len(batch)):
            view = await next_task(service, f"annotator-{start + i}")
            t2 = time.perf_counter()
            handed_out.append(view["task"]["query_id"])
            total.append(t2 - t0)
            select.append(t1 - t0)
            lease.append(t2 - t1)
        assert sorted(handed_out) == sorted(q.query_id for q in batch), "a task went missing"
    docs = np.mean([len(q.documents) for q in stream])
    print(
        f"Queue latency, in process: MSLR-WEB queries ({docs:.0f} documents x 136 features on average), "
        f"selector {args.selector}, committee {len(service.ranker.committee())}, micro-batch {args.batch}, "
        f"{len(total)} queries, 1 thread"
    )
    print("| path | p50 ms | p99 ms | mean ms |")
    print("|---|---|---|---|")
    for name, values in (
        ("query arrives -> task leased at GET /labeling/next", total),
        ("selection (process: committee + selector + enqueue)", select),
        ("GET /labeling/next (lease; with a batch, after earlier leases)", lease),
    ):
        ms = 1e3 * np.asarray(values)
        print(f"| {name} | {np.percentile(ms, 50):.2f} | {np.percentile(ms, 99):.2f} | {ms.mean():.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1, help="queries per micro-batch")
    parser.add_argument("--committee", type=int, default=4)
    parser.add_argument("--selector", default="re+pv")
    args = parser.parse_args()
    torch.set_num_threads(1)
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
