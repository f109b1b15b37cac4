"""Write a dataset as Parquet shards; ``dataset.json`` (written last) is the list of complete shards.

Shards are written atomically (temporary key, then move) by whichever process produced the rows
(a Ray task or the driver); the driver then calls :func:`finalize_dataset` with the shard records.
A reader trusts only ``dataset.json``, so a shard left by a crashed run is never read.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import time
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from medray.config.common import StorageOptions
from medray.datasets import schema as S
from medray.storage import atomic_write_bytes, join_uri


def shard_record(uri: str, table: pa.Table, payload: bytes) -> dict[str, Any]:
    """What ``dataset.json`` keeps about one shard: where, how many rows, per-class/group counts, hash."""
    labels = table.column(S.LABEL_NAME).to_pylist() if S.LABEL_NAME in table.column_names else []
    groups = table.column(S.GROUP).to_pylist() if S.GROUP in table.column_names else []
    return {
        "uri": uri,
        "rows": table.num_rows,
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "class_counts": dict(collections.Counter(labels)),
        "groups": sorted(set(groups)),
    }


def write_shard(table: pa.Table, output_uri: str, name: str, storage: StorageOptions | None = None,
                compression: str = "zstd") -> dict[str, Any]:
    """Write one Parquet shard atomically under ``output_uri/shards/`` and return its record."""
    if not name.endswith(".parquet"):
        name += ".parquet"
    buf = io.BytesIO()
    # Images are already compressed: a light codec and large row groups keep reads fast.
    pq.write_table(table, buf, compression=compression, row_group_size=max(1, min(table.num_rows, 1024)))
    payload = buf.getvalue()
    uri = join_uri(output_uri, "shards", name)
    atomic_write_bytes(uri, payload, storage)
    return shard_record(uri, table, payload)


def rows_to_table(rows: Iterable[dict[str, Any]], schema: pa.Schema = S.BASE_SCHEMA) -> pa.Table:
    """A list of row dicts → a table with ``schema`` (missing optional columns become nulls)."""
    rows = list(rows)
    return pa.Table.from_pylist(rows, schema=schema)


def dataset_fingerprint(shards: list[dict[str, Any]]) -> str:
    """Content fingerprint of a dataset: a hash over its shards' hashes (order-independent)."""
    digest = hashlib.sha256()
    for sha in sorted(s["sha256"] for s in shards):
        digest.update(sha.encode())
    return digest.hexdigest()


def finalize_dataset(output_uri: str, shards: list[dict[str, Any]], classes: list[str], kind: str,
                     storage: StorageOptions | None = None, extra: dict[str, Any] | None = None) -> dict:
    """Write ``dataset.json`` listing the complete shards; this is what makes a dataset visible."""
    class_counts: collections.Counter = collections.Counter()
    groups: set[str] = set()
    for record in shards:
        class_counts.update(record.get("class_counts", {}))
        groups.update(record.get("groups", []))
    shards = sorted(shards, key=lambda s: s["uri"])
    meta = {
        "schema_version": S.SCHEMA_VERSION,
        "kind": kind,
        "classes": list(classes),
        "num_rows": sum(s["rows"] for s in shards),
        "class_counts": {c: int(class_counts.get(c, 0)) for c in classes},
        "groups": sorted(groups),
        "fingerprint": dataset_fingerprint(shards),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shards": shards,
        "extra": extra or {},
    }
    atomic_write_bytes(join_uri(output_uri, S.METADATA_FILE), json.dumps(meta, indent=1).encode(), storage)
    return meta
