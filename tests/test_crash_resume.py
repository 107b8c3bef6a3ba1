"""Crash safety (issue 4): kill the process at any instant, start it again, and the knowledge base
ends exactly as if nothing had happened.

Everything here runs the CLI in subprocesses, as a user (or a supervisor restarting it) would,
with the fake embedder slowed by KBINGEST_FAKE_DELAY so that kills land mid-run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, WAF, run_cli

KB = "k"
N_PAGES = 64  # documents in the chaos corpus (>= 60)
KILLS = 20
CHAOS_SEED = 20240611
FAKE_DELAY = 0.008  # seconds per chunk: ~1700 chunks -> ~14 s of embedding in all
COMMIT_ROWS = 16  # about one commit per document: many commits to land kills around


# ---- helpers ----------------------------------------------------------------------------------
def waf_pages(n: int) -> list[str]:
    """The first n pages of the waf corpus, in a stable order (relative paths)."""
    return sorted(str(p.relative_to(WAF)) for p in WAF.rglob("*.md"))[:n]


def copy_corpus(dest: Path, n: int) -> Path:
    for rel in waf_pages(n):
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(WAF / rel, out)
    return dest


def table_rows(home: Path) -> list[tuple[str, str]]:
    """(id, doc_id) of every row, read with a plain LanceDB client as the contract allows."""
    import lancedb

    db = lancedb.connect(str(home / "lancedb"))
    t = db.open_table(KB).to_arrow().select(["id", "doc_id"])
    return list(zip(t["id"].to_pylist(), t["doc_id"].to_pylist()))


def ids_by_doc(rows: list[tuple[str, str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for i, d in rows:
        out.setdefault(d, set()).add(i)
    return out


def kb_ids(home: Path) -> list[str]:
    from kbingest.pipeline.kb.table import KnowledgeBase
    from kbingest.pipeline.paths import Home

    return KnowledgeBase(Home(home), KB).ids()


def reference_run(src: Path, home: Path) -> dict:
    """A clean, uninterrupted run in its own home: the ids every crashed run must end with."""
    r = run_cli("ingest", str(src), "--kb", KB, "--batch", "--embedder", "fake", home=home)
    assert r.returncode == 0, r.stderr
    rows = table_rows(home)
    ids = [i for i, _ in rows]
    assert len(ids) == len(set(ids)) > 0
    last = json.loads(r.stdout.splitlines()[-1])
    return {"ids": set(ids), "count": len(ids), "by_doc": ids_by_doc(rows), "metrics": last["metrics"]}


class Segment:
    """One process of the CLI, its stdout JSON lines read as they come (with their arrival time)."""

    def __init__(self, args: list[str], home: Path, env: dict, log_dir: Path, name: str) -> None:
        e = dict(os.environ)
        e.update(env)
        self.err_path = log_dir / f"{name}.stderr"
        self._err = open(self.err_path, "w")
        self.p = subprocess.Popen(
            [sys.executable, "-m", "kbingest", "--home", str(home), *args],
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            env=e,
            cwd=str(REPO),
        )
        self.lines: list[dict] = []
        self.times: list[float] = []
        self.first = threading.Event()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.p.stdout:
            if not raw.strip():
                continue
            d = json.loads(raw)
            with self._cond:
                self.lines.append(d)
                self.times.append(time.monotonic())
                self._cond.notify_all()
            self.first.set()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pred, timeout: float, start: int = 0) -> bool:
        """Wait until a line (from index start on) satisfies pred (True), or the process ended or
        the timeout passed (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if any(pred(d) for d in self.lines[start:]):
                    return True
                if self.p.poll() is not None and not self._reader.is_alive():
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))

    def kill(self) -> None:
        os.kill(self.p.pid, signal.SIGKILL)
        self.finish(30)

    def finish(self, timeout: float) -> int:
        rc = self.p.wait(timeout)
        self._reader.join(10)
        self._err.close()
        return rc

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def running_phases(self, resumed: bool) -> set[str]:
        """Phases shown running by the last line this process printed. A resumed process's first
        line is the stored snapshot of the process before it: it says nothing about this one."""
        with self._cond:
            lines = list(self.lines)
        if resumed and len(lines) < 2:
            return set()
        if not lines:
            return set()
        return {p["name"] for p in lines[-1]["phase_details"] if p["status"] == "running"}


def _indexed(d: dict) -> int:
    """Chunks the table holds by this line: indexed now, or found indexed and skipped."""
    return next(p["items_processed"] for p in d["phase_details"] if p["name"] == "indexing")


def assert_table_consistent(home: Path, ref: dict) -> tuple[int, int]:
    """No duplicate id, nothing unknown, and every document in the table complete (all or none of
    its chunks): a document's chunks reach LanceDB in one commit. Returns (docs, rows)."""
    rows = table_rows(home)
    ids = [i for i, _ in rows]
    dup = [i for i, n in Counter(ids).items() if n > 1]
    assert not dup, f"duplicate ids in the table: {dup[:5]}"
    assert set(ids) <= ref["ids"], "rows the clean run does not have"
    for doc, got in ids_by_doc(rows).items():
        assert got == ref["by_doc"][doc], f"document {doc} is half-written: {len(got)}/{len(ref['by_doc'][doc])}"
    return len(ids_by_doc(rows)), len(ids)


# ---- 1. SIGKILL at 20 random instants ---------------------------------------------------------
@pytest.mark.timeout(480)  # ~2-3.5 min on 2 cores; a loaded machine must not turn it into a false failure
def test_sigkill_at_random_instants_then_resume_equals_clean_run(tmp_path):
    started = time.monotonic()
    src = copy_corpus(tmp_path / "src", N_PAGES)
    assert sum(1 for _ in src.rglob("*.md")) >= 60
    ref = reference_run(src, tmp_path / "ref-home")
    n_chunks = ref["count"]

    h = tmp_path / "home"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {"KBINGEST_FAKE_DELAY": str(FAKE_DELAY)}
    rng = random.Random(CHAOS_SEED)
    # The instants are spread over the whole run, measured in work done (wall time would bunch
    # them at the start, as each restart costs seconds of start-up and loses the work in flight):
    # a process is killed a random fraction of a second after the chunks in the table reach its
    # seeded random share of the corpus. A few kills land instead while a process is starting
    # (importing LanceDB, opening the table: before any phase runs).
    during_start = set(rng.sample(range(1, KILLS), 3))
    shares = iter(sorted(rng.uniform(0.02, 0.85) for _ in range(KILLS - len(during_start))))

    job_id = None
    kills: list[dict] = []
    for k in range(KILLS):
        resumed = job_id is not None
        args = (
            ["resume", job_id, "--batch"]
            if resumed
            else ["ingest", str(src), "--kb", KB, "--batch", "--embedder", "fake", "--commit-rows", str(COMMIT_ROWS)]
        )
        seg = Segment(args, h, env, logs, f"seg{k:02d}")
        assert seg.first.wait(60), f"no first line from segment {k}: {seg.stderr}"
        job_id = job_id or seg.lines[0]["job_id"]
        assert seg.lines[0]["job_id"] == job_id
        if resumed:  # the first line is the stored job, whose process died: paused, interrupted
            assert seg.lines[0]["status"] == "paused" and "interrupted" in seg.lines[0]["message"], seg.lines[0]
        # the job is running in this process (its own status lines, not the stored snapshot)
        assert seg.wait_for(lambda d: d["status"] == "running" and d["message"].startswith("starting"), 60, start=1), (
            seg.stderr
        )
        if k in during_start:
            time.sleep(rng.uniform(0.0, 0.8))
        else:
            target = int(next(shares) * n_chunks)
            assert seg.wait_for(lambda d: _indexed(d) >= target, 120, start=1), (
                f"segment {k} never reached {target} chunks indexed: {seg.stderr}"
            )
            time.sleep(rng.uniform(0.0, 0.6))
        assert seg.p.poll() is None, f"segment {k} ended before its kill (rc {seg.p.returncode}): {seg.stderr}"
        phases = seg.running_phases(resumed)
        seg.kill()
        assert seg.p.returncode == -signal.SIGKILL

        # the job store opens and knows the job; the job shows as paused, interrupted
        from kbingest.pipeline.jobstore.recovery import open_store
        from kbingest.pipeline.paths import Home

        rec = open_store(Home(h)).get(job_id)
        assert rec is not None
        st = run_cli("status", job_id, "--json", home=h)
        assert st.returncode == 0, st.stderr
        snap = json.loads(st.stdout)
        assert snap["status"] == "paused", snap
        assert "interrupted" in snap["message"], snap["message"]
        docs, rows = assert_table_consistent(h, ref)
        kills.append({"k": k, "phases": sorted(phases), "docs": docs, "rows": rows, "lines": len(seg.lines)})

    ran = Counter(p for kill in kills for p in kill["phases"])
    report = "\n".join(str(kill) for kill in kills)
    for phase in ("loading", "chunking", "embedding", "indexing"):
        assert ran[phase] >= 1, f"no kill landed while {phase} was running:\n{report}"
    # spread over the run: the last kills came late, when most of the corpus was indexed
    assert kills[-1]["rows"] > n_chunks // 2, f"the kills did not reach the end of the run:\n{report}"

    final = Segment(["resume", job_id, "--batch"], h, {}, logs, "final")
    rc = final.finish(120)
    assert rc == 0, final.stderr
    assert final.lines[-1]["status"] == "completed"
    ids = kb_ids(h)
    assert len(ids) == len(set(ids)), "duplicate ids"
    assert set(ids) == ref["ids"]
    assert len(ids) == ref["count"]
    assert_table_consistent(h, ref)
    st = json.loads(run_cli("status", job_id, "--json", home=h).stdout)
    assert st["status"] == "completed" and st["progress"] == 100.0
    print(f"\nchaos: {len(kills)} kills, phases at kill {dict(ran)}, {time.monotonic() - started:.1f} s\n{report}")


# ---- 2. killed between the LanceDB commit and its checkpoint ---------------------------------
@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("commitcrash")
    src = copy_corpus(base / "src", 12)
    return src, reference_run(src, base / "ref-home")


@pytest.mark.parametrize("n", [1, 2])
def test_crash_after_commit_before_checkpoint(tmp_path, small_corpus, n):
    src, ref = small_corpus
    h = tmp_path / "home"
    r = run_cli(
        "ingest",
        str(src),
        "--kb",
        KB,
        "--batch",
        "--embedder",
        "fake",
        "--commit-rows",
        "16",
        home=h,
        env={"KBINGEST_CRASH_AT": f"after_commit:{n}"},
    )
    assert r.returncode == 137, (r.returncode, r.stderr)
    job_id = json.loads(r.stdout.splitlines()[0])["job_id"]
    # the commit is in the table, the checkpoint is not: the store still counts fewer commits
    docs, rows = assert_table_consistent(h, ref)
    assert 0 < docs < len(ref["by_doc"])
    from kbingest.pipeline.jobstore.recovery import open_store
    from kbingest.pipeline.paths import Home

    rec = open_store(Home(h)).get(job_id)
    assert rec is not None and rec.status.metrics.get("commits", 0) < n
    st = json.loads(run_cli("status", job_id, "--json", home=h).stdout)
    assert st["status"] == "paused" and "interrupted" in st["message"]

    res = run_cli("resume", job_id, "--batch", home=h)
    assert res.returncode == 0, res.stderr
    ids = kb_ids(h)
    assert len(ids) == len(set(ids)), "duplicate ids"
    assert set(ids) == ref["ids"] and len(ids) == ref["count"]
    m = json.loads(res.stdout.splitlines()[-1])["metrics"]
    # what the crashed commit wrote is trusted, not embedded again
    p = m["this_pass"]  # the resumed pass's own counts (the job's are totals across passes)
    assert p["documents_skipped"] == docs
    assert p["chunks_embedded"] == ref["count"] - rows
    assert p["documents_added"] == len(ref["by_doc"]) - docs


# ---- 3. a damaged job store ------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "garbage", "emptied"])
def test_damaged_job_store_is_rebuilt_from_lancedb(tmp_path, pages, status_validator, damage):
    h = tmp_path / "home"
    r = run_cli("ingest", str(pages), "--kb", KB, "--batch", "--embedder", "fake", home=h)
    assert r.returncode == 0, r.stderr
    before = sorted(kb_ids(h))
    store = h / "jobs.json"
    raw = store.read_bytes()
    store.write_bytes(
        {"truncated": raw[: len(raw) // 2], "garbage": b"\x00\xff{{not json at all", "emptied": b""}[damage]
    )

    j = run_cli("jobs", "--json", home=h)
    assert j.returncode == 0, j.stderr
    assert "Traceback" not in j.stderr
    assert "did not parse" in j.stderr and "rebuilt" in j.stderr, j.stderr
    jobs = json.loads(j.stdout)
    for d in jobs:
        status_validator.validate(d)
    rec = [d for d in jobs if d["kb_id"] == KB]
    assert len(rec) == 1 and rec[0]["status"] == "completed", jobs
    assert rec[0]["metrics"]["chunks_indexed"] == len(before)
    assert list(h.glob("jobs.json.corrupt-*")), "the damaged store is kept aside"

    # recovered once: the next command finds a sound store and says nothing about it
    st = run_cli("status", "--kb", KB, "--json", home=h)
    assert st.returncode == 0 and json.loads(st.stdout)["status"] == "completed"
    assert "did not parse" not in st.stderr and st.stderr == "", st.stderr
    # the knowledge base is untouched, and a new run over it finds everything already indexed
    again = run_cli("ingest", str(pages), "--kb", KB, "--batch", "--embedder", "fake", home=h)
    assert again.returncode == 0, again.stderr
    m = json.loads(again.stdout.splitlines()[-1])["metrics"]
    assert m["chunks_embedded"] == 0 and m["documents_skipped"] == 6
    assert sorted(kb_ids(h)) == before


# ---- 4. a killed job while another job runs in the same home -----------------------------------
@pytest.mark.parametrize("action", ["pause", "cancel"])
def test_killed_job_shows_interrupted_while_another_job_holds_the_home(
    tmp_path, small_corpus, status_validator, action
):
    """A writer lock being held says nothing about a job whose own process died: while another
    job runs, the dead one shows paused (interrupted), `pause`/`cancel` of it answer at once
    without touching the running one, and it resumes once the home is free."""
    src, ref = small_corpus
    h = tmp_path / "home"
    logs = tmp_path / "logs"
    logs.mkdir()
    slow = {"KBINGEST_FAKE_DELAY": "0.02"}
    a = Segment(
        ["ingest", str(src), "--kb", KB, "--batch", "--embedder", "fake", "--commit-rows", "16"], h, slow, logs, "a"
    )
    assert a.wait_for(lambda d: _indexed(d) > 0, 90, start=1), a.stderr
    job_a = a.lines[0]["job_id"]
    a.kill()

    b = Segment(
        ["ingest", str(src), "--kb", "other", "--batch", "--embedder", "fake", "--commit-rows", "16"],
        h,
        {"KBINGEST_FAKE_DELAY": "0.1"},
        logs,
        "b",
    )  # slow: it must outlast the checks below
    try:
        assert b.wait_for(lambda d: _indexed(d) > 0, 90, start=1), b.stderr
        job_b = b.lines[0]["job_id"]
        st = run_cli("status", job_a, "--json", home=h)
        assert st.returncode == 0, st.stderr
        snap = json.loads(st.stdout)
        status_validator.validate(snap)
        assert snap["status"] == "paused" and "interrupted" in snap["message"], snap
        jobs = {d["job_id"]: d for d in json.loads(run_cli("jobs", "--json", home=h).stdout)}
        assert jobs[job_a]["status"] == "paused" and jobs[job_b]["status"] == "running"

        c = run_cli(action, job_a, "--timeout", "20", home=h)
        assert c.returncode == 0, (c.returncode, c.stderr)
        want = "paused" if action == "pause" else "cancelled"
        assert json.loads(run_cli("status", job_a, "--json", home=h).stdout)["status"] == want
        assert b.p.poll() is None, "job b should still be running"
        from kbingest.pipeline.jobstore.recovery import open_store
        from kbingest.pipeline.paths import Home

        assert open_store(Home(h)).get(job_b).control is None, "the request went to the running job"
    finally:
        if b.p.poll() is None:
            b.p.send_signal(signal.SIGTERM)
        b.finish(60)
    res = run_cli("resume", job_a, "--batch", home=h)
    if action == "cancel":
        assert res.returncode == 2, res.stderr
        assert_table_consistent(h, ref)
        return
    assert res.returncode == 0, res.stderr
    ids = kb_ids(h)
    assert len(ids) == len(set(ids)) and set(ids) == ref["ids"]


# ---- 5. killed while replacing edited documents ------------------------------------------------
def test_crash_while_replacing_edited_documents_leaves_old_or_new_never_both(tmp_path):
    """Every page edited, then the process dies right after the first commit of the new versions:
    each document in the table is wholly its old version or wholly its new one (its stale chunks
    went in the same commit), and the resume ends exactly as a clean run over the edited pages."""
    src = copy_corpus(tmp_path / "src", 8)
    h = tmp_path / "home"
    old = reference_run(src, h)
    for p in sorted(src.rglob("*.md")):
        p.write_text(p.read_text() + "\n\n## Revision\n\nEdited after the first ingest.\n")
    new = reference_run(src, tmp_path / "ref-home")
    assert not (old["ids"] & new["ids"])

    r = run_cli(
        "ingest",
        str(src),
        "--kb",
        KB,
        "--batch",
        "--embedder",
        "fake",
        "--commit-rows",
        "16",
        home=h,
        env={"KBINGEST_CRASH_AT": "after_commit:1"},
    )
    assert r.returncode == 137, r.stderr
    job_id = json.loads(r.stdout.splitlines()[0])["job_id"]
    rows = table_rows(h)
    ids = [i for i, _ in rows]
    assert len(ids) == len(set(ids)), "duplicate ids"
    kinds = Counter()
    for doc, got in ids_by_doc(rows).items():
        if got == new["by_doc"][doc]:
            kinds["new"] += 1
        else:
            assert got == old["by_doc"][doc], f"document {doc} mixes versions or is half-written"
            kinds["old"] += 1
    assert kinds["new"] >= 1 and kinds["old"] >= 1 and sum(kinds.values()) == len(new["by_doc"]), kinds

    res = run_cli("resume", job_id, "--batch", home=h)
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout.splitlines()[-1])["metrics"]
    p = m["this_pass"]
    assert p["documents_skipped"] == kinds["new"] and p["documents_replaced"] == kinds["old"]
    ids = kb_ids(h)
    assert len(ids) == len(set(ids)) and set(ids) == new["ids"]
