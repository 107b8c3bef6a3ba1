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
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from kbingest.app import web
from kbingest.app.batch import JsonLinesReporter
from kbingest.app.http_guard import API, ENV_TOKEN, authorized, host_allowed, host_name, host_rule
from kbingest.app.notify import Notifier
from kbingest.pipeline.models import JobConfig, JobStatusResponse
from kbingest.pipeline.service import (
    Busy,
    ControlTimeout,
    Forbidden,
    InvalidInput,
    JobHandle,
    JobInfo,
    KbError,
    NotFound,
    Service,
    WrongState,
    printable,
)

log = logging.getLogger("kbingest.server")

MAX_BODY = 64 * 1024
SSE_POLL_S = 0.1  # as --batch polls its job
SSE_KEEPALIVE_S = 15.0  # a comment line, so that proxies keep an idle stream open
CONTROL_TIMEOUT_S = 120.0
STATUS_TTL_S = 0.05  # a kb status is computed at most this often (polled by many clients)
LONG_POLL_MAX_S = 30.0  # GET .../status?wait=SECONDS waits at most this long
LONG_POLL_STEP_S = 0.1  # how often a long poll looks for a change
RATE_LIMIT = 50.0  # requests a second per client address (burst: twice that); 304s and loopback peers not counted
MAX_CONNECTIONS = 1000  # uvicorn's limit_concurrency: what slow or idle clients can hold (503 past it)
JOURNAL_EVENTS = 4096  # SSE events a job's journal keeps for Last-Event-ID


class StartingDisabled(KbError):
    """The server was started without --allow-root: it starts no job over HTTP."""

    kind = "jobs_disabled"
    http_status = 405


class Unauthorized(KbError):
    kind = "unauthorized"
    http_status = 401


# Every kind of error this server answers, by HTTP status (README, "HTTP API"): anything else the
# framework raises is answered as the kind of its status here.
KIND_OF_STATUS = {
    400: "invalid_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "wrong_state",
    413: "too_large",
    421: "wrong_host",
    422: "invalid_input",
    429: "rate_limited",
    500: "internal",
    504: "timeout",
}


def kind_of_status(status: int) -> str:
    return KIND_OF_STATUS.get(status) or ("invalid_input" if status < 500 else "internal")


def _text(message: str) -> str:
    """A message as valid Unicode: a lone surrogate (from a JSON escape) shown as its escape."""
    try:
        message.encode("utf-8")
        return message
    except UnicodeEncodeError:
        return printable(message, keep_newlines=True)


def etag_of(body: bytes) -> str:
    import hashlib

    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def etag_matches(if_none_match: Optional[str], tag: str) -> bool:
    """If-None-Match names `tag` (a list of tags, weak or strong, or *)."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or tag in tags


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
    status_front: bool = True  # no effect (--no-status-front is kept for scripts: the server is one process)
    rate_limit: float = RATE_LIMIT  # requests a second per client address; 0: no limit
    web: bool = False  # --web: the dashboard in a browser at /ui/ (app/web.py)
    web_sessions: int = 4  # --web-sessions: browser sessions at once
    web_idle: float = 900.0  # --web-idle: seconds without input before a session is closed
    web_refresh: float = 2.0  # --web-refresh: web.REFRESH_S (`web` in this class is the field above)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class EngineHost:
    """The jobs this process runs (each in a thread), over the service that knows every job."""

    def __init__(
        self,
        service: Service,
        allow_roots: list[str],
        notifier: Optional[Notifier] = None,
        allow_urls: Optional[list[str]] = None,
    ) -> None:
        self.service = service
        self.allow_urls = list(allow_urls or [])
        self.allow_roots = [Path(r).expanduser().resolve() for r in allow_roots]
        self.notifier = notifier or Notifier([])
        self._live: dict[str, tuple[JobHandle, threading.Thread]] = {}
        self._lock = threading.Lock()
        self._status_cache: dict[str, tuple[float, bytes, str]] = {}
        self._journals: dict[str, "_Journal"] = {}
        self.boot = os.urandom(3).hex()  # SSE ids of this process: `boot.n`
        self.stopping: Any = lambda: False  # the server is shutting down (open SSE streams end)

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

    def recent_kb_status(self, kb: str) -> Optional[tuple[bytes, str]]:
        """(JSON, ETag) of kb_status if computed less than STATUS_TTL_S ago, else None."""
        hit = self._status_cache.get(kb)
        return (hit[1], hit[2]) if hit is not None and time.monotonic() - hit[0] < STATUS_TTL_S else None

    def kb_status_entry(self, kb: str) -> tuple[bytes, str]:
        """kb_status as JSON with its ETag, computed at most once every STATUS_TTL_S per knowledge
        base: fifty clients polling at 10 Hz cost the job about 20 computations a second, not 500.
        The ETag names these bytes (a hash): a client that has them is answered 304."""
        recent = self.recent_kb_status(kb)
        if recent is not None:
            return recent
        now = time.monotonic()
        body = self.kb_status(kb).to_json().encode()
        if len(self._status_cache) >= 1024:
            self._status_cache.clear()
        tag = etag_of(body)
        self._status_cache[kb] = (now, body, tag)
        return body, tag

    def kb_status_json(self, kb: str) -> bytes:
        return self.kb_status_entry(kb)[0]

    def journal(self, job_id: str, first: JobStatusResponse) -> "_Journal":
        """The SSE events of a job, shared by its streams (ids are this process's: Last-Event-ID)."""
        j = self._journals.get(job_id)
        if j is None:
            if len(self._journals) >= 256:
                self._journals.pop(next(iter(self._journals)))
            j = self._journals[job_id] = _Journal(self, job_id, first)
        return j

    def _with_live(self, info: JobInfo) -> JobInfo:
        handle = self.live(info.job_id)
        if handle is None:
            return info
        return JobInfo(
            job_id=info.job_id,
            kb=info.kb,
            config=info.config,
            status=handle.snapshot(),
            created_at=info.created_at,
            updated_at=info.updated_at,
        )

    # ---- starting ----
    def check_sources(self, sources: list[str]) -> None:
        """Fast feedback at POST and resume (403): each source, symlinks resolved now, lies under an
        --allow-root folder; each URI source under an --allow-url prefix (what binds the job is its
        `allowed_urls`, enforced at every request: pipeline/load/sources.py)."""
        uris = [s for s in sources if isinstance(s, str) and Service.uri_source(s) is not None]
        for u in uris:
            canon = Service.uri_source(u) or ""
            if not any(canon.startswith(p) for p in self.allow_urls):
                raise Forbidden(f"source {printable(u)!r} is not under an --allow-url prefix of this server")
        sources = [s for s in sources if s not in uris]
        if not sources and uris:
            return
        if not self.allow_roots:
            raise StartingDisabled(
                "this server starts no jobs over HTTP: it was started without --allow-root "
                "(`kbingest serve --allow-root DIR` allows sources under DIR)"
            )
        for s in sources:
            if "\x00" in s:
                raise InvalidInput(f"sources: a NUL character in {printable(s)!r}")
            try:  # the path the job will walk (pipeline/load/loading.py's validate_sources: no ~ expansion)
                real = Path(os.path.realpath(os.path.abspath(s)))  # symlinks resolved: a link out of the root is out
            except (OSError, ValueError):
                raise InvalidInput(f"sources: {printable(s)!r} is not a valid file name") from None
            if not any(real == root or real.is_relative_to(root) for root in self.allow_roots):
                raise Forbidden(f"source {printable(s)!r} is not under an --allow-root folder of this server")
            if not real.exists():  # under a root, but nothing there: the source is not found (404)
                raise NotFound(f"source {printable(s)!r} does not exist on this server")

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

    def join(self, timeout: float = 30.0) -> list[str]:
        """Pause every job running here and wait for their checkpoints (the server is stopping): the
        ids of the jobs paused."""
        items = list(self._live.values())
        for handle, _ in items:
            handle.pause()
        for _, th in items:
            th.join(timeout)
        return [h.job_id for h, _ in items]

    def queue_depths(self, job_id: str, snap: JobStatusResponse) -> dict[str, int]:
        """Queue depths between phases: from the snapshot's `queue_*` metrics if it has them, else
        from the live executor of a job running here."""
        from_snap = {
            k[len("queue_") :]: int(v)
            for k, v in snap.metrics.items()
            if k.startswith("queue_") and isinstance(v, (int, float))
        }
        if from_snap:
            return from_snap
        handle = self.live(job_id)
        return handle.queue_depths() if handle is not None else {}


# ---- HTTP guard: token, body cap ---------------------------------------------------------------
class Guard:
    """ASGI middleware: the Host rule (no token: DNS rebinding), the bearer token (constant-time) on
    every path but /healthz, the 64 KiB body cap (declared length or counted as it streams in), and
    the one error shape for anything the app did not expect (a JSON 500, one line in the log)."""

    def __init__(
        self,
        app: Any,
        token: Optional[str],
        max_body: int = MAX_BODY,
        hosts: Optional[frozenset[str]] = None,
        rate_limit: float = 0.0,
        web: bool = False,
    ) -> None:
        self.app = app
        self.web = web  # /ui/: the login page answered without the token, the rest with its cookie too
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.hosts = hosts  # http_guard.host_rule: the Host names answered (None: any, a token guards)
        self.rate = rate_limit  # requests a second per client address (0: no limit)
        self._buckets: dict[str, list[float]] = {}  # address -> [tokens, monotonic time of the last refill]

    def authorized(self, headers: dict, path: str) -> bool:
        if self.web and (path == web.PREFIX or path.startswith(web.PREFIX + "/")):
            return path in web.OPEN or web.web_authorized(self.token, headers)
        return authorized(self.token, headers, path)

    def _retry_after(self, client: str) -> int:
        """0 when `client` may be answered now, else the seconds it should wait (the token bucket)."""
        now = time.monotonic()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= 4096:  # forget the clients whose buckets are full again
                self._buckets = {
                    k: b for k, b in self._buckets.items() if b[0] + (now - b[1]) * self.rate < 2 * self.rate
                }
            bucket = self._buckets[client] = [2 * self.rate, now]
        bucket[0] = min(2 * self.rate, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        return 0 if bucket[0] >= 1 else max(1, int((1 - bucket[0]) / self.rate + 0.999))

    def _charge(self, client: str) -> None:
        bucket = self._buckets.get(client)
        if bucket is not None:
            bucket[0] -= 1

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
            log.error(
                "%s %s failed: %s",
                scope.get("method"),
                printable(scope.get("path", "")),
                printable(str(e) or type(e).__name__),
                exc_info=bool(os.environ.get("KBINGEST_DEBUG")),
            )
            if not started:
                await _send_error(send, 500, "internal", "the server could not answer this request")

    async def _guarded(self, scope: dict, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or [])
        if not host_allowed(self.hosts, headers):
            given = host_name(headers.get(b"host", b"").decode("latin-1")) or headers.get(b"host", b"").decode(
                "latin-1"
            )
            return await _send_error(
                send,
                421,
                "wrong_host",
                f"this server answers requests addressed to it by a "
                f"loopback name or its own address, not {printable(given)!r} (a web page's DNS "
                "rebinding looks like this): `kbingest serve --allow-host NAME` adds a name",
            )
        if not self.authorized(headers, scope.get("path", "")):
            return await _send_error(
                send,
                401,
                "unauthorized",
                "this server needs `Authorization: Bearer <token>`",
                extra=[(b"www-authenticate", b"Bearer")],
            )
        client = (scope.get("client") or ("?", 0))[0]
        if self.rate > 0 and scope.get("path") != "/healthz" and not is_loopback(client):
            # a loopback peer is this machine: its own tools, or a reverse proxy that sees the real
            # addresses and limits them itself (docs/serve.md, "Rate limit")
            wait = self._retry_after(client)
            if wait:
                return await _send_error(
                    send,
                    429,
                    "rate_limited",
                    f"more than {self.rate:g} requests a second from "
                    f"{client}: wait {wait} s (a poller that sends If-None-Match, or waits with "
                    "?wait=, is answered 304 and not counted)",
                    extra=[(b"retry-after", str(wait).encode())],
                )
            inner = send

            async def send(message: dict) -> None:  # noqa: F811 (counted once answered, but not a 304)
                if message["type"] == "http.response.start" and message["status"] != 304:
                    self._charge(client)
                await inner(message)

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
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(extra or []),
            ],
        }
    )
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


def _error_kinds() -> list[str]:
    kinds = set(KIND_OF_STATUS.values())
    todo = [KbError]
    while todo:
        c = todo.pop()
        todo.extend(c.__subclasses__())
        if isinstance(getattr(c, "kind", None), str):
            kinds.add(c.kind)
    return sorted(kinds)


def _error_model():
    from typing import Literal

    from pydantic import ConfigDict, Field, create_model

    kind = Literal[tuple(_error_kinds())]
    return create_model(
        "Error",
        __config__=ConfigDict(extra="forbid"),
        error=(kind, Field(description="what went wrong, as a word a client can test")),
        message=(str, Field(description="one line, in kbingest's words")),
    )


ErrorBody = _error_model()
_WHY = {
    304: "not modified: If-None-Match names the current ETag",
    400: "a body that is not JSON",
    401: "no or wrong `Authorization: Bearer <token>`",
    403: "a source outside the --allow-root folders",
    404: "no such job or knowledge base",
    405: "starting jobs over HTTP is off (no --allow-root)",
    409: "the action does not apply to the job as it is",
    413: "a body over 64 KiB",
    421: "a Host this server does not answer (without a token)",
    422: "invalid parameters or body",
    429: "more requests than the rate limit (Retry-After says when)",
    500: "an error the server did not expect",
    504: "the job did not pause or stop in time",
}
_ALWAYS = (401, 421, 429, 500)  # the guard's, on every route


def errors(*codes: int) -> dict:
    """OpenAPI `responses` for these statuses and the guard's: each error with the one error schema."""
    out: dict = {}
    for c in sorted(set(codes) | set(_ALWAYS)):
        if c == 304:
            out[c] = {"description": _WHY[c], "headers": {"ETag": {"schema": {"type": "string"}}}}
        else:
            out[c] = {"model": ErrorBody, "description": _WHY[c]}
            if c == 429:
                out[c]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return out


def _offline_docs(app: Any) -> None:
    """/docs: Swagger UI from the installed swagger-ui-bundle package, no other host named."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="kbingest API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
            # Swagger UI would otherwise send the spec to validator.swagger.io for its badge
            swagger_ui_parameters={"validatorUrl": None},
        )


def _start_request_model():
    """The POST body: sources, and the job settings a user may set (JobConfig.USER_SETTABLE, unset: its defaults)."""
    from typing import Optional as Opt

    from pydantic import ConfigDict, Field, create_model

    fields: dict[str, Any] = {"sources": (list[str], Field(min_length=1, max_length=256)), "job_id": (Opt[str], None)}
    for name in JobConfig.USER_SETTABLE:
        info = JobConfig.model_fields[name]
        fields[name] = (Opt[info.annotation], Field(None, description=info.description))
    return create_model("StartJobRequest", __config__=ConfigDict(extra="forbid"), **fields)


StartJobRequest = _start_request_model()


def _status_response(snap: JobStatusResponse):
    from fastapi.responses import Response

    return Response(content=snap.to_json(), media_type="application/json")


def _info_dict(info: JobInfo) -> dict[str, Any]:
    return {
        "job_id": info.job_id,
        "kb": info.kb,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "config": info.config.model_dump(mode="json"),
        "status": info.status.to_json_dict(),
    }


def create_app(service: Service, cfg: ServerConfig):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from kbingest.app.server_metrics import metrics_text

    host = EngineHost(service, cfg.allow_roots, Notifier(cfg.notify), allow_urls=cfg.allow_urls)
    hosts = host_rule(cfg.token, cfg.host, cfg.allow_hosts)  # the Guard's token decides, as below
    app = FastAPI(
        title="kbingest",
        version="1",
        description="Ingestion jobs of one kbingest home: status, control, live events, search and metrics.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.host = host
    _offline_docs(app)

    def err(status: int, kind: str, message: str) -> JSONResponse:
        return JSONResponse({"error": kind, "message": _text(message)}, status_code=status)

    @app.exception_handler(KbError)
    async def _kb_error(_req: Request, e: KbError) -> JSONResponse:
        return err(e.http_status, e.kind, e.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, e: RequestValidationError) -> JSONResponse:
        first = (e.errors() or [{}])[0]
        if first.get("type") == "json_invalid":  # not JSON at all: 400, as a body too deep to read
            return err(400, "invalid_input", f"the request body is not JSON that can be read: {first.get('msg')}")
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

    @app.get("/healthz", tags=["server"], responses={k: v for k, v in errors().items() if k != 401})
    async def healthz() -> dict:
        return {"status": "ok", "jobs_running_here": len(host.live_handles()), "status_front": None}

    @app.get(API + "/engine", tags=["server"], summary="whether a job can start in this home now", responses=errors())
    def engine() -> dict:
        return {"busy": service.engine_busy(), "jobs_running_here": [h.job_id for h in host.live_handles()]}

    @app.get(
        API + "/kb/{kb_id}/status",
        response_model=JobStatusResponse,
        tags=["jobs"],
        summary="the newest job of a knowledge base (JobStatusResponse)",
        responses={200: {"headers": {"ETag": {"schema": {"type": "string"}}}}, **errors(304, 404, 422)},
    )
    async def kb_status(kb_id: str, request: Request, wait: float = 0.0):
        """With `If-None-Match` naming the status's ETag: 304 at once, or with `wait=SECONDS` (at most
        30) as soon as the status changes (200) or when the wait runs out (304)."""
        if not 0 <= wait <= 3600:
            raise InvalidInput("wait: between 0 and 30 seconds")
        body, tag = await _entry(kb_id)
        seen = request.headers.get("if-none-match")
        if etag_matches(seen, tag) and wait > 0:
            deadline = time.monotonic() + min(wait, LONG_POLL_MAX_S)
            while etag_matches(seen, tag) and time.monotonic() < deadline and not host.stopping():
                await asyncio.sleep(min(LONG_POLL_STEP_S, max(0.0, deadline - time.monotonic())))
                if await request.is_disconnected():
                    break
                body, tag = await _entry(kb_id)
        if etag_matches(seen, tag):
            return Response(status_code=304, headers={"ETag": tag, "Cache-Control": "no-cache"})
        return Response(content=body, media_type="application/json", headers={"ETag": tag, "Cache-Control": "no-cache"})

    async def _entry(kb_id: str) -> tuple[bytes, str]:
        recent = host.recent_kb_status(kb_id)  # most polls: no store, no stat, no thread
        if recent is not None:
            return recent
        if host.reads_from_memory():
            return host.kb_status_entry(kb_id)
        return await run_in_threadpool(host.kb_status_entry, kb_id)

    @app.get(
        API + "/jobs",
        tags=["jobs"],
        summary="every job, newest first",
        responses={200: {"headers": {"ETag": {"schema": {"type": "string"}}}}, **errors(304)},
    )
    def jobs(request: Request):
        body = json.dumps([_info_dict(i) for i in host.jobs()]).encode()
        tag = etag_of(body)
        headers = {"ETag": tag, "Cache-Control": "no-cache"}
        if etag_matches(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers=headers)
        return Response(content=body, media_type="application/json", headers=headers)

    @app.get(
        API + "/jobs/{job_id}",
        tags=["jobs"],
        summary="one job: its config, times and status",
        responses=errors(404, 422),
    )
    def job(job_id: str) -> dict:
        return _info_dict(host.info(job_id))

    @app.post(
        API + "/kb/{kb_id}/jobs",
        status_code=202,
        tags=["jobs"],
        summary="start a job (sources must lie under an --allow-root folder)",
        responses={
            202: {
                "description": "started, or queued behind the knowledge base's writer",
                "headers": {"Location": {"schema": {"type": "string"}, "description": "the job: GET it"}},
            },
            **errors(400, 403, 404, 405, 409, 413, 422),
        },
    )
    def start(kb_id: str, body: StartJobRequest):  # type: ignore[valid-type]
        data = body.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
        _no_lone_surrogates(data, "")
        sources, job_id = data.pop("sources"), data.pop("job_id", None)
        settings = {k: v for k, v in data.items() if v is not None}
        snap = host.start(kb_id, sources, settings, job_id)
        return JSONResponse(
            {"job_id": snap.job_id, "status": snap.to_json_dict()},
            status_code=202,
            headers={"Location": f"{API}/jobs/{snap.job_id}"},
        )

    @app.post(
        API + "/jobs/{job_id}/resume",
        status_code=202,
        tags=["control"],
        summary="continue a paused, interrupted or failed job in this server (or retry its failures)",
        responses={
            202: {"description": "resumed here", "headers": {"Location": {"schema": {"type": "string"}}}},
            **errors(403, 404, 405, 409, 422),
        },
    )
    def resume(job_id: str):
        snap = host.resume(job_id)
        return JSONResponse(
            {"job_id": snap.job_id, "status": snap.to_json_dict()},
            status_code=202,
            headers={"Location": f"{API}/jobs/{snap.job_id}"},
        )

    @app.post(
        API + "/jobs/{job_id}/pause",
        response_model=JobStatusResponse,
        tags=["control"],
        summary="pause a running job; answers once it has paused (checkpoint saved), or at once with wait=false",
        responses={202: {"description": "asked (wait=false)"}, **errors(404, 409, 422, 504)},
    )
    def pause(job_id: str, timeout: float = CONTROL_TIMEOUT_S, wait: bool = True):
        if not wait:  # asked, not waited for: 202 and the status as it is
            return JSONResponse(host.request(job_id, "pause"), status_code=202)
        return _status_response(host.control(job_id, "pause", _bounded(timeout)))

    @app.post(
        API + "/jobs/{job_id}/cancel",
        response_model=JobStatusResponse,
        tags=["control"],
        summary="cancel a job; a running one is asked, and answered once it has stopped (or at once with wait=false)",
        responses={202: {"description": "asked (wait=false)"}, **errors(404, 409, 422, 504)},
    )
    def cancel(job_id: str, timeout: float = CONTROL_TIMEOUT_S, wait: bool = True):
        if not wait:
            return JSONResponse(host.request(job_id, "cancel"), status_code=202)
        return _status_response(host.control(job_id, "cancel", _bounded(timeout)))

    @app.get(
        API + "/jobs/{job_id}/events",
        tags=["jobs"],
        summary="Server-Sent Events: one `status` event per snapshot change; ends with the final status",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "`status` events (id, data: a JobStatusResponse); Last-Event-ID "
                "resumes a dropped stream",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **errors(404, 422),
        },
    )
    async def events(job_id: str, request: Request):
        first = (await run_in_threadpool(host.info, job_id)).status  # 404 before the stream starts
        journal = host.journal(job_id, first)
        return StreamingResponse(
            _event_stream(host, journal, request.headers.get("last-event-id"), request, run_in_threadpool),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get(
        API + "/kb/{kb_id}/search",
        tags=["search"],
        summary="the k chunks nearest the query",
        responses=errors(404, 422),
    )
    def search(kb_id: str, q: str, k: int = 5, mode: str = "hybrid") -> list[dict]:
        if not q.strip():
            raise InvalidInput("q: an empty query")
        if k > 100:
            raise InvalidInput("k: at most 100")
        return [h.__dict__ for h in service.search(kb_id, q, k, mode=mode)]

    @app.get(
        "/metrics",
        tags=["server"],
        response_class=PlainTextResponse,
        summary="Prometheus text format: every job's phases, errors, queues, commits",
        responses=errors(),
    )
    def metrics():
        body, content_type = metrics_text(host)
        return Response(content=body, media_type=content_type)

    def openapi() -> dict:
        """Every error of every route is the one error shape, as JSON (422 included: not FastAPI's
        validation shape), whatever the route's own media type."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            spec.setdefault("components", {}).setdefault("schemas", {})["Error"] = ErrorBody.model_json_schema()
            for schemas in (spec["components"]["schemas"],):
                schemas.pop("HTTPValidationError", None)
                schemas.pop("ValidationError", None)
            for ops in spec.get("paths", {}).values():
                for op in ops.values():
                    for code, resp in op.get("responses", {}).items():
                        if code.isdigit() and int(code) >= 400:
                            resp["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                            resp["description"] = _WHY.get(int(code), resp.get("description", ""))
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    if cfg.web:
        app.state.web = web.mount(
            app,
            web.WebConfig(
                web.own_url(cfg.host, cfg.port), cfg.token, hosts, cfg.web_sessions, cfg.web_idle, cfg.web_refresh
            ),
        )
    return Guard(app, cfg.token, hosts=hosts, rate_limit=cfg.rate_limit, web=cfg.web)


def _bounded(timeout: float) -> float:
    if not 0 < timeout <= 3600:
        raise InvalidInput("timeout: between 0 and 3600 seconds")
    return timeout


class _Journal:
    """A job's SSE events, kept for Last-Event-ID (the newest JOURNAL_EVENTS): the --batch lines'
    moments (JsonLinesReporter decides) as `status` events numbered `boot.n`. Advanced by whichever
    stream of the job looks first (all run on the server's event loop), at most every SSE_POLL_S.
    `ended` once the final status (completed, failed, cancelled) is in; a paused job's journal goes
    on, so that its streams see it resume."""

    def __init__(self, host: EngineHost, job_id: str, first: JobStatusResponse) -> None:
        from collections import deque

        self.host, self.job_id = host, job_id
        self._lines = _Lines()
        self._reporter = JsonLinesReporter(self._lines)
        self.events: Any = deque(maxlen=JOURNAL_EVENTS)
        self.last_id = 0
        self._handle = host.live(job_id)  # its changes after `first` only
        self._seq = self._handle.snapshots_since(1 << 62)[1] if self._handle is not None else 0
        self._looked = 0.0
        self._lock = asyncio.Lock()
        self.ended = False
        self._take(first, force=True)

    def _take(self, snap: JobStatusResponse, force: bool = False) -> None:
        self._reporter.offer(snap, force=force or snap.status.is_terminal)
        for line in self._lines.items:
            self.last_id += 1
            self.events.append((self.last_id, line))
        self._lines.items.clear()
        self.ended = snap.status.is_terminal

    async def advance(self, to_thread: Any) -> None:
        async with self._lock:
            if time.monotonic() - self._looked < SSE_POLL_S * 0.9:
                return
            handle = self.host.live(self.job_id)
            if handle is not None:  # every status or phase change since the last look, then now
                if handle is not self._handle:  # a run that started since (resumed): its changes from its start
                    self._handle, self._seq = handle, 0
                snaps, self._seq = handle.snapshots_since(self._seq)
            else:
                self._handle = None
                snaps = [(await to_thread(self.host.info, self.job_id)).status]
            self._looked = time.monotonic()
            for snap in snaps[:-1]:
                self._take(snap)
            self._take(snaps[-1])

    def position(self, last_event_id: Optional[str]) -> int:
        """The id after which a stream starts: its Last-Event-ID if this journal still holds what
        followed it, else just before the newest event (the job as it is now)."""
        newest = max(0, self.last_id - 1)
        if not last_event_id:
            return newest
        boot, _, digits = last_event_id.strip().partition(".")
        if boot != self.host.boot or not digits.isdigit():
            return newest
        n = int(digits)
        oldest = self.events[0][0] if self.events else self.last_id + 1
        return n if oldest - 1 <= n <= self.last_id else newest

    def after(self, n: int) -> list[tuple[int, str]]:
        return [e for e in self.events if e[0] > n]


async def _event_stream(
    host: EngineHost, journal: _Journal, last_event_id: Optional[str], request: Any, to_thread: Any
):
    """A job's events from its journal: from Last-Event-ID on (no gap) or from its status now. Ends at a
    final status (completed, failed, cancelled), when the client leaves or when the server stops; a
    paused job's stream stays open (a `: keep-alive` comment every SSE_KEEPALIVE_S of silence) and
    shows its resume."""
    await journal.advance(to_thread)
    pos = journal.position(last_event_id)
    idle = 0.0
    while True:
        for n, line in journal.after(pos):
            pos = n
            yield f"id: {host.boot}.{n}\nevent: status\ndata: {line}\n\n"
            idle = 0.0
        if journal.ended and pos >= journal.last_id:
            return
        await asyncio.sleep(SSE_POLL_S)
        idle += SSE_POLL_S
        if idle >= SSE_KEEPALIVE_S:
            idle = 0.0
            yield ": keep-alive\n\n"
        if host.stopping() or await request.is_disconnected():
            return
        await journal.advance(to_thread)


# ---- the command ---------------------------------------------------------------------------------
def uvicorn_config(app: Guard, host: str = "127.0.0.1", port: int = 8000) -> Any:
    """How uvicorn serves the app (the command, and the tests' in-process servers)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        proxy_headers=False,  # no proxy is trusted: the peer is the client
        timeout_keep_alive=5,  # an idle connection is closed after 5 s
        # open connections and requests in flight at most (slow and idle ones included): past it a
        # request is answered 503 at once. uvicorn has no header timeout (docs/serve.md, "Slow clients")
        limit_concurrency=MAX_CONNECTIONS,
        timeout_graceful_shutdown=5,
    )  # then open streams are cut: the jobs are paused next


def bind(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound here (a port in use: one line, exit 2)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
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


def serve(cfg: ServerConfig, home: Any = None, embedder_factory: Any = None) -> int:
    """Run the server until SIGINT/SIGTERM; jobs running here are paused (checkpoint saved) first."""
    import uvicorn

    cfg.token = cfg.token or os.environ.get(ENV_TOKEN) or None
    if not is_loopback(cfg.host) and not cfg.token:
        raise InvalidInput(
            f"--host {cfg.host} is not a loopback address: give a token (--token or {ENV_TOKEN}), "
            "which every client then sends as `Authorization: Bearer <token>`"
        )
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
            raise InvalidInput(
                f"--allow-host {printable(name)}: not a host name (a name such as kb.internal, or an address)"
            )
    if not 0 <= cfg.rate_limit <= 1e6:
        raise InvalidInput("--rate-limit: between 0 (no limit) and 1000000 requests a second")
    if cfg.web:
        web.check(cfg.web_sessions, cfg.web_idle, cfg.web_refresh)
    service = Service(home, embedder_factory=embedder_factory, cached_reads=True)
    _ = service.store  # opened (and recovered if need be) before the first request
    app = create_app(service, cfg)
    host = app.app.state.host
    _log_to_stderr()
    listen = bind(cfg.host, cfg.port)
    server = uvicorn.Server(uvicorn_config(app, cfg.host, cfg.port))
    host.stopping = lambda: server.should_exit
    url = f"http://{cfg.host if ':' not in cfg.host else f'[{cfg.host}]'}:{cfg.port}"
    log.warning(
        "kbingest serve: %s (home %s), token %s, allowed roots: %s, web UI: %s (API %s, OpenAPI %s/docs)",
        url,
        service.home.root,
        "on" if cfg.token else "off",
        ", ".join(host.roots)
        if cfg.allow_roots
        else ("none" if cfg.allow_urls else "none (starting jobs over HTTP is off)"),
        f"{url}{web.PREFIX}/" if cfg.web else "none (--web)",
        API,
        url,
    )
    # uvicorn re-raises the SIGTERM it caught once it has shut down: with the default handler that kills
    # the process before the `finally` below (jobs paused, the announcement removed) could run
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    paused: list[str] = []
    try:
        # `kbingest search` in this home asks this process first: warm, it answers in milliseconds
        with service.announce(
            f"http://{cfg.host if is_loopback(cfg.host) else '127.0.0.1'}:{cfg.port}", token_required=bool(cfg.token)
        ):
            server.run(sockets=[listen])
    finally:
        if cfg.web:
            app.app.state.web.end_all()  # the browser sessions' processes
        paused = host.join()
        listen.close()
        log.warning(
            "kbingest serve stopped: %s",
            f"paused {', '.join(paused)} (checkpoint saved; POST .../jobs/ID/resume or `kbingest resume ID` continues)"
            if paused
            else "no job was running",
        )
    return 0


def _log_to_stderr() -> None:
    from kbingest.app.logs import log_to_stderr

    log_to_stderr()
    logging.getLogger("kbingest").setLevel(logging.WARNING)
