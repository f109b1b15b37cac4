"""Slide-heatmap job manager deployment: queues ``score_slides`` runs and answers their status.

Jobs run in a small thread pool on the replica; ``score_slides`` itself fans the slide out to Ray
tasks and a model actor pool on the cluster, so the replica only waits and records progress.
Outputs land under ``<output_root>/<job_id>/<slide_id>/`` and stay there. Each job's state is held
in the owning replica's memory and also stored beside its outputs as ``<output_root>/<job_id>/job.json``
(``heatmap_records``), so a job this replica does not hold (another replica's, or one from before a
redeploy/restart) is answered from storage, and one whose owner died is reported ``interrupted``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import os
import threading
import time
import uuid
from typing import Any

from ray import serve

from medray.config.common import StorageOptions
from medray.serve.config import HeatmapArgs
from medray.errors import StorageError
from medray.serve import heatmap_records as records
from medray.serve.replicas import current_replica, replica_alive
from medray.serve.errors import HttpError, NotFound, PayloadTooLarge

STATES = ("queued", "running", "succeeded", "failed")  # a stored record may also read "interrupted"
logger = logging.getLogger("medray.serve")


class NotReady(HttpError):
    """The job exists but has no such output (yet): 409."""

    status_code = 409
    code = "not_ready"


def region_cells(w: int, h: int, stride0: float) -> int:
    """Grid cells a level-0 (w, h) box covers at a level-0 stride (what ``score_region`` returns)."""
    return max(1, math.ceil(h / stride0)) * max(1, math.ceil(w / stride0))


def check_region_size(w: int, h: int, stride0: float, args: HeatmapArgs) -> None:
    """413 when the box is wider/taller than ``max_region_side`` or covers too many cells."""
    if max(w, h) > args.max_region_side:
        raise PayloadTooLarge(f"region {w}x{h} is larger than max_region_side={args.max_region_side} level-0 px; "
                              "ask for a smaller box or submit a job to POST /slides/heatmap")
    cells = region_cells(w, h, stride0)
    if cells > args.max_region_cells:
        raise PayloadTooLarge(f"region {w}x{h} at stride {stride0:g} level-0 px is {cells} cells, over "
                              f"max_region_cells={args.max_region_cells}; use a larger stride, a smaller box "
                              "or POST /slides/heatmap")


def job_view(job: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The public status of one job (``prefix`` is the route the links hang under)."""
    out = {k: job[k] for k in ("job_id", "status", "slide_uri", "slide_id", "model_version", "submitted_at",
                              "started_at", "finished_at", "options")}
    done, total = job["done"], job["total"]
    out["progress"] = {"done": done, "total": total,
                       "fraction": (done / total if total else (1.0 if job["status"] == "succeeded" else 0.0))}
    out["model"] = {"uri": job["model_uri"], "version": job["model_version"]}
    if job.get("model_server"):  # the shared model actor that scored it (pid, load time, totals so far)
        out["model_server"] = job["model_server"]
    if job["status"] in ("failed", "interrupted"):
        out["reason"] = job.get("reason")
    if job["status"] == "succeeded":
        base = f"{prefix}/{job['job_id']}"
        out["links"] = {"overlay": f"{base}/overlay.png", "map": f"{base}/map.npy", "report": f"{base}/report"}
        out["outputs"] = job["outputs"]
        out["scores"] = job.get("scores")
    return out


@serve.deployment(name="SlideHeatmaps", max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.1})
class HeatmapJobs:
    """Submits, tracks and serves slide heatmap jobs; also scores small regions synchronously."""

    def __init__(self, args: HeatmapArgs, allowed_roots: list[str], storage: StorageOptions | None = None,
                 mlflow_tracking_uri: str | None = None, route_prefix: str = "/slides/heatmap") -> None:
        from medray.models.bundle import load_model
        from medray.serve.classifier import resolve_device

        if mlflow_tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
        self.args = args
        self.roots = list(allowed_roots)
        self.storage = storage or StorageOptions()
        self.mlflow_tracking_uri = mlflow_tracking_uri
        self.prefix = route_prefix
        self.model = load_model(args.model_uri, self.storage, device=resolve_device(args.device))
        self.jobs: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.owner = current_replica()  # written into each record: who can still finish it
        self.saved_at: dict[str, float] = {}  # job id → when its record was last written
        self.lock = threading.Lock()
        self.pool = concurrent.futures.ThreadPoolExecutor(args.max_concurrent_jobs, thread_name_prefix="heatmap-job")
        self.region_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="heatmap-region")
        self.servers: list[Any] | None = None  # the jobs' model actor, started by the first job
        self.server_lock = threading.Lock()

    # -- jobs ---------------------------------------------------------------------------------
    def _slide(self, uri: str) -> str:
        """The allowed, existing slide URI (403 outside the roots, 404 when missing)."""
        from medray.serve.paths import check_allowed
        from medray.storage import exists

        resolved = check_allowed(uri, self.roots)
        if not exists(resolved, self.storage):
            raise NotFound(f"slide {uri!r} does not exist")
        return resolved

    async def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        """Queue one slide for scoring; returns the job's status (``queued``)."""
        from medray.infer.score import slide_id_of

        slide = self._slide(request["slide_uri"])
        options = {k: request.get(k) for k in ("stride", "threshold", "level", "mpp") if request.get(k) is not None}
        job_id = uuid.uuid4().hex
        job = {"job_id": job_id, "status": "queued", "slide_uri": slide, "slide_id": slide_id_of(slide),
               "model_uri": self.args.model_uri, "model_version": self.model.version, "options": options,
               "submitted_at": time.time(), "started_at": None, "finished_at": None, "done": 0, "total": 0,
               "outputs": None, "owner": self.owner}
        records.write_record(job, self.args.output_root, self.storage)  # fails the submit if unwritable
        with self.lock:
            self.jobs[job_id] = job
            self._forget_old()
        self.pool.submit(self._run, job_id)
        return job_view(job, self.prefix)

    def _forget_old(self) -> None:
        finished = [k for k, j in self.jobs.items() if j["status"] in ("succeeded", "failed")]
        for key in finished[:max(0, len(self.jobs) - self.args.max_jobs_kept)]:
            del self.jobs[key]  # its stored record still answers
            self.saved_at.pop(key, None)

    def _save(self, job: dict[str, Any], force: bool = True) -> None:
        """Write the job's record (progress: at most every ``record_interval_s``); a storage
        failure is logged, never fatal to the job, and the next write tries again."""
        now = time.monotonic()
        if not force and now - self.saved_at.get(job["job_id"], 0.0) < self.args.record_interval_s:
            return
        self.saved_at[job["job_id"]] = now
        try:
            records.write_record(job, self.args.output_root, self.storage)
        except (StorageError, OSError) as err:
            logger.warning("heatmap job %s: cannot write its record under %s: %s", job["job_id"],
                           self.args.output_root, err)

    def score_config(self, job: dict[str, Any]) -> dict[str, Any]:
        """The ``ScoreConfig`` of one job: the app's settings plus the request's options."""
        from medray.storage import join_uri

        a = self.args
        cfg = {"slides": [job["slide_uri"]], "model": a.model_uri, "output": join_uri(a.output_root, job["job_id"]),
               "batch_size": a.batch_size, "unit_patches": a.unit_patches, "predictor_cpus": a.predictor_cpus, "reader_cpus": a.reader_cpus,
               "num_gpus": a.num_gpus, "device": a.device, "overlay_size": a.overlay_size, "write_tiff": a.write_tiff,
               "log_mlflow": a.log_mlflow, "progress": False, "evaluate": False, "storage": self.storage,
               **job["options"]}
        if self.mlflow_tracking_uri:
            cfg["mlflow"] = {"tracking_uri": self.mlflow_tracking_uri}
        return cfg

    def _model_servers(self, cfg: dict[str, Any]) -> list[Any] | None:
        """The model actor jobs share (``persistent_model``), started on first use, then reused."""
        if not self.args.persistent_model:
            return None
        from medray.infer.model_server import start_model_servers
        from medray.infer.score import predictor_kwargs
        from medray.infer.score_config import ScoreConfig

        with self.server_lock:
            if self.servers is None:
                self.servers = start_model_servers(1, self.args.predictor_cpus, self.args.num_gpus,
                                                   **predictor_kwargs(ScoreConfig.model_validate(cfg),
                                                                      self.mlflow_tracking_uri))
            return self.servers

    def _run(self, job_id: str) -> None:
        """One job, in a pool thread: ``score_slides`` on the cluster, progress into the job record."""
        from medray.infer.score import score_slides

        job = self.jobs[job_id]
        job.update(status="running", started_at=time.time())
        self._save(job)

        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") == "progress":
                job.update(done=int(event["done"]), total=int(event["total"]))
                self._save(job, force=False)

        try:
            import ray

            cfg = self.score_config(job)
            try:
                servers = self._model_servers(cfg)
                report = score_slides(cfg, progress_callback=on_event, model_servers=servers)
                if servers:
                    job["model_server"] = ray.get(servers[0].info.remote())
            except ray.exceptions.RayActorError:
                with self.server_lock:
                    self.servers = None  # it died: the next job starts a new one
                raise
            entry = report["slides"][0]
            if entry["status"] == "ok":
                job.update(status="succeeded", outputs=entry["outputs"], scores=entry.get("scores"),
                           model_version=entry["model"]["version"] or job["model_version"])
                job["done"] = job["total"] = int(entry["patches"]["scored"])
            else:
                job.update(status="failed", reason=entry.get("reason") or report.get("error"))
        except Exception as err:  # noqa: BLE001 - a job failure is reported, the replica goes on
            job.update(status="failed", reason=f"{type(err).__name__}: {err}")
        job["finished_at"] = time.time()
        self._save(job)

    async def _job(self, job_id: str) -> dict[str, Any]:
        """This replica's job, else its stored record (settled: a dead owner → ``interrupted``)."""
        job = self.jobs.get(job_id)
        if job is not None:
            return job

        def stored() -> dict[str, Any] | None:
            record = records.read_record(self.args.output_root, job_id, self.storage)
            return None if record is None else records.settle(record, replica_alive)

        job = await asyncio.get_running_loop().run_in_executor(None, stored)
        if job is None:
            raise NotFound(f"no heatmap job {job_id!r}: no replica holds it and there is no record "
                           f"{records.RECORD_FILE} for it under output_root")
        return job

    async def status(self, job_id: str) -> dict[str, Any]:
        return job_view(await self._job(job_id), self.prefix)

    async def output(self, job_id: str, key: str) -> tuple[bytes, str]:
        """(bytes, model version) of a finished job's ``overlay``, ``map`` or ``report`` file."""
        from medray.storage import read_bytes

        job = await self._job(job_id)
        if job["status"] != "succeeded":
            raise NotReady(f"heatmap job {job_id} is {job['status']}; its {key} exists once it has succeeded")
        data = await asyncio.get_running_loop().run_in_executor(
            None, lambda: read_bytes(job["outputs"][key], self.storage))
        return data, job["model_version"]

    # -- synchronous region -------------------------------------------------------------------
    async def region(self, request: dict[str, Any]) -> dict[str, Any]:
        """Probability grid of a level-0 box, scored on this replica (413 when too large)."""
        slide = self._slide(request["slide_uri"])
        grid, stride0, level = await asyncio.get_running_loop().run_in_executor(
            self.region_pool, lambda: self._score_region(slide, request))
        threshold = request.get("threshold")
        if threshold is None:
            threshold = self.model.threshold if self.model.threshold is not None else 0.5
        rows = [[None if v != v else round(float(v), 6) for v in row] for row in grid.tolist()]
        return {"slide_uri": slide, "box": {k: int(request[k]) for k in ("x", "y", "w", "h")},
                "shape": list(grid.shape), "level": level, "stride0": stride0, "probabilities": rows,
                "threshold": float(threshold), "background": "null (patch leaves the slide)",
                "model": {"uri": self.args.model_uri, "version": self.model.version},
                "model_version": self.model.version}

    def _score_region(self, slide_uri: str, request: dict[str, Any]):
        """(grid, level-0 stride, level): resolution chosen as ``score_region`` does, size checked first."""
        from medray.infer import score_plan as P
        from medray.infer.score import ScoreConfig, model_geometry, score_region
        from medray.slides.reader import open_slide

        x, y, w, h = (int(request[k]) for k in ("x", "y", "w", "h"))
        level, mpp, stride = request.get("level"), request.get("mpp"), request.get("stride")
        geometry = model_geometry(self.model.preprocessing, ScoreConfig(model="-", stride=stride))
        with open_slide(slide_uri, self.storage) as slide:
            lvl = P.choose_resolution(slide, geometry["info"], level, mpp, 0.1)
            stride0 = P.make_grid(slide, lvl, geometry["patch_size"], geometry["stride"]).stride0
        check_region_size(w, h, stride0, self.args)
        grid = score_region(slide_uri, self.model, x, y, w, h, level=level, mpp=mpp, stride=stride,
                            storage=self.storage, batch_size=self.args.batch_size)
        return grid, float(stride0), int(lvl)

    def describe(self) -> dict[str, Any]:
        m = self.model
        return {"endpoint": "slides", "uri": m.uri, "version": m.version, "model": m.spec.name,
                "classes": list(m.classes), "preprocessing": m.preprocessing.model_dump(mode="json"),
                "threshold": m.threshold, "jobs": {s: sum(j["status"] == s for j in self.jobs.values()) for s in STATES},
                "max_concurrent_jobs": self.args.max_concurrent_jobs, "output_root": self.args.output_root}
