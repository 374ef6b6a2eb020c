# Sourced by scripts/*-suite.sh, which run the test suites of the projects dask-lsio plugs
# into (zarr-python, xarray, dask) against it: the tests of the INSTALLED version of each,
# from its sdist on PyPI, with a pytest plugin of this folder.

# run_suite PYTHON DIST MODULE [ENV=VALUE ...] -- PYTEST-ARGS...: download and unpack the
# sdist of the version of DIST (import name MODULE) that PYTHON has installed, and run pytest
# there with this folder on PYTHONPATH; the exit code is pytest's. PYTHON may be empty (the
# repo's .venv/bin/python). It runs in a subshell, so its temp dir goes whatever happens.
run_suite() (
    set -euo pipefail
    local here py dist=$2 module=$3 work version src
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    py=$(suite_python "$1")
    shift 3
    local env=()
    while [[ $1 != -- ]]; do env+=("$1"); shift; done
    shift
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    version=$("$py" -c "import $module; print($module.__version__)")
    "$py" -m pip download -q "$dist==$version" --no-binary :all: --no-deps -d "$work"
    tar xzf "$work"/*.tar.gz -C "$work"
    src=$(find "$work" -mindepth 1 -maxdepth 1 -type d)
    cd "$src"
    time env "${env[@]}" PYTHONPATH="$here" "$py" -m pytest -q -p no:cacheprovider \
        -o addopts="" "$@"
)

# suite_python [python]: the interpreter as an absolute path (the suites run in a temp dir).
# Default: the repo's .venv/bin/python. Symlinks are kept, not resolved: a venv's python is
# a symlink to the base interpreter.
suite_python() {
    local py=${1:-"$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python"}
    if [[ $py != */* ]]; then
        py=$(command -v "$py") || { echo "no python interpreter '$1' on PATH" >&2; return 127; }
    fi
    [[ -x $py ]] || { echo "no python interpreter at '$py'" >&2; return 127; }
    echo "$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"
}
