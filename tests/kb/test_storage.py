"""Knowledge bases on object storage (issue 16, item 4): `--db s3://bucket/prefix` against moto's S3
server on 127.0.0.1 (the session's, tests/conftest.py); and the validation of --db / --db-option."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

BUCKET = "kbingest-test"
KB = "k"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@pytest.fixture
def s3(s3_endpoint, monkeypatch, request):
    """The AWS environment pointing at the emulator (for this process and the CLI's children), and a
    prefix of the bucket of this test's own."""
    env = dict(AWS, AWS_ENDPOINT_URL=s3_endpoint)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("KBINGEST_DB", raising=False)
    return {"env": env, "uri": f"s3://{BUCKET}/{request.node.name.replace('_', '-')}", "endpoint": s3_endpoint}


def _objects(endpoint: str, prefix: str) -> list[str]:
    import boto3

    c = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    keys = []
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def _last(r) -> dict:
    assert r.stdout.strip(), r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _table_ids(uri: str) -> list[str]:
    from kbingest.pipeline.kb.location import KbLocation

    return KbLocation(uri).connect().open_table(KB).to_arrow()["id"].to_pylist()


# ---- the S3 round trip ------------------------------------------------------------------------
def test_ingest_rerun_and_search_on_s3(s3, pages, tmp_path):
    home = tmp_path / "h"
    r = run_cli(
        "--db", s3["uri"], "ingest", str(pages), "--kb", KB, "--batch", "--embedder", "fake", home=home, env=s3["env"]
    )
    assert r.returncode == 0, r.stderr
    first = _last(r)["metrics"]
    assert first["chunks_indexed"] > 0 and first["documents_added"] == 6
    prefix = s3["uri"].split(BUCKET + "/", 1)[1]
    keys = _objects(s3["endpoint"], prefix)
    assert any(k.startswith(f"{prefix}/{KB}.lance/") for k in keys), keys[:5]
    assert not (home / "lancedb").exists() or not any((home / "lancedb").iterdir())  # nothing local
    ids = _table_ids(s3["uri"])
    assert len(ids) == len(set(ids)) == first["chunks_indexed"]

    # the env var names the same place; an unchanged re-run embeds nothing
    r2 = run_cli(
        "ingest",
        str(pages),
        "--kb",
        KB,
        "--batch",
        "--embedder",
        "fake",
        home=home,
        env=dict(s3["env"], KBINGEST_DB=s3["uri"]),
    )
    assert r2.returncode == 0, r2.stderr
    again = _last(r2)["metrics"]
    assert again["chunks_embedded"] == 0 and again["documents_skipped"] == 6 and again["chunks_indexed"] == 0

    # search finds the knowledge base where its job put it (no --db), in every mode
    for mode in ("vector", "text", "hybrid"):
        s = run_cli("search", "--kb", KB, "reliability principles", "--mode", mode, "--json", home=home, env=s3["env"])
        assert s.returncode == 0, (mode, s.stderr)
        hits = json.loads(s.stdout)
        assert len(hits) == 5 and all(h["id"] in set(ids) for h in hits), mode
    # and an explicit --db that holds no such knowledge base says so in one line
    s = run_cli("--db", s3["uri"] + "-other", "search", "--kb", KB, "x", home=home, env=s3["env"])
    assert s.returncode == 2 and "no knowledge base 'k'" in s.stderr and len(s.stderr.strip().splitlines()) == 1


def test_resume_after_a_crash_writes_to_the_recorded_location(s3, tmp_path):
    from test_crash_resume import copy_corpus

    src = copy_corpus(tmp_path / "src", 12)
    home = tmp_path / "h"
    r = run_cli(
        "--db",
        s3["uri"],
        "ingest",
        str(src),
        "--kb",
        KB,
        "--batch",
        "--embedder",
        "fake",
        "--commit-rows",
        "16",
        "--job-id",
        "crashy",
        home=home,
        env=dict(s3["env"], KBINGEST_CRASH_AT="after_commit:2"),
    )
    assert r.returncode == 137, r.stderr
    partial = _table_ids(s3["uri"])
    assert partial
    # resume names no location: the job recorded it (the env var is not set either)
    r2 = run_cli("resume", "crashy", "--batch", home=home, env=s3["env"])
    assert r2.returncode == 0, r2.stderr
    ids = _table_ids(s3["uri"])
    ref = tmp_path / "ref"
    assert run_cli("ingest", str(src), "--kb", KB, "--batch", "--embedder", "fake", home=ref).returncode == 0
    from kbingest.pipeline.kb.table import KnowledgeBase
    from kbingest.pipeline.paths import Home

    assert sorted(ids) == sorted(KnowledgeBase(Home(ref), KB).ids())  # the same table as a clean local run
    stored = json.loads((home / "jobs.json").read_text())
    text = json.dumps(stored)
    assert s3["uri"] in text and "testing" not in text  # the location is recorded, the credentials never


def test_compaction_child_and_indexes_on_s3(s3, home, pages, monkeypatch):
    """A large table's compaction runs in a child that reaches the same bucket (URI and options passed,
    credentials from the environment); the indexes are built there too."""
    from kbingest.pipeline.job.engine import IngestJob
    from kbingest.pipeline.jobstore.recovery import open_store
    from kbingest.pipeline.kb import compaction
    from kbingest.pipeline.kb.table import KnowledgeBase
    from kbingest.pipeline.models import JobConfig

    monkeypatch.setattr(compaction, "CHILD_ROWS", 1)
    config = JobConfig(
        sources=[str(pages)],
        kb=KB,
        embedder="fake",
        commit_rows=16,
        db=s3["uri"],
        db_options={"connect_timeout": "10s"},
        ann_min_rows=100,
    )
    snap = IngestJob.create(home, open_store(home), config).run()
    assert snap.status.value == "completed", snap.message
    m = snap.metrics
    assert m["chunks_indexed"] >= 100
    assert m["optimizes"] >= 1 and m.get("optimize_errors") is None and m["optimize_peak_rss_mib"] > 50
    kb = KnowledgeBase.for_job(home, config)
    assert kb.fragments() <= 2
    st = kb.index_state()
    assert st.has_fts and st.ann_trained_rows is not None  # built in the child, on S3
    assert len(kb.ids()) == len(set(kb.ids())) == m["chunks_indexed"]


# ---- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "uri, why",
    [
        ("ftp://host/x", "unsupported scheme 'ftp'"),
        ("gs://bucket/x", "unsupported scheme 'gs'"),
        ("s3://", "valid bucket name"),
        ("s3://Bad_Bucket/x", "valid bucket name"),
        ("s3://bucket/a/../b", "no query, fragment or '..'"),
        ("file://otherhost/x", "local path"),
        ("/tmp/x\x1b[31m", "control characters"),
    ],
)
def test_bad_locations_are_one_line_usage_errors(tmp_path, uri, why):
    r = run_cli("--db", uri, "ingest", str(tmp_path), "--kb", KB, "--batch", "--embedder", "fake", home=tmp_path / "h")
    assert r.returncode == 2, r.stderr
    assert why in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "opt, why",
    [
        ("novalue", "KEY=VALUE"),
        ("aws_secret_access_key=x", "secrets are refused"),
        ("aws_session_token=x", "secrets are refused"),
    ],
)
def test_bad_db_options_are_refused(tmp_path, opt, why):
    r = run_cli("--db-option", opt, "search", "--kb", KB, "q", home=tmp_path / "h")
    assert r.returncode == 2 and why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_locations_resolve(tmp_path, monkeypatch):
    from kbingest.pipeline.kb.location import KbLocation
    from kbingest.pipeline.paths import Home

    home = Home(tmp_path / "h")
    monkeypatch.delenv("KBINGEST_DB", raising=False)
    assert KbLocation.resolve(home).uri == str(home.lancedb_dir)
    assert KbLocation.resolve(home).job_fields(home) == {"db": None, "db_options": {}}
    assert KbLocation.resolve(home, f"file://{tmp_path}/kbs").uri == str(tmp_path / "kbs")
    assert KbLocation.resolve(home, "s3://my-bucket/some/prefix/").uri == "s3://my-bucket/some/prefix"
    monkeypatch.setenv("KBINGEST_DB", "s3://env-bucket/p")
    assert KbLocation.resolve(home).uri == "s3://env-bucket/p"
    # a job records its location when it is created: resuming one made for the default stays there
    from kbingest.pipeline.models import JobConfig

    assert KbLocation.of_job(home, JobConfig(sources=["."], kb=KB)).uri == str(home.lancedb_dir)
    assert KbLocation.of_job(home, JobConfig(sources=["."], kb=KB, db="s3://b-1/x")).uri == "s3://b-1/x"
    # credentials come from the environment at connect time, never from what the job stores
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRET")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    loc = KbLocation.from_flags(home, None, ["region=eu-west-1"])
    opts = loc.storage_options()
    assert opts["aws_secret_access_key"] == "SECRET" and opts["allow_http"] == "true" and opts["region"] == "eu-west-1"
    assert "SECRET" not in json.dumps(loc.job_fields(home))


@pytest.mark.xdist_group("ray")  # with the other Ray tests: their check of kbingest-ray-* temp dirs
def test_ray_executor_round_trip_on_s3(s3, pages, tmp_path):
    """Both executors against the emulator: the Ray executor stages and commits under the s3:// location
    and ends with the thread executor's table; an edited page's untouched texts keep their stored vectors;
    an unchanged re-run embeds nothing; no staging is left."""
    pytest.importorskip("ray")
    threads_uri, ray_uri = s3["uri"] + "-threads", s3["uri"] + "-ray"
    base = ["ingest", str(pages), "--kb", KB, "--batch", "--embedder", "fake"]
    r = run_cli("--db", threads_uri, *base, home=tmp_path / "t", env=s3["env"])
    assert r.returncode == 0, r.stderr
    r = run_cli(
        "--db",
        ray_uri,
        *base,
        "--executor",
        "ray",
        "--ray-embed-actors",
        "1",
        "--ray-wave-docs",
        "3",
        home=tmp_path / "r",
        env=s3["env"],
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert _last(r)["metrics"]["ray_waves"] >= 2
    assert sorted(_table_ids(ray_uri)) == sorted(_table_ids(threads_uri))
    prefix = ray_uri.split(BUCKET + "/", 1)[1]
    assert not [k for k in _objects(s3["endpoint"], prefix) if "/_staging/" in k]
    # an edited page: the chunking tasks read the stored vectors of its untouched texts from the bucket
    page = sorted(pages.rglob("*.md"))[0]
    page.write_text(page.read_text() + "\n\n## Added section\n\nA new paragraph about key rotation and audit.\n")
    edited = run_cli("--db", ray_uri, *base, "--executor", "ray", home=tmp_path / "r", env=s3["env"], timeout=600)
    assert edited.returncode == 0, edited.stderr[-3000:]
    m = _last(edited)["metrics"]
    assert m["documents_replaced"] == 1 and m.get("chunks_reused", 0) >= 1, m
    assert m["chunks_embedded"] + m["chunks_reused"] == m["chunks_indexed"], m
    again = run_cli("--db", ray_uri, *base, "--executor", "ray", home=tmp_path / "r", env=s3["env"], timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _last(again)["metrics"]["chunks_embedded"] == 0
