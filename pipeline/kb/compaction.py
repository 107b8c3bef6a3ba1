"""Compaction of a knowledge base in a short-lived child process.

Compaction merges the small fragments each commit writes, prunes old versions and adds the rows
written since to the search indexes (`compact`). Its memory must not follow the table (docs/
benchmarks.md, memory): LanceDB's optimize() rewrote every fragment under its 1M-row target, so
each optimize decoded and re-encoded the whole table (a 64k-row table's child peaked at 530 MiB).
A large table (from CHILD_ROWS rows) is compacted in a child with pylance's compaction, which
leaves fragments of COMPACT's target alone and copies encoded pages where it can: an optimize
rewrites what was written since, and the child's peak stays flat (~255-290 MiB at 64k rows, of
which ~150 MiB is pylance's own import; LanceDB only when an index must be built). Its memory is
returned to the system when it exits, and the job's own stays flat. One writer at a time still
holds: the indexer (the only writer) waits for the child. Small tables are optimized in the
process by LanceDB's optimize: there a child's start-up would dominate.

The child lives no longer than the engine that started it (which holds its knowledge base's writer lock):
the kernel kills it when its parent dies (PR_SET_PDEATHSIG), and a watchdog thread in it checks
that its parent is still the engine, for the instant before prctl and for systems without it.

After compaction, the search indexes the table lacks are built (pipeline/kb/search_indexes.py): the
full-text index, and the ANN index past its row threshold; in the child for a large table, so an
index build's memory is returned too.

    python -m kbingest.pipeline.kb.compaction URI TABLE PARENT_PID [ANN_MIN_ROWS [OPTIONS_JSON]]
    # prints {"peak_rss_mib": ..., "seconds": ..., "indexes": {...}}; no ANN_MIN_ROWS: no index to build

URI is a folder or s3://bucket/prefix; OPTIONS_JSON the job's non-secret storage options (the child
reads credentials from the same AWS_* environment as the parent).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from typing import Optional

KEEP_VERSIONS_S = 60  # versions newer than this survive: readers of older versions keep working
TIMEOUT_S = 1800
PARENT_CHECK_S = 0.2  # how often the child checks that the engine that started it lives
DELAY_ENV = "KBINGEST_COMPACTION_DELAY"  # tests: seconds the child waits before it optimizes
PR_SET_PDEATHSIG = 1
CHILD_ROWS = 20_000  # from this table size on, a child: below it the memory is small and a child's
# start-up (~1.5 s of CPU) would cost more than it saves (every watch burst optimizes)


# How fragments are merged (pylance's compact_files), by peak RSS measured on the 10x corpus
# (docs/benchmarks.md, memory: 64k rows, child peak 532 MiB with LanceDB's defaults, 290 with these).
COMPACT = {
    "target_rows_per_fragment": 8192,  # a fragment this large is done: later compactions leave it alone
    "compaction_mode": "try_binary_copy",  # copy encoded pages where the schemas match, no decode/re-encode
    "batch_size": 1024,  # rows read at a time where pages must be re-encoded
    "num_threads": 1,  # one rewrite task at a time: its buffers, not one per core
}


class CompactionError(RuntimeError):
    pass


def compact(ds) -> None:
    """Compact a Lance dataset, prune versions older than KEEP_VERSIONS_S (what LanceDB's optimize
    does, with COMPACT's bounds), and add the rows written since to its indexes."""
    ds.optimize.compact_files(**COMPACT)
    ds.cleanup_old_versions(older_than=timedelta(seconds=KEEP_VERSIONS_S), error_if_tagged_old_versions=False)
    ds.optimize.optimize_indices()


def optimize_here(table, ann_min_rows: Optional[int] = None) -> dict:
    """Optimize an open lancedb Table in this process with LanceDB's own optimize (a small table:
    its whole rewrite is small, and the job does not import pylance's Python package, ~23 MiB),
    then build the search indexes it lacks (none when ann_min_rows is None: compaction only)."""
    from kbingest.pipeline.kb.search_indexes import maintain

    t0 = time.perf_counter()
    table.optimize(cleanup_older_than=timedelta(seconds=KEEP_VERSIONS_S))
    indexes = maintain(table, ann_min_rows) if ann_min_rows is not None else {}
    return {"peak_rss_mib": None, "seconds": round(time.perf_counter() - t0, 3), "child": False, "indexes": indexes}


def optimize_in_child(location, table: str, ann_min_rows: Optional[int] = None) -> dict:
    """Optimize TABLE at `location` (a KbLocation) in a child process, and build the search indexes
    it lacks when ann_min_rows is given (the caller knows: search_indexes.wanted); returns the child's
    report (its own peak RSS, seconds, indexes built)."""
    env = dict(os.environ, LANCEDB_LOG=os.environ.get("LANCEDB_LOG", "error"))
    import kbingest

    here = os.path.dirname(os.path.dirname(os.path.abspath(kbingest.__file__)))  # the child imports this very package
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    args = [
        location.uri,
        table,
        str(os.getpid()),
        "" if ann_min_rows is None else str(ann_min_rows),
        json.dumps(dict(location.options)),
    ]
    r = subprocess.run(
        [sys.executable, "-m", "kbingest.pipeline.kb.compaction", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise CompactionError(f"optimize of {table} exited {r.returncode}: {tail}")
    return dict(json.loads(r.stdout.strip().splitlines()[-1]), child=True)


def _die_with_parent(parent: int) -> None:
    """Never outlive the engine: a child left behind would write to the table without its lock."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still holds

    def watchdog() -> None:
        while True:
            if os.getppid() != parent:  # reparented: the engine is gone (also before prctl took hold)
                os._exit(1)
            time.sleep(PARENT_CHECK_S)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watchdog, name="kbingest-compaction-watchdog", daemon=True).start()


def main(argv: list[str]) -> int:
    from kbingest.pipeline.kb.location import KbLocation
    from kbingest.pipeline.rss import own_peak_rss_mib

    uri, name, parent, min_rows, options = (list(argv) + ["", "{}"])[:5]
    _die_with_parent(int(parent))
    time.sleep(float(os.environ.get(DELAY_ENV) or 0))
    location = KbLocation(uri, json.loads(options or "{}"))
    t0 = time.perf_counter()
    compact(location.open_dataset(name))
    indexes = {}
    if min_rows:  # an index to build: LanceDB's configs (its import costs ~90 MiB, so only then)
        from kbingest.pipeline.kb.search_indexes import maintain

        indexes = maintain(location.connect().open_table(name), int(min_rows))
    print(
        json.dumps(
            {"peak_rss_mib": own_peak_rss_mib(), "seconds": round(time.perf_counter() - t0, 3), "indexes": indexes}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
