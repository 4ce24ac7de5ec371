"""Certificates for the TLS tests, made with openssl in the test run (issue #18): a CA, a server
certificate for 127.0.0.1/localhost, a client certificate, and a second CA nobody trusts.

Why a helper module: the broker tests (tests/ingest/test_mqtt_tls.py) and the settings tests
(tests/core/test_mqtt_settings.py) use the same certificates; ``pki`` is a fixture of this plugin
(tests/conftest.py ``pytest_plugins``).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

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
