"""URI → (pyarrow filesystem, path), atomic writes and a download-once cache for remote files.

Supported: plain paths, ``file://``, ``s3://`` (any S3-compatible endpoint) and ``gs://``
(passed to pyarrow). Writes go to a hidden temporary key next to the target and are moved into
place only when complete, so a crashed job never leaves a half-written object that looks done.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import pyarrow.fs as pafs

from medray.config.common import StorageOptions
from medray.errors import StorageError

SUPPORTED_SCHEMES = ("", "file", "s3", "gs")
_FS_CACHE: dict[tuple, pafs.FileSystem] = {}
_FS_LOCK = threading.Lock()


def scheme_of(uri: str) -> str:
    """'' for a plain path, else the lower-case URI scheme."""
    parsed = urlparse(str(uri))
    # A Windows drive letter or a bare relative path has no real scheme.
    return parsed.scheme.lower() if len(parsed.scheme) > 1 else ""


def is_remote(uri: str) -> bool:
    return scheme_of(uri) in ("s3", "gs")


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a URI or path with '/' (no normalisation of '..')."""
    out = str(base).rstrip("/")
    for part in parts:
        out = f"{out}/{str(part).strip('/')}"
    return out


def _s3_filesystem(options: StorageOptions) -> pafs.S3FileSystem:
    settings = options.resolved()
    kwargs: dict = {}
    endpoint = settings["endpoint_url"]
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
    if settings["region"]:
        kwargs["region"] = settings["region"]
    if options.anonymous:
        kwargs["anonymous"] = True
    elif settings["access_key_id"] and settings["secret_access_key"]:
        kwargs["access_key"] = settings["access_key_id"]
        kwargs["secret_key"] = settings["secret_access_key"]
        if settings["session_token"]:
            kwargs["session_token"] = settings["session_token"]
    key = ("s3", tuple(sorted((k, str(v)) for k, v in kwargs.items())))
    with _FS_LOCK:
        if key not in _FS_CACHE:
            _FS_CACHE[key] = pafs.S3FileSystem(**kwargs)
        return _FS_CACHE[key]


def get_filesystem(uri: str, options: StorageOptions | None = None) -> tuple[pafs.FileSystem, str]:
    """Resolve a URI to a pyarrow filesystem and the path inside it."""
    options = options or StorageOptions()
    uri = str(uri)
    scheme = scheme_of(uri)
    if scheme == "":
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    if scheme == "file":
        parsed = urlparse(uri)
        return pafs.LocalFileSystem(), os.path.abspath(parsed.netloc + parsed.path)
    if scheme == "s3":
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise StorageError(f"{uri!r} names no bucket; expected s3://bucket/key")
        return _s3_filesystem(options), (parsed.netloc + parsed.path).rstrip("/")
    if scheme == "gs":
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except Exception as err:  # pyarrow raises several types here
            raise StorageError(f"cannot open {uri!r} with pyarrow's GCS filesystem: {err}") from err
        return fs, path
    raise StorageError(
        f"unsupported URI scheme {scheme!r} in {uri!r}; supported: plain paths, file://, s3://, gs://")


def exists(uri: str, options: StorageOptions | None = None) -> bool:
    fs, path = get_filesystem(uri, options)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(uri: str, options: StorageOptions | None = None) -> bool:
    fs, path = get_filesystem(uri, options)
    return fs.get_file_info(path).type == pafs.FileType.File


def file_size(uri: str, options: StorageOptions | None = None) -> int:
    fs, path = get_filesystem(uri, options)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise StorageError(f"{uri!r} is not a file")
    return int(info.size)


def read_bytes(uri: str, options: StorageOptions | None = None) -> bytes:
    """The whole object; a missing one is a StorageError naming it."""
    fs, path = get_filesystem(uri, options)
    try:
        with fs.open_input_stream(path, compression=None) as stream:
            return stream.read()
    except (FileNotFoundError, OSError) as err:
        raise StorageError(f"cannot read {uri!r}: {err}") from err


def read_text(uri: str, options: StorageOptions | None = None) -> str:
    return read_bytes(uri, options).decode("utf-8")


def makedirs(uri: str, options: StorageOptions | None = None) -> None:
    fs, path = get_filesystem(uri, options)
    fs.create_dir(path, recursive=True)


def list_files(uri: str, options: StorageOptions | None = None, suffix: str | None = None,
               recursive: bool = True) -> list[str]:
    """URIs of the files under a folder/prefix (hidden '.' and '_' temporaries excluded), sorted."""
    fs, path = get_filesystem(uri, options)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
    base = str(uri).rstrip("/")
    out = []
    for entry in fs.get_file_info(selector):
        if entry.type != pafs.FileType.File:
            continue
        rel = entry.path[len(path):].lstrip("/")
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        if suffix and not rel.endswith(suffix):
            continue
        out.append(f"{base}/{rel}")
    return sorted(out)


def delete(uri: str, options: StorageOptions | None = None, missing_ok: bool = True) -> None:
    """Delete a file or a whole folder/prefix."""
    fs, path = get_filesystem(uri, options)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        if not missing_ok:
            raise StorageError(f"{uri!r} does not exist")
        return
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    else:
        fs.delete_file(path)


def _temp_path(path: str) -> str:
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp_name = f".tmp-{uuid.uuid4().hex[:12]}-{name}"
    return f"{parent}/{tmp_name}" if parent else tmp_name


@contextlib.contextmanager
def open_atomic(uri: str, options: StorageOptions | None = None) -> Iterator:
    """A writable stream whose data appears at ``uri`` only if the block finishes without error."""
    fs, path = get_filesystem(uri, options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = _temp_path(path)
    try:
        with fs.open_output_stream(tmp, compression=None) as stream:
            yield stream
        fs.move(tmp, path)  # local: rename(2); S3: server-side copy then delete of the temp key
    except BaseException:
        with contextlib.suppress(Exception):
            fs.delete_file(tmp)
        raise


def atomic_write_bytes(uri: str, data: bytes, options: StorageOptions | None = None) -> None:
    """Write ``data`` to ``uri`` so readers see either the old object, nothing, or all of it."""
    with open_atomic(uri, options) as stream:
        stream.write(data)


def atomic_write_text(uri: str, text: str, options: StorageOptions | None = None) -> None:
    atomic_write_bytes(uri, text.encode("utf-8"), options)


@contextlib.contextmanager
def atomic_local_path(uri: str, options: StorageOptions | None = None, suffix: str = "") -> Iterator[str]:
    """A local scratch file path for writers that need one (TIFF, PNG); published on success."""
    fd, tmp = tempfile.mkstemp(prefix="medray-", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        if not is_remote(uri):
            fs, path = get_filesystem(uri, options)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            staged = _temp_path(path)
            shutil.copyfile(tmp, staged)
            os.replace(staged, path)
        else:
            with open(tmp, "rb") as src, open_atomic(uri, options) as stream:
                shutil.copyfileobj(src, stream, length=8 << 20)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def default_cache_dir() -> str:
    return os.environ.get("MEDRAY_CACHE_DIR", os.path.join(tempfile.gettempdir(), "medray-cache"))


def local_copy(uri: str, options: StorageOptions | None = None, cache_dir: str | None = None) -> str:
    """A local file path for ``uri``: the file itself when local, else a cached download.

    The cache key is the URI plus the object's size and modification time, so a replaced object
    is fetched again; downloads land under a temporary name and are renamed when complete.
    """
    if not is_remote(uri):
        fs, path = get_filesystem(uri, options)
        if fs.get_file_info(path).type != pafs.FileType.File:
            raise StorageError(f"{uri!r} does not exist or is not a file")
        return path
    fs, path = get_filesystem(uri, options)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise StorageError(f"{uri!r} does not exist or is not a file")
    mtime = info.mtime_ns if info.mtime_ns is not None else 0
    key = hashlib.sha256(f"{uri}|{info.size}|{mtime}".encode()).hexdigest()[:24]
    name = os.path.basename(path)
    cache = Path(cache_dir or default_cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{key}-{name}"
    if target.is_file() and target.stat().st_size == info.size:
        return str(target)
    staged = cache / f".part-{uuid.uuid4().hex[:8]}-{name}"
    try:
        with fs.open_input_stream(path, compression=None) as src, open(staged, "wb") as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)
        os.replace(staged, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(staged)
    return str(target)
