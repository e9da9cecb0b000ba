"""The gateway against a mosquitto that wants TLS and a password, both made by the test."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
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
        deadline = time.monotonic() + 120
        while "refused the connection" not in gateway.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gateway.proc.poll() is None  # the daemon keeps running, and retrying
        assert gateway.stop() == 0
    out = gateway.output()
    assert "refused the connection" in out and "not-the-password" not in out
    assert recorder.messages == []  # nothing reached the broker
