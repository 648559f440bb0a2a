"""Object-store URLs and their fsspec file systems (s3fs, gcsfs, adlfs: optional extras).

Credentials and endpoints come from each SDK's own environment and files: `AWS_*` and
`~/.aws/` for S3 (`AWS_ENDPOINT_URL` for MinIO and other S3-compatible stores), Application
Default Credentials for GCS, `AZURE_STORAGE_*` for Azure Blob. hotserve passes none itself.
"""

from __future__ import annotations

import re
from typing import Any

# URL scheme -> fsspec protocol. TF Serving reads s3:// and gs://; az:// is adlfs's spelling.
REMOTE_SCHEMES = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "az": "az", "abfs": "abfs"}
_URL = re.compile(r"([a-z][a-z0-9+.-]*)://(.+)")
_PACKAGES = {"s3": "s3fs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def is_remote(base_path: str) -> bool:
    """True for an object-store URL hotserve reads through fsspec."""
    match = _URL.fullmatch(base_path)
    return match is not None and match.group(1) in REMOTE_SCHEMES


def split_url(base_path: str) -> tuple[str, str]:
    """(fsspec protocol, bucket/key path without trailing slash) of a remote base path."""
    match = _URL.fullmatch(base_path)
    if match is None or match.group(1) not in REMOTE_SCHEMES:
        raise ValueError(f"not an object-store URL: {base_path}")
    return REMOTE_SCHEMES[match.group(1)], match.group(2).rstrip("/")


def filesystem(protocol: str) -> Any:
    """The fsspec file system for `protocol`, without listing caches (every poll must see the
    store as it is now). Raises ImportError naming the extra to install."""
    import fsspec  # type: ignore[import-untyped,unused-ignore]

    try:
        return fsspec.filesystem(protocol, use_listings_cache=False, skip_instance_cache=True)
    except ImportError as exc:
        package = _PACKAGES.get(protocol, protocol)
        raise ImportError(
            f"{protocol}:// base paths need {package}: pip install 'hotserve[{package}]'"
        ) from exc
