"""A drift injected into a MovieLens replay, seen on the dashboard of a real worker (headless Chromium).

The replay (``bench/lifecycle_demo.py``) labels every event of one swap interval's stretch
unclicked (synthetic click-log outage: a corrupted update the gate cannot catch, as it validates
on the stretch too). The page must show the drift alarm badge and, in the version timeline, the
automatic rollback of the version that learned the stretch, which ``GET /models`` records too.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bench.lifecycle_demo import Injection, Timeline, events_applied, replay
from bench.lifecycle_replay import SCENARIOS
from streams.client import get_json
from tests.rankers.test_labeling_page import browser  # noqa: F401 - the shared headless Chromium
from tests.streams.test_dashboard import SERVICE_STATE

T = TypeVar("T")

pytestmark = [pytest.mark.browser, pytest.mark.kafka]

#: Set to docs/img/dashboard_drift.png to refresh the docs' screenshot; otherwise it stays in tmp.
SCREENSHOT_VARIABLE = "DRIFTLINE_DASHBOARD_SCREENSHOT"
#: Small batches and versions every few seconds, so the whole story fits a short test; the drift
#: threshold is half the default because the corrupted stretch lasts only one swap interval (8 s).
DRIFT = {"DRIFTLINE_DRIFT_THRESHOLD": "0.5"}
#: The replay's poller keeps watching the worker this long after the last event is sent (until the
#: test stops it): a loaded worker lags behind the replay and acts after it has ended.
WATCH_AFTER_S = 300.0
#: The worker's options and the stream, also replayed in process by ``python -m
#: bench.lifecycle_replay --scenario dashboard`` (rollback_confirm and the rest of the lifecycle at
#: their defaults). Why the stretch is an outage over an 8 s swap interval: that module's docstring.
SCENARIO = SCENARIOS["dashboard"]
#: The replay sends at most this many events (about a second of them) ahead of what the worker has
#: applied: a loaded worker lags behind a fixed schedule, and the corrupted stretch (cut by send
#: time) would reach it split between two versions, none of them worse than its predecessor.
MAX_AHEAD = SCENARIO.max_ahead
OPTIONS = [f"ctr.{key}={json.dumps(value, separators=(',', ':'))}" for key, value in SCENARIO.options.items()]


def test_an_injected_drift_shows_an_alarm_and_a_rollback_on_the_page(
    kafka,
    worker_factory,
    browser,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    worker = worker_factory("ctr", OPTIONS, env=DRIFT).start()
    browser.set_window_size(1000, 2200)  # the alarm and the rollback in one screenshot
    browser.get(f"{worker.base}/dashboard")
    injection = Injection(start=SCENARIO.corrupt_from, label=SCENARIO.stretch_label)
    timeline, stop = Timeline(), threading.Event()
    sender = threading.Thread(
        target=replay,
        args=(kafka.bootstrap, worker.base, injection),
        kwargs={
            "rate": 1000,
            "limit": SCENARIO.demo_events,
            "settle_s": WATCH_AFTER_S,
            "stop": stop,
            "timeline": timeline,
            "max_ahead": MAX_AHEAD,
        },
    )
    page = PageWatch(browser)
    sender.start()
    try:
        bad = _wait_until(lambda: _bad_update_rolled_back(timeline), timeline, worker.base)
        alarms = _wait_until(lambda: _alarms_after_corruption(timeline), timeline, worker.base)
        stop.set()  # no more events: the worker has acted on the stretch
        seen = page.first(lambda state: bad["reason"] in state["versions"])
        page.first(lambda state: state["drift"].startswith("drift alarm"))  # the badge, while it held
        page.stop()
        assert browser.save_screenshot(os.environ.get(SCREENSHOT_VARIABLE) or str(tmp_path / "drift.png"))
    finally:
        page.stop()
        stop.set()
        sender.join(30)
    assert "rolled_back at" in seen["versions"]
    assert re.search(r"promoted_at=\d+/\d+/\d{4}", seen["versions"]), "evidence times read as dates"
    status, body = get_json(f"{worker.base}/models")
    assert status == 200
    entries = [h for v in body["ctr"]["versions"] for h in v["history"] if h["reason"] == bad["reason"]]
    assert [e["action"] for e in entries] == ["rolled_back"]
    evidence = entries[0]["evidence"]
    assert evidence["serving"] > evidence["predecessor"] * (1 + evidence["margin"])
    assert timeline.corrupt_sent is not None
    begun, ended = timeline.corrupt_sent, timeline.corrupt_ended or 0.0
    worse = evidence["serving"] / evidence["predecessor"] - 1
    print(
        f"\nsynthetic click-log outage (first unclicked event sent at 0 s, last at {ended - begun:.1f} s): "
        f"first drift alarm seen at {alarms[0] - begun:.1f} s; v{evidence['rolled_back_from']} (trained on "
        f"the stretch) promoted at {evidence['promoted_at'] - begun:.1f} s, "
        f"rolled back at {bad['at'] - begun:.1f} s, logloss {worse:+.1%} "
        f"against v{bad['version']}; replay held back {timeline.held_s:.1f} s for the worker"
    )


class PageWatch:
    """Every state of ``ctr`` on the page, read every 0.5 s from a thread of its own until :meth:`stop`.

    The drift badge says "drift alarm" while the alarm holds, a number of batches: a worker that
    lags behind the replay applies them quickly once the replay stops, possibly before the test
    looks. So every state read is kept, and the test asks whether one of them showed the badge.
    """

    def __init__(self, browser_: Any) -> None:
        self.browser = browser_
        self.states: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            state = self.browser.execute_script(SERVICE_STATE, "ctr")
            if state is not None:
                self.states.append(state)

    def first(self, shows: Callable[[dict[str, Any]], bool], timeout_s: float = 60.0) -> dict[str, Any]:
        """The first state read since the watch began that ``shows``; fail if none has in ``timeout_s``."""
        deadline, checked = time.monotonic() + timeout_s, 0
        while True:
            read = self.states[checked:]
            found = next((state for state in read if shows(state)), None)
            if found is not None:
                return found
            checked += len(read)
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never got there; last seen: {self.states[-1:]}")
            time.sleep(0.25)

    def stop(self) -> None:
        """Stop reading the page (the browser is the caller's again once this returns)."""
        self._stop.set()
        self._thread.join(10)


def _bad_update_rolled_back(timeline: Timeline) -> dict[str, Any] | None:
    """The rollback of a version promoted after the corrupted stretch began (one trained on it)."""
    begun = timeline.corrupt_sent
    return next((r for r in timeline.rollbacks if begun and r["evidence"]["promoted_at"] > begun), None)


def _alarms_after_corruption(timeline: Timeline) -> list[float] | None:
    """When each drift alarm after the corrupted stretch began was seen."""
    begun = timeline.corrupt_sent
    found = [at for at, what in timeline.actions if begun and at > begun and what.startswith("drift alarm")]
    return found or None


def _wait_until(seen: Callable[[], T | None], timeline: Timeline, base: str, idle_s: float = 60.0) -> T:
    """What ``seen`` finds while the worker still applies events; once it has applied none for
    ``idle_s`` (it has read all that was sent, or it is stuck), fail with the timeline and the lineage.

    A loaded machine slows the worker (and the replay held back by it): the wait lasts as long as
    the worker works through what was sent, not a fixed time from the start.
    """
    applied, idle_since = -1.0, time.monotonic()
    while time.monotonic() - idle_since < idle_s:
        found = seen()
        if found:
            return found
        now_applied = events_applied(base, "ctr")
        if now_applied is not None and now_applied > applied:
            applied, idle_since = now_applied, time.monotonic()
        time.sleep(0.5)
    _, body = get_json(f"{base}/models")
    lineage = [
        (v["version"], h["action"], h["at"], h["reason"])
        for v in body["ctr"]["versions"]
        for h in v["history"]
    ]
    raise AssertionError(
        f"the worker never acted on the injected change ({applied:.0f} events applied, none new for "
        f"{idle_s:.0f} s): {timeline}; lineage {lineage}"
    )
