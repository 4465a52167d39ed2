from __future__ import annotations

import os

import pytest

from streams.broker import BrokerError, EmbeddedBroker, KafkaJars
from streams.cli import parse_options
from streams.config import Settings
from streams.registry import parse_names


def test_settings_layering(monkeypatch, tmp_path):
    monkeypatch.setenv("DRIFTLINE_KAFKA_PORT", "19000")
    monkeypatch.setenv("DRIFTLINE_BOOTSTRAP_SERVERS", "")
    settings = Settings.from_env(home=str(tmp_path), http_port=None)
    assert settings.kafka_port == 19000 and settings.home == tmp_path and settings.http_port == 8080
    assert settings.embedded and settings.bootstrap == "127.0.0.1:19000"
    external = Settings.from_env(bootstrap_servers="kafka:9092")
    assert not external.embedded and external.bootstrap == "kafka:9092"


def test_missing_java_or_maven_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither java nor mvn on PATH
    with pytest.raises(BrokerError, match="`mvn` was not found"):
        KafkaJars(tmp_path / "cache").resolve()
    broker = EmbeddedBroker(tmp_path / "home", tmp_path / "cache")
    with pytest.raises(BrokerError, match="`java` was not found"):
        broker._java("kafka.Kafka")


def test_busy_port_is_reported(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        broker = EmbeddedBroker(tmp_path, tmp_path / "cache", port=port)
        with pytest.raises(BrokerError, match=f"port {port} .* already in use"):
            broker.start()


def test_service_names_and_options():
    assert parse_names("tally, forecast") == ["tally", "forecast"]
    with pytest.raises(ValueError, match="unknown service"):
        parse_names("tally,nope")
    assert parse_options(["ctr.swap_interval_s=5", "ctr.model=dcn"]) == {
        "ctr": {"swap_interval_s": 5, "model": "dcn"}
    }
    with pytest.raises(SystemExit):
        parse_options(["nodot=1"])


def test_brokers_starting_at_once_download_the_jars_once(monkeypatch, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    calls = tmp_path / "mvn-calls"
    fake = tmp_path / "bin" / "mvn"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho run >> {calls}\nsleep 0.5\n")  # a slow download
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    with ThreadPoolExecutor(3) as pool:
        libs = list(pool.map(lambda _: KafkaJars(tmp_path / "cache").resolve(), range(3)))
    assert len(set(libs)) == 1
    assert calls.read_text().splitlines() == ["run"]  # one download; the others waited and found it done
