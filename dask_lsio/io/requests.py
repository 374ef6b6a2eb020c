"""Plain request types of the IO layer.

Byte ranges follow zarr's conventions (``RangeByteRequest``, ``SuffixByteRequest``): an
offset and a length, ``length=None`` reading to the end of the file, and a negative offset
with ``length=None`` reading the last ``-offset`` bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]
# the name ending of a write's temporary object, beside the object (``.<name>.<token>...``)
TEMP_SUFFIX = ".lsio-tmp"


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Read ``length`` bytes of ``path`` at ``offset``.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.
    offset : int, default 0
        First byte; with ``length=None`` a negative offset reads the last ``-offset`` bytes.
    length : int or None, default None
        Bytes to read; None reads to the end of the file. Ranges past the end of the file
        return the bytes that exist (possibly none), as ``os.pread`` does.
    """

    path: PathLike
    offset: int = 0
    length: int | None = None

    def __post_init__(self) -> None:
        if self.length is not None:
            if self.length < 0:
                raise ValueError(f"ReadRequest length must be >= 0 or None, got {self.length}")
            if self.offset < 0:
                raise ValueError(
                    "a negative ReadRequest offset means a suffix and needs length=None, "
                    f"got offset={self.offset}, length={self.length} for {self.path!r}"
                )
