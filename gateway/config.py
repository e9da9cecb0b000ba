"""The gateway's configuration: one TOML file validated by pydantic, overridable from the environment."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway import private_files
from gateway.detect.settings import DetectorSettings

ENV_PREFIX = "LORA_GATEWAY_"
_KEY_LIKE = re.compile(r"[0-9A-Fa-f]{16,}")
DEFAULT_BAUD = {"rylr": 115200, "rak3172": 115200, "rn2483": 57600}


class ConfigError(Exception):
    """A configuration problem, already phrased for the user (file, key, value, why)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SerialConfig(_Section):
    port: str = Field("/dev/ttyUSB0", description="Serial device of the LoRa module (a path, /dev/serial/by-id/... or a pty).")
    dialect: Literal["rylr", "rak3172", "rn2483"] = Field("rylr", description="AT command set of the module.")
    baud: int | None = Field(None, description="Baud rate; default by dialect (rylr, rak3172: 115200; rn2483: 57600).")
    frequency_hz: int = Field(868_100_000, ge=137_000_000, le=1_020_000_000, description="Receive frequency.")
    spreading_factor: int = Field(7, ge=7, le=12, description="LoRa spreading factor of the nodes.")
    bandwidth_khz: Literal[125, 250, 500] = Field(125, description="LoRa bandwidth.")
    coding_rate: Literal[5, 6, 7, 8] = Field(5, description="Coding rate denominator: 4/5 .. 4/8.")
    preamble: int = Field(8, ge=6, le=65535, description="Preamble length in symbols.")
    network_id: int = Field(18, ge=0, le=255, description="RYLR network id (nodes use the same).")
    address: int = Field(0, ge=0, le=65535, description="RYLR address of the gateway's module.")
    reply_timeout_s: float = Field(2.0, gt=0, description="How long to wait for each set-up reply.")

    @property
    def effective_baud(self) -> int:
        return self.baud or DEFAULT_BAUD[self.dialect]


class TlsConfig(_Section):
    ca_file: Path | None = Field(None, description="CA certificate that signed the broker's certificate.")
    cert_file: Path | None = Field(None, description="Client certificate (optional).")
    key_file: Path | None = Field(None, description="Client private key (with cert_file).")
    insecure: bool = Field(False, description="Skip host name checks (testing only).")


class MqttConfig(_Section):
    host: str = Field("127.0.0.1", description="Broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    base_topic: str = Field("lora-gateway", min_length=1, description="Prefix of every topic.")
    client_id: str | None = Field(None, description="MQTT client id; default lora-gateway-<gateway_id>.")
    protocol: Literal["3.1.1", "5"] = Field("3.1.1", description="MQTT protocol version.")
    username: str | None = Field(None, description="Broker user name.")
    password: str | None = Field(None, description="Broker password (keep the config file private when set).")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive; the will fires after 1.5 times this.")
    tls: TlsConfig | None = Field(None, description="Enable TLS with this table.")
    discovery_prefix: str = Field("homeassistant", description="Home Assistant discovery prefix.")
    telemetry_qos: int = Field(
        0, ge=0, le=1, description="QoS of each reading's `<base>/<device>` state; a device's `telemetry_qos` in the devices file "
        "overrides it. 0: a reading in flight when the connection drops is lost (counted when paho still held it). "
        "Availability, bridge/*, discovery, alerts and the state republished on reconnect stay QoS 1."
    )
    telemetry_queue: int = Field(
        10_000, ge=1, description="Telemetry messages kept while the broker is away or behind; the oldest goes first."
    )
    outbox_cap: int = Field(
        100_000, ge=1, description="Alerts kept on disk until acknowledged; past it the oldest is dropped and reported."
    )

    @field_validator("base_topic")
    @classmethod
    def _no_wildcards(cls, v: str) -> str:
        if any(c in v for c in "#+") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must not contain '#' or '+' nor start or end with '/'")
        return v


class LogConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level (to stderr/journald).")
    rejection_log_interval_s: float = Field(
        10.0, gt=0, description="Each rejection reason is logged at most once per interval, with a count."
    )


class MetricsConfig(_Section):
    port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus /metrics on this port (9108 is usual); off when unset."
    )
    address: str = Field("0.0.0.0", description="Address the metrics endpoint listens on.")


class ModelGateConfig(_Section):
    min_agreement: float = Field(
        0.995, gt=0, le=1,
        description="Int8/float alert agreement a model bundle needs, measured by this gateway on its own held "
        "windows at `model install`, `model activate` and the reload on SIGHUP. A bundle's manifest cannot lower it.",
    )


class HistoryConfig(_Section):
    retention_days: float = Field(7.0, gt=0, description="Days of readings kept for `lora-gateway report`.")
    interval_s: float = Field(
        60.0, ge=0, description="At most one reading a device per interval is kept (and every change of alert "
        "state): the report's resolution, and the history's share of SD-card writes. 0 keeps every reading."
    )


class ChirpStackConfig(_Section):
    host: str = Field("127.0.0.1", description="Broker that ChirpStack's MQTT integration publishes to.")
    port: int = Field(1883, ge=1, le=65535)
    topic: str = Field("application/+/device/+/event/up", description="Uplink events to subscribe to.")
    client_id: str = Field("", description="Set it for a persistent session: uplinks wait at the broker meanwhile.")
    username: str | None = None
    password: str | None = None


class GatewayConfig(_Section):
    gateway_id: str = Field("gateway", pattern=r"^[A-Za-z0-9_-]+$", description="Names this gateway in topics and discovery.")
    devices_file: Path = Field(Path("devices.toml"), description="Device keys (must not be readable by group or others).")
    state_path: Path = Field(Path("state.db"), description="SQLite state database: frame counters, detector state.")
    runtime_dir: Path | None = Field(
        None, description="Directory in RAM for the health snapshot `status` reads, rewritten as the daemon runs "
        "(/run/lora-gateway under systemd). Default: $RUNTIME_DIRECTORY (set by systemd's RuntimeDirectory=), "
        "else beside the state database."
    )
    model_root: Path | None = Field(
        None, description="Installed model bundles; default $LORA_GATEWAY_MODELS or /var/lib/lora-gateway/models. "
        "Without an active bundle the packaged default model runs."
    )
    max_channels_per_device: int = Field(
        64, ge=1, le=4096, description="Channels one device may have; new ones past it are left out and counted "
        "(`too_many_channels`)."
    )
    serial: SerialConfig = SerialConfig()
    mqtt: MqttConfig = MqttConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    history: HistoryConfig = HistoryConfig()
    model: ModelGateConfig = ModelGateConfig()
    input: Literal["serial", "chirpstack"] = Field(
        "serial", description="Where uplinks come from: a LoRa module on `serial`, or ChirpStack (`chirpstack`)."
    )
    chirpstack: ChirpStackConfig = ChirpStackConfig()
    detector: DetectorSettings = DetectorSettings()

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewayConfig:
        tls = self.mqtt.tls
        if tls and bool(tls.cert_file) != bool(tls.key_file):
            raise ValueError("mqtt.tls: cert_file and key_file go together")
        return self


def table_model(annotation: Any) -> type[BaseModel] | None:
    """The table (pydantic model) a field's annotation holds, also inside `X | None`; None for a value."""
    candidates = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


# Top-level keys that are values, not tables: LORA_GATEWAY_<KEY> sets them.
_TOP_LEVEL_KEYS = frozenset(
    name for name, field in GatewayConfig.model_fields.items() if table_model(field.annotation) is None
)


def _env_overrides(environ: dict[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Settings from the environment, and the variable that set each key (for error messages).

    LORA_GATEWAY_MQTT__HOST=broker sets mqtt.host ('__' separates the levels), and
    LORA_GATEWAY_STATE_PATH a top-level key. Nothing else with the prefix is a setting: the
    program's own variables (LORA_GATEWAY_CONFIG, LORA_GATEWAY_MODELS, which the systemd unit
    sets) have no '__' and name no top-level key, so they can never be mistaken for one.
    """
    out: dict[str, Any] = {}
    names: dict[tuple[str, ...], str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        if len(path) == 1 and path[0] not in _TOP_LEVEL_KEYS:
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        names[tuple(path)] = name
    return out, names


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def known_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The keys the table at `loc` takes, following sub-tables and dicts of tables; [] if not a table."""
    annotation: Any = model
    for part in loc:
        table = table_model(annotation)
        if table is not None and isinstance(part, str) and part in table.model_fields:
            annotation = table.model_fields[part].annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]  # `part` is a free key, e.g. a device name
        else:
            return []
    table = table_model(annotation)
    return list(table.model_fields) if table is not None else []


def _message(e: Any, model: type[BaseModel] | None) -> str:
    """pydantic's wording made the user's: an unknown key with the nearest known one, no 'Value error,'."""
    if e["type"] == "extra_forbidden":
        loc = tuple(e["loc"])
        near = difflib.get_close_matches(str(loc[-1]), known_keys(model, loc[:-1]), n=1) if model else []
        return "unknown key" + (f"; did you mean {near[0]!r}?" if near else "")
    msg = str(e["msg"])
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def format_validation_error(
    source: str,
    err: ValidationError,
    secret: frozenset[str] = frozenset(),
    model: type[BaseModel] | None = None,
    variables: dict[tuple[str, ...], str] | None = None,
    *,
    echo: bool = True,
) -> str:
    """One line per problem: file, key, message and the value, unless the key is in `secret`.

    With `model`, an unknown key comes with the nearest known one; with `variables`, a key set
    from the environment names its variable. With `echo` False (the devices file, where any value
    may be a key pasted in the wrong place) only the value's shape is said, never the value.
    """
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if not echo:
            key = mask_keys(key)
        hidden = e["type"] == "missing" or (bool(e["loc"]) and e["loc"][-1] in secret)
        if hidden or e["type"] == "extra_forbidden":
            got = ""
        elif echo:
            got = f" (got {e['input']!r})"
        else:
            got = f" (got {_shape(e['input'])})"
        variable = (variables or {}).get(tuple(str(p) for p in e["loc"]))
        where = f" (from {variable})" if variable else ""
        lines.append(f"{source}: {key}{where}: {_message(e, model)}{got}")
    return "\n".join(lines)


def mask_keys(text: str) -> str:
    """`text` with every run of 16 or more hex digits (half an AES key and up) left out."""
    return _KEY_LIKE.sub("<hex, not shown>", text)


def _shape(value: object) -> str:
    if isinstance(value, str):
        return f"{len(value)} characters, not shown"
    return f"a {type(value).__name__}, not shown"


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None


def load_config(path: Path | None, environ: dict[str, str] | None = None) -> GatewayConfig:
    """Read, override from the environment, validate; relative paths are taken from the file's folder."""
    environ = dict(os.environ) if environ is None else environ
    raw = read_toml(path) if path is not None else {}
    if path is not None and any(isinstance(raw.get(t), dict) and raw[t].get("password") for t in ("mqtt", "chirpstack")):
        if (unsafe := private_files.problem(path, "a configuration with a password", readable_by_group=True)):
            raise ConfigError(unsafe)
    overrides, variables = _env_overrides(environ)
    source = str(path) if path else "defaults"
    if overrides:
        source += " + environment"
    try:
        cfg = GatewayConfig.model_validate(_merge(raw, overrides))
    except ValidationError as e:
        raise ConfigError(format_validation_error(source, e, model=GatewayConfig, variables=variables)) from None
    base = path.parent if path is not None else Path.cwd()
    cfg.devices_file = base / cfg.devices_file
    cfg.state_path = base / cfg.state_path
    if cfg.runtime_dir is None and environ.get("RUNTIME_DIRECTORY"):
        cfg.runtime_dir = Path(environ["RUNTIME_DIRECTORY"].split(":")[0])  # systemd: one per RuntimeDirectory=
    if cfg.runtime_dir is not None:
        cfg.runtime_dir = base / cfg.runtime_dir
    if cfg.model_root is not None:
        cfg.model_root = base / cfg.model_root
    if not cfg.serial.port.startswith("/"):
        cfg.serial.port = str(base / cfg.serial.port)
    if cfg.mqtt.tls:
        for field in ("ca_file", "cert_file", "key_file"):
            value = getattr(cfg.mqtt.tls, field)
            if value is not None:
                setattr(cfg.mqtt.tls, field, base / value)
    return cfg
