"""The gateway's state database (SQLite, WAL): frame counters and opaque per-stage state."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

PAGE_SIZE = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frame_counters (
    dev_addr INTEGER PRIMARY KEY,
    fcnt     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    namespace TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     BLOB NOT NULL,
    PRIMARY KEY (namespace, key)
);
"""


class StateError(Exception):
    """The state database cannot be used; phrased for the user: which file, and what to do."""


def unreadable(path: Path | str, error: sqlite3.Error) -> StateError:
    """A database that SQLite refuses. It is never replaced here: it holds the frame counters
    (replay protection) and the alerts not yet delivered, so the operator decides."""
    return StateError(
        f"{path}: the state database is not usable ({error}). It holds frame counters and unsent alerts, so "
        f"it is left as it is: restore a backup, or move it aside to start afresh (mv {path} {path}.bad), "
        "which forgets both"
    )


def check_database(path: Path) -> None:
    """PRAGMA quick_check on an existing database, read-only; StateError if it fails."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
        finally:
            db.close()
    except sqlite3.Error as e:
        raise unreadable(path, e) from None
    if problems != ["ok"]:
        raise unreadable(path, sqlite3.DatabaseError(f"quick_check: {'; '.join(problems[:3])}"))


class StateStore:
    """Durable key-value state. Safe to share between threads; each write is one transaction."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            # A new database gets 1 KB pages (one made before keeps its own): the frame counters are
            # committed once per serial read, one page into the WAL each time, so that page is the
            # floor of what the daemon writes to a Pi's SD card a frame (4 KB pages: 6 GB a day at 17 frames/s).
            self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: every commit survives a crash or kill -9 without an fsync per batch of
            # frames (which capped throughput near 1,000 batches/s); a power cut may lose the last commits.
            # The alert outbox, which must survive power loss, keeps FULL on its own connection.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise unreadable(path, e) from None

    def frame_counters(self) -> dict[int, int]:
        with self._lock:
            rows = self._db.execute("SELECT dev_addr, fcnt FROM frame_counters").fetchall()
        return {dev_addr: fcnt for dev_addr, fcnt in rows}

    def set_frame_counters(self, counters: dict[int, int]) -> None:
        """Write many counters in one transaction (one commit for a whole batch of frames)."""
        self._write_many(
            "INSERT INTO frame_counters (dev_addr, fcnt) VALUES (?, ?) "
            "ON CONFLICT(dev_addr) DO UPDATE SET fcnt = excluded.fcnt",
            counters.items(),
        )

    def set_frame_counter(self, dev_addr: int, next_fcnt: int) -> None:
        """Accept the device's frames from counter `next_fcnt` on (operator command)."""
        if next_fcnt == 0:
            self.reset_frame_counter(dev_addr)
        else:
            self.set_frame_counters({dev_addr: next_fcnt - 1})

    def reset_frame_counter(self, dev_addr: int) -> bool:
        """Forget a device's counter (operator command after a real device reset)."""
        with self._lock:
            cur = self._db.execute("DELETE FROM frame_counters WHERE dev_addr = ?", (dev_addr,))
        return cur.rowcount > 0

    def put_blobs(self, namespace: str, items: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> None:
        """Write many values in one transaction; pairs from an iterator are made one at a time as
        SQLite takes them, so a large write never holds all its values at once."""
        pairs = items.items() if isinstance(items, Mapping) else items
        self._write_many(
            "INSERT INTO blobs (namespace, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value",
            ((namespace, k, v) for k, v in pairs),
        )

    def _write_many(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself on a full disk
                    self._db.execute("ROLLBACK")
                raise

    def blobs(self, namespace: str) -> dict[str, bytes]:
        return dict(self.iter_blobs(namespace))

    def iter_blobs(self, namespace: str, page: int = 256) -> Iterator[tuple[str, bytes]]:
        """(key, value) in key order, read a page at a time: the detector's records of 10,000
        devices (66 MB) are never all in memory at once beside what they are decoded into."""
        after: str | None = None
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT key, value FROM blobs WHERE namespace = ?1 AND (?2 IS NULL OR key > ?2) "
                    "ORDER BY key LIMIT ?3",
                    (namespace, after, page),
                ).fetchall()
            yield from ((k, bytes(v)) for k, v in rows)
            if len(rows) < page:
                return
            after = rows[-1][0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
