"""The systemd units of deploy/systemd/ (issue #18): valid for systemd, hardened, and stopping the
ingester the way it needs to be stopped.

``systemd-analyze verify`` reports an unknown directive (a misspelling) only as a warning with
exit code 0, and fails on an ExecStart binary that does not exist; so the units are copied with
ExecStart pointed at this virtual environment's ``coldchain`` and any output at all fails the
test. ``systemd-analyze security --offline`` rates the hardening without a running systemd.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coldchain.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
SERVICES = ("coldchain-ingest.service", "coldchain-scheduler.service", "coldchain-api.service")
INSTALLED = "/opt/coldchain/venv/bin/coldchain"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
# Directives every service sets (hardening and the contract with docs/operations.md).
REQUIRED = {
    "User": "coldchain",
    "EnvironmentFile": "/etc/coldchain/coldchain.env",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "CapabilityBoundingSet": "",
    "Restart": "always",
}


def _analyze() -> str:
    if not Path(SYSTEMD_ANALYZE).exists():
        pytest.skip("本机没有 systemd-analyze（Debian 的 systemd 软件包），无法检查单元文件")
    return SYSTEMD_ANALYZE


def _service(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as sections of directives, each with all its values (a directive may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in (UNITS / name).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            sections[section] = {}
            continue
        key, _, value = line.partition("=")
        sections[section].setdefault(key.strip(), []).append(value.strip())
    return sections


def _copied(tmp_path: Path, *, replace: tuple[str, str] | None = None) -> Path:
    """The units with ExecStart pointed at this environment's ``coldchain`` (which verify needs to
    exist); ``replace`` changes one more piece of text, to show that the check can fail."""
    here = str(Path(sys.executable).with_name("coldchain"))
    for unit in UNITS.iterdir():
        if unit.suffix in (".service", ".target"):
            text = unit.read_text(encoding="utf-8")
            if unit.suffix == ".service":
                assert text.count(INSTALLED) == 1, unit.name
                text = text.replace(INSTALLED, here)
            if replace is not None:
                text = text.replace(*replace)
            (tmp_path / unit.name).write_text(text, encoding="utf-8")
    return tmp_path


def _verify(directory: Path) -> subprocess.CompletedProcess[str]:
    units = sorted(str(p) for p in directory.iterdir() if p.suffix in (".service", ".target"))
    return subprocess.run(
        [_analyze(), "--man=no", "verify", *units], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_units_verify_without_a_single_warning(tmp_path: Path) -> None:
    proc = _verify(_copied(tmp_path))
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def test_the_check_catches_a_misspelt_directive(tmp_path: Path) -> None:
    """The check above is only worth something if it fails: one letter off is reported."""
    proc = _verify(_copied(tmp_path, replace=("NoNewPrivileges=", "NoNewPrivilege=")))
    assert "Unknown key 'NoNewPrivilege'" in proc.stderr


def test_each_service_runs_the_installed_command_as_its_user_with_the_hardening() -> None:
    commands = {}
    for name in SERVICES:
        unit = _service(name)
        service = unit["Service"]
        for key, value in REQUIRED.items():
            assert service.get(key) == [value], (name, key, service.get(key))
        assert "network-online.target" in unit["Unit"]["After"][0] and unit["Unit"]["Wants"] == [
            "network-online.target"
        ]
        assert unit["Unit"]["PartOf"] == ["coldchain.target"] and unit["Install"]["WantedBy"] == ["coldchain.target"]
        assert "ReadWritePaths" not in service  # the services write no files
        commands[name] = service["ExecStart"][0]
    assert commands == {
        "coldchain-ingest.service": f"{INSTALLED} ingest",
        "coldchain-scheduler.service": f"{INSTALLED} scheduler",
        "coldchain-api.service": f"{INSTALLED} api --proxy-headers",
    }
    # One hardening block for all three: a directive added to one unit only is a mistake.
    prefixes = ("Protect", "Restrict", "Private", "SystemCall", "Capability", "NoNew", "Lock", "UMask")
    hardening = [{k: v for k, v in _service(n)["Service"].items() if k.startswith(prefixes)} for n in SERVICES]
    assert len(hardening[0]) > 20 and hardening[0] == hardening[1] == hardening[2]


def test_the_ingester_is_stopped_with_sigterm_and_given_time_to_commit_and_acknowledge() -> None:
    """On SIGTERM the ingester drains for up to 10 s (Ingester._drain), then disconnects: the unit
    must send SIGTERM to it (not SIGKILL, not to a whole group at once) and wait longer than that."""
    service = _service("coldchain-ingest.service")["Service"]
    assert service["KillSignal"] == ["SIGTERM"] and service["KillMode"] == ["mixed"]
    seconds = int(re.fullmatch(r"(\d+)s", service["TimeoutStopSec"][0]).group(1))  # type: ignore[union-attr]
    drain = re.search(r"await self\._drain\((\d+(?:\.\d+)?)\)", (ROOT / "ingest" / "ingester.py").read_text())
    assert drain is not None, "ingest/ingester.py 的停止排空时限已改名或移动，请同步检查 TimeoutStopSec"
    assert seconds >= float(drain.group(1)) + 15


def test_the_hardening_rates_at_most_1_5_exposure(tmp_path: Path) -> None:
    """``systemd-analyze security`` scores 0 (locked down) to 10 (unprotected); 1.4 today."""
    directory = _copied(tmp_path)
    for name in SERVICES:
        proc = subprocess.run(
            [_analyze(), "security", "--offline=yes", "--threshold=15", "--no-pager", str(directory / name)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr


def test_the_system_user_is_created_by_sysusers(tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("本机没有 systemd-sysusers")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        [sysusers, f"--root={tmp_path}", str(UNITS / "coldchain.sysusers.conf")],
        capture_output=True,
        check=True,
        timeout=60,
    )
    entry = next(
        line for line in (tmp_path / "etc" / "passwd").read_text().splitlines() if line.startswith("coldchain:")
    )
    assert entry.endswith(":/usr/sbin/nologin"), entry


def _env_file() -> dict[str, str]:
    values = {}
    for line in (UNITS / "coldchain.env.example").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and key == key.strip() and " " not in key, line
            values[key] = value
    return values


def test_the_environment_file_is_valid_documented_and_holds_no_owner() -> None:
    values = _env_file()
    settings = load_settings(values)  # raises on any bad value
    assert settings.database_url and settings.mqtt and settings.cookie_secure
    assert settings.public_url.startswith("https://")
    assert "COLDCHAIN_OWNER_DATABASE_URL" not in values  # the services never need the owner
    text = (UNITS / "coldchain.env.example").read_text(encoding="utf-8")
    named = set(re.findall(r"^#?(COLDCHAIN_[A-Z_]+)=", text, flags=re.MULTILINE))
    documented = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert named and all(f"`{name}`" in documented for name in named), sorted(
        n for n in named if f"`{n}`" not in documented
    )
