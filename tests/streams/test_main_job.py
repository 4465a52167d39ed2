"""The main job as a user runs it: one command brings up Kafka, the worker and the replay."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streams.broker import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_run_starts_broker_worker_and_replays_real_data(tmp_path, data_dir):
    env = {
        **os.environ,
        "DRIFTLINE_BOOTSTRAP_SERVERS": "",
        "DRIFTLINE_KAFKA_PORT": str(free_port()),
        "DRIFTLINE_CONTROLLER_PORT": str(free_port()),
        "DRIFTLINE_HTTP_PORT": str(free_port()),
        "DRIFTLINE_TOPIC_PREFIX": "mainjob.",
    }
    command = [sys.executable, "-m", "streams.cli", "--home", str(tmp_path), "run",
               "--services", "tally", "--duration", "25", "--rate", "2000"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Kafka ready on" in out and "worker ready" in out
    assert "replayed 17420 events of ETTh2" in out
    # The status view: one row per service, from the status topic the worker publishes to.
    rows = [line.split() for line in out.splitlines() if line.startswith("tally ")]
    assert rows, out
    rates = [float(row[2].replace(",", "")) for row in rows]
    assert max(rates) > 0 and all(row[1] in ("0/1", "1/1") for row in rows), out
    assert out.rstrip().endswith("[driftline] stopped")
    assert (tmp_path / "kafka" / "data" / "meta.properties").exists()
