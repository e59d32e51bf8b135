"""HTTP service over one loaded run (FastAPI + uvicorn).

Launch::

    llmrec serve --run runs/smollm2-lora --host 127.0.0.1 --port 8000
    curl -s localhost:8000/recommend -H 'content-type: application/json' -d '{"user_id": "42", "k": 5}'

Endpoints: ``POST /recommend``, ``POST /explain``, ``POST /tags``, ``GET /health``,
``GET /items/{item_id}``; the OpenAPI schema is at ``/openapi.json`` (docs at ``/docs``).

* The run directory is fixed when the server starts; no request can name a file or path.
* The model is loaded once, in the lifespan hook. Model calls are serialized by an asyncio lock
  and run in a worker thread, so the event loop keeps answering ``/health`` while one runs.
* Input limits: body <= 64 KiB (413 beyond), history <= 200 entries, strings bounded, ``k`` in
  1..100 (tags: 1..50). Bad input is a 4xx with a message naming the field: 422 for invalid
  values or a title that grounds to nothing (with the closest candidates), 404 for an unknown
  user or item id. A 5xx means a bug, never a user error.
* ``/tags`` always answers: the run's categories ranked by the rank-discounted categories of the
  user's recommended items plus the history's own categories (``Recommender.tags``).
* Binds 127.0.0.1 by default; exposing it further is the operator's explicit choice.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmrec.recommender import Query, Recommender, RecommendError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_HISTORY = 200
MAX_K = 100
MAX_TAGS = 50
MAX_ID_CHARS = 64
MAX_TITLE_CHARS = 300

T = TypeVar("T")
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
HistoryEntry = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TITLE_CHARS)]


class QueryBody(BaseModel):
    """Who to answer for: a known ``user_id`` or a ``history`` of item ids / titles (oldest first)."""

    model_config = ConfigDict(extra="forbid")

    user_id: ItemId | None = Field(None, description="a user of the run's dataset")
    history: list[HistoryEntry] | None = Field(
        None, min_length=1, max_length=MAX_HISTORY, description="item ids or titles, oldest first"
    )

    @model_validator(mode="after")
    def _one_of(self) -> QueryBody:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id or history")
        return self


class RecommendBody(QueryBody):
    k: int = Field(10, ge=1, le=MAX_K, description="number of items")
    exclude_seen: bool = Field(True, description="never recommend items in the history")


class ExplainBody(QueryBody):
    item_id: ItemId = Field(description="the catalog item to explain")


class TagsBody(QueryBody):
    k: int = Field(10, ge=1, le=MAX_TAGS, description="number of tags")


class RecommendationOut(BaseModel):
    item_id: str
    title: str
    score: float
    method: str


class RecommendResponse(BaseModel):
    items: list[RecommendationOut]
    k_requested: int
    k_returned: int
    warnings: list[str]


class SimilarityOut(BaseModel):
    item_id: str
    title: str
    similarity: float


class EvidenceOut(BaseModel):
    history_items: list[str]
    shared_categories: list[str]
    similarities: list[SimilarityOut]
    similarity_method: str


class ExplanationOut(BaseModel):
    item_id: str
    text: str
    path: str
    tries: int
    evidence: EvidenceOut
    rejected: list[str]
    note: str | None


class TagOut(BaseModel):
    name: str
    score: float
    method: str


class TagsResponse(BaseModel):
    tags: list[TagOut]


class ItemOut(BaseModel):
    item_id: str
    title: str
    display_title: str
    categories: list[str]
    attributes: dict[str, str]


class HealthOut(BaseModel):
    status: str
    kind: str
    method: str
    run: str | None
    base_model: str | None
    catalog_size: int
    users: int
    explain_path: str


class CandidateOut(BaseModel):
    item_id: str
    title: str
    score: float


class ErrorOut(BaseModel):
    detail: str | list[dict[str, Any]]  # a message, or FastAPI's list of field errors (422)
    candidates: list[CandidateOut] = []


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "body is not decodable (bad bytes or a bad content-length)"},
    404: {"model": ErrorOut, "description": "unknown user or item id"},
    413: {"model": ErrorOut, "description": f"body over {MAX_BODY_BYTES} bytes"},
    422: {"model": ErrorOut, "description": "invalid field values, or a title that matches no catalog item"},
}


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413, by header or as the body streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_error(send, 400, "content-length header is not an integer")
                return
            if size > self.max_bytes:
                await _send_error(send, 413, f"request body of {size} bytes is over the {self.max_bytes}-byte limit")
                return
        received = 0
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Answer 413 now; the app sees a disconnected client and its own reply is dropped.
                    rejected = True
                    await _send_error(send, 413, f"request body is over the {self.max_bytes}-byte limit")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


async def _send_error(send: Send, status: int, detail: str) -> None:
    body = ErrorOut(detail=detail).model_dump_json().encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ModelGate:
    """Runs model calls one at a time, each in a worker thread (the event loop never blocks)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with self.lock:
            return await run_in_threadpool(fn, *args, **kwargs)


RecommenderSource = Recommender | Callable[[], Recommender]


def create_app(source: RecommenderSource, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app over ``source``: a loaded Recommender, or a zero-argument loader run once at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        recommender = source if isinstance(source, Recommender) else await run_in_threadpool(source)
        app.state.recommender = recommender
        app.state.gate = ModelGate()
        log.info("llmrec serve: loaded %s", recommender.info())
        yield

    app = FastAPI(title="llmrec", version="0.1.0", lifespan=lifespan,
                  description="Recommendations, faithful explanations and interest tags from one fine-tuned run.")
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_exception_handler(RecommendError, _recommend_error)  # type: ignore[arg-type]
    _add_routes(app)
    return app


async def _recommend_error(request: Request, exc: RecommendError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content={"detail": exc.message, "candidates": exc.candidates})


def _query(body: QueryBody) -> Query:
    return Query(user_id=body.user_id, history=body.history)


def _state(request: Request) -> tuple[Recommender, ModelGate]:
    return request.app.state.recommender, request.app.state.gate


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -1e30  # JSON has no infinity; never below a real score


def _add_routes(app: FastAPI) -> None:
    @app.get("/health", response_model=HealthOut)
    async def health(request: Request) -> dict[str, Any]:
        recommender, _ = _state(request)
        return {"status": "ok", **recommender.info()}

    @app.get("/items/{item_id}", response_model=ItemOut, responses=ERRORS)
    async def get_item(request: Request, item_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS)]) -> ItemOut:
        recommender, _ = _state(request)
        item = recommender.item(item_id)
        return ItemOut(item_id=item.item_id, title=item.title, display_title=item.display_title(),
                       categories=list(item.categories), attributes=dict(item.attributes))

    @app.post("/recommend", response_model=RecommendResponse, responses=ERRORS)
    async def recommend(request: Request, body: RecommendBody) -> RecommendResponse:
        recommender, gate = _state(request)
        lists = await gate.call(recommender.recommend_batch, [_query(body)], body.k, body.exclude_seen)
        items = [RecommendationOut(item_id=r.item_id, title=r.title, score=_finite(r.score), method=r.method) for r in lists[0]]
        warnings = []
        if len(items) < body.k:
            warnings.append(f"only {len(items)} items can be recommended (k={body.k} was clamped)")
        return RecommendResponse(items=items, k_requested=body.k, k_returned=len(items), warnings=warnings)

    @app.post("/explain", response_model=ExplanationOut, responses=ERRORS)
    async def explain(request: Request, body: ExplainBody) -> ExplanationOut:
        recommender, gate = _state(request)
        result = await gate.call(recommender.explain, body.user_id, body.history, item_id=body.item_id)
        return ExplanationOut(item_id=body.item_id, **result.to_dict())

    @app.post("/tags", response_model=TagsResponse, responses=ERRORS)
    async def tags(request: Request, body: TagsBody) -> TagsResponse:
        recommender, gate = _state(request)
        found = await gate.call(recommender.tags, body.user_id, body.history, body.k)
        return TagsResponse(tags=[TagOut(name=t.name, score=t.score, method=t.method) for t in found])


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", threads: int = 0) -> None:
    """Load ``run_dir`` at start-up and serve it with uvicorn until interrupted.

    ``threads`` > 0 sets torch's intra-op threads (1 avoids OpenMP oversubscription on a busy CPU).
    """
    import torch
    import uvicorn

    if threads > 0:
        torch.set_num_threads(threads)

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the service is reachable from other machines", host)

    def load() -> Recommender:
        return Recommender.load(run_dir)

    uvicorn.run(create_app(load), host=host, port=port, log_level=log_level)


__all__ = ["create_app", "serve", "BodyLimitMiddleware", "ModelGate", "MAX_BODY_BYTES"]
