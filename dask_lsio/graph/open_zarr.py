"""``dask_lsio.open_zarr``: ``xarray.open_zarr`` whose data variables read through dask-lsio.

xarray opens the store undecoded (coordinates, attributes, encodings, dimension names all
exactly as it reads them), each data variable's data is replaced by a
:func:`~dask_lsio.from_zarr` array of the same Zarr array (coarse blocks, slices pushed down),
and xarray's own CF decoding then runs lazily on top (masking, scale and offset, times), so the
result matches ``xarray.open_zarr`` on the same store.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from .. import config
from ..errors import UnsupportedStoreError
from ..store import ObjectStore, open_store
from .from_zarr import from_zarr


def open_zarr(
    store: Any,
    group: str | None = None,
    chunks: Any = "auto",
    decode_cf: bool = True,
    mask_and_scale: bool = True,
    decode_times: Any = True,
    concat_characters: bool = True,
    decode_coords: Any = True,
    drop_variables: Any = None,
    storage_options: dict | None = None,
    **kwargs: Any,
) -> Any:
    """Open a Zarr store as an ``xarray.Dataset`` whose data variables are dask_lsio arrays.

    Same arguments and result as :func:`xarray.open_zarr` (xarray is an optional dependency:
    ``pip install dask-lsio[xarray]``).

    Parameters
    ----------
    store : str, os.PathLike, zarr.storage.LocalStore or zarr.storage.ObjectStore
        A local path or ``file://`` URL, an object-store URL (``s3://``, ``gs://``,
        ``az://``, ``http(s)://``), or a zarr store :func:`dask_lsio.store.open_store`
        takes, of a Zarr group (other stores are opened by :func:`xarray.open_zarr` alone,
        with a warning).
    group : str, optional
        The group inside ``store``.
    chunks : "auto", None, int or dict, optional
        Blocks of the data variables: "auto" / None / {} give dask_lsio's default blocks
        (whole shards or chunks of about ``array.chunk-size``); an int or a ``{dim: size}``
        dict gives those sizes (-1: the whole dimension; dims not named: default).
    decode_cf, mask_and_scale, decode_times, concat_characters, decode_coords, drop_variables
        As in :func:`xarray.open_zarr`.
    storage_options : dict, optional
        Options of an object store given by URL: credentials, ``endpoint_url``, ``anon``
        ... (see :func:`dask_lsio.from_zarr`).
    **kwargs
        Passed to :func:`xarray.open_zarr` (``consolidated``, ``zarr_format`` ...).

    Returns
    -------
    xarray.Dataset
    """
    import xarray as xr

    try:
        base = open_store(store, storage_options)
    except UnsupportedStoreError as e:
        if config.get("strict"):
            raise
        warnings.warn(f"{e}: opening {store!r} with xarray.open_zarr (correct, slower)",
                      stacklevel=2)
        return xr.open_zarr(store, group=group, chunks=chunks, decode_cf=decode_cf,
                            mask_and_scale=mask_and_scale, decode_times=decode_times,
                            concat_characters=concat_characters, decode_coords=decode_coords,
                            drop_variables=drop_variables, storage_options=storage_options,
                            **kwargs)
    # the metadata through zarr-python on the same objects (for URLs: on our client)
    where, group = _zarr_place(store, base, group)
    raw = xr.open_zarr(where, group=group, chunks=None, decode_cf=False,
                       drop_variables=drop_variables, **kwargs)
    for name, var in raw.data_vars.items():
        component = f"{group.strip('/')}/{name}" if group else str(name)
        data = from_zarr(base, component=component, chunks=_blocks(chunks, var.dims, var.shape))
        raw[name] = var.copy(data=data)
    # where it was read from (dask_lsio.rechunk copies a dataset from there)
    raw.encoding.update(source=base.url, group=group)
    if not decode_cf:
        return raw
    ds = xr.decode_cf(raw, mask_and_scale=mask_and_scale, decode_times=decode_times,
                      concat_characters=concat_characters, decode_coords=decode_coords)
    ds.encoding.update(raw.encoding)
    return ds


def _zarr_place(store: Any, base: Any, group: str | None) -> tuple[Any, str | None]:
    """What xarray opens for ``store`` and the group in it: object-store URLs become the
    zarr store of our store (xarray would make another client, from fsspec)."""
    if not isinstance(base, ObjectStore) or not isinstance(store, (str, os.PathLike)):
        return store, group
    return base.zarr_target.store, group


def _blocks(chunks: Any, dims: tuple, shape: tuple[int, ...]) -> Any:
    """from_zarr's ``chunks`` for a variable from open_zarr's ``chunks`` argument."""
    if chunks in ("auto", None) or chunks == {}:
        return None
    if isinstance(chunks, int):
        return tuple(min(chunks, n) if chunks > 0 else n for n in shape)
    if isinstance(chunks, dict):
        if not any(d in chunks for d in dims):
            return None
        return tuple(_size(chunks.get(d), n) for d, n in zip(dims, shape))
    raise ValueError(f"chunks must be 'auto', None, an int or a dict of dims; got {chunks!r}")


def _size(value: Any, n: int) -> Any:
    if value is None:
        return "auto"
    return n if value == -1 else value
