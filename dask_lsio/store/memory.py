"""MemoryStore: objects held in a dict in this process (tests; ``zarr.storage.MemoryStore``).

The dict is zarr-python's own when the store comes from a ``zarr.storage.MemoryStore``
(keys are full paths, values zarr ``Buffer`` objects), so what one writes the other reads.
Reads hand the bytes in place (no copy) to the caller or, for hooked reads, to the C hook on
the store's worker threads with the GIL released, the same decode the IO engines run.
A memory store lives in one process: it pickles as a token that finds it again in the same
process only.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, MutableMapping, Sequence

import numpy as np

from .. import config, metrics
from ..errors import BatchIOError, io_error
from ..io import hooks
from ..io.hooks import ReadHook
from ..metrics import Totals
from .base import ABSENT, Errors, Held, Store, StoreDescription

_tokens = itertools.count(1)
_spaces: weakref.WeakValueDictionary[str, _Space] = weakref.WeakValueDictionary()
_spaces_lock = threading.Lock()


class _Space:
    """One dict of objects and what all stores on it share: a token, a write lock, threads."""

    def __init__(self, mapping: MutableMapping[str, Any], zarr_store: Any = None) -> None:
        self.mapping = mapping
        self.zarr_store = zarr_store  # the zarr.storage.MemoryStore it came from, if any
        self.token = f"{next(_tokens):x}"
        self.lock = threading.RLock()
        self.totals = Totals()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                # room for the decoders of a few tasks at once, as an engine's decode pool
                self._pool = ThreadPoolExecutor(4 * config.decode_threads(), "lsio-memory")
            return self._pool


def _space_for(mapping: MutableMapping[str, Any], zarr_store: Any = None) -> _Space:
    """The space of ``mapping`` (one per dict, so stores on one dict share its lock)."""
    with _spaces_lock:
        for space in list(_spaces.values()):
            if space.mapping is mapping:
                return space
        space = _Space(mapping, zarr_store)
        _spaces[space.token] = space
        return space


class MemoryStore(Store):
    """Objects in a dict, under ``prefix``.

    Parameters
    ----------
    mapping : MutableMapping, optional
        key -> bytes-like (or zarr ``Buffer``); a new dict by default.
    prefix : str, default ""
        Where this store's keys start in ``mapping`` (``"group/array"``).
    """

    def __init__(self, mapping: MutableMapping[str, Any] | None = None, prefix: str = "",
                 *, _space: _Space | None = None) -> None:
        self._space = _space or _space_for({} if mapping is None else mapping)
        self.prefix = prefix.strip("/")
        self._head = self.prefix + "/" if self.prefix else ""
        self.description = StoreDescription("memory", f"{self._space.token}/{self.prefix}")
        # (not a URL anyone can open: fsspec's memory:// is another store)
        self.url = f"<memory store {self._space.token}>/{self.prefix}"
        self._head_url = self.url.rstrip("/") + "/"

    @classmethod
    def from_zarr(cls, store: Any, prefix: str = "") -> MemoryStore:
        """The store on a ``zarr.storage.MemoryStore``'s dict."""
        mapping = store._store_dict  # zarr 3.x keeps its objects in this dict
        return cls(prefix=prefix, _space=_space_for(mapping, store))

    @property
    def zarr_store(self) -> Any:
        """A ``zarr.storage.MemoryStore`` on the same dict (for zarr-python)."""
        import zarr

        if self._space.zarr_store is None:
            self._space.zarr_store = zarr.storage.MemoryStore(self._space.mapping)
        return self._space.zarr_store

    @property
    def zarr_target(self) -> Any:
        import zarr

        return zarr.storage.StorePath(self.zarr_store, self.prefix)

    def __reduce__(self) -> tuple:
        return (reopen, (self._space.token, self.prefix))

    def name(self, key: str) -> str:
        return f"{self._head_url}{key}"

    def child(self, prefix: str) -> MemoryStore:
        return MemoryStore(prefix=self._head + prefix.strip("/"), _space=self._space)

    # -- reads ---------------------------------------------------------------------------
    def _value(self, key: str) -> memoryview | None:
        return _bytes_of(self._space.mapping.get(self._head + key))

    def _slice(self, i: int, key: str, data: memoryview | None, offsets, lengths) -> Any:
        if data is None:
            return io_error(errno.ENOENT, self.name(key), "read")
        off = 0 if offsets is None else int(offsets[i])
        n = -1 if lengths is None else int(lengths[i])
        if n < 0:
            return data[max(0, len(data) + off):] if off < 0 else data[off:]
        return data[off : off + n]

    def get(self, keys: Sequence[str], offsets: np.ndarray | None = None,
            lengths: np.ndarray | None = None, errors: Errors = "return",
            size_hint: int | None = None) -> Iterator[tuple[int, Any]]:
        failed = []
        for i, key in enumerate(keys):
            res = self._slice(i, key, self._value(key), offsets, lengths)
            if isinstance(res, OSError) and errors == "raise":
                failed.append(res)
            else:
                yield i, res
        self._count("lsio-read", len(keys))
        if failed:
            raise BatchIOError(f"{len(failed)} of {len(keys)} reads failed", failed)

    def get_hooked(self, keys: Sequence[str], offsets: np.ndarray, lengths: np.ndarray,
                   hook: ReadHook,
                   spans: list[tuple[int, int]] | None = None) -> dict[int, OSError]:
        failed: dict[int, OSError] = {}

        def run_group(lo: int, hi: int) -> None:
            ctx = hook.context(lo)
            for i in range(lo, hi):
                data = self._slice(i, keys[i], self._value(keys[i]), offsets, lengths)
                if isinstance(data, OSError):
                    failed[i] = data
                    continue
                code = hook.call(ctx, i - lo, hooks.address(data) if len(data) else 0, len(data))
                if code:
                    failed[i] = io_error(code, self.name(keys[i]), "decode")

        parts = hooks.groups(spans or [(0, len(keys))], self.decode_threads)
        hooks.run_groups(self._space.executor(), parts, run_group)
        self._count("lsio-read", len(keys))
        return failed

    def has(self, keys: Sequence[str]) -> list[bool]:
        return [self._head + k in self._space.mapping for k in keys]

    def sizes(self, keys: Sequence[str]) -> list[int | None]:
        return [None if (v := self._value(k)) is None else len(v) for k in keys]

    @contextlib.contextmanager
    def hold(self, keys: Sequence[str]) -> Iterator[Held]:
        yield _Snapshot(self, list(keys))

    # -- writes --------------------------------------------------------------------------
    def put(self, items: Sequence[tuple[str, Any]]) -> list[int]:
        from zarr.core.buffer import default_buffer_prototype

        make = default_buffer_prototype().buffer.from_bytes
        out = []
        for key, data in items:
            raw = bytes(memoryview(data).cast("B"))
            self._space.mapping[self._head + key] = make(raw)  # one assignment: atomic
            out.append(len(raw))
        self._count("lsio-write", len(items), sum(out))
        return out

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._space.mapping.pop(self._head + key, None)

    def list(self, prefix: str = "") -> list[str]:
        start = self._head + prefix
        cut = len(self._head)
        return sorted(k[cut:] for k in list(self._space.mapping) if k.startswith(start))

    def lock(self, keys: Sequence[str]) -> contextlib.AbstractContextManager[None]:
        return self._space.lock  # one lock per dict: writers of one process take turns

    # -- accounting ----------------------------------------------------------------------
    def _count(self, label: str, objects: int, nbytes: int = 0) -> None:
        metrics.record(self.totals, label, objects, "objects")
        if nbytes:
            metrics.record(self.totals, label, nbytes, "bytes")

    @property
    def totals(self) -> Totals:
        return self._space.totals

    @property
    def pool(self) -> Any:
        from ..io import get_engine

        return get_engine().pool  # outputs share the process's recycled memory

    @property
    def decode_threads(self) -> int:
        return config.decode_threads()

    @property
    def decode_pool(self) -> Any:
        return self._space.executor()


class _Snapshot(Held):
    """The objects' values when held: bytes in a dict are replaced, never changed in place,
    so keeping the value objects keeps their versions."""

    def __init__(self, store: MemoryStore, keys: list[str]) -> None:
        self._values = [store._space.mapping.get(store._head + k) for k in keys]
        self.reader = _SnapshotReader(store, dict(zip(keys, self._values)))

    def identity(self, i: int) -> Any:
        value = self._values[i]
        return ABSENT if value is None else _Same(value)

    def present(self, i: int) -> bool:
        return self._values[i] is not None


class _SnapshotReader(MemoryStore):
    def __init__(self, store: MemoryStore, values: dict[str, Any]) -> None:
        super().__init__(prefix=store.prefix, _space=store._space)
        self._held = values

    # one hold's reader is not another's
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def _value(self, key: str) -> memoryview | None:
        return _bytes_of(self._held[key]) if key in self._held else super()._value(key)


class _Same:
    """An identity that equals only the very same object (and keeps it alive)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def _bytes_of(value: Any) -> memoryview | None:
    """The bytes of a stored value (bytes-like, or a zarr ``Buffer``), without a copy."""
    if value is None:
        return None
    if hasattr(value, "as_numpy_array"):  # a zarr Buffer
        value = value.as_numpy_array()
    return memoryview(value).cast("B")


def reopen(token: str, prefix: str) -> MemoryStore:
    space = _spaces.get(token)
    if space is None:
        raise RuntimeError(f"memory store {token} is not in this process: a MemoryStore "
                           "cannot be used by other processes (use a local or object store)")
    return MemoryStore(prefix=prefix, _space=space)
