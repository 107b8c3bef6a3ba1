"""Every status JSON we print validates against contracts/job_status.schema.json."""

import json

from kbingest.pipeline.job.tracker import PhaseTracker
from kbingest.pipeline.models import JobStatusResponse, PhaseDetail
from kbingest.pipeline.status import JobPhase, JobStatus


def states():
    t = PhaseTracker("job-1", "kb")
    yield t.snapshot()
    t.set_status(JobStatus.RUNNING, "running")
    t.start_phase(JobPhase.LOADING)
    t.add_total(JobPhase.LOADING, 3)
    t.advance(JobPhase.LOADING)
    t.set_metric("documents_found", 3)
    yield t.snapshot()
    t.set_status(JobStatus.PAUSED, "paused")
    yield t.snapshot()
    t.set_status(JobStatus.RUNNING)
    t.fail_phase(JobPhase.EMBEDDING, "boom")
    t.set_status(JobStatus.FAILED, "failed", error="boom")
    yield t.snapshot()
    t.set_status(JobStatus.CANCELLED)
    yield t.snapshot()
    t2 = PhaseTracker("job-2", "kb")
    t2.set_status(JobStatus.RUNNING)
    for p in (JobPhase.LOADING, JobPhase.CHUNKING, JobPhase.EMBEDDING, JobPhase.INDEXING):
        t2.complete_phase(p)
    t2.set_status(JobStatus.COMPLETED, "done")
    yield t2.snapshot()


def test_every_state_validates(status_validator):
    n = 0
    for snap in states():
        data = json.loads(snap.to_json())
        status_validator.validate(data)
        n += 1
    assert n == 6


def test_timestamps_have_utc_suffix_and_roundtrip():
    snap = list(states())[-1]
    data = json.loads(snap.to_json())
    assert data["started_at"].endswith("Z") and data["completed_at"].endswith("Z")
    back = JobStatusResponse.model_validate(data)
    assert back.to_json() == snap.to_json()


def test_schema_rejects_what_it_should(status_validator):
    import jsonschema
    import pytest

    good = json.loads(list(states())[1].to_json())
    for mutate in (
        lambda d: d.pop("phase_details"),
        lambda d: d.update(status="canceled"),
        lambda d: d["phase_details"].reverse(),
        lambda d: d.update(progress=101),
    ):
        bad = json.loads(json.dumps(good))
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            status_validator.validate(bad)


def test_phase_detail_fields_of_the_seed():
    d = PhaseDetail(name="loading")
    assert set(d.model_dump()) >= {
        "name",
        "status",
        "progress",
        "items_processed",
        "items_total",
        "started_at",
        "completed_at",
        "error",
    }


def test_committed_schema_is_the_generated_one():
    """contracts/job_status.schema.json is generated from the models: regenerate it with
    `python -m kbingest.pipeline.schema > contracts/job_status.schema.json` after changing them."""
    from conftest import SCHEMA_FILE

    from kbingest.pipeline.schema import render

    assert SCHEMA_FILE.read_text() == render()


def test_generated_schema_extends_the_first_contract():
    """Every key the first contract requires is required by the generated schema, with the same enums."""
    from conftest import CONTRACT_V1, SCHEMA_FILE

    v1, now = json.loads(CONTRACT_V1.read_text()), json.loads(SCHEMA_FILE.read_text())
    assert set(v1["required"]) <= set(now["required"])
    assert set(v1["$defs"]["phase_detail"]["required"]) <= set(now["$defs"]["PhaseDetail"]["required"])
    assert set(v1["$defs"]["status"]["enum"]) <= set(now["$defs"]["JobStatus"]["enum"])


def test_typed_metrics_keep_the_json_keys_and_refuse_unknown_names():
    import pytest

    t = PhaseTracker("job-1", "kb")
    t.incr_metric("chunks_indexed", 5)
    snap = t.snapshot()
    assert snap.to_json_dict()["metrics"] == {"chunks_indexed": 5}  # unset metrics are not written
    assert snap.m.chunks_indexed == 5 and snap.m.documents_failed is None
    with pytest.raises(KeyError):
        t.incr_metric("chunks_indexd")  # a typo fails loudly
