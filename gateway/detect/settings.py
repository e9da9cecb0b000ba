"""The detector's settings: the `[detector]` table, and the overrides of it per device and channel.

`DetectorSettings.resolve` gives one channel's effective `Tunables`; the detector resolves each
channel once and shares the result between the channels with the same overrides.
"""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)


class Tunables(BaseModel):
    """One channel's effective settings: every key of `[detector]` but the override tables."""

    model_config = ConfigDict(extra="forbid")

    window: int | None = Field(
        None, ge=1,
        description="Readings per scored window; default: the model's window. A multiple k of the model's "
        "window lets it see a k times longer span: values are averaged in groups of k.",
    )
    # warmup, raise_threshold, clear_threshold, min_duration and low_scores: chosen by bench/cv.py
    # (leave-one-group-out cross-validation over the dev groups, within a false-alert budget on normal
    # data), resolution_steps by its earlier runs; README, "Detection".
    warmup: int = Field(
        600, ge=0,
        description="Readings of a channel before it may raise an alert (it learns meanwhile): 600 = 50 minutes "
        "at a 5 s period, 10 hours at 60 s; better at least a daily cycle of the sensor.",
    )
    raise_threshold: float = Field(
        0.4, gt=0, le=1,
        description="Raise when the anomaly likelihood reaches this. Likelihood 1 - 2^(-u/5) with u = "
        "-log10(chance that the recent scores are normal): 0.35 = a 1e-3 chance, 0.5 = 1e-5, 0.75 = 1e-10.",
    )
    clear_threshold: float = Field(
        0.24, ge=0, lt=1,
        description="Clear when every raised channel's likelihood falls below this (< raise_threshold).",
    )
    min_duration: int = Field(
        3, ge=1, description="Consecutive readings at or above raise_threshold before the alert is raised."
    )
    ignore: list[str] = Field(
        default_factory=list,
        description="Channel names (shell patterns, e.g. 'battery_*') that are not scored.",
    )
    history: int = Field(
        10000, ge=50,
        description="How many recent scores (per time scale, exponentially weighted) a new one is compared with.",
    )
    average: int = Field(
        2, ge=1, description="Consecutive scores averaged before the comparison (smooths single-reading noise)."
    )
    scales: list[int] = Field(
        [1, 4, 16], min_length=1,
        description="Time scales scored per channel: 1 = windows of the last `window` readings; 4 = of means of "
        "4 readings, a span 4 times as long (slow drifts, daily patterns). The channel's likelihood is the "
        "highest of its scales'.",
    )
    daily: bool = Field(
        False,
        description="Also compare each time scale's newest window with the same hours a day before, where its "
        "buffer holds a day (the 16-reading scale for readings 48 s to 45 min apart, the 4-reading one for 3.2 "
        "min to 3 h, the 1-reading one for 13 min to 12 h), as means over slots of the clock, each against the "
        "slot a day before (a lost packet or a silence leaves its slot empty and out of the comparison): a daily "
        "pattern broken (a bump missing, lower, flattened) that each window's shape alone does not show. "
        "Channels whose day does not repeat are left to the model. Off by default: cross-validation chooses it "
        "(NAB's 18 files 47.2 held out, against 40.9), but it also compares a day with a fault the day before "
        "held, and nearly doubles the simulated farm's false alerts (README, Detection).",
    )
    range_tolerance: float = Field(
        0.25, ge=0,
        description="A reading beyond the lowest or highest the channel has ever reported, by more than this "
        "fraction of that range, is anomalous at once (likelihood 1). 0 disables the rule.",
    )
    stuck_runs: bool = Field(
        True,
        description="A run of identical readings at least 8 long and more than twice as long as any the channel "
        "has shown before is anomalous (a stuck sensor).",
    )
    resolution_steps: float = Field(
        0.0, ge=0,
        description="A window is never normalized by a spread below this many steps of the channel's "
        "resolution (the smallest change it has shown). 0 disables: a quantised sensor's medians are "
        "already taken as of grouped data; 1 quietens a sensor that rarely leaves one value.",
    )
    low_scores: bool = Field(
        False,
        description="Also alert on unusually LOW model scores: a stuck sensor's flat readings fit the model "
        "better than its usual noise does. Off by default (bench/cv.py's choice): a normal window after a "
        "noise burst, normalized by the burst's spread, scores low too; runs of identical readings have "
        "their own rule (stuck_runs).",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> Tunables:
        if self.clear_threshold >= self.raise_threshold:
            raise ValueError(
                f"clear_threshold ({self.clear_threshold}) must be below raise_threshold ({self.raise_threshold})"
            )
        return self


_TUNABLE_FIELDS = tuple(Tunables.model_fields)

# The same fields, all optional: a device or channel table sets only what differs.
DetectorOverrides = create_model(  # type: ignore[call-overload]
    "DetectorOverrides",
    __config__=ConfigDict(extra="forbid"),
    **{
        name: (info.annotation | None, Field(None, description=info.description))  # type: ignore[operator]
        for name, info in Tunables.model_fields.items()
    },
)


class DetectorSettings(Tunables):
    """The `[detector]` table. Overrides: `[detector.channels.<channel>]` for a channel name on every
    device, `[detector.devices.<device>]` for one device, `[detector.channels."<device>/<channel>"]`
    for one channel of one device; the more specific wins."""

    devices: dict[str, DetectorOverrides] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="Per-device overrides of the settings above."
    )
    channels: dict[str, DetectorOverrides] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="Per-channel overrides: key '<channel>' or '<device>/<channel>'."
    )

    @model_validator(mode="after")
    def _overrides_valid(self) -> DetectorSettings:
        for where, table in (("devices", self.devices), ("channels", self.channels)):
            for key in table:
                device, _, channel = key.rpartition("/") if where == "channels" else (key, "", "")
                try:
                    self.resolve(device or "", channel)
                except ValueError as e:
                    raise ValueError(f"{where}.{key}: {e}") from None
        return self

    def resolve(self, device: str, channel: str) -> Tunables:
        """Effective settings of one channel: global < channel < device < device/channel."""
        merged = {name: getattr(self, name) for name in _TUNABLE_FIELDS}
        for override in (self.channels.get(channel), self.devices.get(device), self.channels.get(f"{device}/{channel}")):
            if override is not None:
                merged.update(override.model_dump(exclude_none=True))
        try:
            return Tunables.model_validate(merged)
        except ValidationError as e:
            raise ValueError("; ".join(f"{'.'.join(map(str, x['loc'])) or 'settings'}: {x['msg']}" for x in e.errors())) from None
