"""Encoding a shard (``sharding_indexed``): its inner chunks in C order, then the index of
(offset, nbytes) pairs (and its crc32c) at the end or the start (see
:mod:`~dask_lsio.zarr.shard` for the layout and the reads).

Inner chunks of one blosc codec are encoded by the C kernel: all of a shard's in one call
where it can check the fill value itself, else one by one into their place in the shard's
buffer; other chains through numcodecs, joined once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

import crc32c
import numpy as np

from .shard import EMPTY, ShardLayout

if TYPE_CHECKING:
    from .spec import ArraySpec

__all__ = ["encode"]


def encode(spec: ArraySpec, unit: np.ndarray, keep: Callable[[np.ndarray], bool] | None = None,
           fill: np.ndarray | None = None) -> bytes | memoryview | None:
    """A shard of ``unit`` (the shard's values): its inner chunks encoded in C order and the
    index of (offset, nbytes) pairs, at the end or the start. Inner chunks ``keep`` refuses
    (all fill_value) are left out; None when none is kept (no object). ``fill``: given
    when ``keep`` refuses exactly the chunks whose items all equal it bit for bit (a 0-d
    array of the unit's dtype), so the kernel can check that while encoding."""
    layout = spec.shard
    per_shard = layout.per_shard(spec.grid)
    if spec.codec.blosc_only and not spec.codec.crc32c:
        if keep is None or fill is not None:
            done = _encode_batched(spec, unit, fill)
            if done is not _DECLINED:
                return done
        return _encode_in_place(spec, unit, keep)
    index = np.full((*per_shard, 2), EMPTY, dtype="<u8")
    head = layout.index_nbytes(spec.grid) if not layout.index_at_end else 0
    parts, at = [], head
    for inner, chunk in _inner_chunks(spec, unit, keep):
        data = spec.codec.encode(chunk)
        index[inner] = (at, len(data))
        parts.append(data)
        at += len(data)
    if not parts:
        return None
    raw = _index_bytes(layout, index)
    # one join (one allocation and copy of the shard, not two)
    return b"".join([raw, *parts] if not layout.index_at_end else [*parts, raw])


_DECLINED = object()  # _encode_batched: the kernel does not take this shard


def _encode_batched(spec: ArraySpec, unit: np.ndarray, fill: np.ndarray | None) -> Any:
    """:func:`encode` of inner chunks of one blosc codec in ONE kernel call (gather, the
    fill check, c-blosc; the GIL released once for the shard, not per inner chunk): each
    chunk right after the one before in one shard buffer. ``_DECLINED`` when the kernel
    does not take it (not built, a transpose, values not in the stored dtype)."""
    from ._kernel import encode_blosc_units  # (the kernel's module imports this one)

    codec, layout = spec.codec, spec.shard
    if not codec.batch_encodes(unit.dtype) or unit.shape != spec.grid:
        return _DECLINED
    per_shard = layout.per_shard(spec.grid)
    n = int(np.prod(per_shard))
    starts = np.stack(np.unravel_index(np.arange(n), per_shard), axis=1) * np.array(layout.inner)
    index_bytes = layout.index_nbytes(spec.grid)
    head = 0 if layout.index_at_end else index_bytes
    room = n * (codec.nbytes + 16)  # c-blosc's output is at most its input + 16 bytes
    buf = np.empty(head + room + index_bytes, np.uint8)
    slots = buf[head:head + room]
    done = encode_blosc_units(unit, starts, layout.inner, codec.byte_codecs[0], fill, slots)
    if done is None or done[0] is not slots:  # (declined, or encoded elsewhere)
        return _DECLINED
    sizes = done[1]
    if not sizes.any():  # no chunk kept
        return None
    offsets = head + np.cumsum(sizes) - sizes
    index = np.full((n, 2), EMPTY, dtype="<u8")
    kept = sizes > 0
    index[kept, 0], index[kept, 1] = offsets[kept], sizes[kept]
    return _with_index(buf, layout, index, head + int(sizes.sum()))


def _encode_in_place(spec: ArraySpec, unit: np.ndarray,
                     keep: Callable[[np.ndarray], bool] | None) -> memoryview | None:
    """:func:`encode` for inner chunks of one blosc codec: each encoded by the kernel's
    c-blosc straight into its place in one shard buffer (no buffer per chunk, no join).
    c-blosc's output is at most its input + 16 bytes, so each chunk has a slot that size."""
    layout = spec.shard
    per_shard = layout.per_shard(spec.grid)
    index = np.full((*per_shard, 2), EMPTY, dtype="<u8")
    index_bytes = layout.index_nbytes(spec.grid)
    head = 0 if layout.index_at_end else index_bytes
    slot = spec.codec.nbytes + 16
    buf = np.empty(head + int(np.prod(per_shard)) * slot + index_bytes, np.uint8)
    at = head
    for inner, chunk in _inner_chunks(spec, unit, keep):
        got = spec.codec.encode_into(chunk, buf[at:at + slot])
        if got is None:  # (the kernel not built): numcodecs' frame, copied into its slot
            data = np.frombuffer(memoryview(spec.codec.encode(chunk)).cast("B"), np.uint8)
            got = data.size
            buf[at:at + got] = data
        index[inner] = (at, got)
        at += got
    if at == head:  # no chunk kept
        return None
    return _with_index(buf, layout, index, at)


def _with_index(buf: np.ndarray, layout: ShardLayout, index: np.ndarray,
                end: int) -> memoryview:
    """The shard in ``buf`` (its chunks up to byte ``end``, after room for the index when
    the index comes first) with ``index`` written at its start or after its chunks."""
    raw = np.frombuffer(_index_bytes(layout, index), np.uint8)
    if layout.index_at_end:
        buf[end:end + len(raw)] = raw
        return memoryview(buf)[:end + len(raw)]
    buf[:len(raw)] = raw
    return memoryview(buf)[:end]


def _inner_chunks(spec: ArraySpec, unit: np.ndarray, keep: Callable[[np.ndarray], bool] | None
                  ) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """(position, values) of each inner chunk of the shard ``unit`` that ``keep`` keeps (all
    without it), in C order."""
    layout = spec.shard
    for inner in np.ndindex(*layout.per_shard(spec.grid)):
        chunk = unit[tuple(slice(i * n, (i + 1) * n) for i, n in zip(inner, layout.inner))]
        if keep is None or keep(chunk):
            yield inner, chunk


def _index_bytes(layout: ShardLayout, index: np.ndarray) -> bytes:
    """A shard's stored index: its (offset, nbytes) pairs, and their crc32c if the layout
    has one."""
    raw = index.tobytes()
    if layout.index_crc32c:
        raw += crc32c.crc32c(raw).to_bytes(4, "little")
    return raw
