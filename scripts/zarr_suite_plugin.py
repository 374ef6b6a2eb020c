"""pytest plugin for scripts/zarr-suite.sh: counts the reads and writes that
LSIOCodecPipeline handled itself and those it handed to zarr-python's pipeline."""

import pipeline_counts

pipeline_counts.install()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(pipeline_counts.summary())
