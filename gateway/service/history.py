"""A bounded history of readings in the state database, for `lora-gateway report`.

At most one row per device per `interval_s` (the first reading after it), and every reading
whose alert state differs from the device's last row, so that alert spans stay exact: the
report's resolution, bought with a bounded write budget on a Pi's SD card. A row holds the state
payload the daemon published (so the history costs no second encoding). Rows are written every
WRITE_EVERY_S in one transaction, not per batch of frames: fewer commits on the daemon's loop
and fewer, fuller pages on the card, for at most that much history lost to a crash (it is not
the alert path). Rows older than the retention are deleted
a bounded batch at a time, so pruning a long backlog never stalls the loop that appends.

Only the time is indexed: an index by device costs several times the insert itself (each row
lands at a random place in it) on the daemon's hot path, while a report, which reads one
device's rows, is rare and scans just its time span.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.service.state import unreadable

DEFAULT_RETENTION_S = 7 * 86400
PRUNE_BATCH = 5000
PRUNE_EVERY_S = 60.0
WRITE_EVERY_S = 10.0
DEFAULT_INTERVAL_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    device      TEXT NOT NULL,
    time        REAL NOT NULL,
    values_json TEXT NOT NULL,
    score       REAL,
    alert_state TEXT NOT NULL
);
DROP INDEX IF EXISTS history_device_time;
CREATE INDEX IF NOT EXISTS history_time ON history (time);
"""

# (device, time, the published state payload, anomaly score, alert state)
HistoryEntry = tuple[str, float, str, float | None, str]


@dataclass(frozen=True, slots=True)
class HistoryRow:
    device: str
    time: float
    values: dict[str, float]
    score: float | None = None
    alert_state: str = "ok"
    channel_scores: dict[str, float] = field(default_factory=dict)


class History:
    def __init__(self, path: Path | str, retention_s: float = DEFAULT_RETENTION_S,
                 interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.retention_s = retention_s
        self.interval_s = interval_s
        self._last_row: dict[str, tuple[float, str]] = {}  # device -> time and alert state of its last row
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # History is not the alert path: after a power cut losing the last seconds is fine, an fsync per batch is not.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise unreadable(path, e) from None
        self._next_prune = 0.0
        self._pending: list[HistoryEntry] = []
        self._next_write = 0.0

    def append(self, entries: Iterable[HistoryEntry], now: float | None = None) -> None:
        """Keep the rows that are due (see the module's docstring), and write_due()."""
        last_row = self._last_row
        with self._lock:
            for entry in entries:
                device, t, _, _, alert_state = entry
                last = last_row.get(device)
                if last is None or t - last[0] >= self.interval_s or alert_state != last[1]:
                    last_row[device] = (t, alert_state)
                    self._pending.append(entry)
        self.write_due(now)

    def write_due(self, now: float | None = None) -> None:
        """Write what waits in one transaction if a second has passed since the last write, and
        prune one bounded batch of expired rows when due. The daemon's half-second tick calls it
        too, so that rows kept in a quiet spell do not wait for the next reading."""
        now = time.time() if now is None else now
        with self._lock:
            if now < self._next_write:
                return
            self._next_write = now + WRITE_EVERY_S
            self._write()
            if now >= self._next_prune:
                deleted = self._prune_batch(now)
                # A full batch means more is waiting: prune again at the next write.
                self._next_prune = now if deleted == PRUNE_BATCH else now + PRUNE_EVERY_S

    def _write(self) -> None:
        if not self._pending:
            return
        self._db.execute("BEGIN")
        try:
            self._db.executemany("INSERT INTO history VALUES (?, ?, ?, ?, ?)", self._pending)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite rolls back by itself on a full disk
                self._db.execute("ROLLBACK")
            # Rows that cannot be written are dropped, not kept: on a full disk memory must stay bounded,
            # and the history only serves reports.
            self._pending = []
            raise
        self._pending = []

    def _prune_batch(self, now: float) -> int:
        cur = self._db.execute(
            "DELETE FROM history WHERE rowid IN (SELECT rowid FROM history WHERE time < ? LIMIT ?)",
            (now - self.retention_s, PRUNE_BATCH),
        )
        return cur.rowcount

    def prune(self, now: float | None = None) -> int:
        """Delete every expired row (in batches); returns how many."""
        now = time.time() if now is None else now
        total = 0
        with self._lock:
            while (n := self._prune_batch(now)) > 0:
                total += n
        return total

    def query(self, device: str, since: float) -> list[HistoryRow]:
        """The device's rows from `since` (unix time) on, oldest first, those still waiting included."""
        with self._lock:
            self._write()
            rows = self._db.execute(
                "SELECT device, time, values_json, score, alert_state FROM history "
                "WHERE time >= ? AND device = ? ORDER BY time",
                (since, device),
            ).fetchall()
        out = []
        for dev, t, values_json, score, alert_state in rows:
            body = json.loads(values_json)
            if "values" in body:
                out.append(HistoryRow(dev, t, body["values"], score, alert_state, body["anomaly"]))
            else:  # written before the history kept the published payload
                out.append(HistoryRow(dev, t, body["v"], score, alert_state, body["s"]))
        return out

    def devices(self) -> list[str]:
        with self._lock:
            self._write()
            return [r[0] for r in self._db.execute("SELECT DISTINCT device FROM history ORDER BY device")]

    def close(self) -> None:
        with self._lock:
            self._write()
            self._db.close()


def alert_spans(rows: list[HistoryRow]) -> list[tuple[float, float | None]]:
    """(raised_at, cleared_at) from the rows' alert states; cleared_at None while still raised."""
    spans: list[tuple[float, float | None]] = []
    start: float | None = None
    for r in rows:
        raised = r.alert_state == "raised"
        if raised and start is None:
            start = r.time
        elif not raised and start is not None:
            spans.append((start, r.time))
            start = None
    if start is not None:
        spans.append((start, None))
    return spans
