"""The HTTP ingress: one FastAPI app (OpenAPI at /docs) routing to each endpoint's deployment.

The FastAPI app is built on the replica after ``__init__`` (``__serve_build_asgi_app__``), from
the typed args and the endpoint registry, so endpoints add routes without touching this file.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures.
import asyncio
from typing import Any

from ray import serve

from medray.serve.config import AppArgs


@serve.deployment(name="Ingress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.1})
@serve.ingress()
class Ingress:
    """Routes ``/healthz``, ``/models`` and every enabled endpoint's routes."""

    def __init__(self, args: AppArgs, handles: dict[str, Any]) -> None:
        self.args = args
        self.handles = handles

    async def models(self) -> dict[str, Any]:
        from medray.serve.errors import answer

        names = list(self.handles)
        cards = await asyncio.gather(*(answer(self.handles[n].describe.remote()) for n in names))
        return {"models": dict(zip(names, cards))}

    def __serve_build_asgi_app__(self):
        from fastapi import FastAPI

        import medray
        from medray.serve import endpoints
        from medray.serve.errors import JsonServerErrors, install_error_handlers
        from medray.serve.uploads import BodySizeLimit

        app = FastAPI(title="medray inference", version=medray.__version__,
                      description="Medical image classification on Ray Serve. Errors are JSON "
                                  '{"error": ..., "detail": ...}.')
        install_error_handlers(app)
        app.add_middleware(BodySizeLimit, limits=endpoints.upload_limits(self.args),
                           default_limit=self.args.max_body_bytes)
        app.add_middleware(JsonServerErrors)

        @app.get("/healthz", tags=["service"], summary="Liveness: the ingress answers")
        async def healthz() -> dict[str, Any]:
            return {"status": "ok", "endpoints": sorted(self.handles)}

        @app.get("/models", tags=["service"], summary="Each endpoint's model: URI, version, classes, preprocessing")
        async def models() -> dict[str, Any]:
            return await self.models()

        for endpoint, section in endpoints.enabled(self.args):
            module = endpoint.load()
            app.include_router(module.router(endpoint.name, self.handles[endpoint.name], section, self.args))
        return app
