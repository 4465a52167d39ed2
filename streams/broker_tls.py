"""TLS material for the embedded broker, made with the JDK's keytool (and openssl for one key).

A private CA signs the broker's certificate (valid for ``localhost`` and ``127.0.0.1``, so clients
verify the host name) and a client certificate for mTLS. The broker gets a PKCS12 keystore and
trusts ``ca.pem`` (a PEM truststore); clients get PEM files (``ca.pem``, ``client.pem``,
``client.key``). Everything is made once per directory and reused on later starts.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

VALID_DAYS = "825"
BROKER_NAMES = "SAN=dns:localhost,ip:127.0.0.1"
#: keytool runs for a fraction of a second: skip the optimising compiler and the parallel GC.
_FAST_JVM = ("-J-XX:TieredStopAtLevel=1", "-J-XX:+UseSerialGC", "-J-Xshare:auto")


class TlsError(RuntimeError):
    """keytool or openssl is missing or failed; the message has its output."""


@dataclass(frozen=True)
class BrokerTls:
    """Paths of the generated files and the password of the PKCS12 stores."""

    root: Path

    @property
    def password(self) -> str:
        return (self.root / "store-password").read_text().strip()

    @property
    def keystore(self) -> Path:
        return self.root / "broker.p12"

    @property
    def ca_pem(self) -> Path:
        return self.root / "ca.pem"

    @property
    def client_pem(self) -> Path:
        return self.root / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.root / "client.key"

    @property
    def ready(self) -> bool:
        return all(p.exists() for p in (self.keystore, self.ca_pem, self.client_pem, self.client_key))

    def ensure(self) -> BrokerTls:
        """Generate the CA, the broker's stores and the client pair unless already there."""
        if self.ready:
            return self
        keytool = _tool("keytool", "install a JDK (keytool comes with `openjdk-17-jre-headless`)")
        openssl = _tool("openssl", "install openssl (`apt-get install openssl`)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        secret = self.root / "store-password"
        secret.write_text(secrets.token_urlsafe(24) + "\n")
        ca = str(self.root / "ca.p12")

        # keytool reads the password from its file, never from the command line: its launcher takes
        # any argument that starts with -J as a JVM option, and one password in 4,096 does.
        def keytool_run(*args: str) -> None:
            _run([keytool, *_FAST_JVM, *args, "-storepass:file", str(secret), "-noprompt"])

        def keypair(store: str, alias: str, name: str, *extra: str) -> None:
            keytool_run("-genkeypair", "-keystore", store, "-storetype", "PKCS12", "-alias", alias,
                        "-keyalg", "RSA", "-keysize", "2048", "-validity", VALID_DAYS,
                        "-dname", f"CN={name}", "-keypass:file", str(secret), *extra)  # fmt: skip

        def sign(csr: Path, out: Path, *extra: str) -> None:
            keytool_run("-gencert", "-keystore", ca, "-alias", "ca", "-infile", str(csr),
                        "-outfile", str(out), "-rfc", "-validity", VALID_DAYS, *extra)  # fmt: skip

        keypair(ca, "ca", "driftline embedded CA", "-ext", "bc:c")
        keytool_run("-exportcert", "-keystore", ca, "-alias", "ca", "-rfc", "-file", str(self.ca_pem))
        broker = str(self.keystore)
        keypair(broker, "broker", "localhost", "-ext", BROKER_NAMES)
        keytool_run(
            "-certreq", "-keystore", broker, "-alias", "broker", "-file", str(self.root / "broker.csr")
        )
        sign(self.root / "broker.csr", self.root / "broker.crt", "-ext", BROKER_NAMES,
             "-ext", "eku=serverAuth,clientAuth")  # fmt: skip
        chain = self.root / "broker-chain.pem"  # the signed certificate and the CA: one import
        chain.write_text((self.root / "broker.crt").read_text() + self.ca_pem.read_text())
        keytool_run("-importcert", "-keystore", broker, "-alias", "broker", "-file", str(chain))
        # keytool cannot write a private key as PEM, so the client key and request come from openssl
        _run([openssl, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=driftline-client",
              "-keyout", str(self.client_key), "-out", str(self.root / "client.csr")])  # fmt: skip
        sign(self.root / "client.csr", self.client_pem, "-ext", "eku=clientAuth")
        self.client_key.chmod(0o600)
        return self


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise TlsError(f"`{name}` was not found on PATH: {hint}")
    return path


def _run(command: list[str]) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TlsError(
            f"{Path(command[0]).name} {command[1]} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
