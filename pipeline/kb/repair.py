"""`kbingest repair --kb NAME`: bring a damaged knowledge base back to a state that can be read.

LanceDB keeps every version of a table (a manifest per version in `_versions/`, data files in
`data/`); a commit writes new files and then a new manifest, so an older version stays whole when
the files of a newer one are lost. Repair, holding the knowledge base's writer lock (no job writes meanwhile):

1. opens the table; a newest manifest that does not parse is moved aside until one opens;
2. reads the current version whole (every row, every column, streamed): readable -> nothing to do;
3. else checks out older versions, newest first, and restores the first that reads whole (a new
   version with its content: nothing is rewritten, later versions stay on disk);
4. else, or when no manifest opens at all, moves the table aside and re-creates it empty (with
   its schema, where a manifest still says it), so that the next ingest rebuilds it.

What is taken out is moved aside, never deleted: to HOME/damaged/ for a table in the home, to
DB/.kbingest/damaged/ beside the table for a --db folder (the same disk: nothing is copied); every
folder on the way is opened without following a link (a planted HOME/damaged is refused). On S3 a
readable older version is restored; nothing is moved there. Documents indexed after the version
kept are found missing by the next ingest of the same sources and indexed again (skip-by-hash).
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from kbingest.pipeline.errors import Busy, EngineFailure, NotFound
from kbingest.pipeline.kb.location import KbLocation
from kbingest.pipeline.kb.table import connect, damage_of, list_kbs
from kbingest.pipeline.locking import LOCATION_DIR, holder_pid
from kbingest.pipeline.messages import reason
from kbingest.pipeline.paths import Home, open_folder, validate_name

Action = Literal["healthy", "restored", "recreated"]
MAX_MANIFESTS_SET_ASIDE = 16  # a table whose 16 newest manifests do not parse is re-created
READ_BATCH_ROWS = 4096  # rows per batch while reading a version whole (memory stays flat)


class UnknownKB(NotFound):
    pass


class NotDamaged(EngineFailure):
    """The table cannot be read for another reason than lost or truncated files (permissions, a full
    disk, memory): repair changes nothing, and says why."""


@dataclass
class RepairOutcome:
    kb: str
    action: Action
    message: str
    version: Optional[int] = None  # the version the table is at now
    rows: int = 0
    set_aside: list[str] = field(default_factory=list)  # what was moved to HOME/damaged


def _readable(table, kb: str) -> Optional[str]:
    """None when the checked-out version reads whole; else how its files are damaged (NotDamaged
    when it fails for another reason)."""
    try:
        n = table.count_rows()
        seen = 0
        for batch in table.search(None).limit(None).to_batches(READ_BATCH_ROWS):
            seen += batch.num_rows
        if seen != n:
            return f"{seen} of its {n} rows could be read"
        return None
    except Exception as e:
        return _damage_or_refuse(e, kb)


def _damage_or_refuse(e: Exception, kb: str) -> str:
    why = damage_of(e)
    if why is None:
        raise NotDamaged(
            f"knowledge base {kb!r} cannot be read, but not because its files are lost or cut short: {reason(e)}; "
            "repair changes nothing"
        ) from e
    return why


def _manifests(table_dir: Path) -> list[Path]:
    """Manifests, newest first (LanceDB names them so that newer sort first, or by number)."""
    found = list((table_dir / "_versions").glob("*.manifest"))

    def version_of(p: Path) -> int:
        try:
            n = int(p.stem)
        except ValueError:
            return -1
        return (2**64 - 1) - n if n > 2**63 else n  # the V2 scheme counts down from u64::MAX

    return sorted(found, key=version_of, reverse=True)


class _Aside:
    """Moves damaged parts to HOME/damaged/NAME-TIMESTAMP/ (a table in the home) or to
    DB/.kbingest/damaged/NAME-TIMESTAMP/ (a --db folder), keeping their relative paths. The folders
    are opened (and made) without following a link; the part is renamed into the folder's descriptor."""

    def __init__(self, home: Home, kb: str, location: KbLocation) -> None:
        name = f"{kb}-{time.strftime('%Y%m%dT%H%M%S')}"
        if location.uri == str(home.lancedb_dir):
            self.root, self.base, self.in_home = home.root, Path("damaged") / name, True
        else:
            self.root, self.base, self.in_home = Path(location.uri), Path(LOCATION_DIR) / "damaged" / name, False
        self.dest = self.root / self.base
        self.moved: list[str] = []

    def move(self, path: Path, rel: str) -> Path:
        target = self.dest / rel
        dfd = open_folder(self.root, (self.base / rel).parent, create=True, home=self.in_home)
        try:
            try:
                os.rename(str(path), target.name, dst_dir_fd=dfd)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                shutil.move(str(path), f"/proc/self/fd/{dfd}/{target.name}")  # another disk: copied there
        finally:
            os.close(dfd)
        self.moved.append(str(target))
        return target


def _open(db, kb: str, table_dir: Optional[Path], aside: _Aside):
    """The table, setting aside newest manifests that do not open; None when none opens (or, on S3
    where nothing is moved, when the newest does not)."""
    for _ in range(MAX_MANIFESTS_SET_ASIDE + 1):
        try:
            return db.open_table(kb), None
        except Exception as e:
            why = _damage_or_refuse(e, kb)
            if table_dir is None:
                return None, why
            found = _manifests(table_dir)
            if len(found) < 2:  # the last one (or none) left: nothing older to fall back to
                return None, why
            aside.move(found[0], f"_versions/{found[0].name}")
    return None, f"its {MAX_MANIFESTS_SET_ASIDE} newest manifests do not open"


def repair(
    home: Home, kb: str, sources: Optional[list[str]] = None, location: Optional[KbLocation] = None
) -> RepairOutcome:
    """Check knowledge base KB (at `location`, HOME/lancedb by default) and repair it if it is
    damaged; say what was done. `sources`, when known (the newest job's), make the message name the
    command that re-indexes what was lost."""
    validate_name(kb, "knowledge base name")
    location = location or KbLocation.default(home)
    default = location.uri == str(home.lancedb_dir)
    table_dir = Path(location.table_uri(kb)) if location.is_local else None
    if table_dir is not None and not table_dir.is_dir():
        raise UnknownKB(f"no knowledge base {kb!r} in {home.root if default else location}")
    db_flag = "" if default else f" --db {shlex.quote(location.uri)}"
    again = (
        f"`kbingest ingest {' '.join(shlex.quote(s) for s in sources)} --kb {kb}{db_flag}`"
        if sources
        else f"`kbingest ingest SOURCE... --kb {kb}{db_flag}`"
    )
    from kbingest.pipeline.jobstore import queue
    from kbingest.pipeline.locking import HeldLocks

    lock = queue.try_kb_lock(home, kb)  # what a job writing it holds: none starts meanwhile
    if lock is None:
        pid = holder_pid(home.kb_lock_file(kb), home.root)
        raise Busy(
            f"a job is writing knowledge base {kb!r} ({f'process {pid}' if pid else 'another process'}): "
            "repair it once that job has stopped (`kbingest pause` or `cancel` it)"
        )
    writer = location.writer_lock(kb, {"home": str(home.root), "job": "repair"})
    try:
        if not writer.try_acquire():  # a job of another home writes it there
            raise Busy(
                f"knowledge base {kb!r} at {location} is being written by {writer.holder()}: "
                "repair it once that job has stopped"
            )
    except BaseException:
        lock.release()
        raise
    with HeldLocks(lock, writer):
        db = connect(home, location)
        if table_dir is None and kb not in list_kbs(home, location):
            raise UnknownKB(f"no knowledge base {kb!r} in {location}")
        aside = _Aside(home, kb, location)
        table, why = _open(db, kb, table_dir, aside)
        schema = None
        if table is not None:
            schema = table.schema
            latest = table.version
            why = _readable(table, kb)
            if why is None:
                n = table.count_rows()
                if not aside.moved:
                    return RepairOutcome(
                        kb,
                        "healthy",
                        f"knowledge base {kb!r} is healthy: version {latest}, "
                        f"{n} chunks, every row readable; nothing to do",
                        latest,
                        n,
                    )
                return RepairOutcome(
                    kb,
                    "restored",
                    (
                        f"knowledge base {kb!r}: {len(aside.moved)} newest manifest(s) could not be read and were "
                        f"moved to {aside.dest}; it is at version {latest} now ({n} chunks). Documents indexed after "
                        f"it are missing: {again} indexes them again"
                    ),
                    latest,
                    n,
                    aside.moved,
                )
            for v in sorted((int(x["version"]) for x in table.list_versions()), reverse=True):
                if v >= latest:
                    continue
                table.checkout(v)
                try:
                    unreadable = _readable(table, kb)
                except NotDamaged:  # an older version failing otherwise is not one to restore either
                    continue
                if unreadable is None:
                    n = table.count_rows()
                    table.restore()
                    return RepairOutcome(
                        kb,
                        "restored",
                        (
                            f"knowledge base {kb!r}: version {latest} could not be read ({why}); restored version {v} "
                            f"({n} chunks) as version {table.version}. Documents indexed after version {v} are "
                            f"missing: {again} indexes them again"
                        ),
                        table.version,
                        n,
                        aside.moved,
                    )
        # nothing readable is left: start the table anew, keep the damaged one for inspection
        if table_dir is None:
            raise EngineFailure(
                f"knowledge base {kb!r} at {location}: no version of it could be read ({why}); "
                "on S3 repair restores a readable version and moves nothing: remove the table "
                f"({location.table_uri(kb)}) and run {again}"
            )
        moved = aside.move(table_dir, f"{kb}.lance")
        if schema is not None:
            db.create_table(kb, schema=schema)
        made = "re-created it empty" if schema is not None else "removed it (the next ingest creates it)"
        return RepairOutcome(
            kb,
            "recreated",
            (
                f"knowledge base {kb!r}: no version of it could be read ({why}); moved its table to {moved} and "
                f"{made}; {again} indexes its documents again"
            ),
            None,
            0,
            aside.moved,
        )
