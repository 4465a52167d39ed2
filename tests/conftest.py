"""Shared fixtures: the real embedded Kafka broker (once per session) and worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.client import TOKEN_VARIABLE
from streams.config import Settings, shared_data_dir
from streams.tokens import Role, TokenFile, TokenRecord, new_token


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not path.exists():
        pytest.skip(f"real datasets not found at {path} (set DRIFTLINE_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real Apache Kafka 4.1 node started by the project, on free loopback ports."""
    home = tmp_path_factory.mktemp("kafka")
    cache = Settings.from_env().cache
    broker = EmbeddedBroker.on_free_ports(home, cache)
    broker.start(timeout=180, out=sys.stderr)
    yield broker
    broker.stop()


@pytest.fixture
def topic_prefix(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh topic namespace per test, so tests never see each other's events."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    monkeypatch.setenv("DRIFTLINE_TOPIC_PREFIX", prefix)
    return prefix


class WorkerProcess:
    """``driftline worker`` in a child process, restartable and killable like in production."""

    def __init__(
        self,
        bootstrap: str,
        home: Path,
        services: str,
        options: list[str],
        prefix: str,
        env: dict[str, str] | None = None,
        command: str = "worker",
    ) -> None:
        self.home = home
        self.command = command
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.services = services
        self.options = options
        self.env = {
            **os.environ,
            "DRIFTLINE_BOOTSTRAP_SERVERS": bootstrap,
            "DRIFTLINE_TOPIC_PREFIX": prefix,
            "DRIFTLINE_APP_ID": f"app-{prefix.rstrip('.')}",
            "DRIFTLINE_DEVICE": "cpu",
            "DRIFTLINE_LOGLEVEL": "info",  # the log is what a failing test shows
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True, **env: str) -> WorkerProcess:
        """Start the process (``env``: extra variables for this start only, e.g. a crash point)."""
        from roles.main_job import wait_http

        command = [sys.executable, "-m", "streams.cli", "--home", str(self.home), self.command,
                   "--services", self.services, "--http-port", str(self.port)]  # fmt: skip
        for option in self.options:
            command += ["--option", option]
        log = open(self.home / "worker.log", "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            command, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        if wait:
            wait_http(f"{self.base}/ready", timeout_s=120, process=self.process)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final commit — the crash case."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        from roles.main_job import stop_process

        if self.process is not None:
            stop_process(self.process)

    def log(self) -> str:
        return (self.home / "worker.log").read_text(errors="replace")


class MintedTokens:
    """Tokens minted for one test, written into the home of every worker the test makes.

    Write routes always need a token, and a label carries its token's name, so each person in a
    test gets a token of their own. The workers read their home's token file while they run.
    """

    def __init__(self) -> None:
        self.records: list[TokenRecord] = []
        self.homes: list[Path] = []
        #: The test's own admin token, minted first.
        self.admin = self.mint("test-admin", Role.ADMIN)

    def mint(self, name: str, role: Role) -> str:
        token, record = new_token(name, role)
        self.records.append(record)
        for home in self.homes:
            TokenFile(home).append(record)
        return token

    def add_home(self, home: Path) -> None:
        self.homes.append(home)
        for record in self.records:
            TokenFile(home).append(record)


@pytest.fixture
def minted_tokens(monkeypatch: pytest.MonkeyPatch) -> MintedTokens:
    """One admin token per test, sent by :mod:`streams.client` (``$DRIFTLINE_TOKEN``) by default."""
    tokens = MintedTokens()
    monkeypatch.setenv(TOKEN_VARIABLE, tokens.admin)
    return tokens


@pytest.fixture
def worker_factory(
    kafka: EmbeddedBroker, topic_prefix: str, tmp_path: Path, minted_tokens: MintedTokens
) -> Iterator:
    workers: list[WorkerProcess] = []

    def make(
        services: str,
        options: list[str] | None = None,
        name: str = "worker",
        env: dict[str, str] | None = None,
        command: str = "worker",
    ) -> WorkerProcess:
        """A ``driftline worker`` (or ``serve``) process with its own home ``tmp_path/name``."""
        home = tmp_path / name
        home.mkdir(exist_ok=True)
        minted_tokens.add_home(home)
        worker = WorkerProcess(kafka.bootstrap, home, services, options or [], topic_prefix, env, command)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop()
