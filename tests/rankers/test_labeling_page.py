"""The labeling page in a real headless Chromium: load without a token, sign in once, see the task,
grade, submit, label emitted under the token's name; producer-supplied text stays text."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiohttp import web

from models.ctr.movielens import fetch
from rankers.movielens_queries import movielens_queries
from rankers.records import query_records
from streams.auth import HttpSecurity
from streams.http import make_app
from streams.schemas import Document, Query
from streams.tokens import Role, TokenStore, new_token

from .conftest import synthetic_queries
from .service_helpers import QUERIES, FakeClock, Harness, labels_of
from .test_movielens_queries import RATINGS, write_ml
from .test_service import make

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian chromium + chromium-driver: apt-get install -y chromium chromium-driver",
    ),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install selenium")


ALICE_TOKEN, ALICE = new_token("alice", Role.ANNOTATOR)
HOSTILE = '<img src=x onerror="window.pwned=1">'


@contextmanager
def serving(harness: Harness) -> Iterator[str]:
    """The harness's routes served by aiohttp on a free loopback port (alice holds an annotator
    token); yields the base URL."""
    app = make_app([harness.service], security=HttpSecurity(store=TokenStore([ALICE])))
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


@pytest.fixture
def served() -> Iterator[tuple[Harness, str, dict[str, dict[str, int]]]]:
    """A RankService with two queued tasks of feature vectors only, served."""
    harness = make(FakeClock(), budget=2, budget_window=2)
    queries, truth = query_records(synthetic_queries(2, docs=4))
    harness.service.process(QUERIES, queries)
    with serving(harness) as base:
        yield harness, base, truth


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_annotator_grades_a_task_in_the_browser_and_the_service_learns_it(served, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    harness, base, truth = served
    wait = WebDriverWait(browser, 20)
    browser.get(f"{base}/labeling?annotator=mallory")  # no token yet: the page loads and asks for one
    wait.until(ec.text_to_be_present_in_element((By.ID, "driftline-who"), "not signed in"))
    browser.find_element(By.ID, "driftline-token").send_keys("dl_forged")
    browser.find_element(By.ID, "driftline-token-save").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "driftline-who"), "unknown or revoked token"))
    browser.find_element(By.ID, "load").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Sign in with your annotator token"))
    browser.find_element(By.ID, "driftline-token").send_keys(ALICE_TOKEN)
    browser.find_element(By.ID, "driftline-token-save").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "driftline-who"), "signed in as alice (annotator)"))
    wait.until(ec.visibility_of_element_located((By.ID, "task")))
    query_id = browser.find_element(By.ID, "query").text
    task_id = browser.find_element(By.ID, "task-id").text
    assert query_id in truth
    rows = browser.find_elements(By.CSS_SELECTOR, "#docs tr")
    assert [r.get_attribute("data-doc") for r in rows] == list(truth[query_id])

    browser.find_element(By.ID, "submit").click()  # nothing graded yet: the page refuses
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Grade every document"))
    assert labels_of(harness.emitted) == []

    for doc_id, grade in truth[query_id].items():
        browser.find_element(By.CSS_SELECTOR, f'input[name="grade-{doc_id}"][value="{grade}"]').click()
    browser.find_element(By.ID, "submit").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Submitted"))

    [label] = labels_of(harness.emitted)  # named after the token, whatever the URL said
    assert (label.task_id, label.query_id, label.annotator) == (task_id, query_id, "alice")
    assert label.grades == truth[query_id]
    harness.deliver_labels()
    assert harness.service.model_version() == 1

    # the token is kept for the session: a reload stays signed in without asking again
    browser.refresh()
    wait.until(ec.text_to_be_present_in_element((By.ID, "driftline-who"), "signed in as alice"))
    # the other task goes to the next annotator; skipping it leaves alice with nothing to do
    browser.find_element(By.ID, "load").click()
    wait.until(ec.visibility_of_element_located((By.ID, "task")))
    other = browser.find_element(By.ID, "query").text
    assert other != query_id
    browser.find_element(By.ID, "skip").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "No task waiting"))


def test_producer_supplied_text_is_shown_as_text_never_run(served, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    harness, base, _ = served
    hostile = Query(query_id=HOSTILE, ts=5.0, documents=[Document(doc_id=HOSTILE, features=[1.0] * 5)])
    harness.service.process(QUERIES, [hostile])
    wait = WebDriverWait(browser, 20)
    browser.get(f"{base}/labeling#token={ALICE_TOKEN}")  # a link may carry the token once
    wait.until(ec.visibility_of_element_located((By.ID, "task")))
    assert "token" not in browser.current_url  # dropped from the address bar at once
    for _ in range(3):  # the hostile task comes after the two ordinary ones, whatever the order
        shown = browser.find_element(By.ID, "query").text
        if shown == HOSTILE:
            break
        browser.find_element(By.ID, "skip").click()
        wait.until(lambda b, was=shown: b.find_element(By.ID, "query").text != was)
    assert browser.find_element(By.ID, "query").text == HOSTILE
    assert browser.find_element(By.ID, "query-text").text == HOSTILE  # no text: the id stands in
    assert browser.find_element(By.CSS_SELECTOR, "#docs tr td").text == HOSTILE
    assert browser.find_elements(By.CSS_SELECTOR, "#docs img, #query img, #query-text img") == []
    assert browser.execute_script("return window.pwned === undefined")


def keys(browser: object, *pressed: str) -> None:
    """Press keys wherever the focus is, as a person at the keyboard would."""
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(browser)
    for key in pressed:
        chain.send_keys(key)
    chain.perform()


def test_a_person_labels_movies_by_keyboard_and_sees_the_next_task(tmp_path: Path, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    queries, truth = movielens_queries(write_ml(tmp_path / "ml", RATINGS), docs_per_query=3)
    harness = make(FakeClock(), budget=2, budget_window=2)
    wait = WebDriverWait(browser, 20)
    with serving(harness) as base:
        browser.get(f"{base}/labeling#token={ALICE_TOKEN}")
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "No task waiting"))
        with harness.service.lock:  # the queries arrive while the page is open
            harness.service.process(QUERIES, queries)
        keys(browser, Keys.ENTER)  # take a task
        wait.until(ec.visibility_of_element_located((By.ID, "task")))
        query = next(q for q in queries if q.query_id == browser.find_element(By.ID, "query").text)
        assert browser.find_element(By.ID, "query-text").text == query.text
        titles = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#docs .title")]
        assert titles == [d.title for d in query.documents]
        assert "<script>x</script> (1990)" in titles  # a producer's markup, shown as the text it is
        assert browser.execute_script("return document.querySelectorAll('#docs script').length") == 0
        assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#docs .snippet")] == [
            d.snippet for d in query.documents
        ]
        links = browser.find_elements(By.CSS_SELECTOR, "#docs a.title")
        assert [a.get_attribute("href") for a in links] == [d.url for d in query.documents]
        assert browser.find_element(By.ID, "depth").text == "1"  # two tasks: one leased, one waiting
        assert browser.find_element(By.ID, "labeled").text == "0"
        assert browser.find_element(By.ID, "lease-left").text in ("1:00", "0:59")  # lease_s = 60
        wait.until(lambda b: b.find_element(By.ID, "lease-left").text in ("0:57", "0:56"))  # counts down

        grades = list(truth[query.query_id].values())
        keys(browser, *[str(g) for g in grades])  # each digit grades the row and moves down
        # the focus stays on the last row; up to the first, down to the second, regrade it
        keys(browser, Keys.ARROW_UP, Keys.ARROW_UP, Keys.ARROW_DOWN, "4")
        grades[-2] = 4
        first_task = browser.find_element(By.ID, "task-id").text
        keys(browser, Keys.ENTER)  # submit
        wait.until(
            ec.text_to_be_present_in_element((By.ID, "status"), f"Submitted 3 grades for {query.query_id}")
        )
        wait.until(lambda b: b.find_element(By.ID, "task-id").text not in ("", first_task))  # the next task
        assert browser.find_element(By.ID, "labeled").text == "1"
        assert browser.find_element(By.ID, "depth").text == "0"

        [label] = labels_of(harness.emitted)
        assert (label.task_id, label.annotator, label.model_version) == (first_task, "alice", 0)
        assert label.grades == dict(zip(truth[query.query_id], grades, strict=True))
        assert browser.execute_script("return window.pwned === undefined")


def test_the_real_movielens_stream_shows_titles_a_person_can_judge(browser, tmp_path) -> None:
    """The page on the real stream (``DRIFTLINE_LABELING_SCREENSHOT=docs/img/labeling.png`` keeps
    the screenshot for the docs)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    queries, _ = movielens_queries(fetch())
    harness = make(FakeClock(), budget=2, budget_window=2)
    harness.service.process(QUERIES, queries[:2])
    with serving(harness) as base:
        browser.set_window_size(1200, 900)
        browser.get(f"{base}/labeling#token={ALICE_TOKEN}")
        WebDriverWait(browser, 20).until(ec.visibility_of_element_located((By.ID, "task")))
        shown = browser.find_element(By.ID, "task").text
        task_query = next(q for q in queries[:2] if q.query_id in shown or (q.text and q.text[:40] in shown))
        assert all(doc.title and doc.title in shown for doc in task_query.documents)
        keys(browser, "3", "4", "1")  # a person part way through
        target = os.environ.get("DRIFTLINE_LABELING_SCREENSHOT") or str(tmp_path / "labeling.png")
        assert browser.save_screenshot(target)
