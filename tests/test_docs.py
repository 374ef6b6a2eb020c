"""The documentation builds without a single warning (``make docs`` runs the same command).

Warnings are errors (``-W``) and every cross-reference into dask-lsio must resolve (``-n``), so
a docstring numpydoc cannot parse, a broken reference, a public object that disappeared, or a
setting added to ``lsio.yaml`` without the comment that documents it fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("sphinx")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _flat_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            keys += _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    html = out / "html"
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
         "-d", str(out / "doctrees"), str(DOCS), str(html)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert done.returncode == 0, f"sphinx-build failed:\n{done.stderr[-6000:]}{done.stdout[-2000:]}"
    assert "WARNING" not in done.stderr and "ERROR" not in done.stderr, done.stderr[-6000:]
    return html


def test_docs_build_without_warnings(built):
    for page in ("index", "architecture", "configuration", "api", "guide/dask",
                 "guide/xarray", "guide/zarr", "guide/loaders", "guide/clusters",
                 "guide/errors", "guide/cli", "guide/object_stores", "guide/rechunk"):
        assert (built / f"{page}.html").is_file(), page


def test_configuration_reference_lists_every_setting(built):
    page = (built / "configuration.html").read_text()
    with open(ROOT / "dask_lsio" / "lsio.yaml") as f:
        keys = _flat_keys(yaml.safe_load(f))
    assert keys
    for key in keys:
        assert f'id="confval-{key}"' in page, f"{key} is missing from the configuration page"


def test_api_reference_documents_the_public_api(built):
    page = (built / "api.html").read_text()
    for name in ("from_zarr", "to_zarr", "open_zarr", "RandomCrops", "TorchCrops",
                 "iter_blocks", "LSIOWorkerPlugin", "get_engine", "ReadRequest",
                 "LSIOError", "BatchIOError", "EngineUnavailableError", "UnsupportedCodecError",
                 "UnsupportedStoreError", "ChunkDecodeError", "VersionConflictError",
                 "rechunk", "Rechunked", "RechunkStage"):
        assert f'id="dask_lsio.{name}"' in page, name
    for name in ("io.Engine.read", "io.Engine.read_iter", "io.Engine.read_into",
                 "io.Engine.write", "io.Engine.delete", "zarr.LSIOCodecPipeline"):
        assert f'id="dask_lsio.{name}"' in page, name
