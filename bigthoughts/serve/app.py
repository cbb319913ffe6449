"""The ASGI app (FastAPI) and a helper that runs it with uvicorn.

Each completion request is validated on the event loop, then run in a thread of a
bounded pool (``queue_size + max_batch_rows`` threads: the most requests that can be
queued or decoding at once; beyond that, 503 with Retry-After). The thread submits
its draws to the :class:`~bigthoughts.serve.batcher.Batcher` and blocks; the event
loop meanwhile polls the connection and, if the client has gone, cancels the
request's queued jobs (see the batcher for what happens mid-generation).

Errors are OpenAI-shaped JSON: 400/413/422 for bad requests, 404/405 for unknown
routes, 503 when full, 500 when the engine fails (the worker and server live on).

Example::

    lm = load_model()
    app = create_app(Sampler(lm.model, lm.tokenizer), ServeConfig())
    run_server(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from bigthoughts.inference.engine import token_counter
from bigthoughts.models.limits import GenerationLimitError
from bigthoughts.serve.batcher import Cancelled, Engine, QueueFull, make_batcher
from bigthoughts.serve.handlers import Plan, RequestEngine, ServeConfig, accepts_calculator
from bigthoughts.serve.respond import completion_body, stream_events
from bigthoughts.serve.schema import APIError, parse_request, read_json

DISCONNECT_POLL_S = 0.05
RETRY_AFTER_S = 1


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _overloaded(message: str) -> APIError:
    return APIError(503, f"the server is busy ({message}); retry later", type_="server_error",
                    code="overloaded", headers={"Retry-After": str(RETRY_AFTER_S)})


def _too_large(size: int | str, limit: int) -> APIError:
    return APIError(413, f"request body is {size} bytes or more; the limit is {limit}",
                    code="request_too_large")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` bytes, declared or not."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_large(length, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


class _Admission:
    """Counts requests in flight; refuses beyond ``limit`` (no unbounded pile-up)."""

    def __init__(self, limit: int):
        self.limit, self.active = limit, 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            if self.active >= self.limit:
                raise _overloaded(f"{self.active} requests in flight")
            self.active += 1
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_request: Request, err: APIError):
        return _error_response(err)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, err: HTTPException):
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(err.status_code, str(err.detail), type_=kind))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, err: Exception):
        return _error_response(APIError(500, f"internal error: {type(err).__name__}: {err}",
                                        type_="server_error", code="internal_error"))


class _Service:
    """The app's state and request path: batcher, request threads, admission."""

    def __init__(self, engine: Engine, config: ServeConfig):
        self.config = config
        self.batcher = make_batcher(engine, max_batch_rows=config.max_batch_rows,
                               queue_size=config.queue_size, batch_wait_s=config.batch_wait_s,
                               pad_to_pow2=config.pad_batches)
        in_flight = config.queue_size + config.max_batch_rows
        self.executor = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="request")
        self.admission = _Admission(in_flight)
        self.calculator_ok = accepts_calculator(engine)
        self.count = token_counter(engine)  # None: bytes bound a prompt's tokens

    def close(self) -> None:
        self.batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run_plan(self, request: Request, plan: Plan):
        """Runs the plan in a request thread; cancels its jobs if the client leaves."""
        job_engine = RequestEngine(self.batcher, calculator=plan.req.calculator)
        with self.admission.slot():
            loop = asyncio.get_running_loop()
            task = loop.run_in_executor(self.executor, plan.run, job_engine)
            deadline = time.monotonic() + self.config.request_timeout_s
            timed_out = False
            while True:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if done:
                    break
                if job_engine.cancelled.is_set():
                    continue
                if time.monotonic() > deadline and not task.done():  # rows stop next step
                    timed_out = True
                    job_engine.cancel()
                elif await request.is_disconnected():
                    job_engine.cancel()
            try:
                result = task.result()
            except QueueFull as exc:
                raise _overloaded(str(exc)) from None
            except Cancelled:
                result = None
            except APIError:
                raise
            except GenerationLimitError as exc:
                raise APIError(400, str(exc), type_="invalid_request_error",
                               code="context_length_exceeded") from None
            except Exception as exc:  # noqa: BLE001 - the engine failed: 500, keep serving
                raise APIError(500, f"generation failed: {type(exc).__name__}: {exc}",
                               type_="server_error", code="generation_error") from None
            if timed_out:  # what it produced was cut short: not an answer
                raise APIError(504, f"the request ran longer than the server's limit of "
                                    f"{self.config.request_timeout_s:g} s and was stopped",
                               type_="server_error", code="timeout")
            return result

    async def complete(self, request: Request, *, chat: bool) -> Response:
        limits = self.config.limits
        body = await _read_body(request, limits.max_request_bytes)
        req = parse_request(read_json(body, limits), chat=chat, limits=limits,
                            calculator=self.config.calculator and self.calculator_ok)
        if req.model is not None and req.model not in self.config.model_names:
            raise APIError(404, f"the model {req.model!r} does not exist here; this server "
                           f"serves {', '.join(self.config.model_names)} (GET /v1/models)",
                           type_="not_found_error", param="model", code="model_not_found")
        if req.calculator and not self.calculator_ok:
            raise APIError(400, "the calculator is unavailable with this engine",
                           param="calculator", code="calculator_unavailable")
        result = await self.run_plan(request, Plan(req, self.config, self.count))
        if result is None:  # the client left; nobody reads this
            return Response(status_code=499)
        if req.stream:
            return StreamingResponse(stream_events(req, result, self.config.model_id),
                                     media_type="text/event-stream")
        return JSONResponse(completion_body(req, result, self.config.model_id))

    def health(self) -> dict:
        s = self.batcher.stats
        return {"status": "ok", "model": self.config.model_id, "queued": self.batcher.queued,
                "in_flight": self.admission.active, "engine_calls": s.engine_calls,
                "jobs": s.jobs, "rows": s.rows, "dropped": s.dropped,
                "largest_batch": s.largest_batch}


def create_app(engine: Engine, config: ServeConfig | None = None) -> FastAPI:
    """The OpenAI-compatible app over ``engine`` (anything with the Sampler's ``generate``)."""
    service = _Service(engine, config or ServeConfig())

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.batcher.start()
        yield
        service.close()

    app = FastAPI(title="bigthoughts", lifespan=lifespan)
    app.state.service = service
    _install_error_handlers(app)
    _require_key(app, service.config.api_key)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await service.complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await service.complete(request, chat=False)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                            "owned_by": "bigthoughts"}
                                           for name in service.config.model_names]}

    @app.get("/health")
    async def health():
        return service.health()

    return app


def _require_key(app: FastAPI, key: str | None) -> None:
    """With ``key``, every route but ``/health`` answers 401 unless the request carries
    ``Authorization: Bearer KEY`` (compared in constant time), as vLLM and llama-server."""
    if key is None:
        return
    import hmac

    expected = f"Bearer {key}".encode()

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if request.url.path != "/health":
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return _error_response(APIError(
                    401, "missing or wrong API key: send Authorization: Bearer KEY",
                    type_="authentication_error", code="invalid_api_key"))
        return await call_next(request)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free on ``host`` now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def run_server(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serves until interrupted (Ctrl-C)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")


@contextlib.contextmanager
def serving(app: FastAPI, *, host: str = "127.0.0.1", port: int | None = None,
            startup_timeout_s: float = 60.0) -> Iterator[str]:
    """Runs ``app`` in a background thread; yields its base URL (``http://host:port/v1``)."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
