"""What an object-store URL and its ``storage_options`` mean to obstore.

Users pass the options they already pass to dask and fsspec (s3fs, gcsfs, adlfs names:
``key``, ``secret``, ``token``, ``anon``, ``endpoint_url``, ``region``, ``client_kwargs``)
or obstore's own configuration keys; both become one :class:`Target`: the backend, the
bucket (or container, or base URL), the prefix within it, and obstore's configuration.
An option that means nothing to the backend raises TypeError naming it, so that a typo
does not silently read anonymously.

Credentials are held as :class:`Secret` values: they compare and hash by value but never
show in a repr, a dask token, a task key or a message. They travel to other processes with
the store when ``lsio.store.send-credentials`` is true (the default); when false, stores
pickle without them and each worker uses its own environment's credential chain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlparse

from .. import config

SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure",
           "abfs": "azure", "abfss": "azure", "azure": "azure", "http": "http", "https": "http"}

# fsspec's names -> obstore's, per backend (None: accepted, no obstore counterpart needed)
_ALIASES: dict[str, dict[str, str | None]] = {
    "s3": {"key": "access_key_id", "secret": "secret_access_key", "token": "session_token",
           "endpoint_url": "endpoint", "region": "region", "region_name": "region",
           "requester_pays": "request_payer", "profile": None},
    "gcs": {"endpoint_url": "base_url", "project": None},
    "azure": {"account_name": "account_name", "account_key": "account_key",
              "sas_token": "sas_key", "connection_string": None},
    "http": {},
}
# obstore's own keys each backend accepts as they are (its S3Config, GCSConfig, AzureConfig)
_NATIVE: dict[str, set[str]] = {
    "s3": {"access_key_id", "secret_access_key", "session_token", "region", "endpoint",
           "skip_signature", "virtual_hosted_style_request", "request_payer",
           "checksum_algorithm", "conditional_put", "default_region", "role_arn",
           "role_session_name", "web_identity_token_file", "sts_endpoint", "unsigned_payload",
           "server_side_encryption", "sse_kms_key_id", "sse_bucket_key_enabled",
           "disable_tagging", "metadata_endpoint", "copy_if_not_exists"},
    "gcs": {"service_account", "service_account_key", "application_credentials",
            "bearer_token", "base_url", "skip_signature"},
    "azure": {"account_name", "account_key", "client_id", "client_secret", "tenant_id",
              "authority_host", "sas_key", "token", "use_emulator", "use_fabric_endpoint",
              "endpoint", "msi_endpoint", "object_id", "msi_resource_id",
              "federated_token_file", "use_azure_cli", "skip_signature", "disable_tagging",
              "encryption_key"},
    "http": set(),
}
# fsspec's own settings (its instance and listings caches, its event loop): nothing to obstore
_FSSPEC_ONLY = {"skip_instance_cache", "use_listings_cache", "listings_expiry_time",
                "max_paths", "asynchronous", "loop", "default_block_size", "default_fill_cache",
                "default_cache_type", "auto_mkdir", "cache_regions"}
_SECRET_KEYS = {"access_key_id", "secret_access_key", "session_token", "service_account_key",
                "bearer_token", "account_key", "client_secret", "sas_key", "token",
                "encryption_key", "headers"}


class Secret:
    """A credential: equal and hashed by value, shown as ``***``.

    Pickles with its value when ``lsio.store.send-credentials`` is true, else as an empty
    secret (the receiving process then uses its own credential chain)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.value == self.value

    def __hash__(self) -> int:
        return hash(repr(self.value))

    def __dask_tokenize__(self) -> str:
        # a one-way digest: tokens (and the task keys made of them) must not hold the value
        return hashlib.sha256(repr(self.value).encode()).hexdigest()

    def __reduce__(self) -> tuple:
        send = bool(config.get("store.send-credentials"))
        return (Secret, (self.value if send else None,))


@dataclass(frozen=True)
class Target:
    """One place in an object store, as obstore is told it.

    Attributes
    ----------
    backend : str
        ``"s3"``, ``"gcs"``, ``"azure"`` or ``"http"``.
    root : str
        The bucket or container (``"http"``: the base URL).
    prefix : str
        The path within it, without slashes at either end.
    options : tuple of (str, Any)
        obstore configuration (sorted; credentials as :class:`Secret`).
    headers : tuple of (str, Secret)
        HTTP headers sent with every request (may hold an Authorization header).
    """

    backend: str
    root: str
    prefix: str
    options: tuple[tuple[str, Any], ...] = ()
    headers: tuple[tuple[str, Any], ...] = ()

    @property
    def url(self) -> str:
        """Where it is, for messages (no credentials)."""
        if self.backend == "http":
            return self.root.rstrip("/") + ("/" + self.prefix if self.prefix else "")
        scheme = {"s3": "s3", "gcs": "gs", "azure": "az"}[self.backend]
        return f"{scheme}://{self.root}" + ("/" + self.prefix if self.prefix else "")

    def child(self, prefix: str) -> Target:
        joined = "/".join(p for p in (self.prefix, prefix.strip("/")) if p)
        return Target(self.backend, self.root, joined, self.options, self.headers)

    def config(self) -> dict[str, Any]:
        """obstore's configuration, credentials revealed (only ever given to obstore)."""
        return {k: (v.value if isinstance(v, Secret) else v) for k, v in self.options
                if not (isinstance(v, Secret) and v.value is None)}


def parse(url: str, storage_options: Mapping[str, Any] | None = None) -> Target:
    """The :class:`Target` of an object-store URL and fsspec-style ``storage_options``.

    Raises
    ------
    TypeError
        For an option the backend does not know (the message names it, never its value).
    ValueError
        For a URL without a bucket.
    """
    parsed = urlparse(url)
    backend = SCHEMES[parsed.scheme.lower()]
    opts = dict(storage_options or {})
    headers: dict[str, Any] = {}
    if backend == "http":
        root = f"{parsed.scheme}://{parsed.netloc}"
        prefix = parsed.path.strip("/")
        headers = dict(opts.pop("headers", None) or {})
    elif backend == "azure" and "@" in parsed.netloc:  # abfs://container@account.dfs...
        root, host = parsed.netloc.split("@", 1)
        opts.setdefault("account_name", host.split(".")[0])
        prefix = parsed.path.strip("/")
    else:
        root, prefix = parsed.netloc, parsed.path.strip("/")
    if not root:
        raise ValueError(f"{url!r} names no bucket")
    out: dict[str, Any] = {}
    client_kwargs = opts.pop("client_kwargs", None) or {}
    for name, value in list(client_kwargs.items()) + list(opts.items()):
        _take(backend, name, value, out, url)
    if backend == "s3":
        out.setdefault("conditional_put", "etag")  # If-Match writes (read-modify-write)
        if str(out.get("endpoint", "")).startswith("http://"):
            out["_allow_http"] = True
    elif backend == "gcs" and str(out.get("base_url", "")).startswith("http://"):
        out["_allow_http"] = True
    options = tuple(sorted((k, Secret(v) if k in _SECRET_KEYS else v) for k, v in out.items()))
    return Target(backend, root, prefix, options,
                  tuple(sorted((k, Secret(v)) for k, v in headers.items())))


def _take(backend: str, name: str, value: Any, out: dict[str, Any], url: str) -> None:
    """Put the option ``name`` into obstore's configuration ``out``."""
    if name == "anon":
        if value:
            out["skip_signature"] = True
        return
    if name in _FSSPEC_ONLY:
        return
    if backend == "gcs" and name == "token":  # gcsfs: "anon", a path, or a dict of creds
        if value == "anon":
            out["skip_signature"] = True
        elif isinstance(value, Mapping):
            import json

            out["service_account_key"] = json.dumps(dict(value))
        elif value not in (None, "google_default", "cloud", "cache"):
            out["service_account"] = str(value)
        return
    aliases = _ALIASES[backend]
    if name in aliases:
        target = aliases[name]
        if target is not None:
            out[target] = value
        return
    if name in _NATIVE[backend]:
        out[name] = value
        return
    known = sorted(set(aliases) | _NATIVE[backend] | {"anon", "client_kwargs"})
    raise TypeError(f"storage option {name!r} does not apply to {urlparse(url).scheme}:// "
                    f"stores (known: {', '.join(known)})")
