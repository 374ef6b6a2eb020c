"""Corrupted Zarr arrays for tests/test_fuzz.py: small arrays of the layouts and codecs the
C kernel decodes, written by zarr-python, then one chunk or shard file damaged.

Everything is drawn from ``numpy.random.default_rng(seed)``: case ``seed`` is the same array
and the same damage on every run and machine (reproduce one with ``LSIO_FUZZ_SEEDS``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import crc32c
import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ShardingCodec, ZstdCodec

DTYPES = ["bool", "uint8", "int16", "int32", "float32", "float64", "complex64"]
# (zstd and blosc weigh most: their undetected damage is where library versions differ)
CODECS = ["none", "blosc", "blosc", "blosc", "zstd", "zstd", "zstd", "gzip", "zlib"]
SHUFFLES = ["noshuffle", "shuffle", "bitshuffle"]
KINDS = ["bitflip", "zero", "truncate", "extend", "random", "index"]
EMPTY = 2**64 - 1


@dataclass
class Case:
    """One array and the damage done to one of its files.

    ``key`` is the damaged file's key (what an error about it must name); ``damage`` says
    what was done, for failure messages."""

    seed: int
    fmt: int
    layout: str  # chunks | shard-start | shard-end
    index_crc: bool
    codec: str  # e.g. "blosc-zstd-bitshuffle-bs256", "zstd-l1", "zstd-ck", "gzip"
    dtype: str
    shape: tuple
    chunks: tuple  # the stored grid (shards when sharded)
    inner: tuple | None
    kind: str
    key: str = ""
    damage: str = ""
    extra: dict = field(default_factory=dict)

    def __str__(self) -> str:
        shard = f" inner={self.inner} crc={self.index_crc}" if self.inner else ""
        return (f"seed={self.seed} v{self.fmt} {self.layout} {self.codec} {self.dtype} "
                f"shape={self.shape} grid={self.chunks}{shard} {self.kind} {self.key}: "
                f"{self.damage}")


def draw(seed: int) -> Case:
    """The parameters of case ``seed`` (nothing written yet)."""
    rng = np.random.default_rng([seed, 0])
    fmt = int(rng.choice([2, 3, 3]))
    layout = "chunks" if fmt == 2 else str(rng.choice(["chunks", "shard-start", "shard-end"]))
    codec = str(rng.choice(CODECS))
    if codec == "blosc":
        cname = str(rng.choice(["lz4", "zstd", "zstd", "blosclz", "zlib"]))
        codec = f"blosc-{cname}-{rng.choice(SHUFFLES)}-bs{rng.choice([0, 0, 64, 256, 1024])}"
    elif codec == "zstd":  # (a checksum catches nearly all damage: fewer of those)
        codec = str(rng.choice(["zstd-l1", "zstd-l1", "zstd-l5", "zstd-ck"]))
    elif codec == "zlib" and fmt == 3:  # v3 has no zlib codec
        codec = "gzip"
    dtype = str(rng.choice(DTYPES))
    ndim = int(rng.choice([1, 2, 2, 3]))
    # chunks of a few KiB mostly: zstd versions disagree on undetected damage far more often
    # in frames holding Huffman-coded literals; the array stays under ~100,000 values
    target = float(rng.choice([8, 200, 2000, 6000, 6000, 12000]))
    inner = tuple(max(1, int(round(target ** (1 / ndim) * rng.uniform(0.5, 1.5))))
                  for _ in range(ndim))
    sharded = layout != "chunks"
    per = [int(rng.integers(1, 4)) if sharded else 1 for _ in inner]  # chunks per shard
    while np.prod(inner) * np.prod(per) > 60_000 and max(per) > 1:
        per[int(np.argmax(per))] -= 1
    grid = tuple(c * k for c, k in zip(inner, per))
    counts = [int(rng.integers(1, 3)) for _ in grid]
    while np.prod(grid) * np.prod(counts) > 100_000 and max(counts) > 1:
        counts[int(np.argmax(counts))] -= 1
    shape = tuple(max(1, g * c - int(rng.integers(0, g))) for g, c in zip(grid, counts))
    kinds = KINDS if sharded else KINDS[:-1]
    # bit flips weigh 2 (what codecs' checks miss most), index damage too where there is one
    kind = str(rng.choice(kinds + ["bitflip"] + (["index"] if sharded else [])))
    return Case(seed, fmt, layout, bool(rng.integers(2)) and sharded, codec, dtype, shape,
                grid, inner if sharded else None, kind)


def values(case: Case) -> np.ndarray:
    """Compressible values with repeats (so that codecs emit back-references)."""
    rng = np.random.default_rng([case.seed, 1])
    n = int(np.prod(case.shape))
    period = int(rng.integers(1, 40))
    v = np.resize(rng.integers(0, 60, period), n)
    noise = rng.random(n) < 0.1
    v[noise] = rng.integers(0, 1000, int(noise.sum()))
    dtype = np.dtype(case.dtype)
    if dtype.kind == "b":
        return (v % 3 == 0).reshape(case.shape)
    if dtype.kind in "fc":
        return (v / 4).astype(dtype).reshape(case.shape)
    return v.astype(dtype).reshape(case.shape)


def _compressor(case: Case, itemsize: int):
    """The codec (v3 object or v2 numcodecs config) of ``case.codec``."""
    parts = case.codec.split("-")
    if parts[0] == "blosc":
        _, cname, shuffle, bs = parts
        if case.fmt == 2:
            return numcodecs.Blosc(cname=cname, clevel=5, shuffle=SHUFFLES.index(shuffle),
                                   blocksize=int(bs[2:]))
        return BloscCodec(cname=cname, clevel=5, shuffle=shuffle, typesize=itemsize,
                          blocksize=int(bs[2:]))
    if parts[0] == "zstd":
        level, checksum = (3, True) if parts[1] == "ck" else (int(parts[1][1:]), False)
        if case.fmt == 2:
            return numcodecs.Zstd(level=level, checksum=checksum)
        return ZstdCodec(level=level, checksum=checksum)
    if parts[0] == "gzip":
        return numcodecs.GZip(level=5) if case.fmt == 2 else GzipCodec(level=5)
    if parts[0] == "zlib":
        return numcodecs.Zlib(level=5)
    return None


def write(path: str, case: Case) -> np.ndarray:
    """Create the array at ``path`` with zarr-python; some chunks stay unwritten. Returns
    the values stored (before any damage)."""
    dtype = np.dtype(case.dtype)
    fill = np.array(1).astype(dtype)[()]
    comp = _compressor(case, dtype.itemsize)
    if case.fmt == 2:
        z = zarr.create_array(path, shape=case.shape, chunks=case.chunks, dtype=dtype,
                              zarr_format=2, fill_value=fill, compressors=comp)
    elif case.inner is None:
        z = zarr.create_array(path, shape=case.shape, chunks=case.chunks, dtype=dtype,
                              fill_value=fill, compressors=comp)
    else:
        index = [BytesCodec(), Crc32cCodec()] if case.index_crc else [BytesCodec()]
        inner = [BytesCodec()] + ([comp] if comp is not None else [])
        z = zarr.create_array(path, shape=case.shape, chunks=case.chunks, dtype=dtype,
                              fill_value=fill, compressors=None, serializer=ShardingCodec(
                                  chunk_shape=case.inner, codecs=inner, index_codecs=index,
                                  index_location=case.layout.split("-")[1]))
    data = values(case)
    rng = np.random.default_rng([case.seed, 2])
    cell = np.array(case.inner or case.chunks)
    holes = np.nonzero(rng.random(tuple(-(-np.array(case.shape) // cell))) < 0.2)
    for pos in zip(*holes):  # cells left at fill_value: absent chunks
        data[tuple(slice(p * c, (p + 1) * c) for p, c in zip(pos, cell))] = fill
    z[...] = data
    return data


def _index_at(case: Case, size: int) -> tuple[int, int]:
    """Where a shard's index lies in a file of ``size`` bytes: (start, bytes)."""
    n = 16 * int(np.prod([g // i for g, i in zip(case.chunks, case.inner)]))
    n += 4 if case.index_crc else 0
    return (0 if case.layout == "shard-start" else size - n), n


def corrupt(root: str, case: Case) -> None:
    """Damage one stored file of the array at ``root`` as ``case.kind`` says; sets
    ``case.key`` and ``case.damage``. A case whose array stored nothing is left intact."""
    rng = np.random.default_rng([case.seed, 3])
    files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root)
                   for f in fs if f not in ("zarr.json", ".zarray", ".zattrs", ".zgroup"))
    if not files:
        case.damage = "nothing stored: intact"
        return
    case.key = str(rng.choice(files))
    path = os.path.join(root, case.key)
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    lo, hi = 0, len(raw)
    if case.inner is not None and case.kind != "index" and rng.random() < 0.8:
        lo, hi = _inner_range(case, raw, rng) or (lo, hi)  # mostly inside one inner chunk
    if case.kind == "index":
        raw = _damage_index(case, raw, rng)
    else:
        raw = _damage(case, raw, lo, hi, rng)
    with open(path, "wb") as f:
        f.write(bytes(raw))


def _inner_range(case: Case, raw: bytearray, rng) -> tuple[int, int] | None:
    """The byte range of a random inner chunk of a shard (None: none stored)."""
    at, n = _index_at(case, len(raw))
    entries = np.frombuffer(bytes(raw[at:at + n - (4 if case.index_crc else 0)]), "<u8")
    entries = entries.reshape(-1, 2)
    stored = entries[entries[:, 0] != np.uint64(EMPTY)]
    if not len(stored):
        return None
    off, nb = (int(x) for x in stored[rng.integers(len(stored))])
    return (off, off + nb) if nb and off + nb <= len(raw) else None


def _damage(case: Case, raw: bytearray, lo: int, hi: int, rng) -> bytearray:
    """Bit flips, a zeroed or random range, truncation or extension within [lo, hi)."""
    span = max(1, hi - lo)
    if case.kind == "bitflip":
        bits = rng.integers(0, 8 * span, int(rng.integers(1, 5)))
        for b in bits.tolist():
            if lo + b // 8 < len(raw):
                raw[lo + b // 8] ^= 1 << (b % 8)
        case.damage = f"bits {bits.tolist()} from byte {lo} flipped"
    elif case.kind in ("zero", "random"):
        a = lo + int(rng.integers(0, span))
        n = int(rng.integers(1, min(64, span) + 1))
        repl = bytes(n) if case.kind == "zero" else rng.bytes(n)
        raw[a:a + n] = repl[: len(raw[a:a + n])]
        case.damage = f"bytes {a}-{a + n} {'zeroed' if case.kind == 'zero' else 'random'}"
    elif case.kind == "truncate":
        cut = lo + int(rng.integers(0, span))
        case.damage = f"truncated to {cut} of {len(raw)} bytes"
        del raw[cut:]
    else:  # extend
        n = int(rng.choice([1, 7, 100, 5000]))
        raw += bytes(n) if rng.random() < 0.5 else rng.bytes(n)
        case.damage = f"{n} bytes appended to {len(raw) - n}"
    return raw


def _damage_index(case: Case, raw: bytearray, rng) -> bytearray:
    """Set one shard index entry to something absurd (crc32c recomputed, mostly, so that
    the entry is what a reader sees)."""
    at, n = _index_at(case, len(raw))
    body = n - (4 if case.index_crc else 0)
    entries = np.frombuffer(bytes(raw[at:at + body]), "<u8").reshape(-1, 2).copy()
    stored = np.flatnonzero(entries[:, 0] != np.uint64(EMPTY))
    e = int(rng.choice(stored)) if len(stored) and rng.random() < 0.9 else int(
        rng.integers(len(entries)))
    off, nb = (int(x) for x in entries[e])
    off = 0 if off == EMPTY else off
    nb = 8 if nb == EMPTY else nb
    size = len(raw)
    how = str(rng.choice(["offset>=2^63", "nbytes>=2^63", "sum-overflows", "past-end",
                          "nbytes-past-end", "huge-nbytes", "half-empty-offset",
                          "half-empty-nbytes", "zero-nbytes", "into-index", "shifted",
                          "other-entry"]))
    new = {
        "offset>=2^63": (2**63 + int(rng.integers(0, 1000)), nb),
        "nbytes>=2^63": (off, 2**63 + int(rng.integers(0, 1000))),
        "sum-overflows": (2**64 - 2 - int(rng.integers(0, 10)), max(nb, 16)),
        "past-end": (size + int(rng.integers(0, 100)), nb),
        "nbytes-past-end": (off, size - off + int(rng.integers(1, 100))),
        "huge-nbytes": (off, int(rng.choice([2**31 + 5, 2**40, 2**62]))),
        "half-empty-offset": (EMPTY, nb),
        "half-empty-nbytes": (off, EMPTY),
        "zero-nbytes": (off, 0),
        "into-index": (at, min(nb, n)),
        "shifted": (max(0, off + int(rng.choice([-1, 1]))), nb),
        "other-entry": tuple(int(x) for x in entries[int(rng.integers(len(entries)))]),
    }[how]
    entries[e] = np.array(new, dtype=np.uint64)
    raw[at:at + body] = entries.astype("<u8").tobytes()
    fixed = case.index_crc and rng.random() < 0.8
    if fixed:
        raw[at + body:at + n] = crc32c.crc32c(bytes(raw[at:at + body])).to_bytes(4, "little")
    case.damage = (f"index entry {e} ({off}, {nb}) -> {new} [{how}]"
                   + (" crc32c recomputed" if fixed else ""))
    return raw
