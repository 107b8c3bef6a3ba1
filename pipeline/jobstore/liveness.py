"""Is the engine running a job still responding? Judged from the heartbeat it writes to the job store.

A running engine writes its job's snapshot to the store at least every KEEPALIVE_S, even with
nothing new to say (`JobRecord.heartbeat_at`). A job whose engine still holds the home's lock but
has not written for NOT_RESPONDING_AFTER_S (a few heartbeats) is shown "not responding": stopped
(Ctrl-Z, SIGSTOP), hung, or starved. The job status stays "running" (the contract's values): the
message says so, and the metrics carry `heartbeat_age_seconds` and `not_responding`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from kbingest.pipeline.models import JobRecord, JobStatusResponse, utcnow

KEEPALIVE_S = 2.0  # the longest an engine goes without writing its heartbeat
NOT_RESPONDING_AFTER_S = 5.0  # 2.5 keepalives: a busy store or a slow disk is not "not responding"


def heartbeat_age(rec: JobRecord, now: Optional[datetime] = None) -> Optional[float]:
    """Seconds since the job's engine last wrote its heartbeat (None when unknown)."""
    stamp = rec.heartbeat_at or rec.updated_at
    try:
        at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return None
    return max(0.0, ((now or utcnow()) - at).total_seconds())


def with_liveness(rec: JobRecord, snap: JobStatusResponse, now: Optional[datetime] = None) -> JobStatusResponse:
    """The snapshot of a job an engine is running, with the heartbeat's age; "not responding" when
    the engine has been silent for a few heartbeats."""
    age = heartbeat_age(rec, now)
    if age is None:
        return snap
    metrics = dict(snap.metrics, heartbeat_age_seconds=round(age, 1))
    update: dict = {"metrics": metrics}
    if age > NOT_RESPONDING_AFTER_S:
        metrics["not_responding"] = True
        who = f"process {rec.owner_pid}" if rec.owner_pid else "its process"
        update["message"] = (
            f"not responding: no heartbeat from {who} for {age:.0f} s (stopped with Ctrl-Z or "
            f"SIGSTOP, or hung); last said: {snap.message}"
        )
    return snap.model_copy(update=update)
