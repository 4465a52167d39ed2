"""HTTP fuzzing: random and malformed requests across every route of a worker (and a replica).

Starts an embedded broker, a ``driftline worker`` running forecast, ctr and rank with a little
synthetic data (so tasks, versions and forecasts exist), and a CTR serving replica, then sends
``--requests`` hostile requests (bad JSON, huge bodies, deep nesting, NaN, wrong types, unknown ids,
path tricks, wrong methods, missing, malformed and forged tokens, valid tokens of every role).

It exits 1 on any answer outside :data:`ALLOWED` (503 only with a JSON reason) and on any hang. It
prints the status counts, the worker's and the replica's RSS before and after each round (flat
memory is a flat tail), and the machine load. ``tests/security/test_http_fuzz.py`` runs the same
generator against the services in process, for the suite.

    .venv/bin/python bench/http_fuzz.py --requests 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: bench.* importable

from streams.schemas import Document, Impression, Query

#: The only answers a hostile request may get (503 only while there is nothing to serve yet).
ALLOWED = frozenset({200, 202, 400, 401, 403, 404, 405, 409, 413, 429, 503})
#: A request that takes longer than this is a hang.
HANG_S = 45.0
#: Every route of a worker running forecast, ctr and rank, plus the HTTP layer's own.
ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"), ("GET", "/auth/whoami"),
    ("GET", "/driftline-auth.js"), ("GET", "/forecast/{series}"), ("POST", "/ctr/score"),
    ("POST", "/ctr/rollback"), ("GET", "/ctr/versions"), ("GET", "/labeling"), ("GET", "/labeling.js"),
    ("GET", "/labeling/next"), ("GET", "/labeling/status"), ("POST", "/labeling/{task}/skip"),
    ("POST", "/labeling/{task}"), ("POST", "/rank"),
)  # fmt: skip
PATH_TRICKS = (
    "../../../etc/passwd", "..%2f..%2f..%2fetc%2fpasswd", "%2e%2e", "%00", "%ff%fe", "a" * 3000, "%",
    "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "%F0%9F%98%80", "..;", "x%2Fy", "%20", "~root", "$(id)",
)  # fmt: skip
QUERY_TRICKS = (
    "", "?horizon=24", "?horizon=abc", "?horizon=-3", "?horizon=0", "?horizon=1e400",
    "?horizon=99999999999999999999999", "?horizon=1.5", "?horizon=24&horizon=x", "?annotator=mallory",
    "?annotator=", "?%ff=%fe", "?" + "x=1&" * 500,
)  # fmt: skip
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")


@dataclass(frozen=True)
class Hostile:
    """One request to send and what is hostile about it (``kind``, for the report)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None
    kind: str


@dataclass
class Fuzzer:
    """Draws hostile requests; ``tokens`` maps role -> a valid token; ``ids`` names known keys."""

    tokens: dict[str, str]
    ids: dict[str, list[str]] = field(default_factory=dict)
    max_body_bytes: int = 8 * 1024**2
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def request(self) -> Hostile:
        rng = self.rng
        method, template = rng.choice(ROUTES)
        kinds = []
        if rng.random() < 0.1:
            method = rng.choice(METHODS)
            kinds.append("method")
        path, path_kind = self._path(template)
        kinds.append(path_kind)
        headers, token_kind = self._auth()
        kinds.append(token_kind)
        body, body_kind = self._body(template) if method != "GET" or rng.random() < 0.1 else (None, "")
        kinds.append(body_kind)
        if rng.random() < 0.2:
            headers["Content-Type"] = rng.choice(
                (
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "multipart/form-data; boundary=x",
                    "application/json; charset=utf-16",
                )
            )
        return Hostile(method, path, headers, body, "+".join(k for k in kinds if k))

    def _path(self, template: str) -> tuple[str, str]:
        rng = self.rng
        kind = ""
        for name in ("series", "task"):
            if "{" + name + "}" in template:
                roll = rng.random()
                if roll < 0.4 and self.ids.get(name):
                    value, kind = rng.choice(self.ids[name]), "known-id"
                elif roll < 0.7:
                    value, kind = f"{name}-{rng.randrange(10**6)}", "unknown-id"
                else:
                    value, kind = rng.choice(PATH_TRICKS), "path-trick"
                template = template.replace("{" + name + "}", value)
        if rng.random() < 0.05:
            template, kind = template + rng.choice(("/", "//", "/..", "/extra")), "path-trick"
        query = rng.choice(QUERY_TRICKS) if rng.random() < 0.5 else ""
        return template + query, kind

    def _auth(self) -> tuple[dict[str, str], str]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.5:
            role = rng.choice(sorted(self.tokens))
            return {"Authorization": f"Bearer {self.tokens[role]}"}, f"token-{role}"
        if roll < 0.7:
            return {}, "no-token"
        forged = rng.choice(
            (
                "Bearer dl_" + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789_-", k=43)),
                "Bearer " + self.tokens[rng.choice(sorted(self.tokens))][:-1] + "x",  # one character off
                "Bearer", "Bearer ", "Basic YWRtaW46YWRtaW4=", "bearer  " + "A" * 600, "Token abc",
                "Bearer  dl_", "Bearer a b c",
            )
        )  # fmt: skip
        return {"Authorization": forged}, "forged-token"

    def _body(self, template: str) -> tuple[bytes, str]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.35:
            return json.dumps(self._plausible(template)).encode(), "plausible-body"
        if roll < 0.5:
            return json.dumps(self._wrong_types()).encode(), "wrong-types"
        if roll < 0.6:
            good = json.dumps(self._plausible(template))
            return good[: rng.randrange(max(1, len(good)))].encode() + rng.choice(
                (b"", b"}", b"\x00", b",,")
            ), "bad-json"
        if roll < 0.68:
            depth = rng.choice((33, 200, 5000, 100_000))
            return (b"[" * depth + b"]" * depth) if rng.random() < 0.5 else (
                b'{"a":' * depth + b"1" + b"}" * depth
            ), "deep"
        if roll < 0.72:
            return b'{"x": ' + rng.choice((b"NaN", b"Infinity", b"-Infinity", b"1e999")) + b"}", "not-finite"
        if roll < 0.76:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))), "binary"
        if roll < 0.79:
            return b"[" + b"0," * 600_000 + b"0]", "many-values"
        if roll < 0.81:
            return b"x" * (self.max_body_bytes + rng.randrange(1, 1024**2)), "huge"
        if roll < 0.85:
            return b"", "empty"
        return json.dumps(rng.choice((None, 0, -1, 1e308, "s", [], {}, [None], True))).encode(), "scalar"

    def _plausible(self, template: str) -> Any:
        rng = self.rng
        if template == "/ctr/score":
            n = rng.choice((0, 1, 3, 100, 5000))
            return {
                "candidates": [
                    {"categorical": {"user_id": str(i), "item_id": str(rng.randrange(99))}} for i in range(n)
                ]
            }
        if template == "/rank":
            width = rng.choice((0, 5, 136))
            docs = [
                {"doc_id": f"d{i}", "features": [rng.random() for _ in range(width)]}
                for i in range(rng.choice((0, 1, 5)))
            ]
            return {"documents": docs}
        if template.startswith("/labeling/"):
            grades = {f"d{i}": rng.choice((0, 4, 5, -1, "2", 2.5, None)) for i in range(rng.randrange(6))}
            return {"grades": grades, "annotator": rng.choice(("mallory", "", 7, None, "<b>x</b>"))}
        return {}

    def _wrong_types(self) -> Any:
        rng = self.rng
        odd = (None, 1, -1.5, "x", [], {}, [1, "a"], {"nested": {"deeper": [None]}}, True, "9" * 400)
        return {
            rng.choice(("candidates", "documents", "grades", "annotator", "features", "doc_id")): rng.choice(
                odd
            )
            for _ in range(rng.randrange(1, 4))
        }


@dataclass
class Tally:
    """What came back: counts per status, any disallowed answer, hangs, client-side refusals."""

    statuses: Counter[int] = field(default_factory=Counter)
    kinds_tried: Counter[str] = field(default_factory=Counter)
    bad: list[tuple[Hostile, int, str]] = field(default_factory=list)
    hangs: list[Hostile] = field(default_factory=list)
    client_refused: Counter[str] = field(default_factory=Counter)
    slowest_s: float = 0.0

    @property
    def sent(self) -> int:
        """Requests answered."""
        return sum(self.statuses.values())

    @property
    def tried(self) -> int:
        """Requests drawn: answered, hung, or refused by the client before sending."""
        return self.sent + len(self.hangs) + sum(self.client_refused.values())

    def ok(self) -> bool:
        return not self.bad and not self.hangs


async def fire(
    base: str, requests: Sequence[Hostile], concurrency: int = 16, tally: Tally | None = None
) -> Tally:
    """Send ``requests`` to ``base`` with ``concurrency`` in flight; tally every answer."""
    tally = tally or Tally()
    queue: asyncio.Queue[Hostile] = asyncio.Queue()
    for hostile in requests:
        queue.put_nowait(hostile)
    timeout = aiohttp.ClientTimeout(total=HANG_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(hostile: Hostile) -> None:
            started = time.monotonic()
            try:
                url = URL(base + hostile.path, encoded=True)
                async with session.request(
                    hostile.method, url, headers=hostile.headers, data=hostile.body
                ) as answer:
                    raw = await answer.read()
            except TimeoutError:
                tally.hangs.append(hostile)
                return
            except (aiohttp.ClientError, ValueError) as exc:  # the client would not send it as drawn
                tally.client_refused[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                return
            tally.slowest_s = max(tally.slowest_s, time.monotonic() - started)
            tally.statuses[answer.status] += 1
            tally.kinds_tried.update(hostile.kind.split("+"))
            if not _acceptable(hostile.method, answer.status, answer.content_type, raw):
                tally.bad.append((hostile, answer.status, raw[:300].decode(errors="replace")))

        async def drain() -> None:
            while not queue.empty():
                await one(queue.get_nowait())

        await asyncio.gather(*(drain() for _ in range(concurrency)))
    return tally


def _acceptable(method: str, status: int, content_type: str, raw: bytes) -> bool:
    if status not in ALLOWED:
        return False
    if status == 503 and content_type != "application/json":
        return False
    if status == 503 and method != "HEAD":  # an answer to HEAD has headers only
        try:
            return "error" in json.loads(raw)
        except ValueError:
            return False
    return True


def report(tally: Tally, out: Callable[[str], None] = print) -> None:
    out(
        f"hostile requests tried: {tally.tried:,}; answered: {tally.sent:,}; "
        f"500s seen: {tally.statuses[500]}; disallowed answers: {len(tally.bad)}; hangs: {len(tally.hangs)}; "
        f"slowest answer {tally.slowest_s:.2f} s"
    )
    out("| status | count |\n|---:|---:|")
    for status, count in sorted(tally.statuses.items()):
        out(f"| {status} | {count:,} |")
    if tally.client_refused:
        out(f"not sent (the client refused the drawn request): {dict(tally.client_refused)}")
    out("hostile kinds tried: " + ", ".join(f"{k} {n:,}" for k, n in tally.kinds_tried.most_common()))
    for hostile, status, body in tally.bad[:20]:
        out(f"  {status} {hostile.method} {hostile.path[:120]} [{hostile.kind}] -> {body[:200]}")


# -- the bench: real processes -------------------------------------------------------------------
def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _seed_data(bootstrap: str) -> None:
    """A little of every input, so forecasts, a CTR version and labeling tasks exist."""
    from bench.common import observations, produce

    produce(bootstrap, "observations", observations(600, series=3), progress=False)
    produce(bootstrap, "impressions", synthetic_impressions(3000), progress=False)
    produce(bootstrap, "queries", synthetic_queries(6), progress=False)


def synthetic_impressions(n: int, seed: int = 1) -> list[Impression]:
    """Impressions with the MovieLens spec's user and item fields (synthetic clicks)."""
    rng = random.Random(seed)
    return [
        Impression(
            id=f"i{i}",
            ts=float(i),
            categorical={"user_id": str(rng.randrange(50)), "item_id": str(rng.randrange(80))},
            clicked=rng.randrange(2),
        )
        for i in range(n)
    ]


def synthetic_queries(n: int, docs: int = 8, width: int = 5, seed: int = 2) -> list[Query]:
    """Queries with random features (what becomes labeling tasks)."""
    rng = random.Random(seed)
    return [
        Query(
            query_id=f"q{i}",
            ts=float(i),
            documents=[
                Document(doc_id=f"d{j}", features=[rng.random() for _ in range(width)]) for j in range(docs)
            ],
        )
        for i in range(n)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-replica", action="store_true", help="fuzz the worker only")
    parser.add_argument("--rounds", type=int, default=4, help="RSS is read after each round")
    args = parser.parse_args(argv)

    from bench.common import Worker, broker, load, say, start_role
    from roles.main_job import wait_http
    from streams.client import get_json
    from streams.tokens import Role, TokenFile, new_token

    with broker() as (node, tmp):
        home = tmp / "worker"
        tokens: dict[str, str] = {}
        for role in Role:
            tokens[role.label], record = new_token(f"fuzz-{role.label}", role)
            TokenFile(home).append(record)  # before the worker starts: it reads its home's file
        _seed_data(node.bootstrap)
        options = ["ctr.swap_interval_s=1", "ctr.batch_size=512", "rank.budget=6"]
        worker = Worker(node.bootstrap, home, "forecast,ctr,rank", options)
        replica = None
        try:
            say("starting the worker (forecast, ctr, rank)")
            worker.start()
            targets = [("worker", worker.base, worker.process)]
            if not args.no_replica:  # fuzzed from its start: 503 until its first version is allowed
                replica = start_role("serve", "ctr", tmp / "replica", node.bootstrap, "bench.")
                wait_http(f"{replica.base}/health", process=replica.process)
                targets.append(("replica", replica.base, replica.process))
            time.sleep(5)  # let the seeded data be applied
            task_ids = []
            for _ in range(3):
                code, view = asyncio.run(_get(worker.base + "/labeling/next", tokens["annotator"]))
                if code == 200 and view.get("task"):
                    task_ids.append(view["task"]["task_id"])
            ids = {"series": ["k0", "k1", "k2"], "task": task_ids}
            say(f"fuzzing with {args.requests:,} requests; known tasks {len(task_ids)}; "
                f"ctr versions: {get_json(worker.base + '/ctr/versions')[1].get('serving')}")  # fmt: skip
            fuzzer = Fuzzer(tokens, ids, seed=args.seed)
            rss: dict[str, list[int]] = {name: [_rss_kib(p.pid)] for name, _, p in targets}
            tally = Tally()
            rounds = [args.requests // args.rounds] * args.rounds
            rounds[-1] += args.requests - sum(rounds)
            started = time.monotonic()
            for size in rounds:
                batch = [fuzzer.request() for _ in range(size)]
                for name, base, _ in targets:  # every request goes to the worker; replica gets its share
                    share = batch if name == "worker" else batch[: size // 4]
                    asyncio.run(fire(base, share, args.concurrency, tally))
                for name, _, process in targets:
                    rss[name].append(_rss_kib(process.pid))
            seconds = time.monotonic() - started
        finally:
            if replica is not None:
                replica.stop()
            worker.stop()
    report(tally)
    print(f"{tally.sent:,} answers in {seconds:.1f} s ({tally.sent / seconds:,.0f}/s), {load()}")
    for name, values in rss.items():
        mib = [v / 1024 for v in values]
        half = len(mib) // 2
        print(f"RSS {name} before and after each of {args.rounds} rounds (MiB): "
              f"{', '.join(f'{v:.0f}' for v in mib)}; last {len(mib) - 1 - half} rounds "
              f"{mib[-1] - mib[half]:+.0f} MiB")  # fmt: skip
    return 0 if tally.ok() else 1


async def _get(url: str, token: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status, await r.json()


if __name__ == "__main__":
    sys.exit(main())
