"""LocalStore: the objects of a directory, read and written by the process's IO engine
(io_uring, or the thread engine: ``lsio.engine``).

A key names a file below the root (``c/0/1`` is ``<root>/c/0/1``). Writes go to a temporary
name beside the object and are renamed into place; a held object is an open descriptor read
through ``/proc/self/fd/N`` (see :mod:`dask_lsio.io.pin`).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Iterator, Sequence

import numpy as np
from dask.utils import parse_timedelta

from .. import config
from ..io import Engine, get_engine, locks
from ..io.hooks import ReadHook
from ..io.pin import PinnedFiles, max_pinned
from ..io.requests import TEMP_SUFFIX
from ..metrics import Totals
from .base import Errors, Held, KeysOf, Store, StoreDescription


class LocalStore(Store):
    """The files under ``root``, through an IO engine.

    Parameters
    ----------
    root : str or os.PathLike
        The directory (it need not exist yet: writes create it).
    engine : Engine, optional
        The engine to use; by default the process's (:func:`dask_lsio.get_engine`, which on
        a dask worker is the worker plugin's), looked up at every call.
    """

    def __init__(self, root: str | os.PathLike, engine: Engine | None = None) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self._engine = engine
        self.description = StoreDescription("file", self.root)
        self.url = self.root

    @property
    def engine(self) -> Engine:
        return self._engine if self._engine is not None else get_engine()

    def with_engine(self, engine: Engine | None) -> LocalStore:
        """This store on ``engine`` (None: the process's)."""
        return self if engine is self._engine else LocalStore(self.root, engine)

    def __reduce__(self) -> tuple:
        return (LocalStore, (self.root,))

    # -- paths ---------------------------------------------------------------------------
    def name(self, key: str) -> str:
        return os.path.join(self.root, key)

    def paths(self, keys: Sequence[str]) -> list[str]:
        """The files of ``keys``."""
        head = self.root if self.root.endswith(os.sep) else self.root + os.sep
        return [head + k for k in keys]

    @property
    def zarr_target(self) -> str:
        return self.root

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(os.path.join(self.root, prefix), self._engine)

    # -- reads ---------------------------------------------------------------------------
    def get(self, keys: Sequence[str], offsets: np.ndarray | None = None,
            lengths: np.ndarray | None = None, errors: Errors = "return",
            size_hint: int | None = None) -> Iterator[tuple[int, Any]]:
        return self.engine.read_ranges(self.paths(keys), offsets, lengths, errors, size_hint)

    def get_hooked(self, keys: Sequence[str], offsets: np.ndarray, lengths: np.ndarray,
                   hook: ReadHook,
                   spans: list[tuple[int, int]] | None = None) -> dict[int, OSError]:
        return self.get_hooked_from([KeysOf(self, keys)], offsets, lengths, hook, spans)

    def joins(self, other: Store) -> bool:
        return isinstance(other, LocalStore) and other.engine is self.engine

    def get_hooked_from(self, parts: Sequence[KeysOf], offsets: np.ndarray,
                        lengths: np.ndarray, hook: ReadHook,
                        spans: list[tuple[int, int]] | None = None) -> dict[int, OSError]:
        if any(not self.joins(p.store) for p in parts):
            raise ValueError(f"{self!r} cannot read the objects of every store given")
        paths = [path for p in parts for path in p.store.paths(p.keys)]
        failed = self.engine.read_hooked(paths, offsets, lengths, hook, spans)
        if failed:  # errors name the objects, not descriptors they were read through
            names = [p.store.name(k) for p in parts for k in p.keys]
            for i, exc in failed.items():
                exc.filename = names[i]
        return failed

    def has(self, keys: Sequence[str]) -> list[bool]:
        return [os.path.isfile(p) for p in self.paths(keys)]

    def sizes(self, keys: Sequence[str]) -> list[int | None]:
        out: list[int | None] = []
        for path in self.paths(keys):  # (a held key's path is its open file's)
            try:
                out.append(os.stat(path).st_size)
            except FileNotFoundError:
                out.append(None)
        return out

    @contextlib.contextmanager
    def hold(self, keys: Sequence[str]) -> Iterator[Held]:
        keys = list(keys)
        with PinnedFiles(self.paths(keys)) as files:
            yield _HeldFiles(self, keys, files)

    def max_held(self) -> int:
        return max_pinned()

    # -- writes --------------------------------------------------------------------------
    def put(self, items: Sequence[tuple[str, Any]]) -> list[int]:
        return self.engine.write([(self.name(k), data) for k, data in items])

    def delete(self, keys: Sequence[str]) -> None:
        self.engine.delete(self.paths(keys))

    def list(self, prefix: str = "") -> list[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(self.root, prefix)):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root)
            for f in filenames:
                if not (f.startswith(".") and (f.endswith(TEMP_SUFFIX) or
                                               f.endswith(locks.SUFFIX))):
                    out.append(f if rel == "." else os.path.join(rel, f).replace(os.sep, "/"))
        return sorted(out)

    def lock(self, keys: Sequence[str]) -> contextlib.AbstractContextManager[None]:
        return locks.locked(self.paths(keys))

    def cleanup(self, older_than: float | None = None) -> int:
        # a temporary object lives from its write to its rename (milliseconds): one older
        # than the limit was left by a writer that was killed or lost its machine
        limit = stale_after(older_than)
        now = time.time()
        removed = 0
        for dirpath, _, filenames in os.walk(self.root):
            for f in filenames:
                if not f.startswith("."):
                    continue
                path = os.path.join(dirpath, f)
                if f.endswith(locks.SUFFIX):
                    removed += locks.remove_stale(path)  # only if no writer holds it
                elif f.endswith(TEMP_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        if now - os.stat(path).st_mtime >= limit:
                            os.unlink(path)
                            removed += 1
        return removed

    # -- what the engine provides ----------------------------------------------------------
    @property
    def totals(self) -> Totals:
        return self.engine.totals

    @property
    def pool(self) -> Any:
        return self.engine.pool

    @property
    def decode_threads(self) -> int:
        return self.engine.decode_threads

    @property
    def decode_pool(self) -> Any:
        return self.engine.decode_pool


def stale_after(older_than: float | None) -> float:
    """Seconds after which what a writer left is taken to be abandoned."""
    if older_than is not None:
        return float(older_than)
    return float(parse_timedelta(config.get("stale-after")))


class _HeldFiles(Held):
    """Files held open; reads of their keys go through the open descriptors."""

    def __init__(self, store: LocalStore, keys: list[str], files: PinnedFiles) -> None:
        self._files = files
        self._present = [p is not None for p in files.read_paths]
        self.reader = _HeldReader(store, dict(zip(keys, files.read_paths)))

    def identity(self, i: int) -> Any:
        return self._files.identity(i)

    def present(self, i: int) -> bool:
        return self._present[i]


class _HeldReader(LocalStore):
    """A LocalStore whose held keys name the files held open for them."""

    def __init__(self, store: LocalStore, held: dict[str, str | None]) -> None:
        super().__init__(store.root, store._engine)
        self._held = held

    # one hold's reader is not another's, whatever their roots
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def paths(self, keys: Sequence[str]) -> list[str]:
        plain = super().paths(keys)
        return [self._held.get(k) or p for k, p in zip(keys, plain)]

    # errors name the objects, not the descriptors they were read through
    def get(self, keys: Sequence[str], offsets: np.ndarray | None = None,
            lengths: np.ndarray | None = None, errors: Errors = "return",
            size_hint: int | None = None) -> Iterator[tuple[int, Any]]:
        for i, res in super().get(keys, offsets, lengths, errors, size_hint):
            if isinstance(res, OSError):
                res.filename = self.name(keys[i])
            yield i, res

