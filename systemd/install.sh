#!/usr/bin/env bash
# Install lora-gateway as a systemd service on Raspberry Pi OS (Debian). Run as root:
#   sudo systemd/install.sh [PACKAGE]     PACKAGE defaults to lora-gateway (from PyPI), or a path/wheel
set -euo pipefail

PACKAGE="${1:-lora-gateway}"
PREFIX=/opt/lora-gateway
CONFIG_DIR=/etc/lora-gateway
HERE="$(cd "$(dirname "$0")" && pwd)"

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo)" >&2
    exit 1
fi

apt-get install -y python3-venv >/dev/null

if ! id lora-gateway >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/lora-gateway --no-create-home --shell /usr/sbin/nologin \
        --groups dialout lora-gateway
fi

python3 -m venv "$PREFIX"
"$PREFIX/bin/pip" install --upgrade pip >/dev/null
# Runtime only: no torch on the Pi. Build model bundles elsewhere and `lora-gateway model install` them.
"$PREFIX/bin/pip" install "$PACKAGE"

install -d -m 0750 -o root -g lora-gateway "$CONFIG_DIR"
if [ ! -f "$CONFIG_DIR/config.toml" ]; then
    cat > "$CONFIG_DIR/config.toml" <<CONF
gateway_id = "$(hostname -s | tr -c 'A-Za-z0-9_\n-' '_')"
devices_file = "$CONFIG_DIR/devices.toml"
state_path = "/var/lib/lora-gateway/state.db"
runtime_dir = "/run/lora-gateway"

[serial]
port = "/dev/lora0"
dialect = "rylr"

[mqtt]
host = "127.0.0.1"
port = 1883
CONF
    chmod 0640 "$CONFIG_DIR/config.toml"
    chgrp lora-gateway "$CONFIG_DIR/config.toml"
fi
if [ ! -f "$CONFIG_DIR/devices.toml" ]; then
    install -m 0600 -o lora-gateway -g lora-gateway /dev/null "$CONFIG_DIR/devices.toml"
fi

install -m 0644 "$HERE/99-lora-module.rules" /etc/udev/rules.d/99-lora-module.rules
udevadm control --reload-rules && udevadm trigger --subsystem-match=tty || true

install -m 0644 "$HERE/lora-gateway.service" /etc/systemd/system/lora-gateway.service
systemctl daemon-reload
systemctl enable lora-gateway.service

cat <<MSG
Installed. Next:
  sudo -u lora-gateway $PREFIX/bin/lora-gateway device add NAME --devices $CONFIG_DIR/devices.toml
  edit $CONFIG_DIR/config.toml (serial port, dialect, broker)
  sudo -u lora-gateway $PREFIX/bin/lora-gateway check-config --config $CONFIG_DIR/config.toml
  sudo systemctl start lora-gateway && journalctl -u lora-gateway -f
MSG
