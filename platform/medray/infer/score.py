"""The scoring job: slides + a model → per-slide probability maps, TIFF, overlay PNG and reports.

Flow: load the model once on the driver (its preprocessing says level/mpp/patch size; a model
that cannot load fails every slide with that reason); plan each slide in a Ray task (tissue mask,
grid, thumbnail); cut the tissue cells into work units; a Ray Data pipeline reads each unit's
patches in parallel tasks (worker-cached slide handles) and feeds an actor pool holding the model,
so reads and inference overlap; probabilities stream back to the driver (``iter_batches``) into the
grid map, the only per-slide array ever held. A slide's outputs are written when its last patch
lands, its ``report.json`` last; the job's ``report.json`` lists every slide's status.
"""

from __future__ import annotations

import collections
import json
import math
import time
from pathlib import PurePosixPath
from typing import Any, Callable

import numpy as np

from medray.runtime import ensure_ray, json_safe
from medray.config.common import StorageOptions
from medray.errors import MedrayError
from medray.infer import heatmap as H
from medray.infer import score_plan as P
from medray.infer.score_config import ScoreConfig
from medray.storage import atomic_local_path, atomic_write_bytes, atomic_write_text, join_uri

REPORT_FILE = "report.json"
MAX_RUN = 8        # adjacent patches read in one region call
SLIDE_CACHE = 4    # open slides kept per reader process
OUTPUT_FILES = {"map": "heatmap.npy", "tiff": "heatmap.tif", "overlay": "overlay.png", "report": REPORT_FILE}

ProgressCallback = Callable[[dict[str, Any]], None]


# -- model and resolution -----------------------------------------------------------------------
def model_geometry(preprocessing: Any, cfg: ScoreConfig) -> dict[str, Any]:
    """Patch size, stride and input size from the config, else the model's ``preprocessing.info``."""
    info = dict(preprocessing.info or {})
    shape = preprocessing.shape
    input_size = (int(shape[0]), int(shape[1]))
    patch = cfg.patch_size or info.get("patch_size") or input_size[0]
    return {"info": info, "patch_size": int(patch), "stride": int(cfg.stride or patch), "input_size": input_size}


def resolve_threshold(cfg: ScoreConfig, model_threshold: float | None) -> float:
    if cfg.threshold is not None:
        return float(cfg.threshold)
    return float(model_threshold) if model_threshold is not None else 0.5


# -- inputs ---------------------------------------------------------------------------------------
def resolve_truth(cfg: ScoreConfig, slide_uris: list[str]) -> dict[str, str | None]:
    """slide_id → ground-truth polygons URI: the explicit mapping, else ``<slide_id>.xml|.geojson``
    in ``annotations_dir`` or beside the slide."""
    from medray.storage import list_files

    listings: dict[str, set[str]] = {}
    out: dict[str, str | None] = {}
    for uri in slide_uris:
        sid = slide_id_of(uri)
        if sid in cfg.annotations:
            out[sid] = cfg.annotations[sid]
            continue
        out[sid] = None
        if not cfg.evaluate:
            continue
        folders = ([cfg.annotations_dir] if cfg.annotations_dir else []) + [uri.rsplit("/", 1)[0] if "/" in uri else "."]
        for folder in folders:
            if folder not in listings:
                try:
                    listings[folder] = set(list_files(folder, cfg.storage, recursive=False))
                except MedrayError:
                    listings[folder] = set()
            hits = [f"{folder.rstrip('/')}/{sid}{suffix}" for suffix in (".xml", ".geojson")]
            found = [h for h in hits if h in listings[folder]]
            if found:
                out[sid] = found[0]
                break
    return out


def slide_id_of(uri: str) -> str:
    """File name without its extension: ``s3://b/slides/tumor_001.tif`` → ``tumor_001``."""
    return PurePosixPath(str(uri).rstrip("/").rsplit("/", 1)[-1]).stem


# -- planning (a Ray task per slide) ------------------------------------------------------------
def plan_slide(uri: str, cfg: ScoreConfig, geometry: dict[str, Any], truth_uri: str | None) -> dict[str, Any]:
    """Open the slide, choose the level, build the grid and the tissue cells, read the thumbnail."""
    from medray.slides.annotations import load_annotations
    from medray.slides.reader import open_slide
    from medray.slides.tissue import tissue_mask

    start = time.perf_counter()
    slide = open_slide(uri, cfg.storage)
    if slide.mpp is None and cfg.mpp_override is not None:
        slide.close()
        slide = open_slide(uri, cfg.storage, cfg.mpp_override)
    with slide:
        level = P.choose_resolution(slide, geometry["info"], cfg.level, cfg.mpp, cfg.mpp_tolerance)
        grid = P.make_grid(slide, level, geometry["patch_size"], geometry["stride"])
        mask = tissue_mask(slide, cfg.tissue)
        cells = P.tissue_cells(grid, mask.fractions, cfg.tissue.min_tissue_fraction)
        thumbnail, thumb_ds = slide.thumbnail(cfg.overlay_size)
        mpp_override = slide.mpp_override
    tumor = None
    if truth_uri is not None:
        names = {t.lower() for t in cfg.tumor_labels}
        tumor = [a for a in load_annotations(truth_uri, cfg.storage) if a.label.lower() in names]
    return {"grid": grid, "cells": np.packbits(cells), "cells_shape": cells.shape, "thumbnail": thumbnail,
            "thumb_ds": thumb_ds, "tissue_fraction": mask.tissue_fraction, "mpp_override": mpp_override,
            "tumor": tumor, "seconds": time.perf_counter() - start}


def _plan_task(uri: str, cfg: ScoreConfig, geometry: dict[str, Any], truth_uri: str | None) -> dict[str, Any]:
    """Ray task body: a plan, or why this slide cannot be planned (never raises)."""
    start = time.perf_counter()
    try:
        return plan_slide(uri, cfg, geometry, truth_uri)
    except Exception as err:  # one bad slide must not stop the others: recorded in the report
        return {"error": f"{type(err).__name__}: {err}", "seconds": time.perf_counter() - start}


def unpack_cells(plan: dict[str, Any]) -> np.ndarray:
    shape = plan["cells_shape"]
    return np.unpackbits(plan["cells"], count=shape[0] * shape[1]).reshape(shape).astype(bool)


# -- reading (Ray Data tasks) -------------------------------------------------------------------
_OPEN: collections.OrderedDict[tuple, Any] = collections.OrderedDict()


def cached_slide(uri: str, storage: StorageOptions | None, mpp_override: float | None) -> Any:
    """This process's open handle of a slide (LRU of ``SLIDE_CACHE``)."""
    from medray.slides.reader import open_slide

    key = (uri, mpp_override)
    if key not in _OPEN:
        _OPEN[key] = open_slide(uri, storage, mpp_override)
        while len(_OPEN) > SLIDE_CACHE:
            _OPEN.popitem(last=False)[1].close()
    _OPEN.move_to_end(key)
    return _OPEN[key]


def read_unit(slide: Any, unit: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """(N×h×w×3 patches resized to the model input, per-patch error or ''), strips of adjacent cells."""
    import cv2

    rows, cols = np.asarray(unit["rows"]), np.asarray(unit["cols"])
    size, level, stride0 = unit["patch_size"], unit["level"], unit["stride0"]
    in_h, in_w = unit["input_size"]
    out = np.zeros((len(rows), in_h, in_w, 3), np.uint8)
    errors = [""] * len(rows)
    adjacent = unit["patch_size"] == unit["stride"]
    for start, length in P.strip_runs(rows, cols, MAX_RUN if adjacent else 1):
        x = int(round(cols[start] * stride0))
        y = int(round(rows[start] * stride0))
        try:
            strip = slide.read_region(x, y, level, (size * length, size))
        except MedrayError as err:
            errors[start:start + length] = [f"{type(err).__name__}: {err}"] * length
            continue
        for k in range(length):
            patch = strip[:, k * size:(k + 1) * size]
            if (size, size) != (in_h, in_w):
                patch = cv2.resize(patch, (in_w, in_h), interpolation=cv2.INTER_AREA)
            out[start + k] = patch
    return out, errors


def read_units(batch: dict[str, np.ndarray], storage: StorageOptions | None) -> dict[str, np.ndarray]:
    """Ray Data task body: work units (JSON) in → one row per patch out (image, ids, error)."""
    images, slides, rows, cols, errors = [], [], [], [], []
    for text in batch["unit"]:
        unit = json.loads(text)
        n = len(unit["rows"])
        try:
            patches, errs = read_unit(cached_slide(unit["uri"], storage, unit["mpp_override"]), unit)
        except Exception as err:  # the slide vanished or cannot be opened here: every patch fails
            h, w = unit["input_size"]
            patches, errs = np.zeros((n, h, w, 3), np.uint8), [f"{type(err).__name__}: {err}"] * n
        images.append(patches)
        slides.append(np.full(n, unit["slide"], np.int32))
        rows.append(np.asarray(unit["rows"], np.int32))
        cols.append(np.asarray(unit["cols"], np.int32))
        errors.extend(errs)
    return {"image": np.concatenate(images), "slide": np.concatenate(slides), "row": np.concatenate(rows),
            "col": np.concatenate(cols), "error": np.asarray(errors, dtype=object)}


def make_units(index: int, uri: str, plan: dict[str, Any], geometry: dict[str, Any], unit_patches: int) -> list[str]:
    grid: P.ScoreGrid = plan["grid"]
    common = {"slide": index, "uri": uri, "mpp_override": plan["mpp_override"], "level": grid.level,
              "patch_size": grid.patch_size, "stride": grid.stride, "stride0": grid.stride0,
              "input_size": list(geometry["input_size"])}
    return [json.dumps({**common, "rows": r.tolist(), "cols": c.tolist()})
            for r, c in P.work_units(unpack_cells(plan), unit_patches)]


# -- outputs ----------------------------------------------------------------------------------------
def npy_bytes(prob_map: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, prob_map.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def summarize(prob_map: np.ndarray, plan: dict[str, Any], threshold: float, cfg: ScoreConfig) -> dict[str, Any]:
    """Scores, tumor area, top regions and (with truth) evaluation of one finished map."""
    grid: P.ScoreGrid = plan["grid"]
    out: dict[str, Any] = {
        "scores": H.slide_scores(prob_map, cfg.top_k),
        "tumor_area_mm2": H.tumor_area_mm2(prob_map, threshold, grid.cell_area_mm2),
        "top_regions": H.top_regions(prob_map, threshold, grid.stride0, cfg.top_regions, grid.cell_area_mm2),
        "evaluation": None,
    }
    if plan.get("tumor") is not None:
        labels, mask = H.truth_maps(plan["tumor"], grid)
        out["evaluation"] = H.evaluate(prob_map, threshold, labels, mask)
        out["evaluation"]["truth_polygons"] = len(plan["tumor"])
    return out


def write_outputs(folder: str, prob_map: np.ndarray, plan: dict[str, Any], threshold: float,
                  cfg: ScoreConfig) -> dict[str, str]:
    """Map .npy, pyramidal TIFF and overlay PNG (each atomic); returns their URIs."""
    from medray.infer.heatmap_tiff import write_heatmap_tiff
    from medray.infer.overlay import overlay_image, write_png

    grid: P.ScoreGrid = plan["grid"]
    uris = {key: join_uri(folder, name) for key, name in OUTPUT_FILES.items()}
    atomic_write_bytes(uris["map"], npy_bytes(prob_map), cfg.storage)
    if cfg.write_tiff:
        with atomic_local_path(uris["tiff"], cfg.storage, suffix=".tif") as local:
            write_heatmap_tiff(local, prob_map, grid.cell_mpp,
                               description=f"medray heatmap; cell = {grid.stride0:g} level-0 px")
    else:
        uris.pop("tiff")
    truth = None
    if plan.get("tumor"):
        from medray.slides.annotations import rasterize

        truth = rasterize(plan["tumor"], plan["thumbnail"].shape[:2], plan["thumb_ds"])
    image = overlay_image(plan["thumbnail"], plan["thumb_ds"], prob_map, grid.stride0, threshold, truth)
    write_png(image, uris["overlay"], cfg.storage)
    return uris


def log_mlflow_run(entry: dict[str, Any], cfg: ScoreConfig) -> str:
    """One MLflow run per slide: tags link slide, model version and outputs; metrics are the scores."""
    import mlflow

    tags = {"medray.job": "score", "slide_id": entry["slide_id"], "slide_uri": entry["uri"],
            "model_uri": entry["model"]["uri"], "model_version": entry["model"]["version"],
            **{f"output.{k}": v for k, v in entry["outputs"].items()}}
    metrics = {"score_max": entry["scores"]["max"], "score_top_k_mean": entry["scores"]["top_k_mean"],
               "tumor_area_mm2": entry["tumor_area_mm2"], "patches_scored": entry["patches"]["scored"],
               "patches_background": entry["patches"]["background"]}
    if entry.get("evaluation"):
        metrics.update({"auc": entry["evaluation"]["auc"], "dice": entry["evaluation"]["dice"]})
    with mlflow.start_run(run_name=f"score-{entry['slide_id']}", tags=tags) as run:
        mlflow.log_params({"threshold": entry["threshold"], "level": entry["grid"]["level"],
                           "patch_size": entry["grid"]["patch_size"], "stride": entry["grid"]["stride"]})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        return run.info.run_id


def configure_mlflow(cfg: ScoreConfig) -> str:
    import mlflow

    uri = cfg.mlflow.resolved_tracking_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(cfg.mlflow.experiment) is None:
        mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=cfg.mlflow.artifact_location)
    mlflow.set_experiment(cfg.mlflow.experiment)
    return uri


# -- the job --------------------------------------------------------------------------------------
def _entry(slide_id: str, uri: str, status: str, **fields: Any) -> dict[str, Any]:
    return {"slide_id": slide_id, "uri": uri, "status": status, **fields}


def _write_job_report(cfg: ScoreConfig, report: dict[str, Any]) -> dict[str, Any]:
    report = json_safe(report)
    atomic_write_text(join_uri(cfg.output, REPORT_FILE), json.dumps(report, indent=1), cfg.storage)
    return report


def predictor_kwargs(cfg: ScoreConfig, tracking_uri: str | None) -> dict[str, Any]:
    """The model actors' constructor arguments (``Predictor`` / ``ModelServer``) for a config."""
    from medray.infer.predictor import resolve_device

    return {"model_uri": cfg.model, "storage": cfg.storage, "device": resolve_device(cfg.device, cfg.num_gpus),
            "precision": cfg.precision, "positive_class": cfg.positive_class, "tracking_uri": tracking_uri,
            "batch_size": cfg.batch_size}


def score_slides(config: ScoreConfig | dict, progress_callback: ProgressCallback | None = None,
                 model_servers: list[Any] | None = None) -> dict[str, Any]:
    """Score every slide; returns the job report (also ``<output>/report.json``).

    ``model_servers``: running ``medray.infer.model_server.ModelServer`` actors of the same model
    (a service scoring slide after slide keeps them); the job then uses them instead of starting
    its own model actors. Without them the job starts ``predictors`` actors and ends them.

    Per-slide failures (unreadable slide, model that cannot load) are entries with
    ``status: failed`` and a ``reason``; the job itself does not raise for them.
    ``progress_callback`` gets ``{"event": "progress", "slide_id", "done", "total"}`` as patches
    land and ``{"event": "slide_done", "slide_id", "status"}`` once per slide.
    """
    import ray
    from tqdm.auto import tqdm

    from medray.datasets.extract import resolve_slide_uris
    from medray.models.bundle import load_model

    cfg = config if isinstance(config, ScoreConfig) else ScoreConfig.model_validate(config)
    started = time.perf_counter()
    notify = progress_callback or (lambda event: None)
    slide_uris = resolve_slide_uris(cfg.slides, cfg.storage)
    ids = [slide_id_of(u) for u in slide_uris]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        from medray.errors import ConfigError

        raise ConfigError(f"slide ids must be unique (they name output folders); duplicated: {dupes}")
    report: dict[str, Any] = {"output": cfg.output, "model": {"uri": cfg.model, "version": None},
                              "map_background": "NaN", "slides": []}

    # 0. the model, once on the driver: a model that cannot load fails every slide, clearly
    tracking_uri = None
    try:
        if cfg.model.startswith(("models:/", "runs:/")):
            import mlflow

            tracking_uri = cfg.mlflow.resolved_tracking_uri()
            mlflow.set_tracking_uri(tracking_uri)
        from medray.infer.predictor import positive_index

        model = load_model(cfg.model, cfg.storage)
        positive = model.classes[positive_index(model.classes, cfg.positive_class)]
    except Exception as err:  # ModelError, MLflow, torch: reported per slide, not raised
        reason = f"model {cfg.model!r} cannot be loaded: {type(err).__name__}: {err}"
        report["slides"] = [_entry(s, u, "failed", reason=reason) for s, u in zip(ids, slide_uris)]
        report.update(counts={"ok": 0, "failed": len(ids)}, error=reason, seconds=time.perf_counter() - started)
        return _write_job_report(cfg, report)
    geometry = model_geometry(model.preprocessing, cfg)
    threshold = resolve_threshold(cfg, model.threshold)
    model_info = {"uri": cfg.model, "version": model.version, "classes": model.classes, "positive_class": positive,
                  "name": model.spec.name}
    report.update(model=model_info, threshold=threshold)
    del model
    ensure_ray(cfg.ray)
    if cfg.log_mlflow:
        tracking_uri = configure_mlflow(cfg)

    # 1. plan every slide in parallel
    truth = resolve_truth(cfg, slide_uris)
    entries: dict[str, dict[str, Any]] = {}
    plan_remote = ray.remote(num_cpus=cfg.reader_cpus, max_retries=0)(_plan_task)
    cfg_ref = ray.put(cfg)
    pending = {plan_remote.remote(u, cfg_ref, geometry, truth[s]): (i, u, s) for i, (u, s) in enumerate(zip(slide_uris, ids))}
    plans: dict[int, dict[str, Any]] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        index, uri, sid = pending.pop(done[0])
        result = ray.get(done[0])
        if "error" in result:
            entries[sid] = _entry(sid, uri, "failed", reason=result["error"], seconds={"plan": result["seconds"]})
            notify({"event": "slide_done", "slide_id": sid, "status": "failed", "reason": result["error"]})
        else:
            plans[index] = result

    # 2. bookkeeping per slide; the map is allocated on the first result and freed when written
    planned = {i: int(unpack_cells(p).sum()) for i, p in plans.items()}
    received = collections.Counter()
    failed_reads: dict[int, list[str]] = collections.defaultdict(list)
    maps: dict[int, np.ndarray] = {}
    score_started = time.perf_counter()

    def finish(index: int) -> None:
        uri, sid, plan = slide_uris[index], ids[index], plans.pop(index)
        grid: P.ScoreGrid = plan["grid"]
        prob_map = maps.pop(index, None)
        if prob_map is None:
            prob_map = H.new_map(grid.shape)
        cells = unpack_cells(plan)
        on_slide = grid.on_slide()
        seconds = {"plan": plan["seconds"], "score": time.perf_counter() - score_started}
        patches = {"scored": planned[index] - len(failed_reads[index]),
                   "background": int((on_slide & ~cells).sum()), "off_slide": int((~on_slide).sum()),
                   "failed": len(failed_reads[index]), "total_cells": int(cells.size)}
        base = {"grid": grid.to_json(), "patches": patches, "tissue_fraction": plan["tissue_fraction"],
                "threshold": threshold, "model": {"uri": cfg.model, "version": model_info["version"]},
                "truth": truth[sid]}
        if failed_reads[index]:
            entries[sid] = _entry(sid, uri, "failed", seconds=seconds, **base,
                                  reason=f"{len(failed_reads[index])} of {planned[index]} patches could not be "
                                         f"read (corrupt or truncated slide?); first: {failed_reads[index][0]}")
            notify({"event": "slide_done", "slide_id": sid, "status": "failed"})
            return
        write_start = time.perf_counter()
        try:
            folder = join_uri(cfg.output, sid)
            summary = summarize(prob_map, plan, threshold, cfg)
            outputs = write_outputs(folder, prob_map, plan, threshold, cfg)
            entry = _entry(sid, uri, "ok", **base, map_background="NaN", positive_class=positive,
                           outputs=outputs, **summary, seconds=seconds)
            if cfg.log_mlflow:
                entry["mlflow_run_id"] = log_mlflow_run(entry, cfg)
            seconds["write"] = time.perf_counter() - write_start
            seconds["total"] = seconds["plan"] + seconds["score"] + seconds["write"]
            atomic_write_text(outputs["report"], json.dumps(json_safe(entry), indent=1), cfg.storage)
        except Exception as err:  # an output store that refuses a write fails this slide only
            entry = _entry(sid, uri, "failed", **base, reason=f"writing outputs failed: {type(err).__name__}: {err}",
                           seconds=seconds)
        entries[sid] = entry
        notify({"event": "slide_done", "slide_id": sid, "status": entry["status"]})

    for index in [i for i, n in planned.items() if n == 0]:
        finish(index)

    # 3. the pipeline: read units in parallel tasks → model actor pool → driver
    units = [u for i, p in plans.items() for u in make_units(i, slide_uris[i], p, geometry, cfg.unit_patches)]
    total = sum(planned[i] for i in plans)
    if units:
        import ray.data

        cpus = int(ray.cluster_resources().get("CPU", 1))
        readers = cfg.readers or max(1, cpus - int(math.ceil(cfg.predictors * cfg.predictor_cpus)))
        from medray.allocator import with_malloc_env
        from medray.infer.predictor import Predictor

        ds = ray.data.from_items([{"unit": u} for u in units], override_num_blocks=len(units))
        # Read-ahead is capped in bytes: with reads faster than the model, Ray Data would otherwise
        # fill up to its share of the object store (~30% of RAM) with decoded patches.
        ds.context.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(
            object_store_memory=cfg.buffer_mb << 20)
        # A read task's memory (its unit's patches, twice) is declared; that also makes its remote
        # args differ from the actors', so Ray Data never fuses reads into the model actors (which
        # would serialise reading and inference).
        in_h, in_w = geometry["input_size"]
        unit_memory = max(256 << 20, 3 * cfg.unit_patches * in_h * in_w * 3)  # measured ~185 MiB at 256 x 128²
        ds = ds.map_batches(read_units, batch_size=1, batch_format="numpy", num_cpus=cfg.reader_cpus, memory=unit_memory,
                            compute=ray.data.TaskPoolStrategy(size=min(readers, len(units))),
                            fn_kwargs={"storage": cfg.storage})
        if model_servers:
            from medray.infer.model_server import RemotePredictor

            # the model is already loaded in long-lived actors: this stage only forwards batches,
            # and reserves no CPU (with one, it could wait forever behind read tasks holding the rest)
            ds = ds.map_batches(RemotePredictor, batch_size=cfg.batch_size, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=len(model_servers)), num_cpus=0,
                                fn_constructor_kwargs={"servers": list(model_servers)})
        else:
            ds = ds.map_batches(Predictor, batch_size=cfg.batch_size, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=cfg.predictors),
                                fn_constructor_kwargs=predictor_kwargs(cfg, tracking_uri),
                                **with_malloc_env({"num_cpus": cfg.predictor_cpus, "num_gpus": cfg.num_gpus or None}))
        with tqdm(total=total, desc="score", unit="patch", disable=not cfg.progress) as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                slides = batch["slide"]
                for index in np.unique(slides):
                    index = int(index)
                    pick = slides == index
                    errors = batch["error"][pick]
                    bad = np.asarray([bool(e) for e in errors])
                    if bad.any():
                        failed_reads[index].extend(str(e) for e in errors[bad])
                    if index not in maps:
                        maps[index] = H.new_map(plans[index]["grid"].shape)
                    H.put(maps[index], batch["row"][pick][~bad], batch["col"][pick][~bad], batch["prob"][pick][~bad])
                    received[index] += int(pick.sum())
                    notify({"event": "progress", "slide_id": ids[index], "done": received[index],
                            "total": planned[index]})
                    if received[index] == planned[index]:
                        finish(index)
                bar.update(len(slides))
    score_seconds = time.perf_counter() - score_started

    ordered = [entries[s] for s in ids]
    scored = sum(e["patches"]["scored"] for e in ordered if e["status"] == "ok")
    report.update(
        slides=ordered,
        counts={s: sum(e["status"] == s for e in ordered) for s in ("ok", "failed")},
        patches_scored=scored,
        patches_background=sum(e.get("patches", {}).get("background", 0) for e in ordered),
        score_seconds=round(score_seconds, 3),
        patches_per_second=round(scored / score_seconds, 1) if scored and score_seconds > 0 else None,
        seconds=round(time.perf_counter() - started, 3),
        config=cfg.model_dump(mode="json", exclude={"storage", "mlflow"}),
    )
    return _write_job_report(cfg, report)


# -- synchronous scoring of one region (demo, Serve) -----------------------------------------------
_MODELS: dict[tuple, Any] = {}


def _model(model: Any, storage: StorageOptions | None) -> Any:
    if not isinstance(model, str):
        return model
    key = (model, None if storage is None else storage.model_dump_json())
    if key not in _MODELS:
        from medray.models.bundle import load_model

        _MODELS[key] = load_model(model, storage)
    return _MODELS[key]


def score_region(slide_uri: str, model: Any, x: int, y: int, w: int, h: int, *, level: int | None = None,
                 mpp: float | None = None, patch_size: int | None = None, stride: int | None = None,
                 positive_class: str | None = None, storage: StorageOptions | None = None,
                 mpp_override: float | None = None, batch_size: int = 64, mpp_tolerance: float = 0.1) -> np.ndarray:
    """Positive-class probability map of the level-0 box (x, y, w, h), synchronously in this process.

    ``model`` is a ``LoadedModel`` or a URI (loaded once and cached). Cell (r, c) is the patch at
    level-0 top-left (x + c·stride0, y + r·stride0); shape ``(ceil(h / stride0), ceil(w / stride0))``;
    cells whose patch leaves the slide are NaN. No tissue masking: every on-slide cell is scored.
    """
    from medray.infer.predictor import positive_index
    from medray.slides.reader import open_slide

    loaded = _model(model, storage)
    cfg = ScoreConfig(model="-", patch_size=patch_size, stride=stride)
    geometry = model_geometry(loaded.preprocessing, cfg)
    index = positive_index(loaded.classes, positive_class)
    if w <= 0 or h <= 0:
        from medray.errors import SlideError

        raise SlideError(f"region size must be positive, got w={w}, h={h}")
    with open_slide(slide_uri, storage, mpp_override) as slide:
        lvl = P.choose_resolution(slide, geometry["info"], level, mpp, mpp_tolerance)
        grid = P.make_grid(slide, lvl, geometry["patch_size"], geometry["stride"])
        rows_n, cols_n = max(1, math.ceil(h / grid.stride0)), max(1, math.ceil(w / grid.stride0))
        rr, cc = np.meshgrid(np.arange(rows_n), np.arange(cols_n), indexing="ij")
        xs = np.round(x + cc.ravel() * grid.stride0).astype(np.int64)
        ys = np.round(y + rr.ravel() * grid.stride0).astype(np.int64)
        last = (grid.patch_size - 1) * grid.level_downsample
        ok = (xs >= 0) & (ys >= 0) & (xs + last < slide.dimensions[0]) & (ys + last < slide.dimensions[1])
        out = np.full(rows_n * cols_n, np.nan, np.float32)
        todo = np.nonzero(ok)[0]
        in_h, in_w = geometry["input_size"]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            patches = np.stack([_resize(slide.read_region(xs[i], ys[i], lvl, grid.patch_size), in_h, in_w)
                                for i in chunk])
            out[chunk] = loaded.predict_proba(patches, batch_size)[:, index]
    return out.reshape(rows_n, cols_n)


def _resize(patch: np.ndarray, h: int, w: int) -> np.ndarray:
    if patch.shape[:2] == (h, w):
        return patch
    import cv2

    return cv2.resize(patch, (w, h), interpolation=cv2.INTER_AREA)


__all__ = ["ScoreConfig", "score_region", "score_slides"]
