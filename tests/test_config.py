"""Configuration and device files: defaults that work, and errors that name file, key and value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim.modules import EMULATORS
from firmware_sim.pty_link import PtyModule
from gateway.commands import main
from gateway.config import ConfigError, load_config
from gateway.uplink.devices import add_device, load_devices, session_keys


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "c.toml", '[serial]\nport = "lora-sim.tty"\ndialect = "rn2483"\n'), environ={})
    assert cfg.serial.effective_baud == 57600
    assert cfg.serial.port == str(tmp_path / "lora-sim.tty")
    assert cfg.devices_file == tmp_path / "devices.toml"
    assert cfg.mqtt.base_topic == "lora-gateway"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[serial]\ndialect = "sx1276"\n', "serial.dialect"),
        ("[serial]\nspreading_factor = 13\n", "serial.spreading_factor"),
        ("[mqtt]\nport = 0\n", "mqtt.port"),
        ('[mqtt]\nbase_topic = "a/#"\n', "mqtt.base_topic"),
        ("[mqtt]\nhots = 1\n", "mqtt.hots"),
        ("[serial\n", "not valid TOML"),
        ('[mqtt.tls]\ncert_file = "c.pem"\n', "cert_file and key_file go together"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    assert str(path) in str(e.value)
    assert expected in str(e.value)


def test_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[mqtt]\nport = 1883\n")
    cfg = load_config(path, environ={"LORA_GATEWAY_MQTT__PORT": "8883", "LORA_GATEWAY_MQTT__HOST": "broker"})
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("broker", 8883)
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={"LORA_GATEWAY_MQTT__PORT": "many"})
    assert "environment" in str(e.value) and "mqtt.port" in str(e.value)


def test_device_add_creates_private_file_with_fresh_keys(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    a = add_device(path, "pump")
    b = add_device(path, "cold-room", period_s=60)
    assert os.stat(path).st_mode & 0o777 == 0o600
    devices = load_devices(path)
    assert set(devices) == {"pump", "cold-room"}
    assert a.dev_addr != b.dev_addr and a.nwk_skey != b.nwk_skey and a.app_skey != a.nwk_skey
    keys = {k.name: k for k in session_keys(devices)}
    assert keys["pump"].nwk_skey == bytes.fromhex(a.nwk_skey)
    with pytest.raises(ConfigError, match="already exists"):
        add_device(path, "pump")


def test_readable_keys_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    add_device(path, "pump")
    path.chmod(0o640)
    with pytest.raises(ConfigError) as e:
        load_devices(path)
    assert str(path) in str(e.value) and "0640" in str(e.value) and "chmod 600" in str(e.value)


AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")


@AS_ROOT
def test_keys_file_owned_by_another_user_refused(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    add_device(path, "pump")
    os.chown(path, 12345, -1)  # still 0600, but someone else's
    with pytest.raises(ConfigError, match=r"devices.toml: owned by uid 12345, not by this user"):
        load_devices(path)


@AS_ROOT
@pytest.mark.parametrize(("mode", "owner"), [(0o777, None), (0o775, None), (0o700, 12345)])
def test_keys_file_in_a_folder_others_may_write_or_own_refused(tmp_path: Path, mode: int, owner: int | None) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "devices.toml"
    add_device(path, "pump")
    folder.chmod(mode)
    if owner is not None:
        os.chown(folder, owner, -1)
    with pytest.raises(ConfigError) as e:
        load_devices(path)
    assert f"folder {folder}" in str(e.value) and "can replace device keys" in str(e.value)


def test_a_sticky_world_writable_folder_is_accepted(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    path = folder / "devices.toml"
    add_device(path, "pump")
    folder.chmod(0o1777)  # like /tmp: nobody but the owner may rename or remove the file
    assert list(load_devices(path)) == ["pump"]


@AS_ROOT
@pytest.mark.parametrize("table", ["mqtt", "chirpstack"])
def test_a_configuration_holding_a_password_is_checked_as_a_key_file(tmp_path: Path, table: str) -> None:
    config = write(tmp_path / "c.toml", f'[{table}]\nusername = "gw"\npassword = "hunter2"\n', 0o644)
    with pytest.raises(ConfigError, match=r"c.toml: permissions 0644 are too open: a configuration with a password"):
        load_config(config, environ={})
    config.chmod(0o640)  # group-readable is fine: the service's group reads it (systemd/install.sh)
    assert load_config(config, environ={})
    os.chown(config, 12345, -1)
    with pytest.raises(ConfigError, match="owned by uid 12345"):
        load_config(config, environ={})
    config.chmod(0o644)
    os.chown(config, 0, -1)
    no_password = write(tmp_path / "plain.toml", "[mqtt]\nport = 1884\n", 0o644)
    assert load_config(no_password, environ={}).mqtt.port == 1884


def test_bad_key_named_without_echoing_it(tmp_path: Path) -> None:
    secret = "00112233445566778899AABBCCDDEEFG"  # 32 characters, one not hex
    path = write(
        tmp_path / "devices.toml",
        f'[devices.pump]\ndev_addr = "26011BDA"\nnwk_skey = "{secret}"\napp_skey = "{"0" * 32}"\n',
        0o600,
    )
    with pytest.raises(ConfigError) as e:
        load_devices(path)
    assert "devices.pump.nwk_skey" in str(e.value)
    assert secret not in str(e.value)


KEY = "B2489D5A0C14E8F37A6B1D290E4C7F55"


@pytest.mark.parametrize("entry", [
    f'dev_addr = "26011BDA"\nnwk_key = "{KEY}"\nnwk_skey = "{"1" * 32}"\napp_skey = "{"2" * 32}"\n',  # misspelled
    f'dev_addr = "{KEY}"\nnwk_skey = "{"1" * 32}"\napp_skey = "{"2" * 32}"\n',  # pasted in the wrong field
    f'dev_addr = "26011BDA"\nnwk_skey = "{"1" * 32}"\napp_skey = "{"2" * 32}"\nperiod_s = "{KEY}"\n',
])
def test_no_value_of_the_devices_file_is_echoed(tmp_path: Path, entry: str, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "devices.toml", f"[devices.pump]\n{entry}", 0o600)
    config = write(tmp_path / "c.toml", "")
    assert main(["check-config", "--config", str(config)]) != 0
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "devices.toml: devices.pump." in shown
    assert "unknown key; did you mean 'nwk_skey'?" in shown or "32 characters, not shown" in shown
    assert KEY not in shown and KEY.lower() not in shown
    run = subprocess.run([sys.executable, "-m", "gateway", "run", "--config", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "devices.pump." in run.stderr, run.stderr
    assert KEY not in run.stdout + run.stderr


def test_a_device_name_that_looks_like_a_key_is_not_echoed(tmp_path: Path) -> None:
    path = write(tmp_path / "devices.toml",
                 f'[devices."pump {KEY}"]\ndev_addr = "26011BDA"\nnwk_skey = "{"1" * 32}"\napp_skey = "{"2" * 32}"\n',
                 0o600)
    with pytest.raises(ConfigError) as e:
        load_devices(path)
    assert "a device name uses" in str(e.value) and KEY not in str(e.value)


def test_duplicate_dev_addr_refused(tmp_path: Path) -> None:
    entry = f'dev_addr = "26011BDA"\nnwk_skey = "{"1" * 32}"\napp_skey = "{"2" * 32}"\n'
    path = write(tmp_path / "devices.toml", f"[devices.a]\n{entry}[devices.b]\n{entry}", 0o600)
    with pytest.raises(ConfigError, match="devices.b.dev_addr: 26011BDA is already used by a"):
        load_devices(path)


def test_cli_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = PtyModule(EMULATORS["rylr"]())
    config = write(tmp_path / "c.toml", f'[serial]\nport = "{module.port}"\n')
    assert main(["device", "add", "pump", "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    key = load_devices(tmp_path / "devices.toml")["pump"].nwk_skey
    assert key in shown and "NWKSKEY[16]" in shown  # printed once, in the form firmware needs

    try:
        assert main(["check-config", "--config", str(config)]) == 0
    finally:
        module.close()
    assert capsys.readouterr().out.endswith(f"{config}: OK\n")
    assert main(["device", "list", "--config", str(config)]) == 0
    assert key not in capsys.readouterr().out

    write(config, "[serial]\nbaud = 'fast'\n")
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: serial.baud" in err and "'fast'" in err


def test_only_settings_variables_override(tmp_path: Path) -> None:
    """The program's own variables (the unit sets LORA_GATEWAY_MODELS) are never read as keys."""
    path = write(tmp_path / "c.toml", "")
    cfg = load_config(path, environ={"LORA_GATEWAY_MODELS": "/var/lib/lora-gateway/models",
                                     "LORA_GATEWAY_CONFIG": str(path), "LORA_GATEWAY_STATE_PATH": "/srv/state.db",
                                     "LORA_GATEWAY_MQTT__PORT": "8883"})
    assert cfg.state_path == Path("/srv/state.db") and cfg.mqtt.port == 8883
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={"LORA_GATEWAY_MQTT__HOTS": "broker"})
    assert str(e.value) == f"{path} + environment: mqtt.hots (from LORA_GATEWAY_MQTT__HOTS): unknown key; " \
        "did you mean 'host'?"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[mqtt]\nhots = 1\n", "mqtt.hots: unknown key; did you mean 'host'?"),
        ("gateway = 'x'\n", "gateway: unknown key; did you mean 'gateway_id'?"),
        ("[detector.devices.pump]\nwarmpu = 5\n", "detector.devices.pump.warmpu: unknown key; did you mean 'warmup'?"),
        ("[seriall]\nport = 'x'\n", "seriall: unknown key; did you mean 'serial'?"),
        ("[mqtt]\nzzz = 1\n", "mqtt.zzz: unknown key (got"),
    ],
)
def test_unknown_keys_suggest_the_nearest(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    message = str(e.value)
    if expected.endswith("(got"):  # nothing near: no suggestion, and no value shown for a key that is not one
        assert message == f"{path}: {expected[:-5]}"
    else:
        assert message == f"{path}: {expected}"
    assert "Extra inputs" not in message


def test_messages_carry_no_pydantic_prefix(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[detector]\nraise_threshold = 0.3\nclear_threshold = 0.4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    assert "clear_threshold (0.4) must be below raise_threshold (0.3)" in str(e.value)
    assert "Value error" not in str(e.value)


def test_device_file_keys_suggest_the_nearest(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    add_device(path, "pump")
    path.write_text(path.read_text() + "perod_s = 60\n")
    with pytest.raises(ConfigError, match=r"devices.pump.perod_s: unknown key; did you mean 'period_s'\?"):
        load_devices(path)


def test_device_add_refuses_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "nonexistent" / "dir" / "d.toml"
    assert main(["device", "add", "pump", "--devices", str(target)]) == 2
    assert f"{target}: folder {target.parent} does not exist (create it, or give --parents)" in capsys.readouterr().err
    assert not (tmp_path / "nonexistent").exists()
    assert main(["device", "add", "pump", "--devices", str(target), "--parents"]) == 0
    assert "pump" in load_devices(target) and (target.stat().st_mode & 0o077) == 0
