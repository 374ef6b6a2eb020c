"""The Store interface: objects addressed by keys relative to a root, read and written in
batches.

A key is what Zarr calls one: ``"zarr.json"``, ``"c/0/1/2"``. Every method takes a whole
batch; reads stream their completions as they finish, and a failed request is an ``OSError``
naming the object (a missing one a ``FileNotFoundError``), never a failure of the others.
Stores pickle as their description (:attr:`Store.description`), never as open handles: a
task unpickled in another process reopens the store there, on that process's engine.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import numpy as np

from .. import config
from ..io.hooks import ReadHook
from ..metrics import Totals

Errors = Literal["raise", "return"]
ABSENT = "absent"  # the identity of an object that does not exist


@dataclass(frozen=True)
class StoreDescription:
    """What a store is, as plain data: its kind (``"file"``, ``"memory"``), where it is (a
    directory, a memory store's token) and the options that make it (no secrets)."""

    kind: str
    location: str
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class KeysOf:
    """Keys of objects in one store (a part of a batch that reads several stores)."""

    store: Store
    keys: Sequence[str]


class Store(ABC):
    """Objects under one root, addressed by keys, read and written in batches.

    Attributes
    ----------
    description : StoreDescription
    url : str
        Where the store is, for messages (``/data/a.zarr``, ``memory://7f3a/a``).
    totals : dask_lsio.metrics.Totals
        Bytes, objects and seconds of the work done through the store (per process).
    pool
        Recycled memory for outputs (the engine's buffer pool).
    decode_threads : int
        Threads that decode one task's chunks.
    """

    description: StoreDescription
    url: str
    # from_zarr's default blocks per core: two balance local reads (a task decodes on its
    # own thread); see ObjectStore for why object stores want one
    blocks_per_core: int = 2
    # a hold's reader whose versions its caller chose: a read that meets another version
    # fails back to that caller (which holds again), rather than being retried in place
    versions_fixed: bool = False

    # -- reads ---------------------------------------------------------------------------
    @abstractmethod
    def get(self, keys: Sequence[str], offsets: np.ndarray | None = None,
            lengths: np.ndarray | None = None, errors: Errors = "return",
            size_hint: int | None = None) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, buffer)`` in completion order: whole objects, byte ranges
        (``offsets`` and ``lengths``, -1 reading to the end) or suffixes (a negative offset
        with length -1). With errors="return" a failure is yielded as ``(index, OSError)``;
        with "raise" the failures are raised together (``BatchIOError``) at the end."""

    @abstractmethod
    def get_hooked(self, keys: Sequence[str], offsets: np.ndarray, lengths: np.ndarray,
                   hook: ReadHook,
                   spans: list[tuple[int, int]] | None = None) -> dict[int, OSError]:
        """Read and hand each object's bytes to ``hook`` on the thread that received them
        (see :meth:`dask_lsio.io.Engine.read_hooked`); returns the failed reads by index."""

    def joins(self, other: Store) -> bool:
        """Whether one batch of this store can also read ``other``'s objects (see
        :meth:`get_hooked_from`): crops of several arrays are then one batch."""
        return other is self

    def get_hooked_from(self, parts: Sequence[KeysOf], offsets: np.ndarray,
                        lengths: np.ndarray, hook: ReadHook,
                        spans: list[tuple[int, int]] | None = None) -> dict[int, OSError]:
        """:meth:`get_hooked` of the objects of several stores this one :meth:`joins`, in one
        batch; read indices run over all the parts' keys in order."""
        if any(not self.joins(p.store) for p in parts):
            raise ValueError(f"{self!r} cannot read the objects of every store given")
        return self.get_hooked([k for p in parts for k in p.keys], offsets, lengths, hook,
                               spans)

    @abstractmethod
    def has(self, keys: Sequence[str]) -> list[bool]:
        """Whether each object exists: a light check for clients (building a graph must not
        start an IO engine in the client process)."""

    @abstractmethod
    def sizes(self, keys: Sequence[str]) -> list[int | None]:
        """Each object's size in bytes, None where there is none."""

    @abstractmethod
    def hold(self, keys: Sequence[str]) -> contextlib.AbstractContextManager[Held]:
        """Hold the current version of each object while the context lasts: reads through
        the returned :class:`Held` see those versions whatever is written meanwhile."""

    def coalescing(self) -> tuple[int, int]:
        """Byte ranges of one object at most ``gap`` apart are read as one range of at most
        ``max`` bytes (``lsio.coalesce-gap`` and ``lsio.coalesce-max``)."""
        return config.get_bytes("coalesce-gap"), config.get_bytes("coalesce-max")

    def max_held(self) -> int:
        """How many objects one caller may hold at once."""
        return 1 << 30

    # -- writes --------------------------------------------------------------------------
    @abstractmethod
    def put(self, items: Sequence[tuple[str, Any]]) -> list[int]:
        """Write each ``(key, data)`` atomically (a reader sees the old object or the new
        one, never a torn one); return the bytes written per item. Raises
        ``BatchIOError`` holding an OSError per failed item; no partial object remains."""

    # write units a writer encodes before it starts putting them (start_put): 0, all at
    # once; object stores put each group while the next is encoded
    write_group: int = 0

    def start_put(self, items: Sequence[tuple[str, Any]],
                  expect: Mapping[str, Any] | None = None) -> PutStarted:
        """Start :meth:`put` (``expect``: as object stores' ``put`` takes it); the returned
        handle's ``result()`` gives what ``put`` returns, or raises what it raises. Stores
        whose writes take round trips keep them in flight while the caller goes on; the
        others write here and now."""
        try:
            sizes = self.put(items, expect=expect) if expect else self.put(items)
        except Exception as e:  # noqa: BLE001  (raised by result(), as put would)
            return PutStarted(None, e)
        return PutStarted(lambda: sizes)

    @abstractmethod
    def delete(self, keys: Sequence[str]) -> None:
        """Remove objects; a missing one is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """The keys under ``prefix`` (sorted)."""

    def cleanup(self, older_than: float | None = None) -> int:
        """Remove what interrupted writers left under this store (temporary objects, lock
        files no writer holds) that is older than ``older_than`` seconds (default
        ``lsio.stale-after``); return how many. Stores whose writes leave nothing behind
        (object stores' single PUTs, memory) have nothing to remove."""
        return 0

    @abstractmethod
    def lock(self, keys: Sequence[str]) -> contextlib.AbstractContextManager[None]:
        """Exclusive write locks of the objects ``keys`` while the context lasts (between
        threads and processes that write this store through dask-lsio)."""

    # -- placement -----------------------------------------------------------------------
    @abstractmethod
    def child(self, prefix: str) -> Store:
        """The store rooted at ``prefix`` (a group or array path) under this one."""

    @property
    @abstractmethod
    def zarr_target(self) -> Any:
        """What zarr-python opens for the same objects (a path, or a ``StorePath``)."""

    @abstractmethod
    def name(self, key: str) -> str:
        """Where the object ``key`` is, for messages (a path or URL)."""

    @property
    @abstractmethod
    def totals(self) -> Totals: ...

    @property
    @abstractmethod
    def pool(self) -> Any: ...

    @property
    @abstractmethod
    def decode_threads(self) -> int: ...

    @property
    @abstractmethod
    def decode_pool(self) -> Any:
        """The executor of decode (and encode) threads, shared by the tasks on this store."""

    # -- identity ------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.description == self.description

    def __hash__(self) -> int:
        return hash(self.description)

    def __dask_tokenize__(self) -> Any:
        from dask.base import normalize_token

        # normalized here: dask would tokenize the returned description by its repr, in
        # which credentials are hidden (stores differing only in them would be one)
        return (type(self).__name__, normalize_token(self.description))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url!r}>"


class PutStarted:
    """A started :meth:`Store.start_put`: ``result()`` waits for it and returns the bytes
    written per item, or raises its error."""

    def __init__(self, wait: Callable[[], list[int]] | None,
                 error: BaseException | None = None) -> None:
        self._wait, self._error = wait, error

    def result(self) -> list[int]:
        if self._error is not None:
            raise self._error
        return self._wait()


class Held(ABC):
    """Objects held at one version each (see :meth:`Store.hold`).

    ``reader`` is a store whose reads of the held keys see the held versions (other keys read
    as usual); ``identity(i)`` tells the version of the ``i``-th key from any other
    (``"absent"`` where there was no object; None where the store learns it only when the
    object is first read, as object stores do: a request per object up front would cost a
    round trip).
    """

    reader: Store

    @abstractmethod
    def identity(self, i: int) -> Any: ...

    @abstractmethod
    def present(self, i: int) -> bool | None:
        """Whether the ``i``-th object existed when held (None: not known until read)."""

    def expect(self, i: int, identity: Any) -> None:
        """Hold the ``i``-th object at ``identity`` (a version known from an earlier read,
        such as a cached shard index's), for stores that learn versions as they read:
        reads then fail with VersionConflictError if the object has another version."""
