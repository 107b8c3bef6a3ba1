"""`kbingest serve`'s OpenAPI against its real answers (issue 29 item 4). Schemathesis (the kept
library) generates requests for every route from the spec and sends them to a real uvicorn on
127.0.0.1: every answer's status must be documented for its route, and its body and headers must
match what the spec says of that status (errors: the one `Error` schema, its kinds an enum). Then
our own checks: every route documents every status a request in this file reaches on it, and
`POST .../jobs` reaches each status it documents."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest
from conftest import copy_pages
from live_server import ThreadServer
from test_crash_resume import waf_pages
from test_serve import API, start_job, wait_status

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402 (after the skip)

pytestmark = pytest.mark.timeout(300)
EXAMPLES = int(os.environ.get("KBINGEST_SCHEMATHESIS_EXAMPLES", "12"))  # per route: the whole run well under 60 s


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A server with a knowledge base and a completed job (so that generated requests can meet both)."""
    base = tmp_path_factory.mktemp("openapi")
    corpus = copy_pages(base / "docs", waf_pages(3))
    s = ThreadServer(base / "home", allow_roots=[str(corpus)], rate_limit=0)
    with httpx.Client(base_url=s.url, timeout=60) as c:
        job_id = start_job(c, [corpus])
        wait_status(c, job_id, {"completed"})
    yield s, corpus, job_id
    s.stop()


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(f"{live[0].url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_every_generated_request_is_answered_as_the_spec_says(case):
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    case.call_and_validate(
        timeout=60,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )


# ---- our own: every status reached is documented, and POST .../jobs reaches what it documents -----------
def documented(spec: dict, method: str, path: str) -> set[int]:
    return {int(c) for c in spec["paths"][path][method]["responses"]}


def asgi(app, method: str, path: str, client: str = "127.0.0.1", **kw) -> httpx.Response:
    """One request through the app's ASGI interface, as if from `client` (the rate limit counts
    addresses that are not the loopback, which a test on 127.0.0.1 cannot have)."""

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await c.request(method, path, **kw)

    return asyncio.run(run())


def test_post_jobs_reaches_every_status_it_documents(tmp_path, live):
    s, corpus, done_job = live
    spec = httpx.get(f"{s.url}/openapi.json").json()
    route = API + "/kb/{kb_id}/jobs"
    want = documented(spec, "post", route)
    assert {202, 403, 404, 405, 409, 413, 422} <= want
    assert "Location" in spec["paths"][route]["post"]["responses"]["202"]["headers"]
    reached: dict[int, httpx.Response] = {}
    url = f"{API}/kb/waf/jobs"
    ok = {"sources": [str(corpus)], "embedder": "fake"}
    with httpx.Client(base_url=s.url, timeout=60) as c:
        started = c.post(f"{API}/kb/other/jobs", json=ok)
        reached[202] = started
        assert started.headers["location"] == f"{API}/jobs/{started.json()['job_id']}"
        wait_status(c, started.json()["job_id"], {"completed"})
        reached[400] = c.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
        deep = c.post(url, content=b"[" * 30000 + b"]" * 30000, headers={"Content-Type": "application/json"})
        assert deep.status_code == 400 and deep.json()["error"] == "invalid_input", deep.text
        reached[403] = c.post(url, json={"sources": [str(tmp_path)]})
        reached[404] = c.post(url, json={"sources": [str(corpus / "missing")]})
        reached[409] = c.post(url, json={**ok, "job_id": done_job})
        reached[413] = c.post(url, content=b"x" * 70000, headers={"Content-Type": "application/json"})
        reached[422] = c.post(url, json={"sources": []})
        reached[421] = c.post(url, json=ok, headers={"Host": "evil.example"})
    closed = ThreadServer(tmp_path / "home-closed", token="t")  # no --allow-root: starting jobs is off
    try:
        reached[405] = httpx.post(
            f"{closed.url}{API}/kb/waf/jobs", json=ok, headers={"Authorization": "Bearer t"}, timeout=60
        )
        reached[401] = httpx.post(f"{closed.url}{API}/kb/waf/jobs", json=ok, timeout=60)
    finally:
        closed.stop()
    limited = ThreadServer(tmp_path / "home-limited", allow_roots=[str(corpus)], rate_limit=1)  # burst 2
    try:
        answers = [asgi(limited.app, "POST", f"{API}/kb/waf/jobs", "192.0.2.7", json={"sources": []}) for _ in range(4)]
        reached[429] = answers[-1]
    finally:
        limited.stop()
    for code, r in reached.items():
        assert r.status_code == code, (code, r.status_code, r.text)
        if code >= 400:
            assert set(r.json()) == {"error", "message"}, r.text
    assert reached[429].headers["retry-after"].isdigit()
    assert set(reached) == want - {500}, "each documented status reached (500: a fault of the server's own)"
    assert 500 in want


def test_every_route_documents_every_status_it_reaches(tmp_path, live):
    s, corpus, done_job = live
    spec = httpx.get(f"{s.url}/openapi.json").json()
    j = f"{API}/jobs/{done_job}"
    # (method, route in the spec, the request's path, keyword arguments): each route's answers, errors included
    cases = [
        ("get", "/healthz", "/healthz", {}),
        ("get", "/metrics", "/metrics", {}),
        ("get", API + "/engine", f"{API}/engine", {}),
        ("get", API + "/jobs", f"{API}/jobs", {}),
        ("get", API + "/jobs/{job_id}", j, {}),
        ("get", API + "/jobs/{job_id}", f"{API}/jobs/nope", {}),
        ("get", API + "/jobs/{job_id}", f"{API}/jobs/b@d", {}),
        ("get", API + "/kb/{kb_id}/status", f"{API}/kb/waf/status", {}),
        ("get", API + "/kb/{kb_id}/status", f"{API}/kb/nope/status", {}),
        ("get", API + "/kb/{kb_id}/status", f"{API}/kb/waf/status", {"params": {"wait": -1}}),
        ("get", API + "/kb/{kb_id}/search", f"{API}/kb/nope/search", {"params": {"q": "x"}}),
        ("get", API + "/kb/{kb_id}/search", f"{API}/kb/waf/search", {"params": {"q": " "}}),
        ("get", API + "/jobs/{job_id}/events", f"{j}/events", {}),
        ("get", API + "/jobs/{job_id}/events", f"{API}/jobs/nope/events", {}),
        ("post", API + "/jobs/{job_id}/pause", f"{j}/pause", {}),
        ("post", API + "/jobs/{job_id}/pause", f"{API}/jobs/nope/pause", {}),
        ("post", API + "/jobs/{job_id}/pause", f"{j}/pause", {"params": {"timeout": 0}}),
        ("post", API + "/jobs/{job_id}/cancel", f"{j}/cancel", {}),
        ("post", API + "/jobs/{job_id}/cancel", f"{j}/cancel", {"params": {"wait": "false"}}),
        ("post", API + "/jobs/{job_id}/cancel", f"{API}/jobs/nope/cancel", {}),
        ("post", API + "/jobs/{job_id}/resume", f"{j}/resume", {}),
        ("post", API + "/jobs/{job_id}/resume", f"{API}/jobs/nope/resume", {}),
        ("post", API + "/kb/{kb_id}/jobs", f"{API}/kb/waf/jobs", {"json": {"sources": []}}),
    ]
    assert {(m, p) for m, p, _, _ in cases} == {(m, p) for p, ops in spec["paths"].items() for m in ops}, (
        "every route of the spec has its cases here"
    )
    with httpx.Client(base_url=s.url, timeout=60) as c:
        for method, route, path, kw in cases:
            r = c.request(method.upper(), path, **kw)
            assert r.status_code in documented(spec, method, route), (method, path, r.status_code, r.text[:200])
            # the guard's answers, on every route but /healthz (never needs the token)
            for code in (401, 421, 429, 500):
                assert code in documented(spec, method, route) or (route, code) == ("/healthz", 401), (route, code)
