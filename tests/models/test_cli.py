"""``driftline ctr rollback|versions`` against a real HTTP server running a CtrService on loopback."""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from models import cli
from models.ctr.service import CtrService
from streams.auth import HttpSecurity
from streams.http import make_app
from streams.tokens import Role, TokenStore, new_token
from streams.topics import topic_name
from tests.models.outputs import record_outputs
from tests.models.synthetic import impressions, make_service


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ADMIN_TOKEN, ADMIN = new_token("operator", Role.ADMIN)


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[CtrService, str]]:
    service, _ = make_service(tmp_path, swap_interval_s=0.0)
    record_outputs(service)  # a rollback is recorded on the control topic before it answers
    for seed in range(2):
        service.process(topic_name("impressions"), impressions(64, seed=seed))
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(make_app([service], security=HttpSecurity(store=TokenStore([ADMIN]))))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield service, f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="driftline")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def test_versions_then_rollback(served: tuple[CtrService, str], capsys: pytest.CaptureFixture[str]) -> None:
    service, url = served
    args = parse("ctr", "versions", "--url", url)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "serving version 2" in out and "* v2" in out and "v1" in out
    args = parse("ctr", "rollback", "--url", url)
    assert args.func(args) == 1  # rolling back needs an admin token
    assert "401" in capsys.readouterr().err and service.model_version() == 2
    args = parse("ctr", "rollback", "--url", url, "--token", ADMIN_TOKEN)
    assert args.func(args) == 0
    assert "now serving version 1 (was 2)" in capsys.readouterr().out
    assert service.model_version() == 1
    assert args.func(args) == 1  # nothing older than version 1 is kept
    assert "409" in capsys.readouterr().err


def test_unreachable_worker_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("ctr", "versions", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert args.func(args) == 1
    assert "cannot reach the worker" in capsys.readouterr().err
