"""`kbingest serve`: the HTTP API over the service layer (FastAPI on uvicorn).

The server process is an engine host: a job started (or resumed) through the API runs here, in a
thread calling `handle.run()`. Jobs run by `kbingest ingest` in another process are read and
steered through the job store, as the CLI does. Every use case is the service's
(pipeline/service.py); this module maps HTTP to it and its typed errors to one JSON shape,
{"error": kind, "message": ...}, with each error's `http_status`.

Security (docs/serve.md): 127.0.0.1 by default; another address needs a token; with a token every
endpoint but /healthz needs `Authorization: Bearer <token>`; without one, only requests whose Host
names the loopback, the bound address or an --allow-host NAME are answered (DNS rebinding); a job
started or resumed here reads only under the --allow-root folders (JobConfig.allowed_roots: every
pass's walk and read, pipeline/load/loading.py; no --allow-root: starting jobs over HTTP is off); bodies
capped at 64 KiB; no CORS. Every error, whatever its cause, is {"error": kind, "message": ...}.
"""

import asyncio
import ipaddress
import json
import logging
import os
import sys
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Optional

from kbingest.app.batch import JsonLinesReporter
from kbingest.app.http_poll import (API, ENV_TOKEN, KB_STATUS, STATUS_TTL_S, authorized, host_allowed, host_name,
                                    host_rule, simple_get)
from kbingest.app.notify import Notifier
from kbingest.app.status_front import supported as status_front_supported
from kbingest.pipeline.models import JobConfig, JobStatusResponse
from kbingest.pipeline.service import (Busy, ControlTimeout, Forbidden, InvalidInput, JobHandle, JobInfo, KbError,
                                       Service, WrongState, printable)
from kbingest.pipeline.status import JobStatus

log = logging.getLogger("kbingest.server")

MAX_BODY = 64 * 1024
SSE_POLL_S = 0.1          # as --batch polls its job
SSE_KEEPALIVE_S = 15.0    # a comment line, so that proxies keep an idle stream open
CONTROL_TIMEOUT_S = 120.0


class StartingDisabled(KbError):
    """The server was started without --allow-root: it starts no job over HTTP."""

    kind = "jobs_disabled"
    http_status = 405


class Unauthorized(KbError):
    kind = "unauthorized"
    http_status = 401


# Every kind of error this server answers, by HTTP status (README, "HTTP API"): anything else the
# framework raises is answered as the kind of its status here.
KIND_OF_STATUS = {400: "invalid_input", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                  405: "method_not_allowed", 409: "wrong_state", 413: "too_large", 421: "wrong_host",
                  422: "invalid_input", 500: "internal", 504: "timeout"}


def kind_of_status(status: int) -> str:
    return KIND_OF_STATUS.get(status) or ("invalid_input" if status < 500 else "internal")


def _text(message: str) -> str:
    """A message as valid Unicode: a lone surrogate (from a JSON escape) shown as its escape."""
    try:
        message.encode("utf-8")
        return message
    except UnicodeEncodeError:
        return printable(message, keep_newlines=True)


def error_body(kind: str, message: str) -> bytes:
    return json.dumps({"error": kind, "message": _text(message)}).encode()


def _no_lone_surrogates(value: Any, where: str) -> None:
    """A JSON body's strings must be valid Unicode (JSON's \\ud800 escape is not): 422 otherwise."""
    if isinstance(value, str):
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            raise InvalidInput(f"{where}: not valid Unicode (a lone surrogate escape)")
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_lone_surrogates(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            _no_lone_surrogates(v, where)


# ---- the engine host ----------------------------------------------------------------------------
@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    token: Optional[str] = None
    allow_roots: list[str] = field(default_factory=list)
    allow_urls: list[str] = field(default_factory=list)  # URL prefixes jobs started over HTTP may read (issue 34)
    allow_hosts: list[str] = field(default_factory=list)  # Host names answered without a token, besides the loopback
    notify: list[str] = field(default_factory=list)
    status_front: bool = True  # status polls answered by a second process (app/status_front.py)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class EngineHost:
    """The jobs this process runs (each in a thread), over the service that knows every job."""

    def __init__(self, service: Service, allow_roots: list[str], notifier: Optional[Notifier] = None,
                 allow_urls: Optional[list[str]] = None) -> None:
        self.service = service
        self.allow_urls = list(allow_urls or [])
        self.allow_roots = [Path(r).expanduser().resolve() for r in allow_roots]
        self.notifier = notifier or Notifier([])
        self._live: dict[str, tuple[JobHandle, threading.Thread]] = {}
        self._lock = threading.Lock()
        self._status_cache: dict[str, tuple[float, bytes]] = {}
        self.front: Optional[Any] = None  # the status front's link, when `kbingest serve` runs one

    # ---- reading ----
    def live(self, job_id: str) -> Optional[JobHandle]:
        item = self._live.get(job_id)
        return item[0] if item else None

    def live_handles(self) -> list[JobHandle]:
        return [h for h, _ in list(self._live.values())]

    def status_of(self, info: JobInfo) -> JobStatusResponse:
        """A job running here: its live snapshot (the store's is up to a heartbeat old)."""
        handle = self.live(info.job_id)
        return handle.snapshot() if handle is not None else info.status

    def info(self, job_id: str) -> JobInfo:
        return self._with_live(self.service.job(job_id))

    def jobs(self) -> list[JobInfo]:
        return [self._with_live(i) for i in self.service.jobs()]

    def reads_from_memory(self) -> bool:
        return self.service.reads_from_memory()

    def kb_status(self, kb: str) -> JobStatusResponse:
        return self.status_of(self.service.find(kb=kb))

    def recent_kb_status_json(self, kb: str) -> Optional[bytes]:
        """kb_status as JSON if it was computed less than STATUS_TTL_S ago, else None."""
        hit = self._status_cache.get(kb)
        return hit[1] if hit is not None and time.monotonic() - hit[0] < STATUS_TTL_S else None

    def kb_status_json(self, kb: str) -> bytes:
        """kb_status as JSON, computed at most once every STATUS_TTL_S per knowledge base: fifty
        clients polling at 10 Hz cost the job about 20 computations a second, not 500."""
        recent = self.recent_kb_status_json(kb)
        if recent is not None:
            return recent
        now = time.monotonic()
        body = self.kb_status(kb).to_json().encode()
        if len(self._status_cache) >= 1024:
            self._status_cache.clear()
        self._status_cache[kb] = (now, body)
        return body

    def _with_live(self, info: JobInfo) -> JobInfo:
        handle = self.live(info.job_id)
        if handle is None:
            return info
        return JobInfo(job_id=info.job_id, kb=info.kb, config=info.config, status=handle.snapshot(),
                       created_at=info.created_at, updated_at=info.updated_at)

    # ---- starting ----
    def check_sources(self, sources: list[str]) -> None:
        """Fast feedback at POST and resume (403): each source, symlinks resolved now, lies under an
        --allow-root folder; each URI source under an --allow-url prefix (what binds the job is its
        `allowed_urls`, enforced at every request: pipeline/load/sources.py)."""
        uris = [s for s in sources if isinstance(s, str) and Service.uri_source(s) is not None]
        for u in uris:
            canon = Service.uri_source(u)
            if not any(canon.startswith(p) for p in self.allow_urls):
                raise Forbidden(f"source {printable(u)!r} is not under an --allow-url prefix of this server")
        sources = [s for s in sources if s not in uris]
        if not sources and uris:
            return
        if not self.allow_roots:
            raise StartingDisabled("this server starts no jobs over HTTP: it was started without --allow-root "
                                   "(`kbingest serve --allow-root DIR` allows sources under DIR)")
        for s in sources:
            if "\x00" in s:
                raise InvalidInput(f"sources: a NUL character in {printable(s)!r}")
            try:  # the path the job will walk (pipeline/load/loading.py's validate_sources: no ~ expansion)
                real = Path(os.path.realpath(os.path.abspath(s)))  # symlinks resolved: a link out of the root is out
            except (OSError, ValueError):
                raise InvalidInput(f"sources: {printable(s)!r} is not a valid file name") from None
            if not any(real == root or real.is_relative_to(root) for root in self.allow_roots):
                raise Forbidden(f"source {printable(s)!r} is not under an --allow-root folder of this server")

    @property
    def roots(self) -> list[str]:
        """The --allow-root folders, as a job's JobConfig.allowed_roots."""
        return [str(r) for r in self.allow_roots]

    def start(self, kb: str, sources: list[str], settings: dict[str, Any], job_id: Optional[str]) -> JobStatusResponse:
        self.check_sources(sources)
        config = Service.config(sources, kb, allowed_roots=self.roots, allowed_urls=list(self.allow_urls), **settings)
        with self._lock:
            self._check_idle()
            return self._launch(self.service.start(config, job_id=job_id))

    def resume(self, job_id: str) -> JobStatusResponse:
        """The job runs here, bound to this server's --allow-root folders (whatever it was bound to
        before): its sources are checked now, and its every pass walks and reads under them."""
        with self._lock:
            if job_id in self._live:
                raise WrongState(f"job {job_id} is running in this server")
            self._check_idle()
            self.check_sources(self.service.job(job_id).config.sources)
            return self._launch(self.service.resume(job_id, allowed_roots=self.roots))

    def _check_idle(self) -> None:
        running = next(iter(self._live), None)
        if running is not None:
            raise Busy(f"job {running} is running in this server: one job at a time per home")

    def _launch(self, handle: JobHandle) -> JobStatusResponse:
        th = threading.Thread(target=self._run, args=(handle,), name=f"kbingest-job-{handle.job_id}", daemon=True)
        self._live[handle.job_id] = (handle, th)
        th.start()
        return handle.snapshot()

    def _run(self, handle: JobHandle) -> None:
        final: Optional[JobStatusResponse] = None
        try:
            final = handle.run()
        except KbError as e:
            log.warning("job %s did not run: %s", handle.job_id, e.message)
        except Exception:
            log.exception("job %s could not run", handle.job_id)
        finally:
            with self._lock:
                self._live.pop(handle.job_id, None)
        if final is not None:
            self.notifier.job_ended(final)

    # ---- steering ----
    def control(self, job_id: str, what: str, timeout: float) -> JobStatusResponse:
        """pause or cancel, with the CLI's semantics: answers once the job has paused or ended;
        already paused (cancelled): answered as it is; 409 when the action does not apply."""
        item = self._live.get(job_id)
        if item is not None and item[1].is_alive() and item[0].snapshot().status.is_terminal:
            item[1].join(timeout)  # its run has ended and its thread is finishing: the store has the last word
        if item is None or not item[1].is_alive():  # not running here (or its run has ended): the store decides
            return self.service.pause(job_id, timeout) if what == "pause" else self.service.cancel(job_id, timeout)
        handle, th = item
        if what == "pause":
            handle.pause()
        else:
            handle.cancel()
        th.join(timeout)
        if th.is_alive():
            raise ControlTimeout(f"job {job_id} did not {what} within {timeout:g} s (the job goes on)")
        return self.info(job_id).status

    def request(self, job_id: str, what: str) -> dict[str, Any]:
        """pause or cancel without waiting (the service's request_pause / request_cancel, or the
        handle of a job running here): {"outcome": "requested" | "cancelled" | "unchanged"}."""
        handle = self.live(job_id)
        if handle is not None:
            handle.pause() if what == "pause" else handle.cancel()
            outcome = "requested"
        elif what == "pause":
            self.service.request_pause(job_id)
            outcome = "requested"
        else:
            outcome = self.service.request_cancel(job_id)
        return {"job_id": job_id, "outcome": outcome}

    def join(self, timeout: float = 30.0) -> None:
        """Pause every job running here and wait for their checkpoints (the server is stopping)."""
        items = list(self._live.values())
        for handle, _ in items:
            handle.pause()
        for _, th in items:
            th.join(timeout)

    def queue_depths(self, job_id: str, snap: JobStatusResponse) -> dict[str, int]:
        """Queue depths between phases: from the snapshot's `queue_*` metrics if it has them, else
        from the live executor of a job running here."""
        from_snap = {k[len("queue_"):]: int(v) for k, v in snap.metrics.items()
                     if k.startswith("queue_") and isinstance(v, (int, float))}
        if from_snap:
            return from_snap
        handle = self.live(job_id)
        return handle.queue_depths() if handle is not None else {}


# ---- HTTP guard: token, body cap ---------------------------------------------------------------
class Guard:
    """ASGI middleware: the Host rule (no token: DNS rebinding), the bearer token (constant-time) on
    every path but /healthz, the 64 KiB body cap (declared length or counted as it streams in), and
    the one error shape for anything the app did not expect (a JSON 500, one line in the log)."""

    def __init__(self, app: Any, token: Optional[str], max_body: int = MAX_BODY,
                 fast_get: Optional[Any] = None, hosts: Optional[frozenset[str]] = None) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.fast_get = fast_get  # path -> (status, JSON bytes) or None: answered without the framework
        self.hosts = hosts  # http_poll.host_rule: the Host names answered (None: any, a token guards)

    def authorized(self, headers: dict, path: str) -> bool:
        return authorized(self.token, headers, path)

    def admits(self, headers: dict, path: str) -> bool:
        """Host and token rules both pass: the request may be answered (else the guard says why)."""
        return host_allowed(self.hosts, headers) and authorized(self.token, headers, path)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched(message: dict) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self._guarded(scope, receive, watched)
        except Exception as e:  # the app's own handler has answered (a JSON 500) if it could
            log.error("%s %s failed: %s", scope.get("method"), printable(scope.get("path", "")),
                      printable(str(e) or type(e).__name__), exc_info=bool(os.environ.get("KBINGEST_DEBUG")))
            if not started:
                await _send_error(send, 500, "internal", "the server could not answer this request")

    async def _guarded(self, scope: dict, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or [])
        if not host_allowed(self.hosts, headers):
            given = host_name(headers.get(b"host", b"").decode("latin-1")) or headers.get(b"host", b"").decode("latin-1")
            return await _send_error(send, 421, "wrong_host", f"this server answers requests addressed to it by a "
                                     f"loopback name or its own address, not {printable(given)!r} (a web page's DNS "
                                     "rebinding looks like this): `kbingest serve --allow-host NAME` adds a name")
        if not self.authorized(headers, scope.get("path", "")):
            return await _send_error(send, 401, "unauthorized", "this server needs `Authorization: Bearer "
                                     "<token>`", extra=[(b"www-authenticate", b"Bearer")])
        if self.fast_get is not None and scope.get("method") == "GET":
            answer = self.fast_get(scope.get("path", ""))
            if answer is not None:
                return await _send_json(send, *answer)
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body
            except ValueError:
                return await _send_error(send, 400, "invalid_input", "bad Content-Length")
            if too_big:
                return await _send_error(send, 413, "too_large", f"request bodies are capped at {self.max_body} bytes")
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        # a body is read whole before the app sees it (at most max_body bytes): counted as it comes,
        # whatever Content-Length said
        chunks, seen = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # the client went away
            seen += len(msg.get("body", b""))
            if seen > self.max_body:
                return await _send_error(send, 413, "too_large", f"request bodies are capped at {self.max_body} bytes")
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> dict:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


async def _send_error(send: Any, status: int, kind: str, message: str, extra: Optional[list] = None) -> None:
    await _send_json(send, status, error_body(kind, message), extra)


async def _send_json(send: Any, status: int, body: bytes, extra: Optional[list] = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


# ---- the app --------------------------------------------------------------------------------
class _Lines:
    """A text sink for JsonLinesReporter: the SSE stream reuses its choice of which snapshots count."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def write(self, text: str) -> int:
        self.items.append(text.rstrip("\n"))
        return len(text)

    def flush(self) -> None:
        pass


def _start_request_model():
    """The POST body: sources, and the job settings a user may set (JobConfig.USER_SETTABLE, unset: its defaults)."""
    from typing import Optional as Opt

    from pydantic import ConfigDict, Field, create_model

    fields: dict[str, Any] = {"sources": (list[str], Field(min_length=1, max_length=256)),
                              "job_id": (Opt[str], None)}
    for name in JobConfig.USER_SETTABLE:
        info = JobConfig.model_fields[name]
        fields[name] = (Opt[info.annotation], Field(None, description=info.description))  # type: ignore[name-defined]
    return create_model("StartJobRequest", __config__=ConfigDict(extra="forbid"), **fields)


StartJobRequest = _start_request_model()


def _status_response(snap: JobStatusResponse):
    from fastapi.responses import Response

    return Response(content=snap.to_json(), media_type="application/json")


def _info_dict(info: JobInfo) -> dict[str, Any]:
    return {"job_id": info.job_id, "kb": info.kb, "created_at": info.created_at, "updated_at": info.updated_at,
            "config": info.config.model_dump(mode="json"), "status": info.status.to_json_dict()}


def create_app(service: Service, cfg: ServerConfig):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.concurrency import run_in_threadpool

    from kbingest.app.server_metrics import metrics_text

    host = EngineHost(service, cfg.allow_roots, Notifier(cfg.notify), allow_urls=cfg.allow_urls)
    hosts = host_rule(cfg.token, cfg.host, cfg.allow_hosts)  # the Guard's token decides, as below
    app = FastAPI(title="kbingest", version="1", description="Ingestion jobs of one kbingest home: status, "
                  "control, live events, search and metrics.")
    app.state.host = host

    def err(status: int, kind: str, message: str) -> JSONResponse:
        return JSONResponse({"error": kind, "message": _text(message)}, status_code=status)

    @app.exception_handler(KbError)
    async def _kb_error(_req: Request, e: KbError) -> JSONResponse:
        return err(e.http_status, e.kind, e.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, e: RequestValidationError) -> JSONResponse:
        first = (e.errors() or [{}])[0]
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return err(422, "invalid_input", f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 400:  # the framework could not read the body (100,000 nested arrays, bad UTF-8...)
            return err(400, "invalid_input", f"the request body is not JSON that can be read: {e.detail}")
        return err(e.status_code, kind_of_status(e.status_code), str(e.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, e: Exception) -> JSONResponse:  # the Guard logs it, in one line
        return err(500, "internal", "the server could not answer this request")

    @app.get("/healthz", tags=["server"])
    async def healthz() -> dict:
        front = host.front
        return {"status": "ok", "jobs_running_here": len(host.live_handles()),
                "status_front": None if front is None else {"pid": front.pid, "polls_answered": front.answers}}

    @app.get(API + "/engine", tags=["server"], summary="whether a job can start in this home now")
    def engine() -> dict:
        return {"busy": service.engine_busy(), "jobs_running_here": [h.job_id for h in host.live_handles()]}

    @app.get(API + "/kb/{kb_id}/status", response_model=JobStatusResponse, tags=["jobs"],
             summary="the newest job of a knowledge base (JobStatusResponse)")
    def kb_status(kb_id: str):  # mostly answered before the framework: _fast_kb_status
        return Response(content=host.kb_status_json(kb_id), media_type="application/json")

    @app.get(API + "/jobs", tags=["jobs"], summary="every job, newest first")
    def jobs() -> list[dict]:
        return [_info_dict(i) for i in host.jobs()]

    @app.get(API + "/jobs/{job_id}", tags=["jobs"], summary="one job: its config, times and status")
    def job(job_id: str) -> dict:
        return _info_dict(host.info(job_id))

    @app.post(API + "/kb/{kb_id}/jobs", status_code=202, tags=["jobs"],
              summary="start a job (sources must lie under an --allow-root folder)")
    def start(kb_id: str, body: StartJobRequest):  # type: ignore[valid-type]
        data = body.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
        _no_lone_surrogates(data, "")
        sources, job_id = data.pop("sources"), data.pop("job_id", None)
        settings = {k: v for k, v in data.items() if v is not None}
        snap = host.start(kb_id, sources, settings, job_id)
        return JSONResponse({"job_id": snap.job_id, "status": snap.to_json_dict()}, status_code=202,
                            headers={"Location": f"{API}/jobs/{snap.job_id}"})

    @app.post(API + "/jobs/{job_id}/resume", status_code=202, tags=["control"],
              summary="continue a paused, interrupted or failed job in this server (or retry its failures)")
    def resume(job_id: str):
        snap = host.resume(job_id)
        return JSONResponse({"job_id": snap.job_id, "status": snap.to_json_dict()}, status_code=202,
                            headers={"Location": f"{API}/jobs/{snap.job_id}"})

    @app.post(API + "/jobs/{job_id}/pause", response_model=JobStatusResponse, tags=["control"],
              summary="pause a running job; answers once it has paused (checkpoint saved), or at once with wait=false")
    def pause(job_id: str, timeout: float = CONTROL_TIMEOUT_S, wait: bool = True):
        if not wait:  # asked, not waited for: 202 and the status as it is
            return JSONResponse(host.request(job_id, "pause"), status_code=202)
        return _status_response(host.control(job_id, "pause", _bounded(timeout)))

    @app.post(API + "/jobs/{job_id}/cancel", response_model=JobStatusResponse, tags=["control"],
              summary="cancel a job; a running one is asked, and answered once it has stopped (or at once with wait=false)")
    def cancel(job_id: str, timeout: float = CONTROL_TIMEOUT_S, wait: bool = True):
        if not wait:
            return JSONResponse(host.request(job_id, "cancel"), status_code=202)
        return _status_response(host.control(job_id, "cancel", _bounded(timeout)))

    @app.get(API + "/jobs/{job_id}/events", tags=["jobs"],
             summary="Server-Sent Events: one `status` event per snapshot change; ends with the final status")
    async def events(job_id: str, request: Request):
        first = (await run_in_threadpool(host.info, job_id)).status  # 404 before the stream starts
        return StreamingResponse(_event_stream(host, job_id, first, request, run_in_threadpool),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get(API + "/kb/{kb_id}/search", tags=["search"], summary="the k chunks nearest the query")
    def search(kb_id: str, q: str, k: int = 5, mode: str = "hybrid") -> list[dict]:
        if not q.strip():
            raise InvalidInput("q: an empty query")
        if k > 100:
            raise InvalidInput("k: at most 100")
        return [h.__dict__ for h in service.search(kb_id, q, k, mode=mode)]

    @app.get("/metrics", tags=["server"], response_class=PlainTextResponse,
             summary="Prometheus text format: every job's phases, errors, queues, commits")
    def metrics():
        body, content_type = metrics_text(host)
        return Response(content=body, media_type=content_type)

    return Guard(app, cfg.token, fast_get=partial(_fast_kb_status, host), hosts=hosts)


def _fast_kb_status(host: EngineHost, path: str) -> Optional[tuple[int, bytes]]:
    """GET .../kb/{kb_id}/status, the endpoint fifty clients poll ten times a second: answered
    straight from the ASGI layer while the store is read from memory (about a tenth of the
    framework's cost); otherwise (None) by the FastAPI route, which does the same in a thread."""
    m = KB_STATUS.fullmatch(path)
    if m is None:
        return None
    recent = host.recent_kb_status_json(m.group(1))  # most polls: no store, no stat
    if recent is not None:
        return 200, recent
    if not host.reads_from_memory():
        return None
    try:
        return 200, host.kb_status_json(m.group(1))
    except KbError as e:
        return e.http_status, error_body(e.kind, e.message)
    except Exception:  # anything else: the route answers, with the app's error handling
        return None


def _bounded(timeout: float) -> float:
    if not 0 < timeout <= 3600:
        raise InvalidInput("timeout: between 0 and 3600 seconds")
    return timeout


async def _event_stream(host: EngineHost, job_id: str, first: JobStatusResponse, request: Any, to_thread: Any):
    """The --batch lines' moments (JsonLinesReporter decides), as SSE `status` events. Ends once
    the job rests: ended, or paused with no thread of this server running it."""
    lines = _Lines()
    reporter = JsonLinesReporter(lines)
    reporter.offer(first, force=True)
    n, idle = 0, 0.0
    snap = first
    live = host.live(job_id)
    seq = live.snapshots_since(1 << 62)[1] if live is not None else 0  # changes after `first` only
    while True:
        while lines.items:
            n += 1
            yield f"id: {n}\nevent: status\ndata: {lines.items.pop(0)}\n\n"
            idle = 0.0
        if snap.status.is_terminal or (snap.status == JobStatus.PAUSED and host.live(job_id) is None):
            return
        await asyncio.sleep(SSE_POLL_S)
        idle += SSE_POLL_S
        if idle >= SSE_KEEPALIVE_S:
            idle = 0.0
            yield ": keep-alive\n\n"
        if await request.is_disconnected():
            return
        handle = host.live(job_id)
        if handle is not None:  # every status or phase change since the last look, then now
            snaps, seq = handle.snapshots_since(seq)
        else:
            snaps = [(await to_thread(host.info, job_id)).status]
        for snap in snaps[:-1]:
            reporter.offer(snap)
        snap = snaps[-1]
        resting = snap.status.is_terminal or (snap.status == JobStatus.PAUSED and host.live(job_id) is None)
        reporter.offer(snap, force=resting)


# ---- HTTP/1.1: one write per response ------------------------------------------------------------
class _CoalescedWrites:
    """A transport whose writes in one turn of the event loop leave in one send: uvicorn writes a
    response's status line and headers, then its body, and on loopback each send costs both ends a
    wake-up (a quarter of a status poll's CPU). Flushed at the end of the turn, and before a close."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._t = transport
        self._loop = loop
        self._buf: list[bytes] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)

    def write(self, data: bytes) -> None:
        if not self._buf:
            self._loop.call_soon(self._flush)
        self._buf.append(bytes(data))

    def _flush(self) -> None:
        if self._buf:
            data, self._buf = b"".join(self._buf), []
            if not self._t.is_closing():
                self._t.write(data)

    def write_now(self, data: bytes) -> None:
        """One whole response: sent at once unless writes of this turn wait (order is kept)."""
        if self._buf:
            self.write(data)
        elif not self._t.is_closing():
            self._t.write(data)

    def close(self) -> None:
        self._flush()
        self._t.close()


class _Answered:
    """The cycle of a request answered in the protocol: complete, as uvicorn checks."""
    response_complete = True
    disconnected = False
    keep_alive = True
    more_body = False

    class message_event:  # noqa: N801 (uvicorn sets its cycle's event when the connection goes)
        @staticmethod
        def set() -> None:
            pass


_ANSWERED = _Answered()

def _http_protocol(guard: Guard) -> Any:
    """uvicorn's httptools protocol, writing each response in one send, and answering the polled
    kb status itself: a keep-alive GET of that path that the guard lets through and `fast_get`
    answers is written as the headers end, with no ASGI cycle, task or event; and when such a poll
    arrives whole between requests (`simple_get`: as pollers send it), as it arrives, without the
    parser's callbacks either. Everything else, and that path whenever fast_get declines, takes
    uvicorn's way."""
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, _get_status_line

    status_lines: dict[int, bytes] = {}

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):
        _in_message = False  # the parser holds part of a request
        handed_over = b""  # a connection from the status front: what the front read of it

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(_CoalescedWrites(transport, asyncio.get_running_loop()))
            if self.handed_over:
                data, self.handed_over = self.handed_over, b""
                self.data_received(data)

        def data_received(self, data: bytes) -> None:
            # a poll that arrives whole, between requests, is answered without the parser's callbacks
            if not (self._in_message or self._cannot_answer()):
                request = simple_get(data)
                if request is not None and self._answer(*request):
                    return
            super().data_received(data)

        def on_message_begin(self) -> None:
            self._in_message = True
            super().on_message_begin()

        def on_message_complete(self) -> None:
            self._in_message = False
            super().on_message_complete()

        def on_headers_complete(self) -> None:
            if not self._answered_here():
                super().on_headers_complete()

        def _cannot_answer(self) -> bool:
            """No fast path, or a request before this one is not answered yet (its answer goes first)."""
            return guard.fast_get is None or bool(self.pipeline) or not (self.cycle is None or self.cycle.response_complete)

        def _answered_here(self) -> bool:
            p = self.parser
            if (p.get_method() != b"GET" or p.get_http_version() != "1.1" or not p.should_keep_alive()
                    or p.should_upgrade() or self._cannot_answer()):
                return False
            url = httptools.parse_url(self.url)
            if url.query or b"%" in url.path:
                return False
            return self._answer(url.path.decode("ascii", "replace"), dict(self.headers))

        def _answer(self, path: str, headers: dict) -> bool:
            if not guard.admits(headers, path):
                return False  # uvicorn's way answers 421 or 401
            answer = guard.fast_get(path)
            if answer is None:
                return False
            status, body = answer
            if status not in status_lines:
                status_lines[status] = _get_status_line(status)
            head = [status_lines[status], b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body)]
            head += [b"%s: %s\r\n" % kv for kv in self.server_state.default_headers]
            self.transport.write_now(b"".join(head) + b"\r\n" + body)
            self.cycle = _ANSWERED  # type: ignore[assignment]
            self.on_response_complete()
            return True

    return CoalescingHttpToolsProtocol


# ---- the command ---------------------------------------------------------------------------------
def uvicorn_config(app: Guard, host: str = "127.0.0.1", port: int = 8000) -> Any:
    """How uvicorn serves the app (the command, and the tests' in-process servers)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                          server_header=False, proxy_headers=False,  # no proxy is trusted: the peer is the client
                          http=_http_protocol(app))


def bind(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound here: the status front and this process both serve it."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(2048)  # uvicorn's backlog
        except OSError:
            sock.close()
            raise
    except OSError as e:
        raise InvalidInput(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
    return sock


async def _published_status(host: EngineHost, kb: str) -> Optional[bytes]:
    """kb's status for the status front, or None where this process answers that kb (an error)."""
    try:
        recent = host.recent_kb_status_json(kb)
        if recent is not None:
            return recent
        if host.reads_from_memory():
            return host.kb_status_json(kb)
        return await asyncio.to_thread(host.kb_status_json, kb)
    except KbError:
        return None
    except Exception:
        log.exception("status of %s for the status front", kb)
        return None


def engine_server(config: Any, listen: socket.socket, host: EngineHost, token: Optional[str], front: bool, *,
                  hosts: Optional[frozenset[str]]) -> Any:
    """uvicorn's server on `listen`: with `front`, the status front accepts and this process takes
    the connections it hands over (and the socket itself, should the front die). `hosts`: the Host
    rule (http_poll.host_rule), which the front applies as the engine host's Guard does."""
    import uvicorn

    from kbingest.app.status_front import FrontLink

    class EngineServer(uvicorn.Server):
        front: Optional[FrontLink] = None

        async def startup(self, sockets: Optional[list] = None) -> None:
            if not front:
                return await super().startup(sockets=[listen])
            await super().startup(sockets=[])
            link = FrontLink(listen, token, partial(_published_status, host), self._adopt, self._take_the_socket,
                             hosts=hosts)
            try:
                link.start(asyncio.get_running_loop())
            except OSError as e:
                log.warning("no status front (%s): this process answers every request", e)
                self.servers.append(await asyncio.get_running_loop().create_server(self._protocol, sock=listen))
                return
            self.front = host.front = link

        async def shutdown(self, sockets: Optional[list] = None) -> None:
            if self.front is not None:
                await self.front.stop()
            await super().shutdown(sockets=sockets)

        def _protocol(self) -> Any:
            return self.config.http_protocol_class(config=self.config, server_state=self.server_state,
                                                   app_state=self.lifespan.state)

        def _adopt(self, sock: socket.socket, data: bytes) -> None:
            def protocol() -> Any:
                p = self._protocol()
                p.handed_over = data
                return p
            self._later(asyncio.get_running_loop().connect_accepted_socket(protocol, sock))

        def _take_the_socket(self) -> None:
            host.front = None

            async def take() -> None:
                self.servers.append(await asyncio.get_running_loop().create_server(self._protocol, sock=listen))
            self._later(take())

        def _later(self, coro: Any) -> None:
            task = asyncio.get_running_loop().create_task(coro)
            tasks = self.__dict__.setdefault("_tasks", set())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    return EngineServer(config)


def serve(cfg: ServerConfig, home: Any = None, embedder_factory: Any = None) -> int:
    """Run the server until SIGINT/SIGTERM; jobs running here are paused (checkpoint saved) first."""
    cfg.token = cfg.token or os.environ.get(ENV_TOKEN) or None
    if not is_loopback(cfg.host) and not cfg.token:
        raise InvalidInput(f"--host {cfg.host} is not a loopback address: give a token (--token or {ENV_TOKEN}), "
                           "which every client then sends as `Authorization: Bearer <token>`")
    for root in cfg.allow_roots:
        if not Path(root).expanduser().is_dir():
            raise InvalidInput(f"--allow-root {root}: not a folder")
    for i, prefix in enumerate(cfg.allow_urls):
        try:
            canon = Service.uri_source(prefix)
        except InvalidInput as e:
            raise InvalidInput(f"--allow-url {printable(prefix)}: {e}") from None
        if canon is None:
            raise InvalidInput(f"--allow-url {printable(prefix)}: expected s3://BUCKET/PREFIX or http(s)://HOST/PATH")
        cfg.allow_urls[i] = canon
    for name in cfg.allow_hosts:
        if not host_name(name):
            raise InvalidInput(f"--allow-host {printable(name)}: not a host name (a name such as kb.internal, "
                               "or an address)")
    service = Service(home, embedder_factory=embedder_factory, cached_reads=True)
    _ = service.store  # opened (and recovered if need be) before the first request
    app = create_app(service, cfg)
    host = app.app.state.host
    _log_to_stderr()
    listen = bind(cfg.host, cfg.port)
    front = cfg.status_front and status_front_supported()
    server = engine_server(uvicorn_config(app, cfg.host, cfg.port), listen, host, cfg.token, front, hosts=app.hosts)
    log.warning("serving %s on http://%s:%d (API %s, OpenAPI /docs)%s%s", service.home.root, cfg.host, cfg.port, API,
                "; status polls answered by a second process (the status front)" if front else "",
                "" if cfg.allow_roots or cfg.allow_urls else "; starting jobs over HTTP is off (no --allow-root)")
    # uvicorn re-raises the SIGTERM it caught once it has shut down: with the default handler that kills
    # the process before the `finally` below (jobs paused, the announcement removed) could run
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        # `kbingest search` in this home asks this process first: warm, it answers in milliseconds
        with service.announce(f"http://{cfg.host if is_loopback(cfg.host) else '127.0.0.1'}:{cfg.port}",
                              token_required=bool(cfg.token)):
            server.run()
    finally:
        host.join()
        listen.close()
    return 0


def _log_to_stderr() -> None:
    from kbingest.app.logs import log_to_stderr

    log_to_stderr()
    logging.getLogger("kbingest").setLevel(logging.WARNING)
