"""fio over a set of files: the IO ceiling of the IO and read benchmarks.

fio reads every file once with io_uring, one read per file (see :func:`fio_job`): the same
files in the same page cache state through the same kernel interface, without Python.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .results import Run

PAGE = 4096
FIO_IODEPTH = 64


@dataclass(frozen=True, eq=False)
class FileSet:
    """Files fio reads once each.

    Parameters
    ----------
    name : str
        Names its job files (a dataset's folder name).
    root : Path
        The folder the paths are under (fio's ``directory``).
    paths : list of str
    sizes : numpy.ndarray
        Each file's size in bytes.
    """

    name: str
    root: Path
    paths: list[str]
    sizes: np.ndarray


def fio_job(ds: FileSet, direct: bool, jobs: int) -> str:
    """A fio job file that reads every file of ``ds`` exactly once, one read per file.

    fio has no "read to EOF": a job reads each file in blocks of ``bs`` and skips a last
    block that does not fit, so a job with ``bs`` above a file's size reads nothing of it.
    Files are therefore grouped by their size rounded down to 4 KiB and every job gets
    files of one group, with ``bs`` = that size: one read per file, like the engines' one
    read per file; only the sub-page tails are not read (< 4 KiB per file: ~4% of (a),
    nothing of (b)). fio opens, reads and closes files in one thread per job, which is
    what limits it on small files, so each group is split in shards to give about
    ``jobs`` (one per core) jobs that all run at once, each with ``iodepth`` reads in
    flight. A job's files are listed as several ``filename=`` lines (they add up; one value
    may not exceed 4096 characters), relative to ``directory``.

    Why it is a fair ceiling: the same files in the same page cache state, the same kernel
    interface (io_uring; O_DIRECT when cold, so no page cache copy), at least as many
    threads as cores, and no Python, no buffers handed to a caller, no tail reads. It errs
    in fio's favour: its clock starts after its setup stat()ed every file (so a cold run
    finds the inodes already read: fio's wall time is well above its runtime) and it reads
    up to 4 KiB less per file.
    """
    groups: dict[int, list[str]] = {}
    for path, size in zip(ds.paths, ds.sizes.tolist()):
        groups.setdefault(size // PAGE * PAGE, []).append(os.path.relpath(path, ds.root))
    lines = [
        "[global]",
        f"directory={ds.root}",
        "ioengine=io_uring",
        "rw=read",
        f"iodepth={FIO_IODEPTH}",
        f"direct={int(direct)}",
        "invalidate=0",  # fio would otherwise evict the files before a warm run
        "fadvise_hint=0",  # the engines give no hints either
        f"openfiles={4 * FIO_IODEPTH}",  # files are opened during the run, as the engines do
        "gtod_reduce=1",  # no per-IO latency clock reads: fio's cheapest accounting
        "allow_file_create=0",
        "thread",
    ]
    for size, names in sorted(groups.items()):
        # (no more shards than files: a job without files is an error to fio)
        shards = min(len(names), max(1, round(jobs * len(names) / len(ds.paths))))
        for k in range(shards):
            part = names[k::shards]
            lines += [f"[f{size}-{k}]", f"bs={size}", f"nrfiles={len(part)}"]
            for lo in range(0, len(part), 200):
                lines.append("filename=" + ":".join(part[lo : lo + 200]))
    return "\n".join(lines) + "\n"


def fio_expected_bytes(ds: FileSet) -> int:
    """What :func:`fio_job` reads: every file rounded down to whole pages."""
    return int((ds.sizes // PAGE * PAGE).sum())


class FioReader:
    """fio on the same files; a run returns fio's own io_bytes and runtime.

    Parameters
    ----------
    workdir : Path
        Where the job files are written.
    jobs : int
        About how many fio jobs (threads) run at once.
    """

    name = "fio"

    def __init__(self, workdir: Path, jobs: int) -> None:
        self.workdir = workdir
        self.jobs = jobs
        self.njobs: dict[str, int] = {}
        self.command: dict[str, str] = {}
        self.job_head = ""
        workdir.mkdir(parents=True, exist_ok=True)
        self._written: set[Path] = set()

    def run(self, ds: FileSet, direct: bool) -> Run:
        """Run fio once over ``ds``; check it read every file once, as expected."""
        job = self.workdir / f"{ds.name}-direct{int(direct)}.fio"
        if job not in self._written:  # rewritten once per benchmark: the dataset may be new
            text = fio_job(ds, direct, self.jobs)
            job.write_text(text)
            self._written.add(job)
            self.job_head = text.split("\n[f")[0]
            self.njobs[job.name] = text.count("\n[f")
        cmd = ["fio", "--readonly", "--output-format=json", str(job)]
        self.command[job.name] = " ".join(cmd)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"fio failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
        report = json.loads(proc.stdout[proc.stdout.index("{") :])
        jobs = report["jobs"]
        nbytes = sum(j["read"]["io_bytes"] for j in jobs)
        ios = sum(j["read"]["total_ios"] for j in jobs)
        seconds = max(j["read"]["runtime"] for j in jobs) / 1e3  # ms; the jobs run at once
        errors = [j["jobname"] for j in jobs if j.get("error")]
        if errors or ios != len(ds.paths) or nbytes != fio_expected_bytes(ds):
            raise RuntimeError(
                f"fio read {nbytes} bytes in {ios} reads, expected {fio_expected_bytes(ds)} "
                f"in {len(ds.paths)} (job errors: {errors})"
            )
        return Run(seconds, nbytes, count=ios)

    def describe(self) -> list[str]:
        """How fio was run: the common job settings and each command line."""
        head = " ".join(  # without [global], directory= and direct=
            x for x in self.job_head.split("\n")[2:] if not x.startswith("direct=")
        )
        lines = [
            "fio: one job per shard of each file-size group (bs = size rounded down to 4 KiB),",
            f"     all jobs of a job file at once, direct=0 warm / direct=1 cold; {head}",
        ]
        for name, cmd in self.command.items():
            lines.append(f"  {cmd}    # {self.njobs[name]} jobs")
        return lines

    def info(self) -> dict:
        """fio's version and how it was run, for the JSON file."""
        version = subprocess.run(["fio", "--version"], capture_output=True, text=True)
        return {
            "version": version.stdout.strip(), "commands": self.command,
            "jobs_per_file": self.njobs, "global": self.job_head,
        }
