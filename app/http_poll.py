"""What a status poll is, for both processes of `kbingest serve` (the engine host in
app/server.py and the status front in app/status_front.py): the request a poller sends, the
path it polls, the token rule and the Host rule. One place for each, so that both answer alike."""

import hmac
import ipaddress
import re
from typing import Iterable, Optional

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


# ---- the Host rule (DNS rebinding) ----------------------------------------------------------------
# A web page the operator visits can have its own name resolve to 127.0.0.1 and then read a server
# without a token as if it were the page's own origin; the request still names the page's host. So a
# server without a token answers only requests whose Host names the loopback (localhost, a loopback
# address) or its bound address, or a name given with --allow-host. A token guards the server
# otherwise (a page cannot send it), and then Host is not checked.
_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")


def host_name(value: str) -> str:
    """The name of a Host header value (or of an address or --allow-host NAME): lower case, without
    its port or a trailing dot, an IPv6 address in brackets; "" when it is not a host name at all."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        name = v[:end + 1] if end > 0 else ""
    elif v.count(":") > 1:  # a bare IPv6 address (--host ::1)
        name = f"[{v}]"
    else:
        name = v.split(":", 1)[0]
        name = name[:-1] if name.endswith(".") else name
    return name if _NAME.fullmatch(name) else ""


def host_rule(token: Optional[str], bound: str, allow_hosts: Iterable[str] = ()) -> Optional[frozenset[str]]:
    """The Host names a server answers: None (any) with a token; else localhost, the bound address and
    each --allow-host NAME (a loopback address is always answered: `host_allowed`)."""
    if token:
        return None
    return frozenset(n for n in ("localhost", host_name(bound), *map(host_name, allow_hosts)) if n)


def host_allowed(rule: Optional[frozenset[str]], headers: dict) -> bool:
    """The Host rule: the request's Host names this server (see `host_rule`). A request without a
    Host header (HTTP/1.0) is answered: a browser always sends one."""
    if rule is None:
        return True
    raw = headers.get(b"host")
    if raw is None:
        return True
    name = host_name(raw.decode("latin-1"))
    if name in rule:
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False
