"""Shared helpers of the rechunk tests (tests/test_rechunk.py, tests/test_rechunk_stores.py):
source arrays made by zarr-python (the oracle), with chunks left unwritten, and the checks of
what ``dask_lsio.rechunk`` wrote, read back by zarr-python."""

from __future__ import annotations

import math
import os
import re

import numcodecs
import numpy as np
import pytest
import zarr
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec


DTYPES = ["int16", "uint8", "float32", "float64"]
SMALLEST = re.compile(r"the smallest that works is [^()]*\((\d+) bytes\)")
CHUNK_KEY = re.compile(r"(^|/)c(/\d+)+$")  # the default chunk key encoding of zarr v3


def compressor(name: str | None, zarr_format: int, dtype) -> object:
    """The zarr-python compressor of ``name`` for an array of ``zarr_format``."""
    if name is None:
        return None
    if zarr_format == 2:
        return {"blosc": numcodecs.Blosc(cname="lz4"), "zstd": numcodecs.Zstd(),
                "gzip": numcodecs.GZip()}[name]
    return {"blosc": BloscCodec(cname="lz4", typesize=np.dtype(dtype).itemsize),
            "zstd": ZstdCodec(), "gzip": GzipCodec()}[name]


def compressor_names(z: zarr.Array) -> list[str]:
    """An array's compressors as names: "zstd", "gzip", "blosc-lz4", "blosc-zstd" ...
    (v2 numcodecs and v3 codecs alike)."""
    out = []
    for c in z.compressors:
        kind = type(c).__name__.lower().removesuffix("codec")
        if kind == "blosc":
            cname = getattr(c, "cname", None)
            kind = f"blosc-{getattr(cname, 'value', cname)}"
        out.append({"zlib": "gzip"}.get(kind, kind))
    return out


# what a compressor name given to rechunk() must give
NAMED = {"zstd": ["zstd"], "lz4": ["blosc-lz4"], "blosc-zstd": ["blosc-zstd"],
         "gzip": ["gzip"], "none": []}


@st.composite
def sources(draw) -> dict:
    """A source array spec: 1 to 4 dims, edges cutting chunks, v2 or v3 (sharded or not),
    codecs, dtypes, fill values (NaN for floats), a fraction of write units left unwritten."""
    ndim = draw(st.integers(1, 4))
    top = {1: 40, 2: 14, 3: 8, 4: 6}[ndim]
    shape = tuple(draw(st.integers(1, top)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    fmt = draw(st.sampled_from([2, 3]))
    dtype = draw(st.sampled_from(DTYPES))
    fills = [0, 3] + (["nan"] if dtype.startswith("float") else [])
    spec = dict(shape=shape, chunks=chunks, zarr_format=fmt, dtype=dtype,
                fill=draw(st.sampled_from(fills)),
                compressor=draw(st.sampled_from(["blosc", "zstd", "gzip", None])),
                missing=draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])), shards=None,
                dims=None)
    if fmt == 3 and draw(st.booleans()):
        spec["shards"] = tuple(c * draw(st.integers(1, 3)) for c in chunks)
    if draw(st.booleans()):
        spec["dims"] = tuple(f"d{i}" for i in range(ndim))
    return spec


def make_source(where, spec: dict, seed: int = 0, attributes: dict | None = None):
    """The array of ``spec`` at ``where`` (a path or zarr store), written by zarr-python one
    write unit (shard or chunk) at a time, skipping a fraction ``spec["missing"]`` of them
    (never written: fill_value). Returns the array and zarr-python's reading of it."""
    dtype = np.dtype(spec["dtype"])
    fill = float("nan") if spec["fill"] == "nan" else spec["fill"]
    attributes = {"title": "a rechunk source", "seed": seed, **(attributes or {})}
    kwargs = dict(shape=spec["shape"], chunks=spec["chunks"], dtype=dtype,
                  zarr_format=spec["zarr_format"], fill_value=np.array(fill).astype(dtype)[()],
                  compressors=compressor(spec["compressor"], spec["zarr_format"], dtype))
    if spec.get("shards"):
        kwargs["shards"] = spec["shards"]
    if spec.get("dims"):
        if spec["zarr_format"] == 3:
            kwargs["dimension_names"] = spec["dims"]
        else:
            attributes["_ARRAY_DIMENSIONS"] = list(spec["dims"])
    z = zarr.create_array(where, attributes=attributes, **kwargs)
    rng = np.random.default_rng(seed)
    unit = spec.get("shards") or spec["chunks"]
    for index in np.ndindex(*(math.ceil(n / u) for n, u in zip(z.shape, unit))):
        if rng.random() < spec["missing"]:
            continue
        box = tuple(slice(i * u, min((i + 1) * u, n)) for i, u, n in zip(index, unit, z.shape))
        shape = tuple(s.stop - s.start for s in box)
        values = (rng.random(shape) * 100).astype(dtype)
        if dtype.kind == "f" and rng.random() < 0.3:
            values.flat[rng.integers(0, values.size)] = np.nan  # NaNs that are data
        z[box] = values
    return z, z[...]


def smallest_max_mem(attempt) -> int:
    """``attempt(max_mem)`` calls rechunk; with max_mem=1 it must refuse with a ValueError
    saying the smallest max_mem that works: returns that, in bytes."""
    with pytest.raises(ValueError, match="max_mem") as info:
        attempt(1)
    found = SMALLEST.search(str(info.value))
    assert found, f"no 'the smallest that works is ... (N bytes)' in {str(info.value)!r}"
    return int(found.group(1))


def resolve_chunks(chunks, shape) -> tuple[int, ...]:
    """target_chunks as zarr stores them: -1 or None = the whole axis."""
    return tuple(n if c in (-1, None) else c for c, n in zip(chunks, shape))


def same_fill(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))


def attrs_and_dims(z: zarr.Array) -> tuple[dict, tuple | None]:
    """An array's attributes and dimension names, the same for v2 (xarray's
    ``_ARRAY_DIMENSIONS`` attribute) and v3 (``dimension_names``)."""
    attrs = dict(z.attrs)
    dims = attrs.pop("_ARRAY_DIMENSIONS", None)
    if z.metadata.zarr_format == 3:
        dims = z.metadata.dimension_names
    return attrs, None if dims is None else tuple(dims)


def check_target(got: zarr.Array, source: zarr.Array, expected: np.ndarray, chunks,
                 shards=None, zarr_format=None, compressors=None) -> None:
    """What rechunk wrote, read by zarr-python: values, the grid asked for, and everything
    else as the source's (dtype, fill_value, shape, attributes)."""
    assert got.shape == source.shape
    assert got.dtype == source.dtype
    assert same_fill(got.fill_value, source.fill_value), (got.fill_value, source.fill_value)
    assert got.metadata.zarr_format == (zarr_format or source.metadata.zarr_format)
    assert got.chunks == resolve_chunks(chunks, source.shape)
    assert got.shards == (None if shards is None else tuple(shards))
    assert attrs_and_dims(got) == attrs_and_dims(source)
    if compressors is not None:
        assert compressor_names(got) == NAMED[compressors], got.compressors
    elif zarr_format in (None, source.metadata.zarr_format):
        assert compressor_names(got) == compressor_names(source)
    np.testing.assert_array_equal(got[...], expected)


def chunk_objects(path) -> list[str]:
    """The chunk objects under ``path`` (keys "c/i/j..." of v3 arrays, relative to it; those
    of arrays inside: "name/c/i/j..."), no metadata and no temporary files."""
    path = os.fspath(path)
    out = []
    for d, _, files in os.walk(path):
        for f in files:
            key = os.path.relpath(os.path.join(d, f), path)
            if CHUNK_KEY.search(key):
                out.append(key)
    return sorted(out)


def files_and_stamps(path) -> dict[str, tuple[int, int]]:
    """Every file under ``path``: (inode, mtime_ns), to tell whether anything was rewritten."""
    out = {}
    for d, _, files in os.walk(os.fspath(path)):
        for f in files:
            st_ = os.stat(os.path.join(d, f))
            out[os.path.relpath(os.path.join(d, f), path)] = (st_.st_ino, st_.st_mtime_ns)
    return out
