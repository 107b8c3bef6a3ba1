"""The Ray executor: the same pass on a Ray cluster (Ray Data).

    driver:  LoadStage (walk, read, hash, skip unchanged: the plan) --groups--> a bounded queue actor
             (an s3:// object is planned from its listing, not read: Doc.fetch carries its URI;
             a crawl's pages are fetched and read by fetch_page_task tasks the crawl starts, which
             answer links, validators, hash and the text's ObjectRef: Doc.fetch carries the ref)
    cluster: pull_and_chunk tasks (an s3:// object read there; ChunkStage; the stored vectors of
             texts the table holds, read there) --> EmbedWriter actor pool (EmbedStage, the model
             loaded once an actor, GPU where given) --> Lance fragments written by the actors into
             the job's staging dataset, under the knowledge base's location
    driver:  a wave (ray_wave_docs documents, or WAVE_SECONDS) at a time: its fragments become one
             version of the staging dataset, then ONE merge_insert keyed by chunk id (IndexStage.flush:
             metrics and checkpoint as for threads); the wave's staged files are deleted

One Ray Data dataset runs for the whole pass, so the actors (and their models) live as long as it.
Only the driver writes the knowledge base (concurrent merge_insert duplicates keys). A wave is
applied by one merge_insert or not at all: killed before it, the staging is discarded at the next
run's start and the resume's plan does that work again; killed after it, the plan skips it.
Pause commits the whole documents already staged and stops; cancel abandons what is in flight.
Either way the embedding actors are killed (each registered itself) and the dataset has ended
before the staging is removed: no batch in flight lands in it afterwards.
A killed actor is restarted by Ray and its batch retried. Without an address a private local Ray
starts with the job and stops with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import queue
import re
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from typing import Any, Iterator, Optional

from kbingest.pipeline.executors.base import Executor
from kbingest.pipeline.executors.ray_workers import ENV_FORWARDED, replay
from kbingest.pipeline.job.control import PhaseFailed, RunControl, Stopped
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.stages.base import Doc, PassStages
from kbingest.pipeline.stages.index import IndexStage, fault_point
from kbingest.pipeline.stages.load import LoadStage
from kbingest.pipeline.status import JobPhase

log = logging.getLogger("kbingest.engine")

WAVE_SECONDS = 30.0  # a wave is committed at ray_wave_docs documents, or this often
PULLERS = 2  # chunking tasks pulling the plan for the whole pass
PLAN_GROUPS = 8  # groups of documents waiting in the plan queue (bounded: memory stays flat)
CHUNK_BATCH_DOCS = 8  # documents a group holds
EMBED_BATCH_DOCS = 4  # documents an embedding actor takes a call (one fragment, one summary)
CHUNK_TASK_CPUS = 0.5
EMBED_ACTOR_CPUS = 1.0
ACTOR_RESTARTS = 3  # a killed actor is restarted, its batch retried, this many times
STOP_WAIT_S = 60.0  # a stopped pass waits this long for the dataset to end before removing its staging
LOCAL_OBJECT_STORE = 256 * 1024 * 1024
BLOCK_BYTES = 64 * 1024
_END = object()


class RayMissing(PhaseFailed):
    pass


class RaySession:
    """A connection to a Ray cluster: the one at `address`, or a private local one that this job
    starts (its own temp dir, no dashboard, a bounded object store) and stops."""

    def __init__(self, config: JobConfig) -> None:
        try:
            import ray
        except ImportError:
            raise RayMissing(JobPhase.LOADING, "the ray executor needs Ray: pip install 'kbingest[ray]'") from None
        self.owned = False
        self.temp_dir: Optional[str] = None
        # stderr is for the job's own lines: Ray's notes on this driver (no SIGTERM handler off the main
        # thread, constructor arguments in the object store) are not the operator's; its failures reach
        # the job as exceptions. RAY_BACKEND_LOG_LEVEL=info (set by the operator) brings them back.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        quiet: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
        if ray.is_initialized():  # a driver that connected already (tests, a notebook): use it
            pass
        elif config.ray_address:
            ray.init(address=config.ray_address, **quiet)
        else:
            self.temp_dir = tempfile.mkdtemp(prefix="kbingest-ray-")
            cpus = max(os.cpu_count() or 1, int(config.ray_embed_actors * EMBED_ACTOR_CPUS + 1))
            with warnings.catch_warnings():  # lancedb's note on forking, as Ray starts its processes
                warnings.simplefilter("ignore", RuntimeWarning)
                ray.init(
                    address="local",
                    num_cpus=cpus,
                    include_dashboard=False,
                    object_store_memory=LOCAL_OBJECT_STORE,
                    _temp_dir=self.temp_dir,
                    **quiet,
                )
            self.owned = True
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.verbose_stats_logs = False
        # small blocks: the documents a puller chunks and the summaries an actor makes flow as they
        # are made, not when the task ends (the pullers run for the whole pass)
        ctx.target_max_block_size = BLOCK_BYTES
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # stderr is for the job's own lines

    def close(self) -> None:
        if self.owned:
            import ray

            ray.shutdown()
            self.owned = False
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None


class RayExecutor(Executor):
    name = "ray"
    # the workers read the documents of object storage (Doc.fetch): the driver lists and plans only.
    # False: the driver reads them and ships their text (what bench/sources.py measures against)
    workers_fetch = True

    def __init__(self, control: RunControl) -> None:
        super().__init__(control)
        self.session: Optional[RaySession] = None
        self.rows_by_node: dict[str, int] = {}
        self.waves = 0

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    # ---- one pass ---------------------------------------------------------------------------
    @staticmethod
    def _table_stage(stages: PassStages) -> IndexStage:
        """The IndexStage of the pass: the Ray executor stages its waves in the table's storage."""
        index = stages.index
        if not isinstance(index, IndexStage):
            raise PhaseFailed(
                JobPhase.INDEXING,
                "the ray executor writes a knowledge base: no dry run (--until "
                "chunking) with --executor ray; use --executor threads",
            )
        return index

    def run_pass(self, stages: PassStages) -> None:
        index = self._table_stage(stages)
        config: JobConfig = index.config
        kb = index.kb
        if self.session is None:
            self.session = RaySession(config)
        if isinstance(stages.load, LoadStage):
            stages.load.defer_remote = self.workers_fetch
            stages.load.page_fetch = _page_fetcher(config) if self.workers_fetch else None
        self._failure: Optional[PhaseFailed] = None
        staging = kb.staging_uri(getattr(stages, "job_id", None) or f"run-{uuid.uuid4().hex[:12]}")
        kb.remove_staging(staging)  # a killed run's staged waves: never committed, so discarded
        try:
            self._run(stages, config, f"{staging}/rows.lance")
        finally:
            kb.remove_staging(staging)
        if self._failure is not None:
            raise self._failure
        if not self.control.stopping:
            stages.chunk.finish()
            stages.embed.flush()
            stages.index.finish()

    def _run(self, stages: PassStages, config: JobConfig, staging: str) -> None:
        import ray
        from ray.util.queue import Queue

        from kbingest.pipeline.executors.ray_workers import ActorRegistry

        plan = Queue(maxsize=PLAN_GROUPS, actor_options={"num_cpus": 0})
        registry = ray.remote(num_cpus=0)(ActorRegistry).remote()
        removals: list[Doc] = []
        summaries: queue.Queue = queue.Queue()
        # the cluster's part starts with the first document to work on (an unchanged pass starts nothing)
        index = self._table_stage(stages)
        kb = index.kb
        consumer = threading.Thread(
            target=lambda: self._consume(self._dataset(config, kb, plan, staging, registry), summaries),
            name="kbingest-ray",
            daemon=True,
        )
        feeder = threading.Thread(
            target=self._feed, args=(stages, plan, removals, consumer, summaries), name="kbingest-loader", daemon=True
        )
        feeder.start()
        wave: list[dict] = []
        wave_docs, wave_started = 0, time.monotonic()
        try:
            while True:
                try:
                    item = summaries.get(timeout=0.1)
                except queue.Empty:
                    item = None
                if self.control.stopping:
                    break
                if isinstance(item, BaseException):
                    raise _failed_phase(item)
                if item is _END:
                    feeder.join()
                    if self._failure is None:
                        self._commit(stages, staging, wave, removals)
                    break
                if item is not None:
                    replay(item["reports"], index.r)
                    if item["rows"]:
                        node = item["node"] or "?"
                        self.rows_by_node[node] = self.rows_by_node.get(node, 0) + item["rows"]
                        index.r.set("ray_rows_by_node", dict(self.rows_by_node))
                    wave.append(item)
                    wave_docs += len(item["docs"])
                if wave and (wave_docs >= config.ray_wave_docs or time.monotonic() - wave_started >= WAVE_SECONDS):
                    self._commit(stages, staging, wave, [])
                    wave, wave_docs, wave_started = [], 0, time.monotonic()
            if self.control.pausing and wave and self._failure is None:
                self._commit(stages, staging, wave, [])  # pause: the whole documents staged are kept
        except PhaseFailed as e:
            self._failure = self._failure or e
        except Stopped:
            pass
        except BaseException:
            self.control.halt()
            raise
        finally:
            if self._failure is not None:
                self.control.halt()
            # a stopped dataset fails as it must: Ray Data's report of that is not the operator's to
            # read, while it ends; its later passes in this process (a server's next job) are heard
            with ray_data_silenced() if self.control.stopping else contextlib.nullcontext():
                if self.control.stopping:
                    ray.kill(plan.actor)  # the pullers fail, the pass's tasks end
                    _end_actors(registry)  # and no embedding actor writes into the staging any more
                feeder.join(timeout=30)
                if consumer.ident is not None:
                    consumer.join(timeout=STOP_WAIT_S)
            ray.kill(registry)

    def _feed(
        self, stages: PassStages, plan, removals: list[Doc], consumer: threading.Thread, summaries: queue.Queue
    ) -> None:
        """The driver's part: walk, read, hash and skip unchanged documents (LoadStage); the plan goes
        to the cluster in groups through a bounded queue, then one end mark per puller."""
        group: list[Any] = []

        def send(group: list[Any]) -> None:
            if not consumer.is_alive() and consumer.ident is None:
                consumer.start()
            self._put(plan, group)

        try:
            for d in stages.load:
                if d.removal:
                    removals.append(d)  # no work on the cluster: committed with the last wave
                    continue
                if d.fetch is not None and d.fetch.loaded is not None:  # a page's text, on a worker: its ref
                    ref = d.fetch.loaded
                    d = dataclasses.replace(d, fetch=dataclasses.replace(d.fetch, loaded=None))
                    group.append((pickle.dumps(d), ref))
                else:
                    group.append(pickle.dumps(d))
                if len(group) >= CHUNK_BATCH_DOCS:
                    send(group)
                    group = []
            if group:
                send(group)
            if consumer.ident is None:
                summaries.put(_END)  # nothing to do on the cluster
                return
            for _ in range(PULLERS):
                self._put(plan, None)
        except Stopped:
            return
        except BaseException as e:
            log.exception("loader")
            self._failure = self._failure or PhaseFailed(JobPhase.LOADING, f"{type(e).__name__}: {e}")
            self.control.halt()

    def _put(self, plan, item: Any) -> None:
        from ray.util.queue import Full

        while True:
            self.control.check()
            try:
                plan.put(item, timeout=0.2)
                return
            except Full:
                continue

    def _dataset(self, config: JobConfig, kb, plan, staging: str, registry):
        import ray.data

        from kbingest.pipeline.executors.ray_workers import EmbedWriter, pull_and_chunk

        env = {k: os.environ[k] for k in ENV_FORWARDED if k in os.environ}
        # the workers read object storage (documents, a --db s3:// table) with the driver's AWS_*
        # environment: given as the tasks' runtime environment, never as an argument (arguments are logged)
        aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        remote_env: dict[str, Any] = {"runtime_env": {"env_vars": aws}} if aws else {}
        gpus = config.ray_gpus_per_actor or None
        cfg = config.model_dump_json()
        ds = ray.data.range(PULLERS, override_num_blocks=PULLERS)
        table = (kb.location, kb.name)  # read there for stored vectors (credentials: the worker's own)
        ds = ds.map_batches(
            pull_and_chunk,
            fn_args=(cfg, plan, staging, table),
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=CHUNK_TASK_CPUS,
            **remote_env,
        )
        with warnings.catch_warnings():  # restarts are a remote argument Ray Data still takes (pinned < 2.64)
            warnings.simplefilter("ignore")
            return ds.map_batches(
                EmbedWriter,
                fn_constructor_args=(cfg, env, gpus or 0.0, registry),
                batch_size=EMBED_BATCH_DOCS,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=config.ray_embed_actors),
                num_cpus=EMBED_ACTOR_CPUS,
                num_gpus=gpus,
                max_restarts=ACTOR_RESTARTS,
                max_task_retries=ACTOR_RESTARTS,
                **remote_env,
            )

    def _consume(self, ds, out: queue.Queue) -> None:
        """The pass's summaries as the actors finish batches (a thread: the driver's loop stays free
        to see pause and cancel, and to commit while the cluster goes on)."""
        try:
            for row in ds.iter_rows():
                out.put(pickle.loads(row["summary"]))
                if self.control.stopping:
                    return
            out.put(_END)
        except BaseException as e:  # a task that failed past its retries
            out.put(e)

    def _commit(self, stages: PassStages, staging: str, wave: list[dict], removals: list[Doc]) -> None:
        """One wave: its fragments become one version of the staging dataset, then its whole documents
        are written in ONE merge_insert (IndexStage.flush: checkpoint and metrics as for threads)."""
        index = self._table_stage(stages)
        fragments = [f for s in wave for f in s["fragments"]]
        by_doc: dict[str, list[dict]] = {}
        if fragments:
            for row in _commit_staging(staging, fragments, wave[0]["dim"]).to_pylist():
                by_doc.setdefault(row["doc_id"], []).append(row)
        self.waves += 1
        fault_point("ray_staged", self.waves)
        for s in wave:
            for doc_id, path, version, replaces, title, dropped, n_rows in s["docs"]:
                if dropped:
                    continue
                rows = by_doc.get(doc_id, [])
                if len(rows) != n_rows:  # never half a document
                    raise PhaseFailed(
                        JobPhase.INDEXING, f"staged wave holds {len(rows)} of the {n_rows} rows of {path}"
                    )
                index.add(Doc(path=path, doc_id=doc_id, version=version, replaces=replaces, title=title, rows=rows))
        for d in removals:
            index.add(d)
        if index.batch:
            index.flush()
            index.r.count("ray_waves")
        _drop_files(staging, fragments)


def _page_fetcher(config: JobConfig):
    """The crawl's fetch on Ray (sources.WebSource.fetch_remote): each page a task on a worker
    (fetch_page_task), started by the crawl on the driver (its politeness delay and concurrency limit:
    one thread waits on each task); the driver gets the page's links, validators, hash and format, and
    its text's ObjectRef, never its bytes. No CPU reserved: a page's fetch never waits behind the
    pass's chunking and embedding (which wait on it)."""
    import ray

    from kbingest.pipeline.executors.ray_workers import fetch_page_task
    from kbingest.pipeline.load import sources

    task = ray.remote(num_cpus=0, max_retries=0)(fetch_page_task)
    cfg = config.model_dump_json()
    deadline = sources.WEB_TIMEOUT_S * 2  # one request (a redirect is answered, not followed)

    def fetch(url: str, headers: dict, old: Optional[dict], root: str, prefix: str):
        try:
            meta = ray.get(task.remote(url, root, headers, old, cfg, prefix), timeout=deadline)
        except Exception as e:  # the task failed or timed out: this page's error
            return sources.Problem(url, "fetch_failed", f"cannot fetch the page on a worker: {type(e).__name__}"), []
        return sources.item_from_fetched(meta, url, root, old)

    return fetch


@contextlib.contextmanager
def ray_data_silenced() -> Iterator[None]:
    """Ray Data's logger says nothing inside, and what it said before after."""
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _end_actors(registry) -> None:
    """Kill the pass's embedding actors (no restart) and wait until each is gone (bounded): a batch
    in flight is dropped, not written into a staging about to be removed."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    try:
        actors = ray.get(registry.take.remote(), timeout=10)
    except RayError:
        return
    for a in actors:
        ray.kill(a, no_restart=True)
    deadline = time.monotonic() + STOP_WAIT_S
    for a in actors:
        try:
            ray.get(a.__ray_ready__.remote(), timeout=max(0.1, deadline - time.monotonic()))
        except GetTimeoutError:
            log.warning("an embedding actor did not end within %.0f s of the stop", STOP_WAIT_S)
        except RayError:
            pass  # dead: what the kill was for


def _commit_staging(uri: str, fragments: list[str], dim: int):
    """The fragments the actors wrote become the wave's staging dataset (one Lance commit); its rows."""
    import lance
    from lance.fragment import FragmentMetadata

    from kbingest.pipeline.executors.ray_workers import staging_options
    from kbingest.pipeline.kb.table import schema

    op = lance.LanceOperation.Overwrite(schema(dim), [FragmentMetadata.from_json(f) for f in fragments])
    return lance.LanceDataset.commit(uri, op, storage_options=staging_options(uri)).to_table()


def _drop_files(staging: str, fragments: list[str]) -> None:
    """A committed wave's staged files are deleted at once: staging holds one wave at a time."""
    import json

    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(staging if "://" in staging else os.path.abspath(staging))
    for f in fragments:
        for file in json.loads(f).get("files", []):
            try:
                filesystem.delete_file(f"{root}/data/{file['path']}")
            except (OSError, KeyError):
                pass


def _failed_phase(e: BaseException) -> PhaseFailed:
    text = str(e)
    phase = JobPhase.CHUNKING if "chunk_batch" in text else JobPhase.EMBEDDING
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    causes = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Failure)\b.*:", ln)]
    return PhaseFailed(phase, f"ray: {(causes or lines or [type(e).__name__])[-1]}"[:500])
