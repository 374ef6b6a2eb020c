"""LSIOCodecPipeline against zarr-python's own pipeline: every read and write the same."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec
from zarr_cases import arrays, make_array

import dask_lsio  # noqa: F401  (registers the pipeline)
from dask_lsio.io import get_engine

LSIO = {"codec_pipeline.path": "dask_lsio.zarr.LSIOCodecPipeline"}


def selections(shape, rng):
    """Basic, orthogonal, coordinate (vindex), block and mask selections for ``shape``."""
    out = [("basic", ()), ("basic", Ellipsis)]
    for _ in range(4):
        sel = []
        for n in shape:
            kind = rng.integers(0, 4) if n else 0
            if kind == 0:
                sel.append(slice(None))
            elif kind == 1:
                sel.append(int(rng.integers(-n, n)))
            elif kind == 2:
                a, b = sorted(rng.integers(0, n + 1, 2))
                sel.append(slice(int(a), int(b)))
            else:
                sel.append(slice(int(rng.integers(0, n)), None, int(rng.integers(1, 4))))
        out.append(("basic", tuple(sel)))
    if shape and all(shape):
        out.append(("oindex", tuple(np.sort(rng.choice(n, min(n, 3), replace=False))
                                    for n in shape)))
        out.append(("vindex", tuple(rng.integers(0, n, 4) for n in shape)))
        out.append(("vindex", rng.random(shape) > 0.5))
        out.append(("blocks", tuple(slice(0, 1) for _ in shape)))
    return out


def take(z, kind, sel):
    return {"basic": lambda: z[sel], "oindex": lambda: z.oindex[sel],
            "vindex": lambda: z.vindex[sel], "blocks": lambda: z.blocks[sel]}[kind]()


@settings(max_examples=int(os.environ.get("LSIO_HYPOTHESIS_EXAMPLES", 60)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(spec=arrays(), seed=st.integers(0, 2**16))
def test_reads_match_the_default_pipeline(spec, seed):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "a")
        make_array(path, spec, seed)
        plain = zarr.open_array(path, mode="r")
        with zarr.config.set(LSIO):
            ours = zarr.open_array(path, mode="r")
            assert type(ours._async_array.codec_pipeline).__name__ == "LSIOCodecPipeline"
            for kind, sel in selections(plain.shape, np.random.default_rng(seed)):
                expected = take(plain, kind, sel)
                got = take(ours, kind, sel)
                np.testing.assert_array_equal(got, expected, err_msg=f"{kind} {sel}")
                assert np.asarray(got).dtype == np.asarray(expected).dtype


def test_reads_and_writes_take_one_engine_batch(tmp_path):
    values = np.random.default_rng(0).random((8, 256, 256)).astype("float32")
    z = zarr.create_array(tmp_path / "a", shape=values.shape, chunks=(1, 64, 64),
                          dtype="float32", compressors=BloscCodec(cname="lz4"))
    z[...] = values
    engine = get_engine()
    with zarr.config.set(LSIO):
        ours = zarr.open_array(tmp_path / "a")
        before = engine.stats["batches"]
        np.testing.assert_array_equal(ours[...], values)
        assert engine.stats["batches"] == before + 1  # 128 chunk objects, one batch
        written = engine.totals.snapshot().get(("lsio-write", "objects"), 0)
        ours[...] = values * 2  # 128 chunk objects encoded and written in one engine batch
        values *= 2
        assert engine.totals.snapshot()[("lsio-write", "objects")] == written + 128
        ours[2:5, 10:100, 7] = -1  # partial chunks: read, merged, rewritten whole
        values[2:5, 10:100, 7] = -1
        np.testing.assert_array_equal(ours[...], values)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a")[...], values)


def test_other_stores_and_strict(tmp_path):
    with zarr.config.set(LSIO):
        mem = zarr.create_array(zarr.storage.MemoryStore(), shape=(10,), chunks=(3,),
                                dtype="int16")
        mem[...] = np.arange(10)
        np.testing.assert_array_equal(mem[...], np.arange(10))  # delegated
        strings = zarr.create_array(tmp_path / "s", shape=(3,), chunks=(2,), dtype=str)
        strings[...] = np.array(["a", "bb", "c"])
        assert list(strings[...]) == ["a", "bb", "c"]
    import dask

    with zarr.config.set(LSIO), dask.config.set({"lsio.strict": True}):
        with pytest.raises(dask_lsio.errors.LSIOError, match="vlen-utf8.*strict"):
            zarr.open_array(tmp_path / "s")


def writes(shape, rng, n=4):
    """Basic-selection writes: arrays of the selection's shape, or scalars."""
    out = []
    for sel in [s for k, s in selections(shape, rng) if k == "basic"][:n]:
        out.append((sel, bool(rng.integers(0, 2))))
    return out


@settings(max_examples=int(os.environ.get("LSIO_HYPOTHESIS_EXAMPLES", 60)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(spec=arrays(), seed=st.integers(0, 2**16))
def test_writes_match_the_default_pipeline(spec, seed):
    with tempfile.TemporaryDirectory() as d:
        theirs_path, ours_path = os.path.join(d, "theirs"), os.path.join(d, "ours")
        make_array(theirs_path, spec, seed)
        make_array(ours_path, spec, seed)
        theirs = zarr.open_array(theirs_path)
        rng = np.random.default_rng(seed)
        with zarr.config.set(LSIO):
            ours = zarr.open_array(ours_path)
            for sel, scalar in writes(theirs.shape, rng):
                target = np.asarray(theirs[sel])
                value = (np.asarray(rng.random(target.shape) * 50).astype(theirs.dtype)
                         if not scalar else np.asarray(7).astype(theirs.dtype)[()])
                theirs[sel] = value
                ours[sel] = value
                np.testing.assert_array_equal(ours[...], theirs[...], err_msg=str(sel))
        np.testing.assert_array_equal(zarr.open_array(ours_path)[...], theirs[...])


def test_read_only_equality_and_odd_dtypes(tmp_path):
    """Found by zarr-python's own suite: writes to a read-only array must raise as zarr's do,
    arrays opened twice compare equal, and a structured dtype is delegated, not an error."""
    zarr.create_array(tmp_path / "a", shape=(4,), chunks=(2,), dtype="int8")[...] = 1
    with zarr.config.set(LSIO):
        ro = zarr.open_array(tmp_path / "a", mode="r")
        with pytest.raises(ValueError, match="read-only|read only"):
            ro[...] = 2
        assert zarr.open_array(tmp_path / "a") == zarr.open_array(tmp_path / "a")
        rec = zarr.create_array(tmp_path / "r", shape=(2,), chunks=(1,),
                                dtype=[("x", "i4"), ("y", "f8")])
        rec[...] = np.array([(1, 2.0), (3, 4.0)], dtype=[("x", "i4"), ("y", "f8")])
        assert rec[1]["y"] == 4.0
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a")[...], 1)


@pytest.mark.parametrize("fmt, sep, shards", [(3, "/", None), (3, ".", None), (2, ".", None),
                                              (2, "/", None), (3, "/", (1, 8, 8))])
def test_whole_chunk_bounds_equal_the_per_chunk_parse(tmp_path, monkeypatch, fmt, sep, shards):
    """Batches of whole chunks are planned from their keys in bulk: the same bounds as the
    chunk-by-chunk parse, also for an array path holding the key separator."""
    from dask_lsio.pipeline import codec_pipeline as pipeline

    encoding = {"name": "default" if fmt == 3 else "v2", "separator": sep}
    group = zarr.open_group(tmp_path / "g", mode="w", zarr_format=fmt)
    z = group.create_array("x.y", shape=(3, 10, 9), chunks=(1, 4, 4), shards=shards,
                           dtype="int32", chunk_key_encoding=encoding)
    z[...] = np.arange(270, dtype="int32").reshape(3, 10, 9)
    bulk = []

    def checked(spec, paths, batch):
        got = real(spec, paths, batch)
        if got is not None:
            want = pipeline._chunk_spans(spec, paths, batch)
            assert got[0] == want[0] == "x.y"
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[2], want[2])
        bulk.append(got is not None)
        return got

    real = pipeline._whole_chunks
    monkeypatch.setattr(pipeline, "_whole_chunks", checked)
    with zarr.config.set(LSIO):
        ours = zarr.open_group(tmp_path / "g")["x.y"]
        for sel in [Ellipsis, 1, (slice(None), slice(4, 8), slice(0, 9)), (slice(None), slice(1, 8))]:
            np.testing.assert_array_equal(ours[sel], z[sel], err_msg=str(sel))
    # whole chunks (an integer on a one-long chunk axis counts) in bulk; partial ones not
    # (rows 4:8 are whole chunks but half a shard)
    assert bulk == [True, True, shards is None, False]
