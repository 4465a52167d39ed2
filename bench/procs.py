"""What the stream benches share: roles as child processes on free ports, /metrics scraping, machine load.

Each bench starts real ``driftline worker`` / ``driftline serve`` processes (the same code paths as
a deployment) against one embedded broker, each role with its own topic prefix and app id so runs
never see each other's records.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from roles.main_job import stop_process, wait_http
from streams.broker import free_port

ROOT = Path(__file__).resolve().parents[1]

#: A metric sample: (name, sorted label pairs) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def loadavg() -> str:
    """The 1/5/15-minute load averages, printed beside every timing (the machine is shared)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


@dataclass
class Role:
    """A ``driftline worker`` or ``driftline serve`` child process and its HTTP base URL."""

    process: subprocess.Popen[bytes]
    base: str
    log: Path

    def stop(self) -> None:
        stop_process(self.process)


def start_role(
    command: str,
    services: str,
    home: Path,
    bootstrap: str,
    prefix: str,
    options: Sequence[str] = (),
    cpus: str | None = None,
    env: dict[str, str] | None = None,
) -> Role:
    """Start ``driftline <command> --services <services>`` (pinned with ``taskset -c cpus`` if given)."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ, "DRIFTLINE_BOOTSTRAP_SERVERS": bootstrap, "DRIFTLINE_TOPIC_PREFIX": prefix,
        "DRIFTLINE_APP_ID": f"bench-{prefix.strip('.')}", "DRIFTLINE_DEVICE": "cpu", **(env or {}),
    }  # fmt: skip
    argv = [sys.executable, "-m", "streams.cli", "--home", str(home), command,
            "--services", services, "--http-port", str(port)]  # fmt: skip
    for option in options:
        argv += ["--option", option]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    log = home / f"{command}-{port}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, env=environment, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return Role(process, f"http://127.0.0.1:{port}", log)


def wait_ready(role: Role, timeout_s: float = 180.0) -> None:
    wait_http(f"{role.base}/ready", timeout_s, role.process)


def scrape(base: str, timeout_s: float = 30.0) -> Samples:
    """Every sample of ``base``/metrics (long timeout: a busy worker can stall its loop for seconds)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=timeout_s) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))
