"""Tokens reach every process through the tokens topic, whatever home they were added on."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.auth import HttpSecurity
from streams.cli import main as driftline
from streams.http import make_app
from streams.tokens import Role, TokenFile, new_token
from streams.topics import ensure_topics

from .conftest import Server, eventually, request
from .test_http_auth import Probe

pytestmark = pytest.mark.kafka


def test_a_token_added_on_one_home_works_on_a_worker_with_another_home(
    kafka, topic_prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_topics(kafka.bootstrap)
    one, two = tmp_path / "one", tmp_path / "two"
    apps = [
        make_app([Probe()], security=HttpSecurity(home=home, bootstrap=kafka.bootstrap))
        for home in (one, two)
    ]
    with Server(apps[0]) as first, Server(apps[1]) as second:
        cli = ["--home", str(one), "--bootstrap-servers", kafka.bootstrap]
        assert driftline([*cli, "tokens", "add", "alice", "--role", "annotator"]) == 0
        alice = {"Authorization": f"Bearer {capsys.readouterr().out.strip().splitlines()[-1]}"}

        def status(base: str, who: dict[str, str]) -> int:
            return request("POST", f"{base}/label", json={}, headers=who)[0]

        assert eventually(lambda: status(second, alice) == 200), "home two never learned alice's token"
        # home one learns it asynchronously too (its token file is polled, the topic followed)
        assert eventually(lambda: status(first, alice) == 200), "home one never learned alice's token"

        # added while no broker answered: only in home one's file; home one's process publishes it
        token, record = new_token("bob", Role.ADMIN)
        TokenFile(one).append(record)
        bob = {"Authorization": f"Bearer {token}"}
        assert eventually(lambda: status(second, bob) == 200), "home one's file was not forwarded"

        assert (
            driftline(
                ["--home", str(two), "--bootstrap-servers", kafka.bootstrap, "tokens", "revoke", "alice"]
            )
            == 0
        )
        assert eventually(lambda: status(first, alice) == 401 and status(second, alice) == 401)
        assert status(second, bob) == 200

    capsys.readouterr()
    assert driftline(["--home", str(two), "--bootstrap-servers", kafka.bootstrap, "tokens", "list"]) == 0
    listing = capsys.readouterr().out
    assert "alice" in listing and "revoked" in listing and "bob" in listing and "admin" in listing
