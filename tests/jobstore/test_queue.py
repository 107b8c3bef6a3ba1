"""The job queue and per-knowledge-base locks, drain and the dry run (issue 14), as an operator
meets them: `--batch` processes in one home, steered from other shells."""

from __future__ import annotations

import json
import os
import signal

import pytest
from conftest import run_cli
from test_control import KB, Batch, assert_whole_documents, check_json_lines, corpus, status_json  # noqa: F401

SLOW = {"KBINGEST_FAKE_DELAY": "0.01"}  # ~5 s of embedding for the corpus
SLOWER = {"KBINGEST_FAKE_DELAY": "0.03"}


def ingest(src, home, tmp, kb=KB, env=SLOW, name="batch", *extra):
    return Batch(
        ["ingest", str(src), "--kb", kb, "--batch", "--embedder", "fake", "--commit-rows", "32", *extra],
        home,
        tmp,
        env,
        name,
    )


def first_time(b: Batch, pred) -> float:
    return next(t for t, x in zip(b.times, b.raw) if pred(json.loads(x)))


def test_two_kbs_run_at_the_same_time(tmp_path, corpus, status_validator):
    src, ref = corpus
    h = tmp_path / "home"
    a = ingest(src, h, tmp_path, "a", name="a")
    b = ingest(src, h, tmp_path, "b", name="b")
    assert a.finish(120) == 0, a.stderr
    assert b.finish(120) == 0, b.stderr
    for x in (a, b):
        lines = check_json_lines(x, status_validator, "pending", "completed")
        assert lines[-1]["metrics"]["chunks_indexed"] == ref["count"]
    run_a = (first_time(a, lambda d: d["status"] == "running"), a.times[-1])
    run_b = (first_time(b, lambda d: d["status"] == "running"), b.times[-1])
    assert run_a[0] < run_b[1] and run_b[0] < run_a[1], f"run times do not overlap: {run_a} {run_b}"


def test_same_kb_runs_one_after_the_other_second_prints_pending_first(tmp_path, corpus, status_validator):
    src, ref = corpus
    h = tmp_path / "home"
    a = ingest(src, h, tmp_path, name="a")
    first = a.job_id
    assert a.wait_for(lambda d: d["status"] == "running")
    b = ingest(src, h, tmp_path, name="b")
    assert b.wait_for(lambda d: True, 60)
    head = b.lines[0]
    assert head["status"] == "pending", head
    assert first in head["message"] and f"knowledge base {KB}" in head["message"], head["message"]
    assert head["metrics"]["queue_position"] == 1 and head["metrics"]["waiting_for"] == first
    st = status_json(h, head["job_id"])  # `status` from another shell says why it waits
    assert st["status"] == "pending" and first in st["message"]
    assert a.finish(120) == 0, a.stderr
    assert b.finish(120) == 0, b.stderr
    check_json_lines(b, status_validator, "pending", "completed")
    assert first_time(b, lambda d: d["status"] == "running") >= a.times[-1] - 0.5
    last = b.lines[-1]
    assert "queue_position" not in last["metrics"] and "waiting_for" not in last["metrics"]
    assert last["metrics"]["documents_skipped"] == len(ref["by_doc"])  # the first job wrote them all
    assert_whole_documents(h, ref)


def test_a_watch_job_holds_only_its_own_kb(tmp_path, corpus):
    src, ref = corpus
    h = tmp_path / "home"
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "a.md").write_text("# A\n\nsome text to watch\n")
    w = Batch(
        ["ingest", str(watched), "--kb", "a", "--batch", "--watch", "--embedder", "fake"], h, tmp_path, name="watch"
    )
    assert w.wait_for(lambda d: d["status"] == "running" and "watching" in d["message"], 60), w.stderr
    r = run_cli("ingest", str(src), "--kb", "b", "--batch", "--embedder", "fake", home=h)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["metrics"]["chunks_indexed"] == ref["count"]
    w.p.send_signal(signal.SIGTERM)
    assert w.finish(60) == 130, w.stderr


def test_drain_commits_what_was_loaded_and_completes(tmp_path, status_validator):
    """The whole corpus (199 pages): the loader runs at most a few dozen documents ahead of embedding,
    so a drain soon after the start leaves most of them not processed."""
    from conftest import WAF
    from test_control import table_rows

    h = tmp_path / "home"
    b = ingest(WAF, h, tmp_path, env=SLOW)
    job = b.job_id
    assert b.wait_for(lambda d: d["status"] == "running" and d["metrics"].get("chunks_embedded", 0) >= 1)
    r = run_cli("drain", job, home=h)
    assert r.returncode == 0 and "completed" in r.stderr, r.stderr
    assert b.finish(120) == 0, b.stderr
    lines = check_json_lines(b, status_validator, "pending", "completed")
    m = lines[-1]["metrics"]
    rows = table_rows(h)
    docs = len({d for _, d in rows})
    listed = len(list(WAF.rglob("*.md")))
    assert m["documents_not_processed"] > listed // 2, m
    assert docs + m["documents_not_processed"] == listed == m["documents_found"] + m["documents_not_processed"]
    assert m["chunks_indexed"] == len(rows) == m["chunks_created"]  # every document loaded was committed whole
    assert lines[-1]["message"].startswith("drained: ")
    phases = {p["name"]: p["status"] for p in lines[-1]["phase_details"]}
    assert set(phases.values()) == {"completed"}, phases
    again = run_cli("status", job, home=h)
    not_processed = f"{m['documents_not_processed']} document(s) not processed"  # issue 30: words, not keys
    assert "drained" in again.stdout and not_processed in again.stdout


def test_dry_run_loads_no_model_writes_nothing_and_reports(tmp_path, corpus, status_validator):
    from kbingest.pipeline.service import Service

    src, ref = corpus
    h = tmp_path / "home"

    def no_model(_config):
        raise AssertionError("a dry run must not load the model")

    svc = Service(h, embedder_factory=no_model)
    snap = svc.start(svc.config([str(src)], KB, until="chunking")).run()
    status_validator.validate(snap.to_json_dict())
    assert snap.status.value == "completed"
    phases = {p.name: p.status.value for p in snap.phase_details}
    assert phases == {"loading": "completed", "chunking": "completed", "embedding": "skipped", "indexing": "skipped"}
    d = snap.m.dry_run
    assert d["documents"] == len(ref["by_doc"]) and d["chunks"] == ref["count"]
    assert sum(d["tokens_per_document_histogram"].values()) == len(ref["by_doc"])
    assert d["tokens"] > d["chunks"] and len(d["document_list"]) == len(ref["by_doc"])
    assert d["embed_rate_chunks_per_s"] == 25.8 and "benchmarks.md" in d["rate_source"]
    assert d["estimated_embedding_seconds"] == pytest.approx(ref["count"] / 25.8, abs=0.1)
    assert snap.progress == 100.0 and snap.message.startswith("dry run completed")
    assert svc.knowledge_bases() == []  # nothing written to LanceDB

    r = run_cli("status", snap.job_id, home=h)
    assert "embedding skipped" in " ".join(r.stdout.split()) and "tokens per document:" in r.stdout, r.stdout
    b = run_cli("ingest", str(src), "--kb", KB, "--batch", "--until", "chunking", "--embedder", "fake", home=h)
    assert b.returncode == 0 and "dry run completed" in b.stderr, b.stderr
    last = json.loads(b.stdout.splitlines()[-1])
    status_validator.validate(last)
    assert [p["status"] for p in last["phase_details"]][2:] == ["skipped", "skipped"]


def test_a_pending_job_can_be_cancelled(tmp_path, corpus, status_validator):
    src, ref = corpus
    h = tmp_path / "home"
    a = ingest(src, h, tmp_path, env=SLOWER, name="a")
    assert a.wait_for(lambda d: d["status"] == "running")
    b = ingest(src, h, tmp_path, name="b")
    waiting = b.job_id
    r = run_cli("cancel", waiting, home=h)
    assert r.returncode == 0, r.stderr
    assert b.finish(30) == 4, b.stderr
    check_json_lines(b, status_validator, "pending", "cancelled")
    assert status_json(h, waiting)["status"] == "cancelled"
    assert a.p.poll() is None, "the running job goes on"
    a.p.send_signal(signal.SIGTERM)
    assert a.finish(60) == 130


def test_a_pending_job_whose_process_dies_is_interrupted_and_resumable(tmp_path, corpus):
    src, ref = corpus
    h = tmp_path / "home"
    a = ingest(src, h, tmp_path, name="a")
    assert a.wait_for(lambda d: d["status"] == "running")
    b = ingest(src, h, tmp_path, name="b")
    waiting = b.job_id
    assert status_json(h, waiting)["status"] == "pending"
    os.kill(b.p.pid, signal.SIGKILL)
    b.finish(30)
    st = status_json(h, waiting)
    assert st["status"] == "paused" and "interrupted" in st["message"], st
    assert a.finish(120) == 0, a.stderr  # the dead waiter held nothing the running job needs
    r = run_cli("resume", waiting, "--batch", home=h)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["status"] == "completed"
    c = run_cli("ingest", str(src), "--kb", KB, "--batch", "--no-wait", "--embedder", "fake", home=h)
    assert c.returncode == 0, c.stderr  # no stale lock, no stuck pending job ahead of it
