"""The service's interface over HTTP (httpx), for the dashboard on a running `kbingest serve`:
`kbingest --server URL [--token T]`. The dashboard calls the same methods on it as on a local
Service (jobs, job, find, status, engine_busy, resume, retry, request_pause, request_cancel,
pause, cancel, search, as_interrupted); the server's typed errors come back as the same KbError
classes, by their `kind`.

`resume` asks the server to run the job: the handle it returns is already started there, so
its run() returns at once and the job shows from then on as running in another process (p, c
reach it through request_pause / request_cancel; quitting the dashboard leaves it running).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Optional

from kbingest.app.http_guard import API
from kbingest.pipeline.models import DocumentError, JobConfig, JobStatusResponse
from kbingest.pipeline.service import (Busy, ControlTimeout, EngineFailure, Forbidden, InvalidInput, JobInfo,
                                       KbError, NotFound, Service, WrongState)

TIMEOUT_S = 10.0
_ERRORS: dict[str, type[KbError]] = {c.kind: c for c in (InvalidInput, NotFound, WrongState, Busy, Forbidden,
                                                           ControlTimeout, EngineFailure)}


class Unreachable(KbError):
    kind = "unreachable"
    http_status = 502


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


class RemoteService:
    """Service's reading and steering methods, answered by a `kbingest serve` at `url`."""

    as_interrupted = staticmethod(Service.as_interrupted)  # pure: computed here

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = TIMEOUT_S, client: Any = None) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.home = RemoteHome(self.url)
        self.notices: list[str] = []
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
            raise Unreachable(f"cannot reach kbingest serve at {self.url}: {type(e).__name__}: {e}") from None
        if r.status_code >= 400:
            try:
                body = r.json()
                kind, message = str(body["error"]), str(body["message"])
            except (ValueError, KeyError, TypeError):
                kind, message = "error", f"HTTP {r.status_code} from {self.url}{path}"
            cls = _ERRORS.get(kind)
            raise cls(message) if cls is not None else RemoteError(kind, r.status_code, message)
        return r.json()

    @staticmethod
    def _info(d: dict) -> JobInfo:
        return JobInfo(job_id=d["job_id"], kb=d["kb"], config=JobConfig.model_validate(d["config"]),
                       status=JobStatusResponse.model_validate(d["status"]), created_at=d["created_at"],
                       updated_at=d["updated_at"])

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
        return self._call("GET", API + "/engine")["busy"]

    # ---- starting (in the server) ----
    def resume(self, job_id: str) -> RemoteJob:
        body = self._call("POST", f"{API}/jobs/{job_id}/resume")
        return RemoteJob(self, self.job(job_id), JobStatusResponse.model_validate(body["status"]))

    def retry(self, job_id: str) -> RemoteJob:
        info = self.job(job_id)
        if info.status.status.value != "completed" or not info.status.m.documents_failed:
            raise WrongState(f"job {info.job_id} has no failed documents to retry (it is {info.status.status.value})")
        return self.resume(job_id)

    # ---- steering ----
    def request_pause(self, job_id: str) -> None:
        self._call("POST", f"{API}/jobs/{job_id}/pause", params={"wait": "false"})

    def request_cancel(self, job_id: str) -> str:
        return self._call("POST", f"{API}/jobs/{job_id}/cancel", params={"wait": "false"})["outcome"]

    def pause(self, job_id: str, timeout: float = 120.0) -> JobStatusResponse:
        body = self._call("POST", f"{API}/jobs/{job_id}/pause", params={"timeout": timeout}, timeout=timeout + 10)
        return JobStatusResponse.model_validate(body)

    def cancel(self, job_id: str, timeout: float = 120.0) -> JobStatusResponse:
        body = self._call("POST", f"{API}/jobs/{job_id}/cancel", params={"timeout": timeout}, timeout=timeout + 10)
        return JobStatusResponse.model_validate(body)

    # ---- searching ----
    def search(self, kb: str, query: str, k: int = 5) -> list[SimpleNamespace]:
        """Hits with the attributes of the service's SearchHit (id, score, source, heading_path, text, title)."""
        return [SimpleNamespace(**h) for h in self._call("GET", f"{API}/kb/{kb}/search", params={"q": query, "k": k})]
