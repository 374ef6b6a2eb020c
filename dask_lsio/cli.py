"""The ``dask-lsio`` command (also ``python -m dask_lsio``): info, inspect, rechunk, demo,
bench."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dask.config

from . import cli_rechunk
from .build import describe, missing_reason

EXAMPLES = """examples:
  dask-lsio info                       which IO engine and decoder this machine uses, and why
  dask-lsio inspect weather.zarr       arrays, shapes, chunks, shards, codecs; fast path or not
  dask-lsio rechunk maps.zarr ts.zarr --chunks time=-1,y=8,x=8 --max-mem 1GB
                                       new chunks (shards, codecs, v2 -> v3) in 1 GB, resumable
  dask-lsio demo                       the tour: statistics, crops, a write, against the peers
  dask-lsio bench read --quick         a benchmark (from a source checkout), quick mode
  dask-lsio --version
"""

BENCHMARKS = ("io", "read", "crops", "write", "cluster", "cloud", "rechunk")


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if "rechunk" in argv:  # "--chunks -1,16,16": argparse would take -1,16,16 for an option
        argv = cli_rechunk.glue_negative_values(argv, ("--chunks", "--shards"))
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("bench", "demo"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "info":
        return info()
    if args.command == "inspect":
        return inspect(args.path, args.component)
    if args.command == "rechunk":
        return cli_rechunk.rechunk(args)
    if args.command == "demo":
        from .demo import main as demo

        return demo(rest)
    if args.name is None:  # "dask-lsio bench" or "dask-lsio bench --help"
        print(args.bench_help())
        return 0 if rest in (["--help"], ["-h"]) else 2
    return bench(args.name, args.quick, rest)


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="dask-lsio", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fast batched Zarr IO for dask, xarray, zarr-python and training loaders.")
    parser.add_argument("--version", action="version", version=f"dask-lsio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("info", help="version, IO engine, decoder, and why not the fast path")
    ins = sub.add_parser("inspect", help="the Zarr arrays at a path or URL and how we read them",
                         epilog="example: dask-lsio inspect weather.zarr",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    ins.add_argument("path", help="a Zarr array or group: a path or URL")
    ins.add_argument("--component", help="an array or group inside it")
    cli_rechunk.add_parser(sub)
    sub.add_parser("demo", help="a two-minute tour on a generated weather cube",
                   epilog="options (see dask-lsio demo --help):\n"
                          "  --data-dir DIR   where the sample lives (default ~/.cache/dask-lsio)\n"
                          "  --steps N        hourly steps of the sample (1024: 256 MiB)\n"
                          "example: dask-lsio demo --data-dir /tmp/lsio-demo",
                   formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    b = sub.add_parser("bench", help="run a benchmark of the source checkout",
                       epilog="examples:\n  dask-lsio bench read --quick\n"
                              "  dask-lsio bench crops --no-cold --repeats 3\n"
                              "  dask-lsio bench read --help     (the benchmark's own options)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    b.add_argument("name", choices=BENCHMARKS, nargs="?", help="which benchmark")
    b.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.set_defaults(bench_help=b.format_help)
    return parser


# -- info ------------------------------------------------------------------------------------
def info() -> int:
    """Print the version, the active engine and decoder and, when not the fast ones, why."""
    import dask_lsio
    from dask_lsio.io import get_engine, uring_status

    st = uring_status()
    lines = [
        f"dask-lsio {dask_lsio.__version__}",
        f"python {sys.version.split()[0]}, kernel {st.kernel}, "
        f"kernel.io_uring_disabled={st.io_uring_disabled}",
        f"lsio.engine: {dask.config.get('lsio.engine')}",
    ]
    try:
        engine = get_engine()
    except Exception as e:
        lines.append(f"engine: none ({e})")
        print("\n".join(lines))
        return 1
    lines.append(f"engine: {engine.kind}")
    if engine.kind == "io_uring":
        flags = engine.ring_flags
        lines.append(
            f"io_uring: queue depth {engine.queue_depth}, io-wq workers "
            f"{engine.iowq_max_workers}, SINGLE_ISSUER|DEFER_TASKRUN "
            f"{'on' if flags & (1 << 12) else 'off (kernel too old)'}")
    else:
        lines.append(f"threads: {engine.threads}")
    lines.append(f"io_uring: {'available' if st.available else 'not used'} ({st.reason})")
    lines.append(f"decode: {decode_path(engine)}")
    for name, what in (("uring", "io_uring engine"), ("kernel", "decode kernel")):
        lines.append(f"{what}: {describe(name)}")
    lines.append(f"direct IO: {engine.direct_io}")
    for key in ("read-size-hint", "batch-bytes", "buffer-pool-bytes", "fsync"):
        lines.append(f"lsio.{key}: {dask.config.get('lsio.' + key)}")
    lines.append(f"object stores: {object_stores()}")
    print("\n".join(lines))
    return 0


def object_stores() -> str:
    """Which object stores dask-lsio reads and writes itself, and with what settings (never
    credentials: none are configured here)."""
    try:
        from importlib.metadata import version

        found = version("obstore")
    except Exception as e:  # not installed: URLs then go through zarr-python / fsspec
        return f"none (obstore is not installed: {type(e).__name__}; pip install obstore)"
    store = dask.config.get("lsio.store")
    return (f"s3:// gs:// az:// http(s):// through obstore {found}; concurrency "
            f"{store['concurrency']}, retries {store['retries']} within "
            f"{store['retry-budget']}, timeout {store['timeout']}")


def decode_path(engine: Any) -> str:
    """Which decoder reads chunks, and why not the C kernel when it is not."""
    from dask_lsio.zarr import _kernel

    if _kernel.lib is None:
        return f"numcodecs, several times slower ({missing_reason('kernel')})"
    return "C kernel for blosc, zstd, gzip/zlib and uncompressed chunks; numcodecs otherwise"


# -- inspect ---------------------------------------------------------------------------------
def inspect(path: str, component: str | None = None) -> int:
    """Print every array at ``path`` (an array, or a group walked recursively): shape, dtype,
    chunks, shards, codecs, and which reader dask-lsio uses for it."""
    import zarr

    import warnings

    warnings.simplefilter("ignore")  # zarr's advice on odd codec chains: we say it below
    try:
        node = zarr.open(store=path, path=component or "", mode="r")
    except Exception as e:  # zarr raises several types for missing or broken metadata
        print(f"dask-lsio inspect: no Zarr array or group at {path!r}"
              f"{f' / {component!r}' if component else ''}: {e}", file=sys.stderr)
        return 1
    if isinstance(node, zarr.Array):
        arrays = [("", node)]
    else:  # every array below the group, nested ones too
        arrays = sorted((name, a) for name, a in node.members(max_depth=None)
                        if isinstance(a, zarr.Array))
    where = f"{path}{'/' + component if component else ''}"
    if not arrays:
        print(f"{where}: a group with no arrays")
        return 0
    print(f"{where}: {len(arrays)} array{'s' if len(arrays) > 1 else ''}")
    for name, arr in arrays:
        print(f"\n{name or '(the array itself)'}")
        for label, value in describe_array(arr):
            print(f"  {label:<9} {value}")
    return 0


def describe_array(arr: Any) -> list[tuple[str, str]]:
    """(label, value) lines about a zarr.Array, ending with how dask-lsio reads it."""
    import math

    meta = arr.metadata
    names = getattr(meta, "dimension_names", None) or arr.attrs.get("_ARRAY_DIMENSIONS")
    shards = getattr(arr, "shards", None)
    units = math.prod(-(-n // g) for n, g in zip(arr.shape, shards or arr.chunks))
    return [("shape", f"{arr.shape}" + (f" ({', '.join(map(str, names))})" if names else "")),
            ("dtype", str(arr.dtype)),
            ("chunks", str(arr.chunks)),
            ("shards", str(shards)),
            ("format", f"Zarr v{meta.zarr_format}"),
            ("codecs", codec_names(meta)),
            ("size", f"{arr.nbytes / 2**20:,.1f} MiB in {units:,} "
                     f"{'shards' if shards else 'chunks'}"),
            ("reader", reader_of(arr))]


def codec_names(meta: Any) -> str:
    """The codec chain of an array's metadata, inner chains of shards in brackets."""
    d = meta.to_dict()
    if d.get("zarr_format") == 2:
        parts = [f["id"] for f in d.get("filters") or ()] + (
            [d["compressor"]["id"]] if d.get("compressor") else [])
        return " -> ".join(parts) or "none"

    def chain(codecs: list) -> str:
        return " -> ".join(c["name"] + (f"[{chain(c['configuration']['codecs'])}]"
                                        if c["name"] == "sharding_indexed" else "")
                           for c in codecs)

    return chain(d.get("codecs", []))


def reader_of(arr: Any) -> str:
    """How dask-lsio reads ``arr``: the C kernel, numcodecs, or zarr-python (and why)."""
    from .errors import UnsupportedCodecError
    from .zarr import _kernel
    from .zarr.spec import open_array, spec_from_array

    try:
        spec = spec_from_array(*open_array(arr))
    except UnsupportedCodecError as e:
        return f"zarr-python (slower): {e}"
    if _kernel.kernel_codec(spec.codec) is not None and _kernel.lib is not None:
        return "dask-lsio, decoded by the C kernel (the fast path)"
    why = ("dask-lsio was built without the kernel" if _kernel.lib is None
           else f"the C kernel does not decode {spec.codec.names}")
    return f"dask-lsio, decoded by numcodecs on threads ({why})"


# -- bench -----------------------------------------------------------------------------------
def bench(name: str, quick: bool, rest: list[str]) -> int:
    """Run ``benchmarks/bench_<name>.py`` of the source checkout this package runs from."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / f"bench_{name}.py"
    if not script.is_file():
        print("dask-lsio bench: the benchmarks come with the source repository (benchmarks/);"
              " run this from a checkout installed with `pip install -e .[bench]`",
              file=sys.stderr)
        return 2
    cmd = [sys.executable, str(script), *(["--quick"] if quick else []), *rest]
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=os.environ.copy()).returncode
