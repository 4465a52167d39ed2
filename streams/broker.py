"""The embedded Apache Kafka broker: jars from Maven Central, KRaft storage, one combined node.

``KafkaJars`` resolves ``org.apache.kafka:kafka_2.13`` and the log4j bridge with the machine's Maven
into a cache once. ``EmbeddedBroker`` writes a single-node broker+controller configuration, formats
its log dir on first start, launches ``kafka.Kafka`` with Java 17+ on loopback and waits until the
broker answers metadata requests. The log dir persists across restarts, so topics and committed
offsets survive a stop.

Client listeners are PLAINTEXT by default; :class:`BrokerSecurity` opens SASL_SSL (SCRAM-SHA-512/256
users created when the log dir is formatted) and/or SSL with required client certificates (mTLS)
instead, over TLS material from :mod:`streams.broker_tls`.
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

from streams.broker_tls import BrokerTls
from streams.config import Settings
from streams.kafka_security import MECHANISMS, PROTOCOLS, security_options

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"


class BrokerError(RuntimeError):
    """The embedded broker cannot be resolved, formatted or started; the message says why."""


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"`{tool}` was not found on PATH: {hint}")
    return path


def java_version(java: str) -> int:
    """Major version of ``java`` (17 for 17.0.15)."""
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    for token in out.split():
        token = token.strip('"')
        if token[:1].isdigit():
            major = token.split(".")[0]
            return int(major) if major != "1" else int(token.split(".")[1])
    raise BrokerError(f"cannot read the Java version from: {out.strip()!r}")


def _run_checked(command: list[str], failure: str) -> None:
    """Run a tool to completion; on failure raise :class:`BrokerError` with the end of its output."""
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BrokerError(f"{failure}:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}")


class KafkaJars:
    """The broker's classpath, resolved once into ``<cache>/kafka-<version>/lib``."""

    def __init__(self, cache: Path, version: str = KAFKA_VERSION) -> None:
        self.root = Path(cache) / f"kafka-{version}"
        self.lib = self.root / "lib"
        self.version = version

    @property
    def ready(self) -> bool:
        return (self.root / "RESOLVED").exists()

    def resolve(self, out: IO[str] | None = None) -> Path:
        """Download the jars with Maven unless already cached; return the lib directory.

        Processes that start brokers at once on a fresh machine (parallel test workers, several
        `driftline broker`) take turns on a file lock, so one downloads and the others find it done.
        """
        if self.ready:
            return self.lib
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".resolving.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.ready:
                self._download(out)
        return self.lib

    def _download(self, out: IO[str] | None) -> None:
        mvn = _require("mvn", "install Apache Maven (e.g. `apt-get install maven`) to fetch Kafka's jars")
        pom = resources.files("streams").joinpath("kafka-pom.xml").read_text()
        (self.root / "pom.xml").write_text(pom)
        if out:
            print(
                f"resolving Apache Kafka {self.version} jars from Maven Central into {self.lib} ...", file=out
            )
        started = time.monotonic()
        command = [mvn, "-q", "-B", "-f", str(self.root / "pom.xml"), f"-Dkafka.version={self.version}",
                   "dependency:copy-dependencies", "-DincludeScope=runtime",
                   f"-DoutputDirectory={self.lib}"]  # fmt: skip
        _run_checked(command, f"Maven could not resolve Kafka {self.version}")
        (self.root / "RESOLVED").write_text(f"{time.time()}\n")
        if out:
            print(
                f"resolved {len(list(self.lib.glob('*.jar')))} jars in {time.monotonic() - started:.1f}s",
                file=out,
            )


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open while choosing, so never the same twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


_LOG4J2_PROPERTIES = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
"""


#: The SCRAM mechanism the embedded broker uses itself (clients may use either of MECHANISMS).
SCRAM = "SCRAM-SHA-512"
#: The broker's own SCRAM user (inter-broker and readiness checks): no configured user may take it.
BROKER_USER = "broker"


@dataclass(frozen=True)
class BrokerSecurity:
    """The client listeners' protocols, in order (the first is the bootstrap and the inter-broker
    listener), and the SCRAM users (name -> password) created when the log dir is formatted."""

    protocols: tuple[str, ...] = ("PLAINTEXT",)
    users: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols or len(set(self.protocols)) != len(self.protocols):
            raise BrokerError(
                f"broker listeners must be distinct protocols among {', '.join(PROTOCOLS)} "
                f"(DRIFTLINE_KAFKA_SECURITY_PROTOCOL), got {self.protocols}"
            )
        if "SASL_SSL" in self.protocols and not self.users:
            raise BrokerError(
                "a SASL_SSL broker needs a user: set DRIFTLINE_KAFKA_SASL_USERNAME and _PASSWORD"
            )
        if BROKER_USER in self.users:
            raise BrokerError(
                f"the SCRAM user name {BROKER_USER!r} is the embedded broker's own; choose another"
            )
        for name, password in self.users.items():
            if not name or not password or any(c in name + password for c in '"\\'):
                raise BrokerError(f"SCRAM user {name!r}: name and password must be non-empty, without quotes")

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerSecurity:
        """The mode the settings ask clients for, with their SCRAM user."""
        protocol = settings.kafka_security_protocol.upper()
        user = settings.kafka_sasl_username
        return cls(
            (protocol,), {user: settings.kafka_sasl_password} if protocol == "SASL_SSL" and user else {}
        )

    @property
    def tls(self) -> bool:
        return any(p != "PLAINTEXT" for p in self.protocols)


class EmbeddedBroker:
    """A single-node KRaft Kafka (broker + controller) on 127.0.0.1 with a persistent log dir.

    ``security`` defaults to what the ``DRIFTLINE_KAFKA_*`` settings ask for (PLAINTEXT unless set);
    a second or third listener takes its port from ``extra_ports``.
    """

    def __init__(
        self,
        home: Path,
        cache: Path,
        port: int = 9092,
        controller_port: int = 9093,
        heap: str = "512m",
        security: BrokerSecurity | None = None,
        extra_ports: Sequence[int] = (),
    ) -> None:
        self.home = Path(home).absolute()
        self.jars = KafkaJars(cache)
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.security = security or BrokerSecurity.from_settings(Settings.from_env())
        if len(extra_ports) != len(self.security.protocols) - 1:
            raise BrokerError(
                f"listeners {self.security.protocols} need {len(self.security.protocols) - 1} extra port(s)"
            )
        #: protocol -> client port
        self.listeners = dict(zip(self.security.protocols, (port, *extra_ports), strict=True))
        self.tls = BrokerTls(self.home / "tls")
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def on_free_ports(cls, home: Path, cache: Path, security: BrokerSecurity | None = None) -> EmbeddedBroker:
        """A broker on distinct loopback ports nothing else listens on (tests, benchmarks)."""
        security = security or BrokerSecurity()
        port, controller_port, *extra = free_ports(len(security.protocols) + 1)
        return cls(home, cache, port, controller_port, security=security, extra_ports=extra)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def bootstrap_for(self, protocol: str) -> str:
        """The address of the listener speaking ``protocol``."""
        return f"127.0.0.1:{self.listeners[protocol]}"

    def client_security(self, protocol: str | None = None) -> dict[str, Any]:
        """Client options for this broker's own use of a listener (the first by default): the
        broker's SCRAM user on SASL_SSL, the generated client certificate on SSL."""
        protocol = protocol or self.security.protocols[0]
        if protocol == "PLAINTEXT":
            return {}
        return security_options(
            protocol, SCRAM, BROKER_USER, self._broker_password(), str(self.tls.ca_pem),
            str(self.tls.client_pem) if protocol == "SSL" else "",
            str(self.tls.client_key) if protocol == "SSL" else "",
        )  # fmt: skip

    def _broker_password(self) -> str:
        """The broker's own SCRAM password (inter-broker and readiness checks), made once."""
        path = self.home / "broker-scram-password"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()

    @property
    def log_dir(self) -> Path:
        return self.home / "data"

    @property
    def server_log(self) -> Path:
        return self.home / "server.log"

    # -- configuration ------------------------------------------------------------------------
    def _properties(self) -> str:
        advertised = ",".join(f"{p}://127.0.0.1:{port}" for p, port in self.listeners.items())
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                f"listeners={advertised},CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners={advertised}",
                "controller.listener.names=CONTROLLER",
                f"inter.broker.listener.name={self.security.protocols[0]}",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,"
                + ",".join(f"{p}:{p}" for p in self.listeners),
                *self._security_properties(),
                f"log.dirs={self.log_dir}",
                "num.partitions=4",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "log.retention.hours=168",
                "",
            ]
        )

    def _security_properties(self) -> list[str]:
        """TLS from the generated keystore and CA; SCRAM on SASL_SSL; client certificates on SSL."""
        if not self.security.tls:
            return []
        password = self.tls.password
        lines = [
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={self.tls.keystore}",
            f"ssl.keystore.password={password}",
            f"ssl.key.password={password}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.tls.ca_pem}",
        ]
        if "SSL" in self.listeners:
            lines.append("listener.name.ssl.ssl.client.auth=required")
        if "SASL_SSL" in self.listeners:
            lines += [
                f"sasl.enabled.mechanisms={','.join(MECHANISMS)}",
                f"sasl.mechanism.inter.broker.protocol={SCRAM}",
            ]
            login = "org.apache.kafka.common.security.scram.ScramLoginModule required"
            lines += [
                f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config={login} "
                f'username="{BROKER_USER}" password="{self._broker_password()}";'
                for mechanism in MECHANISMS
            ]
        return lines

    def _write_config(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "server.properties"
        config.write_text(self._properties())
        (self.home / "log4j2.properties").write_text(_LOG4J2_PROPERTIES.format(log_file=self.server_log))
        return config

    def _java(self, main: str, *args: str) -> list[str]:
        java = _require("java", "install a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)")
        if (major := java_version(java)) < 17:
            raise BrokerError(f"Kafka {self.jars.version} needs Java 17 or newer; `java` is version {major}")
        return [
            java,
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp",
            f"{self.jars.lib}/*",
            main,
            *args,
        ]

    def _format(self, config: Path) -> None:
        if (self.log_dir / "meta.properties").exists():
            return
        cluster_id = _base64_uuid()
        command = self._java(
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            f"--cluster-id={cluster_id}",
            "-c",
            str(config),
            *self._scram_arguments(),
        )
        _run_checked(command, f"formatting KRaft storage in {self.log_dir} failed")
        (self.home / "scram-users").write_text("".join(f"{name}\n" for name in self._scram_users()))

    def _scram_users(self) -> dict[str, str]:
        """The SCRAM users a SASL_SSL broker holds: the broker's own and the configured ones."""
        if "SASL_SSL" not in self.listeners:
            return {}
        return {BROKER_USER: self._broker_password(), **self.security.users}

    def _scram_arguments(self) -> list[str]:
        """``--add-scram`` for each user and mechanism: KRaft stores SCRAM credentials at format time."""
        return [
            f'--add-scram={mechanism}=[name="{name}",password="{password}"]'
            for name, password in self._scram_users().items()
            for mechanism in MECHANISMS
        ]

    def _check_users(self) -> None:
        """Users are created when the log dir is formatted: refuse to start without those asked for."""
        made = self.home / "scram-users"
        held = set(made.read_text().split()) if made.exists() else set()
        if missing := sorted(set(self._scram_users()) - held):
            raise BrokerError(
                f"the broker's log dir {self.log_dir} was formatted without the SCRAM user(s) {missing}: "
                "use a fresh home, or add them with kafka-configs --alter --add-config 'SCRAM-SHA-512=[...]'"
            )

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 90.0, out: IO[str] | None = None) -> EmbeddedBroker:
        """Resolve jars, format once, launch, and block until the broker serves metadata."""
        if self.process and self.process.poll() is None:
            return self
        for port in (self.port, self.controller_port):
            if port_open(port):
                raise BrokerError(
                    f"port {port} on 127.0.0.1 is already in use; stop what listens there or choose another "
                    "port (DRIFTLINE_KAFKA_PORT / DRIFTLINE_CONTROLLER_PORT)"
                )
        self.jars.resolve(out)
        if self.security.tls:
            self.tls.ensure()
        config = self._write_config()
        self._format(config)
        self._check_users()
        stdout = open(self.home / "stdout.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            self._java("kafka.Kafka", str(config)),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stdout.close()
        (self.home / "broker.pid").write_text(str(self.process.pid))
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = self.server_log.read_text()[-3000:] if self.server_log.exists() else ""
                raise BrokerError(f"Kafka exited with code {self.process.returncode} while starting:\n{tail}")
            if port_open(self.port):
                try:
                    admin = KafkaAdminClient(
                        bootstrap_servers=self.bootstrap, request_timeout_ms=5000, **self.client_security()
                    )
                    try:
                        admin.describe_cluster()
                        return
                    finally:
                        admin.close()
                except KafkaError:
                    pass
            time.sleep(0.2)
        self.stop()
        raise BrokerError(
            f"Kafka did not become ready on {self.bootstrap} within {timeout:.0f}s; see {self.server_log}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM), SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
        (self.home / "broker.pid").unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _base64_uuid() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
