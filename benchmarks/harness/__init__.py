"""The benchmarks' shared harness: what every ``benchmarks/bench_*.py`` script uses.

A benchmark script says what it measures (its readers or writers, workloads, checks); the
harness does the rest the same way for all of them:

``args``       the common command line (``--quick``, ``--tiny``, ``--repeats``, ``--no-cold``,
               ``--data-dir``, ``--json``, ``--baseline``), the cache states, reader lists
``cache``      dropping the page cache (root only) and pre-reading datasets
``sides``      which dask_lsio a worker imports: this checkout's, or a baseline checkout's
               (``--baseline``), and the ``reader@baseline`` names of its twins
``workers``    worker processes: persistent ones served over a pipe, and one-shot runs
``memory``     a worker's peak RSS per run; warming the memory a run will allocate
``cpu``        the machine's busy cores during a run (all of them, and the kernel's part)
``peers``      which optional peers (zarrs, tensorstore, fio) are installed, and notes on
               those that are not
``results``    ``Run`` and ``Result`` records, lookups and ratios between rows
``report``     tables, the "done when" ``Check`` lines, run metadata, the JSON file
``chart``      the bar chart saved beside the JSON
``fio``        fio over a set of files: the IO ceiling of the IO and read benchmarks
``zarr_data``  the Zarr datasets A, B, C that the read, crops, cluster, write and cloud
               benchmarks use
``s3_server``  a SeaweedFS S3 server on loopback (the cloud benchmark's), its request counter
``latency_proxy`` a loopback TCP proxy that delays every answer (latency without netem)

The scripts run as ``python benchmarks/bench_NAME.py``, so this package is importable as
``harness`` (the script's folder is first on ``sys.path``).
"""
