"""The state database's write budget: what one frame-counter commit costs the SD card."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.service.state import PAGE_SIZE, StateStore

FRAME_HEADER = 24  # each WAL frame: sqlite.org/fileformat.html, 4.1


def test_a_counter_commit_is_one_small_page_in_the_wal(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.set_frame_counters({dev: 0 for dev in range(20)})
    wal = tmp_path / "state.db-wal"
    before = wal.stat().st_size
    store.set_frame_counters({7: 1})  # what the daemon commits per serial read
    assert wal.stat().st_size - before == FRAME_HEADER + PAGE_SIZE == FRAME_HEADER + 1024
    assert store.frame_counters()[7] == 1
    store.close()


def test_a_database_made_before_keeps_its_pages_and_its_counters(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("PRAGMA page_size=4096")
    db.execute("CREATE TABLE frame_counters (dev_addr INTEGER PRIMARY KEY, fcnt INTEGER NOT NULL)")
    db.execute("INSERT INTO frame_counters VALUES (1, 41)")
    db.commit()
    db.close()
    store = StateStore(tmp_path / "state.db")
    assert store.frame_counters() == {1: 41}
    store.set_frame_counters({1: 42})
    assert store.frame_counters() == {1: 42}
    store.close()
    assert sqlite3.connect(tmp_path / "state.db").execute("PRAGMA page_size").fetchone() == (4096,)


def test_blobs_are_read_a_page_at_a_time_in_key_order_and_all_of_them(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    values = {"": b"empty key", **{f'["dev-{i:03d}","t"]': bytes([i]) * 3 for i in range(7)}}
    store.put_blobs("detector", values)
    store.put_blobs("other", {"x": b"not this namespace"})
    for page in (1, 2, 7, 8, 256):
        assert list(store.iter_blobs("detector", page)) == sorted(values.items()), page
    assert store.blobs("detector") == values
    assert list(store.iter_blobs("none")) == []
