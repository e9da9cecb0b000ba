"""The alert outbox: an alert is committed to SQLite before it is published and deleted on PUBACK.

It survives broker outages, kill -9 and power loss (WAL, synchronous=FULL). When it holds
`cap` messages the oldest is dropped to make room, and every drop is counted and reported:
the cap bounds the disk, never silently.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos     INTEGER NOT NULL,
    retain  INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    def __init__(self, path: Path | str, cap: int = 100_000) -> None:
        if cap < 1:
            raise ValueError("outbox cap must be at least 1")
        self.cap = cap
        self.dropped = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def add(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> tuple[OutboxMessage, int]:
        """Commit a message; returns it and how many old ones were dropped to respect the cap."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                dropped = 0
                if self._count >= self.cap:
                    dropped = self._count - self.cap + 1
                    self._db.execute(
                        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (dropped,)
                    )
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                    (topic, payload, qos, int(retain)),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself on a full disk
                    self._db.execute("ROLLBACK")
                raise
            self._count += 1 - dropped
            self.dropped += dropped
            assert cur.lastrowid is not None
            return OutboxMessage(cur.lastrowid, topic, payload, qos, retain), dropped

    def pending(self, limit: int = 1000, after_id: int = 0) -> list[OutboxMessage]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [OutboxMessage(i, t, bytes(p), q, bool(r)) for i, t, p, q, r in rows]

    def remove(self, message_id: int) -> None:
        with self._lock:
            try:
                cur = self._db.execute("DELETE FROM outbox WHERE id = ?", (message_id,))
            except sqlite3.OperationalError:
                return  # a full disk: it stays, and goes again after a reconnect or restart (at least once)
            self._count -= cur.rowcount

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        with self._lock:
            self._db.close()
