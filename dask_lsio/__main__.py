"""``python -m dask_lsio info``: the version, the active engine and, if not io_uring, why."""

from __future__ import annotations

import argparse
import sys

import dask.config


def info() -> int:
    import dask_lsio
    from dask_lsio.io import get_engine, uring_status

    st = uring_status()
    wanted = dask.config.get("lsio.engine")
    lines = [
        f"dask-lsio {dask_lsio.__version__}",
        f"python {sys.version.split()[0]}, kernel {st.kernel}, "
        f"kernel.io_uring_disabled={st.io_uring_disabled}",
        f"lsio.engine: {wanted}",
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
            f"{'on' if flags & (1 << 12) else 'off (kernel too old)'}"
        )
    else:
        lines.append(f"threads: {engine.threads}")
    lines.append(f"io_uring: {'available' if st.available else 'not used'} ({st.reason})")
    lines.append(f"decode: {_decode_path(engine)}")
    lines.append(f"direct IO: {engine.direct_io}")
    for key in ("read-size-hint", "batch-bytes", "buffer-pool-bytes", "fsync"):
        lines.append(f"lsio.{key}: {dask.config.get('lsio.' + key)}")
    print("\n".join(lines))
    return 0


def _decode_path(engine) -> str:
    """Which decoder reads chunks, and why not the C kernel when it is not."""
    from dask_lsio.zarr import _kernel

    if _kernel.lib is None:
        return ("numcodecs (built without the decode kernel: apt-get install libblosc-dev "
                "liblz4-dev libzstd-dev zlib1g-dev, then reinstall dask-lsio)")
    if not _kernel.engine_runs_hooks(engine):
        return "numcodecs (the C decode kernel runs inside io_uring batches only)"
    return "C kernel for blosc, zstd, gzip/zlib and uncompressed chunks; numcodecs otherwise"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dask_lsio")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, active engine, and why io_uring is not used")
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    return 2


if __name__ == "__main__":
    sys.exit(main())
