"""The status JSON schema, generated from the pydantic models (the one source of the contract).

`python -m kbingest.pipeline.schema` prints it; contracts/job_status.schema.json is its output,
committed, and a test checks the two are equal and that every snapshot validates against it.
It extends the first contract (tests/data/job_status.contract-v1.schema.json): every key that one
requires is required here too, and the metrics are typed.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from kbingest.pipeline.models import JobMetrics, JobStatusResponse, PhaseDetail
from kbingest.pipeline.status import PHASES

TIMESTAMP = {
    "description": "ISO 8601 date-time with a UTC offset or Z, or null when not reached yet",
    "anyOf": [
        {"type": "null"},
        {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"},
    ],
}


def status_schema() -> dict[str, Any]:
    schema = JobStatusResponse.model_json_schema(mode="serialization")
    defs = schema.setdefault("$defs", {})
    # every key is always written: all are required, as the contract says
    schema["required"] = list(JobStatusResponse.model_fields)
    defs["PhaseDetail"]["required"] = list(PhaseDetail.model_fields)
    for obj in (schema, defs["PhaseDetail"]):
        for key in ("started_at", "completed_at"):
            obj["properties"][key] = {"$ref": "#/$defs/timestamp"}
    defs["timestamp"] = TIMESTAMP
    metrics = JobMetrics.model_json_schema(mode="serialization", ref_template="#/$defs/{model}")
    defs.update(metrics.pop("$defs", {}))
    schema["properties"]["metrics"] = {
        **metrics,
        "additionalProperties": True,
        "description": "Job metrics; a key that was never set is absent.",
    }
    schema["properties"]["phase_details"]["prefixItems"] = [
        {"$ref": "#/$defs/PhaseDetail", "properties": {"name": {"const": p.value}}} for p in PHASES
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "job_status.schema.json",
        **{k: v for k, v in schema.items() if k not in ("$defs",)},
        "title": "JobStatusResponse",
        "description": (
            "The status of one ingestion job: job-level status plus per-phase details, as the seed "
            "defines it. Generated from pipeline/models.py by `python -m kbingest.pipeline.schema`. "
            "Extra keys are allowed; missing or mistyped keys are not."
        ),
        "$defs": defs,
    }


def render() -> str:
    return json.dumps(status_schema(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
