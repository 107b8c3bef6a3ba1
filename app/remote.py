"""The service's interface over HTTP (httpx), for the dashboard on a running `kbingest serve`:
`kbingest --server URL [--token T]`. The dashboard calls the same methods on it as on a local
Service (jobs, job, find, status, engine_busy, start, resume, retry, request_pause, request_cancel,
pause, cancel, search, as_interrupted); the server's typed errors come back as the same KbError
classes, by their `kind`. The CLI's commands run on it too with `--server URL` (app/cli.py), and
`ingest --batch` follows the server's events (app/batch.py, run_remote_batch).

`resume` asks the server to run the job: the handle it returns is already started there, so
its run() returns at once and the job shows from then on as running in another process (p, c
reach it through request_pause / request_cancel; quitting the dashboard leaves it running).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Iterator, Optional

from kbingest.app.http_guard import API
from kbingest.pipeline.models import DocumentError, JobConfig, JobStatusResponse
from kbingest.pipeline.service import (
    Busy,
    ControlTimeout,
    EngineFailure,
    Forbidden,
    InvalidInput,
    JobInfo,
    KbError,
    NotFound,
    Service,
    Unreachable,
    Unsupported,
    WrongState,
)

TIMEOUT_S = 10.0
EVENTS_READ_TIMEOUT_S = 60.0  # the server sends a keep-alive comment every 15 s of silence
_ERRORS: dict[str, type[KbError]] = {
    c.kind: c for c in (InvalidInput, NotFound, WrongState, Busy, Forbidden, ControlTimeout, EngineFailure)
}


def transport_words(e: BaseException, timeout: Optional[float] = None) -> str:
    """Why an HTTP exchange failed, in a few words ("connection refused", "unknown host"...)."""
    import httpx

    text = str(e).lower()
    if isinstance(e, httpx.ConnectTimeout):
        return "timed out connecting"
    if isinstance(e, httpx.ConnectError):
        if "refused" in text:
            return "connection refused"
        if any(
            w in text
            for w in (
                "name or service not known",
                "nodename nor servname",
                "name resolution",
                "no address associated",
                "getaddrinfo",
            )
        ):
            return "unknown host"
        if "unreachable" in text:
            return "network unreachable"
        return text or "cannot connect"
    if isinstance(e, httpx.TimeoutException):
        return f"no answer within {timeout:g} s" if timeout else "no answer in time"
    if isinstance(e, httpx.RemoteProtocolError):
        return "the connection broke off"
    if isinstance(e, httpx.UnsupportedProtocol):
        return "not an http:// or https:// URL"
    return text or type(e).__name__


class RemoteError(KbError):
    """An error of the server this client has no class for (unauthorized, jobs_disabled...)."""

    def __init__(self, kind: str, status: int, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.http_status = status


@dataclass(frozen=True)
class RemoteHome:
    """What the dashboard shows as the home: the server's address."""

    root: str


class RemoteJob:
    """A job the server has started (resume): the JobHandle interface, run() returning at once."""

    def __init__(self, service: "RemoteService", info: JobInfo, snap: JobStatusResponse) -> None:
        self._service = service
        self.job_id = info.job_id
        self.config = info.config
        self._snap = snap

    def run(self) -> JobStatusResponse:
        return self._snap  # it runs in the server

    def snapshot(self) -> JobStatusResponse:
        return self._snap

    def snapshots_since(self, seq: int) -> tuple[list[JobStatusResponse], int]:
        return [self._snap], seq

    @property
    def errors(self) -> list[DocumentError]:
        return self._snap.errors

    def pause(self) -> None:
        self._service.request_pause(self.job_id)

    def cancel(self) -> None:
        self._service.request_cancel(self.job_id)

    def queue_depths(self) -> dict[str, int]:
        return {}  # its executor is in the server

    def job_store(self) -> None:
        return None


class RemoteService:
    """Service's reading and steering methods, answered by a `kbingest serve` at `url`."""

    @staticmethod
    def as_interrupted(snap: JobStatusResponse) -> JobStatusResponse:
        return Service.as_interrupted(snap)  # pure: computed here

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = TIMEOUT_S, client: Any = None) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.home = RemoteHome(self.url)
        self.notices: list[str] = []
        self.timeout = timeout
        self._token = bool(token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = client or httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    # ---- HTTP ----
    def _call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise self._unreachable(e, kw.get("timeout")) from None
        if r.status_code >= 400:
            self._raise_for(r, path)
        try:
            return r.json()
        except ValueError:
            raise self._not_kbingest(r.status_code, path) from None

    def _unreachable(self, e: BaseException, timeout: Optional[float] = None) -> Unreachable:
        return Unreachable(f"cannot reach the server at {self.url} ({transport_words(e, timeout or self.timeout)})")

    def _not_kbingest(self, status: int, path: str) -> RemoteError:
        return RemoteError(
            "error",
            status,
            f"the server at {self.url} did not answer as `kbingest serve` does (HTTP {status} for {path})",
        )

    def _raise_for(self, r: Any, path: str) -> None:
        """An error answer as the typed error the service raises (by its kind), in kbingest's words;
        401 and 403 said as such, with the server's reason."""
        try:
            body = r.json()
            kind, message = str(body["error"]), str(body["message"])
        except (ValueError, KeyError, TypeError):
            raise self._not_kbingest(r.status_code, path) from None
        if r.status_code == 401:
            raise RemoteError(
                kind,
                401,
                f"the server at {self.url} "
                + (
                    "refused the token (--token or KBINGEST_TOKEN)"
                    if self._token
                    else "needs a token (--token or KBINGEST_TOKEN)"
                ),
            )
        if r.status_code == 403:
            raise Forbidden(f"the server at {self.url} refused: {message}")
        cls = _ERRORS.get(kind)
        if cls is not None:
            raise cls(message)
        if r.status_code >= 500:
            raise EngineFailure(f"the server at {self.url} failed: {message}")
        raise RemoteError(kind, r.status_code, message)

    @staticmethod
    def _info(d: dict[str, Any]) -> JobInfo:
        return JobInfo(
            job_id=d["job_id"],
            kb=d["kb"],
            config=JobConfig.model_validate(d["config"]),
            status=JobStatusResponse.model_validate(d["status"]),
            created_at=d["created_at"],
            updated_at=d["updated_at"],
        )

    def ping(self) -> None:
        """Reachable, and the token (if the server wants one) accepted."""
        self._call("GET", API + "/engine")

    # ---- reading ----
    def jobs(self) -> list[JobInfo]:
        return [self._info(d) for d in self._call("GET", API + "/jobs")]

    def job(self, job_id: str) -> JobInfo:
        return self._info(self._call("GET", f"{API}/jobs/{job_id}"))

    def find(self, job_id: Optional[str] = None, kb: Optional[str] = None) -> JobInfo:
        if job_id:
            return self.job(job_id)
        if kb:
            snap = JobStatusResponse.model_validate(self._call("GET", f"{API}/kb/{kb}/status"))
            return self.job(snap.job_id)
        items = self.jobs()
        if not items:
            raise NotFound("no jobs in this home yet")
        return items[0]

    def status(self, job_id: Optional[str] = None, kb: Optional[str] = None) -> JobStatusResponse:
        return self.find(job_id, kb).status

    def engine_busy(self, kb: Optional[str] = None) -> Optional[str]:
        busy: Optional[str] = self._call("GET", API + "/engine")["busy"]
        return busy

    def knowledge_bases(self) -> list[str]:
        return []  # the server lists none: a new-job form offers no names

    def default_embedder(self) -> str:
        return str(JobConfig.model_fields["embedder"].default)  # as a local Service proposes

    # ---- starting (in the server) ----
    @staticmethod
    def config(sources: list[str], kb: str, **settings: Any) -> JobConfig:
        """A job's settings validated here as Service.config validates them (names, bounds, the option
        at fault); the sources are paths on the server, which checks them against its --allow-root
        folders: here each must only be absolute (a relative one would be read from the server's cwd)."""
        import os

        if not sources:
            raise InvalidInput("no source given: name at least one file or folder")
        for s in sources:
            if not os.path.isabs(s):
                raise InvalidInput(f"with --server, a SOURCE is a path on the server: give {s!r} as an absolute path")
        config = Service.config([os.sep], kb, **settings)  # every check but the sources' (the server's to make)
        return config.model_copy(update={"sources": list(dict.fromkeys(sources))})

    def start(self, config: JobConfig, job_id: Optional[str] = None, wait: bool = True) -> RemoteJob:
        """A new job run by the server (POST .../kb/{kb}/jobs): its sources are paths on the server,
        checked against its --allow-root folders; the settings that differ from the defaults are sent."""
        if not wait:
            raise InvalidInput(
                "--no-wait is not available with --server: the server queues a job whose knowledge base is busy"
            )
        defaults = JobConfig(sources=list(config.sources), kb=config.kb)
        body: dict[str, Any] = {"sources": list(config.sources)}
        for name in JobConfig.USER_SETTABLE:
            value = getattr(config, name)
            if value != getattr(defaults, name):
                body[name] = value
        if job_id is not None:
            body["job_id"] = job_id
        answer = self._call("POST", f"{API}/kb/{config.kb}/jobs", json=body)
        return RemoteJob(self, self.job(answer["job_id"]), JobStatusResponse.model_validate(answer["status"]))

    def resume(self, job_id: str, wait: bool = True) -> RemoteJob:
        if not wait:
            raise InvalidInput(
                "--no-wait is not available with --server: the server queues a job whose knowledge base is busy"
            )
        body = self._call("POST", f"{API}/jobs/{job_id}/resume")
        return RemoteJob(self, self.job(job_id), JobStatusResponse.model_validate(body["status"]))

    def retry(self, job_id: str, paths: Optional[list[str]] = None, wait: bool = True) -> RemoteJob:
        if paths is not None:
            raise Unsupported("retrying single documents is not available over --server: retry the whole job (r)")
        info = self.job(job_id)
        if info.status.status.value != "completed" or not info.status.m.documents_failed:
            raise WrongState(f"job {info.job_id} has no failed documents to retry (it is {info.status.status.value})")
        return self.resume(job_id)

    # ---- steering ----
    def request_pause(self, job_id: str) -> None:
        self._call("POST", f"{API}/jobs/{job_id}/pause", params={"wait": "false"})

    def request_cancel(self, job_id: str) -> str:
        return str(self._call("POST", f"{API}/jobs/{job_id}/cancel", params={"wait": "false"})["outcome"])

    def pause(self, job_id: str, timeout: float = 120.0) -> JobStatusResponse:
        body = self._call("POST", f"{API}/jobs/{job_id}/pause", params={"timeout": timeout}, timeout=timeout + 10)
        return JobStatusResponse.model_validate(body)

    def cancel(self, job_id: str, timeout: float = 120.0) -> JobStatusResponse:
        body = self._call("POST", f"{API}/jobs/{job_id}/cancel", params={"timeout": timeout}, timeout=timeout + 10)
        return JobStatusResponse.model_validate(body)

    def can_drain(self) -> bool:
        return False  # the server has no drain request

    def drain(self, job_id: str, timeout: float = 120.0) -> JobStatusResponse:
        raise Unsupported("drain is not available over --server")

    # ---- preferences: the server's home keeps its own ----
    def settings(self) -> dict[str, Any]:
        return {}

    def save_settings(self, **updates: Any) -> dict[str, Any]:
        raise Unsupported("preferences are not kept over --server")

    # ---- searching ----
    def search(self, kb: str, query: str, k: int = 5, mode: str = "hybrid") -> list[SimpleNamespace]:
        """Hits with the attributes of the service's SearchHit (id, score, source, heading_path, text, title)."""
        params: dict[str, Any] = {"q": query, "k": k}
        if mode != "hybrid":
            params["mode"] = mode
        return [SimpleNamespace(**h) for h in self._call("GET", f"{API}/kb/{kb}/search", params=params)]

    # ---- following a job ----
    def events(self, job_id: str) -> Iterator[JobStatusResponse]:
        """The job's snapshots as the server's SSE stream sends them (GET .../jobs/{id}/events), until
        the stream ends. A broken stream is Unreachable."""
        import httpx

        path = f"{API}/jobs/{job_id}/events"
        timeout = httpx.Timeout(self.timeout, read=EVENTS_READ_TIMEOUT_S)
        try:
            with self._http.stream("GET", path, timeout=timeout) as r:
                if r.status_code >= 400:
                    r.read()
                    self._raise_for(r, path)
                event = ""
                data: list[str] = []
                for line in r.iter_lines():
                    if line == "":
                        if event == "status" and data:
                            yield JobStatusResponse.model_validate_json("\n".join(data))
                        event, data = "", []
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
        except httpx.HTTPError as e:
            raise self._unreachable(e, EVENTS_READ_TIMEOUT_S) from None
