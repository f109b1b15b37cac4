"""Distributed patch extraction: slides + annotations → Parquet shards in object storage, resumable.

Flow: plan each slide in a Ray task (tissue mask, coordinates, bounds filtering, overview PNG);
split its patches into work units; a Ray Data pipeline reads + encodes each unit in parallel
tasks (each worker process keeps its slides open) and writes one shard per unit; a slide's marker
``_markers/<slide_id>.json`` is written once all its shards are; ``dataset.json`` comes last.
A re-run skips slides whose marker matches the config and redoes the rest under the same shard
names, so nothing is duplicated or missing. ``report.json`` says what happened to every slide.
"""

from __future__ import annotations

import collections
import fnmatch
import json
import math
import re
import time
from typing import Any

import numpy as np

from medray.runtime import ensure_ray, json_safe
from medray.config.common import StorageOptions
from medray.datasets import extract_plan as P
from medray.datasets import schema as S
from medray.datasets.extract_config import SLIDE_SUFFIXES, ExtractConfig
from medray.errors import ConfigError, StorageError
from medray.storage import atomic_write_text, delete, exists, is_file, join_uri, list_files, read_bytes

MARKERS = "_markers"
REPORT_FILE = "report.json"
DATASET_KIND = "slide_patches"
MAX_RUN = 8           # patches read in one region call (a row strip of adjacent patches)
SLIDE_CACHE = 4       # open slides kept per worker
STAGES = ("read", "encode", "table", "write")  # reader-task timings, summed over the run in the report


# -- inputs ---------------------------------------------------------------------------------
def resolve_slide_uris(slides: list[str] | str, storage: StorageOptions | None = None) -> list[str]:
    """A list as given; a glob (``*``, ``?``, ``[``) or folder expands to the slide files in it."""
    if isinstance(slides, list):
        if not slides:
            raise ConfigError("slides is an empty list; give slide URIs, a folder or a glob")
        return [str(s) for s in slides]
    uri = str(slides)
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    if any(ch in name for ch in "*?["):
        folder = uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri else "."
        found = [f for f in list_files(folder, storage, recursive=False)
                 if fnmatch.fnmatch(f.rsplit("/", 1)[-1], name)]
    elif exists(uri, storage) and not is_file(uri, storage):
        found = [f for f in list_files(uri, storage, recursive=False) if f.lower().endswith(SLIDE_SUFFIXES)]
    else:
        found = [uri] if exists(uri, storage) else []
    if not found:
        raise ConfigError(f"slides={uri!r} matches no slide file (looked for {', '.join(SLIDE_SUFFIXES)}); "
                          f"give a folder, a glob like 'slides/*.tif' or a list of URIs")
    return found


def resolve_annotations(cfg: ExtractConfig, slide_uris: list[str]) -> dict[str, list[str]]:
    """slide_id → annotation URIs: the explicit mapping first, else the folder convention."""
    listings: dict[str, set[str]] = {}

    def available(folder: str) -> set[str]:
        if folder not in listings:
            listings[folder] = set(list_files(folder, cfg.storage, recursive=False))
        return listings[folder]

    out = {}
    for uri in slide_uris:
        slide_id = P.slide_id_of(uri)
        if slide_id in cfg.annotations:
            out[slide_id] = list(cfg.annotations[slide_id])
            continue
        beside = uri.rsplit("/", 1)[0] if "/" in uri else "."
        folders = ([cfg.annotations_dir] if cfg.annotations_dir else []) + [beside]
        seen: set[str] = set()
        for folder in folders:
            seen |= available(folder)
        out[slide_id] = P.find_annotation_uris(slide_id, folders, seen, cfg.classes)
    unknown = sorted(set(cfg.annotations) - set(out))
    if unknown:
        raise ConfigError(f"annotations name slide ids {unknown} that are not among the slides "
                          f"{sorted(out)[:10]}{' ...' if len(out) > 10 else ''}")
    return out


# -- planning (runs in a Ray task per slide) -------------------------------------------------
def plan_slide(uri: str, annotation_uris: list[str], cfg: ExtractConfig) -> tuple[P.SlidePlan, dict]:
    """Open the slide, find tissue, load annotations, choose coordinates; write its overview PNG."""
    from medray.slides.annotations import load_annotations
    from medray.slides.reader import open_slide
    from medray.slides.tissue import tissue_mask

    slide_id = P.slide_id_of(uri)
    rng = P.slide_rng(cfg.seed, slide_id)
    classes = cfg.classes
    normal, tumor = 0, 1
    tumor_names = {t.lower() for t in cfg.tumor_labels}
    polygons, points = [], {}
    for ann_uri in annotation_uris:
        cls = P.csv_class(ann_uri, slide_id, classes)
        if ann_uri.lower().endswith(".csv"):
            if cls is None:
                raise ConfigError(f"{ann_uri!r}: a points CSV must be named <slide_id>_<class>.csv "
                                  f"with a class in {classes}")
            found = load_annotations(ann_uri, cfg.storage, label=cls)
            index = classes.index(cls)
            points[index] = np.concatenate([points[index], found]) if index in points else found
        else:
            polygons.extend(load_annotations(ann_uri, cfg.storage))
    tumor_polygons = [a for a in polygons if a.label.lower() in tumor_names]

    slide = open_slide(uri, cfg.storage)
    if slide.mpp is None and cfg.mpp_override is not None:  # the override is for slides without mpp only
        slide.close()
        slide = open_slide(uri, cfg.storage, cfg.mpp_override)
    with slide:
        level, mpp = P.choose_level(slide, cfg.level, cfg.mpp, cfg.mpp_tolerance)
        downsample = slide.level_downsamples[level]
        extent = P.level_extent(cfg.patch_size, downsample)
        need_mask = cfg.mode != "annotations" or cfg.overviews
        mask = tissue_mask(slide, cfg.tissue) if need_mask else None
        min_fraction = cfg.tissue.min_tissue_fraction
        if cfg.mode == "annotations":
            if not points:
                raise ConfigError(
                    f"slide {slide_id}: mode 'annotations' needs points CSVs "
                    f"{[f'{slide_id}_{c}.csv' for c in classes]}; found annotations {annotation_uris}; "
                    f"use mode 'polygons' or 'grid' for polygon annotations")
            corners, labels = P.coordinates_from_points(points, extent)
        elif cfg.mode == "polygons":
            corners, labels = P.coordinates_from_polygons(mask, tumor_polygons, cfg.max_per_label or 1000,
                                                          extent, min_fraction, rng, normal, tumor)
        else:
            corners, labels = P.coordinates_from_grid(mask, tumor_polygons, cfg.patch_size,
                                                      cfg.stride or cfg.patch_size, downsample,
                                                      min_fraction, normal, tumor)
        plan = P.finish_plan(slide_id, uri, level, mpp, cfg.patch_size, extent, slide.dimensions,
                             corners, labels, classes, cfg.max_per_label, rng)
        extra = {"dimensions": list(slide.dimensions), "level_count": slide.level_count,
                 "slide_mpp": slide.mpp, "mpp_override": slide.mpp_override,
                 "tumor_polygons": len(tumor_polygons), "polygons": len(polygons)}
        if cfg.overviews:
            from medray.datasets.contact_sheet import overview_image, write_png

            thumb, thumb_ds = slide.thumbnail(1024)
            image = overview_image(thumb, thumb_ds, mask.mask if mask is not None else None, polygons,
                                   plan.xs, plan.ys, plan.labels, plan.extent)
            extra["overview"] = write_png(image, join_uri(cfg.output, "overviews", f"{slide_id}.png"), cfg.storage)
    return plan, extra


def _plan_task(uri: str, annotation_uris: list[str], cfg: ExtractConfig) -> dict[str, Any]:
    """Ray task body: a plan, or the reason this slide cannot be planned (never raises)."""
    start = time.perf_counter()
    try:
        plan, extra = plan_slide(uri, annotation_uris, cfg)
        return {"plan": plan, "extra": extra, "seconds": time.perf_counter() - start}
    except Exception as err:  # one bad slide must not stop the others: recorded in the report
        return {"error": f"{type(err).__name__}: {err}", "seconds": time.perf_counter() - start}


# -- reading + encoding (Ray Data tasks) -------------------------------------------------------
def read_unit_strips(slide: Any, unit: dict[str, Any]):
    """Yield (first index, patch count, H×(count·W)×4 B,G,R,X strip) for a unit's patches.

    Row runs of up to ``MAX_RUN`` adjacent patches are read in one region call into one buffer
    reused for the whole unit (OpenSlide's own pixel layout: no conversion, no fresh pages);
    a strip is only valid until the next one is read.
    """
    xs, ys = np.asarray(unit["xs"], np.int64), np.asarray(unit["ys"], np.int64)
    size, extent, level = unit["size"], unit["extent"], unit["level"]
    exact = math.isclose(size * slide.level_downsamples[level], extent)
    # Row runs save OpenSlide calls; a directly decoded JPEG level is read patch by patch, so a
    # tile-sized patch decodes straight into the buffer instead of through a tile copy.
    batched = exact and level not in getattr(slide, "direct_tile_levels", ())
    runs = P.strip_runs(xs, ys, extent, MAX_RUN if batched else 1)
    buffer = np.empty(size * size * max((length for _, length in runs), default=0), np.uint32)
    for start, length in runs:
        yield start, length, slide.read_region_bgrx(int(xs[start]), int(ys[start]), level, (size * length, size),
                                                    out=buffer)


def encode_patch(bgrx: np.ndarray, encoding: str, quality: int) -> bytes:
    """One B,G,R,X patch view → JPEG straight from the view, or PNG of its RGB."""
    import cv2

    from medray.datasets.codec import encode_image, encode_jpeg

    if encoding == "jpeg":
        return encode_jpeg(bgrx, quality, order="bgrx")
    return encode_image(cv2.cvtColor(bgrx, cv2.COLOR_BGRA2RGB), encoding, quality)


def encode_unit(slide: Any, unit: dict[str, Any], timings: dict[str, float] | None = None):
    """A unit's patches as a PATCH_SCHEMA Arrow table (encoded images plus provenance).

    ``timings``, when given, gains the seconds spent per stage: ``read`` (OpenSlide, including
    the composite on white where a region is not opaque), ``encode`` and ``table``.
    """
    import pyarrow as pa

    clock = time.perf_counter
    n = len(unit["xs"])
    size, encoding, quality = unit["size"], unit["encoding"], unit["quality"]
    images: list[bytes] = [b""] * n
    read_s = encode_s = 0.0
    strips = read_unit_strips(slide, unit)
    while True:
        t0 = clock()
        item = next(strips, None)
        t1 = clock()
        read_s += t1 - t0
        if item is None:
            break
        start, length, strip = item
        for k in range(length):
            images[start + k] = encode_patch(strip[:, k * size:(k + 1) * size], encoding, quality)
        encode_s += clock() - t1
    t0 = clock()
    classes = unit["classes"]
    labels = np.asarray(unit["labels"], np.int64)

    def same(value: Any, kind: pa.DataType) -> pa.Array:
        return pa.array([value] * n, kind)

    columns = {
        "image": pa.array(images, pa.binary()),
        "encoding": same(encoding, pa.string()),
        "label": pa.array(labels, pa.int64()),
        "label_name": pa.array(np.asarray(classes, dtype=object)[labels], pa.string()),
        "group": same(unit["slide_id"], pa.string()),
        "source": same(unit["uri"], pa.string()),
        "slide_id": same(unit["slide_id"], pa.string()),
        "x": pa.array(np.asarray(unit["xs"], np.int64), pa.int64()),
        "y": pa.array(np.asarray(unit["ys"], np.int64), pa.int64()),
        "level": same(unit["level"], pa.int64()),
        "mpp": same(unit["mpp"], pa.float64()),
        "size": same(size, pa.int64()),
        "config_hash": same(unit["config_hash"], pa.string()),
    }
    table = pa.Table.from_pydict(columns, schema=S.PATCH_SCHEMA)
    if timings is not None:
        for stage, spent in (("read", read_s), ("encode", encode_s), ("table", clock() - t0)):
            timings[stage] = timings.get(stage, 0.0) + spent
    return table


_OPEN_SLIDES: collections.OrderedDict[tuple, Any] = collections.OrderedDict()


def cached_slide(uri: str, storage: StorageOptions | None, mpp_override: float | None):
    """This worker process's open handle of a slide (LRU of ``SLIDE_CACHE``): opened once per worker."""
    from medray.slides.reader import open_slide

    key = (uri, mpp_override)
    if key in _OPEN_SLIDES:
        _OPEN_SLIDES.move_to_end(key)
        return _OPEN_SLIDES[key]
    slide = open_slide(uri, storage, mpp_override)
    _OPEN_SLIDES[key] = slide
    while len(_OPEN_SLIDES) > SLIDE_CACHE:
        _OPEN_SLIDES.popitem(last=False)[1].close()
    return slide


def write_units(batch: dict[str, np.ndarray], output: str, storage: StorageOptions) -> dict[str, np.ndarray]:
    """Ray Data task body: each work unit in → its shard written → its record (or error) out.

    A task, not an actor: Ray reuses warm worker processes, and the module-level slide cache
    keeps each slide open once per process.
    """
    from medray.datasets.shards import write_shard

    out: dict[str, list] = {"slide_id": [], "chunk": [], "record": [], "error": [], "seconds": [],
                            **{f"{stage}_seconds": [] for stage in STAGES}}
    for text in batch["unit"]:
        unit = json.loads(text)
        start = time.perf_counter()
        record, error = "", ""
        timings: dict[str, float] = {}
        try:
            table = encode_unit(cached_slide(unit["uri"], storage, unit["mpp_override"]), unit, timings)
            t0 = time.perf_counter()
            # Image bytes are JPEG/PNG already: zstd won 4% for 2% of the unit's time.
            record = json.dumps(write_shard(table, output, unit["shard"], storage, compression="none"))
            timings["write"] = time.perf_counter() - t0
        except Exception as err:  # recorded per unit; the slide is then reported failed
            error = f"{type(err).__name__}: {err}"
        out["slide_id"].append(unit["slide_id"])
        out["chunk"].append(unit["chunk"])
        out["record"].append(record)
        out["error"].append(error)
        out["seconds"].append(time.perf_counter() - start)
        for stage in STAGES:
            out[f"{stage}_seconds"].append(timings.get(stage, 0.0))
    return {k: np.asarray(v) for k, v in out.items()}


# -- markers, report --------------------------------------------------------------------------
def marker_uri(output: str, slide_id: str) -> str:
    return join_uri(output, MARKERS, f"{slide_id}.json")


def read_marker(output: str, slide_id: str, config_hash: str, storage: StorageOptions | None) -> dict | None:
    """The slide's completion marker when it matches this config and all its shards exist."""
    try:
        marker = json.loads(read_bytes(marker_uri(output, slide_id), storage))
    except (StorageError, ValueError):
        return None
    if marker.get("config_hash") != config_hash:
        return None
    if not all(exists(r["uri"], storage) for r in marker.get("shards", [])):
        return None
    return marker


def remove_stale_shards(output: str, markers: dict[str, dict], storage: StorageOptions | None) -> list[str]:
    """Delete shards of the given slides that their markers do not list (left by an older chunking)."""
    if not markers:
        return []
    listed = {r["uri"].rsplit("/", 1)[-1] for m in markers.values() for r in m["shards"]}
    pattern = re.compile(r"^(?P<sid>.+)-\d{5}\.parquet$")
    stale = []
    for uri in list_files(join_uri(output, "shards"), storage, suffix=".parquet", recursive=False):
        name = uri.rsplit("/", 1)[-1]
        match = pattern.match(name)
        if match and match.group("sid") in markers and name not in listed:
            delete(uri, storage)
            stale.append(uri)
    return stale


def _slide_entry(slide_id: str, uri: str, status: str, **fields: Any) -> dict[str, Any]:
    return {"slide_id": slide_id, "uri": uri, "status": status, **fields}


def units_pipeline(units: list[str], fn: Any, workers: int, fn_kwargs: dict[str, Any]) -> Any:
    """The Ray Data pipeline: one block and one task per unit, at most ``workers`` at a time.

    Ray Data's default per-operator resource reservation starts this single map operator with
    one task until its budget catches up (seen on 2 CPUs: the second reader idled through the
    first unit); it only matters between operators, and there is one, so it is turned off for
    this dataset only.
    """
    import ray.data

    ds = ray.data.from_items([{"unit": u} for u in units], override_num_blocks=len(units)).map_batches(
        fn, batch_size=1, batch_format="numpy", num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=max(1, min(workers, len(units)))), fn_kwargs=fn_kwargs)
    ds.context.op_resource_reservation_enabled = False
    return ds


def _warm_worker(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Import what a reader task needs, so the first real unit does not pay for it."""
    import cv2  # noqa: F401
    import imagecodecs  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import pyarrow.fs  # noqa: F401

    import medray.datasets.codec  # noqa: F401
    import medray.datasets.shards  # noqa: F401
    import medray.slides.reader  # noqa: F401
    import medray.storage  # noqa: F401
    return batch


def warm_up_pipeline(workers: int) -> None:
    """Run a no-op copy of the pipeline while the slides are planned.

    The first Ray Data run in a driver waited 3–4 s (idle 2-core machine) before its first task
    started (executor and worker set-up, imports in each worker process); paid here, it
    overlaps the planning tasks instead of delaying the extraction, and the worker processes
    that run the units find ``ray.data``, OpenSlide and the codecs already imported.
    """
    units_pipeline([""] * workers, _warm_worker, workers, {}).take_all()


def run_extract(cfg: ExtractConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) an extraction; returns the report (also written to ``report.json``)."""
    import ray
    from tqdm.auto import tqdm

    from medray.config.base import write_resolved_config
    from medray.datasets.shards import finalize_dataset

    started = time.perf_counter()
    storage, output, classes = cfg.storage, cfg.output, cfg.classes
    chash = cfg.extraction_hash()
    slide_uris = resolve_slide_uris(cfg.slides, storage)
    ids = [P.slide_id_of(u) for u in slide_uris]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"slide ids must be unique (they name shards and groups); duplicated: {dupes}")
    annotations = resolve_annotations(cfg, slide_uris)
    write_resolved_config(cfg, output, storage)
    ensure_ray(cfg.ray)  # after the inputs are checked: a wrong path fails fast, without a cluster

    entries: dict[str, dict[str, Any]] = {}
    markers: dict[str, dict] = {}
    todo = []
    for uri, slide_id in zip(slide_uris, ids):
        marker = read_marker(output, slide_id, chash, storage)
        if marker is not None:
            markers[slide_id] = marker
            entries[slide_id] = _slide_entry(slide_id, uri, "skipped-complete", patches=marker["patches"],
                                             dropped=marker["dropped"], seconds=0.0)
        else:
            todo.append((uri, slide_id))
    if todo:
        delete(join_uri(output, S.METADATA_FILE), storage)  # the dataset is incomplete until the end

    # 1. plan the slides to do, in parallel
    plan_remote = ray.remote(num_cpus=1, max_retries=0)(_plan_task)
    cfg_ref = ray.put(cfg)
    pending = {plan_remote.remote(uri, annotations[sid], cfg_ref): (uri, sid) for uri, sid in todo}
    workers = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    if todo:
        warm_up_pipeline(workers)  # overlaps the planning tasks
    plans: dict[str, P.SlidePlan] = {}
    plan_info: dict[str, dict] = {}
    with tqdm(total=len(pending), desc="plan slides", unit="slide", disable=not progress) as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            uri, sid = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as err:  # the worker died (out of memory, killed)
                result = {"error": f"{type(err).__name__}: {err}"[:2000], "seconds": 0.0}
            bar.update(1)
            if "error" in result:
                entries[sid] = _slide_entry(sid, uri, "failed", reason=result["error"], seconds=result["seconds"])
                continue
            plan = result["plan"]
            if plan.num_patches == 0 and sum(plan.dropped.values()) > 0:
                entries[sid] = _slide_entry(
                    sid, uri, "failed", dropped=plan.dropped, seconds=result["seconds"],
                    reason=f"all {sum(plan.dropped.values())} coordinates lie off the slide "
                           f"(level-0 size {plan.dimensions[0]}×{plan.dimensions[1]}); are the "
                           f"annotations for another slide or level?")
                continue
            plans[sid] = plan
            plan_info[sid] = {**result["extra"], "plan_seconds": result["seconds"]}

    # 2. extract every unit with Ray Data; write a slide's marker when its last shard lands
    common = {"encoding": cfg.encoding, "quality": cfg.quality, "classes": classes, "config_hash": chash}
    units = [u for sid, plan in plans.items() for u in P.work_units(
        plan, cfg.rows_per_shard, {**common, "mpp_override": plan_info[sid]["mpp_override"]}, workers)]
    got: dict[str, dict[int, dict]] = {sid: {} for sid in plans}
    errors: dict[str, list[str]] = {sid: [] for sid in plans}
    seconds: dict[str, float] = {sid: plan_info[sid]["plan_seconds"] for sid in plans}
    stage_seconds = {stage: 0.0 for stage in STAGES}

    def complete(sid: str) -> None:
        plan = plans[sid]
        if errors[sid]:
            entries[sid] = _slide_entry(sid, plan.uri, "failed", reason=errors[sid][0],
                                        failed_units=len(errors[sid]), seconds=seconds[sid])
            return
        marker = {"slide_id": sid, "uri": plan.uri, "config_hash": chash, "level": plan.level,
                  "mpp": plan.mpp, "patches": plan.counts(classes), "dropped": plan.dropped,
                  "requested": plan.requested, "shards": [got[sid][c] for c in sorted(got[sid])],
                  **{k: v for k, v in plan_info[sid].items() if k != "plan_seconds"}}
        marker = json_safe(marker)
        atomic_write_text(marker_uri(output, sid), json.dumps(marker, indent=1), storage)
        markers[sid] = marker
        entries[sid] = _slide_entry(sid, plan.uri, "ok", patches=marker["patches"], dropped=plan.dropped,
                                    shards=len(marker["shards"]), seconds=seconds[sid])

    for sid, plan in plans.items():
        if plan.num_patches == 0:
            complete(sid)
    remaining = collections.Counter(u["slide_id"] for u in units)
    plan_seconds = time.perf_counter() - started
    extract_started = time.perf_counter()
    if units:
        ds = units_pipeline([json.dumps(u) for u in units], write_units, workers,
                            {"output": output, "storage": storage})
        with tqdm(total=sum(p.num_patches for p in plans.values()), desc="extract", unit="patch",
                  disable=not progress) as bar:
            for row in ds.iter_rows():
                sid = str(row["slide_id"])
                seconds[sid] += float(row["seconds"])
                for stage in STAGES:
                    stage_seconds[stage] += float(row[f"{stage}_seconds"])
                if row["error"]:
                    errors[sid].append(f"chunk {int(row['chunk'])}: {row['error']}")
                else:
                    record = json.loads(row["record"])
                    got[sid][int(row["chunk"])] = record
                    bar.update(record["rows"])
                remaining[sid] -= 1
                if remaining[sid] == 0:
                    complete(sid)
    extract_seconds = time.perf_counter() - extract_started
    remove_stale_shards(output, {sid: markers[sid] for sid in plans if sid in markers}, storage)

    # 3. the dataset: every complete slide of this config, listed last
    ordered = [entries[sid] for sid in ids]
    complete_ids = [sid for sid in ids if sid in markers]
    shards = [r for sid in complete_ids for r in markers[sid]["shards"]]
    totals = {c: sum(markers[sid]["patches"].get(c, 0) for sid in complete_ids) for c in classes}
    written = sum(sum(plans[sid].counts(classes).values()) for sid in plans if entries[sid]["status"] == "ok")
    report = {
        "output": output, "config_hash": chash, "mode": cfg.mode,
        "slides": ordered,
        "counts": {s: sum(e["status"] == s for e in ordered) for s in ("ok", "skipped-complete", "failed")},
        "patches": totals, "patches_written_this_run": written,
        "plan_seconds": round(plan_seconds, 3),
        "extract_seconds": round(extract_seconds, 3),
        "patches_per_second": round(written / extract_seconds, 1) if extract_seconds > 0 and written else None,
        # Worker seconds per stage over all units of this run (sum over readers, not wall time).
        "stage_seconds": {stage: round(v, 6) for stage, v in stage_seconds.items()},  # µs: some stages are tiny
        "seconds": round(time.perf_counter() - started, 3),
        "dataset": None,
    }
    if shards:
        finalize_dataset(output, shards, classes, DATASET_KIND, storage,
                         extra={"config_hash": chash, "mode": cfg.mode, "patch_size": cfg.patch_size,
                                "slides_failed": [e["slide_id"] for e in ordered if e["status"] == "failed"]})
        report["dataset"] = join_uri(output, S.METADATA_FILE)
        if cfg.overviews:
            from medray.datasets.contact_sheet import contact_sheet, sample_patches, write_png

            samples = sample_patches([r["uri"] for r in shards], classes, 16, storage, cfg.seed)
            report["contact_sheet"] = write_png(contact_sheet(samples), join_uri(output, "contact_sheet.png"),
                                                storage)
    atomic_write_text(join_uri(output, REPORT_FILE), json.dumps(json_safe(report), indent=1), storage)
    return report


def shard_paths(output: str, storage: StorageOptions | None = None) -> list[str]:
    """Every shard file under the output (complete or stale), for checks and clean-up tools."""
    return list_files(join_uri(output, "shards"), storage, suffix=".parquet")


__all__ = ["ExtractConfig", "encode_unit", "plan_slide", "read_marker", "resolve_annotations",
           "resolve_slide_uris", "run_extract", "shard_paths"]
