"""Codec chains: from a chunk object's bytes to a chunk array, without zarr-python.

A :class:`ChunkCodec` is built once per array from the JSON metadata (zarr v3 ``codecs`` or
zarr v2 ``filters``/``compressor``/``order``) and is picklable. Byte codecs are numcodecs
codecs, whose decoders release the GIL, so several threads decode at once. Metadata naming a
codec we do not handle raises :class:`UnsupportedCodecError` when the chain is built, so the
caller can fall back to zarr-python for that array.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import crc32c as _crc32c
import numcodecs
import numcodecs.blosc
import numpy as np

from ..errors import ChunkDecodeError, UnsupportedCodecError

# Decode threads are ours: blosc's own thread pool would fight them for the two cores, and its
# non-threaded path is the one that is safe to call from many threads at once.
numcodecs.blosc.use_threads = False

_V3_BYTES_CODECS = {"blosc": "blosc", "zstd": "zstd", "gzip": "gzip"}


@dataclass(frozen=True)
class ChunkCodec:
    """How to turn one stored chunk into an array of ``shape``.

    Attributes
    ----------
    shape : tuple of int
        The chunk shape (inner chunk shape for sharded arrays).
    dtype : numpy.dtype
        The dtype of the decoded values as stored (byte order included).
    order : tuple of int or None
        The permutation a v3 ``transpose`` codec applied when encoding, or ``None``; v2 arrays
        with ``order="F"`` are the reversed permutation.
    byte_codecs : tuple
        numcodecs codecs applied, last to first, to decode (v3 bytes->bytes, v2 compressor).
    filters : tuple
        v2 filters (numcodecs array codecs), applied last to first after the compressor.
    crc32c : bool
        A trailing little-endian CRC32C of the preceding bytes must be checked and removed.
    names : str
        The codec names, for error messages.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    order: tuple[int, ...] | None = None
    byte_codecs: tuple[Any, ...] = ()
    filters: tuple[Any, ...] = ()
    crc32c: bool = False
    names: str = ""
    size: int = field(init=False)  # values per chunk
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", int(np.prod(self.shape)))
        object.__setattr__(self, "nbytes", self.size * self.dtype.itemsize)

    def decode(self, data: Any, key: str) -> np.ndarray:
        """The chunk stored in ``data`` as an array of the chunk shape, in logical order.

        The array may live in a per-thread scratch buffer that the next decode on this
        thread reuses: copy it before decoding another chunk.

        Raises
        ------
        ChunkDecodeError
            Naming ``key`` and the codecs, when the bytes do not decode to a whole chunk or
            a checksum does not match.
        """
        try:
            return self._decode(data, key)
        except ChunkDecodeError:
            raise
        except Exception as e:  # numcodecs raises RuntimeError, ValueError ... on bad input
            raise ChunkDecodeError(key, self.names, f"{type(e).__name__}: {e}") from e

    def decode_into(self, data: Any, key: str, out: np.ndarray) -> bool:
        """Decode straight into ``out`` (a C-contiguous array of the chunk's values) when the
        chain allows it (one byte codec, no filters, no transpose, the same dtype); return
        False, having done nothing, when it does not."""
        if (len(self.byte_codecs) != 1 or self.filters or self.order is not None
                or out.dtype != self.dtype or not out.flags.c_contiguous or out.size != self.size):
            return False
        try:
            buf = memoryview(data).cast("B")
            if self.crc32c:
                buf = self._check_crc(buf, key)
            codec = self.byte_codecs[0]
            if codec.codec_id == "blosc":
                _check_blosc_frame(buf, key, self.names, self.nbytes)
            got = _decode_exact(codec, buf, out.reshape(-1).view(np.uint8))
        except ChunkDecodeError:
            raise
        except Exception as e:  # numcodecs raises RuntimeError, ValueError ... on bad input
            raise ChunkDecodeError(key, self.names, f"{type(e).__name__}: {e}") from e
        if memoryview(got).nbytes != self.nbytes:
            raise ChunkDecodeError(key, self.names, f"decoded {memoryview(got).nbytes} bytes, "
                                   f"a chunk holds {self.nbytes}")
        return True

    def _decode(self, data: Any, key: str) -> np.ndarray:
        buf = memoryview(data).cast("B")
        if self.crc32c:
            buf = self._check_crc(buf, key)
        last = len(self.byte_codecs) - 1
        for i in range(last, -1, -1):
            codec = self.byte_codecs[i]
            final = i == 0 and not self.filters  # the last step: into this thread's scratch
            if codec.codec_id == "blosc":
                _check_blosc_frame(buf, key, self.names, self.nbytes if final else None)
            if final:
                buf = _decode_exact(codec, buf, _scratch(self.nbytes))
            else:
                buf = codec.decode(buf)
        for codec in reversed(self.filters):
            buf = codec.decode(buf)
        arr = buf if isinstance(buf, np.ndarray) else np.frombuffer(buf, dtype=np.uint8)
        arr = arr.reshape(-1).view(self.dtype)
        if arr.size != self.size:
            raise ChunkDecodeError(
                key, self.names, f"decoded {arr.size} values, a chunk holds {self.size}"
            )
        if self.order is None:
            return arr.reshape(self.shape)
        stored = tuple(self.shape[i] for i in self.order)
        return arr.reshape(stored).transpose(np.argsort(self.order))

    def encode(self, chunk: np.ndarray) -> bytes | memoryview:
        """The stored bytes of ``chunk`` (an array of the chunk shape, logical order): the
        chain applied forwards, the mirror of :meth:`decode`. (Bytes, or a memoryview of a
        new array: the values when the chain stores them as they are, or what the kernel's
        c-blosc made of them.)"""
        arr = self._stored(chunk)
        if self.filters or self.byte_codecs:
            buf: Any = self._input(arr)
        else:
            buf = arr if arr.flags.c_contiguous else _gathered(arr, np.empty_like(arr, order="C"))
            if buf is not arr and not self.crc32c:
                return memoryview(buf).cast("B")  # stored as it is, our own copy: no second
        if self.blosc_only:
            from ._kernel import encode_blosc  # (the kernel's module imports this one)

            done = encode_blosc(buf, self.byte_codecs[0])
            if done is not None:
                if self.crc32c:
                    return bytes(done) + _crc32c.crc32c(done).to_bytes(4, "little")
                return done
        for codec in self.filters:
            buf = codec.encode(buf)
        for codec in self.byte_codecs:  # blosc takes its typesize from the typed array
            buf = codec.encode(buf)
        out = bytes(memoryview(buf).cast("B")) if not isinstance(buf, bytes) else buf
        if self.crc32c:
            out += _crc32c.crc32c(out).to_bytes(4, "little")
        return out

    @property
    def blosc_only(self) -> bool:
        """The chain is one numcodecs Blosc (after the values' bytes): the kernel's
        c-blosc can encode it, into a buffer of the caller's (:meth:`encode_into`)."""
        return not self.filters and len(self.byte_codecs) == 1 and \
            isinstance(self.byte_codecs[0], numcodecs.blosc.Blosc)

    def batch_encodes(self, dtype: np.dtype) -> bool:
        """Whether the kernel's batch encoder (``encode_blosc_units``) takes values of
        ``dtype`` for this chain: one blosc codec, no checksum, no transpose, the values
        already in the stored dtype, and numeric (booleans, integers, floats)."""
        return self.blosc_only and not self.crc32c and self.order is None and \
            dtype == self.dtype and dtype.kind in "biuf"

    def encode_into(self, chunk: np.ndarray, out: np.ndarray) -> int | None:
        """:meth:`encode` into ``out`` (uint8, at least the chunk's bytes + 16): the number
        of bytes written, or None when this chain or this build cannot (``blosc_only``
        and no checksum, the kernel built); then call :meth:`encode`."""
        if not self.blosc_only or self.crc32c:
            return None
        from ._kernel import encode_blosc

        done = encode_blosc(self._input(self._stored(chunk)), self.byte_codecs[0], out)
        return None if done is None else done.nbytes

    def _stored(self, chunk: np.ndarray) -> np.ndarray:
        """``chunk`` in its stored byte order, transposed where the chain says."""
        arr = np.asarray(chunk).astype(self.dtype, copy=False)
        return arr if self.order is None else arr.transpose(self.order)

    @staticmethod
    def _input(arr: np.ndarray) -> np.ndarray:
        """The codecs' input: ``arr`` if C-contiguous, else staged in this thread's recycled
        buffer (the codecs copy what they keep; a fresh array per chunk costs a page fault
        per page)."""
        return arr if arr.flags.c_contiguous else _staged(arr)

    def _check_crc(self, buf: memoryview, key: str) -> memoryview:
        if len(buf) < 4:
            raise ChunkDecodeError(key, self.names, f"{len(buf)} bytes cannot hold a crc32c")
        want = int.from_bytes(buf[-4:], "little")
        got = _crc32c.crc32c(buf[:-4])
        if got != want:
            raise ChunkDecodeError(key, self.names, f"crc32c mismatch ({got:#x} != {want:#x})")
        return buf[:-4]


_local = threading.local()


def _scratch(nbytes: int) -> np.ndarray:
    """This thread's reusable decode buffer of ``nbytes`` bytes.

    The decoded chunk is copied into the caller's array right away, so one buffer per thread
    serves every chunk and decoding allocates nothing.
    """
    buf = getattr(_local, "buf", None)
    if buf is None or buf.nbytes != nbytes:
        buf = _local.buf = np.empty(nbytes, dtype=np.uint8)
    return buf


def _staged(arr: np.ndarray) -> np.ndarray:
    """``arr`` copied into this thread's reusable encode buffer (C order), valid until the
    thread's next call: for codecs, whose output never shares the input's memory."""
    buf = getattr(_local, "enc", None)
    if buf is None or buf.nbytes < arr.nbytes:
        buf = _local.enc = np.empty(arr.nbytes, dtype=np.uint8)
    return _gathered(arr, buf[:arr.nbytes].view(arr.dtype).reshape(arr.shape))


def _gathered(arr: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``arr`` copied into ``out`` (C-contiguous, its shape and dtype) by the kernel's
    gather (2-3x numpy's strided copy), or numpy where the kernel is not built."""
    from ._kernel import gather  # (the kernel's module imports this one)

    if not gather(arr, out):
        out[...] = arr
    return out


# numcodecs decoders that, given ``out``, fill all of it or raise: blosc once its header
# says ``out``'s size (_check_blosc_frame), zlib (a copy with a shape check). zstd and gzip
# decode a shorter stream into the start of a larger ``out`` without a word.
_FILL_OUT = {"blosc", "zlib"}


def _decode_exact(codec: Any, buf: Any, out: np.ndarray) -> Any:
    """``codec.decode(buf)`` into ``out`` (uint8); returns what was decoded (``out``, or the
    codec's own buffer when its size is not ``out``'s, for the caller to report)."""
    if codec.codec_id in _FILL_OUT:
        return codec.decode(buf, out=out)
    got = memoryview(codec.decode(buf)).cast("B")
    if got.nbytes == out.nbytes:
        out[...] = np.frombuffer(got, np.uint8)
        return out
    return got


def _check_blosc_frame(buf: Any, key: str, names: str, nbytes: int | None = None) -> None:
    """Refuse a blosc frame whose header disagrees with its length, or with ``nbytes``, the
    size it must decode to.

    numcodecs' blosc decoder trusts the header's compressed size and reads that many bytes:
    a truncated chunk would make it read past the end of the buffer (in recycled buffers,
    possibly a stale copy of the same chunk, which then "decodes" without error). Given a
    larger ``out``, it fills the header's size of it and leaves the rest as it was.
    """
    view = memoryview(buf).cast("B")
    if len(view) < 16:
        raise ChunkDecodeError(key, names, f"{len(view)} bytes cannot hold a blosc header")
    cbytes = int.from_bytes(view[12:16], "little")
    if cbytes != len(view):
        raise ChunkDecodeError(
            key, names, f"blosc frame of {cbytes} bytes but {len(view)} stored (truncated?)"
        )
    size = int.from_bytes(view[4:8], "little")
    if nbytes is not None and size != nbytes:
        raise ChunkDecodeError(key, names, f"blosc frame of {size} values' bytes, a chunk "
                               f"holds {nbytes}")


def v3_chain(codecs: list[dict], shape: tuple[int, ...], data_type: Any) -> ChunkCodec:
    """The :class:`ChunkCodec` of a v3 codec list (without sharding)."""
    order, byte_codecs, crc, endian = None, [], False, None
    names = [c["name"] for c in codecs]
    serialized = False  # past the array -> bytes codec
    array_filters = False  # numcodecs array -> array codecs, undone on the flat values
    for c in codecs:
        name, conf = c["name"], c.get("configuration", {}) or {}
        if name == "transpose":
            if array_filters:  # they would have to be undone after the transpose
                raise UnsupportedCodecError("a numcodecs filter before transpose", name)
            order = tuple(int(i) for i in conf["order"])
        elif name == "bytes":
            endian, serialized = conf.get("endian"), True
        elif name == "crc32c":
            crc = True
        elif crc:  # checked first when decoding, so it must be the last codec
            raise UnsupportedCodecError(f"codec {name!r} after crc32c", name)
        elif name in _V3_BYTES_CODECS:
            byte_codecs.append(_numcodecs_v3(name, conf))
        elif name.startswith("numcodecs."):
            array_filters = array_filters or not serialized
            byte_codecs.append(_numcodecs_v3(name[len("numcodecs.") :], conf))
        else:
            raise UnsupportedCodecError(f"codec {name!r}", name)
    if array_filters and endian == "big":  # they see native values, we would give big-endian
        raise UnsupportedCodecError("a numcodecs filter with big-endian bytes", "bytes")
    dtype = numeric_dtype(data_type)
    if dtype.itemsize > 1 and endian is not None:
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    # crc32c comes after the compressors when encoding, so it is checked first when decoding
    return ChunkCodec(shape, dtype, order, tuple(byte_codecs), (), crc, " -> ".join(names))


def numeric_dtype(spec: Any) -> np.dtype:
    """The numpy dtype of a zarr data type; only bool and numbers are decoded here."""
    try:
        dtype = np.dtype(spec)
    except (TypeError, ValueError) as e:  # names numpy does not know, data type objects
        raise UnsupportedCodecError(f"data type {spec!r}", str(spec)) from e
    if dtype.kind not in "biufc":
        raise UnsupportedCodecError(f"data type {dtype}", str(dtype))
    return dtype


def _numcodecs_v3(name: str, conf: dict) -> Any:
    conf = dict(conf)
    if name == "blosc":  # v3 spells shuffle as a word; decoding reads the blosc header anyway
        conf.pop("typesize", None)
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
        conf["shuffle"] = shuffle.get(conf.get("shuffle", "noshuffle"), 0)
    if name == "zstd":
        conf.pop("checksum", None)
    try:
        return numcodecs.get_codec({"id": name, **conf})
    except Exception as e:
        raise UnsupportedCodecError(f"codec {name!r} ({e})", name) from e


def v2_chain(meta: dict, shape: tuple[int, ...]) -> ChunkCodec:
    """The :class:`ChunkCodec` of v2 metadata (``.zarray`` fields)."""
    dtype = numeric_dtype(meta["dtype"])
    filters = tuple(_v2_codec(f) for f in meta.get("filters") or ())
    comp = meta.get("compressor")
    byte_codecs = (_v2_codec(comp),) if comp else ()
    order = tuple(reversed(range(len(shape)))) if meta.get("order", "C") == "F" else None
    names = [f["id"] for f in meta.get("filters") or ()] + ([comp["id"]] if comp else [])
    return ChunkCodec(shape, dtype, order, byte_codecs, filters, False, " -> ".join(names) or "none")


def _v2_codec(conf: dict) -> Any:
    conf = dict(conf)
    try:
        return numcodecs.get_codec(conf)
    except Exception as e:
        raise UnsupportedCodecError(f"codec {conf.get('id')!r} ({e})", conf.get("id")) from e
