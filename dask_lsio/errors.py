"""Exception types of dask-lsio.

IO failures are the builtin ``OSError`` subclasses (``FileNotFoundError``, ``PermissionError``
...) with ``errno`` and ``filename`` set and the operation and byte range in the message and in
the ``operation``, ``offset`` and ``length`` attributes. A batch with failures raises them
together as a :class:`BatchIOError`.
"""

from __future__ import annotations

import os

import zarr.errors


class LSIOError(Exception):
    """Base class of the errors raised by dask-lsio itself."""


class ArrayNotFoundError(LSIOError, zarr.errors.ArrayNotFoundError):
    """No Zarr array where one was asked for. The message names the place.

    Also zarr-python's ``ArrayNotFoundError`` (so a ``FileNotFoundError`` and a
    ``ValueError``), which is what ``zarr.open_array`` and ``dask.array.from_zarr`` raise:
    code written for them catches it.
    """

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)


class EngineUnavailableError(LSIOError, RuntimeError):
    """An engine was asked for explicitly and cannot run here; the message says why."""


class BatchIOError(ExceptionGroup, LSIOError):
    """Some requests of a batch failed; ``exceptions`` holds one ``OSError`` per failure."""

    def derive(self, excs):  # keeps the type through except* and split()
        return BatchIOError(self.message, excs)


class UnsupportedCodecError(LSIOError, NotImplementedError):
    """The array uses a codec, data type or layout that dask-lsio does not decode itself.

    ``from_zarr`` then reads that array through zarr-python (with one warning), or raises
    this error when ``lsio.strict`` is true.
    """

    def __init__(self, what: str, codec: str | None = None, array: str | None = None) -> None:
        super().__init__(f"dask-lsio does not decode {what}")
        self.what = what
        self.codec = codec
        self.array = None
        if array:
            self.name_array(array)

    def name_array(self, array: str) -> None:
        """Say which array this is about (once; the message then names it)."""
        if self.array is None:
            self.array = array
            self.args = (f"{self.args[0]} (the Zarr array at {array!r})",)


class UnsupportedStoreError(UnsupportedCodecError):
    """The array lives in a store that dask-lsio does not read or write itself (yet): an
    fsspec store, a remote URL, a memory store on a cluster ... The message names it.

    Caught like :class:`UnsupportedCodecError`: the front ends then go through zarr-python
    or dask (with one warning), or raise when ``lsio.strict`` is true.
    """

    def __init__(self, what: str) -> None:
        LSIOError.__init__(self, f"dask-lsio does not read or write {what} itself")
        self.what = what
        self.codec = None
        self.array = None


class VersionConflictError(LSIOError, OSError):
    """A conditional write or read found another version of the object than the one it was
    made for: another writer changed it meanwhile. Read-modify-writes are retried on it."""


class ChunkDecodeError(LSIOError, ValueError):
    """A stored chunk is corrupt or truncated: the message names its key and the codecs."""

    def __init__(self, key: str, codecs: str, reason: str) -> None:
        super().__init__(f"cannot decode chunk {key!r} (codecs {codecs}): {reason}")
        self.key = key
        self.codecs = codecs


def io_error(
    err: int,
    path: str,
    operation: str,
    offset: int | None = None,
    length: int | None = None,
) -> OSError:
    """An ``OSError`` of the subclass matching ``err`` that names the path and byte range.

    Parameters
    ----------
    err : int
        A positive errno.
    path : str
        The object the request was about.
    operation : str
        What failed, e.g. ``"open"``, ``"read"``, ``"rename"``.
    offset, length : int, optional
        The byte range of a read; a negative offset with no length is a suffix.
    """
    where = _describe_range(offset, length)
    exc = OSError(err, f"{os.strerror(err)} ({operation}{where})", path)
    exc.operation = operation
    exc.offset = offset
    exc.length = length
    return exc


def _describe_range(offset: int | None, length: int | None) -> str:
    if offset is None:
        return ""
    if length is None:
        return f", last {-offset} bytes" if offset < 0 else f", bytes {offset}-EOF"
    return f", bytes {offset}-{offset + length}"
