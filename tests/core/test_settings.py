"""Settings come from COLDCHAIN_* variables, and a bad value stops start-up with a clear message."""

from __future__ import annotations

import pytest

from coldchain.core.settings import SettingsError, load_settings, parse_mqtt_url


def test_defaults_mean_embedded_servers() -> None:
    s = load_settings({})
    assert s.database_url is None
    assert s.mqtt_url is None
    assert s.timescaledb == "auto"
    assert s.local_timezone == "Asia/Shanghai"


def test_values_are_read_and_trimmed() -> None:
    s = load_settings(
        {
            "COLDCHAIN_DATABASE_URL": " postgresql://u@db:5433/cc ",
            "COLDCHAIN_MQTT_URL": "mqtt://broker:1884",
            "COLDCHAIN_TIMESCALEDB": "require",
        }
    )
    assert s.database_url == "postgresql://u@db:5433/cc"
    assert s.mqtt is not None and (s.mqtt.host, s.mqtt.port) == ("broker", 1884)
    assert s.timescaledb == "require"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"COLDCHAIN_DATABASE_URL": "mysql://x"}, "COLDCHAIN_DATABASE_URL"),
        ({"COLDCHAIN_MQTT_URL": "tcp://broker:1883"}, "COLDCHAIN_MQTT_URL"),
        ({"COLDCHAIN_MQTT_URL": "mqtt://broker:notaport"}, "端口"),
        ({"COLDCHAIN_TIMESCALEDB": "yes"}, "COLDCHAIN_TIMESCALEDB"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        load_settings(env)


def test_mqtt_port_defaults_to_1883() -> None:
    assert parse_mqtt_url("mqtt://localhost").port == 1883


def test_database_passwords_stay_out_of_the_settings_repr() -> None:
    """Settings are logged and shown in errors; a URL's password must not go with them."""
    settings = load_settings(
        {
            "COLDCHAIN_DATABASE_URL": "postgresql://app:RuntimePw-91@db.example/coldchain",
            "COLDCHAIN_OWNER_DATABASE_URL": "postgresql://owner:OwnerPw-37@db.example/coldchain",
        }
    )
    assert settings.migration_url == "postgresql://owner:OwnerPw-37@db.example/coldchain"
    assert "RuntimePw-91" not in repr(settings) and "OwnerPw-37" not in repr(settings)


def test_the_read_replica_url_is_optional_checked_and_kept_out_of_the_repr() -> None:
    """COLDCHAIN_READ_DATABASE_URL (issue #18): unset, everything reads the primary; set, it is a
    postgresql:// URL beside the primary's, and its password is shown nowhere the settings are."""
    assert load_settings({"COLDCHAIN_DATABASE_URL": "postgresql://app@db/cc"}).read_database_url is None
    settings = load_settings(
        {
            "COLDCHAIN_DATABASE_URL": "postgresql://app@db.example/coldchain",
            "COLDCHAIN_READ_DATABASE_URL": " postgresql://app:ReplicaPw-53@replica.example/coldchain ",
        }
    )
    assert settings.read_database_url == "postgresql://app:ReplicaPw-53@replica.example/coldchain"
    assert "ReplicaPw-53" not in repr(settings)
    with pytest.raises(SettingsError, match="COLDCHAIN_READ_DATABASE_URL 应以 postgresql:// 开头") as bad:
        load_settings(
            {
                "COLDCHAIN_DATABASE_URL": "postgresql://app@db/cc",
                "COLDCHAIN_READ_DATABASE_URL": "mysql://app:ReplicaPw-53@replica/cc",
            }
        )
    assert "ReplicaPw-53" not in str(bad.value)
    with pytest.raises(SettingsError, match="也须设置主库的 COLDCHAIN_DATABASE_URL"):
        load_settings({"COLDCHAIN_READ_DATABASE_URL": "postgresql://app@replica/cc"})
