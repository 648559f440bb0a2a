"""Object-store model repositories: `s3://`, `gs://` and `az://` base paths served from a local
cache (see `scanner` for the version path, `cache` for the download contract)."""
