"""Alerts replayed from recorded likelihoods: what other alert settings would raise, without
running the model again for each of them (bench.cv's candidates, bench.nab's threshold sweep).

A recording keeps, per row and channel, the rules' likelihood (1 where a rule flagged the
reading, else 0) and each time scale's last likelihood (0 before its first). The replay is the
detector's own alert logic: a channel is as anomalous as its rules and those of its scales whose
window no longer reaches back into the channel's last alert, through `alert_step`; the device is
raised while any channel is, and a channel raising while the device is raised is a second alert.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Recording:
    """One device's recorded likelihoods."""

    likelihood: np.ndarray  # rows x channels x (1 + scales): the rules', then each scale's
    spans: tuple[int, ...]  # readings each scale's window spans, as in Detector.scale_likelihoods


def alerts_off(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings under which a detector never raises, so that no alert mutes what it records."""
    return {**settings, "raise_threshold": 1.0, "clear_threshold": 0.99, "warmup": 0, "min_duration": 2**62}


def record(detector: Any, rows: Iterable[Any], channels: list[str], device: str) -> Recording:
    """Feed one device's rows (`gateway.commands.detect.Row`) to a detector built with
    `alerts_off` settings and record its likelihoods."""
    from gateway.records import Reading

    out = []
    spans: tuple[int, ...] = ()
    for n, row in enumerate(rows, 1):
        (o,) = detector.observe([Reading(device, dict(zip(channels, row.values)), n, math.nan, math.nan, row.time)])
        scales = detector.scale_likelihoods(device)
        step = []
        for c in channels:
            judged = scales.get(c, ())
            spans = spans or tuple(span for span, _ in judged)
            # With nothing muted, 1 is a rule's flag (or a scale's own 1, which a rule's flag of
            # such a reading almost always accompanies).
            step.append([1.0 if o.likelihood.get(c) == 1.0 else 0.0, *(like or 0.0 for _, like in judged)])
        out.append(step)
    width = 1 + len(spans)
    # A channel not heard yet has no scales: its row is all zeros.
    padded = [[s + [0.0] * (width - len(s)) for s in step] for step in out]
    return Recording(np.array(padded).reshape(len(out), len(channels), width), spans)


def replay(rec: Recording, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """(raises, raised) per row: the detector's alert state machine over a recording."""
    from gateway.detect.alerts import alert_step

    n, k, _ = rec.likelihood.shape
    spans = rec.spans
    longest = max(spans, default=0)
    # Where no scale is muted, a channel's likelihood is the highest of its columns.
    top = rec.likelihood.max(axis=2).tolist()
    cols = rec.likelihood.tolist()
    raises = np.zeros(n)
    raised_rows = np.zeros(n, dtype=bool)
    state = [(False, 0)] * k
    cleared = [0] * k
    device = False
    for i in range(n):
        seen = i + 1
        newly = False
        for j in range(k):
            since = seen - cleared[j]
            if since >= longest:
                like = top[i][j]
            else:
                rules, *scales = cols[i][j]
                like = max([rules, *(v for v, span in zip(scales, spans) if since >= span)])
            was, over = state[j]
            if was or like >= cfg.raise_threshold:
                state[j] = now = alert_step(was, over, like, seen, cfg)
                newly |= now[0] and not was
                if was and not now[0]:
                    cleared[j] = seen
            else:
                state[j] = (False, 0)
        up = any(s[0] for s in state)
        if up and (newly or not device):
            raises[i] = 1.0
        device = raised_rows[i] = up
    return raises, raised_rows
