"""The embedded broker's TLS material: made with keytool whatever the random store password is."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streams import broker_tls
from streams.broker_tls import BrokerTls


def test_a_password_that_keytool_could_take_for_a_jvm_option_still_makes_the_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # token_urlsafe gives such a password once in 4,096 draws: keytool's launcher took it, when
    # passed as an argument, for a JVM option and failed ("Could not find or load main class").
    monkeypatch.setattr(broker_tls.secrets, "token_urlsafe", lambda n: "-JwB5iqKLOTW8pu1qQh77n1uvZBhTEwc")
    tls = BrokerTls(tmp_path / "tls").ensure()
    assert tls.ready and tls.password == "-JwB5iqKLOTW8pu1qQh77n1uvZBhTEwc"
    secret = str(tls.root / "store-password")
    listed = subprocess.run(
        ["keytool", "-list", "-keystore", str(tls.keystore), "-storepass:file", secret],
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert "broker" in listed.stdout
