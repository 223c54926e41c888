"""Whether the disks holding a SQLite Baton's files have room to write (``/readyz``).

A full disk refuses every request with a 503 while reads still work, so the database's ``SELECT 1`` alone
kept a replica "ready". Free space is read from the file system (``statvfs``), which also says when room is
back without a write having to try first.
"""

from __future__ import annotations

import os
from pathlib import Path

from storage.checkpointer import sqlite_checkpoint_path
from storage.db import is_sqlite, linked_file, sqlite_path

# Twice what SQLite's WAL grows to before it is folded back into the database (1,000 pages of 4 KiB): below
# this a burst of requests can fill the disk between two polls of /readyz.
MIN_FREE_BYTES = 8 * 1024 * 1024


def short_of_room(url: str, min_free: int = MIN_FREE_BYTES) -> str | None:
    """Why a SQLite database at ``url`` may soon be unable to write (its disk or its checkpoints' disk has less
    than ``min_free`` bytes free for Baton), ``None`` when both have room or the database is not SQLite.
    Says which file's disk, never its path: ``/readyz`` is open to anyone."""
    if not is_sqlite(url):
        return None
    files = {"database": linked_file(Path(sqlite_path(url))), "checkpoints": linked_file(sqlite_checkpoint_path(url))}
    short: dict[int, tuple[list[str], int]] = {}  # by device: both files on one disk are said once
    for what, path in files.items():
        try:
            disk = os.statvfs(path.parent)
            device = os.stat(path.parent).st_dev
        except OSError:  # a directory gone or unreadable: the write itself will say what is wrong
            continue
        free = disk.f_bavail * disk.f_frsize
        if free < min_free:
            short.setdefault(device, ([], free))[0].append(what)
    if not short:
        return None
    return "; ".join(f"the disk holding Baton's {' and its '.join(names)} file has {_size(free)} free (at least "
                     f"{_size(min_free)} is needed to write safely): free space there"
                     for names, free in short.values())


def _size(count: int) -> str:
    return f"{count / 1024 / 1024:.1f} MB" if count >= 1024 * 1024 else f"{count // 1024} KB"
