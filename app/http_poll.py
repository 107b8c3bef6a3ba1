"""What a status poll is, for both processes of `kbingest serve` (the engine host in
app/server.py and the status front in app/status_front.py): the request a poller sends, the
path it polls, and the token rule. One place for each, so that both answer alike."""

import hmac
import re
from typing import Optional

API = "/api/ingestion"
ENV_TOKEN = "KBINGEST_TOKEN"
STATUS_TTL_S = 0.05  # a kb status is computed at most this often (polled by many clients)
KB_STATUS = re.compile(API + r"/kb/([^/]+)/status")

# A request that is exactly one bodiless keep-alive HTTP/1.1 GET of a plain path (no query, no
# escapes), every header line well formed: what a status poller sends. Anything else is the parser's.
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SIMPLE_GET = re.compile(rb"GET (/[A-Za-z0-9/_.~-]*) HTTP/1\.1\r\n((?:" + _TOKEN + rb":[ \t]*[\x20-\x7e]*\r\n)*)\r\n\Z")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([\x20-\x7e]*?)[ \t]*\r\n")
_NOT_SIMPLE = frozenset({b"content-length", b"transfer-encoding", b"upgrade", b"expect", b"connection"})


def simple_get(data: bytes) -> Optional[tuple[str, dict[bytes, bytes]]]:
    """(path, headers by lower-case name) if `data` is one whole simple GET as above, else None."""
    m = _SIMPLE_GET.match(data)
    if m is None:
        return None
    headers = {}
    for name, value in _FIELD.findall(m.group(2)):
        name = name.lower()
        if name in _NOT_SIMPLE and not (name == b"connection" and value.lower() == b"keep-alive"):
            return None
        headers[name] = value
    return m.group(1).decode("ascii"), headers


def authorized(token: Optional[bytes], headers: dict, path: str) -> bool:
    """The token rule: every path but /healthz needs `Authorization: Bearer <token>` (constant time)."""
    if token is None or path == "/healthz":
        return True
    auth = headers.get(b"authorization", b"")
    given = auth[7:] if auth[:7].lower() == b"bearer " else b""
    return hmac.compare_digest(given, token)
