"""Counts rejected input by reason and decides when a rejection is worth a log line or an event.

Garbage on a serial line can arrive thousands of times a second: each reason is logged and
reported at most once per interval, with the number suppressed since the last report.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gateway.records import Rejected

log = logging.getLogger("gateway.rejected")


@dataclass
class RejectionCounter:
    interval_s: float = 10.0
    counts: Counter[str] = field(default_factory=Counter)
    _last_report: dict[str, float] = field(default_factory=dict)
    _suppressed: Counter[str] = field(default_factory=Counter)

    def record(self, rejection: Rejected, now: float, stage: str) -> dict[str, Any] | None:
        """Count it; return an event payload when this reason is due for a report, else None."""
        reason = rejection.reason
        self.counts[reason] += 1
        last = self._last_report.get(reason)
        if last is not None and now - last < self.interval_s:
            self._suppressed[reason] += 1
            return None
        self._last_report[reason] = now
        suppressed = self._suppressed.pop(reason, 0)
        log.warning(
            "rejected %s at %s: %s%s",
            reason,
            stage,
            rejection.detail,
            f" (and {suppressed} more since the last report)" if suppressed else "",
        )
        return {
            "type": "rejected",
            "stage": stage,
            "reason": reason,
            "detail": rejection.detail,
            "count": self.counts[reason],
            "suppressed": suppressed,
            "time": now,
        }
