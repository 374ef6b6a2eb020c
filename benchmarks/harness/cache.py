"""Page cache control: cold runs drop it before every timed run, warm runs pre-read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

DROP_CACHES = "/proc/sys/vm/drop_caches"


def can_drop_caches() -> bool:
    """Whether this process may drop the page cache (root, writable sysctl)."""
    return os.geteuid() == 0 and os.access(DROP_CACHES, os.W_OK)


def drop_caches(level: int = 3) -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``: page cache, dentries and inodes (level
    1: the page cache only; the directory entries and inodes stay cached)."""
    if level not in (1, 3):
        raise ValueError(f"drop_caches level must be 1 or 3, not {level!r}")
    os.sync()
    with open(DROP_CACHES, "w") as f:
        f.write(f"{level}\n")


def preread_files(paths: Iterable[str]) -> None:
    """Bring these files into the page cache (each read whole, at once)."""
    for p in paths:
        with open(p, "rb") as f:
            f.read()


def preread_trees(roots: Iterable[Path]) -> None:
    """Bring every file under ``roots`` (data and metadata) into the page cache, in pieces of
    16 MiB (shards can be large)."""
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                with open(os.path.join(dirpath, name), "rb") as f:
                    while f.read(1 << 24):
                        pass
