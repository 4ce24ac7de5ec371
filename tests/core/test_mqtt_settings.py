"""The MQTT settings of a deployment's broker (issue #18): mqtts:// and its default port,
credentials in the URL or in their own variables, the CA file and client certificate checked at
start-up — and the password never shown (repr, URL, errors)."""

from __future__ import annotations

import secrets
import ssl
from pathlib import Path
from urllib.parse import quote

import pytest
from tlshelp import Pki, openssl

from coldchain.core.settings import SettingsError, load_settings, parse_mqtt_url

# Characters a URL must percent-encode: the password reaches the broker decoded, or not at all.
INGEST_PASSWORD = f"In:ge@st/{secrets.token_hex(6)}%"


def test_mqtts_defaults_to_port_8883_and_mqtt_to_1883() -> None:
    assert parse_mqtt_url("mqtts://broker.example").port == 8883
    assert parse_mqtt_url("mqtts://broker.example").tls
    assert parse_mqtt_url("mqtt://broker.example").port == 1883
    assert not parse_mqtt_url("mqtt://broker.example").tls
    assert parse_mqtt_url("MQTTS://broker.example:18883").port == 18883
    assert parse_mqtt_url("mqtt://broker.example").client_options() == {}


def test_credentials_in_the_url_are_percent_decoded() -> None:
    url = f"mqtts://{quote('gw-10001', safe='')}:{quote(INGEST_PASSWORD, safe='')}@broker.example"
    mqtt = load_settings({"COLDCHAIN_MQTT_URL": url}).mqtt
    assert mqtt is not None
    assert (mqtt.username, mqtt.password, mqtt.host, mqtt.port) == ("gw-10001", INGEST_PASSWORD, "broker.example", 8883)
    options = mqtt.client_options()
    assert options["username"] == "gw-10001" and options["password"] == INGEST_PASSWORD
    assert isinstance(options["tls_context"], ssl.SSLContext)
    assert options["tls_context"].verify_mode == ssl.CERT_REQUIRED and options["tls_context"].check_hostname


def test_the_separate_variables_win_over_the_url_each_on_its_own() -> None:
    """Documented in docs/operations.md: COLDCHAIN_MQTT_USERNAME / _PASSWORD over the URL's."""
    base = {"COLDCHAIN_MQTT_URL": "mqtts://url-user:url-pass@broker.example"}
    both = load_settings({**base, "COLDCHAIN_MQTT_USERNAME": "var-user", "COLDCHAIN_MQTT_PASSWORD": "var-pass"}).mqtt
    assert both is not None and (both.username, both.password) == ("var-user", "var-pass")
    password_only = load_settings({**base, "COLDCHAIN_MQTT_PASSWORD": "var-pass"}).mqtt
    assert password_only is not None and (password_only.username, password_only.password) == ("url-user", "var-pass")
    url_only = load_settings(base).mqtt
    assert url_only is not None and (url_only.username, url_only.password) == ("url-user", "url-pass")
    with pytest.raises(SettingsError, match="COLDCHAIN_MQTT_PASSWORD"):
        load_settings({"COLDCHAIN_MQTT_URL": "mqtts://broker.example", "COLDCHAIN_MQTT_PASSWORD": "p"})


def test_the_password_stays_out_of_repr_url_and_errors(tmp_path: Path) -> None:
    secret = "S3cret%40pw"
    settings = load_settings(
        {"COLDCHAIN_MQTT_URL": f"mqtts://ingest:{secret}@broker.example:8883", "COLDCHAIN_MQTT_PASSWORD": "Other-pw-7"}
    )
    assert settings.mqtt is not None
    for shown in (repr(settings), str(settings), repr(settings.mqtt), settings.mqtt.url):
        assert secret not in shown and "S3cret@pw" not in shown and "Other-pw-7" not in shown
    assert settings.mqtt.url == "mqtts://broker.example:8883"
    assert "username='ingest'" in repr(settings.mqtt)
    for bad in (f"tcp://ingest:{secret}@broker.example", f"mqtts://ingest:{secret}@broker.example:notaport"):
        with pytest.raises(SettingsError) as refused:
            load_settings({"COLDCHAIN_MQTT_URL": bad})
        assert "COLDCHAIN_MQTT_URL" in str(refused.value) and secret not in str(refused.value)
        assert "S3cret@pw" not in str(refused.value)
    # A password with characters left unencoded splits the URL where the parser sees a port or a
    # path; the message must not show it as either.
    for unencoded in ("12/Sl4sh-pw", "Ha#sh-pw", "Que?ry-pw"):
        with pytest.raises(SettingsError) as refused:
            load_settings({"COLDCHAIN_MQTT_URL": f"mqtts://ingest:{unencoded}@broker.example:8883"})
        assert "broker.example" in str(refused.value)
        assert not any(part in str(refused.value) for part in ("Sl4sh", "sh-pw", "ry-pw")), refused.value
    missing = tmp_path / "missing-ca.pem"
    with pytest.raises(SettingsError) as refused:
        load_settings(
            {"COLDCHAIN_MQTT_URL": f"mqtts://ingest:{secret}@broker.example", "COLDCHAIN_MQTT_CA_FILE": str(missing)}
        )
    assert secret not in str(refused.value)


@pytest.mark.parametrize(
    ("variable", "make", "fragment"),
    [
        ("COLDCHAIN_MQTT_CA_FILE", lambda d: d / "missing.pem", "文件不存在"),
        ("COLDCHAIN_MQTT_CA_FILE", lambda d: d, "无法读取"),  # a directory: unreadable as a file
        ("COLDCHAIN_MQTT_CA_FILE", lambda d: _write(d / "junk.pem", "not a certificate"), "不是可用的 CA 证书"),
        ("COLDCHAIN_MQTT_CERT_FILE", lambda d: d / "missing.crt", "文件不存在"),
        ("COLDCHAIN_MQTT_KEY_FILE", lambda d: d / "missing.key", "文件不存在"),
    ],
)
def test_a_missing_or_unusable_tls_file_stops_start_up_naming_the_variable(
    tmp_path: Path, pki: Pki, variable: str, make: object, fragment: str
) -> None:
    assert callable(make)
    env = {
        "COLDCHAIN_MQTT_URL": "mqtts://ingest@broker.example",
        "COLDCHAIN_MQTT_CERT_FILE": str(pki.client_cert),
        "COLDCHAIN_MQTT_KEY_FILE": str(pki.client_key),
        variable: str(make(tmp_path)),
    }
    with pytest.raises(SettingsError, match=fragment) as refused:
        load_settings(env)
    assert str(refused.value).startswith(variable)


def test_tls_files_that_do_not_fit_are_refused(tmp_path: Path, pki: Pki) -> None:
    base = {"COLDCHAIN_MQTT_URL": "mqtts://ingest@broker.example"}
    with pytest.raises(SettingsError, match=r"^COLDCHAIN_MQTT_CA_FILE 仅用于 TLS"):
        load_settings({"COLDCHAIN_MQTT_URL": "mqtt://broker.example", "COLDCHAIN_MQTT_CA_FILE": str(pki.ca)})
    with pytest.raises(SettingsError, match=r"^COLDCHAIN_MQTT_KEY_FILE 须与"):
        load_settings({**base, "COLDCHAIN_MQTT_KEY_FILE": str(pki.client_key)})
    with pytest.raises(SettingsError, match=r"^COLDCHAIN_MQTT_CERT_FILE .* 不是一对"):
        load_settings(
            {**base, "COLDCHAIN_MQTT_CERT_FILE": str(pki.client_cert), "COLDCHAIN_MQTT_KEY_FILE": str(pki.server_key)}
        )
    encrypted = tmp_path / "encrypted.key"
    openssl("pkey", "-in", str(pki.client_key), "-aes256", "-passout", "pass:secret-phrase", "-out", str(encrypted))
    with pytest.raises(SettingsError, match=r"^COLDCHAIN_MQTT_KEY_FILE 的私钥已加密"):
        load_settings(
            {**base, "COLDCHAIN_MQTT_CERT_FILE": str(pki.client_cert), "COLDCHAIN_MQTT_KEY_FILE": str(encrypted)}
        )
    ok = load_settings(
        {
            **base,
            "COLDCHAIN_MQTT_CA_FILE": str(pki.ca),
            "COLDCHAIN_MQTT_CERT_FILE": str(pki.client_cert),
            "COLDCHAIN_MQTT_KEY_FILE": str(pki.client_key),
        }
    ).mqtt
    assert ok is not None and (ok.ca_file, ok.cert_file, ok.key_file) == (pki.ca, pki.client_cert, pki.client_key)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
