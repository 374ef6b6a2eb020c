"""pytest plugin for scripts/dask-suite.sh: routes dask.array.from_zarr / to_zarr (and so
Array.to_zarr) to dask_lsio.from_zarr / to_zarr for dask's own zarr tests, and counts the
calls dask_lsio handled itself and those it handed to dask or zarr-python.

dask_lsio's fallbacks must reach dask's own functions: dask_lsio binds them at import
(``dask_from_zarr`` / ``dask_to_zarr``), before this plugin routes the names, and the plugin
wraps those bindings to count them. A dask_lsio that looked them up at call time
(``da.to_zarr``) would recurse here: a failure of this suite, as it should be.

All of it happens in pytest_configure: after dask's conftest has registered dask.array.utils
for assertion rewriting, which must come before anything imports dask.array.
"""

import importlib
import warnings
from collections import Counter

import pytest

COUNTS: Counter = Counter()
_KEYS = ("from_zarr: own path", "from_zarr: fallback to dask", "from_zarr: raised",
         "to_zarr: own path", "to_zarr: through zarr-python", "to_zarr: fallback to dask",
         "to_zarr: raised")

# -- tests that do not apply as written, and how they still run ------------------------------
DEFAULT_CHUNKS = ("they assert a2.chunks == a.chunks after da.from_zarr without chunks: "
                  "dask_lsio's default blocks are coarse on purpose (whole chunks or shards of "
                  "about array.chunk-size), dask's are the zarr chunks. For these tests "
                  "from_zarr without chunks gets the zarr array's .chunks (dask's default), so "
                  "the rest of the test still reads through dask_lsio")
SAME_CHUNKS_AS_DASK = {
    "test_zarr_roundtrip": DEFAULT_CHUNKS,
    "test_zarr_sharding_roundtrip": DEFAULT_CHUNKS,
    "test_zarr_roundtrip_with_path_like": DEFAULT_CHUNKS,
    "test_zarr_pass_store": DEFAULT_CHUNKS,
    "test_zarr_group": DEFAULT_CHUNKS,
    "test_zarr_nocompute": DEFAULT_CHUNKS,
    "test_zarr_distributed_roundtrip": DEFAULT_CHUNKS,
    "test_zarr_distributed_with_explicit_directory_store": DEFAULT_CHUNKS,
    "test_zarr_existing_array": DEFAULT_CHUNKS,
    "test_zarr_regions": DEFAULT_CHUNKS,
}
IRREGULAR = ("they expect dask's UserWarning 'The array uses irregular chunk sizes', which "
             "announces dask's own rechunk to regular blocks before writing: dask_lsio "
             "rechunks to whole write units itself, silently. For these tests to_zarr emits "
             "dask's warning where dask would (irregular chunks, url not a zarr.Array), so the "
             "rest of the test (rechunk tasks in the graph, the write) runs on dask_lsio")
DASK_IRREGULAR_WARNING = {
    "test_zarr_irregular_chunks": IRREGULAR,
    "test_compute_chunk_sizes_warning_fixes_to_zarr": IRREGULAR,
}
SPLIT = ("dask_lsio warns (PerformanceWarning) when the caller's blocks split stored chunks, "
         "each then read by several tasks; dask does not, and dask's filterwarnings=error "
         "turns that advice into a failure. Ignored for these tests only")
IGNORE_SPLIT_WARNING = {
    "test_read_zarr_chunks": SPLIT,
}
RISKY = ("they expect dask's PerformanceWarning 'The input Dask array will be rechunked along "
         "axis ...', which announces that dask's blocks may split the array's write units "
         "(and lose data): dask_lsio rechunks to whole write units and merges partial ones "
         "under locks, silently. For these tests to_zarr into a zarr.Array emits dask's "
         "warning where dask's own check does, so the rest of the test runs on dask_lsio")
DASK_RISKY_WARNING = {
    "test_zarr_risky_shards_warns": RISKY,
    "test_zarr_regions": RISKY,
}
OUR_GRAPH = ("it asserts that with inline_array=False the zarr.Array object itself is a value "
             "of the graph: dask_lsio's graph holds its picklable ZarrSource instead (one "
             "object, as the test counts). Expected to fail (strict)")
XFAIL = {
    "test_zarr_inline_array[False]": OUR_GRAPH,
}
# Suite-wide: dask_lsio warns once per call it hands to dask or zarr-python (stores it does
# not handle: MemoryStore, {} ...; "... (correct, slower)"). dask's filterwarnings=error would
# turn that notice into an exception before the fallback runs. Those calls are counted below.
FALLBACK_WARNING = r"ignore:.*\(correct, slower\)$:UserWarning"

_ACTIVE: set = set()  # the adjustments of the running test


def _route() -> None:
    import dask_lsio  # first, before dask's functions are replaced

    import dask.array as da
    import dask.array.core as core
    import zarr

    lsio_from = importlib.import_module("dask_lsio.graph.from_zarr")
    lsio_to = importlib.import_module("dask_lsio.graph.to_zarr")
    dask_from_zarr, dask_to_zarr = core.from_zarr, core.to_zarr
    assert da.from_zarr is dask_from_zarr and da.to_zarr is dask_to_zarr

    # dask_lsio's fallbacks reach dask's own functions, counted
    def fallback_from_zarr(*args, **kwargs):
        COUNTS["from_zarr: fallback to dask"] += 1
        return dask_from_zarr(*args, **kwargs)

    def fallback_to_zarr(*args, **kwargs):
        COUNTS["to_zarr: fallback to dask"] += 1
        return dask_to_zarr(*args, **kwargs)

    for module, name, original, counted in (
            (lsio_from, "dask_from_zarr", dask_from_zarr, fallback_from_zarr),
            (lsio_to, "dask_to_zarr", dask_to_zarr, fallback_to_zarr)):
        assert getattr(module, name) is original, f"{module.__name__}.{name} is not dask's"
        setattr(module, name, counted)

    # to_zarr writes through _store: into a ZarrTarget (its own path) or into the zarr.Array
    # (codecs it does not write itself: zarr-python's pipeline)
    store = lsio_to._store

    def counted_store(arr, target, *args, **kwargs):
        own = isinstance(target, dask_lsio.graph.ZarrTarget)
        COUNTS["to_zarr: own path" if own else "to_zarr: through zarr-python"] += 1
        return store(arr, target, *args, **kwargs)

    lsio_to._store = counted_store

    # dask.array.from_zarr / to_zarr are dask_lsio's
    def from_zarr(url, component=None, storage_options=None, chunks=None, *args, **kwargs):
        if chunks is None and "same chunks as dask" in _ACTIVE:
            z = url if isinstance(url, zarr.Array) else zarr.open_array(
                store=url, path=component, mode="r")
            chunks = z.chunks
        before = COUNTS["from_zarr: fallback to dask"]
        try:
            with warnings.catch_warnings():
                if "same chunks as dask" in _ACTIVE:  # dask's chunks may split shards
                    warnings.filterwarnings("ignore", "chunks .* split the stored",
                                            da.PerformanceWarning)
                out = dask_lsio.from_zarr(url, component, storage_options, chunks,
                                          *args, **kwargs)
        except BaseException:
            COUNTS["from_zarr: raised"] += 1
            raise
        if COUNTS["from_zarr: fallback to dask"] == before:
            COUNTS["from_zarr: own path"] += 1
        return out

    def to_zarr(arr, url, *args, **kwargs):
        if ("dask's irregular warning" in _ACTIVE and not isinstance(url, zarr.Array)
                and not core._check_regular_chunks(arr.chunks)):
            warnings.warn("The array uses irregular chunk sizes. (emitted by "
                          "dask_suite_plugin for dask's test)", UserWarning, stacklevel=2)
        if "dask's risky warning" in _ACTIVE and isinstance(url, zarr.Array):
            _warn_as_dask_would(url, kwargs.get("region"))
        before = sum(COUNTS[k] for k in _KEYS if k.startswith("to_zarr:"))
        try:
            return dask_lsio.to_zarr(arr, url, *args, **kwargs)
        finally:
            if sum(COUNTS[k] for k in _KEYS if k.startswith("to_zarr:")) == before:
                COUNTS["to_zarr: raised"] += 1

    da.from_zarr = core.from_zarr = from_zarr
    da.to_zarr = core.to_zarr = to_zarr


def _warn_as_dask_would(z, region) -> None:
    """dask's check before writing into an existing zarr.Array (the lines of
    dask.array.core._write_dask_to_existing_zarr that warn), for its warning only: the
    rechunk it warns about is not dask_lsio's, which writes whole units."""
    from dask.array.core import PerformanceWarning, _get_zarr_write_chunks, normalize_chunks
    from dask.array.slicing import new_blockdim, normalize_index

    zarr_write = _get_zarr_write_chunks(z)
    dask_write = normalize_chunks("auto", shape=z.shape, dtype=z.dtype,
                                  previous_chunks=zarr_write)
    if region is not None:
        index = normalize_index(region, z.shape)
        dask_write = tuple(tuple(new_blockdim(s, c, r))
                           for s, c, r in zip(z.shape, dask_write, index))
    for ax, (dw, zw) in enumerate(zip(dask_write, zarr_write)):
        if len(dw) >= 1 and dw[0] % zw:
            warnings.warn(f"The input Dask array will be rechunked along axis {ax} (emitted "
                          "by dask_suite_plugin for dask's test)", PerformanceWarning,
                          stacklevel=3)
            break


def pytest_configure(config):
    # dask's CI has pytest-rerunfailures; with dask's filterwarnings=error the unknown mark
    # would be a collection error of test_distributed.py
    config.addinivalue_line("markers", "flaky: rerun by pytest-rerunfailures")
    config.addinivalue_line("filterwarnings", FALLBACK_WARNING)
    _route()


def pytest_collection_modifyitems(items):
    for item in items:
        if item.name in XFAIL:
            item.add_marker(pytest.mark.xfail(reason=XFAIL[item.name], strict=True))
        if item.originalname in IGNORE_SPLIT_WARNING:
            item.add_marker(pytest.mark.filterwarnings(
                "ignore:chunks .* split the stored:dask.array.core.PerformanceWarning"))


def pytest_runtest_setup(item):
    _ACTIVE.clear()
    if item.originalname in SAME_CHUNKS_AS_DASK:
        _ACTIVE.add("same chunks as dask")
    if item.originalname in DASK_IRREGULAR_WARNING:
        _ACTIVE.add("dask's irregular warning")
    if item.originalname in DASK_RISKY_WARNING:
        _ACTIVE.add("dask's risky warning")


def pytest_runtest_teardown(item):
    _ACTIVE.clear()


def pytest_terminal_summary(terminalreporter):
    write = terminalreporter.write_line
    for title, table in (("from_zarr with dask's default chunks", SAME_CHUNKS_AS_DASK),
                         ("to_zarr emits dask's irregular-chunks warning", DASK_IRREGULAR_WARNING),
                         ("dask_lsio's split-chunks PerformanceWarning ignored",
                          IGNORE_SPLIT_WARNING),
                         ("to_zarr emits dask's risky-rechunk warning", DASK_RISKY_WARNING),
                         ("expected to fail", XFAIL)):
        write(f"adjusted, {title}: {', '.join(table)}")
    write("dask_lsio calls: " + ", ".join(f"{k} {COUNTS[k]}" for k in _KEYS))
