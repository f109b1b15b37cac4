"""Which slide URIs a request may name: only those under the configured roots (403 otherwise).

Local paths are compared by their real path (symlinks and ``..`` resolved), so a link inside a
root that points outside is refused. ``s3://`` keys are normalised (``.``/``..`` segments,
repeated slashes) and must stay inside a root's bucket and key prefix.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from medray.serve.errors import Forbidden


def _s3_parts(uri: str) -> tuple[str, list[str]]:
    """``s3://bucket/a/./b/../c`` → ("bucket", ["a", "c"]); Forbidden if ``..`` climbs above the bucket."""
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise Forbidden(f"{uri!r} has no bucket; expected s3://bucket/key")
    parts: list[str] = []
    for segment in parsed.path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                raise Forbidden(f"{uri!r} climbs above its bucket with '..'")
            parts.pop()
            continue
        parts.append(segment)
    return parsed.netloc, parts


def _local_real(uri: str) -> str:
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return os.path.realpath(os.path.expanduser(path))


def _scheme(uri: str) -> str:
    if uri.startswith("s3://"):
        return "s3"
    if "://" in uri and not uri.startswith("file://"):
        return uri.split("://", 1)[0]
    return "local"


def check_allowed(uri: str, allowed_roots: list[str] | tuple[str, ...]) -> str:
    """The normalised URI (real path for local files) if it lies under a root, else ``Forbidden``."""
    uri = str(uri).strip()
    if not uri:
        raise Forbidden("empty slide URI")
    if not allowed_roots:
        raise Forbidden(f"{uri!r} refused: no allowed_slide_roots are configured for this app")
    scheme = _scheme(uri)
    if scheme == "s3":
        bucket, parts = _s3_parts(uri)
        for root in allowed_roots:
            if _scheme(root) != "s3":
                continue
            root_bucket, root_parts = _s3_parts(root)
            if bucket == root_bucket and parts[:len(root_parts)] == root_parts:
                return f"s3://{bucket}/{'/'.join(parts)}"
    elif scheme == "local":
        real = _local_real(uri)
        for root in allowed_roots:
            if _scheme(root) != "local":
                continue
            real_root = _local_real(root)
            if os.path.commonpath([real, real_root]) == real_root:
                return real
    else:
        raise Forbidden(f"{uri!r} refused: scheme {scheme!r} is not served; use a local path or s3://")
    raise Forbidden(f"{uri!r} is outside the allowed slide roots {list(allowed_roots)}")
