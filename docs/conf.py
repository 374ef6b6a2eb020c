"""Sphinx configuration of the dask-lsio documentation.

Build: ``make docs`` (or ``python -m sphinx -W --keep-going -n -b html docs docs/_build/html``).
Nothing is fetched from the network: no intersphinx, no remote images, no CDN theme assets.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(ROOT))  # the package of this tree, also when it is not installed

import dask_lsio  # noqa: E402

project = "dask-lsio"
author = "the dask-lsio developers"
copyright = "the dask-lsio developers, BSD-3-Clause"
release = dask_lsio.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
    "lsio_config",  # docs/_ext/lsio_config.py: the configuration reference from lsio.yaml
]

# the configuration reference is generated from this file at every build
lsio_config_file = str(ROOT / "dask_lsio" / "lsio.yaml")

exclude_patterns = ["_build"]
root_doc = "index"
default_role = "literal"
pygments_style = "sphinx"

# -- autodoc and numpydoc ------------------------------------------------------------------
# torch is optional (and slow to import): TorchCrops is documented against a stand-in
autodoc_mock_imports = ["torch"]
autodoc_typehints = "none"  # the numpydoc Parameters sections carry the types
autodoc_member_order = "bysource"
numpydoc_show_class_members = False  # members are listed explicitly in api.rst
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- nitpicky (-n): every cross-reference must resolve -----------------------------------
# Without intersphinx (no network at build time) references into other projects and the
# standard library cannot resolve; they still render as code. References into dask-lsio
# must resolve.
nitpicky = True
_EXTERNAL = ("abc", "dask", "distributed", "xarray", "zarr", "numpy", "numcodecs", "torch", "os",
             "concurrent", "collections")
_BUILTINS = ("BaseException", "Exception", "ExceptionGroup", "OSError", "RuntimeError",
             "ValueError", "NotImplementedError", "TimeoutError", "FileNotFoundError",
             "PermissionError", "IsADirectoryError", "memoryview", "bytes", "str", "int",
             "float", "bool", "dict", "list", "tuple", "object")
nitpick_ignore_regex = [
    (r"py:.*", r"(%s)(\..*)?" % "|".join(_EXTERNAL)),
    (r"py:.*", r"(%s)" % "|".join(_BUILTINS)),
]

# -- HTML ----------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"dask-lsio {release}"
html_theme_options = {
    "description": "Fast batched Zarr IO for Dask on io_uring",
    "fixed_sidebar": True,
    "page_width": "1240px",
    "sidebar_width": "230px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
html_static_path: list[str] = []
html_show_sourcelink = False
