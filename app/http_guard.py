"""The rules `kbingest serve` (app/server.py) holds every request to before it is answered: the
token rule and the Host rule, each in one place, with the API's prefix and the token's variable."""

import hmac
import ipaddress
import re
from typing import Iterable, Optional

API = "/api/ingestion"
ENV_TOKEN = "KBINGEST_TOKEN"


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
        name = v[: end + 1] if end > 0 else ""
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
