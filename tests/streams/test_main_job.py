"""The main job as a user runs it: one command brings up Kafka, a worker per service and the replay."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.broker import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.status, answer.read()


def test_run_starts_broker_worker_and_replays_real_data(tmp_path, data_dir):
    port = free_port()
    env = {
        **os.environ,
        "DRIFTLINE_BOOTSTRAP_SERVERS": "",
        "DRIFTLINE_KAFKA_PORT": str(free_port()),
        "DRIFTLINE_CONTROLLER_PORT": str(free_port()),
        "DRIFTLINE_HTTP_PORT": str(port),
        "DRIFTLINE_TOPIC_PREFIX": "mainjob.",
    }
    command = [sys.executable, "-m", "streams.cli", "--home", str(tmp_path), "run",
               "--services", "tally", "--duration", "25", "--rate", "2000"]  # fmt: skip
    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        assert job.stdout is not None
        for line in job.stdout:  # until the workers are ready, then ask the one port
            lines.append(line)
            if "worker ready" in line:
                break
        base = f"http://127.0.0.1:{port}"
        assert get(f"{base}/ready")[0] == 200
        body = get(f"{base}/metrics")[1]
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert {s.labels["service"] for s in families["driftline_consumer_lag"].samples} == {"tally"}
        with pytest.raises(urllib.error.HTTPError) as unknown:  # the tally worker's own answer
            get(f"{base}/tally/no-such-series")
        assert unknown.value.code == 404
        lines += job.stdout.readlines()
        assert job.wait(240) == 0, "".join(lines)
    finally:
        job.kill()
    out = "".join(lines)
    assert "Kafka ready on" in out and "worker ready" in out
    assert "replayed 17420 events of ETTh2" in out
    # The status view: one row per service, from the status topic the worker publishes to.
    rows = [line.split() for line in out.splitlines() if line.startswith("tally ")]
    assert rows, out
    rates = [float(row[2].replace(",", "")) for row in rows]
    assert max(rates) > 0 and all(row[1] in ("0/1", "1/1") for row in rows), out
    assert out.rstrip().endswith("[driftline] stopped")
    assert (tmp_path / "kafka" / "data" / "meta.properties").exists()
    assert (tmp_path / "worker-tally.log").exists()
