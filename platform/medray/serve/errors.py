"""HTTP errors of the inference app and the JSON body every error gets: ``{"error", "detail"}``.

Typed errors carry their status code, so code deep in a replica raises ``UnsupportedMediaType``
and the ingress answers 415 without knowing where it came from (Ray wraps it in transit).
"""

from __future__ import annotations

import logging
from typing import Any

from medray.errors import DataError, MedrayError, ModelError

logger = logging.getLogger("medray.serve")


class HttpError(MedrayError):
    """A user-caused request error with its HTTP status and a short machine-readable code."""

    status_code = 400
    code = "bad_request"


class CorruptInput(HttpError):
    status_code = 400
    code = "corrupt_input"


class Forbidden(HttpError):
    status_code = 403
    code = "forbidden"


class NotFound(HttpError):
    status_code = 404
    code = "not_found"


class PayloadTooLarge(HttpError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(HttpError):
    status_code = 415
    code = "unsupported_media_type"


class InternalError(HttpError):
    status_code = 500
    code = "internal_error"


def error_body(error: str, detail: Any) -> dict[str, Any]:
    return {"error": error, "detail": detail}


def error_response(status_code: int, error: str, detail: Any, headers: dict[str, str] | None = None):
    """A JSON error response; the only shape errors leave the app in."""
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(error, detail), status_code=status_code, headers=headers)


def _cause(err: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (RayTaskError keeps it as ``.cause``)."""
    for _ in range(5):
        inner = getattr(err, "cause", None)
        if not isinstance(inner, BaseException) or inner is err:
            break
        err = inner
    return err


def _original_class(err: BaseException) -> type:
    """The user's exception class when Ray re-raises it as a RayTaskError subclass of both."""
    for cls in type(err).__mro__:
        if cls.__module__.startswith("ray."):
            continue
        return cls
    return type(err)


def _message(err: BaseException, cls: type) -> str:
    """The original message, without the remote traceback Ray prepends."""
    text = str(err)
    for prefix in (f"{cls.__module__}.{cls.__name__}: ", f"{cls.__name__}: "):
        if prefix in text:
            return text.rsplit(prefix, 1)[1].strip()
    return text


def as_http_error(err: BaseException) -> HttpError:
    """Map any exception raised while answering a request to a plain ``HttpError``."""
    cause = _cause(err)
    cls = _original_class(cause)
    message = _message(cause, cls)
    if issubclass(cls, HttpError):
        return cls(message)
    if issubclass(cls, DataError):
        return CorruptInput(message)
    if issubclass(cls, ModelError):
        return InternalError(f"model error: {message}")
    if issubclass(cls, MedrayError):
        return HttpError(message)
    logger.error("unexpected error while answering a request: %s", err, exc_info=err)
    return InternalError(f"{cls.__name__}: {message}")


async def answer(awaitable):
    """Await a deployment call; any failure becomes an ``HttpError`` the handlers render."""
    try:
        return await awaitable
    except Exception as err:  # noqa: BLE001 - incl. RayTaskError(HttpError) duals, re-made plain
        raise as_http_error(err) from None


def install_error_handlers(app) -> None:
    """JSON bodies for our errors, FastAPI validation (422) and Starlette's own (404, 405...)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def on_http_error(_request, exc: HttpError):
        plain = as_http_error(exc)
        return error_response(plain.status_code, plain.code, str(plain))

    async def on_validation(_request, exc: RequestValidationError):
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return error_response(422, "invalid_parameters", detail)

    async def on_starlette(request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; see /docs for the endpoints"
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), detail,
                              getattr(exc, "headers", None))

    app.add_exception_handler(HttpError, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_starlette)


class JsonServerErrors:
    """ASGI middleware: an exception nobody handled becomes a JSON 500 (if nothing was sent yet)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as err:  # noqa: BLE001 - the replica must answer, not crash
            if started:
                raise
            mapped = as_http_error(err)
            await error_response(mapped.status_code, mapped.code, str(mapped))(scope, receive, send)
