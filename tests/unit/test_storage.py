"""Storage: URIs → filesystems, atomic writes, the download cache; local and on a loopback S3 server."""

import os

import pyarrow.fs as pafs
import pytest

from medray import storage
from medray.errors import StorageError


def test_plain_and_file_uris_resolve_to_local(tmp_path):
    fs, path = storage.get_filesystem(str(tmp_path / "a.txt"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "a.txt")
    fs, path = storage.get_filesystem(f"file://{tmp_path}/b.txt")
    assert isinstance(fs, pafs.LocalFileSystem) and path == f"{tmp_path}/b.txt"


def test_unsupported_scheme_is_a_clear_error():
    with pytest.raises(StorageError, match=r"unsupported URI scheme 'ftp'.*s3://"):
        storage.get_filesystem("ftp://host/x")
    with pytest.raises(StorageError, match="names no bucket"):
        storage.get_filesystem("s3:///key")


def test_local_round_trip_and_listing(tmp_path):
    base = str(tmp_path / "root")
    storage.atomic_write_bytes(storage.join_uri(base, "x/1.bin"), b"one")
    storage.atomic_write_text(storage.join_uri(base, "x/2.txt"), "two")
    assert storage.read_bytes(f"{base}/x/1.bin") == b"one"
    assert storage.list_files(base) == [f"{base}/x/1.bin", f"{base}/x/2.txt"]
    assert storage.list_files(base, suffix=".txt") == [f"{base}/x/2.txt"]
    storage.delete(f"{base}/x")
    assert not storage.exists(f"{base}/x/1.bin")


def test_failed_atomic_write_leaves_nothing_visible(tmp_path):
    target = str(tmp_path / "out" / "model.bin")
    storage.atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with storage.open_atomic(target) as stream:
            stream.write(b"half of the new")
            raise RuntimeError("crash mid-write")
    assert storage.read_bytes(target) == b"old"
    assert os.listdir(tmp_path / "out") == ["model.bin"]  # no temporary left behind


def test_missing_object_error_names_it(tmp_path):
    with pytest.raises(StorageError, match="nope.bin"):
        storage.read_bytes(str(tmp_path / "nope.bin"))


def test_s3_round_trip_on_loopback_server(s3_bucket, s3_options):
    uri = f"{s3_bucket}/data/hello.txt"
    storage.atomic_write_text(uri, "hi s3", s3_options)
    assert storage.read_text(uri, s3_options) == "hi s3"
    assert storage.exists(uri, s3_options)
    assert storage.list_files(f"{s3_bucket}/data", s3_options) == [uri]
    storage.delete(uri, s3_options)
    assert not storage.exists(uri, s3_options)


def test_s3_atomic_write_failure_leaves_no_object(s3_bucket, s3_options):
    uri = f"{s3_bucket}/shards/part-0.parquet"
    with pytest.raises(RuntimeError):
        with storage.open_atomic(uri, s3_options) as stream:
            stream.write(b"x" * 1024)
            raise RuntimeError("worker died")
    assert not storage.exists(uri, s3_options)
    fs, path = storage.get_filesystem(s3_bucket, s3_options)
    leftovers = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    assert [i.path for i in leftovers if i.type == pafs.FileType.File] == []


def test_s3_endpoint_from_environment(s3_bucket, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    storage.atomic_write_text(f"{s3_bucket}/env.txt", "via env")
    assert storage.read_text(f"{s3_bucket}/env.txt") == "via env"


def test_local_copy_downloads_once(s3_bucket, s3_options, tmp_path):
    uri = f"{s3_bucket}/slides/a.svs"
    storage.atomic_write_bytes(uri, b"slide-bytes", s3_options)
    first = storage.local_copy(uri, s3_options, cache_dir=str(tmp_path))
    stamp = os.stat(first).st_mtime_ns
    second = storage.local_copy(uri, s3_options, cache_dir=str(tmp_path))
    assert first == second and os.stat(second).st_mtime_ns == stamp
    assert open(first, "rb").read() == b"slide-bytes"
    storage.atomic_write_bytes(uri, b"replaced-slide", s3_options)
    third = storage.local_copy(uri, s3_options, cache_dir=str(tmp_path))
    assert third != first and open(third, "rb").read() == b"replaced-slide"


def test_atomic_local_path_publishes_to_s3(s3_bucket, s3_options):
    uri = f"{s3_bucket}/img/out.png"
    with storage.atomic_local_path(uri, s3_options, suffix=".png") as tmp:
        with open(tmp, "wb") as handle:
            handle.write(b"png-bytes")
    assert storage.read_bytes(uri, s3_options) == b"png-bytes"


def test_gz_names_are_stored_byte_for_byte(tmp_path, s3_bucket, s3_options):
    # pyarrow would otherwise gzip '*.gz' writes again (compression="detect").
    import gzip

    payload = gzip.compress(b"volume")
    for uri, opts in [(str(tmp_path / "v.nii.gz"), None), (f"{s3_bucket}/v.nii.gz", s3_options)]:
        storage.atomic_write_bytes(uri, payload, opts)
        assert storage.read_bytes(uri, opts) == payload
    assert (tmp_path / "v.nii.gz").read_bytes() == payload
