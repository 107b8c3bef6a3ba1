"""The CLI as a user calls it, in a subprocess (fake embedder: fast)."""

import json

from conftest import run_cli


def _lines(out: str):
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_batch_ingest_prints_schema_valid_json_lines_and_exit_0(tmp_path, pages, status_validator):
    h = tmp_path / "h"
    r = run_cli("ingest", str(pages), "--kb", "docs", "--batch", "--embedder", "fake", home=h)
    assert r.returncode == 0, r.stderr
    lines = _lines(r.stdout)
    assert len(lines) >= 2
    for d in lines:
        status_validator.validate(d)
    assert lines[0]["status"] == "pending"
    assert lines[-1]["status"] == "completed" and lines[-1]["phase"] == "completed"
    assert [d["progress"] for d in lines] == sorted(d["progress"] for d in lines)
    assert lines[-1]["metrics"]["documents_added"] == 6
    assert "Traceback" not in r.stderr and "completed" in r.stderr
    again = _lines(run_cli("ingest", str(pages), "--kb", "docs", "--batch", "--embedder", "fake", home=h).stdout)
    # an unchanged run is over in a blink, yet it has a line for every status and phase change (contracts/CLI.md)
    assert [d["status"] for d in again][:2] == ["pending", "running"] and again[-1]["status"] == "completed"
    phases = {
        name: [next(p["status"] for p in d["phase_details"] if p["name"] == name) for d in again]
        for name in ("loading", "chunking", "embedding", "indexing")
    }
    assert "running" in phases["loading"] and all(seen[-1] == "completed" for seen in phases.values()), phases
    done_at = {name: seen.index("completed") for name, seen in phases.items()}  # each completion a line of its own
    assert len(set(done_at.values())) == 4 and done_at["loading"] < done_at["indexing"], done_at


def test_status_and_jobs_json_validate(tmp_path, pages, status_validator):
    h = tmp_path / "h"
    assert run_cli("ingest", str(pages), "--kb", "docs", "--batch", "--embedder", "fake", home=h).returncode == 0
    assert run_cli("ingest", str(pages), "--kb", "docs", "--batch", "--embedder", "fake", home=h).returncode == 0
    st = run_cli("status", "--json", home=h)
    assert st.returncode == 0
    status_validator.validate(json.loads(st.stdout))
    st_kb = run_cli("status", "--kb", "docs", "--json", home=h)
    assert json.loads(st_kb.stdout) == json.loads(st.stdout)
    jobs = json.loads(run_cli("jobs", "--json", home=h).stdout)
    assert len(jobs) == 2
    for d in jobs:
        status_validator.validate(d)
    assert jobs[0]["started_at"] >= jobs[1]["started_at"]  # newest first
    human = run_cli("status", home=h).stdout
    assert "loading" in human and "indexing" in human and "completed" in human


def test_search_json(tmp_path, pages):
    h = tmp_path / "h"
    run_cli("ingest", str(pages), "--kb", "docs", "--batch", "--embedder", "fake", home=h)
    r = run_cli("search", "--kb", "docs", "reliability design principles", "-k", "3", "--json", home=h)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert len(hits) == 3
    assert {"score", "source", "heading_path", "text", "id"} <= set(hits[0])
    assert hits[0]["score"] >= hits[-1]["score"]


def test_usage_errors_exit_2_without_traceback(tmp_path, pages):
    h = tmp_path / "h"
    for args in (
        ["ingest", str(tmp_path / "missing"), "--kb", "x", "--batch"],
        ["ingest", str(pages), "--kb", "../../x", "--batch"],
        ["status", "no-such-job"],
        ["search", "--kb", "nokb", "q"],
        ["resume", "nope"],
        ["ingest", str(pages), "--kb", "x", "--chunk-tokens", "999", "--batch"],
    ):
        r = run_cli(*args, home=h)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.startswith("kbingest: "), r.stderr
        assert r.stdout == ""
    assert not (tmp_path / "x").exists()


def test_help_lists_the_contract_commands():
    r = run_cli("--help")
    for cmd in ("ingest", "resume", "pause", "cancel", "status", "jobs", "search"):
        assert cmd in r.stdout
    r = run_cli("ingest", "--help")
    for opt in ("--kb", "--batch", "--watch", "--model", "--chunk-tokens", "--overlap", "--home"):
        assert opt in r.stdout


def test_python_dash_m_app_and_console_script_agree(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("kbingest")
    assert exe.exists() or shutil.which("kbingest"), "console script kbingest not installed"
    out = subprocess.run(
        [str(exe if exe.exists() else shutil.which("kbingest")), "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "kbingest" in out.stdout


def test_a_closed_pipe_exits_quietly(tmp_path, pages):
    """`status`, `jobs --json` and `search --json` piped into `head -c1`, with more output than a pipe
    holds: no BrokenPipeError traceback, exit 0."""
    import subprocess
    import sys

    from conftest import REPO

    from kbingest.pipeline.jobstore.recovery import open_store
    from kbingest.pipeline.models import JobRecord
    from kbingest.pipeline.paths import Home

    h = tmp_path / "h"
    assert run_cli("ingest", str(pages), "--kb", "docs", "--batch", "--embedder", "fake", home=h).returncode == 0
    store = open_store(Home(h))
    rec = store.all()[0]
    big = rec.status.model_copy(
        update={
            "message": "x" * 2000,
            "metrics": {
                **rec.status.metrics,
                "document_errors": [
                    {"path": f"/d/{i}.md", "phase": "loading", "kind": "binary", "message": "y" * 500}
                    for i in range(150)
                ],
            },
        }
    )
    for i in range(60):  # 60 jobs of ~80 KB of JSON each: far more than a pipe's 64 KB
        store.put(
            JobRecord(
                job_id=f"docs-{i}",
                config=rec.config,
                status=big.model_copy(update={"job_id": f"docs-{i}"}),
                created_at=rec.created_at,
                updated_at=rec.updated_at,
            )
        )
    for args in (
        ["status", "docs-1"],
        ["status", "docs-1", "--json"],
        ["jobs", "--json"],
        ["jobs"],
        ["search", "--kb", "docs", "reliability", "-k", "200", "--json"],
    ):
        cmd = " ".join([sys.executable, "-m", "kbingest", "--home", str(h), *[f"'{a}'" for a in args]])
        r = subprocess.run(
            f'{cmd} | head -c1 >/dev/null; echo "${{PIPESTATUS[0]}}"',
            shell=True,
            executable="/bin/bash",
            capture_output=True,
            text=True,
            cwd=str(REPO),
            timeout=120,
        )
        assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, (args, r.stderr)
        assert r.stdout.strip() == "0", (args, r.stdout, r.stderr)


def test_losing_the_lock_race_leaves_no_ghost_job(home, tmp_path, pages):
    """Two --no-wait ingests race for a knowledge base: the loser is refused (KbBusy, exit 1) and
    leaves no pending job."""
    import pytest

    from kbingest.pipeline.errors import Busy
    from kbingest.pipeline.job.engine import IngestJob
    from kbingest.pipeline.jobstore.recovery import open_store
    from kbingest.pipeline.locking import FileLock
    from kbingest.pipeline.models import JobConfig

    store = open_store(home)
    loser = IngestJob.create(home, store, JobConfig(sources=[str(pages)], kb="docs", embedder="fake"))
    loser.wait_for_lock = False
    home.kb_lock_file("docs").parent.mkdir(exist_ok=True)
    with FileLock(home.kb_lock_file("docs")):  # the winner took the kb between the loser's check and its run
        with pytest.raises(Busy):
            loser.run()
    assert store.get(loser.job_id) is None


def test_every_command_has_help():
    for cmd in ([], ["ingest"], ["resume"], ["pause"], ["cancel"], ["status"], ["jobs"], ["search"]):
        r = run_cli(*cmd, "--help")
        assert r.returncode == 0 and "usage: kbingest" in r.stdout and not r.stderr, (cmd, r.stderr)
