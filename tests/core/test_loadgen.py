"""The open-loop load generator: keep-alive requests on schedule, 5xx counted, loopback only."""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from bench.loadgen import PRECISE_RATE, frozen_heap, open_loop


class Handler(BaseHTTPRequestHandler):
    """``/ok`` echoes the JSON body's size, ``/fail`` answers 500, ``/slow`` waits 50 ms."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the servers under test

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/slow":
            threading.Event().wait(0.05)
        self._answer(500 if self.path == "/fail" else 200, b"{}")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(200, json.dumps({"got": len(json.loads(body)["x"])}).encode())

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_every_scheduled_request_is_sent_and_timed(base: str) -> None:
    report = open_loop("POST", f"{base}/ok", {"x": list(range(100))}, rate=200, seconds=0.5)
    assert report.requests == 100 and report.errors == 0
    assert not np.isnan(report.latencies_ms).any() and report.percentile(50) < 1000


def test_server_errors_count_and_latency_includes_the_wait(base: str) -> None:
    assert open_loop("GET", f"{base}/fail", rate=50, seconds=0.2).errors == 10
    slow = open_loop("GET", f"{base}/slow", rate=20, seconds=0.2)
    assert slow.errors == 0 and slow.percentile(50) >= 50


def test_a_light_schedule_never_sends_a_request_early(base: str) -> None:
    """Up to PRECISE_RATE, no request leaves before its time (the loop's timers alone sent some
    up to 0.3 ms early, which shortens the latency counted from the schedule)."""
    report = open_loop("GET", f"{base}/ok", rate=PRECISE_RATE, seconds=1.0)
    assert report.errors == 0 and report.send_lag_ms.min() >= 0


def test_only_loopback_targets_and_positive_rates() -> None:
    with pytest.raises(ValueError, match="loopback"):
        open_loop("GET", "http://example.com/", rate=1, seconds=1)
    with pytest.raises(ValueError, match="positive"):
        open_loop("GET", "http://127.0.0.1:1/", rate=0, seconds=1)


def test_the_callers_heap_is_out_of_the_collectors_passes_only_while_the_schedule_runs() -> None:
    gc.unfreeze()  # whatever an earlier test in this process froze
    held = [[i] for i in range(10_000)]  # a bench's data, alive throughout
    with frozen_heap():
        assert gc.get_freeze_count() >= len(held)
    assert gc.get_freeze_count() == 0


def test_a_heap_frozen_before_stays_frozen() -> None:
    gc.freeze()
    try:
        with frozen_heap():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
