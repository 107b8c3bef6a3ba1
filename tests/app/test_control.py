"""Steering a `--batch` job from outside, as a user would: `kbingest pause` / `cancel` from another
shell, SIGINT / SIGTERM, a second engine in the same home, and the JSON Lines rules."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, WAF, run_cli

KB = "k"
N_PAGES = 16
DELAY = {"KBINGEST_FAKE_DELAY": "0.02"}  # ~10 s of embedding for the whole corpus


# ---- helpers ----------------------------------------------------------------------------------
def table_rows(home: Path) -> list[tuple[str, str]]:
    import lancedb

    try:
        table = lancedb.connect(str(home / "lancedb")).open_table(KB)
    except (ValueError, FileNotFoundError):  # no table yet
        return []
    t = table.to_arrow().select(["id", "doc_id"])
    return list(zip(t["id"].to_pylist(), t["doc_id"].to_pylist()))


def by_doc(rows) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for i, d in rows:
        out.setdefault(d, set()).add(i)
    return out


def assert_whole_documents(home: Path, ref: dict) -> tuple[int, int]:
    """No duplicate id, and every document in the table has all of its chunks."""
    rows = table_rows(home)
    ids = [i for i, _ in rows]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for d, got in by_doc(rows).items():
        assert got == ref["by_doc"][d], f"document {d} half-written"
    return len(by_doc(rows)), len(ids)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """N_PAGES pages and the clean run's id set (its own home)."""
    base = tmp_path_factory.mktemp("control")
    src = base / "src"
    for rel in sorted(str(p.relative_to(WAF)) for p in WAF.rglob("*.md"))[:N_PAGES]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(WAF / rel, src / rel)
    r = run_cli("ingest", str(src), "--kb", KB, "--batch", "--embedder", "fake", home=base / "ref-home")
    assert r.returncode == 0, r.stderr
    rows = table_rows(base / "ref-home")
    return src, {"ids": {i for i, _ in rows}, "count": len(rows), "by_doc": by_doc(rows)}


class Batch:
    """A `--batch` process, its JSON lines read as they come."""

    def __init__(self, args: list[str], home: Path, tmp: Path, env: dict | None = None, name: str = "batch"):
        e = dict(os.environ)
        e.update(env or {})
        self.err_path = tmp / f"{name}.stderr"
        self._err = open(self.err_path, "w")
        self.started = time.monotonic()
        self.p = subprocess.Popen(
            [sys.executable, "-m", "kbingest", "--home", str(home), *args],
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            env=e,
            cwd=str(REPO),
        )
        self.raw: list[str] = []
        self.times: list[float] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            with self._cond:
                self.raw.append(line)
                self.times.append(time.monotonic())
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def lines(self) -> list[dict]:
        with self._cond:
            return [json.loads(x) for x in self.raw]

    @property
    def job_id(self) -> str:
        assert self.wait_for(lambda d: True, 60), self.stderr
        return self.lines[0]["job_id"]

    def wait_for(self, pred, timeout: float = 90) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if any(pred(json.loads(x)) for x in self.raw):
                    return True
                if (self.p.poll() is not None and not self._reader.is_alive()) or time.monotonic() > deadline:
                    return False
                self._cond.wait(0.05)

    def wait_indexing(self, min_chunks: int = 1) -> None:
        ok = self.wait_for(lambda d: d["status"] == "running" and d["metrics"].get("chunks_indexed", 0) >= min_chunks)
        assert ok, f"the job never indexed anything: rc={self.p.poll()} {self.stderr}"

    def finish(self, timeout: float = 120) -> int:
        rc = self.p.wait(timeout)
        self._reader.join(10)
        self._err.close()
        self.ended = time.monotonic()
        return rc

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()


def ingest_batch(src: Path, home: Path, tmp: Path, env: dict | None = DELAY, name: str = "batch") -> Batch:
    return Batch(
        ["ingest", str(src), "--kb", KB, "--batch", "--embedder", "fake", "--commit-rows", "32"], home, tmp, env, name
    )


def check_json_lines(b: Batch, validator, first_status: str, last_status: str) -> list[dict]:
    """The JSON Lines rules of contracts/CLI.md for one process."""
    assert b.raw and all(x.endswith("\n") for x in b.raw)
    lines = b.lines
    for d in lines:
        validator.validate(d)
    assert {d["job_id"] for d in lines} == {lines[0]["job_id"]}
    assert lines[0]["status"] == first_status, lines[0]
    assert lines[-1]["status"] == last_status, lines[-1]
    prog = [d["progress"] for d in lines]
    assert all(a <= b_ for a, b_ in zip(prog, prog[1:])), f"progress went backwards: {prog}"
    return lines


def status_json(home: Path, job_id: str) -> dict:
    r = run_cli("status", job_id, "--json", home=home)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def resume_to_completion(home: Path, job_id: str, ref: dict, validator) -> dict:
    r = run_cli("resume", job_id, "--batch", home=home)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    for d in lines:
        validator.validate(d)
    assert lines[0]["status"] == "paused" and lines[-1]["status"] == "completed"
    prog = [d["progress"] for d in lines]
    assert prog == sorted(prog), prog
    rows = table_rows(home)
    ids = [i for i, _ in rows]
    assert len(ids) == len(set(ids)), "duplicate ids"
    assert set(ids) == ref["ids"] and len(ids) == ref["count"]
    return lines[-1]


# ---- tests ------------------------------------------------------------------------------------
def test_pause_from_another_shell_then_resume(tmp_path, corpus, status_validator):
    src, ref = corpus
    h = tmp_path / "home"
    b = ingest_batch(src, h, tmp_path)
    job = b.job_id
    b.wait_indexing()
    t0 = time.monotonic()
    r = run_cli("pause", job, home=h, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "paused" in r.stderr and "Traceback" not in r.stderr
    # it returned once the job had paused: the batch process is stopping or gone, its record says paused
    from kbingest.pipeline.jobstore.recovery import open_store
    from kbingest.pipeline.paths import Home

    assert open_store(Home(h)).get(job).status.status.value == "paused"
    assert b.finish(60) == 130, b.stderr
    assert time.monotonic() - t0 < 60
    assert f"kbingest resume {job}" in b.stderr
    check_json_lines(b, status_validator, "pending", "paused")

    # the checkpoint is saved, and agrees with the table: whole documents, counted
    rec = open_store(Home(h)).get(job)
    assert rec.status.status.value == "paused" and "checkpoint saved" in rec.status.message
    assert rec.control is None and rec.owner_pid is None
    docs, rows = assert_whole_documents(h, ref)
    assert 0 < rows < ref["count"]
    assert rec.status.metrics["chunks_indexed"] == rows
    assert status_json(h, job)["status"] == "paused"

    final = resume_to_completion(h, job, ref, status_validator)
    # job totals count the whole job across the pause (issue 14); the resumed pass has its own block
    assert final["metrics"]["this_pass"]["documents_skipped"] == docs
    assert final["metrics"]["documents_skipped"] == 0  # the documents it skipped were its own work
    assert final["metrics"]["chunks_indexed"] == ref["count"]  # 8 added, 157 chunks: not the last pass's
    assert final["metrics"]["chunks_embedded"] >= ref["count"]  # (the batch in flight at the pause, again)
    assert final["metrics"]["this_pass"]["chunks_embedded"] == ref["count"] - rows  # nothing embedded twice


def test_cancel_from_another_shell_and_resume_is_refused(tmp_path, corpus, status_validator):
    src, ref = corpus
    h = tmp_path / "home"
    b = ingest_batch(src, h, tmp_path)
    job = b.job_id
    b.wait_indexing()
    r = run_cli("cancel", job, home=h, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "cancelled" in r.stderr
    assert b.finish(60) == 4, b.stderr
    check_json_lines(b, status_validator, "pending", "cancelled")
    st = status_json(h, job)
    assert st["status"] == "cancelled"
    assert_whole_documents(h, ref)  # what was indexed stays, whole

    res = run_cli("resume", job, "--batch", home=h)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "cancelled" in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == ""
    assert status_json(h, job)["status"] == "cancelled"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_pauses_with_checkpoint_then_resume_completes(tmp_path, corpus, status_validator, sig):
    src, ref = corpus
    h = tmp_path / "home"
    b = ingest_batch(src, h, tmp_path)
    job = b.job_id
    b.wait_indexing()
    b.p.send_signal(sig)
    assert b.finish(60) == 130, b.stderr
    err = b.stderr
    assert "Traceback" not in err
    assert f"kbingest resume {job}" in err, err
    check_json_lines(b, status_validator, "pending", "paused")
    st = status_json(h, job)
    assert st["status"] == "paused" and "interrupted" not in st["message"]
    docs, rows = assert_whole_documents(h, ref)
    assert st["metrics"]["chunks_indexed"] == rows
    final = resume_to_completion(h, job, ref, status_validator)
    assert final["metrics"]["this_pass"]["documents_skipped"] == docs
    assert final["metrics"]["chunks_indexed"] == ref["count"]  # the whole job, not the last pass


def test_one_writer_per_kb_and_status_while_running(tmp_path, corpus, status_validator):
    src, ref = corpus
    h = tmp_path / "home"
    b = ingest_batch(src, h, tmp_path, env={"KBINGEST_FAKE_DELAY": "0.05"})  # slow: it outlasts the checks
    job = b.job_id
    assert b.wait_for(lambda d: d["status"] == "running")
    b.wait_indexing()

    # one writer per knowledge base (issue 14): another knowledge base runs now; the same one, with
    # --no-wait, is refused in one line (exit 1) and leaves no job behind
    refused = run_cli("ingest", str(src), "--kb", KB, "--batch", "--no-wait", "--embedder", "fake", home=h)
    assert refused.returncode == 1, (refused.returncode, refused.stderr)
    assert job in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr
    assert "Traceback" not in refused.stderr and refused.stdout == ""
    again = run_cli("resume", job, "--batch", home=h)  # nor a second engine on the same job
    assert again.returncode == 2 and "is running" in again.stderr, again.stderr
    jobs = json.loads(run_cli("jobs", "--json", home=h).stdout)
    assert [d["job_id"] for d in jobs] == [job], "the refused ingest must not leave a job behind"
    other = run_cli("ingest", str(src), "--kb", "other", "--batch", "--embedder", "fake", home=h)
    assert other.returncode == 0, (other.returncode, other.stderr)

    st = status_json(h, job)  # read-only commands work during the run
    status_validator.validate(st)
    assert st["status"] == "running"

    assert b.p.poll() is None, "the job should still be running"
    b.p.send_signal(signal.SIGTERM)
    assert b.finish(60) == 130, b.stderr
    check_json_lines(b, status_validator, "pending", "paused")
    # the home is free again: the job resumes (no longer slowed) to the clean run's ids
    resume_to_completion(h, job, ref, status_validator)


def test_json_lines_rules(tmp_path, corpus, status_validator):
    src, ref = corpus
    h = tmp_path / "home"
    b = ingest_batch(src, h, tmp_path, env={"KBINGEST_FAKE_DELAY": "0.005"})
    rc = b.finish(120)
    assert rc == 0, b.stderr
    lines = check_json_lines(b, status_validator, "pending", "completed")
    last = lines[-1]
    assert last["phase"] == "completed" and last["progress"] == 100.0
    assert all(p["status"] == "completed" for p in last["phase_details"])
    assert last["metrics"]["chunks_indexed"] == ref["count"]
    assert len(lines) >= 4  # pending, running, progress lines while it ran, the final state
    # lines are flushed as written: the first arrived long before the process ended
    assert b.ended - b.times[0] > 1.0
    # stderr: not a terminal, so no progress animation; a one-line summary at the end
    err = b.stderr
    assert "\r" not in err and "\x1b[" not in err
    assert err.strip().splitlines()[-1].startswith(f"kbingest: job {last['job_id']}: completed")
