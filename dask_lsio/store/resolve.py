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
from .object_options import SCHEMES
from .object_store import ObjectStore


def open_store(url: Any, storage_options: Mapping[str, Any] | None = None) -> Store:
    """The store of ``url``, rooted where it points.

    Parameters
    ----------
    url : str, os.PathLike, Store, zarr.storage.LocalStore, zarr.storage.MemoryStore, zarr.storage.ObjectStore, zarr.storage.FsspecStore, zarr.storage.StorePath or zarr.Array
        A path or ``file://`` URL; an object-store URL (``s3://``, ``gs://``, ``az://``,
        ``abfs://``, ``http(s)://``); a store object (zarr-python's ``ObjectStore`` and
        s3fs/gcsfs/adlfs ``FsspecStore`` map to our object-store backend); a ``StorePath``
        or an array (the store rooted at its path).
    storage_options : mapping, optional
        Options of an object store given by URL (fsspec's names or obstore's; see
        :class:`~dask_lsio.store.ObjectStore`). Local and memory stores have none: any
        given raise TypeError.

    Raises
    ------
    UnsupportedStoreError
        For stores dask-lsio has no backend for (the message names the kind).
    """
    import zarr

    if isinstance(url, (str, os.PathLike)) and _scheme(url) in SCHEMES:
        return ObjectStore(os.fspath(url), storage_options)
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
    if type(url) is zarr.storage.ObjectStore:
        return from_obstore(url.store)
    if type(url) is zarr.storage.FsspecStore and _fsspec_scheme(url.fs) in SCHEMES:
        try:
            return ObjectStore(f"{_fsspec_scheme(url.fs)}://{url.path}",
                               url.fs.storage_options)
        except TypeError as e:  # an fsspec setting obstore has no counterpart for
            raise UnsupportedStoreError(f"{describe_store(url)} with {e}") from e
    if not isinstance(url, (str, os.PathLike)):
        raise UnsupportedStoreError(describe_store(url))
    path = os.fspath(url)
    if "://" not in path:  # a plain path (which may hold a colon)
        return LocalStore(path)
    parsed = urlparse(path)
    if parsed.scheme == "file":
        return LocalStore(parsed.path)
    raise UnsupportedStoreError(describe_store(path))


def _scheme(url: Any) -> str:
    path = os.fspath(url)
    return urlparse(path).scheme.lower() if "://" in path else ""


def _fsspec_scheme(fs: Any) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "s3" if protocol in ("s3", "s3a") else protocol


def from_obstore(store: Any) -> ObjectStore:
    """Our store on the same objects as an obstore store (its configuration, not its
    client: ours has our timeouts and retries). Stores given a credential provider, whose
    credentials cannot be carried to other processes, raise UnsupportedStoreError."""
    from obstore.store import AzureStore, GCSStore, HTTPStore, S3Store

    if getattr(store, "credential_provider", None) is not None:
        raise UnsupportedStoreError("obstore stores with a credential_provider")
    if isinstance(store, HTTPStore):
        return ObjectStore(store.url)
    kinds = {S3Store: ("s3", "bucket"), GCSStore: ("gs", "bucket"),
             AzureStore: ("az", "container_name")}
    for kind, (scheme, field) in kinds.items():
        if isinstance(store, kind):
            opts = {k: v for k, v in (store.config or {}).items() if k != field}
            root = (store.config or {}).get(field)
            break
    else:
        raise UnsupportedStoreError(describe_store(store))
    if not root:
        raise UnsupportedStoreError(f"{describe_store(store)} without a bucket name")
    url = f"{scheme}://{root}/{store.prefix or ''}".rstrip("/")
    return ObjectStore(url, opts)


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
        scheme = _scheme(store)
        return f"{scheme}:// URLs" if scheme and scheme != "file" else "local paths"
    kind = type(store)
    module = "zarr.storage" if kind.__module__.startswith("zarr.storage") else kind.__module__
    return f"a {module}.{kind.__name__}"
