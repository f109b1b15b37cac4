"""Manifest ingest: image files listed in a manifest → Parquet shards in object storage.

Like SageMaker pipe mode / RecordIO: training then streams a few large shards instead of opening
thousands of small files. Flow: resolve the manifest (file or builder), map and check classes,
shuffle, cut into work units of ``rows_per_shard`` entries; a Ray Data pipeline loads + encodes
each unit in parallel tasks and writes one shard per unit; ``dataset.json`` comes last.
A file that cannot be loaded (missing, corrupt, wrong type) is skipped and named in
``report.json`` with the reason; it never stops the other items.
"""

from __future__ import annotations

import collections
import json
import time
from typing import Any

import numpy as np

from medray.runtime import ensure_ray
from medray.config.common import StorageOptions
from medray.datasets import schema as S
from medray.datasets.ingest_config import BuilderOptions, IngestConfig
from medray.datasets.loaders import LoaderConfig
from medray.datasets.manifests import ManifestEntry
from medray.errors import ConfigError, DataError
from medray.storage import atomic_write_text, delete, join_uri

REPORT_FILE = "report.json"
MAX_SHOWN = 5


# -- entries (driver side) --------------------------------------------------------------------
def build_entries(builder: BuilderOptions, class_map: dict[str, str] | None,
                  storage: StorageOptions | None) -> tuple[list[ManifestEntry], dict[str, int]]:
    """Entries from a folder layout; for mosmed, (entries, categories dropped by the class map)."""
    from medray.datasets import manifests as M

    if builder.kind == "class_folders":
        return M.from_class_folders(builder.root, storage), {}
    if builder.kind == "mosmed":
        return M.from_mosmed(builder.root, class_map, storage)
    return M.from_ham10000(builder.metadata_csv, builder.images_dir, storage), {}


def load_entries(cfg: IngestConfig) -> tuple[list[ManifestEntry], dict[str, int]]:
    """The manifest's entries with ``class_map`` applied; also how many were dropped per class."""
    from medray.datasets.manifests import read_manifest

    if cfg.builder is not None:
        entries, dropped = build_entries(cfg.builder, cfg.class_map, cfg.storage)
        if cfg.builder.kind == "mosmed":  # from_mosmed already applied the class map
            return entries, dropped
    else:
        entries, dropped = read_manifest(cfg.manifest, cfg.storage), {}
    return apply_class_map(entries, cfg.class_map)


def apply_class_map(entries: list[ManifestEntry], class_map: dict[str, str] | None
                    ) -> tuple[list[ManifestEntry], dict[str, int]]:
    """Rename classes by ``class_map``; entries whose class it does not list are dropped and counted."""
    if class_map is None:
        return list(entries), {}
    kept, dropped = [], collections.Counter()
    for entry in entries:
        if entry.label in class_map:
            kept.append(ManifestEntry(entry.source_ref, class_map[entry.label],
                                      {**entry.extra, "original_class": entry.label}))
        else:
            dropped[entry.label] += 1
    if not kept:
        found = sorted({e.label for e in entries})
        raise ConfigError(f"class_map {class_map} keeps no entry; manifest classes: {found}")
    return kept, dict(sorted(dropped.items()))


def resolve_classes(entries: list[ManifestEntry], classes: list[str] | None) -> list[str]:
    """``classes`` as given (every entry's class must be in it) or the sorted classes found."""
    found = sorted({e.label for e in entries})
    if classes is None:
        if len(found) < 2:
            raise ConfigError(f"the manifest holds {len(found)} class(es) {found}; a classifier needs >= 2")
        return found
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise ConfigError(f"manifest classes {unknown} are not in classes {classes}; add them to classes "
                          f"or rename/drop them with class_map (classes found: {found})")
    return list(classes)


def group_of(entry: ManifestEntry, keys: list[str]) -> str:
    """What must not straddle splits: the first manifest key of ``keys`` present, else the file."""
    for key in keys:
        value = entry.get(key)
        if value is not None and str(value) != "":
            return str(value)
    return entry.source_ref


def work_units(entries: list[ManifestEntry], classes: list[str], group_keys: list[str],
               rows_per_shard: int) -> list[dict[str, Any]]:
    """Consecutive chunks of ``rows_per_shard`` entries, each naming its shard."""
    index = {c: i for i, c in enumerate(classes)}
    items = [{"index": i, "source": e.source_ref, "label": index[e.label], "label_name": e.label,
              "group": group_of(e, group_keys)} for i, e in enumerate(entries)]
    return [{"chunk": k, "shard": f"part-{k:05d}", "items": items[start:start + rows_per_shard]}
            for k, start in enumerate(range(0, len(items), rows_per_shard))]


# -- loading + encoding (pure) ----------------------------------------------------------------
def to_stored(array: np.ndarray, encoding: str, quality: int = 92) -> bytes:
    """A float32 channel-first [0, 1] example → stored bytes: 8-bit PNG/JPEG (2D) or float32 NPY."""
    from medray.datasets.codec import encode_image

    if encoding == "npy":
        return encode_image(np.ascontiguousarray(array, dtype=np.float32), "npy")
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise DataError(f"{encoding} stores 2D images with 1 or 3 channels, got shape {array.shape}; use npy")
    pixels = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    pixels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    return encode_image(pixels, encoding, quality)


def load_item(source: str, loader: LoaderConfig, encoding: str, quality: int,
              storage: StorageOptions | None) -> tuple[bytes, tuple[int, ...]]:
    """Load one file with the shared loaders and encode it; raises on a bad file."""
    from medray.datasets.loaders import load_any

    array = load_any(source, config=loader, storage=storage)
    return to_stored(array, encoding, quality), tuple(int(n) for n in array.shape)


def _reason(err: Exception) -> str:
    """Why an item was skipped, for the report: the loader's own message, classified."""
    from medray.errors import StorageError

    if isinstance(err, StorageError):
        return f"missing or unreadable file: {err}"
    if isinstance(err, DataError):
        return str(err)
    return f"{type(err).__name__}: {err}"


def ingest_unit(unit: dict[str, Any], loader: LoaderConfig, encoding: str, quality: int,
                storage: StorageOptions | None):
    """A unit's entries → (Arrow table of the good ones, per-item status list)."""
    from medray.datasets.shards import rows_to_table

    rows, statuses = [], []
    for item in unit["items"]:
        status = {"index": item["index"], "source": item["source"], "label": item["label_name"],
                  "group": item["group"]}
        try:
            data, shape = load_item(item["source"], loader, encoding, quality, storage)
        except Exception as err:  # one bad file must not stop the others: it is reported instead
            statuses.append({**status, "status": "skipped", "reason": _reason(err)})
            continue
        rows.append({S.IMAGE: data, S.ENCODING: encoding, S.LABEL: item["label"],
                     S.LABEL_NAME: item["label_name"], S.GROUP: item["group"], S.SOURCE: item["source"]})
        statuses.append({**status, "status": "ok", "shape": list(shape), "shard": unit["shard"]})
    return rows_to_table(rows), statuses


def group_class_counts(table) -> dict[str, dict[str, int]]:
    """Rows per class per group of one shard (exact counts for a split by group)."""
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for group, label in zip(table.column(S.GROUP).to_pylist(), table.column(S.LABEL_NAME).to_pylist()):
        out[group][label] += 1
    return {g: dict(c) for g, c in sorted(out.items())}


# -- Ray Data task ----------------------------------------------------------------------------
def write_units(batch: dict[str, np.ndarray], output: str, loader: LoaderConfig, encoding: str, quality: int,
                storage: StorageOptions) -> dict[str, np.ndarray]:
    """Ray Data task body: each work unit in → its shard written → its record and item statuses out."""
    from medray.datasets.shards import write_shard

    out: dict[str, list] = {"chunk": [], "record": [], "items": [], "seconds": []}
    for text in batch["unit"]:
        unit = json.loads(text)
        start = time.perf_counter()
        table, statuses = ingest_unit(unit, loader, encoding, quality, storage)
        record = ""
        if table.num_rows:
            try:
                rec = write_shard(table, output, unit["shard"], storage)
                rec["group_class_counts"] = group_class_counts(table)
                record = json.dumps(rec)
            except Exception as err:  # the shard could not be stored: its items are reported as such
                reason = f"shard {unit['shard']} not written: {type(err).__name__}: {err}"
                statuses = [{**s, "status": "skipped", "reason": reason} if s["status"] == "ok" else s
                            for s in statuses]
        out["chunk"].append(unit["chunk"])
        out["record"].append(record)
        out["items"].append(json.dumps(statuses))
        out["seconds"].append(time.perf_counter() - start)
    return {k: np.asarray(v) for k, v in out.items()}


def _run_units(cfg: IngestConfig, units: list[dict[str, Any]], encoding: str, progress: bool
               ) -> tuple[list[dict], list[dict]]:
    """Load, encode and write every unit with Ray Data; returns (shard records, item statuses)."""
    import ray
    import ray.data
    from tqdm.auto import tqdm

    workers = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    items = [{"unit": json.dumps(u)} for u in units]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        write_units, batch_size=1, batch_format="numpy", num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=min(workers, len(items))),
        fn_kwargs={"output": cfg.output, "loader": cfg.loader, "encoding": encoding,
                   "quality": cfg.quality, "storage": cfg.storage})
    records, statuses = [], []
    total = sum(len(u["items"]) for u in units)
    with tqdm(total=total, desc="ingest", unit="file", disable=not progress) as bar:
        for row in ds.iter_rows():
            unit_statuses = json.loads(row["items"])
            statuses.extend(unit_statuses)
            if row["record"]:
                records.append(json.loads(row["record"]))
            bar.update(len(unit_statuses))
            bar.set_postfix(skipped=sum(s["status"] != "ok" for s in statuses), refresh=False)
    statuses.sort(key=lambda s: s["index"])
    return records, statuses


def _source_of(cfg: IngestConfig) -> dict[str, Any]:
    if cfg.manifest is not None:
        return {"manifest": cfg.manifest}
    return {"builder": cfg.builder.model_dump(mode="json")}


def run_ingest(cfg: IngestConfig, progress: bool = True) -> dict[str, Any]:
    """Ingest the manifest into ``cfg.output``; returns a summary (also in ``report.json``).

    Raises ``DataError`` (after writing the report) when not one item could be ingested.
    """
    from medray.config.base import config_hash, write_resolved_config
    from medray.datasets.manifests import shuffle
    from medray.datasets.shards import finalize_dataset

    started = time.perf_counter()
    entries, dropped = load_entries(cfg)
    classes = resolve_classes(entries, cfg.classes)
    if cfg.shuffle_seed is not None:
        entries = shuffle(entries, cfg.shuffle_seed)
    encoding = cfg.resolved_encoding()
    ensure_ray(cfg.ray)
    delete(join_uri(cfg.output, S.METADATA_FILE), cfg.storage)  # incomplete until the end
    write_resolved_config(cfg, cfg.output, cfg.storage)

    units = work_units(entries, classes, cfg.group_keys, cfg.rows_per_shard)
    records, statuses = _run_units(cfg, units, encoding, progress)
    ok = [s for s in statuses if s["status"] == "ok"]
    skipped = [{k: s[k] for k in ("index", "source", "label", "reason")} for s in statuses if s["status"] != "ok"]
    shapes = sorted({tuple(s["shape"]) for s in ok})
    summary: dict[str, Any] = {
        "output": cfg.output, "dataset": None, "kind": cfg.loader.kind, "encoding": encoding,
        "classes": classes, **_source_of(cfg),
        "counts": {"entries": len(entries), "ingested": len(ok), "skipped": len(skipped),
                   "dropped_by_class_map": sum(dropped.values()), "shards": len(records)},
        "class_counts": {c: sum(s["label"] == c for s in ok) for c in classes},
        "dropped_by_class_map": dropped,
        "shape": list(shapes[0]) if len(shapes) == 1 else [list(s) for s in shapes],
        "skipped": skipped,
        "seconds": None, "items": statuses,
    }
    if records:
        chash = config_hash(cfg.model_copy(update={"workers": None, "storage": StorageOptions()}))
        finalize_dataset(cfg.output, records, classes, cfg.loader.kind, cfg.storage,
                         extra={"config_hash": chash, "encoding": encoding, "shape": summary["shape"],
                                "loader": cfg.loader.model_dump(mode="json"), "skipped": len(skipped),
                                **_source_of(cfg)})
        summary["dataset"] = join_uri(cfg.output, S.METADATA_FILE)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["report"] = join_uri(cfg.output, REPORT_FILE)
    atomic_write_text(summary["report"], json.dumps(summary, indent=1), cfg.storage)
    if not records:
        shown = "; ".join(f"{s['source']}: {s['reason']}" for s in skipped[:MAX_SHOWN])
        raise DataError(f"no item of {len(entries)} could be ingested into {cfg.output!r} (see {summary['report']}); "
                        f"first reasons: {shown}")
    return {k: v for k, v in summary.items() if k != "items"}


__all__ = ["IngestConfig", "apply_class_map", "group_of", "ingest_unit", "load_entries", "resolve_classes",
           "run_ingest", "to_stored", "work_units"]
