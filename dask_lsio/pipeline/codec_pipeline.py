"""LSIOCodecPipeline: zarr-python's codec pipeline, reading through the dask-lsio engine.

Select it with ``zarr.config.set({"codec_pipeline.path": "dask_lsio.zarr.LSIOCodecPipeline"})``
(it is also registered under the ``zarr.codec_pipeline`` entry point). For an array on a
LocalStore whose codecs dask-lsio handles, a read of whole-box selections (basic slicing,
orthogonal slices, blocks) fetches all its chunk objects or shard ranges in one engine batch and
decodes them with the read path of ``from_zarr`` (the C kernel where it applies); a write of
such a selection encodes whole chunks (or shards) and writes them in one engine batch, each
renamed into place (units it covers in part are read, merged and rewritten whole). Everything
else (other stores, codecs or buffers, integer-array and mask selections, and the per-chunk
``decode``/``encode`` calls) goes to zarr-python's ``BatchedCodecPipeline`` unchanged. With
``lsio.strict``, opening an array on a LocalStore whose codecs or data type dask-lsio does not
handle raises :class:`~dask_lsio.LSIOError` instead of delegating it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any, Iterable, Iterator

import numpy as np
from zarr.abc.codec import CodecPipeline
from zarr.core.codec_pipeline import BatchedCodecPipeline

from .. import config
from ..errors import LSIOError, UnsupportedCodecError, UnsupportedStoreError
from ..store import Store, open_store
from ..zarr.read import read_region
from ..zarr.spec import ArraySpec, spec_from_metadata
from ..zarr.write import update_region


# a zarr-python read is one caller, not one of several dask tasks: decode on every core
_CORES = os.cpu_count() or 1


class LSIOCodecPipeline(CodecPipeline):
    """A zarr-python CodecPipeline that reads many chunks per engine batch.

    Parameters
    ----------
    inner : BatchedCodecPipeline
        zarr-python's pipeline of the same codecs: everything this one does not do itself.
    spec : ArraySpec, optional
        The array as dask-lsio reads it (its ``root`` and ``shape`` are filled in per batch,
        as zarr-python changes the shape in place without a new pipeline); None when its
        store or codecs rule dask-lsio out.
    store : Store, optional
        The store the array is in, at the zarr store's root (a LocalStore or MemoryStore).
    """

    __module__ = "dask_lsio.zarr"  # the name users configure: dask_lsio.zarr.LSIOCodecPipeline

    def __init__(self, inner: BatchedCodecPipeline, spec: ArraySpec | None = None,
                 store: Store | None = None) -> None:
        # What this keeps must not go stale while zarr-python keeps the pipeline and changes
        # the array's metadata in place: of ``spec`` only the codecs, data type, fill value,
        # chunk grid and key encoding are used (zarr-python changes none of them in place);
        # the shape (resize, append) and the array's path come from each batch; attributes
        # are not used; write_empty_chunks comes from each batch's chunk specs.
        self.inner = inner
        self.spec = spec
        self.store = store

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_codecs(cls, codecs: Iterable[Any]) -> "LSIOCodecPipeline":
        return cls(BatchedCodecPipeline.from_codecs(codecs))

    @classmethod
    def from_array_metadata_and_store(cls, array_metadata: Any, store: Any) -> "LSIOCodecPipeline":
        inner = _inner_pipeline(array_metadata)
        try:
            ours = open_store(store)
        except UnsupportedStoreError:  # not a store we have a backend for: zarr's way
            return cls(inner)
        try:
            spec = spec_from_metadata(ours, array_metadata)
        except UnsupportedCodecError as e:
            if config.get("strict"):  # not as NotImplementedError: zarr-python would catch it
                raise LSIOError(f"{e} (lsio.strict is set)") from e
            return cls(inner)
        return cls(inner, spec, ours)

    def __eq__(self, other: object) -> bool:  # zarr compares arrays, and so their pipelines
        return (type(other) is type(self) and self.inner == other.inner
                and self.spec == other.spec and self.store == other.store)

    def __hash__(self) -> int:
        return hash((type(self), self.inner, self.store))

    def __repr__(self) -> str:
        return f"LSIOCodecPipeline({self.inner!r}, engine reads: {self.spec is not None})"

    def evolve_from_array_spec(self, array_spec: Any) -> "LSIOCodecPipeline":
        return type(self)(self.inner.evolve_from_array_spec(array_spec), self.spec,
                          self.store)

    # -- what zarr-python's pipeline answers ---------------------------------------------------
    @property
    def supports_partial_decode(self) -> bool:
        return self.inner.supports_partial_decode

    @property
    def supports_partial_encode(self) -> bool:
        return self.inner.supports_partial_encode

    def validate(self, *, shape: Any, dtype: Any, chunk_grid: Any) -> None:
        self.inner.validate(shape=shape, dtype=dtype, chunk_grid=chunk_grid)

    def compute_encoded_size(self, byte_length: int, array_spec: Any) -> int:
        return self.inner.compute_encoded_size(byte_length, array_spec)

    async def decode(self, chunk_bytes_and_specs: Iterable[Any]) -> Iterable[Any]:
        return await self.inner.decode(chunk_bytes_and_specs)

    async def encode(self, chunk_arrays_and_specs: Iterable[Any]) -> Iterable[Any]:
        return await self.inner.encode(chunk_arrays_and_specs)

    async def write(self, batch_info: Iterable[Any], value: Any, drop_axes: tuple[int, ...] = ()) -> None:
        batch = list(batch_info)
        plan = None if _read_only(batch) else self._plan(batch, value)  # zarr raises there
        in_order = all(_plain(o if isinstance(o, tuple) else (o,)) for *_, o, _ in batch)
        values = None if plan is None or drop_axes or not in_order else _box_values(value, plan.shape)
        if values is None:
            await self.inner.write(batch, value, drop_axes)
            return
        empty = bool(getattr(batch[0][1].config, "write_empty_chunks", False))
        # whole units encoded and renamed into place in one engine batch; units the box
        # covers in part are read, merged and rewritten whole, as zarr-python does; and as
        # zarr-python, an unsharded chunk it selects whole (an edge chunk: the part inside
        # the array) starts from fill_value (a sharded one merges its inner chunks)
        fresh = None
        if plan.spec.shard is None:
            whole = np.array([bool(item[4]) for item in batch])
            fresh = plan.lo[whole] // np.array(plan.spec.grid, np.int64)
        await asyncio.to_thread(update_region, plan.spec, plan.box, values, None, empty, _CORES,
                                fresh)

    # -- reads ---------------------------------------------------------------------------------
    async def read(self, batch_info: Iterable[Any], out: Any, drop_axes: tuple[int, ...] = ()) -> None:
        batch = list(batch_info)
        plan = self._plan(batch, out)
        if plan is None:
            await self.inner.read(batch, out, drop_axes)
            return
        target = out.as_ndarray_like()
        if _whole(target, plan, drop_axes):  # decode straight into ``out``
            await asyncio.to_thread(read_region, plan.spec, plan.box, None,
                                    target.reshape(plan.shape), _CORES)
            return
        values = await asyncio.to_thread(read_region, plan.spec, plan.box, None, None, _CORES)
        for in_box, out_selection in plan.pieces():
            piece = values[in_box]
            target[out_selection] = piece.squeeze(axis=drop_axes) if drop_axes else piece

    def _plan(self, batch: list, out: Any) -> "_Box | None":
        """The box a batch of plain chunk selections tiles, when this read or write is ours."""
        if self.spec is None or not batch or not isinstance(out.as_ndarray_like(), np.ndarray):
            return None
        if any(getattr(item[0], "store", None) is None for item in batch):
            return None
        paths = [getattr(item[0], "path", None) for item in batch]
        if None in paths:
            return None
        # zarr's own indexers mark chunks they select whole; those need no per-chunk parsing
        bounds = _whole_chunks(self.spec, paths, batch) or _chunk_spans(self.spec, paths, batch)
        if bounds is None:
            return None
        array_path, lo_a, hi_a, ints = bounds
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo_a.min(0), hi_a.max(0)))
        if not _tiles(self.spec, box, len(batch)):  # sparse chunks: a box would read far more
            return None
        # zarr-python changes an array's shape in place (resize, append) and keeps its
        # pipeline, so the shape this spec was made with may be stale: nothing here may use
        # it. The batch's chunks say how far the array reaches at least; the array is taken
        # to end at their far edges (what lies beyond is not read, and units are written
        # whole, stored values merged or fill_value, as zarr-python does)
        reach = tuple(-(-int(h) // g) * g for h, g in zip(hi_a.max(0), self.spec.grid))
        store = self.store.child(array_path) if array_path else self.store
        spec = dataclasses.replace(self.spec, store=store, shape=reach)
        return _Box(spec, box, lo_a, hi_a, ints, batch)


def _chunk_spans(spec: ArraySpec, paths: list[str], batch: list):
    """Array path, first and one-past-last index per chunk and axis, and whether some
    selection indexes with an integer: chunk by chunk; None unless every selection is plain."""
    lo, hi, root, ints = [], [], None, False
    for path, (_, _, chunk_selection, _, _) in zip(paths, batch):
        coords, array_path = _coords(spec, path)
        if coords is None or not _plain(chunk_selection):
            return None
        root = array_path if root is None else root
        a, b, has_int = _span(spec, coords, chunk_selection)
        lo.append(a)
        hi.append(b)
        ints = ints or has_int
    return root, np.array(lo, np.int64), np.array(hi, np.int64), ints


def _whole_chunks(spec: ArraySpec, paths: list[str], batch: list):
    """As :func:`_chunk_spans`, for a batch whose chunks are all selected whole (zarr's
    ``is_complete_chunk``): their bounds follow from their keys alone, parsed all at once.
    None when some chunk is not whole or the keys do not all parse alike.

    A whole-chunk selection is slices covering the chunk, or an integer where the chunk is
    one element long: either way the box's memory layout is the same, so ``ints`` is False.
    """
    ndim = len(spec.shape)
    if ndim == 0 or not all(item[4] for item in batch):
        return None
    first, array_path = _coords(spec, paths[0])
    if first is None:
        return None
    joined = "/".join(paths)
    tokens = (joined if spec.separator == "/" else joined.replace(spec.separator, "/")).split("/")
    width = len(tokens) // len(paths)
    if width * len(paths) != len(tokens) or width < ndim:
        return None
    table = np.array(tokens).reshape(len(paths), width)
    if not (table[:, : width - ndim] == table[0, : width - ndim]).all():
        return None  # not all keys of one array, in one key encoding
    try:
        coords = table[:, width - ndim :].astype(np.int64)
    except ValueError:
        return None
    if tuple(coords[0]) != first or (coords < 0).any():
        return None
    lo = coords * np.array(spec.grid, np.int64)
    hi = lo + np.array(spec.grid, np.int64)
    for axis in range(ndim):  # the last chunks along an axis end where the array ends
        last = int(np.argmax(coords[:, axis]))
        s = batch[last][2][axis]
        hi[coords[:, axis] == coords[last, axis], axis] = lo[last, axis] + (
            s.stop if isinstance(s, slice) else int(s) + 1)
    return array_path, lo, hi, False


@dataclasses.dataclass
class _Box:
    """A batch of chunk selections that tile one box of the array."""

    spec: ArraySpec
    box: tuple[slice, ...]
    lo: np.ndarray  # (chunks, ndim) first element of each chunk's selection, array coords
    hi: np.ndarray  # ... and one past its last
    ints: bool  # some selections index an axis with an integer (dropping it)
    batch: list

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.box)

    def pieces(self) -> Iterator[tuple[tuple, Any]]:
        """Per chunk: its part of the box (integers drop their axis), its out selection."""
        origin = np.array([s.start for s in self.box], np.int64)
        for (_, _, sel, out_sel, _), a, b in zip(self.batch, self.lo - origin, self.hi - origin):
            yield (tuple(slice(int(x), int(y)) if isinstance(s, slice) else int(x)
                         for s, x, y in zip(sel, a, b)), out_sel)


def _whole(target: np.ndarray, plan: _Box, drop_axes: tuple[int, ...]) -> bool:
    """Whether ``target`` is exactly the box, in order (a plain slice of the array, no
    integer indices): then the box can be read straight into it."""
    return (not drop_axes and not plan.ints and target.flags.c_contiguous
            and target.dtype == plan.spec.dtype and target.size == int(np.prod(plan.shape)))


def _read_only(batch: list) -> bool:
    return any(getattr(getattr(item[0], "store", None), "read_only", False) for item in batch)


def _box_values(value: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """The values to store in a box of ``shape``: ``value`` reshaped to it, or broadcast from
    one element; None when they do not map onto the box in order."""
    arr = value.as_ndarray_like()
    if not isinstance(arr, np.ndarray):
        return None
    if arr.size == int(np.prod(shape)):
        return arr.reshape(shape)
    if arr.size == 1:
        return np.broadcast_to(arr.reshape(()), shape)
    return None


def _inner_pipeline(metadata: Any) -> BatchedCodecPipeline:
    """zarr-python's own pipeline for ``metadata`` (as ``create_codec_pipeline`` builds it)."""
    from zarr.core.metadata import ArrayV3Metadata
    from zarr.codecs._v2 import V2Codec

    if isinstance(metadata, ArrayV3Metadata):
        return BatchedCodecPipeline.from_codecs(metadata.codecs)
    return BatchedCodecPipeline.from_codecs(
        [V2Codec(filters=metadata.filters, compressor=metadata.compressor)])


def _coords(spec: ArraySpec, path: str) -> tuple[tuple[int, ...] | None, str]:
    """The grid position named by a chunk key path, and the array's path before it."""
    ndim = len(spec.shape)
    if ndim == 0:
        head, _, tail = path.rpartition("/")
        return ((), head) if tail == (spec.key_prefix or "0") else (None, "")
    sep = spec.separator
    if sep == "/":
        parts = path.split("/")
        n = ndim + (1 if spec.key_prefix else 0)
        head, key = "/".join(parts[:-n]), parts[-n:]
    else:
        head, _, last = path.rpartition("/")
        key = last.split(sep)
    if spec.key_prefix:
        if key[0] != spec.key_prefix:
            return None, ""
        key = key[1:]
    try:
        coords = tuple(int(k) for k in key)
    except ValueError:
        return None, ""
    return (coords, head) if len(coords) == ndim else (None, "")


def _plain(selection: Any) -> bool:
    """Only integers and slices of step 1: a box of the chunk."""
    return all(isinstance(s, (int, np.integer)) or (isinstance(s, slice) and s.step in (None, 1))
               for s in selection)


def _span(spec: ArraySpec, coords: tuple[int, ...], selection: Any):
    """First and one-past-last array index a chunk selection covers, per axis; and whether it
    indexes an axis with an integer."""
    lo, hi, has_int = [], [], False
    for c, g, s in zip(coords, spec.grid, selection):
        origin = c * g
        if isinstance(s, slice):  # zarr's chunk selections have explicit bounds
            start = s.start or 0
            stop = s.stop if s.stop is not None else g
            lo.append(origin + start)
            hi.append(origin + stop)
        else:
            lo.append(origin + int(s))
            hi.append(origin + int(s) + 1)
            has_int = True
    return lo, hi, has_int


def _tiles(spec: ArraySpec, box: tuple[slice, ...], n: int) -> bool:
    """Whether ``n`` chunks are all the grid cells the box touches."""
    cells = 1
    for s, g in zip(box, spec.grid):
        cells *= (s.stop - 1) // g - s.start // g + 1 if s.stop > s.start else 0
    return cells == n
