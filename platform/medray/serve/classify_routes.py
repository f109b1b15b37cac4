"""``POST /<endpoint>/classify`` for the image classifiers (CT, skin) backed by ``ImageClassifier``.

Requests reach the replicas in batches: the route queues each upload in a ``BatchRelay`` that
calls ``ImageClassifier.classify_many`` once per batch (see ``medray.serve.batch_relay``)."""

# No `from __future__ import annotations`: FastAPI must see the real parameter types.
from typing import Any

from fastapi import APIRouter, File, Query, Response, UploadFile

from medray.serve.config import AppArgs, ClassifierArgs

DESCRIPTIONS = {
    "ct": "Classify a CT slice (PNG/JPEG/DICOM) or, for a 3D model, a volume (NIfTI .nii/.nii.gz).",
    "skin": "Classify a dermoscopy image (PNG/JPEG) into the model's lesion classes.",
}


def deployment(name: str, deployment_name: str, section: ClassifierArgs, args: AppArgs,
               options: dict[str, Any]):
    """The bound classifier deployment for one endpoint (``options`` from the config file win)."""
    from medray.serve.classifier import ImageClassifier

    merged = {"name": deployment_name, "max_ongoing_requests": section.max_ongoing_requests, **options}
    return ImageClassifier.options(**merged).bind(name, section, args.storage, args.mlflow_tracking_uri)


def router(name: str, handle: Any, section: ClassifierArgs, args: AppArgs):
    """FastAPI routes of one classification endpoint."""
    from medray.serve.batch_relay import BatchRelay
    from medray.serve.errors import answer

    api = APIRouter(tags=[name])
    relay = BatchRelay(lambda uploads: answer(handle.classify_many.remote(uploads)),
                       section.max_batch_size, section.batch_wait_timeout_s, section.max_batches_in_flight,
                       size_of=lambda upload: len(upload[0]), max_batch_bytes=section.max_batch_upload_bytes)

    @api.post(f"/{name}/classify", summary=DESCRIPTIONS.get(name, f"Classify an image ({name})"))
    async def classify(response: Response, file: UploadFile = File(..., description="The image or volume file"),
                       top_k: int | None = Query(None, ge=1, le=100, description="Also list the k most likely classes")):
        data = await file.read()
        # raises the upload's own HttpError (the replica returns plain ones; ``answer`` makes a
        # failed call's error plain); anything else becomes a JSON 500 in ``JsonServerErrors``
        body = await relay.submit((data, file.filename, file.content_type, top_k))
        response.headers["X-Model-Version"] = body["model_version"]
        return body

    @api.get(f"/{name}/batching", summary=f"How this ingress replica batches {name} uploads (its queue, "
             "batches sent and out); each ingress replica keeps its own")
    async def batching() -> dict[str, Any]:
        from medray.serve.replicas import current_replica

        sent = relay.stats()
        per_batch = sent["items_sent"] / sent["batches_sent"] if sent["batches_sent"] else 0.0
        return {"endpoint": name, "ingress_replica": current_replica(), **sent,
                "mean_batch": round(per_batch, 3), "max_batch_size": relay.max_batch_size,
                "max_batches_in_flight": relay.max_in_flight}

    return api
