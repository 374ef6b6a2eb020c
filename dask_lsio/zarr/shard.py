"""Shard indexes: read and check them, and keep them for later reads (:class:`IndexCache`).

A shard's index is an array of little-endian uint64 (offset, nbytes) pairs, one per inner
chunk (both 2^64-1 for an absent chunk), followed by its crc32c when the array says so, at the
end of the shard or at its start.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Sequence

import crc32c
import numpy as np

from .. import config
from ..errors import ChunkDecodeError
from ..io import Engine
from ..io.pin import PinnedFiles
from ._plan import EMPTY
from .spec import ArraySpec

__all__ = ["EMPTY", "IndexCache", "parse_index", "read_indexes"]
_ENTRY_OVERHEAD = 200  # bytes a cache entry costs besides its index array (key, links)


def read_indexes(spec: ArraySpec, names: Sequence[str], engine: Engine,
                 read_paths: Sequence[str | None] | None = None) -> list[np.ndarray | None]:
    """Each shard's index as an array (chunks per shard..., 2); None for a missing shard.

    Parameters
    ----------
    spec : ArraySpec
    names : sequence of str
        The shards' paths (named in errors).
    engine : Engine
    read_paths : sequence of str or None, optional
        Where to read each shard instead (e.g. a file held open by
        :class:`~dask_lsio.io.pin.PinnedFiles`); None marks a shard known to be absent.
    """
    layout = spec.shard
    per_shard = layout.per_shard(spec.grid)
    n = layout.index_nbytes(spec.grid)
    out: list[np.ndarray | None] = [None] * len(names)
    paths = list(names) if read_paths is None else read_paths
    todo = [i for i, p in enumerate(paths) if p is not None]
    offsets = np.full(len(todo), -n if layout.index_at_end else 0, dtype=np.int64)
    lengths = np.full(len(todo), -1 if layout.index_at_end else n, dtype=np.int64)
    # the whole batch finishes before anything is raised: no read stays in flight
    results = list(engine.read_ranges([paths[i] for i in todo], offsets, lengths,
                                      errors="return"))
    for k, buf in results:
        i = todo[k]
        if isinstance(buf, FileNotFoundError) and read_paths is None:
            continue
        if isinstance(buf, BaseException):
            buf.filename = names[i]  # not the descriptor the file was read through
            buf.add_note(f"while reading the shard index of the Zarr array at {spec.root!r}")
            raise buf
        try:  # the size the entries must lie within (the file read: a held-open one)
            size = os.stat(paths[i]).st_size
        except FileNotFoundError:  # removed since it was read by name: as if absent
            if read_paths is None:
                continue
            raise
        out[i] = parse_index(buf, n, layout.index_crc32c, per_shard, names[i], size,
                             layout.index_at_end)
    return out


def parse_index(buf: Any, n: int, crc: bool, per_shard: tuple[int, ...], name: str,
                size: int | None = None, at_end: bool = True) -> np.ndarray:
    """The index in ``buf`` (``n`` bytes, checked against its crc32c when ``crc``).

    Given the shard's ``size`` in bytes, every entry must be absent (both fields 2^64-1) or
    locate 1 or more bytes between the index and the end of the file (``at_end``: the index
    is the file's last ``n`` bytes, else its first): a corrupt entry would otherwise ask for
    a read of any size at any offset (an index without a crc32c has nothing else to catch
    it), and its values, cast to the int64 offsets of a plan, turn negative past 2^63.

    Raises
    ------
    ChunkDecodeError
        Naming the shard (``name``), for a short index, a crc32c mismatch or a bad entry.
    """
    data = memoryview(buf).cast("B")
    what = "sharding_indexed index"
    if len(data) != n:
        raise ChunkDecodeError(name, what, f"index of {len(data)} bytes, expected {n}")
    if crc:
        want = int.from_bytes(data[-4:], "little")
        if crc32c.crc32c(data[:-4]) != want:
            raise ChunkDecodeError(name, what, "index crc32c mismatch")
        data = data[:-4]
    index = np.frombuffer(data, dtype="<u8").reshape(per_shard + (2,)).copy()
    if size is not None:
        _check_entries(index, name, (0, size - n) if at_end else (n, size))
    return index


def _check_entries(index: np.ndarray, name: str, chunks: tuple[int, int]) -> None:
    """Raise ChunkDecodeError naming the shard for the first entry that is neither absent nor
    1 or more bytes within ``chunks`` (the [start, end) of the file that holds chunks)."""
    offset, nbytes = index[..., 0], index[..., 1]
    absent = (offset == EMPTY) & (nbytes == EMPTY)
    lo, hi = np.uint64(max(chunks[0], 0)), np.uint64(max(chunks[1], 0))
    # offset + nbytes <= hi, written so that nothing overflows uint64
    room = hi - np.minimum(offset, hi)
    inside = (offset >= lo) & (offset <= hi) & (nbytes >= 1) & (nbytes <= room)
    bad = np.argwhere(~(absent | inside))
    if len(bad):
        at = tuple(int(i) for i in bad[0])
        o, b = (int(x) for x in index[at])
        raise ChunkDecodeError(
            name, "sharding_indexed index",
            f"entry {at} (offset {o}, nbytes {b}) is not within the shard's chunk bytes "
            f"{chunks[0]}-{chunks[1]}" + (f" ({len(bad)} bad entries)" if len(bad) > 1 else ""))


class IndexCache:
    """Shard indexes already read, so that later reads of the same shards need no index read.

    Safe to share between threads (a loader's prefetch threads do): lookups and updates hold
    a lock, the reads of missing indexes do not. Bounded by the bytes it keeps; the least
    recently used indexes are dropped first. Given the shards' open files, an index is used
    only for the very file it was read from (same inode, size and times): a shard rewritten
    since, by this process or any other, has its index read again.

    Parameters
    ----------
    spec : ArraySpec
    max_bytes : int or str, optional
        Bytes of indexes kept (default ``lsio.index-cache-bytes``).
    """

    def __init__(self, spec: ArraySpec, max_bytes: int | str | None = None) -> None:
        self.spec = spec
        self.max_bytes = config.get_bytes("index-cache-bytes", max_bytes)
        self.nbytes = 0
        self._lock = threading.Lock()
        # grid position -> (identity of the file read, or None: not known; its index)
        self._index: OrderedDict[tuple[int, ...], tuple[Any, np.ndarray | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._index)

    def get(self, shards: np.ndarray, engine: Engine,
            files: PinnedFiles | None = None) -> list[np.ndarray | None]:
        """The index of each shard (rows of grid positions); None for an absent shard.

        ``files``: the shards' files held open, in the order of ``shards``; indexes are then
        read from those files, and a kept index is used only if it was read from that file.
        """
        keys = [tuple(s) for s in np.asarray(shards).tolist()]
        ids = [files.identity(i) for i in range(len(keys))] if files else [None] * len(keys)
        found: dict[int, np.ndarray | None] = {}  # by position in ``keys``
        with self._lock:
            for i, (k, ident) in enumerate(zip(keys, ids)):
                entry = self._index.get(k)
                if entry is not None and (ident is None or entry[0] == ident):
                    self._index.move_to_end(k)
                    found[i] = entry[1]
        todo = [i for i in range(len(keys)) if i not in found]
        if todo:
            names = self.spec.paths(np.array([keys[i] for i in todo], np.int64))
            paths = None if files is None else [files.read_paths[i] for i in todo]
            read = read_indexes(self.spec, names, engine, paths)
            found.update(zip(todo, read))
            with self._lock:
                for i, index in zip(todo, read):
                    old = self._index.pop(keys[i], None)
                    self.nbytes += _cost(index) - (0 if old is None else _cost(old[1]))
                    self._index[keys[i]] = (ids[i], index)
                while self.nbytes > self.max_bytes and self._index:
                    _, (_, dropped) = self._index.popitem(last=False)
                    self.nbytes -= _cost(dropped)
        # the answer comes from ``found``: entries may be dropped by then, by any thread
        return [found[i] for i in range(len(keys))]


def _cost(index: np.ndarray | None) -> int:
    return _ENTRY_OVERHEAD + (0 if index is None else index.nbytes)
