"""Issue 5: bad input never stops the line.

A folder holding every kind of bad file next to good pages is ingested headless, as a user would
(a subprocess, the fake embedder): the job completes with exit 3, every good page is indexed and
every bad file is listed with a precise reason, in every place a person or a script looks.
Pathological Markdown goes through the whole engine within stated bounds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, SMALL_PAGES, WAF, copy_pages, run_cli

FAKE = ("--embedder", "fake")
ONE_GB_KB = 1024 * 1024  # ru_maxrss is in KiB on Linux

# Runs the CLI exactly like `python -m kbingest`, except that os.open refuses files named *noperm.md with
# EACCES: the tests run as root, for whom chmod 000 changes nothing.
NOPERM_LAUNCHER = """
import os, sys
_real_open = os.open
def _open(path, *a, **k):
    if os.fsdecode(path).endswith("noperm.md"):
        raise PermissionError(13, "Permission denied", path)
    return _real_open(path, *a, **k)
os.open = _open
from kbingest.app.cli import main
sys.exit(main(sys.argv[1:]))
"""


class Run:
    def __init__(self, returncode: int, stdout: str, stderr: str, maxrss_kb: int, seconds: float) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr
        self.maxrss_kb, self.seconds = maxrss_kb, seconds

    @property
    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    @property
    def final(self) -> dict:
        return self.lines[-1]


# Linux carries a process's peak RSS into the ru_maxrss of a child it execs (pipeline/rss.py), and a
# pytest worker that has run other tests may be larger than the CLI it measures (CI once saw 1,031 MiB
# for a 496 MiB run). So a small process starts the CLI: its own peak is ~10 MiB, and wait4 there
# gives the CLI's own peak (and its reaped children's: the compaction child), written to fd ARGV[1].
SPAWNER = """
import os, sys
fd = int(sys.argv[1])
os.set_inheritable(fd, False)
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
os.write(fd, b"%d %d" % (os.waitstatus_to_exitcode(status), usage.ru_maxrss))
"""


def run_measured(
    *args: str, home: Path, timeout: float = 180, launcher: str | None = None, env: dict | None = None
) -> Run:
    """Run the CLI in a child and measure THAT child's peak RSS with wait4, from a small process in
    between (SPAWNER). A hung child is killed: a FIFO must never make the job hang, so a timeout
    fails the test instead of blocking it."""
    cmd = [sys.executable] + (["-c", launcher] if launcher else ["-m", "kbingest"]) + ["--home", str(home), *args]
    e = dict(os.environ)
    e.update(env or {})
    result_r, result_w = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        p = subprocess.Popen(
            [sys.executable, "-c", SPAWNER, str(result_w), *cmd],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=str(REPO),
            env=e,
            pass_fds=(result_w,),
            start_new_session=True,
        )  # a group: the timeout kills the CLI with it
        os.close(result_w)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            os.killpg(p.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            p.wait()
        finally:
            timer.cancel()
        with os.fdopen(result_r, "rb") as result:
            reported = result.read().split()
        seconds = time.monotonic() - t0
        assert not killed.is_set(), f"kbingest {' '.join(args)} hung: killed after {timeout} s"
        assert p.returncode == 0 and len(reported) == 2, f"the spawner failed: {p.returncode}, {reported}"
        out.seek(0)
        err.seek(0)
        return Run(int(reported[0]), out.read().decode(), err.read().decode(), int(reported[1]), seconds)


def test_the_measured_peak_is_the_clis_not_this_processs(tmp_path):
    """This process made 400 MiB resident: a child it started directly would report at least that
    (ru_maxrss carried across exec); the CLI measured through the spawner reports its own ~100 MiB."""
    ballast = bytearray(400 * 1024 * 1024)
    ballast[::4096] = b"\1" * len(range(0, len(ballast), 4096))  # every page touched
    r = run_measured("jobs", home=tmp_path / "home")
    del ballast
    assert r.returncode == 0, r.stderr
    assert 10 * 1024 < r.maxrss_kb < 250 * 1024, f"{r.maxrss_kb / 1024:.0f} MiB"


def table_rows(home: Path, kb: str) -> list[dict]:
    import lancedb

    t = lancedb.connect(str(home / "lancedb")).open_table(kb)
    return t.search(None).select(["id", "source", "doc_id", "doc_version", "text"]).limit(None).to_list()


def by_source(rows: list[dict]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["source"], set()).add(r["id"])
    return out


# ------------------------------------------------------------------------------ the bad folder

BAD = {  # file name -> the error kind the job must record for it
    "binary.md": "binary",
    "empty.md": "empty",
    "huge.md": "too_large",
    "noperm.md": "permission_denied",
    "dangling.md": "dangling_symlink",
    "loop.md": "symlink_loop",
    "pipe.md": "not_regular_file",
}


def build_bad_folder(root: Path) -> tuple[Path, list[str]]:
    """Good pages, every bad kind next to them; returns (root, absolute paths of the good documents)."""
    copy_pages(root)
    good = [str(root / rel) for rel in SMALL_PAGES]
    (root / "binary.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8)
    (root / "invalid-utf8.md").write_bytes(b"# Caf\xe9 menu\n\nThe caf\xe9 serves \xff\xfe coffee and tea.\n")
    good.append(str(root / "invalid-utf8.md"))
    (root / "empty.md").write_bytes(b"")
    (root / "huge.md").write_bytes(b"word " * (300 * 1024))  # 1.5 MB against --max-file-mb 1
    (root / "noperm.md").write_text("# secret\n\nnobody may read this\n")
    os.chmod(root / "noperm.md", 0)
    os.symlink("no-such-target.md", root / "dangling.md")
    os.symlink("loop.md", root / "loop.md")
    os.mkfifo(root / "pipe.md")
    (root / "notes.md").mkdir()  # a folder named like a document is walked as a folder
    (root / "notes.md" / "inside.md").write_text((WAF / SMALL_PAGES[0]).read_text())
    good.append(str(root / "notes.md" / "inside.md"))
    return root, sorted(good)


@pytest.fixture
def bad_folder(tmp_path) -> tuple[Path, list[str]]:
    return build_bad_folder(tmp_path / "mixed")


def test_bad_files_never_stop_the_line(tmp_path, bad_folder, status_validator):
    root, good = bad_folder
    home = tmp_path / "h"
    r = run_measured(
        "ingest",
        str(root),
        "--kb",
        "mixed",
        "--batch",
        "--max-file-mb",
        "1",
        *FAKE,
        home=home,
        launcher=NOPERM_LAUNCHER,
        timeout=120,
    )

    # completed, exit 3, schema-valid JSON lines, no traceback, bounded memory
    assert r.returncode == 3, (r.returncode, r.stderr)
    for line in r.lines:
        status_validator.validate(line)
    final = r.final
    assert final["status"] == "completed" and final["phase"] == "completed"
    assert "Traceback" not in r.stderr, r.stderr
    assert r.maxrss_kb < ONE_GB_KB, f"peak RSS {r.maxrss_kb} KiB"

    # every good page indexed, nothing of a bad one
    rows = table_rows(home, "mixed")
    assert sorted(by_source(rows)) == good
    m = final["metrics"]
    assert m["documents_added"] == len(good)
    assert m["chunks_indexed"] == len(rows)
    assert len({r_["id"] for r_ in rows}) == len(rows)

    # every bad file listed with its precise reason in the final line's metrics
    errors = {os.path.basename(e["path"]): e for e in m["document_errors"]}
    assert {k: e["kind"] for k, e in errors.items()} == BAD
    assert m["documents_failed"] == len(BAD)
    assert all(e["phase"] == "loading" and e["message"] for e in errors.values())
    assert "1048576" in errors["huge.md"]["message"]  # says the size and the limit
    assert "no-such-target.md" in errors["dangling.md"]["message"]
    assert "FIFO" in errors["pipe.md"]["message"]
    assert "permission denied" in errors["noperm.md"]["message"]

    # ... in the loading phase's error
    loading = next(p for p in final["phase_details"] if p["name"] == "loading")
    assert loading["status"] == "completed"
    assert loading["error"].startswith(f"{len(BAD)} document(s) failed")
    for name, kind in BAD.items():
        assert f"{root / name} ({kind})" in loading["error"]

    # ... on stderr (one escaped line each)
    for name, kind in BAD.items():
        assert f"loading: {root / name}: {kind}: " in r.stderr

    # the invalid UTF-8 page is indexed, decoded with replacement and flagged with a warning
    assert m["document_warnings"] == 1
    assert m["document_warning_list"] == [
        {"path": str(root / "invalid-utf8.md"), "warning": "invalid UTF-8 replaced at 4 places"}
    ]
    text = " ".join(x["text"] for x in rows if x["source"].endswith("invalid-utf8.md"))
    assert "Caf\ufffd" in text and "\ufffd\ufffd coffee" in text
    assert "warning: " + str(root / "invalid-utf8.md") in r.stderr

    # ... and in `kbingest status JOB` human output
    job_id = final["job_id"]
    st = run_cli("status", job_id, home=home)
    assert st.returncode == 0, st.stderr
    for name, kind in BAD.items():
        assert f"failed: loading: {root / name}: {kind}: " in st.stdout
    assert "warning: " + str(root / "invalid-utf8.md") + ": invalid UTF-8" in st.stdout
    stj = json.loads(run_cli("status", job_id, "--json", home=home).stdout)
    status_validator.validate(stj)
    assert stj["metrics"]["document_errors"] == m["document_errors"]


def test_resume_after_fixing_one_file_ingests_exactly_that_file(tmp_path, bad_folder):
    root, good = bad_folder
    home = tmp_path / "h"
    r = run_measured(
        "ingest",
        str(root),
        "--kb",
        "mixed",
        "--batch",
        "--max-file-mb",
        "1",
        *FAKE,
        home=home,
        launcher=NOPERM_LAUNCHER,
    )
    assert r.returncode == 3, r.stderr
    job_id = r.final["job_id"]
    before = {x["id"]: x for x in table_rows(home, "mixed")}

    (root / "binary.md").write_text("# Fixed\n\nThis page is valid text now.\n")
    r2 = run_measured("resume", job_id, "--batch", home=home, launcher=NOPERM_LAUNCHER)
    assert r2.returncode == 3, r2.stderr  # the other bad files are still bad
    m = r2.final["metrics"]
    tp = {"documents_added": 0, "documents_replaced": 0, "documents_removed": 0, **m["this_pass"]}  # the retry's pass
    assert r2.final["job_id"] == job_id and r2.final["status"] == "completed"
    assert tp["documents_added"] == 1 and m["documents_added"] == len(good) + 1  # the job's total: both passes
    assert tp["documents_replaced"] == 0 and tp["documents_removed"] == 0
    assert tp["documents_skipped"] == len(good)
    assert "binary.md" not in {os.path.basename(e["path"]) for e in m["document_errors"]}
    assert m["documents_failed"] == len(BAD) - 1

    after = {x["id"]: x for x in table_rows(home, "mixed")}
    added = set(after) - set(before)
    assert added and {after[i]["source"] for i in added} == {str(root / "binary.md")}
    assert set(before) <= set(after)  # the chunks of every other document are untouched
    for i, row in before.items():
        assert after[i]["doc_version"] == row["doc_version"] and after[i]["text"] == row["text"]


def test_missing_source_is_a_usage_error_and_creates_no_job(tmp_path, pages):
    home = tmp_path / "h"
    r = run_cli("ingest", str(pages), str(tmp_path / "no-such-folder"), "--kb", "docs", "--batch", *FAKE, home=home)
    assert r.returncode == 2
    assert r.stdout == ""  # no JSON line: the job never existed
    assert r.stderr.startswith("kbingest: source not found: ") and "no-such-folder" in r.stderr
    assert "Traceback" not in r.stderr
    jobs = run_cli("jobs", "--json", home=home)
    assert jobs.returncode == 0 and json.loads(jobs.stdout) == []
    assert not (home / "lancedb").exists()


def test_permission_denied_vanished_file_in_process(tmp_path, home, monkeypatch):
    """Two failures that need a hand in the process: a file that cannot be opened (the tests run as
    root), and one that disappears between the walk and the read."""
    from kbingest.pipeline.job.engine import IngestJob
    from kbingest.pipeline.jobstore.recovery import open_store
    from kbingest.pipeline.kb.table import KnowledgeBase
    from kbingest.pipeline.load import loading as loading_mod  # the loading stage reads through it
    from kbingest.pipeline.models import JobConfig

    src = copy_pages(tmp_path / "docs")
    victim = src / SMALL_PAGES[1]
    locked = src / "locked.md"
    locked.write_text("# Locked\n\ncannot be read\n")
    store = open_store(home)
    config = JobConfig(sources=[str(src)], kb="docs", embedder="fake")
    snap = IngestJob.create(home, store, config).run()
    assert snap.metrics["documents_added"] == len(SMALL_PAGES) + 1

    real_open, real_read = os.open, loading_mod.read_raw

    def refusing_open(path, *a, **k):
        if os.path.basename(os.fsdecode(path)) == locked.name:  # by path, or by name beneath its folder
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *a, **k)

    def vanishing_read(cand, limits):
        if cand.path == str(victim):
            os.unlink(victim)  # deleted after the walk listed it, before the read
        return real_read(cand, limits)

    locked.write_text("# Locked\n\nchanged, and still cannot be read\n")
    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(loading_mod, "read_raw", vanishing_read)
    job = IngestJob.create(home, store, config)
    snap = job.run()
    monkeypatch.undo()

    assert snap.status.value == "completed"
    kinds = {os.path.basename(e.path): e.kind for e in job.errors}
    assert kinds == {"locked.md": "permission_denied", os.path.basename(victim): "vanished"}
    assert snap.metrics["documents_removed"] == 1  # the vanished document's chunks are gone
    sources = {s.source for s in KnowledgeBase(home, "docs").stored_docs().values()}
    assert str(victim) not in sources
    assert str(locked) in sources  # unreadable now: what it had indexed stays


# ------------------------------------------------------------------------- pathological Markdown


def _one_line_10mb(p: Path) -> None:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    line = " ".join(words[(i * 7919) % 10] for i in range(1_900_000))
    p.write_text(line[: 10 * 1024 * 1024])


def _nested_5000(p: Path) -> None:
    # 5,000 levels of list on one line, then 1,500 levels by indentation (deeper would be a 25 MB file)
    p.write_text("- " * 5000 + "deepest item\n\n" + "".join("  " * i + f"- item {i}\n" for i in range(1500)))


def _table_100k(p: Path) -> None:
    rows = ["| " + " | ".join(f"h{j}" for j in range(10)) + " |", "|" + "---|" * 10]
    rows += ["| " + " | ".join(f"r{i}c{j}" for j in range(10)) + " |" for i in range(10_000)]
    p.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize(
    "make,bound_s",
    [
        pytest.param(_one_line_10mb, 90, id="10MB-single-line"),
        pytest.param(_nested_5000, 60, id="5000-nested-lists"),
        pytest.param(_table_100k, 60, id="table-100k-cells"),
    ],
)
def test_pathological_markdown_through_the_engine(tmp_path, make, bound_s):
    src = copy_pages(tmp_path / "docs", SMALL_PAGES[:1])
    make(src / "patho.md")
    home = tmp_path / "h"
    r = run_measured("ingest", str(src), "--kb", "patho", "--batch", *FAKE, home=home, timeout=bound_s * 2)
    assert r.seconds < bound_s, f"took {r.seconds:.1f} s, bound {bound_s} s"
    assert r.maxrss_kb < ONE_GB_KB, f"peak RSS {r.maxrss_kb} KiB"
    assert "Traceback" not in r.stderr
    final = r.final
    assert final["status"] == "completed"
    m = final["metrics"]
    sources = by_source(table_rows(home, "patho"))
    assert str(src / SMALL_PAGES[0]) in sources  # the good page is never held up
    if r.returncode == 0:  # indexed whole
        assert str(src / "patho.md") in sources
        assert m["documents_added"] == 2
    else:  # or refused with a reason
        assert r.returncode == 3
        assert [e["path"] for e in m["document_errors"]] == [str(src / "patho.md")]
        assert m["document_errors"][0]["message"]
