"""Kafka client security from settings: one set of keyword arguments for aiokafka and kafka-python.

Both libraries take the same names (``security_protocol``, ``sasl_mechanism``,
``sasl_plain_username``, ``sasl_plain_password``, ``ssl_context``), so every place that builds a
client adds ``**client_security()`` and nothing else. Supported: PLAINTEXT (the default, no
options), SASL_SSL with SCRAM (a password over TLS) and SSL with a client certificate (mTLS).
Settings that cannot work (an unknown protocol, a missing password or file) raise
:class:`KafkaSecurityError` before anything connects.

kafka-python retries a connection the cluster refuses (wrong password, untrusted certificate)
until its bootstrap time-out, then raises an error that names no cause: the cause only reaches its
log, and not always (a broker that closes a connection after a failed SCRAM exchange sometimes
loses its error answer, leaving only "socket disconnected"). :func:`connect` builds a
kafka-python client (they connect as they are built, so every role meets the cluster first
through one: ``ensure_topics`` or the producer) and turns that error into a
:class:`KafkaSecurityError` saying what the broker refused, or that it dropped every connection
of a secured client before letting it in.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from streams.config import Settings

PROTOCOLS = ("PLAINTEXT", "SASL_SSL", "SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")


#: Words of the library's log lines that say the broker refused the client, not that it is away.
REFUSAL_MARKS = ("AuthenticationFailed", "Authentication failed", "SSLError", "CERTIFICATE_VERIFY_FAILED",
                 "certificate", "SSL handshake")  # fmt: skip
#: A connection the broker accepted, then closed before answering (see the module docstring).
DROPPED_MARK = "socket disconnected"

Client = TypeVar("Client")


class KafkaSecurityError(ValueError):
    """Kafka security settings that cannot work, or credentials the cluster refused."""


class _Refusals(logging.Handler):
    """Remembers the newest refusal and the newest dropped connection kafka-python logged."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._lock = threading.Lock()
        self.newest: dict[str, tuple[float, str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        kind = (
            "refused"
            if any(m in message for m in REFUSAL_MARKS)
            else "dropped"
            if DROPPED_MARK in message
            else None
        )
        if kind:
            with self._lock:
                self.newest[kind] = (time.monotonic(), message)

    def since(self, kind: str, started: float) -> str | None:
        with self._lock:
            at, message = self.newest.get(kind, (0.0, ""))
            return message if at >= started else None


_REFUSALS = _Refusals()
logging.getLogger("kafka").addHandler(_REFUSALS)


def connect(client: Callable[..., Client], **options: Any) -> Client:
    """``client(**options, **client_security())``, raising :class:`KafkaSecurityError` with the
    broker's reason when the cluster refused the connection (see the module docstring)."""
    from kafka.errors import KafkaError

    security = client_security()
    where = f"Kafka at {options.get('bootstrap_servers')}"
    started = time.monotonic()
    try:
        return client(**options, **security)
    except KafkaError:
        if reason := _REFUSALS.since("refused", started):
            raise KafkaSecurityError(f"{where} refused this client: {reason}") from None
        if security and (reason := _REFUSALS.since("dropped", started)):
            who = (
                f"user {security['sasl_plain_username']!r}"
                if "sasl_mechanism" in security
                else "its certificate"
            )
            raise KafkaSecurityError(
                f"{where} dropped every connection of this client ({security['security_protocol']}, {who}) "
                f"before letting it in; the usual cause is a wrong user name or password, or a client "
                f"certificate the broker does not trust (last: {reason})"
            ) from None
        raise


def client_security(settings: Settings | None = None) -> dict[str, Any]:
    """Keyword arguments securing an aiokafka or kafka-python client (``{}`` for PLAINTEXT).

    Without ``settings``, the process's ``DRIFTLINE_*`` environment decides (so every client of
    a process, however deep, is secured alike without passing settings around).
    """
    settings = settings or Settings.from_env()
    return security_options(
        settings.kafka_security_protocol,
        mechanism=settings.kafka_sasl_mechanism,
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password,
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
    )


def security_options(
    protocol: str,
    mechanism: str = "SCRAM-SHA-512",
    username: str = "",
    password: str = "",
    cafile: str = "",
    certfile: str = "",
    keyfile: str = "",
) -> dict[str, Any]:
    """The client keyword arguments for one protocol and its credentials; see the module docstring."""
    protocol = protocol.upper()
    if protocol not in PROTOCOLS:
        raise KafkaSecurityError(
            f"unknown Kafka security protocol {protocol!r} (DRIFTLINE_KAFKA_SECURITY_PROTOCOL): "
            f"use one of {', '.join(PROTOCOLS)}"
        )
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {
        "security_protocol": protocol,
        "ssl_context": _ssl_context(cafile, certfile, keyfile),
    }
    if protocol == "SSL":
        if not certfile:
            raise KafkaSecurityError(
                "SSL (mTLS) needs a client certificate: set DRIFTLINE_KAFKA_SSL_CERTFILE and _KEYFILE"
            )
        return options
    if mechanism.upper() not in MECHANISMS:
        raise KafkaSecurityError(
            f"unsupported SASL mechanism {mechanism!r} (DRIFTLINE_KAFKA_SASL_MECHANISM): "
            f"use one of {', '.join(MECHANISMS)}"
        )
    if not username or not password:
        raise KafkaSecurityError(
            "SASL_SSL needs a user: set DRIFTLINE_KAFKA_SASL_USERNAME and DRIFTLINE_KAFKA_SASL_PASSWORD"
        )
    return {
        **options,
        "sasl_mechanism": mechanism.upper(),
        "sasl_plain_username": username,
        "sasl_plain_password": password,
    }


def _ssl_context(cafile: str, certfile: str, keyfile: str) -> ssl.SSLContext:
    """Verifies the broker (by ``cafile``, else the system CAs) and its host name; presents the
    client pair when given."""
    for name, value in (("CAFILE", cafile), ("CERTFILE", certfile), ("KEYFILE", keyfile)):
        if value and not Path(value).is_file():
            raise KafkaSecurityError(f"DRIFTLINE_KAFKA_SSL_{name}: no such file {value!r}")
    try:
        context = ssl.create_default_context(cafile=cafile or None)
        if certfile:
            context.load_cert_chain(certfile, keyfile or None)
    except ssl.SSLError as exc:
        raise KafkaSecurityError(f"cannot load the Kafka TLS files: {exc}") from None
    return context
