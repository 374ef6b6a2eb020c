"""Zarr arrays of every layout dask-lsio handles, made with zarr-python (the oracle)."""

from __future__ import annotations

import numpy as np
import zarr
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float16", "float32", "float64", "complex64", "complex128"]


@st.composite
def arrays(draw):
    """A zarr-python array spec: shape, chunks, shards, dtype, codecs, fill, format."""
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0, 13), min_size=ndim, max_size=ndim)))
    chunks = tuple(max(1, draw(st.integers(1, max(1, n)))) for n in shape)
    fmt = draw(st.sampled_from([2, 3]))
    dtype = draw(st.sampled_from(DTYPES))
    spec = {"shape": shape, "chunks": chunks, "dtype": dtype, "zarr_format": fmt}
    if fmt == 2:
        if dtype not in ("bool", "int8", "uint8") and draw(st.booleans()):
            spec["dtype"] = np.dtype(dtype).newbyteorder(">").str
        spec["order"] = draw(st.sampled_from(["C", "F"]))
        spec["compressors"] = draw(st.sampled_from([None, "blosc", "zstd", "zlib"]))
        spec["chunk_key_encoding"] = {"name": "v2", "separator": draw(st.sampled_from([".", "/"]))}
    else:
        spec["compressors"] = draw(st.sampled_from([None, "blosc", "zstd", "gzip", "crc32c"]))
        spec["endian"] = draw(st.sampled_from(["little", "big"]))
        spec["transpose"] = ndim > 1 and draw(st.booleans())
        spec["chunk_key_encoding"] = draw(st.sampled_from(
            [{"name": "default", "separator": "/"}, {"name": "default", "separator": "."},
             {"name": "v2", "separator": "."}]))
        if ndim and draw(st.booleans()):
            spec["shards"] = tuple(c * draw(st.integers(1, 3)) for c in chunks)
            spec["index_location"] = draw(st.sampled_from(["start", "end"]))
    spec["fill"] = draw(st.sampled_from([0, 1, None]))
    spec["missing"] = draw(st.floats(0, 1))
    return spec


def make_array(path: str, spec: dict, seed: int = 0) -> np.ndarray:
    """Create the array with zarr-python; some chunks stay unwritten (fill_value)."""
    dtype = np.dtype(spec["dtype"])
    kwargs = dict(shape=spec["shape"], chunks=spec["chunks"], dtype=dtype,
                  zarr_format=spec["zarr_format"], chunk_key_encoding=spec["chunk_key_encoding"])
    fill = spec["fill"]
    kwargs["fill_value"] = None if fill is None else np.array(fill).astype(dtype)[()]
    comp = spec["compressors"]
    if spec["zarr_format"] == 2:
        import numcodecs

        kwargs["order"] = spec["order"]
        kwargs["compressors"] = {None: None, "blosc": numcodecs.Blosc(), "zstd": numcodecs.Zstd(),
                                 "zlib": numcodecs.Zlib()}[comp]
    else:
        kwargs["compressors"] = {None: None, "blosc": BloscCodec(cname="lz4", typesize=dtype.itemsize),
                                 "zstd": ZstdCodec(), "gzip": GzipCodec(),
                                 "crc32c": Crc32cCodec()}[comp]
        kwargs["serializer"] = BytesCodec(endian=spec["endian"] if dtype.itemsize > 1 else None)
        if spec["transpose"]:
            kwargs["filters"] = [TransposeCodec(order=tuple(reversed(range(len(spec["shape"])))))]
        if "shards" in spec:
            kwargs["shards"] = {"shape": spec["shards"], "index_location": spec["index_location"]}
    z = zarr.create_array(path, **kwargs)
    rng = np.random.default_rng(seed)
    data = (rng.random(spec["shape"]) * 100).astype(dtype)
    keep = rng.random(spec["shape"]) >= spec["missing"]  # the rest stays fill_value
    if z.size:
        current = z[...]
        z[...] = np.where(keep, data, current)
    return np.asarray(z[...], dtype=z.dtype)  # 0-d reads are native-order scalars
