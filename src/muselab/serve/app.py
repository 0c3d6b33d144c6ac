"""The REST API and web page of `muselab serve`: every request takes the generation pipeline's one path
(`muselab.load(RUN).generate`: controls, moderation, the recipe, guards, a typed result saved with its
manifests and watermarks), and every output lands in the gallery.

No `from __future__ import annotations` here: FastAPI reads the endpoint signatures at run time, and the
request bodies are classes made per model.
"""

import asyncio
import hmac
import inspect
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field
from starlette.staticfiles import StaticFiles

import muselab
from muselab import __version__
from muselab.core.artifacts import manifest_path
from muselab.core.errors import ControlError, MuselabError
from muselab.core.results import Result, SequenceResult
from muselab.safety.moderation import PolicyViolation
from muselab.serve.gallery import ID_PATTERN, GalleryStore, Generation, SQLiteGallery, new_id
from muselab.serve.models import (
    ARTIFACT_ID,
    FILE_CONTROLS,
    MODEL_CONTROLS,
    TEXT_OR_FILE_CONTROLS,
    GenerationStopped,
    LimitExceeded,
    Limits,
    QueueFull,
    ServedModel,
    check_audio_length,
)

log = logging.getLogger("muselab.serve")
STATIC = Path(__file__).parent / "static"
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; style-src 'self'; "
               "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
UPLOAD_PATHS = ("/v1/uploads", "/v1/detect")
MULTIPART_SLACK = 64 * 1024  # form boundaries and headers around an upload


# -- response models (the OpenAPI document describes every field) ---------------------------------------
class ErrorOut(BaseModel):
    """Every error: one line for a person, and what it concerns."""

    error: str = Field(description="What is wrong and what to do, in one line.")
    field: str | None = Field(None, description="The request field the error is about, when there is one.")
    category: str | None = Field(None, description="The moderation category that refused the request, for "
                                                   "refusals.")
    retry_after: int | None = Field(None, description="Seconds to wait before asking again (429 only; also in "
                                                      "the Retry-After header).")


class VersionOut(BaseModel):
    muselab: str = Field(description="muselab's version.")
    torch: str = Field(description="PyTorch's version.")
    python: str = Field(description="Python's version.")


class HealthOut(BaseModel):
    status: Literal["ok"] = Field(description="Always ok when the server answers.")
    models: int = Field(description="How many models this server holds (>= 1).")
    pending: dict[str, int] = Field(description="Per model, requests running or waiting (0 to 1 + queue size).")


class ArtifactOut(BaseModel):
    id: str = Field(description="The artifact id (24 hex digits): GET /v1/artifacts/{id} returns the file.")
    name: str = Field(description="The file's name.")
    media_type: str = Field(description="Its media type, e.g. image/png, audio/x-wav.")
    size: int = Field(description="Its size in bytes (>= 0).")
    role: str = Field(description="item (an output), grid, animation, lines, manifest, sidecar, or upload.")
    item: int | None = Field(None, description="For items and their manifests: the output's index (>= 0).")
    url: str = Field(description="Where to fetch it on this server.")


class GenerationOut(BaseModel):
    """One generation: what was asked, what came out, what the safety checks said, and the files."""

    id: str = Field(description="The generation id (24 hex digits).")
    model: str = Field(description="The served model's name.")
    recipe: str = Field(description="The model's recipe, e.g. text-lm.")
    run_id: str = Field(description="Fingerprint of the weights that made it.")
    kind: str = Field(description="text, sequence, image or audio.")
    seed: int | None = Field(None, description="The seed it was made with (same controls and seed, same output).")
    controls: dict[str, Any] = Field(description="The controls as asked (artifact ids, never paths), seed filled in.")
    verdict: dict[str, Any] = Field(description="Moderation and memorization notes per item, refused items, "
                                                "warnings.")
    manifest: dict[str, Any] = Field(description="The provenance manifest of the first output (every file has "
                                                 "its own, inside where the format allows and beside it).")
    content: dict[str, Any] = Field(description="The outputs that are text (texts, lines) and facts about the "
                                                "others (counts, shapes, durations, attention matrices).")
    created: str = Field(description="When it was made (ISO 8601, UTC).")
    ai_generated: bool = Field(description="Always true: everything here was made by a model.")
    artifacts: list[ArtifactOut] = Field(description="The files written, with their manifests.")


class GalleryOut(BaseModel):
    items: list[GenerationOut] = Field(description="This page, newest first.")
    total: int = Field(description="How many generations match the filter (>= 0).")
    limit: int = Field(description="The page size asked for (1 to 100).")
    offset: int = Field(description="How many matching generations come before this page (>= 0).")


class ModelOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str = Field(description="The name requests use, from the run directory's name.")
    recipe: str = Field(description="The recipe, e.g. text-lm.")
    summary: str = Field(description="What the recipe makes, in one line.")
    run_id: str = Field(description="Fingerprint of the weights.")
    preset: str | None = Field(None, description="The preset it was trained with.")
    parameters: int | None = Field(None, description="Parameter count (>= 0).")
    created: str | None = Field(None, description="When training started (ISO 8601).")
    data: dict[str, Any] = Field(description="What it was trained on (no server paths).")
    training: dict[str, Any] = Field(description="Training summary: steps, seconds, validation losses.")
    eval: dict[str, Any] = Field(description="Evaluation metrics (eval.json), empty when not evaluated.")
    capabilities: dict[str, Any] = Field(description="What its generation is: main control, files or text, "
                                                     "streaming.")
    controls_schema: dict[str, Any] = Field(description="JSON schema of its request body, with ranges.")
    generate_url: str = Field(description="POST the controls here to generate.")
    stream_url: str | None = Field(None, description="POST here to receive the text as server-sent events "
                                                     "(text models only).")
    queue: dict[str, int] = Field(description="Requests running or waiting, and the most it takes.")


class ModerateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=100_000, description="The text to check (at most 100,000 characters; no range "
                                                      "otherwise).")


class MatchOut(BaseModel):
    category: str = Field(description="The category that matched.")
    action: str = Field(description="block, redact or warn.")
    rule: str = Field(description="The list entry or pattern name that matched.")
    start: int = Field(description="Offset of the first character (>= 0).")
    end: int = Field(description="Offset just past the last character (> start).")
    line: int = Field(description="1-based line of the first character (>= 1).")


class ModerateOut(BaseModel):
    allowed: bool = Field(description="False when a category whose action is block matched.")
    categories: list[str] = Field(description="Categories that matched, in order of first match.")
    matches: list[MatchOut] = Field(description="Each flagged span (without the words themselves).")
    redacted: str = Field(description="The text with redact-action matches masked.")
    warnings: list[str] = Field(description="Notes about the text (e.g. unusual characters).")


class DetectOut(BaseModel):
    kind: str = Field(description="image, audio or other.")
    watermark: bool = Field(description="Whether muselab's watermark was found.")
    confidence: float = Field(description="Detector confidence, 0 to 1.")
    manifest: dict[str, Any] | None = Field(None, description="The embedded provenance manifest, or null.")
    manifest_source: str | None = Field(None, description="embedded, or null (an upload has no sidecar).")
    note: str | None = Field(None, description="Why a check could not be made (too small, not media).")


# -- errors --------------------------------------------------------------------------------------------
def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"error": " ".join(str(message).split()), **{k: v for k, v in extra.items() if v is not None}}
    return JSONResponse(body, status_code=status, headers=headers)


def _control_field(message: str) -> str | None:
    found = re.search(r"--([a-z][a-z0-9-]*)", message)
    return found.group(1).replace("-", "_") if found else None


def _category(message: str) -> str | None:
    found = re.search(r"categor(?:y|ies): ([^;)]+)", message)
    return found.group(1).strip() if found else None


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        field = ".".join(loc) or None
        message = first.get("msg", "invalid request")
        where = f"bad value for {field}: " if field else "bad request: "
        if first.get("type") == "missing":
            where = f"missing field {field}: " if field else "missing body: "
        if first.get("type") == "extra_forbidden":
            where = f"unknown field {field}: "
        if first.get("type") == "json_invalid":
            where = "the body is not valid JSON: "
        return _error(422, where + str(message), field=field)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(QueueFull)
    async def busy(request: Request, exc: QueueFull) -> JSONResponse:
        return _error(429, f"this model is busy (its queue is full); retry after {exc.retry_after} s",
                      headers={"Retry-After": str(exc.retry_after)}, retry_after=exc.retry_after)

    @app.exception_handler(MuselabError)
    async def user_error(request: Request, exc: MuselabError) -> JSONResponse:
        return _muselab_error(exc)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("request %s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error: the server's log has the details")


def _muselab_error(exc: BaseException) -> JSONResponse:
    message = str(exc)
    if isinstance(exc, GenerationStopped):
        return _error(504, message)
    if isinstance(exc, PolicyViolation):
        return _error(422, message, category=_category(message) or "moderation")
    if isinstance(exc, LimitExceeded):
        return _error(422, message, field=exc.field)
    if isinstance(exc, ControlError):
        return _error(422, message, field=_control_field(message))
    return _error(422, message)


# -- limits at the door ----------------------------------------------------------------------------------
class _TooLarge(Exception):
    pass


class BodyLimit:
    """413 for a body over the limit: by Content-Length before reading, and counted while reading."""

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        upload = path in UPLOAD_PATHS
        limit = self.limits.max_upload_bytes + MULTIPART_SLACK if upload else self.limits.max_body_bytes
        what = f"an upload of at most {self.limits.max_upload_bytes:,} bytes" if upload else \
            f"a request body of at most {self.limits.max_body_bytes:,} bytes"
        too_large = _error(413, f"too large: this server takes {what}")
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                if int(length) > limit:
                    return await too_large(scope, receive, send)
            except ValueError:
                return await _error(400, "bad Content-Length header")(scope, receive, send)
        seen = 0
        started = False

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await too_large(scope, receive, send)


class SecurityHeaders:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        page = scope.get("path") in ("/", "/index.html") or scope.get("path", "").startswith("/static/")

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"no-referrer"))
                if page:
                    headers.append((b"content-security-policy", PAGE_POLICY.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


# -- the application --------------------------------------------------------------------------------------
def model_names(paths: Sequence[str | Path]) -> list[str]:
    """A URL-safe name per run from its folder's name, made unique with -2, -3, ..."""
    names: list[str] = []
    for path in paths:
        base = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(path).resolve().name).strip("-").lower() or "model"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


class Server:
    """What the endpoints share: the models, the gallery, the limits."""

    def __init__(self, runs: Sequence[str | Path], gallery: GalleryStore, limits: Limits, device: str) -> None:
        self.gallery, self.limits = gallery, limits
        loaded = [muselab.load(path, device=device) for path in runs]
        names = model_names(runs)
        # the models a control may name (a vocoder, a G2P run), by recipe
        held: dict[str, list[str]] = {}
        for name, run in zip(names, loaded, strict=True):
            held.setdefault(run.recipe.name, []).append(name)
        self.models = {name: ServedModel(name, run, limits, held) for name, run in zip(names, loaded, strict=True)}

    def model(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise HTTPException(404, f"no model named '{name}' here; GET /v1/models lists them")
        return served

    # runs on the model's worker thread
    def generate(self, served: ServedModel, body: BaseModel, on_text: Callable[[str], None] | None = None,
                 asked: dict[str, Any] | None = None) -> Generation:
        values = body.model_dump()
        files: dict[str, Path] = {}
        for key in FILE_CONTROLS:
            if values.get(key):
                files[key] = self._artifact_path(values[key], key)
                values[key] = str(files[key])
        for key in TEXT_OR_FILE_CONTROLS:
            if values.get(key):
                values[key] = self._text_or_artifact(values[key], key)
        if values.get("interpolate"):
            values["interpolate"] = [str(self._artifact_path(v, "interpolate")) if not v.isdigit() else v
                                     for v in values["interpolate"]]
        for key in MODEL_CONTROLS:
            if values.get(key):
                values[key] = str(self.model(values[key]).run.path)
        if values.get("max_length") == 0 and values.get("input"):
            # 0 means "twice the input plus 10": the server's cap holds for that length too
            longest = max(len(text) for text in values["input"])
            values["max_length"] = min(2 * longest + 10, self.limits.max_tokens)
        check_audio_length(served.recipe.name, values, files, self.limits)
        result = served.run.generate(on_text=on_text, on_refused="skip", **values)
        staged = self.gallery.staging()
        try:
            result.save(staged)
            seed = result.controls.get("seed")
            kept = {**(asked if asked is not None else body.model_dump()), "seed": seed}
            generation = Generation(new_id(), served.name, served.recipe.name, served.run.run_id, result.kind,
                                    seed if isinstance(seed, int) else None, _jsonable(kept), _verdict(result),
                                    _first_manifest(staged, kept), _content(result))
            return self.gallery.add(generation, staged)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise

    def _text_or_artifact(self, value: str, field: str) -> str:
        """An artifact id becomes its file; other text is passed on only when it names no file here (the
        recipe would read a file it names, and requests never name this machine's files)."""
        if re.fullmatch(ARTIFACT_ID, value):
            return str(self._artifact_path(value, field))
        if Path(value).expanduser().exists():
            raise LimitExceeded(f"{field} names a file; upload it with POST /v1/uploads and pass the id it "
                                "returns", field=field)
        return value

    def _artifact_path(self, artifact_id: str, field: str) -> Path:
        artifact = self.gallery.artifact(artifact_id)
        if artifact is None or artifact.path is None or not artifact.path.is_file():
            raise LimitExceeded(f"no artifact '{artifact_id}' on this server for {field}; upload the file with "
                                "POST /v1/uploads and pass the id it returns", field=field)
        return artifact.path


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _verdict(result: Result) -> dict[str, Any]:
    return _jsonable({"requested": result.requested, "refused": [r.to_json() for r in result.refused],
                      "warnings": result.warnings, "items": result.notes})


def _first_manifest(folder: Path, asked: dict[str, Any]) -> dict[str, Any]:
    """The first output's manifest as the API shows it: files named by their artifact ids, as asked (the
    files' own manifests name the paths the recipe read)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".json"))
    for path in files:
        side = manifest_path(path)
        if side.is_file():
            try:
                manifest = json.loads(side.read_text(encoding="utf-8"))
            except ValueError:
                continue
            manifest.pop("run_dir", None)  # the server's path: the run id names the weights
            controls = manifest.get("controls")
            if isinstance(controls, dict):
                for key in (*FILE_CONTROLS, *MODEL_CONTROLS, "interpolate"):
                    if controls.get(key) is not None:
                        controls[key] = asked.get(key)
            return manifest
    return {}


def _content(result: Result) -> dict[str, Any]:
    content = {k: v for k, v in result.to_json().items() if k not in ("controls", "notes", "provenance", "kind",
                                                                      "warnings", "refused")}
    if isinstance(result, SequenceResult) and result.attention:
        shown = []
        for i, matrix in enumerate(result.attention[:8]):
            if matrix is None:
                continue
            best = result.nbest[i][0]
            shown.append({"input": result.inputs[i], "output": best if isinstance(best, list) else list(best),
                          "matrix": np.round(np.asarray(matrix, dtype=float), 3).tolist()})
        content["attention"] = shown
    return _jsonable(content)


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def create_app(runs: Sequence[str | Path], *, gallery: str | Path | GalleryStore = "muselab-gallery",
               api_key: str | None = None, limits: Limits | None = None, cors_origins: Sequence[str] = (),
               device: str = "cpu") -> FastAPI:
    """The FastAPI application serving these run directories (see `muselab serve --help`)."""
    if not runs:
        raise ControlError("name at least one run directory to serve")
    limits = limits or Limits()
    store = SQLiteGallery(gallery, stale_after_s=max(600.0, 2 * limits.time_limit_s)) \
        if isinstance(gallery, (str, Path)) else gallery
    server = Server(runs, store, limits, device)
    app = FastAPI(
        title="muselab", version=__version__,
        description="Generate text, images and sound with trained muselab models. Every request goes through "
                    "muselab's generation pipeline (moderation, guards, manifests, watermarks) and every output "
                    "is kept in the gallery. Files are named by artifact id, never by path.",
        docs_url="/docs", redoc_url=None, lifespan=_lifespan)
    app.state.server = server

    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The server's API key (when it has one); "
                          "`Authorization: Bearer KEY` works too.")

    def require_key(request: Request, given: str | None = Depends(header)) -> None:
        if api_key is None:
            return
        if given is None:
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else None
        if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "a valid API key is required: send it as X-API-Key or Authorization: Bearer",
                                headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(require_key)] if api_key else []
    errors = {422: {"model": ErrorOut, "description": "Malformed or out-of-range request, or refused by "
                                                      "moderation (naming the field or category)."}}
    if api_key:
        errors[401] = {"model": ErrorOut, "description": "Missing or wrong API key."}

    @app.get("/v1/health", response_model=HealthOut, tags=["server"], summary="Is the server up")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": len(server.models),
                "pending": {name: m.pending for name, m in server.models.items()}}

    @app.get("/v1/version", response_model=VersionOut, tags=["server"], summary="Versions")
    def version() -> dict[str, str]:
        return {"muselab": __version__, "torch": torch.__version__, "python": platform.python_version()}

    @app.get("/v1/models", response_model=list[ModelOut], tags=["models"], dependencies=guarded,
             responses=errors, summary="The models this server holds")
    def list_models() -> list[dict[str, Any]]:
        return [m.info() for m in server.models.values()]

    name_param = PathParam(pattern=r"^[A-Za-z0-9_-]{1,100}$", description="A model's name (GET /v1/models).")

    @app.get("/v1/models/{name}", response_model=ModelOut, tags=["models"], dependencies=guarded,
             responses={**errors, 404: {"model": ErrorOut, "description": "No such model."}}, summary="One model")
    def get_model(name: str = name_param) -> dict[str, Any]:
        return server.model(name).info()

    busy = {429: {"model": ErrorOut, "description": "The model's queue is full; see Retry-After."},
            504: {"model": ErrorOut, "description": "The generation ran past the server's time limit and was "
                                                    "stopped; nothing was saved."}}

    async def run_generation(served: ServedModel, body: BaseModel, asked: dict[str, Any] | None = None
                             ) -> dict[str, Any]:
        served.admit()
        future = served.submit(lambda: server.generate(served, body, asked=asked))
        future.add_done_callback(lambda _: served.release())
        return (await asyncio.wrap_future(future)).to_json()

    for served in server.models.values():
        _add_model_routes(app, server, served, guarded, {**errors, **busy}, run_generation)

    @app.post("/v1/uploads", response_model=ArtifactOut, tags=["files"], dependencies=guarded,
              responses={**errors, 413: {"model": ErrorOut, "description": "Upload too large."}},
              summary="Keep a file for a control that reads one (a recording, a picture)")
    async def upload(file: UploadFile = File(description="The file (at most the server's upload size).")
                     ) -> dict[str, Any]:
        data = await _read_upload(file, limits)
        artifact = await asyncio.to_thread(store.add_upload, file.filename or "upload", data)
        return artifact.to_json()

    @app.get("/v1/artifacts/{artifact_id}", tags=["files"], dependencies=guarded, response_class=FileResponse,
             responses={200: {"description": "The file.", "content": {"application/octet-stream": {}}},
                        404: {"model": ErrorOut, "description": "No such artifact."}}, summary="A file by id")
    def artifact(artifact_id: str = PathParam(pattern=ID_PATTERN, description="An artifact id (24 hex digits).")
                 ) -> FileResponse:
        found = store.artifact(artifact_id)
        if found is None or found.path is None or not found.path.is_file():
            raise HTTPException(404, f"no artifact '{artifact_id}'")
        return FileResponse(found.path, media_type=found.media_type, filename=found.name,
                            content_disposition_type="inline")

    @app.get("/v1/gallery", response_model=GalleryOut, tags=["gallery"], dependencies=guarded, responses=errors,
             summary="Generations, newest first")
    def gallery_list(
        model: str | None = Query(None, max_length=100, description="Only this model's generations."),
        since: datetime | None = Query(None, description="Only those made at or after this time (ISO 8601)."),
        until: datetime | None = Query(None, description="Only those made before this time (ISO 8601)."),
        limit: int = Query(20, ge=1, le=100, description="Page size (1 to 100)."),
        offset: int = Query(0, ge=0, le=10**9, description="Generations to skip (0 to 1e9)."),
    ) -> dict[str, Any]:
        items, total = store.list(model, _stamp(since), _stamp(until), limit, offset)
        return {"items": [g.to_json() for g in items], "total": total, "limit": limit, "offset": offset}

    gen_param = PathParam(pattern=ID_PATTERN, description="A generation id (24 hex digits).")
    missing = {404: {"model": ErrorOut, "description": "No such generation."}}

    @app.get("/v1/gallery/{generation_id}", response_model=GenerationOut, tags=["gallery"], dependencies=guarded,
             responses={**errors, **missing}, summary="One generation")
    def gallery_get(generation_id: str = gen_param) -> dict[str, Any]:
        found = store.get(generation_id)
        if found is None:
            raise HTTPException(404, f"no generation '{generation_id}'")
        return found.to_json()

    @app.delete("/v1/gallery/{generation_id}", status_code=204, tags=["gallery"], dependencies=guarded,
                responses={**errors, **missing}, summary="Delete a generation and its files")
    def gallery_delete(generation_id: str = gen_param) -> Response:
        if not store.delete(generation_id):
            raise HTTPException(404, f"no generation '{generation_id}'")
        return Response(status_code=204)

    @app.post("/v1/gallery/{generation_id}/remix", response_model=GenerationOut, tags=["gallery"],
              dependencies=guarded, responses={**errors, **missing, **busy},
              summary="The same controls again with a new seed")
    async def gallery_remix(generation_id: str = gen_param) -> dict[str, Any]:
        found = store.get(generation_id)
        if found is None:
            raise HTTPException(404, f"no generation '{generation_id}'")
        served = server.model(found.model)
        asked = {**found.controls, "seed": None}
        body = served.request_class.model_validate(asked)
        return await run_generation(served, body, asked)

    @app.post("/v1/moderate", response_model=ModerateOut, tags=["safety"], dependencies=guarded, responses=errors,
              summary="Check a text against the moderation policy")
    def moderate_text(body: ModerateIn) -> dict[str, Any]:
        from muselab.safety.moderation import moderate

        verdict = moderate(body.text)
        return {**verdict.model_dump(), "matches": [m.model_dump(exclude={"text"}) for m in verdict.matches]}

    @app.post("/v1/detect", response_model=DetectOut, tags=["safety"], dependencies=guarded,
              responses={**errors, 413: {"model": ErrorOut, "description": "Upload too large."}},
              summary="Look for muselab's watermark and manifest in a file")
    async def detect(file: UploadFile = File(description="An image, a sound or any file.")) -> dict[str, Any]:
        data = await _read_upload(file, limits)
        return await asyncio.to_thread(_detect_bytes, data, file.filename or "upload")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _install_error_handlers(app)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["X-API-Key", "Authorization", "Content-Type"])
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit, limits=limits)

    def openapi() -> dict[str, Any]:
        # FastAPI's own validation-error schema is replaced by the one this server answers with
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            text = json.dumps(doc).replace("#/components/schemas/HTTPValidationError", "#/components/schemas/ErrorOut")
            doc = json.loads(text)
            for name in ("HTTPValidationError", "ValidationError"):
                doc.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    for model in app.state.server.models.values():
        model.close()


def _add_model_routes(app: FastAPI, server: Server, served: ServedModel, guarded: list[Any],
                      responses: dict[int, Any], run_generation: Callable) -> None:
    """POST /v1/models/NAME/generate (and /stream for text), with this model's own request body."""
    Body = served.request_class  # noqa: N806

    async def generate(body: Any) -> dict[str, Any]:
        return await run_generation(served, body)

    generate.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Body)])
    app.post(f"/v1/models/{served.name}/generate", response_model=GenerationOut, tags=["generate"],
             dependencies=guarded, responses=responses, name=f"generate_{served.name}",
             summary=f"Generate with {served.name} ({served.recipe.name})",
             description=f"{served.recipe.summary}. The body holds the controls; every field's range is in "
                         "its description. The outputs are saved in the gallery and returned with their "
                         "artifact ids.")(generate)
    if not served.recipe.capabilities.streams_text:
        return

    async def stream(body: Any) -> Response:
        served.admit()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()

        def on_text(piece: str) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ("text", piece))

        future = served.submit(lambda: server.generate(served, body, on_text=on_text), cancelled)
        future.add_done_callback(lambda _: served.release())

        def finished(done: Any) -> None:
            error = done.exception()
            loop.call_soon_threadsafe(events.put_nowait, ("error", error) if error else ("done", done.result()))

        future.add_done_callback(finished)
        # the first event decides the status: a refused prompt or a bad control is an error response (422),
        # not a stream that starts and then fails
        first = await events.get()
        if first[0] == "error" and isinstance(first[1], MuselabError):
            return _muselab_error(first[1])

        async def events_out() -> AsyncIterator[bytes]:
            pending: tuple[str, Any] | None = first
            try:
                while True:
                    kind, value = pending if pending is not None else await events.get()
                    pending = None
                    if kind == "text":
                        yield _sse("text", {"text": value})
                    elif kind == "done":
                        yield _sse("done", value.to_json())
                        return
                    else:
                        if isinstance(value, MuselabError):
                            response = _muselab_error(value)
                        else:
                            log.error("stream of %s failed", served.name, exc_info=value)
                            response = _error(500, "internal error: the server's log has the details")
                        yield _sse("error", {"status": response.status_code, **json.loads(response.body)})
                        return
            finally:
                cancelled.set()  # the client went away (or the stream ended): stop generating

        return StreamingResponse(events_out(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    stream.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Body)])
    app.post(f"/v1/models/{served.name}/stream", tags=["generate"], dependencies=guarded,
             responses={**responses, 200: {"description": "Server-sent events: `text` ({\"text\": piece}) as the "
                                                          "moderated text grows, then `done` (the generation, as "
                                                          "from /generate) or `error` ({\"status\", \"error\"}).",
                                           "content": {"text/event-stream": {}}}},
             response_class=StreamingResponse, name=f"stream_{served.name}",
             summary=f"Stream text from {served.name}")(stream)


def _stamp(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


async def _read_upload(file: UploadFile, limits: Limits) -> bytes:
    data = await file.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise HTTPException(413, f"too large: this server takes an upload of at most {limits.max_upload_bytes:,} "
                                 "bytes")
    if not data:
        raise ControlError("the uploaded file is empty")
    return data


def _detect_bytes(data: bytes, name: str) -> dict[str, Any]:
    from muselab.safety.detect import detect_file

    suffix = "".join(c for c in Path(name).suffix[:10] if c.isalnum() or c == ".")
    with tempfile.TemporaryDirectory(prefix="muselab-detect-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        entry = detect_file(path)
    if "error" in entry:
        raise ControlError(f"cannot read the uploaded file: {entry['error']}")
    entry.pop("file", None)
    return entry


def app_from_environment() -> FastAPI:
    """For `--workers N`: each worker process builds the app from the settings `muselab serve` put in the
    environment (MUSELAB_SERVE_SETTINGS, JSON)."""
    settings = json.loads(os.environ["MUSELAB_SERVE_SETTINGS"])
    return create_app(settings["runs"], gallery=settings["gallery"], api_key=settings.get("api_key"),
                      limits=Limits(**settings.get("limits", {})), cors_origins=settings.get("cors", ()),
                      device=settings.get("device", "cpu"))
