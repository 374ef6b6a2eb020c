"""Which dask_lsio a worker process imports: this checkout's, or a baseline's.

``--baseline PATH`` names another dask-lsio: a checkout (a folder holding ``dask_lsio/``, its
C extensions built in place with ``python setup.py build_ext --inplace``), run with this
Python and the checkout first on ``PYTHONPATH``; or a Python interpreter (or a venv folder)
with another dask-lsio installed. The benchmark code is always this checkout's (the worker
runs this ``bench_*.py``), only the library differs, so a row ``NAME@baseline`` is the same
measurement as row ``NAME`` with the other dask_lsio, taken in the same run, in turns with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

BASELINE = "baseline"
SEP = "@"  # "dask_lsio@baseline": reader "dask_lsio" on the baseline side

# What a side's Python reports about its dask_lsio (run as ``python -c``).
_PROBE = """
import json, dask_lsio
out = {"version": dask_lsio.__version__, "file": dask_lsio.__file__}
try:
    out["engine"] = dask_lsio.get_engine().kind
except Exception as e:
    out["engine"] = f"none ({type(e).__name__}: {e})"
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Side:
    """A Python environment readers run in.

    Parameters
    ----------
    name : str
        "" for this checkout, ``BASELINE`` for the other one.
    python : str
        The interpreter of its worker processes.
    pythonpath : str, optional
        Put first on ``PYTHONPATH`` (a checkout's root), so its ``dask_lsio`` is imported.
    installed : bool
        Use the dask_lsio installed for ``python`` (a side venv's): entries of our
        ``PYTHONPATH`` that hold a ``dask_lsio`` package are left out.
    info : dict
        What :func:`probe` found: dask_lsio's version, file, engine and the checkout's commit.
    """

    name: str = ""
    python: str = sys.executable
    pythonpath: str | None = None
    installed: bool = False
    info: dict = field(default_factory=dict, compare=False)

    def env(self) -> dict[str, str]:
        """The environment of this side's worker processes."""
        env = os.environ.copy()
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if self.installed:  # the venv's own dask_lsio, not a checkout on our PYTHONPATH
            paths = [p for p in paths if not (Path(p) / "dask_lsio").is_dir()]
        if self.pythonpath:
            paths.insert(0, self.pythonpath)
        env.pop("PYTHONPATH", None)
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def reader(self, name: str) -> str:
        """The row label of reader ``name`` on this side."""
        return f"{name}{SEP}{self.name}" if self.name else name


CURRENT = Side()


def split_reader(label: str) -> tuple[str, str]:
    """``"dask_lsio@baseline"`` -> ``("dask_lsio", "baseline")``; ``"zarr"`` -> ``("zarr", "")``."""
    name, _, side = label.partition(SEP)
    return name, side


def with_twins(readers: list[str], twinned: set[str], baseline: Side | None) -> list[str]:
    """``readers`` with each reader of ``twinned`` followed by its baseline twin (when there
    is a baseline), so that the two take turns next to each other."""
    out = []
    for r in readers:
        out.append(r)
        if baseline is not None and r in twinned:
            out.append(baseline.reader(r))
    return out


def resolve_baseline(path: Path) -> Side:
    """The side ``--baseline PATH`` names, probed (its dask_lsio imported once).

    Raises
    ------
    SystemExit
        When ``PATH`` is neither a checkout nor a Python, or its dask_lsio does not import
        from where it should.
    """
    path = path.expanduser().absolute()  # not resolved: a venv's python is a symlink
    if (path / "dask_lsio" / "__init__.py").is_file():
        path = path.resolve()
        side = Side(BASELINE, sys.executable, str(path))
    elif (path / "bin" / "python").is_file():
        side = Side(BASELINE, str(path / "bin" / "python"), installed=True)
    elif path.is_file() and os.access(path, os.X_OK):
        side = Side(BASELINE, str(path), installed=True)
    else:
        raise SystemExit(f"--baseline {path}: not a checkout (no dask_lsio/ in it), a venv or "
                         "a Python interpreter")
    info = probe(side)
    if side.pythonpath and not Path(info["file"]).resolve().is_relative_to(path):
        raise SystemExit(f"--baseline {path}: its dask_lsio is imported from {info['file']}")
    if side.installed and info["file"] == probe(CURRENT)["file"]:
        raise SystemExit(f"--baseline {path}: imports this checkout's dask_lsio "
                         f"({info['file']}); install the other version in that venv")
    return Side(side.name, side.python, side.pythonpath, side.installed, info)


def probe(side: Side) -> dict:
    """The side's dask_lsio (version, file, engine) and, from a git checkout, its commit."""
    # run from the benchmarks' folder, as the workers are: "python -c" puts its working
    # directory first on sys.path, and a checkout's root would shadow the baseline
    proc = subprocess.run([side.python, "-c", _PROBE], env=side.env(), capture_output=True,
                          text=True, check=False, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"{side.python}: cannot import dask_lsio ({tail})")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    root = Path(info["file"]).resolve().parents[1]
    git = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                         capture_output=True, text=True, check=False)
    return info | {"python": side.python, "pythonpath": side.pythonpath,
                   "commit": git.stdout.strip() if git.returncode == 0 else None}


def describe(current: Side, baseline: Side) -> list[str]:
    """Lines for the report: which dask_lsio each side ran."""
    lines = []
    for label, side in (("current", current), ("baseline", baseline)):
        i = side.info
        lines.append(f"  {label:<8} dask_lsio {i.get('version')} from {i.get('file')} "
                     f"(commit {i.get('commit')}, engine {i.get('engine')})")
    return lines


def current_side() -> Side:
    """This checkout, probed the same way as the baseline (for the report)."""
    return Side(info=probe(CURRENT))


def report_sides(baseline: Side | None) -> dict:
    """With a baseline: print which dask_lsio each side ran and return both for the JSON
    file's metadata ({} without one)."""
    if baseline is None:
        return {}
    current = current_side()
    print("\ndask_lsio:\n" + "\n".join(describe(current, baseline)))
    return {"current": current.info, "baseline": baseline.info}
