"""Issue 30 item 6: the CLI's words, as a user calls it (a subprocess, fake embedder)."""

from conftest import run_cli

from kbingest.app import text
from kbingest.pipeline.models import JobStatusResponse, PhaseDetail


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == "kbingest 0.2.0", (r.stdout, r.stderr)


def test_a_mistyped_command_gets_a_did_you_mean(tmp_path):
    r = run_cli("stauts", home=tmp_path / "h")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "did you mean 'status'?" in r.stderr, r.stderr
    r = run_cli("xyzzy", home=tmp_path / "h")
    assert r.returncode == 2 and "did you mean" not in r.stderr


def test_status_jobs_and_search_read_as_words(tmp_path, pages):
    h = tmp_path / "h"
    assert run_cli("ingest", str(pages), "--kb", "docs", "--batch", "--embedder", "fake", home=h).returncode == 0
    human = run_cli("status", home=h).stdout
    assert "{" not in human and "}" not in human and "=" not in human, human  # no Python dicts
    assert "documents: 6 found" in human and "6 added" in human, human
    assert "queues: loaded → chunking 0/" in human, human
    jobs = run_cli("jobs", home=h).stdout.splitlines()
    assert jobs[0].split() == ["JOB", "KB", "STATUS", "PROGRESS", "ETA", "CREATED"], jobs
    assert jobs[1].split()[1:4] == ["docs", "completed", "100.0%"], jobs
    r = run_cli("search", "--kb", "dcos", "reliability", home=h)
    assert r.returncode == 2 and "no knowledge base 'dcos'" in r.stderr and "it holds 'docs'" in r.stderr, r.stderr
    empty = run_cli("search", "--kb", "nokb", "q", home=tmp_path / "empty")
    assert empty.returncode == 2 and "it holds none yet" in empty.stderr, empty.stderr


def _snap(**phase):
    phases = [PhaseDetail(name=n) for n in ("loading", "chunking", "embedding", "indexing")]
    phases[1] = PhaseDetail(
        name="chunking",
        status="running",
        progress=18,
        items_processed=19,
        items_total=19,
        items_total_estimate=105,
        rate=3.0,
        eta_seconds=30.0,
        **phase,
    )
    return JobStatusResponse(
        job_id="j", kb_id="k", status="running", phase="chunking", progress=12.0, phase_details=phases, eta_seconds=95.0
    )


def test_the_batch_stderr_line_leads_with_the_jobs_eta_and_marks_estimates():
    line = text.progress_line(_snap())
    assert line.split()[:4] == ["running", "12.0%", "ETA", "1m35s"], line
    assert "19/~105" in line and "3.0/s" in line


def test_words_for_durations_and_metrics():
    assert [text.duration(x) for x in (None, 5, 65, 3725)] == ["", "5s", "1m05s", "1h02m"]
    lines = text.metric_lines(
        {
            "commit_batch": {"documents": 2, "chunks": 40},
            "chunks_created": 1200,
            "queue_chunked": {"depth": 16, "capacity": 16, "empty_s": 0, "full_s": 9.0},
            "in_flight": {"embedding": [{"path": "/d/a.md", "size": 2048}]},
            "watch_warning": "too many folders",
        }
    )
    assert "chunks: 1,200 created" in lines and "next commit: 2 document(s), 40 chunks" in lines
    assert "queues: chunked → embedding 16/16 (full 9s)" in lines and "in embedding: /d/a.md (2.0 KB)" in lines
    assert "watch warning: too many folders" in lines
