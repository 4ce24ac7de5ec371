"""Certificates for the TLS tests, made with openssl in the test run (issue #18): a CA, a server
certificate for 127.0.0.1/localhost, a client certificate, and a second CA nobody trusts.

Why a helper module: the broker tests (tests/ingest/test_mqtt_tls.py) and the settings tests
(tests/core/test_mqtt_settings.py) use the same certificates; ``pki`` is a fixture of this plugin
(tests/conftest.py ``pytest_plugins``). :func:`tls_broker` starts Mosquitto on the shipped
configuration with them, for the broker tests and the go-live walkthrough (tests/ops/test_go_live.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coldchain import services

INGEST_USER = "coldchain-ingest"
"""The ingester's broker user (deploy/mosquitto/coldchain.acl), also its client certificate's CN."""


def tool(name: str, fallback: str) -> str:
    found = shutil.which(name) or (fallback if Path(fallback).exists() else None)
    if found is None:
        pytest.skip(
            f"本机没有 {name}（Debian：apt-get install mosquitto mosquitto-clients openssl），无法测试 TLS 代理"
        )
    return found


# ------------------------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # CN coldchain-ingest, signed by ca
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: trusting it alone must fail


def openssl(*args: str) -> None:
    subprocess.run([tool("openssl", "/usr/bin/openssl"), *args], capture_output=True, check=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", f"/CN=coldchain test {name}", "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return cert, key


def signed(directory: Path, name: str, ca: tuple[Path, Path], subject: str, extensions: str) -> tuple[Path, Path]:
    cert, key, csr, ext = (directory / f"{name}.{s}" for s in ("crt", "key", "csr", "ext"))
    ext.write_text(
        f"{extensions}\nbasicConstraints=critical,CA:FALSE\nsubjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n",
        encoding="utf-8",
    )
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", subject, "-keyout", str(key), "-out", str(csr))  # fmt: skip
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("mqtt-pki")
    ca = make_ca(directory, "ca")
    other = make_ca(directory, "other-ca")
    server = signed(
        directory,
        "server",
        ca,
        "/CN=localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature",
    )
    client = signed(
        directory,
        "client",
        ca,
        f"/CN={INGEST_USER}",
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature",
    )
    return Pki(ca[0], server[0], server[1], client[0], client[1], other[0])


ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "deploy" / "mosquitto" / "coldchain.conf"
ACL = ROOT / "deploy" / "mosquitto" / "coldchain.acl"


@dataclass
class Broker:
    port: int
    directory: Path
    passwd: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        return (self.directory / "mosquitto.log").read_text(encoding="utf-8", errors="replace")

    def add_user(self, user: str, password: str) -> None:
        """As docs/operations.md says: mosquitto_passwd, then a reload (SIGHUP, systemctl reload)."""
        subprocess.run(
            [tool("mosquitto_passwd", "/usr/bin/mosquitto_passwd"), "-b", str(self.passwd), user, password],
            capture_output=True,
            check=True,
            timeout=30,
        )
        self.proc.send_signal(signal.SIGHUP)


def _replace(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"deploy/mosquitto/coldchain.conf 中应恰有 1 处 {old!r}"
    return text.replace(old, new)


@contextlib.contextmanager
def tls_broker(
    directory: Path, pki: Pki, users: dict[str, str], *, require_certificate: bool = False
) -> Iterator[Broker]:
    """Mosquitto on the shipped deploy/mosquitto configuration and ACL, only the paths and the port
    replaced, with a password file of ``users``: the TLS tests' broker and the go-live walkthrough's."""
    exe = tool("mosquitto", "/usr/sbin/mosquitto")
    directory.mkdir(parents=True, exist_ok=True)
    passwd = directory / "coldchain.passwd"
    passwd.write_text("", encoding="utf-8")
    passwd_tool = tool("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
    for user, password in users.items():
        subprocess.run([passwd_tool, "-b", str(passwd), user, password], capture_output=True, check=True, timeout=30)
    port = services.free_port()
    conf = CONF.read_text(encoding="utf-8")
    conf = _replace(conf, "listener 8883\n", f"listener {port} 127.0.0.1\n")
    conf = _replace(conf, "\ncertfile /etc/mosquitto/certs/server.crt\n", f"\ncertfile {pki.server_cert}\n")
    conf = _replace(conf, "\nkeyfile /etc/mosquitto/certs/server.key\n", f"\nkeyfile {pki.server_key}\n")
    conf = _replace(conf, "\ncafile /etc/mosquitto/certs/ca.crt\n", f"\ncafile {pki.ca}\n")
    conf = _replace(conf, "\npassword_file /etc/mosquitto/coldchain.passwd\n", f"\npassword_file {passwd}\n")
    conf = _replace(conf, "\nacl_file /etc/mosquitto/coldchain.acl\n", f"\nacl_file {ACL}\n")  # the shipped ACL itself
    if require_certificate:
        conf = _replace(conf, "\nrequire_certificate false\n", "\nrequire_certificate true\n")
    # What Debian's /etc/mosquitto/mosquitto.conf adds around conf.d/; as root Mosquitto would
    # otherwise drop to the mosquitto user, which cannot read this test's directory.
    head = f"persistence_location {directory}/\nlog_dest stderr\nlog_type all\n"
    if os.geteuid() == 0:
        head += "user root\n"
    path = directory / "mosquitto.conf"
    path.write_text(head + conf, encoding="utf-8")
    with (directory / "mosquitto.log").open("wb") as log_file:
        proc = subprocess.Popen([exe, "-c", str(path)], stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
    broker = Broker(port, directory, passwd, proc)
    try:
        deadline = time.monotonic() + 15
        while not services.port_open("127.0.0.1", port, 0.2):
            assert proc.poll() is None, f"mosquitto 已退出：\n{broker.log()}"
            assert time.monotonic() < deadline, f"mosquitto 未在 15 秒内开始监听：\n{broker.log()}"
            time.sleep(0.05)
        yield broker
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
