"""One resolver from what users pass (a path, a URL, a zarr-python store, a ``StorePath`` or
a ``zarr.Array``) to a :class:`~dask_lsio.store.Store`.

Every front end resolves stores here, so a kind of store that works for one works for all.
What has no backend raises :class:`~dask_lsio.UnsupportedStoreError` naming it; front ends
then fall back to zarr-python with a warning.
"""

from __future__ import annotations

import os
from typing import Any, Mapping
from urllib.parse import urlparse

from ..errors import UnsupportedStoreError
from .base import Store
from .local import LocalStore
from .memory import MemoryStore


def open_store(url: Any, storage_options: Mapping[str, Any] | None = None) -> Store:
    """The store of ``url``, rooted where it points.

    Parameters
    ----------
    url : str, os.PathLike, Store, zarr.storage.LocalStore, zarr.storage.MemoryStore, zarr.storage.StorePath or zarr.Array
        A path or ``file://`` URL; a store object; a ``StorePath`` or an array (the store
        rooted at its path).
    storage_options : mapping, optional
        Options of the store's backend (none exist for local and memory stores: any given
        raise TypeError).

    Raises
    ------
    UnsupportedStoreError
        For stores dask-lsio has no backend for (the message names the kind).
    """
    import zarr

    if storage_options:
        raise TypeError(f"storage_options {sorted(storage_options)} do not apply to "
                        f"{describe_store(url)}")
    if isinstance(url, Store):
        return url
    if isinstance(url, zarr.Array):
        return open_store(url.store_path)
    if isinstance(url, zarr.storage.StorePath):
        store = open_store(url.store)
        return store.child(url.path) if url.path else store
    # these very classes only: a subclass may change what reading or writing means (zarr's
    # own tests count accesses through one; GpuMemoryStore holds device buffers)
    if type(url) is zarr.storage.LocalStore:
        return LocalStore(str(url.root))
    if type(url) is zarr.storage.MemoryStore and hasattr(url, "_store_dict"):
        return MemoryStore.from_zarr(url)
    if not isinstance(url, (str, os.PathLike)):
        raise UnsupportedStoreError(describe_store(url))
    path = os.fspath(url)
    if "://" not in path:  # a plain path (which may hold a colon)
        return LocalStore(path)
    parsed = urlparse(path)
    if parsed.scheme == "file":
        return LocalStore(parsed.path)
    raise UnsupportedStoreError(describe_store(path))


def cleanup(url: Any, component: str | None = None, older_than: float | None = None,
            storage_options: Mapping[str, Any] | None = None) -> int:
    """Remove what interrupted writers left in the array or group at ``url``/``component``:
    temporary objects and lock files no writer holds, older than ``older_than`` seconds
    (default ``lsio.stale-after``). Returns how many were removed.

    ``dask_lsio.to_zarr`` does this for the array it writes; readers never see these
    objects either way (they are hidden names no Zarr key uses).
    """
    store = open_store(url, storage_options)
    return (store.child(component) if component else store).cleanup(older_than)


def zarr_view(url: Any) -> Any:
    """What zarr-python (and dask's fallbacks) open for ``url``: a Store of ours becomes its
    ``zarr_target``; anything else is zarr-python's already."""
    return url.zarr_target if isinstance(url, Store) else url


def describe_store(store: Any) -> str:
    """What a store is, for messages: ``"a zarr.storage.ZipStore"``, ``"s3:// URLs"``."""
    import zarr

    if isinstance(store, zarr.Array):
        return f"arrays in {describe_store(store.store_path.store)}"
    if isinstance(store, zarr.storage.StorePath):
        return describe_store(store.store)
    if isinstance(store, (str, os.PathLike)):
        scheme = urlparse(os.fspath(store)).scheme
        return f"{scheme}:// URLs" if scheme and scheme != "file" else "local paths"
    kind = type(store)
    module = "zarr.storage" if kind.__module__.startswith("zarr.storage") else kind.__module__
    return f"a {module}.{kind.__name__}"
