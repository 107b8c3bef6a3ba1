"""Issue 27, sealed boundaries of `kbingest serve`: the --allow-root folders bind every file a job of
the server reads (follow_links, a source swapped after the POST or before a resume, every pass);
every error is the one JSON shape with a documented kind, whatever the request body (a property
test); without a token, only requests addressed to the server by a loopback name, its address or
an --allow-host NAME are answered (DNS rebinding), by both of its processes."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

import httpx
import pytest
from conftest import SMALL_PAGES, copy_pages
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_server import ProcessServer, ThreadServer
from test_hostile import kb_rows, write
from test_serve import API, _Responses, start_job, wait_status

pytestmark = pytest.mark.timeout(180)

# README, "HTTP API": every kind of error the server answers, by status
DOCUMENTED = {
    400: {"invalid_input"},
    401: {"unauthorized"},
    403: {"forbidden"},
    404: {"not_found"},
    405: {"jobs_disabled", "method_not_allowed"},
    409: {"wrong_state", "busy"},
    413: {"too_large"},
    421: {"wrong_host"},
    422: {"invalid_input"},
    429: {"rate_limited"},
    504: {"timeout"},
}


def assert_documented_error(r: httpx.Response) -> dict:
    assert r.headers["content-type"] == "application/json", (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "message"} and isinstance(body["message"], str), r.text
    assert body["error"] in DOCUMENTED.get(r.status_code, set()), (r.status_code, r.text)
    return body


@pytest.fixture
def servers(tmp_path):
    started: list = []

    def make(**cfg) -> ThreadServer:
        s = ThreadServer(tmp_path / f"home{len(started)}", **cfg)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def allowed(tmp_path) -> tuple[Path, Path, Path]:
    """allowed/src (two pages, a link to a folder and one to a file outside, a link to a folder
    inside the allowed root but outside the source), allowed/shared, and outside/ (platypus)."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    write(outside / "secret.md", "# Secret\n\nplatypus outside the allowed root\n")
    src = copy_pages(allowed / "src", SMALL_PAGES[:2])
    write(allowed / "shared" / "kept.md", "# Shared\n\nwombat inside the allowed root\n")
    os.symlink(outside, src / "escape")
    os.symlink(outside / "secret.md", src / "secret-link.md")
    os.symlink(allowed / "shared", src / "shared-link")
    return allowed, src, outside


def texts(home: Path, kb: str) -> str:
    return "\n".join(r["text"] for r in kb_rows(home, kb))


# ---- item 1: follow_links stays inside the allowed roots ---------------------------------------------
def test_follow_links_over_http_follows_only_links_that_stay_inside_an_allowed_root(servers, allowed):
    root, src, outside = allowed
    s = servers(allow_roots=[str(root)])
    with httpx.Client(base_url=s.url, timeout=60) as c:
        job_id = start_job(c, [src], kb="links", follow_links=True)
        final = wait_status(c, job_id, {"completed", "failed"})
        assert final["status"] == "completed", final
        errors = {os.path.basename(e["path"]): e for e in final["metrics"]["document_errors"]}
        assert set(errors) == {"escape", "secret-link.md"}, errors
        assert {e["kind"] for e in errors.values()} == {"outside_allowed_root"}
        assert all(e["phase"] == "loading" and "--allow-root" in e["message"] for e in errors.values())
        hits = c.get(f"{API}/kb/links/search", params={"q": "platypus outside", "k": 20, "mode": "text"}).json()
        assert not any("platypus" in h["text"] for h in hits), hits
        config = c.get(f"{API}/jobs/{job_id}").json()["config"]
        assert config["allowed_roots"] == [str(root.resolve())] and config["follow_links"] is True
    held = texts(s.service.home.root, "links")
    assert "platypus" not in held
    assert "wombat inside the allowed root" in held  # followed: the link's target stays inside an allowed root


def test_a_post_cannot_set_its_own_allowed_roots(servers, allowed):
    root, src, outside = allowed
    s = servers(allow_roots=[str(src)])
    with httpx.Client(base_url=s.url, timeout=30) as c:
        body = {"sources": [str(src)], "embedder": "fake", "allowed_roots": [str(outside)]}  # a wider root
        r = c.post(f"{API}/kb/k/jobs", json=body)
        assert r.status_code == 422 and assert_documented_error(r)["error"] == "invalid_input"
        assert c.get(f"{API}/jobs").json() == []


# ---- item 2: every pass, not only the POST ------------------------------------------------------------
class _KbHeld:
    """The knowledge base's writer lock, held here: a job of the server on it waits as pending."""

    def __init__(self, server: ThreadServer, kb: str) -> None:
        from kbingest.pipeline.jobstore import queue

        _ = server.service.store  # the home, made
        self.lock = queue.try_kb_lock(server.service.home, kb)
        assert self.lock is not None

    def release(self) -> None:
        self.lock.release()


def swap_for_link(folder: Path, target: Path) -> None:
    folder.rename(folder.with_name(folder.name + ".parked"))
    os.symlink(target, folder)


def wait_pending(c: httpx.Client, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while c.get(f"{API}/jobs/{job_id}").json()["status"]["status"] != "pending":
        assert time.monotonic() < deadline, "the job did not wait for its knowledge base"
        time.sleep(0.05)


def test_a_source_swapped_for_a_link_after_the_post_is_not_walked(servers, allowed):
    root, src, outside = allowed
    s = servers(allow_roots=[str(root)])
    home = s.service.home.root
    with httpx.Client(base_url=s.url, timeout=60) as c:
        held = _KbHeld(s, "swap")
        try:
            job_id = start_job(c, [src], kb="swap")  # checked now: src is inside
            wait_pending(c, job_id)
            swap_for_link(src, outside)  # then the source leads outside
        finally:
            held.release()
        final = wait_status(c, job_id, {"completed", "failed"})
    assert final["status"] == "completed", final
    [error] = final["metrics"]["document_errors"]
    assert error["kind"] == "outside_allowed_root" and error["phase"] == "loading" and error["path"] == str(src)
    assert "platypus" not in texts(home, "swap")


def test_a_resume_is_checked_and_bound_to_this_servers_roots(servers, allowed, tmp_path):
    """A job paused while pending, its source then swapped for a link out: the resume is refused
    (403); swapped after the resume's check, the pass refuses it. A job of the CLI (no roots) that
    the server resumes is bound to the server's roots from then on."""
    root, src, outside = allowed
    s = servers(allow_roots=[str(root)])
    home = s.service.home.root
    with httpx.Client(base_url=s.url, timeout=60) as c:
        held = _KbHeld(s, "res")
        try:
            job_id = start_job(c, [src], kb="res")
            wait_pending(c, job_id)
            assert c.post(f"{API}/jobs/{job_id}/pause").json()["status"] == "paused"
        finally:
            held.release()
        swap_for_link(src, outside)
        r = c.post(f"{API}/jobs/{job_id}/resume")
        assert r.status_code == 403 and assert_documented_error(r)["error"] == "forbidden"
        os.unlink(src)
        (src.with_name("src.parked")).rename(src)
        held = _KbHeld(s, "res")
        try:
            assert c.post(f"{API}/jobs/{job_id}/resume").status_code == 202  # checked: inside
            wait_pending(c, job_id)
            swap_for_link(src, outside)
        finally:
            held.release()
        final = wait_status(c, job_id, {"completed", "failed"})
        assert final["status"] == "completed", final
        assert [e["kind"] for e in final["metrics"]["document_errors"]] == ["outside_allowed_root"]
    assert "platypus" not in texts(home, "res")

    # a job the CLI made (no roots), resumed by the server: bound to the server's roots
    from kbingest.pipeline.models import JobConfig
    from kbingest.pipeline.service import Service

    os.unlink(src)
    (src.with_name("src.parked")).rename(src)
    svc = Service(home)
    cli_job = svc.start(JobConfig(sources=[str(src)], kb="cli", embedder="fake"), job_id="cli-job")
    cli_job.pause()
    assert cli_job.run().status.value == "paused"
    assert svc.job("cli-job").config.allowed_roots is None
    with httpx.Client(base_url=s.url, timeout=60) as c:
        assert c.post(f"{API}/jobs/cli-job/resume").status_code == 202
        assert wait_status(c, "cli-job", {"completed", "failed"})["status"] == "completed"
    assert svc.job("cli-job").config.allowed_roots == [str(root.resolve())]


def test_without_allow_root_a_resume_is_off_too(servers, allowed, tmp_path):
    from kbingest.pipeline.models import JobConfig
    from kbingest.pipeline.service import Service

    _, src, _ = allowed
    s = servers()
    svc = Service(s.service.home.root)
    job = svc.start(JobConfig(sources=[str(src)], kb="cli", embedder="fake"), job_id="cli-job")
    job.pause()
    job.run()
    r = httpx.post(f"{s.url}{API}/jobs/cli-job/resume", timeout=30)
    assert r.status_code == 405 and assert_documented_error(r)["error"] == "jobs_disabled"


def test_every_watch_pass_stays_inside_the_allowed_roots(servers, allowed):
    """A watch job of the server: a link made after its first pass, with --follow-links, is judged
    by the same roots in the pass its change starts (a watch burst's walk)."""
    root, src, outside = allowed
    s = servers(allow_roots=[str(root)])
    with httpx.Client(base_url=s.url, timeout=60) as c:
        job_id = start_job(c, [src], kb="w", follow_links=True, watch=True)
        deadline = time.monotonic() + 60
        while not c.get(f"{API}/jobs/{job_id}").json()["status"]["metrics"].get("last_synced_at"):
            assert time.monotonic() < deadline, "the first pass did not end"
            time.sleep(0.05)
        os.symlink(outside / "secret.md", src / "late-secret.md")
        write(src / "late-inside.md", "# Late\n\nnumbat written after the first pass\n")
        deadline = time.monotonic() + 60
        while True:
            snap = c.get(f"{API}/jobs/{job_id}").json()["status"]
            late = {
                os.path.basename(e["path"]): e["kind"]
                for e in snap["metrics"].get("document_errors") or []
                if os.path.basename(e["path"]).startswith("late")
            }
            if late and "numbat" in texts(s.service.home.root, "w"):
                break
            assert time.monotonic() < deadline, (late, snap["metrics"].get("watch_bursts"))
            time.sleep(0.1)
        assert late == {"late-secret.md": "outside_allowed_root"}
        c.post(f"{API}/jobs/{job_id}/cancel")
    assert "platypus" not in texts(s.service.home.root, "w")


def test_the_walk_and_the_read_stay_inside_the_allowed_roots(allowed):
    """The loader itself (every pass: watch bursts and resumes run it too): a source that resolves
    outside, a followed link out, and a read whose source was swapped after the walk."""
    from kbingest.pipeline.load.loading import (
        Candidate,
        LoadError,
        LoadLimits,
        Problem,
        read_document,
        walk,
        walk_within,
    )

    root, src, outside = allowed
    bound = LoadLimits(follow_links=True, allowed_roots=(str(root.resolve()),))
    items = list(walk([str(src)], bound))
    found = {os.path.basename(i.path) for i in items if isinstance(i, Candidate)}
    problems = {os.path.basename(i.path): i.kind for i in items if isinstance(i, Problem)}
    assert "kept.md" in found and "secret.md" not in found
    assert problems == {"escape": "outside_allowed_root", "secret-link.md": "outside_allowed_root"}
    # the CLI's rules are unchanged: no roots, --follow-links follows them all
    assert "secret.md" in {
        os.path.basename(i.path) for i in walk([str(src)], LoadLimits(follow_links=True)) if isinstance(i, Candidate)
    }
    # a source that is a link out (or a file out) is one problem, nothing listed
    assert [(i.kind) for i in walk([str(src / "escape")], bound)] == ["outside_allowed_root"]
    assert [(i.kind) for i in walk([str(src / "secret-link.md")], bound)] == ["outside_allowed_root"]
    assert [(i.kind) for i in walk_within(str(src / "escape"), [str(src / "escape" / "secret.md")], bound)] == [
        "outside_allowed_root"
    ]
    # swapped between the walk and the read: the read refuses what it opened
    write(outside / src.name / SMALL_PAGES[0], "# Decoy\n\nplatypus behind a swapped source\n")
    cand = next(i for i in walk([str(src)], bound) if isinstance(i, Candidate) and i.path.endswith(SMALL_PAGES[0]))
    swap_for_link(src, outside / src.name)
    with pytest.raises(LoadError) as e:
        read_document(cand, bound)
    assert e.value.kind == "outside_allowed_root"
    assert "platypus" in read_document(cand, LoadLimits(follow_links=True)).text  # the CLI's rules would read it


# ---- item 7: every error is the documented shape -------------------------------------------------------
def test_hostile_bodies_are_documented_errors_not_500(servers, allowed, caplog):
    root, src, _ = allowed
    s = servers(allow_roots=[str(root)])
    bodies = [
        b'{"sources": ["\\u0000"]}',
        b'{"sources": ["' + str(src).encode() + b'\\u0000"]}',
        b'{"sources": ["\\ud800"]}',
        b'{"sources": ["' + str(src).encode() + b'/\\udc80x"]}',
        b'{"sources": ["~nosuchuser/x"]}',
        b'{"sources": ["x"], "\\ud800": 1}',
        b'{"sources": ["' + str(src).encode() + b'"], "model": "\\ud800"}',
        b"[" * 30_000 + b"]" * 30_000,
        b'{"sources": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"sources": ["a"]',
        b"\xff\xfe",
        b"",
    ]
    with httpx.Client(base_url=s.url, timeout=30) as c:
        for body in bodies:
            r = c.post(f"{API}/kb/k/jobs", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code in (400, 403, 422), (body[:60], r.status_code, r.text)
            assert_documented_error(r)
        r = c.put(f"{API}/jobs")
        assert r.status_code == 405 and assert_documented_error(r)["error"] == "method_not_allowed"
        assert c.get(f"{API}/jobs").json() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@st.composite
def json_values(draw, depth: int = 0):
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=20)
    )
    if depth > 2:
        return draw(scalars)
    return draw(
        st.one_of(
            scalars,
            st.lists(json_values(depth + 1), max_size=3),
            st.dictionaries(st.text(max_size=8), json_values(depth + 1), max_size=3),
        )
    )


FIELDS = [
    "sources",
    "job_id",
    "max_tokens",
    "overlap_tokens",
    "batch_size",
    "threads",
    "commit_rows",
    "max_depth",
    "max_files",
    "max_file_bytes",
    "follow_links",
    "watch",
    "model",
    "embedder",
    "until",
    "allowed_roots",
]
# paths: hostile text, NUL and lone surrogates (JSON escapes), and spellings of places in and out of the root
# (those out of it are the fixture's own folder beside the root: the test names nothing of this machine's)
PATH_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["\x00", "\ud800", "\udcff", "~", "~nobody/x", "..", ".", "\n"]),
)


def bodies(root: str):
    paths = st.one_of(
        PATH_TEXT,
        PATH_TEXT.map(lambda p: f"{root}/{p}"),
        st.sampled_from(
            [
                f"{root}/src/../../outside",
                f"{root}/src/escape",
                f"{root}/missing",
                f"{root}/../outside",  # absolute, out of the root
                f"/{root}/../outside",  # the same, spelt with a double slash
            ]
        ),
    )
    settings_ = st.dictionaries(st.sampled_from(FIELDS), json_values(), max_size=4)
    body = st.builds(
        lambda s, rest: {**rest, "sources": s}, st.one_of(st.lists(paths, max_size=4), json_values()), settings_
    )
    raw = st.one_of(
        body.map(lambda b: json.dumps(b).encode()),  # ensure_ascii: lone surrogates as \\udXXX escapes
        json_values().map(lambda v: json.dumps(v).encode()),
        st.integers(0, 3000).map(lambda n: b"[" * n + b"]" * n),
        st.binary(max_size=40),
    )
    return raw


@pytest.fixture(scope="module")
def boundary_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("boundary")
    root = base / "root"
    (root / "src").mkdir(parents=True)  # empty: a body that does start a job reads nothing
    (base / "outside").mkdir()
    os.symlink(base / "outside", root / "src" / "escape")
    s = ThreadServer(
        base / "home", allow_roots=[str(root)], rate_limit=0
    )  # hundreds of bodies a second: the limit is tested in test_serve_plain
    yield s, str(root)
    s.stop()


def test_every_post_body_is_answered_in_the_documented_shape(boundary_server):
    s, root = boundary_server
    with httpx.Client(base_url=s.url, timeout=30) as c:

        @settings(
            max_examples=int(os.environ.get("KBINGEST_HYPOTHESIS_EXAMPLES", "300")),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(raw=bodies(root), kb=st.sampled_from(["k", "b@d", "x" * 200]))
        def prop(raw: bytes, kb: str) -> None:
            r = c.post(f"{API}/kb/{kb}/jobs", content=raw, headers={"Content-Type": "application/json"})
            if r.status_code == 202:  # a valid body under the root: a job (of an empty folder; maybe --watch)
                assert r.json()["status"]["kb_id"] == kb
                c.post(f"{API}/jobs/{r.json()['job_id']}/cancel")  # answered once it has stopped
                return
            assert_documented_error(r)

        prop()


# ---- item 8: the Host rule -----------------------------------------------------------------------------
def raw_get(port: int, target: str, host: str, *extra: str) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall("\r\n".join([f"GET {target} HTTP/1.1", f"Host: {host}", *extra, "", ""]).encode())
        return _Responses(sock).next()


def test_without_a_token_only_requests_addressed_to_this_server_are_answered(servers, allowed):
    root, src, _ = allowed
    s = servers(allow_roots=[str(root)], allow_hosts=["kb.internal"])
    with httpx.Client(base_url=s.url, timeout=60) as c:
        wait_status(c, start_job(c, [src], kb="waf"), {"completed"})
        c.get(f"{API}/kb/waf/status")  # cached: the next poll is answered in the protocol itself
    port = s.port
    for host in (
        "attacker.example",
        f"attacker.example:{port}",
        "localhost.attacker.example",
        "127.0.0.1.nip.io",
        "",
        "a b",
    ):
        for target in (f"{API}/kb/waf/status", f"{API}/jobs", f"{API}/kb/waf/search?q=x", "/healthz", "/metrics"):
            status, headers, body = raw_get(port, target, host)
            assert status == 421 and headers["content-type"] == "application/json", (host, target, status)
            assert json.loads(body)["error"] == "wrong_host" and "--allow-host" in json.loads(body)["message"]
    r = httpx.post(f"{s.url}{API}/kb/waf/jobs", json={"sources": [str(src)]}, headers={"Host": "attacker.example"})
    assert r.status_code == 421 and assert_documented_error(r)["error"] == "wrong_host"
    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        "LOCALHOST",
        "localhost.",
        "[::1]",
        "127.0.0.5",
        "kb.internal",
        f"KB.Internal:{port}",
    ):
        status, _, body = raw_get(port, f"{API}/kb/waf/status", host)
        assert status == 200 and json.loads(body)["status"] == "completed", (host, status, body)
    assert len(s.service.jobs()) == 1  # the refused POST started nothing


def test_with_a_token_the_host_is_not_checked(servers, allowed):
    root, _, _ = allowed
    s = servers(token="t", allow_roots=[str(root)])
    status, _, body = raw_get(s.port, f"{API}/jobs", "attacker.example", "Authorization: Bearer t")
    assert status == 200 and json.loads(body) == []
    assert raw_get(s.port, f"{API}/jobs", "attacker.example")[0] == 401


def test_serve_applies_the_host_rule_on_every_connection(tmp_path, allowed):
    """`kbingest serve` as a user runs it (one process): a fresh connection each, the Host rule holds."""
    root, src, _ = allowed
    s = ProcessServer(tmp_path / "home", "--allow-root", str(root), "--allow-host", "kb.internal")
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            wait_status(c, start_job(c, [src], kb="waf"), {"completed"})
        for _ in range(3):
            status, _, body = raw_get(s.port, f"{API}/kb/waf/status", "attacker.example")
            assert status == 421 and json.loads(body)["error"] == "wrong_host"
            for host in (f"127.0.0.1:{s.port}", "kb.internal", "localhost"):
                status, _, body = raw_get(s.port, f"{API}/kb/waf/status", host)
                assert status == 200 and json.loads(body)["status"] == "completed", (host, body)
    finally:
        s.stop()


def test_an_allow_host_that_is_not_a_host_name_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    from conftest import REPO
    from live_server import free_port

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kbingest",
            "--home",
            str(tmp_path / "h"),
            "serve",
            "--port",
            str(free_port()),
            "--allow-host",
            "a,b",
        ],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "--allow-host a,b: not a host name" in r.stderr and "Traceback" not in r.stderr
