"""Writes to the state database that fail (a full disk, an I/O error) are survived, not fatal.

A full SD card used to be a crash loop: every restart failed at its first write. Now the daemon
runs on degraded: telemetry is still published, an alert that cannot be committed goes out at
once without the outbox (the daemon says so), frame counters and detector state wait in memory
for the next write that works. The first failure is one error line and a `storage_failing`
event; the first write that works again is a `storage_back` event.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.service.state import StateStore

log = logging.getLogger(__name__)

# What a write to SQLite raises when the disk is full or failing (OSError: a file beside it).
WRITE_ERRORS = (sqlite3.OperationalError, sqlite3.DatabaseError, OSError)


class StorageFaults:
    def __init__(self, path: Path, report: Callable[[dict[str, Any]], None]) -> None:
        self.path = path
        self._report = report
        self.failing: str | None = None  # the error while writes fail, else None
        self.failed_writes = 0

    def attempt(self, what: str, write: Callable[[], object]) -> bool:
        """`write()`; False if it failed with a storage error (said once until writes work again).
        `write` returns something true when it did write: a call with nothing to write proves nothing."""
        try:
            wrote = write()
        except WRITE_ERRORS as e:
            self.failed(what, e)
            return False
        if wrote:
            self.succeeded()
        return True

    def failed(self, what: str, error: BaseException) -> None:
        self.failed_writes += 1
        if self.failing is not None:
            return
        self.failing = str(error)
        log.error("state database %s: cannot write %s: %s; running on without saving state until it can "
                  "(free space on %s)", self.path, what, error, self.path.parent)
        self._report({"type": "storage_failing", "detail": f"{self.path}: {what}: {error}", "time": time.time()})

    def succeeded(self) -> None:
        if self.failing is None:
            return
        log.warning("state database %s: writes work again after %d failed", self.path, self.failed_writes)
        self._report({"type": "storage_back", "detail": f"{self.path}: {self.failed_writes} writes had failed",
                      "time": time.time()})
        self.failing = None
        self.failed_writes = 0


class GuardedCounters:
    """The frame counters' store for the decoder: a write that fails is reported, not raised, and
    its counters go again with the next write (the decoder has them in memory meanwhile)."""

    def __init__(self, store: StateStore, faults: StorageFaults) -> None:
        self._store = store
        self._faults = faults
        self._unwritten: dict[int, int] = {}

    def frame_counters(self) -> dict[int, int]:
        return {**self._store.frame_counters(), **self._unwritten}

    def set_frame_counters(self, counters: dict[int, int]) -> None:
        pending = {**self._unwritten, **counters}
        if self._faults.attempt("frame counters", lambda: self._store.set_frame_counters(pending) or True):
            self._unwritten = {}
        else:
            self._unwritten = pending


class DropLedger:
    """Telemetry drops (total, not yet reported) in the state database, so that a kill -9 cannot
    make them vanish: the next run reports the ones the last did not."""

    _NAMESPACE, _KEY = "publisher", "telemetry"

    def __init__(self, store: StateStore, faults: StorageFaults) -> None:
        self._store = store
        self._faults = faults
        self._saved = (0, 0)

    def unreported(self) -> int:
        """What the last run dropped and did not report."""
        saved = self._store.blobs(self._NAMESPACE).get(self._KEY)
        return int(json.loads(saved)[1]) if saved is not None else 0

    def save(self, drops: tuple[int, int]) -> None:
        """Write `drops` if they changed since the last write that worked."""
        if drops != self._saved and self._faults.attempt(
                "drop counters", lambda: self._store.put_blobs(self._NAMESPACE, {self._KEY: json.dumps(drops).encode()})
                or True):
            self._saved = drops
