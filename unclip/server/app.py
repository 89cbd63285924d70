"""The FastAPI app: OpenAI's Images API (DALL·E 2 era) over an ``UnCLIPPipeline``, and the web page.

Routes: ``POST /v1/images/generations`` (JSON), ``/v1/images/edits``, ``/v1/images/variations`` and
the extensions ``/v1/images/interpolations`` and ``/v1/images/outpaint`` (multipart); ``GET /v1/models``, ``GET /health``,
``GET /images/<name>`` (the files behind ``response_format=url``) and ``GET /`` (the page).
Each request takes a queue slot before its body is read, is validated (``jobs``), then waits for
the worker thread (``queue``), so the event loop never runs the pipeline.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from unclip.config import SAMPLED_STAGES
from unclip.pipeline import UnCLIPPipeline
from unclip.pipeline.plan import StageValue
from unclip.safety import PromptFilter
from unclip.server import schema
from unclip.server.errors import (
    APIError,
    error_response,
    from_value_error,
    install_handlers,
)
from unclip.server.files import ImageStore
from unclip.server.jobs import JobBuilder
from unclip.server.params import DALL_E_2
from unclip.server.queue import ClientGone, Job, QueueFull, Slot, WorkQueue
from unclip.server.work import Worker


def create_app(pipeline: UnCLIPPipeline, *, api_key: str | None = None, max_queue: int = 16,
               image_ttl_s: float = 3600, model_name: str = "unclip", steps: StageValue = None,
               max_batch: int = 10, eta: float = 1.0, resample: int = 0, image_dir: str | Path | None = None,
               public_url: str | None = None, prompt_filter: PromptFilter | None = None,
               watermark: bool = False, precision: str = "fp32") -> FastAPI:
    """The server for ``pipeline``.

    ``api_key``: required as ``Authorization: Bearer`` on ``/v1`` when set. ``max_queue``: requests
    in the server at once (429 beyond). ``image_ttl_s``: lifetime of the URL images. ``model_name``:
    the served checkpoint's name (``dall-e-2`` is accepted as an alias). ``steps``: sampling steps
    for every stage or ``{stage: steps}`` (default: the pipeline's). ``max_batch``: images per
    pipeline call (compatible generations share one; a larger ``n`` is split). ``eta``: DDIM eta of
    variations. ``resample``: RePaint resampling of edits. ``image_dir``: where URL images live
    (default: a temporary folder). ``public_url``: the base of the returned URLs (default: the
    request's own host). ``prompt_filter``: flagged prompts are answered 400 with code
    ``content_policy_violation`` (default: none). ``watermark``: DALL·E 2's signature on every
    image. ``precision``: as ``SamplingOptions.precision`` (``unclip serve`` passes "auto").
    """
    pipeline.plan([s for s in SAMPLED_STAGES if pipeline.component(s) is not None], steps=steps)  # a bad `steps` fails now
    store = ImageStore(image_dir, image_ttl_s)
    queue = WorkQueue(max_queue=max_queue, max_batch=max_batch)
    worker = Worker(pipeline, store, steps=steps, eta=eta, resample=resample, watermark=watermark,
                    precision=precision, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        queue.close()
        store.close()

    app = FastAPI(title="unclip", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible Images API (DALL·E 2 era) for an unCLIP checkpoint. "
                              "Sizes map onto the cascade's stages: the smallest stage at least as large as "
                              "the requested side, shrunk to it, else the largest stage grown to it "
                              "(header x-unclip-source-size).")
    app.state.queue, app.state.store, app.state.worker = queue, store, worker
    install_handlers(app)
    api = APIRouter(prefix="/v1", dependencies=[Depends(bearer_check(api_key))], responses=schema.responses(401))
    add_image_routes(api, JobBuilder(pipeline, worker, model_name, public_url, prompt_filter), queue)
    add_model_routes(api, model_name)
    app.include_router(api)
    add_site_routes(app, pipeline, model_name, queue, store)
    return app


def bearer_check(api_key: str | None):
    """A dependency refusing (401) requests without ``Authorization: Bearer <api_key>``."""
    bearer = HTTPBearer(auto_error=False)

    async def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if api_key is None:
            return
        if credentials is None:
            raise APIError("You didn't provide an API key. Provide it in an Authorization header using Bearer "
                           "auth (Authorization: Bearer YOUR_KEY).", status=401)
        if not hmac.compare_digest(credentials.credentials.encode(), api_key.encode()):
            shown = credentials.credentials[:3] + "***"
            raise APIError(f"Incorrect API key provided: {shown}.", status=401, code="invalid_api_key")

    return authorize


def add_image_routes(api: APIRouter, jobs: JobBuilder, queue: WorkQueue) -> None:
    async def serve(request: Request, build: Callable[[Request], Awaitable[Job]]) -> Response:
        """Take a queue slot, build the job from the request, run it, answer an ImagesResponse."""
        slot = reserve(queue)
        try:
            try:
                job = await build(request)
            except ValueError as err:  # the pipeline's own checks refused the input
                raise from_value_error(err) from None
            result = await queue.submit(job, disconnected=request.is_disconnected)  # a failure here is a 500
        except ClientGone:
            return Response(status_code=499)  # nobody is listening
        finally:
            slot.release()
        return JSONResponse({"created": int(time.time()), "data": result.data},
                            headers={"x-unclip-source-size": str(result.source_side), "x-request-id": uuid.uuid4().hex})

    doc = {"response_model": schema.ImagesResponse, "responses": schema.responses(400, 429)}
    multipart = "multipart/form-data"

    @api.post("/images/generations", openapi_extra=schema.body(schema.GENERATION, "application/json"), **doc)
    async def generations(request: Request):
        """Text → images (``client.images.generate``)."""
        return await serve(request, jobs.generation)

    @api.post("/images/edits", openapi_extra=schema.body(schema.EDIT, multipart), **doc)
    async def edits(request: Request):
        """Inpainting (``client.images.edit``): pixels with alpha 0 in ``mask`` (or in ``image``) are
        regenerated to fit the prompt; the others come back unchanged."""
        return await serve(request, jobs.edit)

    @api.post("/images/variations", openapi_extra=schema.body(schema.VARIATION, multipart), **doc)
    async def variations(request: Request):
        """Variations of an image (``client.images.create_variation``)."""
        return await serve(request, jobs.variation)

    @api.post("/images/interpolations", openapi_extra=schema.body(schema.INTERPOLATION, multipart), **doc)
    async def interpolations(request: Request):
        """Extension: ``frames`` images from ``image_a`` to ``image_b`` (slerp of CLIP embeddings)."""
        return await serve(request, jobs.interpolation)

    @api.post("/images/outpaint", openapi_extra=schema.body(schema.OUTPAINT, multipart), **doc)
    async def outpaint(request: Request):
        """Extension: the image on a canvas grown by ``expand`` pixels on every side (or ``left``,
        ``right``, ``top``, ``bottom``), the new area drawn to fit the prompt; the original's pixels
        come back unchanged and the result has the grown canvas's size (``size`` is not applied)."""
        return await serve(request, jobs.outpaint)


def add_model_routes(api: APIRouter, model_name: str) -> None:
    started = int(time.time())

    def card(name: str) -> schema.Model:
        return schema.Model(id=name, created=started, owned_by="unclip")

    @api.get("/models", response_model=schema.ModelList)
    async def models():
        """The served checkpoint (and its alias dall-e-2)."""
        return schema.ModelList(data=[card(model_name), card(DALL_E_2)])

    @api.get("/models/{model}", response_model=schema.Model, responses=schema.responses(400))
    async def model(model: str):
        if model not in (model_name, DALL_E_2):
            raise APIError(f"The model '{model}' does not exist.", param="model", code="model_not_found", status=404)
        return card(model)


def add_site_routes(app: FastAPI, pipeline: UnCLIPPipeline, model_name: str, queue: WorkQueue,
                    store: ImageStore) -> None:
    """The routes outside the API: health, the URL images, the page (none needs the key)."""
    page = (resources.files("unclip.server") / "page.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health():
        """Liveness, the served model, its stage sizes and the queue's load."""
        return {"status": "ok", "model": model_name, "sizes": pipeline.sizes,
                "queue": {"in_flight": queue.in_flight, "max": queue.max_queue}}

    @app.get("/images/{name}", include_in_schema=False)
    async def image_file(name: str):
        path = store.path(name)
        if path is None:
            return error_response(404, "This image does not exist or has expired.", code="not_found")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page)


def reserve(queue: WorkQueue) -> Slot:
    try:
        return queue.reserve()
    except QueueFull as full:
        raise APIError(f"The server is busy ({queue.max_queue} requests in progress); retry after "
                       f"{full.retry_after} s.", status=429, type="rate_limit_error", code="queue_full",
                       headers={"Retry-After": str(full.retry_after)}) from None
