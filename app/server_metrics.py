"""GET /metrics: every job of the home in Prometheus text format (prometheus-client), read at
scrape time from the same statuses the API serves. One `kbingest_` prefix; labels job_id, kb,
phase, status, kind, queue.

Jobs listed: every job running or paused, and the newest MAX_ENDED ended ones (a home keeps
every job it ever ran: the scrape stays bounded).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from kbingest.pipeline.status import JobStatus

MAX_ENDED = 50
STATUSES = [s.value for s in JobStatus]


class _JobsCollector:
    def __init__(self, host: Any) -> None:
        self.host = host

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, StateSetMetricFamily

        J, P = ["job_id", "kb"], ["job_id", "kb", "phase"]
        jobs_by_status = GaugeMetricFamily("kbingest_jobs", "jobs in the home by status", labels=["status"])
        job_status = StateSetMetricFamily("kbingest_job_status", "the job's status (1: the one it is in)", labels=J)
        progress = GaugeMetricFamily("kbingest_job_progress_ratio", "the job's progress, 0 to 1", labels=J)
        running_here = GaugeMetricFamily(
            "kbingest_job_running_in_server", "1 if the job runs in this server process", labels=J
        )
        processed = GaugeMetricFamily(
            "kbingest_phase_items_processed", "items the phase has processed (documents, or chunks)", labels=P
        )
        total = GaugeMetricFamily(
            "kbingest_phase_items_expected", "items the phase expects in all (items_total of the status)", labels=P
        )
        rate = GaugeMetricFamily("kbingest_phase_rate_items_per_second", "the phase's current rate", labels=P)
        eta = GaugeMetricFamily("kbingest_phase_eta_seconds", "the phase's estimated time left", labels=P)
        phase_status = StateSetMetricFamily(
            "kbingest_phase_status", "the phase's status (1: the one it is in)", labels=P
        )
        doc_errors = GaugeMetricFamily(
            "kbingest_document_errors", "failed documents the status lists, by kind of error", labels=[*J, "kind"]
        )
        failed = GaugeMetricFamily("kbingest_documents_failed", "documents that failed (all of them)", labels=J)
        queues = GaugeMetricFamily(
            "kbingest_queue_depth", "items waiting in the queue between two phases", labels=[*J, "queue"]
        )
        commits = CounterMetricFamily("kbingest_commits", "LanceDB commits of the job", labels=J)
        chunks = CounterMetricFamily("kbingest_chunks_indexed", "chunks the job wrote to the knowledge base", labels=J)
        embed_s = CounterMetricFamily(
            "kbingest_embedding_seconds", "time the job has spent in its embedding phase", labels=J
        )

        infos = self.host.jobs()
        by_status = Counter(i.status.status.value for i in infos)
        for s in STATUSES:
            jobs_by_status.add_metric([s], by_status.get(s, 0))
        ended = 0
        for info in infos:
            snap = info.status
            if snap.status.is_terminal:
                ended += 1
                if ended > MAX_ENDED:
                    continue
            j = [info.job_id, info.kb]
            job_status.add_metric(j, {s: snap.status.value == s for s in STATUSES})
            progress.add_metric(j, snap.progress / 100.0)
            running_here.add_metric(j, 1 if self.host.live(info.job_id) is not None else 0)
            for p in snap.phase_details:
                lab = [*j, p.name]
                processed.add_metric(lab, p.items_processed)
                total.add_metric(lab, p.items_total)
                rate.add_metric(lab, p.rate or 0.0)
                if p.eta_seconds is not None:
                    eta.add_metric(lab, p.eta_seconds)
                phase_status.add_metric(lab, {s: p.status.value == s for s in STATUSES})
                if p.name == "embedding":
                    embed_s.add_metric(j, p.duration_seconds or 0.0)
            for kind, n in sorted(Counter(e.kind for e in snap.errors).items()):
                doc_errors.add_metric([*j, kind], n)
            m = snap.m
            failed.add_metric(j, m.documents_failed or 0)
            commits.add_metric(j, m.commits or 0)
            chunks.add_metric(j, m.chunks_indexed or 0)
            if snap.status == JobStatus.RUNNING:
                for q, depth in sorted(self.host.queue_depths(info.job_id, snap).items()):
                    queues.add_metric([*j, q], depth)
        yield from (
            jobs_by_status,
            job_status,
            progress,
            running_here,
            processed,
            total,
            rate,
            eta,
            phase_status,
            doc_errors,
            failed,
            queues,
            commits,
            chunks,
            embed_s,
        )


def metrics_text(host: Any) -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_JobsCollector(host))
    return generate_latest(registry), CONTENT_TYPE_LATEST
