"""Read a dataset back as a streaming Ray Dataset: only complete shards, filtered, split by group.

Nothing is materialized: Ray Data streams the listed Parquet shards; filters by label/group run
per block. Splits are by group (slide, patient, lesion), so no group is in two splits.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable

import numpy as np

from medray.config.common import StorageOptions
from medray.datasets import schema as S
from medray.errors import DataError, StorageError
from medray.storage import get_filesystem, join_uri, read_bytes


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """The parsed ``dataset.json`` of a dataset folder."""

    uri: str
    kind: str
    classes: list[str]
    num_rows: int
    class_counts: dict[str, int]
    groups: list[str]
    fingerprint: str
    shards: list[dict[str, Any]]
    extra: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def shards_for(self, groups: Iterable[str] | None) -> list[dict[str, Any]]:
        if groups is None:
            return list(self.shards)
        wanted = set(groups)
        return [s for s in self.shards if wanted.intersection(s.get("groups", []))]


def read_info(uri: str, storage: StorageOptions | None = None) -> DatasetInfo:
    """Load ``dataset.json``; a folder without one is not a (complete) dataset."""
    meta_uri = join_uri(uri, S.METADATA_FILE)
    try:
        meta = json.loads(read_bytes(meta_uri, storage))
    except StorageError:
        raise DataError(
            f"{uri!r} is not a complete medray dataset: {S.METADATA_FILE} is missing "
            "(the job that writes it may not have finished)") from None
    return DatasetInfo(uri=uri, kind=meta["kind"], classes=meta["classes"], num_rows=meta["num_rows"],
                       class_counts=meta["class_counts"], groups=meta["groups"],
                       fingerprint=meta["fingerprint"], shards=meta["shards"], extra=meta.get("extra", {}))


def _filter_table(table, labels: list[str] | None, groups: list[str] | None):
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = None
    if labels is not None:
        mask = pc.is_in(table[S.LABEL_NAME], value_set=pa.array(labels, pa.string()))
    if groups is not None:
        by_group = pc.is_in(table[S.GROUP], value_set=pa.array(groups, pa.string()))
        mask = by_group if mask is None else pc.and_(mask, by_group)
    return table if mask is None else table.filter(mask)


def read_dataset(uri: str, storage: StorageOptions | None = None, labels: list[str] | None = None,
                 groups: list[str] | None = None, columns: list[str] | None = None,
                 info: DatasetInfo | None = None):
    """A streaming ``ray.data.Dataset`` of the dataset's rows (still encoded), optionally filtered."""
    import ray.data

    info = info or read_info(uri, storage)
    if labels is not None:
        unknown = sorted(set(labels) - set(info.classes))
        if unknown:
            raise DataError(f"labels {unknown} are not in dataset {uri!r}; classes: {info.classes}")
    shards = info.shards_for(groups)
    if not shards:
        raise DataError(f"dataset {uri!r} has no shards for groups {groups}")
    fs, _ = get_filesystem(shards[0]["uri"], storage)
    paths = [get_filesystem(s["uri"], storage)[1] for s in shards]
    filtering = labels is not None or groups is not None
    read_columns = columns
    if columns is not None and filtering:
        # The filter needs these columns even when the caller did not ask for them.
        read_columns = list(dict.fromkeys([*columns, S.LABEL_NAME, S.GROUP]))
    ds = ray.data.read_parquet(paths, filesystem=fs, columns=read_columns)
    if filtering:
        ds = ds.map_batches(_filter_table, batch_format="pyarrow",
                            fn_kwargs={"labels": labels, "groups": list(groups) if groups else None})
        if read_columns != columns:
            ds = ds.select_columns(columns)
    return ds


def split_groups(info: DatasetInfo, val_fraction: float = 0.2, seed: int = 0,
                 group_labels: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Split the dataset's groups into train/val (no group in both), stratified by a group's class.

    ``group_labels`` maps group → stratum (e.g. whether a slide has tumor); by default a group's
    stratum is the rarest class it holds, from the shard records.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(info.groups) < 2:
        raise DataError(f"dataset {info.uri!r} has {len(info.groups)} group(s); a split by group needs >= 2")
    if group_labels is None:
        totals = info.class_counts
        group_labels = {}
        for shard in info.shards:
            per_group = shard.get("group_class_counts") or {}
            for group in shard.get("groups", []):
                # Exact per-group counts when the writer recorded them (mixed shards), else the shard's.
                counts = per_group.get(group, shard.get("class_counts", {}))
                present = [c for c, n in counts.items() if n > 0]
                rarest = min(present, key=lambda c: totals.get(c, 0)) if present else ""
                prev = group_labels.get(group)
                if prev is None or totals.get(rarest, 0) < totals.get(prev, 0):
                    group_labels[group] = rarest
    rng = np.random.default_rng(seed)
    train: list[str] = []
    val: list[str] = []
    strata: dict[str, list[str]] = {}
    for group in sorted(info.groups):
        strata.setdefault(group_labels.get(group, ""), []).append(group)
    for stratum in sorted(strata):
        members = list(strata[stratum])
        rng.shuffle(members)
        n_val = int(round(len(members) * val_fraction))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    if not val or not train:
        # Too few groups per stratum: fall back to an unstratified split.
        members = sorted(info.groups)
        rng.shuffle(members)
        n_val = min(max(1, int(round(len(members) * val_fraction))), len(members) - 1)
        val, train = members[:n_val], members[n_val:]
    return sorted(train), sorted(val)
