"""Secured Kafka: the pipeline over SASL_SSL (SCRAM-SHA-512) and mTLS, and refused clients.

One embedded broker for the module opens both listeners (a keytool keystore, a SCRAM user made
when its log dir is formatted). Workers and ``driftline`` commands are real processes configured
only by ``DRIFTLINE_KAFKA_*`` variables, as in production.
"""

from __future__ import annotations

import ast
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import BrokerError, BrokerSecurity, EmbeddedBroker
from streams.config import Settings
from streams.kafka_security import KafkaSecurityError, client_security, security_options
from streams.schemas import Observation
from streams.tally import expected_counts
from tests.conftest import WorkerProcess
from tests.streams.helpers import get_json, wait_until

USER, PASSWORD = "alice", "alice-s3cret"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One broker with a SASL_SSL and an SSL (client certificates required) listener."""
    broker = EmbeddedBroker.on_free_ports(
        tmp_path_factory.mktemp("secured-kafka"),
        Settings.from_env().cache,
        BrokerSecurity(("SASL_SSL", "SSL"), {USER: PASSWORD}),
    )
    broker.start(timeout=240, out=sys.stderr)
    yield broker
    broker.stop()


def client_env(broker: EmbeddedBroker, protocol: str, password: str = PASSWORD) -> dict[str, str]:
    """The ``DRIFTLINE_*`` variables a process needs to use ``protocol`` on ``broker``."""
    env = {
        "DRIFTLINE_BOOTSTRAP_SERVERS": broker.bootstrap_for(protocol),
        "DRIFTLINE_KAFKA_SECURITY_PROTOCOL": protocol,
        "DRIFTLINE_KAFKA_SSL_CAFILE": str(broker.tls.ca_pem),
    }
    if protocol == "SASL_SSL":
        env |= {"DRIFTLINE_KAFKA_SASL_USERNAME": USER, "DRIFTLINE_KAFKA_SASL_PASSWORD": password}
    else:
        env |= {
            "DRIFTLINE_KAFKA_SSL_CERTFILE": str(broker.tls.client_pem),
            "DRIFTLINE_KAFKA_SSL_KEYFILE": str(broker.tls.client_key),
        }
    return env


def driftline(*args: str, env: dict[str, str], home: Path) -> subprocess.Popen[str]:
    """A ``driftline`` command in a child process (its output captured)."""
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "--home", str(home), *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- settings to client options (no broker) ---------------------------------------------------------
def test_plaintext_adds_nothing_and_bad_settings_are_refused_before_connecting(tmp_path):
    assert client_security(Settings()) == {}
    with pytest.raises(KafkaSecurityError, match="unknown Kafka security protocol 'SASL_PLAINTEXT'"):
        security_options("SASL_PLAINTEXT")
    with pytest.raises(KafkaSecurityError, match="SASL_SSL needs a user"):
        security_options("SASL_SSL", username="alice")
    with pytest.raises(KafkaSecurityError, match="unsupported SASL mechanism 'GSSAPI'"):
        security_options("SASL_SSL", "GSSAPI", "alice", "pw")
    with pytest.raises(KafkaSecurityError, match=r"SSL \(mTLS\) needs a client certificate"):
        security_options("SSL")
    with pytest.raises(KafkaSecurityError, match="DRIFTLINE_KAFKA_SSL_CAFILE: no such file"):
        security_options("SSL", cafile=str(tmp_path / "missing.pem"), certfile="c", keyfile="k")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(KafkaSecurityError, match="cannot load the Kafka TLS files"):
        security_options("SASL_SSL", username="a", password="b", cafile=str(tmp_path / "junk.pem"))


def test_settings_from_environment_reach_both_libraries(monkeypatch):
    monkeypatch.setenv("DRIFTLINE_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("DRIFTLINE_KAFKA_SASL_USERNAME", "bob")
    monkeypatch.setenv("DRIFTLINE_KAFKA_SASL_PASSWORD", "pw")
    options = client_security()
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("bob", "pw")
    assert options["ssl_context"].check_hostname  # the broker's name is verified
    from aiokafka import AIOKafkaProducer
    from kafka import KafkaProducer

    # both libraries accept exactly these names
    assert set(options) <= set(KafkaProducer.DEFAULT_CONFIG)
    import inspect

    assert set(options) <= set(inspect.signature(AIOKafkaProducer).parameters)


def test_the_settings_select_the_embedded_broker_mode(monkeypatch, tmp_path):
    assert EmbeddedBroker(tmp_path, tmp_path).security.protocols == ("PLAINTEXT",)  # the default
    monkeypatch.setenv("DRIFTLINE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(BrokerError, match="a SASL_SSL broker needs a user"):
        EmbeddedBroker(tmp_path, tmp_path)
    monkeypatch.setenv("DRIFTLINE_KAFKA_SASL_USERNAME", "carol")
    monkeypatch.setenv("DRIFTLINE_KAFKA_SASL_PASSWORD", "pw")
    broker = EmbeddedBroker(tmp_path, tmp_path)
    assert broker.security == BrokerSecurity(("SASL_SSL",), {"carol": "pw"})
    for mechanism in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
        assert f'--add-scram={mechanism}=[name="carol",password="pw"]' in broker._scram_arguments()
    with pytest.raises(BrokerError, match="the SCRAM user name 'broker' is the embedded broker's own"):
        BrokerSecurity(("SASL_SSL",), {"broker": "pw"})
    with pytest.raises(BrokerError, match="without quotes"):
        BrokerSecurity(("SASL_SSL",), {"carol": 'p"w'})
    with pytest.raises(BrokerError, match="need 1 extra port"):
        EmbeddedBroker(tmp_path, tmp_path, security=BrokerSecurity(("SSL", "PLAINTEXT")))


def test_every_kafka_client_of_the_service_is_built_with_security_options():
    """Each aiokafka or kafka-python client in the packages passes ``**`` options (``client_security()``
    or options derived from it), or is built by ``connect``: a client built without them would
    reach a secured cluster in plaintext."""
    clients = {"AIOKafkaConsumer", "AIOKafkaProducer", "KafkaConsumer", "KafkaProducer", "KafkaAdminClient"}
    root = Path(__file__).resolve().parents[2]
    bare = []
    for package in ("streams", "roles", "models", "forecasters", "rankers"):
        for path in sorted((root / package).rglob("*.py")):
            calls = [n for n in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(n, ast.Call)]
            bare += [
                f"{path.relative_to(root)}:{call.lineno} {call.func.id}"
                for call in calls
                if isinstance(call.func, ast.Name)
                and call.func.id in clients
                and not any(keyword.arg is None for keyword in call.keywords)
            ]
    assert bare == []


# -- the real secured broker ---------------------------------------------------------------------
def observations(n: int) -> list[Observation]:
    rng = random.Random(n)
    return [Observation(series=f"s{i % 5}", ts=float(i), values=[rng.uniform(-1, 1)]) for i in range(n)]


@pytest.mark.kafka
@pytest.mark.parametrize("protocol", ["SASL_SSL", "SSL"])
def test_pipeline_runs_over_the_secured_broker(secured, protocol, topic_prefix, tmp_path):
    env = client_env(secured, protocol)
    worker = WorkerProcess(secured.bootstrap_for(protocol), tmp_path, "tally", [], topic_prefix, env)
    worker.start()
    try:
        records = observations(300)
        lines = tmp_path / "observations.jsonl"
        lines.write_text("".join(r.to_bytes().decode() + "\n" for r in records))
        replay = driftline("replay", str(lines), "--topic", "observations", "--quiet", env=env, home=tmp_path)
        out, err = replay.communicate(timeout=120)
        assert replay.returncode == 0, err
        assert "replayed 300 events" in out
        wait_until(
            lambda: get_json(f"{worker.base}/tally")[1].get("events") == 300,
            what=f"300 events applied over {protocol}",
            explain=worker.log,
        )
        for series, (count, total) in expected_counts(records).items():
            body = get_json(f"{worker.base}/tally/{series}")[1]
            assert body["count"] == count and body["sum"] == pytest.approx(total)
        assert get_json(f"{worker.base}/health")[1]["status"] == "ok"
    finally:
        worker.stop()


@pytest.mark.kafka
def test_wrong_password_is_a_clear_error_from_produce_and_worker(secured, topic_prefix, tmp_path):
    env = client_env(secured, "SASL_SSL", password="not-the-password")
    started = time.monotonic()
    record = observations(1)[0].to_bytes().decode()
    produce = driftline("produce", "--topic", "observations", record, env=env, home=tmp_path)
    worker_env = {**env, "DRIFTLINE_TOPIC_PREFIX": topic_prefix}
    worker = driftline("worker", "--services", "tally", "--http-port", "0", env=worker_env, home=tmp_path)
    for command in (produce, worker):
        out, err = command.communicate(timeout=120)
        assert command.returncode == 2, (out, err)
        assert "Traceback" not in err, err
        last = err.strip().splitlines()[-1]
        # the broker's error answer, or (when the broker's close loses that answer) the likely cause
        assert re.fullmatch(
            rf"driftline: error: Kafka at {secured.bootstrap_for('SASL_SSL')} "
            r"(refused this client: .*Authentication failed.* SCRAM-SHA-512.*"
            r"|dropped every connection of this client \(SASL_SSL, user 'alice'\) "
            r".*wrong user name or password.*)",
            last,
        ), err
    assert time.monotonic() - started < 90  # the libraries' bootstrap time-out, never a hang


@pytest.mark.kafka
def test_client_without_a_trusted_certificate_is_refused(secured, monkeypatch, tmp_path):
    from kafka import KafkaProducer

    from streams.kafka_security import connect

    key, cert = tmp_path / "rogue.key", tmp_path / "rogue.pem"  # signed by no CA the broker trusts
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=rogue", "-days", "1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    env = client_env(secured, "SSL") | {
        "DRIFTLINE_KAFKA_SSL_CERTFILE": str(cert),
        "DRIFTLINE_KAFKA_SSL_KEYFILE": str(key),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(KafkaSecurityError, match=r"refused this client: .*(certificate|SSL)"):
        connect(KafkaProducer, bootstrap_servers=secured.bootstrap_for("SSL"), bootstrap_timeout_ms=5000)


@pytest.mark.kafka
def test_scram_sha_256_works_too(secured, monkeypatch, topic_prefix):
    from kafka import KafkaProducer

    from streams.kafka_security import connect

    for name, value in (
        client_env(secured, "SASL_SSL") | {"DRIFTLINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"}
    ).items():
        monkeypatch.setenv(name, value)
    producer = connect(KafkaProducer, bootstrap_servers=secured.bootstrap_for("SASL_SSL"))
    try:
        assert producer.send(f"{topic_prefix}sha256", b"x").get(30).offset == 0
    finally:
        producer.close()
