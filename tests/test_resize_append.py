"""LSIOCodecPipeline after ``resize`` and ``append``: zarr-python updates the array's metadata
in place (its shape) and keeps the same codec pipeline object, so the pipeline must not act
on the shape it saw when the array was created or opened.

Every test runs one sequence of operations twice: on an array whose pipeline is zarr-python's
default (the oracle) and on one whose pipeline is ours, in two directories, comparing reads
through each array after every step, and at the end both arrays read back whole with the
default pipeline and with ours.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from zarr.codecs import ZstdCodec

import dask_lsio  # noqa: F401  (registers the pipeline)

LSIO = {"codec_pipeline.path": "dask_lsio.zarr.LSIOCodecPipeline"}
EXAMPLES = int(os.environ.get("LSIO_HYPOTHESIS_EXAMPLES", 40))


class Twins:
    """One array created twice: ``theirs`` with zarr-python's default pipeline, ``ours``
    with LSIOCodecPipeline; every operation is applied to both and their reads compared."""

    def __init__(self, directory, **create) -> None:
        self.paths = {"theirs": os.path.join(directory, "theirs"),
                      "ours": os.path.join(directory, "ours")}
        self.empty = bool(create.get("config", {}).get("write_empty_chunks", False))
        self.theirs = zarr.create_array(self.paths["theirs"], **create)
        with zarr.config.set(LSIO):
            self.ours = zarr.create_array(self.paths["ours"], **create)
        self.check_pipelines()
        self.log: list[str] = []

    def check_pipelines(self) -> None:
        assert type(self.theirs._async_array.codec_pipeline).__name__ == "BatchedCodecPipeline"
        assert type(self.ours._async_array.codec_pipeline).__name__ == "LSIOCodecPipeline"

    def both(self):
        return (self.theirs, self.ours)

    def write(self, selection, value) -> None:
        self.log.append(f"z[{selection}] = <{np.shape(value)}>")
        for z in self.both():
            z[selection] = value
        self.compare(f"after z[{selection}] = ...", edges=False)

    def resize(self, shape) -> None:
        self.log.append(f"resize({shape})")
        for z in self.both():
            z.resize(shape)
        self.compare(f"after resize{shape}")

    def reopen(self) -> None:
        """Open both again with their pipelines (as ``open_array(p, mode="r+")``), with the
        write_empty_chunks they were created with (a runtime setting, not stored)."""
        with zarr.config.set({"array.write_empty_chunks": self.empty}):
            self.theirs = zarr.open_array(self.paths["theirs"], mode="r+")
            with zarr.config.set(LSIO):
                self.ours = zarr.open_array(self.paths["ours"], mode="r+")
        assert self.ours._async_array.config.write_empty_chunks == self.empty
        self.check_pipelines()

    def append(self, data, axis: int) -> None:
        """``zarr.open_array(p, mode="r+").append(data, axis)``, the arrays kept after."""
        self.log.append(f"append(<{data.shape}>, axis={axis})")
        self.reopen()
        shapes = [z.append(data, axis=axis) for z in self.both()]
        assert shapes[0] == shapes[1]
        self.compare(f"after append along {axis}")

    def compare(self, when: str, edges: bool = True) -> None:
        """Whole reads (and with ``edges`` partial ones at the far edge) through each
        array's own pipeline are equal."""
        theirs, ours = self.both()
        assert ours.shape == theirs.shape
        msg = f"{when}; steps: {self.log}"
        expected = theirs[...]
        np.testing.assert_array_equal(ours[...], expected, err_msg=msg)
        if edges and theirs.size:  # a box reaching the far corner, and the last row
            edge = tuple(slice(max(0, n - 3), n) for n in theirs.shape)
            np.testing.assert_array_equal(ours[edge], expected[edge], err_msg=f"{edge} {msg}")
            np.testing.assert_array_equal(ours[-1], expected[-1], err_msg=f"[-1] {msg}")

    def final_check(self) -> None:
        """Both arrays read back whole, opened fresh, with either pipeline: all equal."""
        expected = zarr.open_array(self.paths["theirs"], mode="r")[...]
        reads = {"theirs, default": expected,
                 "ours, default": zarr.open_array(self.paths["ours"], mode="r")[...]}
        with zarr.config.set(LSIO):
            for name in ("theirs", "ours"):
                z = zarr.open_array(self.paths[name], mode="r")
                assert type(z._async_array.codec_pipeline).__name__ == "LSIOCodecPipeline"
                reads[f"{name}, lsio"] = z[...]
        for name, got in reads.items():
            np.testing.assert_array_equal(got, expected, err_msg=f"{name}; steps: {self.log}")


REPRO_LAYOUTS = [pytest.param(2, (1, 1, 1), None, id="v2-c1"),
                 pytest.param(2, (2, 2, 2), None, id="v2-c2"),
                 pytest.param(3, (1, 1, 1), None, id="v3-c1"),
                 pytest.param(3, (2, 2, 2), None, id="v3-c2"),
                 pytest.param(3, (1, 1, 1), (2, 2, 2), id="v3-c1-s2"),
                 pytest.param(3, (2, 2, 2), (4, 4, 4), id="v3-c2-s4")]
# (zarr_format, chunks, shards) of the longer tests (one-element chunks only in the repro:
# zarr-python's pipeline takes seconds over a few hundred of them, and no edge is inside one)
LAYOUTS = [pytest.param(2, (2, 2, 2), None, id="v2-c2"),
           pytest.param(3, (2, 2, 2), None, id="v3-c2"),
           pytest.param(3, (2, 2, 2), (4, 4, 4), id="v3-c2-s4")]


def values(shape, seed, offset=0):
    """Distinct nonzero values (never fill_value 0)."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))).reshape(shape) + 1 + offset).astype("int32")


def create(fmt, chunks, shards, shape):
    kwargs = dict(shape=shape, chunks=chunks, dtype="int32", fill_value=0, zarr_format=fmt,
                  compressors=ZstdCodec() if fmt == 3 else None)
    if shards is not None:
        kwargs["shards"] = shards
    return kwargs


@pytest.mark.parametrize("fmt, chunks, shards", REPRO_LAYOUTS)
def test_issue_repro_resize_then_write_the_new_rows(tmp_path, fmt, chunks, shards):
    """The tracker's repro: shape (1, 2, 2), written, resized to (2, 2, 2), rows 1:2 written."""
    twins = Twins(tmp_path, **create(fmt, chunks, shards, (1, 2, 2)))
    twins.write(Ellipsis, values((1, 2, 2), 0))
    twins.resize((2, 2, 2))
    twins.write(slice(1, 2), values((1, 2, 2), 1, offset=100))
    twins.final_check()


def _writes_after(twins: Twins, axis: int, seed: int) -> None:
    """Whole, partial and new-edge writes, each followed by reads (in ``Twins.write``)."""
    shape = twins.theirs.shape
    twins.write(Ellipsis, values(shape, seed, 1000))  # whole
    part = tuple(slice(1, min(n, 4)) for n in shape)  # partial chunks on every side
    twins.write(part, values(tuple(s.stop - s.start for s in part), seed + 1, 2000))
    n = shape[axis]
    edge = tuple(slice(n - 1, n) if a == axis else slice(None) for a in range(len(shape)))
    twins.write(edge, values(tuple(1 if a == axis else m for a, m in enumerate(shape)),
                             seed + 2, 3000))  # the last row along the resized axis
    last = tuple(m - 1 for m in shape)
    twins.write(last, np.int32(-5))  # one element, integer indices, at the far corner
    twins.write(tuple(slice(None) if a == axis else 0 for a in range(len(shape))),
                values((n,), seed + 3, 4000))  # a line along the axis, integers elsewhere
    # last, a scalar into a box that reaches the edge of every axis: it covers the part of
    # each edge chunk inside the array, and what lies beyond shows once the array grows
    twins.write(tuple(slice(m // 2, m) for m in shape), np.int32(-7))


@pytest.mark.parametrize("fmt, chunks, shards", LAYOUTS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_grow_and_shrink_then_write_and_read(tmp_path, fmt, chunks, shards, axis):
    """Along one axis: grow (+3), writes; shrink (3 -> 1, 4 -> 3, 5 -> 3: edge chunks and
    shards become partial, whole ones outside are deleted), writes; back to the first
    shape (what lies beyond the shrunk edge shows, as zarr-python keeps it), writes.
    Reads through both pipelines after every step."""
    shape = (3, 4, 5)
    twins = Twins(tmp_path, **create(fmt, chunks, shards, shape))
    twins.write(Ellipsis, values(shape, 0))
    along = lambda n: tuple(n if a == axis else m for a, m in enumerate(shape))  # noqa: E731
    small = 3 if shape[axis] > 3 else 1
    for k, new in enumerate([along(shape[axis] + 3), along(small), shape]):
        twins.resize(new)
        _writes_after(twins, axis, 10 * k)
    twins.final_check()


@pytest.mark.parametrize("fmt, chunks, shards", LAYOUTS)
def test_resize_every_axis_at_once(tmp_path, fmt, chunks, shards):
    """Grow one axis while shrinking another, several times over."""
    twins = Twins(tmp_path, **create(fmt, chunks, shards, (4, 5, 6)))
    twins.write(Ellipsis, values((4, 5, 6), 0))
    for k, shape in enumerate([(6, 3, 7), (2, 8, 3), (7, 7, 7), (1, 1, 1), (5, 4, 9)]):
        twins.resize(shape)
        twins.write(tuple(slice(n // 2, n) for n in shape),
                    values(tuple(n - n // 2 for n in shape), k, 100 * (k + 1)))
    twins.final_check()


@pytest.mark.parametrize("fmt, chunks, shards", LAYOUTS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_append_then_write_and_read(tmp_path, fmt, chunks, shards, axis):
    """``open_array(p, mode="r+").append(data, axis)`` twice, then writes and reads, then
    one more append through the array objects already open."""
    shape = (3, 4, 5)
    twins = Twins(tmp_path, **create(fmt, chunks, shards, shape))
    twins.write(Ellipsis, values(shape, 0))
    for k, length in enumerate([1, 3]):
        current = twins.theirs.shape
        data_shape = tuple(length if a == axis else n for a, n in enumerate(current))
        twins.append(values(data_shape, k + 1, 500 * (k + 1)), axis)
    _writes_after(twins, axis, 7)
    # append through the arrays already open (their pipelines were built before)
    current = twins.theirs.shape
    data = values(tuple(2 if a == axis else n for a, n in enumerate(current)), 9, 9000)
    for z in twins.both():
        z.append(data, axis=axis)
    twins.compare("after one more append on the arrays already open")
    twins.final_check()


def test_stale_values_beyond_a_shrunk_edge_are_kept_as_zarr_keeps_them(tmp_path):
    """zarr-python keeps the values of a partial edge chunk beyond the array's edge when it
    writes part of that chunk (read, merge, write); growing the array again shows them.
    Arrays opened fresh after the resize (no stale pipeline): only the edge handling counts."""
    for name in ("theirs", "ours"):
        z = zarr.create_array(tmp_path / name, shape=(5,), chunks=(4,), dtype="int32",
                              fill_value=0)
        z[...] = np.arange(1, 6)
        z.resize((3,))
    expected = None
    for name, cfg in (("theirs", {}), ("ours", LSIO)):
        with zarr.config.set(cfg):
            z = zarr.open_array(tmp_path / name, mode="r+")
        z[0:1] = 9  # part of the edge chunk 0 (elements 0..3, 3 beyond the edge)
        z = zarr.open_array(tmp_path / name, mode="r+")
        z.resize((8,))
        got = z[...]
        if expected is None:
            expected = got
            assert list(expected) == [9, 2, 3, 4, 0, 0, 0, 0]  # the oracle keeps the 4
        else:
            np.testing.assert_array_equal(got, expected)


# -- property test -----------------------------------------------------------------------------

@st.composite
def layouts_st(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    chunks = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    fmt = draw(st.sampled_from([2, 3]))
    kwargs = dict(shape=shape, chunks=chunks, dtype="int16", zarr_format=fmt,
                  fill_value=draw(st.sampled_from([0, 7])),
                  config={"write_empty_chunks": draw(st.booleans())})
    if draw(st.booleans()):
        kwargs["compressors"] = ZstdCodec() if fmt == 3 else None
    if fmt == 3 and draw(st.booleans()):
        kwargs["shards"] = tuple(c * draw(st.integers(1, 3)) for c in chunks)
    return kwargs


def _selection(draw, shape):
    """A basic selection: per axis an integer (maybe negative), a slice, or everything."""
    sel = []
    for n in shape:
        kind = draw(st.sampled_from(["int", "slice", "all"]))
        if kind == "int":
            sel.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            a = draw(st.integers(0, n - 1))
            sel.append(slice(a, draw(st.integers(a + 1, n))))
        else:
            sel.append(slice(None))
    return tuple(sel)


# no shrinking (it takes minutes here): a failure's message lists the steps that led to it
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate], report_multiple_bugs=False)
@given(create_kwargs=layouts_st(), data=st.data())
def test_random_resizes_appends_and_writes_match_the_default_pipeline(create_kwargs, data):
    """Up to 6 random steps (resize to a random shape, growing and shrinking; append along
    an axis; write a random box, scalar, fill_value or data) give the same array through our
    pipeline as through the default one, after every step and read back at the end."""
    draw = data.draw
    with tempfile.TemporaryDirectory() as d:
        twins = Twins(d, **create_kwargs)
        ndim = len(create_kwargs["shape"])
        fill = create_kwargs["fill_value"]
        twins.write(Ellipsis, values(create_kwargs["shape"], 0).astype("int16"))
        for step in range(draw(st.integers(1, 6))):
            shape = twins.theirs.shape
            kind = draw(st.sampled_from(["resize", "append", "write", "write"]))
            if kind == "resize":
                new = tuple(draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
                twins.resize(new)
            elif kind == "append":
                axis = draw(st.integers(0, ndim - 1))
                length = draw(st.integers(1, 4))
                part = tuple(length if a == axis else n for a, n in enumerate(shape))
                twins.append(values(part, step, 100 * step).astype("int16"), axis)
            else:
                sel = _selection(draw, shape)
                target = np.empty(shape, "int16")[sel].shape
                how = draw(st.sampled_from(["array", "scalar", "fill"]))
                value = {"array": lambda: values(target, step, 100 * step).astype("int16"),
                         "scalar": lambda: np.int16(-3),
                         "fill": lambda: np.full(target, fill, "int16")}[how]()
                twins.write(sel, value)
        twins.final_check()
