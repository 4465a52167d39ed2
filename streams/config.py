"""Service settings: defaults that run everything on one machine, overridable by environment.

Every field maps to ``DRIFTLINE_<FIELD>`` (e.g. ``DRIFTLINE_BOOTSTRAP_SERVERS=kafka:9092`` points the
service at an existing cluster instead of the embedded broker).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "driftline"


@dataclass(frozen=True)
class Settings:
    """Where things live and how to reach Kafka and HTTP."""

    #: Empty means: start and use the embedded broker.
    bootstrap_servers: str = ""
    #: Checkpoints, broker log dirs and worker state.
    home: Path = field(default_factory=lambda: Path("var"))
    #: Kafka jars and downloaded datasets (shared by every checkout).
    cache: Path = field(default_factory=_default_cache)
    kafka_port: int = 9092
    controller_port: int = 9093
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    #: Faust application id: consumer group and internal topic prefix.
    app_id: str = "driftline"
    #: Comma-separated services the worker runs (see ``streams.registry``).
    services: str = "forecast,ctr,rank"
    #: Checkpoints every worker of a deployment reaches (a directory here); empty: ``<home>/checkpoints``.
    checkpoint_store: str = ""
    #: Checkpoint every this many seconds or applied events per service, whichever comes first.
    checkpoint_interval_s: float = 10.0
    checkpoint_events: int = 100_000
    #: The URL other processes reach this one's HTTP at (proxied queries); empty: from host and port.
    advertised_url: str = ""
    #: This process's stable name: its static group membership (``group.instance.id``) and status
    #: key. Empty: ``<hostname>-<http_port>``, stable across restarts of the same process.
    instance: str = ""
    #: ``open``: query (reader) routes answer without a token; ``reader``: they need a token too.
    #: Write and admin routes always need one (see :mod:`streams.auth`).
    http_query_auth: str = "open"
    #: Per-request limits (see :mod:`streams.limits`): 413 past the body size, 400 past the JSON
    #: depth or value count, 429 past a token's write rate, 503 past the handler time.
    http_max_body_bytes: int = 8 * 1024**2
    http_max_json_depth: int = 32
    http_max_json_items: int = 500_000
    http_write_rate: float = 20.0
    http_write_burst: int = 40
    http_timeout_s: float = 30.0
    #: Kafka client security (see ``streams.kafka_security``): PLAINTEXT, SASL_SSL or SSL (mTLS).
    #: With the embedded broker it also selects the mode the broker starts in.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    #: PEM files: the CA that signed the brokers (empty: the system's CAs) and, for SSL, the
    #: client's certificate and key. The embedded broker writes its own under ``<home>/kafka/tls``.
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    #: Events larger than this (bytes) or nested deeper than this are dead-lettered unread.
    max_record_bytes: int = 1_048_576
    max_nesting_depth: int = 32

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then ``DRIFTLINE_*`` variables, then explicit non-None overrides."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"DRIFTLINE_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _coerce(f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **{k: _coerce(_field_type(k), v) for k, v in values.items()})

    @property
    def checkpoint_root(self) -> Path:
        return Path(self.checkpoint_store) if self.checkpoint_store else Path(self.home) / "checkpoints"

    @property
    def url(self) -> str:
        """Where other processes reach this one: the advertised URL, else host (or hostname) and port."""
        if self.advertised_url:
            return self.advertised_url.rstrip("/")
        import socket

        host = socket.gethostname() if self.http_host in ("0.0.0.0", "::", "") else self.http_host
        return f"http://{host}:{self.http_port}"

    @property
    def instance_id(self) -> str:
        import socket

        return self.instance or f"{socket.gethostname()}-{self.http_port}"

    @property
    def embedded(self) -> bool:
        return not self.bootstrap_servers

    @property
    def bootstrap(self) -> str:
        """The servers to connect to: the configured cluster or the embedded broker."""
        return self.bootstrap_servers or f"127.0.0.1:{self.kafka_port}"


def _field_type(name: str) -> str:
    for f in fields(Settings):
        if f.name == name:
            return str(f.type)
    raise TypeError(f"unknown setting {name!r}")


def _coerce(kind: Any, value: Any) -> Any:
    kind = str(kind)
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "Path":
        return Path(value)
    return str(value)


def shared_data_dir() -> Path:
    """The real datasets: ``$DRIFTLINE_DATA_DIR``, else ``../shared/data`` beside the project root."""
    if env := os.environ.get("DRIFTLINE_DATA_DIR"):
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"
