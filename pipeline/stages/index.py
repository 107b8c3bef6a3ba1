"""Indexing: documents whose rows all have vectors are committed to LanceDB, whole, in batches.

A document is the unit of commit: its chunks reach the table in one merge_insert, then the
checkpoint is recorded. Compaction (optimize) is hygiene: a failure of it fails nothing.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Optional

from kbingest.pipeline.job.control import RunControl, with_retries
from kbingest.pipeline.kb.table import KnowledgeBase
from kbingest.pipeline.messages import describe, note_document
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.stages.base import Doc, Reporter
from kbingest.pipeline.status import JobPhase

log = logging.getLogger("kbingest.engine")
PHASE = JobPhase.INDEXING


class IndexStage:
    def __init__(self, config: JobConfig, reporter: Reporter, control: RunControl, kb: KnowledgeBase) -> None:
        self.config = config
        self.r = reporter
        self.control = control
        self.kb = kb
        self.batch: list[Doc] = []
        self.rows = 0
        self.first_at: Optional[float] = None
        self.last_commit_at: Optional[float] = None  # monotonic time of the last LanceDB write
        self.optimize_peak_mib = 0.0  # the largest peak RSS of a compaction child

    def add(self, d: Doc) -> None:
        if d.dropped:
            return
        self.batch.append(d)
        self.rows += len(d.rows)
        self.first_at = self.first_at or time.monotonic()

    def due(self) -> bool:
        c = self.config
        return bool(self.batch) and (
            self.rows >= c.commit_rows or time.monotonic() - (self.first_at or 0) >= c.commit_seconds
        )

    def flush(self) -> None:
        """Commit what is batched."""
        docs, self.batch, self.rows, self.first_at = self.batch, [], 0, None
        if docs:
            self._commit(docs)

    def finish(self) -> None:
        """Every document is committed: the phase is done; compact the table if it was written."""
        self.r.phase_done(PHASE)
        if self.kb.commits or self.kb.optimize_pending:  # pending: an optimize a kill or failure left unfinished
            self.r.message("optimizing the table")
            self.optimize()

    def _commit(self, docs: list[Doc]) -> None:
        r, kb = self.r, self.kb
        rows = [
            dict(row, vector=row["vector"].tolist() if hasattr(row["vector"], "tolist") else row["vector"])
            for d in docs
            for row in d.rows
        ]
        r.phase_started(PHASE)
        t0 = time.monotonic()
        note_document(docs[0].path)
        if rows:
            kb.ensure(len(rows[0]["vector"]))
        with_retries(
            PHASE,
            lambda: kb.write(rows, [d.doc_id for d in docs], replacing=[d.doc_id for d in docs if d.replaces]),
            retries=self.config.retries,
            control=self.control,
            on_retry=lambda: r.count("indexing_retries"),
        )
        self.last_commit_at = time.monotonic()
        fault_point("after_commit", kb.commits)
        # the table holds them now: record the checkpoint after. The commit's time is the indexer's own
        # speed (the job's ETA once all is embedded), positional: the Ray executor replays args only
        r.progress(PHASE, len(rows), False, self.last_commit_at - t0)
        r.count("chunks_indexed", len(rows))
        r.count("commits")
        for d in docs:
            r.count("documents_removed" if d.removal else "documents_replaced" if d.replaces else "documents_added")
        if kb.commits % self.config.optimize_every == 0:
            self.optimize()
        r.checkpoint()

    def optimize(self) -> None:
        """Compaction is hygiene, not ingestion: what is committed stays searchable if it fails, and
        the next optimize (this job's or the next one's) catches up."""
        try:
            report = self.kb.optimize()
            self.r.count("optimizes")
            if report.get("child"):  # the memory compaction took, apart from the job's (figure 3 of the bench)
                self.optimize_peak_mib = max(self.optimize_peak_mib, float(report.get("peak_rss_mib") or 0))
                self.r.set("optimize_peak_rss_mib", self.optimize_peak_mib)
        except Exception as e:
            log.warning("%s (the data is committed)", describe(e, doing=f"optimizing knowledge base {self.kb.name}"))
            self.r.count("optimize_errors")


def fault_point(name: str, count: int) -> None:
    """Fault injection for the crash tests: KBINGEST_CRASH_AT=after_commit:N kills the process
    (like SIGKILL: no cleanup) at that point. Unset in normal use: one environment lookup."""
    spec = os.environ.get("KBINGEST_CRASH_AT")
    if spec and spec == f"{name}:{count}":
        os._exit(137)
