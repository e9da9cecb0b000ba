"""The gateway against a mosquitto that wants TLS and a password, both made by the test."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firmware_sim.simulation import Simulation

from .conftest import Broker, free_port, write_config


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None = None,
          issuer_key: ec.EllipticCurvePrivateKey | None = None, ca: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate | None = None, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    data = cert.public_bytes(serialization.Encoding.PEM) if cert else key.private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(data)
    path.chmod(0o644)
    return path


@pytest.fixture
def secure_broker(tmp_path: Path):
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("test CA", ca_key, ca=True)
    server = _cert("127.0.0.1", server_key, ca.subject, ca_key)
    client = _cert("gateway", client_key, ca.subject, ca_key)
    files = {
        "ca": _write(tmp_path / "ca.pem", ca), "server": _write(tmp_path / "server.pem", server),
        "server_key": _write(tmp_path / "server.key", key=server_key),
        "client": _write(tmp_path / "client.pem", client), "client_key": _write(tmp_path / "client.key", key=client_key),
    }
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "gateway", "s3cret"], check=True)
    tls_port = free_port()
    broker = Broker(tmp_path, extra_listeners=(
        f"listener {tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
        f"cafile {files['ca']}\ncertfile {files['server']}\nkeyfile {files['server_key']}\n"
        "require_certificate true\n"
    ))
    broker.start()
    yield broker, tls_port, files
    broker.stop()


def _tls_config(tmp_path: Path, sim: Simulation, devices_file: Path, tls_port: int, files: dict[str, Path],
                password: str) -> Path:
    config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=tls_port,
                          devices_file=devices_file, state_path=tmp_path / "state.db")
    text = config.read_text().replace(
        f"[mqtt]\nport = {tls_port}\n",
        f'[mqtt]\nport = {tls_port}\nusername = "gateway"\npassword = "{password}"\n'
        f'[mqtt.tls]\nca_file = "{files["ca"]}"\ncert_file = "{files["client"]}"\nkey_file = "{files["client_key"]}"\n',
    )
    config.write_text(text)
    config.chmod(0o600)  # it holds a password
    return config


def test_tls_with_client_certificate_and_password(tmp_path: Path, secure_broker, recorder_factory, gateways,
                                                  devices_file) -> None:
    broker, tls_port, files = secure_broker
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    with Simulation("rylr", devices_file, period_s=0.2, seed=12) as sim:
        gateway = gateways(_tls_config(tmp_path, sim, devices_file, tls_port, files, "s3cret")).start()
        recorder.wait_for(lambda m: len(recorder.payloads("lora-gateway/pump-house")) >= 2)
        assert gateway.stop() == 0
    assert recorder.payloads("lora-gateway/bridge/state")[0] == {"state": "online"}
    assert "s3cret" not in gateway.output()


def test_wrong_password_is_refused_and_reported(tmp_path: Path, secure_broker, recorder_factory, gateways,
                                                devices_file) -> None:
    broker, tls_port, files = secure_broker
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    with Simulation("rylr", devices_file, period_s=0.2, seed=13) as sim:
        gateway = gateways(_tls_config(tmp_path, sim, devices_file, tls_port, files, "not-the-password")).start()
        refused = f"ERROR gateway.publish.mqtt: broker 127.0.0.1:{tls_port} unreachable: refused by the broker: Not authorized"
        gateway.wait_for_output(lambda text: refused in text, "the refusal")
        wait_for_status(tmp_path / "config.toml", "DISCONNECTED: refused by the broker: Not authorized")
        assert gateway.proc.poll() is None  # the daemon keeps running, and retrying
        assert gateway.stop() == 0
    out = gateway.output()
    assert out.count("unreachable") == 1, out  # said once for as long as the cause stays the same
    assert "not-the-password" not in out
    assert recorder.messages == []  # nothing reached the broker


def wait_for_status(config: Path, text: str) -> str:
    """`lora-gateway status` until it shows `text` (the deadline only bounds a hang)."""
    deadline = time.monotonic() + 120
    while True:
        shown = subprocess.run([sys.executable, "-m", "gateway", "status", "--config", str(config)],
                               capture_output=True, text=True, timeout=120).stdout
        if text in shown:
            return shown
        assert time.monotonic() < deadline, shown
        time.sleep(0.5)


@pytest.mark.parametrize(("host", "ca", "cause"), [
    ("localhost", "ca", "TLS: the broker's certificate was refused: Hostname mismatch"),
    ("127.0.0.1", "other_ca", "TLS: the broker's certificate was refused: "),  # then OpenSSL's words
    ("127.0.0.1", None, "TLS: the broker's certificate was refused: "),
])
def test_tls_failures_are_logged_once_naming_host_port_and_cause(
    tmp_path: Path, secure_broker, gateways, devices_file, host: str, ca: str | None, cause: str
) -> None:
    broker, tls_port, files = secure_broker
    other_key = ec.generate_private_key(ec.SECP256R1())
    files["other_ca"] = _write(tmp_path / "other_ca.pem", _cert("another CA", other_key, ca=True))
    with Simulation("rylr", devices_file, period_s=0.2, seed=14) as sim:
        config = _tls_config(tmp_path, sim, devices_file, tls_port, files, "s3cret")
        text = config.read_text().replace('[mqtt]\n', f'[mqtt]\nhost = "{host}"\n')
        # No ca_file: the system's CAs, which do not know the test's CA.
        text = text.replace(f'ca_file = "{files["ca"]}"', f'ca_file = "{files[ca]}"' if ca else "")
        config.write_text(text)
        gateway = gateways(config).start()
        line = f"ERROR gateway.publish.mqtt: broker {host}:{tls_port} unreachable: {cause}"
        gateway.wait_for_output(lambda out: line in out, "the TLS failure")
        wait_for_status(config, f"DISCONNECTED: {cause}")
        assert gateway.stop() == 0
    assert gateway.output().count("unreachable") == 1, gateway.output()
