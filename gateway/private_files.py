"""Checks on files that hold secrets (device keys, an MQTT password), as ssh's StrictModes does.

A secret file must be owned by the daemon's user or root, must not be writable by group or
others, and, where `readable_by_group` is off, not readable by them either. Every folder above
it up to `/` must be owned by the daemon's user or root and not writable by group or others:
otherwise whoever may write there can swap the file. One departure from ssh: a world-writable
folder with the sticky bit (`/tmp`) is accepted, since nobody but a file's owner may rename or
remove it there.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def _owner_ok(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def problem(path: Path, what: str, *, readable_by_group: bool = False) -> str | None:
    """What makes `path` unfit to hold `what`, naming the path and the fix; None if it is private."""
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if not _owner_ok(st):
        return (
            f"{path}: owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}) or root: {what} must be "
            f"owned by the user that runs the gateway (run: chown {os.geteuid()} {path})"
        )
    closed = stat.S_IWGRP | stat.S_IWOTH | stat.S_IRWXO | (0 if readable_by_group else stat.S_IRWXG)
    if mode & closed:
        wanted = "0640" if readable_by_group else "0600"
        who = "others" if readable_by_group else "group or others"
        return (
            f"{path}: permissions {mode:04o} are too open: {what} must not be accessible by {who} "
            f"(run: chmod {wanted[1:]} {path})"
        )
    for folder in path.resolve().parents:
        fst = folder.stat()
        fmode = stat.S_IMODE(fst.st_mode)
        if not _owner_ok(fst):
            return (
                f"{path}: folder {folder} is owned by uid {fst.st_uid}, not by this user or root: "
                f"whoever owns it can replace {what}"
            )
        sticky = bool(fmode & stat.S_ISVTX)
        if fmode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky:
            return (
                f"{path}: folder {folder} is writable by group or others ({fmode:04o}): whoever may write "
                f"there can replace {what} (run: chmod go-w {folder})"
            )
    return None
