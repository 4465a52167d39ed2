"""Label latency: from a label's submission to a rank model that has learned it, through Kafka.

A real ``driftline worker --services rank`` on the embedded broker. MovieLens-100K users are replayed
onto ``queries`` (``rankers/movielens_queries.py``; the budget is opened so every query becomes a task),
and ``--annotators`` simulated annotators, each with its own annotator token, take tasks over HTTP
(``GET /labeling/next``) and submit the true grades (``POST /labeling/{task}``), together at
``--rate`` labels per second. The path measured is the production one: the 202 answer comes once the
label is on the ``labels`` topic; the worker consumes it in a micro-batch (``batch_size`` /
``batch_window_s``), retrains the LambdaMART committee on every label so far (one retrain per
micro-batch: a new ``model_version``) and only then marks the task done.

  start  the 202 answer of ``POST /labeling/{task}`` (the annotator's view: "submitted");
  end    the first answer of ``GET /labeling/status`` (polled every ``--poll-ms``) whose ``done``
         count covers the label. ``done`` grows only after the retrain that learned the label, and
         that retrain's model is already the one ``POST /rank`` serves (the snapshot is swapped before
         the tasks are marked done, under the same lock), so this is "a serving model has it".

Labels are matched to the ``done`` count in submission order. The labels topic has 12 partitions, so
two labels submitted close together may be learned in swapped order, but then in the same or the
next micro-batch: the error is at most one batch, and a poll's answer time is an upper bound within
the poll period. Usage:

    flock /tmp/driftline-bench.lock .venv/bin/python bench/label_latency.py [--labels 200]
        [--annotators 4] [--rate 2] [--option rank.batch_window_s=0.05 ...]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Worker, broker, load, produce, say, table, wait_for
from streams.client import get_json, post_json
from streams.tokens import Role, TokenFile, new_token

#: Every query becomes a task: the budget (10 per 100 queries by default) would otherwise decide how
#: many there are, which is not what this bench measures.
OPEN_BUDGET = ("rank.budget=100000", "rank.budget_window=100000")


def learn_delays(submitted: Sequence[float], poll_times: Sequence[float], done: Sequence[int]) -> np.ndarray:
    """Per label (in ``submitted`` order, epoch seconds): seconds until the first poll at or after its
    submission whose ``done`` count covers it (the k-th submitted label needs ``done >= k``); NaN where
    no poll does. ``poll_times`` ascend; ``done`` is made monotone (a poll never un-learns)."""
    times = np.asarray(poll_times, dtype=float)
    covered = np.maximum.accumulate(np.asarray(done, dtype=float)) if len(done) else np.zeros(0)
    sent = np.sort(np.asarray(submitted, dtype=float))
    first = np.maximum(
        np.searchsorted(covered, np.arange(1, len(sent) + 1), "left"), np.searchsorted(times, sent, "left")
    )
    out = np.full(len(sent), np.nan)
    found = first < len(times)
    out[found] = times[first[found]] - sent[found]
    return out


class StatusPoller:
    """Polls ``/labeling/status`` every ``period_s`` in a thread: (answer time, done, model_version)."""

    def __init__(self, worker: Worker, period_s: float) -> None:
        self.worker, self.period_s = worker, period_s
        self.rows: list[tuple[float, int, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.period_s):
            status, body = self.worker.json("/labeling/status")
            if status == 200:
                self.rows.append((time.time(), body["queue"]["done"], body["model_version"]))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


class Annotators:
    """``count`` annotator threads labeling with the true grades, ``rate`` labels/s between them."""

    def __init__(
        self, worker: Worker, tokens: list[str], truth: dict[str, dict[str, int]], rate: float
    ) -> None:
        self.worker, self.tokens, self.truth = worker, tokens, truth
        self.period_s = len(tokens) / rate
        self.submitted: list[float] = []  # 202 answer times
        self.refused: list[str] = []
        self.claimed = 0
        self.lock = threading.Lock()

    def run(self, labels: int) -> None:
        threads = [
            threading.Thread(target=self._label, args=(t, labels, i)) for i, t in enumerate(self.tokens)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _label(self, token: str, labels: int, index: int) -> None:
        next_at = time.monotonic() + index * self.period_s / len(self.tokens)  # staggered starts
        while True:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self.period_s
            with self.lock:  # claim one of the ``labels`` submissions before making it
                if self.claimed >= labels:
                    return
                self.claimed += 1
            status, view = get_json(f"{self.worker.base}/labeling/next", token=token)
            task = view.get("task") if status == 200 else None
            if task is None:
                with self.lock:
                    self.refused.append(f"GET /labeling/next: {status} {view}")
                continue
            grades = self.truth[task["query_id"]]
            status, answer = post_json(
                f"{self.worker.base}/labeling/{task['task_id']}", {"grades": grades}, token=token
            )
            answered = time.time()
            with self.lock:
                if status == 202:
                    self.submitted.append(answered)
                else:
                    self.refused.append(f"POST /labeling/{task['task_id']}: {status} {answer}")


def _setting(options: list[str], key: str, default: str) -> str:
    return next((o.split("=", 1)[1] for o in reversed(options) if o.startswith(f"rank.{key}=")), default)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--labels", type=int, default=200, help="labels submitted in all")
    parser.add_argument("--annotators", type=int, default=4)
    parser.add_argument("--rate", type=float, default=2.0, help="labels per second, all annotators together")
    parser.add_argument("--poll-ms", type=float, default=20.0, help="GET /labeling/status period")
    parser.add_argument("--option", action="append", default=[], metavar="rank.KEY=VALUE")
    args = parser.parse_args(argv)
    if args.labels < 1 or args.annotators < 1 or args.rate <= 0:
        parser.error("--labels and --annotators must be >= 1 and --rate > 0")

    from models.ctr.movielens import fetch
    from rankers.movielens_queries import movielens_queries

    queries, truth = movielens_queries(fetch(), ts0=time.time())
    if args.labels > len(queries):
        parser.error(f"--labels at most {len(queries)} (MovieLens users as queries)")
    options = [*OPEN_BUDGET, *args.option]
    with broker() as (node, tmp):
        home = tmp / "worker"
        tokens = []
        for i in range(args.annotators):
            token, record = new_token(f"annotator-{i}", Role.ANNOTATOR)
            TokenFile(home).append(record)  # before the worker starts: it reads its home's token file
            tokens.append(token)
        worker = Worker(node.bootstrap, home, "rank", options)
        try:
            say("starting the rank worker")
            worker.start()
            produce(node.bootstrap, "queries", list(queries), progress=False)
            wait_for(
                lambda: worker.json("/labeling/status")[1].get("queue", {}).get("queued", 0) >= args.labels,
                120, f"{args.labels} tasks queued",
            )  # fmt: skip
            poller = StatusPoller(worker, args.poll_ms / 1000)
            annotators = Annotators(worker, tokens, truth, args.rate)
            say(f"{args.annotators} annotators label {args.labels} tasks at {args.rate:g}/s")
            started = time.monotonic()
            annotators.run(args.labels)
            seconds = time.monotonic() - started
            learned = len(annotators.submitted)
            wait_for(
                lambda: bool(poller.rows) and poller.rows[-1][1] >= learned, 120, f"{learned} labels learned"
            )
            time.sleep(2 * args.poll_ms / 1000)
            poller.close()
        finally:
            worker.stop()
    times, done, versions = zip(*poller.rows, strict=True)
    delays = learn_delays(annotators.submitted, times, done)
    retrains = versions[-1] - versions[0]
    settings = (
        f"batch_size={_setting(options, 'batch_size', '64')}, "
        f"batch_window_s={_setting(options, 'batch_window_s', '0.2')}, "
        f"rounds={_setting(options, 'rounds', '100')}, mode={_setting(options, 'mode', 'retrain')}, "
        f"committee_size={_setting(options, 'committee_size', '4')}"
    )
    ms = delays * 1000
    table(
        f"Label latency through Kafka: POST /labeling/{{task}} 202 -> a serving model has learned it "
        f"(MovieLens-100K users as queries, 8 docs x 8 features; {args.annotators} annotators at "
        f"{args.rate:g} labels/s for {seconds:.0f} s; poll {args.poll_ms:g} ms; rank {settings})",
        ["labels", "p50 ms", "p99 ms", "mean ms", "max ms", "retrains", "labels/retrain", "refused"],
        [[learned, float(np.nanpercentile(ms, 50)), float(np.nanpercentile(ms, 99)), float(np.nanmean(ms)),
          float(np.nanmax(ms)), retrains, learned / max(retrains, 1), len(annotators.refused)]],
    )  # fmt: skip
    for line in annotators.refused[:5]:
        print("  refused:", line)
    print(f"measured at {load()}")
    return 0 if not annotators.refused and not np.isnan(delays).any() else 1


if __name__ == "__main__":
    sys.exit(main())
