"""Manifests: lists of (file URI, class[, group]) that ingest jobs turn into datasets.

Formats: JSON lines ``{"source-ref": "<uri>", "class": "<label>", ...}`` (the SageMaker
augmented-manifest convention; extra keys such as ``patient`` or ``lesion_id`` are kept) and
CSV with a ``source-ref,class[,group,...]`` header. A relative ``source-ref`` is resolved
against the manifest's own folder, so a data folder can be moved or copied to S3 whole.

Why shuffle: manifests built from folders or from HAM10000's metadata (sorted by diagnosis) come
sorted by class; read in that order, a model sees long runs of one class, every batch statistic
is skewed, and a split cut by position gets whole classes. ``split_grouped`` therefore assigns
whole groups (patient, lesion) to splits and returns every split shuffled.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from medray.config.common import StorageOptions
from medray.errors import DataError

SOURCE_REF = "source-ref"
CLASS = "class"
JSONL_SUFFIXES = (".jsonl", ".json", ".manifest")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz")
MOSMED_CLASS_MAP = {"CT-0": "normal", "CT-2": "abnormal", "CT-3": "abnormal"}
MAX_REPORTED = 10


@dataclass(frozen=True)
class ManifestEntry:
    """One example: where its file is, its class, and any extra keys (group, patient, ...)."""

    source_ref: str
    label: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """A field by its manifest key: 'source-ref', 'class' or any extra key."""
        if key == SOURCE_REF:
            return self.source_ref
        if key == CLASS:
            return self.label
        return self.extra.get(key, default)

    def to_record(self) -> dict[str, Any]:
        return {SOURCE_REF: self.source_ref, CLASS: self.label, **self.extra}


# --------------------------------------------------------------------------- reading / writing

def _is_relative(ref: str) -> bool:
    return "://" not in ref and not os.path.isabs(ref)


def _resolve(ref: str, base: str) -> str:
    from medray.storage import join_uri

    return join_uri(base, ref) if base and _is_relative(ref) else ref


def _parent(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if "/" in uri else ""


def _entry(record: dict[str, Any], where: str, problems: list[str], base: str) -> ManifestEntry | None:
    ref, label = record.get(SOURCE_REF), record.get(CLASS)
    missing = [k for k, v in ((SOURCE_REF, ref), (CLASS, label)) if v is None or str(v).strip() == ""]
    if missing:
        problems.append(f"{where}: missing {missing} (keys present: {sorted(record)})")
        return None
    extra = {k: v for k, v in record.items() if k not in (SOURCE_REF, CLASS)}
    return ManifestEntry(_resolve(str(ref), base), str(label), extra)


def parse_manifest(text: str, fmt: str, name: str = "<manifest>", base: str = "") -> list[ManifestEntry]:
    """Parse manifest text ('jsonl' or 'csv'); every malformed line is reported with its number."""
    entries: list[ManifestEntry] = []
    problems: list[str] = []
    if fmt == "jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"line {number}: not valid JSON ({err.msg})")
                continue
            if not isinstance(record, dict):
                problems.append(f"line {number}: expected a JSON object, got {type(record).__name__}")
                continue
            entry = _entry(record, f"line {number}", problems, base)
            if entry:
                entries.append(entry)
    elif fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        header = reader.fieldnames or []
        if SOURCE_REF not in header or CLASS not in header:
            raise DataError(f"{name}: CSV header must name '{SOURCE_REF}' and '{CLASS}' "
                            f"(optionally 'group'), found {header}")
        for record in reader:
            number = reader.line_num
            if None in record or any(v is None for v in record.values()):
                problems.append(f"line {number}: expected {len(header)} columns ({header})")
                continue
            entry = _entry({k: v for k, v in record.items() if v != "" or k in (SOURCE_REF, CLASS)},
                           f"line {number}", problems, base)
            if entry:
                entries.append(entry)
    else:
        raise DataError(f"{name}: unknown manifest format {fmt!r}; use 'jsonl' or 'csv'")
    if problems:
        shown = "\n  ".join(problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{name}: {len(problems)} malformed line(s):\n  {shown}{more}")
    if not entries:
        raise DataError(f"{name}: manifest holds no entries")
    return entries


def manifest_format(uri: str) -> str:
    return "csv" if uri.lower().endswith(".csv") else "jsonl"


def read_manifest(uri: str, storage: StorageOptions | None = None,
                  resolve: bool = True) -> list[ManifestEntry]:
    """Read a JSON-lines or CSV manifest (by extension; ``.csv`` is CSV, anything else JSON lines)."""
    from medray.storage import read_text

    try:
        text = read_text(uri, storage)
    except UnicodeDecodeError as err:
        raise DataError(f"{uri}: manifest is not UTF-8 text ({err})") from None
    return parse_manifest(text, manifest_format(uri), uri, _parent(uri) if resolve else "")


def format_manifest(entries: Iterable[ManifestEntry], fmt: str) -> str:
    """Manifest text: JSON lines, or CSV with source-ref, class and every extra key seen."""
    entries = list(entries)
    if fmt == "jsonl":
        return "".join(json.dumps(e.to_record(), sort_keys=False) + "\n" for e in entries)
    if fmt != "csv":
        raise DataError(f"unknown manifest format {fmt!r}; use 'jsonl' or 'csv'")
    columns = [SOURCE_REF, CLASS]
    for entry in entries:
        columns += [k for k in entry.extra if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for entry in entries:
        writer.writerow(entry.to_record())
    return buf.getvalue()


def write_manifest(entries: Iterable[ManifestEntry], uri: str,
                   storage: StorageOptions | None = None) -> str:
    """Write a manifest atomically (CSV for ``.csv``, else JSON lines); returns ``uri``."""
    from medray.storage import atomic_write_text

    atomic_write_text(uri, format_manifest(entries, manifest_format(uri)), storage)
    return uri


# --------------------------------------------------------------------------- builders

def _relative(uri: str, root: str) -> str:
    return uri[len(root.rstrip("/")):].lstrip("/")


def from_class_folders(root: str, storage: StorageOptions | None = None,
                       suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[ManifestEntry]:
    """One entry per image under ``root/<class>/...``; the first folder level is the class."""
    from medray.storage import list_files

    files = [u for u in list_files(root, storage) if u.lower().endswith(suffixes)]
    entries = []
    for uri in files:
        parts = _relative(uri, root).split("/")
        if len(parts) >= 2:
            entries.append(ManifestEntry(uri, parts[0]))
    if not entries:
        raise DataError(f"{root}: no images in class folders (expected {root}/<class>/<file> with "
                        f"suffix in {list(suffixes)}; found {len(files)} matching file(s) at top level)")
    return entries


def from_mosmed(root: str, class_map: Mapping[str, str] | None = None,
                storage: StorageOptions | None = None) -> tuple[list[ManifestEntry], dict[str, int]]:
    """MosMedData ``studies/CT-k/study_NNNN.nii.gz`` → (entries, dropped count per category).

    Categories not in ``class_map`` are dropped and counted (default: CT-0 normal, CT-2/CT-3
    abnormal; CT-1 and CT-4 left out). The study id is the group, since a study is one patient.
    """
    from medray.storage import list_files

    class_map = dict(MOSMED_CLASS_MAP if class_map is None else class_map)
    files = [u for u in list_files(root, storage) if u.lower().endswith((".nii", ".nii.gz"))]
    entries, dropped, seen = [], Counter(), Counter()
    for uri in files:
        parts = uri.split("/")
        category, stem = parts[-2], parts[-1].split(".nii")[0]
        seen[category] += 1
        if category not in class_map:
            dropped[category] += 1
            continue
        entries.append(ManifestEntry(uri, class_map[category],
                                     {"group": stem, "patient": stem, "category": category}))
    if not entries:
        raise DataError(f"{root}: no NIfTI study falls in class_map {sorted(class_map)}; "
                        f"categories found: {dict(sorted(seen.items())) or 'none'}")
    return entries, dict(sorted(dropped.items()))


def from_ham10000(metadata_csv: str, images_dir: str,
                  storage: StorageOptions | None = None) -> list[ManifestEntry]:
    """HAM10000 ``HAM10000_metadata.csv`` + image folder(s) → entries grouped by ``lesion_id``.

    Images are found anywhere under ``images_dir`` by ``<image_id>.jpg`` (the release splits them
    over two folders); a metadata row without its image is an error listing the missing ids.
    """
    from medray.storage import list_files, read_text

    reader = csv.DictReader(io.StringIO(read_text(metadata_csv, storage)))
    needed = ["lesion_id", "image_id", "dx"]
    missing_cols = [c for c in needed if c not in (reader.fieldnames or [])]
    if missing_cols:
        raise DataError(f"{metadata_csv}: missing column(s) {missing_cols}; header is {reader.fieldnames}")
    images = {}
    for uri in list_files(images_dir, storage):
        base = uri.rsplit("/", 1)[-1]
        stem, _, ext = base.rpartition(".")
        if ext.lower() in ("jpg", "jpeg", "png"):
            images[stem] = uri
    entries, missing = [], []
    for row in reader:
        uri = images.get(row["image_id"])
        if uri is None:
            missing.append(row["image_id"])
            continue
        extra = {"group": row["lesion_id"]}
        extra.update({k: v for k, v in row.items() if k != "dx" and k is not None})
        entries.append(ManifestEntry(uri, row["dx"], extra))
    if missing:
        raise DataError(f"{metadata_csv}: {len(missing)} image(s) not found under {images_dir}: "
                        f"{missing[:MAX_REPORTED]}")
    if not entries:
        raise DataError(f"{metadata_csv}: no rows")
    return entries


# --------------------------------------------------------------------------- order and splits

def shuffle(entries: Iterable[ManifestEntry], seed: int) -> list[ManifestEntry]:
    """A new list in a seeded random order (see the module docstring for why)."""
    entries = list(entries)
    order = np.random.default_rng(seed).permutation(len(entries))
    return [entries[i] for i in order]


def split_grouped(entries: Iterable[ManifestEntry], fractions: Mapping[str, float] | None = None,
                  seed: int = 0, group_key: str = "group") -> dict[str, list[ManifestEntry]]:
    """Split so that no group is in two splits, stratified by class as far as groups allow.

    Each group goes, largest first (ties in seeded random order), to the split furthest below its
    target share of that group's majority class. Every split comes back shuffled.
    """
    entries = list(entries)
    fractions = dict(fractions or {"train": 0.8, "val": 0.2})
    if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise DataError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    groups: dict[str, list[ManifestEntry]] = defaultdict(list)
    for number, entry in enumerate(entries):
        value = entry.get(group_key)
        if value is None or str(value) == "":
            raise DataError(f"entry {number} ({entry.source_ref}) has no {group_key!r}; keys: "
                            f"{sorted(entry.to_record())} (pass group_key='source-ref' for ungrouped data)")
        groups[str(value)].append(entry)
    by_class: dict[str, list[str]] = defaultdict(list)
    for gid, members in groups.items():
        by_class[Counter(e.label for e in members).most_common(1)[0][0]].append(gid)
    rng = np.random.default_rng(seed)
    names = list(fractions)
    splits: dict[str, list[ManifestEntry]] = {name: [] for name in names}
    for label in sorted(by_class):
        gids = sorted(by_class[label])
        gids = [gids[i] for i in rng.permutation(len(gids))]
        gids.sort(key=lambda g: -len(groups[g]))  # stable: random order among equal sizes
        total = sum(len(groups[g]) for g in gids)
        filled = dict.fromkeys(names, 0)
        for gid in gids:
            target = max(names, key=lambda n: fractions[n] * total - filled[n])
            splits[target].extend(groups[gid])
            filled[target] += len(groups[gid])
    return {name: shuffle(members, seed + 1 + i) for i, (name, members) in enumerate(splits.items())}


def class_counts(entries: Iterable[ManifestEntry]) -> dict[str, int]:
    """Examples per class, sorted by class name."""
    return dict(sorted(Counter(e.label for e in entries).items()))
