"""``dask-lsio rechunk``: the command line of :func:`dask_lsio.rechunk`, with a progress bar
and a summary (bytes, chunks, seconds, GB/s, peak memory)."""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from typing import Any

import dask.config

RECHUNK_EPILOG = """chunk and shard shapes (--chunks, --shards):
  time=8760,y=8,x=8       by dimension name (xarray dims, v3 dimension_names or v2
                          _ARRAY_DIMENSIONS); dimensions not named keep their size
  1024,16,16              one size per axis, for an array
  -1 or all               the whole axis: -1,16,16 or all,16,16 (time=-1,y=8,x=8)
  NAME:1024,16,16         for one array of a group (NAME:time=-1 too); give --chunks once
                          per array, and dimension names for all arrays; arrays not
                          named keep their chunks

examples:
  dask-lsio rechunk maps.zarr/t2m series.zarr --chunks time=8760,y=8,x=8 --max-mem 1GB
  dask-lsio rechunk era5.zarr era5-ts.zarr --chunks time=-1,latitude=16,longitude=16 \\
      --max-mem 2GiB --temp /scratch/era5.tmp
  dask-lsio rechunk v2.zarr v3.zarr --chunks 1024,16,16 --shards 1024,256,256 \\
      --compressor zstd --zarr-format 3 --max-mem 2GiB
  dask-lsio rechunk s3://bucket/in.zarr s3://bucket/out.zarr --chunks t2m:8760,8,8 \\
      --max-mem 1GB --storage-option endpoint_url=https://s3.example.org
  dask-lsio rechunk in.zarr out.zarr --chunks 1024,16,16 --max-mem 1GB --dry-run

A run that was interrupted resumes when started again with the same arguments: complete
target chunks (or shards) are kept, the rest is written.
"""

#: where an array's size is the whole axis
WHOLE = ("-1", "all")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    r = sub.add_parser(
        "rechunk", help="copy a Zarr array or group to new chunks, shards, codecs, format",
        description="Copy a Zarr array, group or dataset to new chunks (and shards, codecs, "
                    "Zarr format) within a memory bound, with a progress bar and a summary.",
        epilog=RECHUNK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("source", metavar="SRC", help="a Zarr array or group: a path or URL")
    r.add_argument("target", metavar="DST", help="where the copy goes: a path or URL")
    r.add_argument("--chunks", action="append", required=True, type=_shape_arg, metavar="SPEC",
                   help="the target chunks (see below; may be given once per array)")
    r.add_argument("--max-mem", required=True, type=_bytes_arg, metavar="BYTES",
                   help="memory of the copy's buffers per process: 1GB, 512MiB, 2e9 ...")
    r.add_argument("--shards", action="append", type=_shape_arg, metavar="SPEC",
                   help="the target shards, as --chunks (default: unsharded)")
    r.add_argument("--temp", metavar="PATH",
                   help="the intermediate array of two-stage plans (default: DST.rechunk-temp,"
                        " removed at the end)")
    r.add_argument("--compressor", metavar="NAME",
                   help="zstd, lz4, blosc-zstd, gzip or none (default: the source's)")
    r.add_argument("--zarr-format", type=int, choices=(2, 3),
                   help="convert to this Zarr format (default: the source's)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace DST if it exists (otherwise an existing DST with the same "
                        "metadata is resumed)")
    r.add_argument("--storage-option", action="append", type=_option_arg, default=[],
                   metavar="KEY=VALUE", dest="storage_options",
                   help="an object-store option (fsspec names: endpoint_url=..., anon=true); "
                        "repeat for more")
    r.add_argument("--workers", type=_positive_int, metavar="N",
                   help="threads of the local scheduler (default: one per core)")
    r.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on this distributed scheduler (tcp://host:8786) instead")
    r.add_argument("--dry-run", action="store_true",
                   help="print the plan (stages, tasks, memory per task) and exit; writes "
                        "DST's metadata only")
    r.add_argument("-v", "--verbose", action="store_true",
                   help="on an error, print the traceback too")
    r.set_defaults(usage_error=r.error)
    return r


def glue_negative_values(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``[flag, "-1,16,16"]`` -> ``["flag=-1,16,16"]`` for each of ``flags``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in flags and i + 1 < len(argv) and argv[i + 1][:2].lstrip("-").isdigit() \
                and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _size(token: str, what: str) -> int:
    token = token.strip()
    if token.lower() in WHOLE:
        return -1
    try:
        size = int(token)
    except ValueError:
        size = 0
    if size <= 0:
        raise argparse.ArgumentTypeError(
            f"{what!r}: {token!r} is not a size (a positive integer, or -1 / all for the whole "
            f"axis)")
    return size


def _shape_arg(text: str) -> tuple[str | None, tuple[int, ...] | dict[str, int]]:
    """One ``--chunks``/``--shards`` value: ``(array name or None, tuple or {dim: size})``."""
    name = None
    spec = text
    if ":" in text:
        name, spec = (part.strip() for part in text.split(":", 1))
        if not name:
            raise argparse.ArgumentTypeError(f"{text!r}: no array name before ':'")
    tokens = spec.split(",")
    if not spec.strip() or any(not t.strip() for t in tokens):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected sizes separated by commas (1024,16,16) or dim=size pairs "
            f"(time=8760,y=8,x=8)")
    if all("=" in t for t in tokens):
        shape: dict[str, int] = {}
        for t in tokens:
            dim, size = (part.strip() for part in t.split("=", 1))
            if not dim:
                raise argparse.ArgumentTypeError(f"{text!r}: no dimension name in {t!r}")
            if dim in shape:
                raise argparse.ArgumentTypeError(f"{text!r}: dimension {dim!r} given twice")
            shape[dim] = _size(size, text)
        return name, shape
    if any("=" in t for t in tokens):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give every size by dimension name (time=8760,y=8,x=8) or none "
            f"(8760,8,8), not both")
    return name, tuple(_size(t, text) for t in tokens)


def _combine(values: list, flag: str, error: Any) -> Any:
    """The ``target_chunks`` (or ``shards``) of several ``flag`` values: one value as it is,
    several merged into ``{array_name: spec, dim: size}``."""
    if len(values) == 1 and values[0][0] is None:
        return values[0][1]
    out: dict[str, Any] = {}
    for name, spec in values:
        if name is None and isinstance(spec, tuple):
            error(f"argument {flag}: sizes without names fit one array; with several "
                         f"{flag} name the array (NAME:{','.join(map(str, spec))})")
        items = {name: spec} if name is not None else spec
        for key, value in items.items():
            if key in out:
                error(f"argument {flag}: {key!r} given twice")
            out[key] = value
    return out


def _bytes_arg(text: str) -> int:
    from dask.utils import parse_bytes

    try:
        n = parse_bytes(text)
    except (ValueError, TypeError):
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of bytes (e.g. 1GB, 512MiB, 2e9)")
    return n


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return n


def _option_arg(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``: true/false become booleans, a {...} value is read as JSON, the rest
    stays a string."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if value.lower() in ("true", "false"):
        return key.strip(), value.lower() == "true"
    if value.startswith("{"):
        try:
            return key.strip(), json.loads(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"the value of {key.strip()} is not a JSON object") from None
    return key.strip(), value


def rechunk(args: argparse.Namespace) -> int:
    """Plan and run ``dask_lsio.rechunk`` for the parsed command line ``args``; print the
    plan (``--dry-run``) or a progress bar and a summary. Errors of the copy exit with 1 and
    one line (the traceback too with ``--verbose``)."""
    import time
    import traceback

    if args.workers and args.scheduler:
        args.usage_error("argument --workers: the threads of the local scheduler; with "
                         "--scheduler the cluster's workers run the tasks")
    chunks = _combine(args.chunks, "--chunks", args.usage_error)
    shards = _combine(args.shards, "--shards", args.usage_error) if args.shards else None
    options = dict(args.storage_options) or None
    client = None
    try:
        import dask_lsio

        if args.scheduler:
            from distributed import Client

            client = Client(args.scheduler)
            client.register_plugin(dask_lsio.LSIOWorkerPlugin())
        with dask.config.set(num_workers=args.workers) if args.workers else nullcontext():
            plan = dask_lsio.rechunk(
                args.source, chunks, args.target, args.max_mem, temp=args.temp,
                shards=shards, compressors=args.compressor, zarr_format=args.zarr_format,
                overwrite=args.overwrite, storage_options=options)
            if args.dry_run:
                print(repr(plan))
                return 0
            start = time.perf_counter()
            node = _run_plan(plan, client, args.workers)
            seconds = time.perf_counter() - start
        print()
        print(_summary(args, plan, node, seconds, distributed=client is not None))
        return 0
    except KeyboardInterrupt:
        again = "it again without --overwrite" if args.overwrite else "the same command again"
        print(f"dask-lsio rechunk: interrupted; run {again} to resume (the complete target "
              f"chunks are kept)", file=sys.stderr)
        return 130
    except Exception as e:  # dask-lsio, zarr, the store, the scheduler: one line
        if args.verbose:
            traceback.print_exc()
        print(f"dask-lsio rechunk: error: {_error_line(e)}", file=sys.stderr)
        return 1
    finally:
        if client is not None:
            client.close()


def _error_line(e: BaseException) -> str:
    import zarr.errors

    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text += f": {e.filename}"
    if isinstance(e, (zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError)):
        text += " (--overwrite replaces it)"
    return text


def _run_plan(plan: Any, client: Any, workers: int | None) -> Any:
    """Run ``plan`` with a progress bar; return the target zarr-python opens."""
    if client is None:
        from dask.diagnostics import ProgressBar

        kwargs: dict[str, Any] = {"scheduler": "threads"}
        if workers:
            kwargs["num_workers"] = workers
        with ProgressBar():
            return plan.execute(**kwargs)
    from distributed import progress

    future = client.compute(plan)
    progress(future)
    return future.result()


#: the metadata objects of a Zarr hierarchy (not chunks)
METADATA = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


def _stored(plan: Any, node: Any) -> tuple[int, int, int]:
    """(decoded bytes, stored bytes, chunk or shard objects) of the target of ``plan``, the
    zarr.Array or zarr.Group ``node``."""
    import zarr

    arrays = [node] if isinstance(node, zarr.Array) else [
        a for _, a in node.members(max_depth=None) if isinstance(a, zarr.Array)]
    objects = sum(key.rsplit("/", 1)[-1] not in METADATA for key in plan.target_store.list())
    return (sum(a.nbytes for a in arrays), sum(a.nbytes_stored() for a in arrays), objects)


def _summary(args: argparse.Namespace, plan: Any, node: Any, seconds: float,
             distributed: bool) -> str:
    """The table printed after a run."""
    import resource

    from dask.utils import format_bytes

    nbytes, stored, objects = _stored(plan, node)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    stages = plan.stages
    two = len({st.array for st in stages}) < len(stages)  # an array in two passes
    skipped = f" ({plan.skipped:,} done by an earlier run: skipped)" if plan.skipped else ""
    rows = [("source", args.source),
            ("target", args.target),
            ("plan", f"{len(stages)} stage{'s' if len(stages) > 1 else ''}"
                     f"{' (through temp)' if two else ''}, {plan.tasks:,} tasks{skipped}, "
                     f"{format_bytes(plan.memory_per_task)} per task"),
            ("array data", f"{format_bytes(nbytes)} ({nbytes:,} bytes, decoded)"),
            ("stored", f"{format_bytes(stored)} ({stored:,} bytes)"),
            ("chunks", f"{objects:,} objects"),
            ("seconds", f"{seconds:.2f}"),
            ("throughput", f"{nbytes / 1e9 / max(seconds, 1e-9):.3g} GB/s of array data"
                           f"{' (resumed: partly copied before)' if plan.skipped else ''}"),
            ("peak memory", f"{format_bytes(peak)} (this process"
                            f"{'; the workers run elsewhere' if distributed else ''}, "
                            f"max_mem {format_bytes(args.max_mem)})")]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
