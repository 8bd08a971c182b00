"""The HTTP service: ``create_app(captioner)``, a FastAPI app with the captioning API and the page.

``POST /v1/captions`` takes multipart images and decoding options as query parameters, decodes
the uploads in a thread pool (never on the event loop, never written to disk), captions them
through the ``Batcher`` and answers per image: the n-best captions with each word's attention,
or an error for that image. Every error is JSON ``{"error": "..."}`` with a 4xx status naming
the problem; nothing in a request names a file or URL for the server to open.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline  # /docs from packaged assets, no CDN
from starlette.exceptions import HTTPException

from ..config import ServeOptions
from .. import decoding
from ..decoding import DecodeOptions
from ..inference import Caption, Captioner
from .batching import Batcher
from .errors import RequestError
from .limits import BodyLimit
from .query import query_dependency
from .uploads import UploadReader

STATIC = Path(__file__).parent / "static"


def caption_json(c: Caption, digits: int = 4) -> dict[str, Any]:
    """One caption for clients: words, score, log-probability and each word's attention over
    the grid (row-major, ``grid_size`` squared values per word), rounded."""
    return {"text": c.text, "words": c.words, "score": round(c.score, digits),
            "log_prob": round(c.log_prob, digits),
            "attention": [[round(v, digits) for v in row] for row in c.alpha.float().tolist()]}


def create_app(cap: Captioner, model_info: dict[str, Any] | None = None,
               settings: ServeOptions = ServeOptions()) -> FastAPI:
    """The service around one loaded ``Captioner``: concurrent requests are batched, uploads
    and requests over ``settings``' limits refused (``ServeOptions``)."""
    batcher = Batcher(cap.caption_tensors, settings.max_batch, settings.max_wait_ms)
    uploads = UploadReader(cap, settings.max_upload_mb, settings.decode_workers)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()
            uploads.close()

    app = FastAPIOffline(title="captioner", lifespan=lifespan,
                         description="Show, Attend and Tell captions with each word's attention.")
    app.state.batcher = batcher
    # the whole body is refused early when it cannot hold max_images uploads within the limit
    app.add_middleware(BodyLimit, max_bytes=uploads.max_bytes * settings.max_images + (1 << 20),
                       message=f"request body is over the upload limit ({settings.max_upload_mb:g}"
                       f" MB per image, {settings.max_images} images)")
    _add_error_handlers(app)
    _add_pages(app, batcher, model_info or {"encoder": cap.model.config.encoder}, settings)
    _add_captions(app, cap, batcher, uploads, settings)
    return app


def _add_pages(app: FastAPI, batcher: Batcher, info: dict[str, Any],
               settings: ServeOptions) -> None:
    """The web page, its files, the health check and the model's description."""
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness, the queue length and how many batches of each size have run."""
        return {"status": "ok", "queued": batcher.pending,
                "batches": {str(k): v for k, v in sorted(batcher.batch_sizes.items())}}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """The loaded model: encoder, attention kind, grid, vocabulary, training data,
        preprocessing, and the decoding bounds this service accepts."""
        return {**info, "limits": {"max_beam_size": settings.max_beam_size,
                                   "max_images": settings.max_images,
                                   "max_upload_mb": settings.max_upload_mb},
                "defaults": decoding.DecodeOptions().to_dict()}


def _add_captions(app: FastAPI, cap: Captioner, batcher: Batcher, uploads: UploadReader,
                  settings: ServeOptions) -> None:
    """``POST /v1/captions``: its decoding options are ``DecodeOptions``' HTTP fields, the
    beams capped by this service."""
    fields = query_dependency(decoding.DecodeOptions, {"beam_size": settings.max_beam_size,
                                                       "n_best": settings.max_beam_size})

    @app.post("/v1/captions")
    async def captions(
        images: Annotated[list[UploadFile], File(description="one or more image files")],
        decode: dict[str, Any] = Depends(fields),  # noqa: B008 - FastAPI's dependency form
    ) -> JSONResponse:
        """Caption the uploaded images: per image its n-best captions, best first, with each
        word's attention over the grid, or an error object for that image. The decoding
        options are ``DecodeOptions``' (strategy, beam size, n-best, length penalty, ...)."""
        try:
            options = cap.options(**decode)
        except ValueError as exc:
            raise RequestError(422, str(exc)) from None
        if len(images) > settings.max_images:
            raise RequestError(413, f"{len(images)} images in one request; at most "
                                    f"{settings.max_images}")
        batcher.expect(len(images))
        results = await asyncio.gather(*(_one(i, f, options) for i, f in enumerate(images)))
        body = {"options": options.to_dict(), "grid_size": cap.model.config.grid_size,
                "results": [r for r, _ in results]}
        failed = [(r, status) for r, status in results if status]
        if len(failed) == len(results):  # nothing captioned: the request itself failed
            return JSONResponse({"error": failed[0][0]["error"], **body}, failed[0][1])
        return JSONResponse(body)

    async def _one(index: int, upload: UploadFile, options: DecodeOptions
                   ) -> tuple[dict[str, Any], int]:
        name = (upload.filename or f"image {index + 1}")[:200]
        try:
            tensor, (width, height) = await uploads.read(upload, name)
        except BaseException as exc:  # a bad upload, or cancelled because the client left
            batcher.expect(-1)  # announced with the request, never coming
            if isinstance(exc, RequestError):
                return {"filename": name, "error": exc.message}, exc.status
            raise
        found = await batcher.submit(tensor, options, expected=True)
        return {"filename": name, "width": width, "height": height,
                "captions": [caption_json(c) for c in found]}, 0


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "; ".join(_describe(e) for e in exc.errors())}, 422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, 500)


def _describe(error: dict) -> str:
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query")]
    field = ".".join(loc) or "request"
    if field.startswith("images") and error.get("type") == "missing":
        return "images: no file field; send the images as multipart form field 'images'"
    if field.startswith("images"):
        return f"{field}: not a file upload; send the images as multipart form field 'images'"
    return f"{field}: {error.get('msg', 'invalid').lower()} (got {error.get('input')!r})"
