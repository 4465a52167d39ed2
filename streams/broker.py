"""The embedded Apache Kafka broker: jars from Maven Central, KRaft storage, one combined node.

``KafkaJars`` resolves ``org.apache.kafka:kafka_2.13`` and the log4j bridge with the machine's Maven
into a cache once. ``EmbeddedBroker`` writes a single-node broker+controller configuration, formats
its log dir on first start, launches ``kafka.Kafka`` with Java 17+ on loopback and waits until the
broker answers metadata requests. The log dir persists across restarts, so topics and committed
offsets survive a stop.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import IO

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
        """Download the jars with Maven unless already cached; return the lib directory."""
        if self.ready:
            return self.lib
        mvn = _require("mvn", "install Apache Maven (e.g. `apt-get install maven`) to fetch Kafka's jars")
        self.root.mkdir(parents=True, exist_ok=True)
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
        return self.lib


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


class EmbeddedBroker:
    """A single-node KRaft Kafka (broker + controller) on 127.0.0.1 with a persistent log dir."""

    def __init__(
        self,
        home: Path,
        cache: Path,
        port: int = 9092,
        controller_port: int = 9093,
        heap: str = "512m",
    ) -> None:
        self.home = Path(home).absolute()
        self.jars = KafkaJars(cache)
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def on_free_ports(cls, home: Path, cache: Path) -> EmbeddedBroker:
        """A broker on two distinct loopback ports nothing else listens on (tests, benchmarks)."""
        port, controller_port = free_ports(2)
        return cls(home, cache, port, controller_port)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.home / "data"

    @property
    def server_log(self) -> Path:
        return self.home / "server.log"

    # -- configuration ------------------------------------------------------------------------
    def _properties(self) -> str:
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
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
        )
        _run_checked(command, f"formatting KRaft storage in {self.log_dir} failed")

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
        config = self._write_config()
        self._format(config)
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
                    admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
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
