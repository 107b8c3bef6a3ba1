"""moto's S3 server on 127.0.0.1, for the tests and the bench, with a log of the requests it answered:
method, path, query, the client's process (kbingest's S3 client names it in its user agent,
`kbingest-pid/PID`: pipeline/load/sources.py) and the bytes of the response body. Who read which
object, and how many bytes, is read from this log (the Ray executor's driver reads none)."""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass
from typing import Any, Optional

_PID = re.compile(r"kbingest-pid/(\d+)")
_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # /BUCKET/KEY (path-style addressing: the endpoint is an IP address)
    query: str
    pid: Optional[int]  # the kbingest process that sent it; None: another client (the test's own)
    body_bytes: int  # of the response

    @property
    def object_get(self) -> bool:
        """A GET of one object's bytes (not a listing: a listing's path is the bucket alone)."""
        return self.method == "GET" and self.path.strip("/").count("/") >= 1 and "list-type" not in self.query


class _Logged:
    """WSGI middleware: each answered request appended to `log` once its body is sent."""

    def __init__(self, app, log: list[Request], lock: threading.Lock, denied: set[str]) -> None:
        self.app, self.log, self.lock, self.denied = app, log, lock, denied

    def __call__(self, environ, start_response):
        m = _PID.search(environ.get("HTTP_USER_AGENT", ""))
        if environ.get("REQUEST_METHOD") == "GET" and environ.get("PATH_INFO") in self.denied:
            out: Any = [_DENIED]  # an object this client may list and not read (a bucket policy does this)
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
        else:
            out = self.app(environ, start_response)
        try:
            chunks = list(out)
        finally:
            if hasattr(out, "close"):
                out.close()
        req = Request(
            environ.get("REQUEST_METHOD", ""),
            environ.get("PATH_INFO", ""),
            environ.get("QUERY_STRING", ""),
            int(m.group(1)) if m else None,
            sum(len(c) for c in chunks),
        )
        with self.lock:
            self.log.append(req)
        return chunks


class LoggedMotoServer:
    """moto's S3 server (its ThreadedMotoServer's WSGI app) on 127.0.0.1:`port`, in a thread of this
    process, every request logged (`requests()`)."""

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log: list[Request] = []
        self._lock = threading.Lock()
        self.denied: set[str] = set()  # paths (/BUCKET/KEY) whose GET is answered 403 AccessDenied
        self._server = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "LoggedMotoServer":
        import logging

        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
        app = _Logged(DomainDispatcherApplication(create_backend_app), self._log, self._lock, self.denied)
        self._server = make_server("127.0.0.1", self.port, app, True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    def create_buckets(self, *buckets: str) -> None:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        for b in buckets:
            client.create_bucket(Bucket=b)

    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._log)

    def object_gets(self, prefix: str = "/") -> list[Request]:
        """The GETs of objects whose path starts with `prefix` (/BUCKET/KEYPREFIX), in order."""
        return [r for r in self.requests() if r.object_get and r.path.startswith(prefix)]
