"""``/slides/heatmap``: whole-slide heatmap jobs (202 + polling) and a synchronous region grid."""

# No `from __future__ import annotations`: FastAPI must see the real parameter types.
from typing import Any, Optional

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from medray.serve.config import AppArgs, HeatmapArgs


class HeatmapOptions(BaseModel):
    """Scoring options a request may set (the model's preprocessing decides the rest)."""

    model_config = ConfigDict(extra="forbid")

    slide_uri: str = Field(..., min_length=1, description="Slide path or s3:// URI under the app's allowed_slide_roots")
    stride: Optional[int] = Field(None, ge=1, description="Grid stride in pixels at the level (default: patch size)")
    threshold: Optional[float] = Field(None, ge=0, le=1, description="Tumor threshold (default: the model's, else 0.5)")
    level: Optional[int] = Field(None, ge=0, description="Pyramid level to read (default: the model's)")
    mpp: Optional[float] = Field(None, gt=0, description="Target µm/px instead of a level")


class RegionRequest(HeatmapOptions):
    """A level-0 box of one slide, scored synchronously."""

    x: int = Field(..., ge=0, description="Left edge, level-0 pixels")
    y: int = Field(..., ge=0, description="Top edge, level-0 pixels")
    w: int = Field(..., ge=1, description="Width, level-0 pixels")
    h: int = Field(..., ge=1, description="Height, level-0 pixels")


def deployment(name: str, deployment_name: str, section: HeatmapArgs, args: AppArgs, options: dict[str, Any]):
    """The bound job-manager deployment (``options`` from the config file win)."""
    import os

    from medray.serve.heatmap_jobs import HeatmapJobs

    root = section.output_root
    if "://" not in root and not os.path.isabs(root):  # replicas may run in another directory
        section = section.model_copy(update={"output_root": os.path.abspath(root)})
    merged = {"name": deployment_name, "max_ongoing_requests": section.max_ongoing_requests, **options}
    return HeatmapJobs.options(**merged).bind(section, list(args.allowed_slide_roots), args.storage,
                                              args.mlflow_tracking_uri, f"/{name}/heatmap")


def router(name: str, handle: Any, section: HeatmapArgs, args: AppArgs):
    """Routes: submit a job, poll it, fetch its overlay / map / report, score a region."""
    from medray.serve.errors import answer

    api = APIRouter(tags=[name])
    base = f"/{name}/heatmap"

    def versioned(response: Response, body: dict) -> dict:
        response.headers["X-Model-Version"] = str(body["model_version"])
        return body

    @api.post(base, status_code=202, summary="Queue a whole-slide heatmap job; poll GET .../{job_id}")
    async def submit(request: HeatmapOptions, response: Response):
        body = await answer(handle.submit.remote(request.model_dump()))
        response.headers["Location"] = f"{base}/{body['job_id']}"
        return versioned(response, body)

    @api.post(f"{base}/region", summary="Probability grid of a level-0 box (x, y, w, h), synchronously")
    async def region(request: RegionRequest, response: Response):
        return versioned(response, await answer(handle.region.remote(request.model_dump())))

    @api.get(f"{base}/{{job_id}}", summary="Job status, progress (patches) and links to its outputs")
    async def status(job_id: str, response: Response):
        return versioned(response, await answer(handle.status.remote(job_id)))

    async def file(job_id: str, key: str, media_type: str) -> Response:
        data, version = await answer(handle.output.remote(job_id, key))
        return Response(data, media_type=media_type, headers={"X-Model-Version": str(version)})

    @api.get(f"{base}/{{job_id}}/overlay.png", summary="The job's overlay PNG (heatmap over the thumbnail)",
             response_class=Response)
    async def overlay(job_id: str):
        return await file(job_id, "overlay", "image/png")

    @api.get(f"{base}/{{job_id}}/map.npy", summary="The probability map (float32 .npy, NaN = background)",
             response_class=Response)
    async def prob_map(job_id: str):
        return await file(job_id, "map", "application/octet-stream")

    @api.get(f"{base}/{{job_id}}/report", summary="The slide's report: scores, regions, grid, model version",
             response_class=Response)
    async def report(job_id: str):
        return await file(job_id, "report", "application/json")

    return api
