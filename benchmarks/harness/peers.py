"""Optional peers: the bench extra's packages and fio. A benchmark skips the rows of a
peer that is not installed, with a note, rather than failing."""

from __future__ import annotations

import importlib.util
import shutil
from typing import Mapping, Sequence

# peer -> how it is found: a Python module, or a program on PATH
MODULES = {"zarrs": "zarrs", "tensorstore": "tensorstore", "s3fs": "s3fs", "obstore": "obstore"}
PROGRAMS = {"fio": "fio"}
HOW = {"zarrs": "pip install -e '.[bench]'", "tensorstore": "pip install -e '.[bench]'",
       "s3fs": "pip install -e '.[bench]'", "obstore": "pip install obstore",
       "fio": "apt-get install fio"}


def missing(peer: str) -> str:
    """Why ``peer`` cannot run here ("" if it can, or if it is not an optional peer)."""
    if peer in MODULES and importlib.util.find_spec(MODULES[peer]) is None:
        return f"{peer} is not installed ({HOW[peer]})"
    if peer in PROGRAMS and shutil.which(PROGRAMS[peer]) is None:
        return f"{peer} not found on PATH ({HOW[peer]})"
    return ""


def installed(names: list[str], skipped: dict[str, str],
              needs: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """``names`` without the peers that are not installed; each of those is noted (printed,
    and recorded in ``skipped`` for the JSON file). ``needs``: name -> the peers (packages)
    it runs on, where those are not the name itself (a reader on s3fs)."""
    out = []
    for name in names:
        peers = (needs or {}).get(name, [name])
        why = next((w for w in map(missing, peers) if w), "")
        if why:
            print(f"note: {why}: its rows are skipped" if list(peers) == [name]
                  else f"note: {name}: {why}: its rows are skipped")
            skipped[name] = why
        else:
            out.append(name)
    return out
