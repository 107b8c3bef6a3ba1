"""What a knowledge base holds, remembered between runs, so that an unchanged run opens no table.

A pass that opened the table writes HOME/kbstate/<key>.json when it ends: the table's signature,
its vector size and columns, and the documents it holds (doc_id -> version, source, chunks). The
next pass that finds the same signature takes the documents from the file and opens the table only
when a document changed: an unchanged run imports neither LanceDB nor the model (issue 12).

The signature is read from the table's `_versions` folder before the documents are scanned. Every
commit, by any writer, adds a manifest there, so a file whose signature no longer matches is never
trusted. The documents are those scanned (or remembered) when the pass began, with what the pass
wrote: right because the job holds the knowledge base's lock for the whole pass, so nothing else of
this home commits meanwhile. Only HOME/lancedb tables are remembered: a table at a --db location may
be written by another home, whose lock this home does not see.

A table's files can be lost without a commit (a data file deleted or cut short): the file also
lists the table's data files and their sizes as the pass left them (Lance never rewrites one), and
is trusted only while each is there at its size, one stat per file. Otherwise it is forgotten, the
table is opened and read, and LanceDB's own failure names the damage (KBDamaged: `kbingest repair`).

HOME/kbstate/<kb>.mark.json keeps the knowledge base's high-water mark: its document count at the
end of the last pass that added documents (the mass-removal guard measures removals against it,
pipeline/stages/load.py). It is a separate file, so that it survives what forgets the state above (a
failed pass, a changed table); like it, it is kept for HOME/lancedb tables only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from kbingest.pipeline.paths import Home, HomeError

log = logging.getLogger("kbingest.engine")
FORMAT = 2  # 2: with the data files (and sizes) of the table
MAX_DOCS = 100_000  # a larger knowledge base is scanned each run: its file would cost what the scan does


@dataclass(frozen=True)
class StoredDoc:
    version: str
    source: str
    chunks: int


@dataclass(frozen=True)
class KbState:
    dim: int
    columns: tuple[str, ...]
    docs: dict[str, StoredDoc]


def _versions_dir(uri: str, kb: str) -> Path:
    return Path(uri) / f"{kb}.lance" / "_versions"


def _data_dir(uri: str, kb: str) -> Path:
    return Path(uri) / f"{kb}.lance" / "data"


def data_files(uri: str, kb: str) -> dict[str, int]:
    """The table's data files and their sizes, as they are now (one listing)."""
    try:
        with os.scandir(_data_dir(uri, kb)) as it:
            return {e.name: e.stat(follow_symlinks=False).st_size for e in it if e.name.endswith(".lance")}
    except OSError:
        return {}


def lost_files(uri: str, kb: str, files: dict[str, int]) -> list[str]:
    """The data files of this list that are missing or not at their size (one stat each)."""
    d, lost = _data_dir(uri, kb), []
    for name, size in files.items():
        try:
            if os.stat(d / name, follow_symlinks=False).st_size != size:
                lost.append(name)
        except OSError:
            lost.append(name)
    return lost


def signature(uri: str, kb: str) -> Optional[str]:
    """The table's newest manifests and their folder's mtime, or None (no table)."""
    d = _versions_dir(uri, kb)
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".manifest"))
        mtime = os.stat(d).st_mtime_ns
    except OSError:
        return None
    if not names:
        return None
    return f"{len(names)}:{names[0]}:{names[-1]}:{mtime}"


def _file(home: Home, kb: str) -> Path:
    return home.root / "kbstate" / f"{kb}.json"  # kb: a validated name (no separators)


def read(home: Home, kb: str) -> Optional[KbState]:
    """The remembered state of HOME/lancedb's table `kb`, when the table is as it was when it was
    written; else None."""
    uri = str(home.lancedb_dir)
    sig = signature(uri, kb)
    if sig is None:
        return None
    try:
        fd = home.open_file(_file(home, kb), os.O_RDONLY)  # HOME/kbstate: no link followed
        with os.fdopen(fd) as f:
            data = json.load(f)
        if data.get("format") != FORMAT or data.get("signature") != sig:
            return None
        lost = lost_files(uri, kb, data["files"])
        if lost:  # the manifest is the same, its files are not: never trusted; the table is read
            log.info("knowledge base %s: data file %s is missing or cut short: reading the table", kb, lost[0])
            forget(home, kb)
            return None
        docs = {d: StoredDoc(str(v), str(s), int(n)) for d, (v, s, n) in data["docs"].items()}
        return KbState(dim=int(data["dim"]), columns=tuple(data["columns"]), docs=docs)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, unreadable, another format: the table is scanned


def write(home: Home, kb: str, dim: int, columns: list[str], docs: dict[str, StoredDoc]) -> None:
    """Remember what HOME/lancedb's table `kb` holds now (its signature read here)."""
    path = _file(home, kb)
    sig = signature(str(home.lancedb_dir), kb)
    if sig is None or len(docs) > MAX_DOCS:
        forget(home, kb)
        return
    data = {
        "format": FORMAT,
        "signature": sig,
        "dim": dim,
        "columns": columns,
        "files": data_files(str(home.lancedb_dir), kb),
        "docs": {d: [s.version, s.source, s.chunks] for d, s in docs.items()},
    }
    try:
        _save(home, path, data)
    except OSError as e:  # only an optimisation: the next run scans the table
        log.info("could not remember the state of knowledge base %s: %s", kb, e)


def _save(home: Home, path: Path, data: dict) -> None:
    """Write a JSON file of HOME/kbstate atomically (temp file, rename); raises OSError."""
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    dfd = None
    try:
        # the folder opened once, without following a link (a planted HOME/kbstate is refused);
        # the file written and renamed relative to it: nothing outside the home is replaced
        dfd = home.open_folder(path.parent.relative_to(home.root), create=True)
        fd = os.open(tmp.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp.name, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError:
        if dfd is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp.name, dir_fd=dfd)
        raise
    finally:
        if dfd is not None:
            os.close(dfd)


def forget(home: Home, kb: str) -> None:
    """Best effort (it runs on failure paths): a planted HOME/kbstate is refused by read and write."""
    with contextlib.suppress(OSError, HomeError):
        home.remove_file(_file(home, kb))


# ---- the high-water mark of the mass-removal guard ------------------------------------------------
def _mark_file(home: Home, kb: str) -> Path:
    return home.root / "kbstate" / f"{kb}.mark.json"


def read_mark(home: Home, kb: str) -> Optional[int]:
    """The documents HOME/lancedb's knowledge base `kb` held at the end of the last pass that added
    documents (or whose removals the operator allowed); None when not known."""
    try:
        fd = home.open_file(_mark_file(home, kb), os.O_RDONLY)  # HOME/kbstate: no link followed
        with os.fdopen(fd) as f:
            data = json.load(f)
        return int(data["documents"]) if data.get("format") == 1 else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # none yet, or unreadable: the guard measures against what the table holds


def write_mark(home: Home, kb: str, documents: int) -> None:
    """Written by the job that holds the knowledge base's lock: one writer of `kb` in this home."""
    try:
        _save(home, _mark_file(home, kb), {"format": 1, "documents": int(documents)})
    except OSError as e:  # the guard then measures against what the table holds, as before the mark
        log.info("could not save the high-water mark of knowledge base %s: %s", kb, e)
