"""``POST /mitosis/detect``: mitoses in one high-power field image, backed by ``MitosisDetector``."""

# No `from __future__ import annotations`: FastAPI must see the real parameter types.
from typing import Any, Optional

from fastapi import APIRouter, File, Query, Response, UploadFile

from medray.serve.config import AppArgs, MitosisArgs


def deployment(name: str, deployment_name: str, section: MitosisArgs, args: AppArgs, options: dict[str, Any]):
    """The bound detector deployment (``options`` from the config file win)."""
    from medray.serve.mitosis import MitosisDetector

    merged = {"name": deployment_name, "max_ongoing_requests": section.max_ongoing_requests, **options}
    return MitosisDetector.options(**merged).bind(section, args.storage, args.mlflow_tracking_uri)


def router(name: str, handle: Any, section: MitosisArgs, args: AppArgs):
    """The detection route."""
    from medray.serve.errors import answer

    api = APIRouter(tags=[name])

    @api.post(f"/{name}/detect", summary="Detect mitoses in one HPF image (PNG/JPEG/TIFF): x, y, probability")
    async def detect(response: Response, file: UploadFile = File(..., description="The high-power field image"),
                     threshold: Optional[float] = Query(None, gt=0, lt=1, description="Override the detection threshold")):
        data = await file.read()
        body = await answer(handle.detect.remote(data, file.filename, file.content_type, threshold))
        response.headers["X-Model-Version"] = str(body["model_version"])
        return body

    return api
