"""Loading: walk the sources, read each document with its format, decide what needs work.

A pass yields a Doc for every document whose version the table does not hold (new or changed),
and one with no version for every stored document that is gone from its source (its chunks are
removed). Unchanged documents are counted as skipped and never leave this stage.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator, Optional

from kbingest.pipeline.job.control import RunControl
from kbingest.pipeline.kb import ids
from kbingest.pipeline.kb.kbstate import StoredDoc
from kbingest.pipeline.load import formats, loading, sources
from kbingest.pipeline.load.formats import ocr
from kbingest.pipeline.load.formats.base import NoText
from kbingest.pipeline.load.loading import (
    Candidate,
    LoadedDocument,
    LoadError,
    Problem,
    RawDocument,
    Skipped,
    walk,
    walk_within,
    within,
)
from kbingest.pipeline.messages import note_document, reason
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.stages.base import Doc, Fetch, Reporter
from kbingest.pipeline.status import JobPhase
from kbingest.pipeline.textsafe import fs_text

PHASE = JobPhase.LOADING


def canonical(path: str) -> str:
    """A document's identity: its path with every symlink, '..' and relative part resolved, so the
    same file reached through a symlink or another spelling is one document. The walk gives it
    (Candidate.real) wherever it can; this is the fallback, run once, at load (never after). A remote
    document's identity is its URI (pipeline/load/sources.py), as the source gave it."""
    if sources.is_uri(path):
        return path
    return os.path.realpath(path)


def identity(item: Candidate) -> str:
    """The canonical path of a document the walk found: computed once, here, and carried on its Doc
    (chunk ids are made from it): nothing after loading resolves a path again. Raises OSError when
    a link on the way changes while it is resolved (EINVAL, ELOOP)."""
    return item.real or canonical(item.path)


class LoadStage:
    def __init__(
        self,
        config: JobConfig,
        reporter: Reporter,
        control: RunControl,
        stored: dict[str, StoredDoc],
        scope: Optional[list[str]] = None,
        high_water: Optional[int] = None,
        state_path: Optional[str] = None,
    ) -> None:
        self.config = config
        self.r = reporter
        self.control = control
        self.stored = stored
        self.scope = scope
        self.high_water = high_water  # KnowledgeBase.high_water(): removals are measured against it
        # as sources are stored: a URI source (pipeline/load/sources.py) as it is
        self.roots = [s if sources.is_uri(s) else fs_text(os.path.abspath(s)) for s in config.sources]
        self.local = [s for s in config.sources if not sources.is_uri(s)]
        self.remote = [s for s in config.sources if sources.is_uri(s)]
        self.state_path = state_path  # where the pages' ETag / Last-Modified are kept (sources.WebState)
        self.opened: list = []  # the remote sources this pass opened (their counters: the bench reads them)
        # set by the Ray executor: a changed document readable from its URI alone (an s3:// object) is
        # planned, not read, and the worker that chunks it reads it (Doc.fetch): no byte of it here
        self.defer_remote = False
        # set by the Ray executor: a crawl's pages are fetched and read by the workers
        # (sources.WebSource.fetch_remote): the crawl here keeps the frontier, politeness and state
        self.page_fetch = None
        self._by_name: Optional[dict[str, list[str]]] = None  # stored documents by file name (_same_file)
        self.limits = config.load_limits()
        self.version_key = config.version_key()

    def _scoped_walk(self) -> tuple[Iterable, list[str]]:
        """What to walk, and the paths inside which a stored document not seen is gone."""
        roots = [os.path.abspath(s) for s in self.local]
        scope, limits = self.scope, self.limits
        if scope is None:
            return walk(self.local, limits), roots + self.remote

        def items():
            for root in roots:
                inside = [p for p in scope if within(p, root)]
                if inside:
                    yield from walk_within(root, inside, limits)

        return items(), [os.path.abspath(p) for p in scope]

    def __iter__(self) -> Iterator[Doc]:
        r = self.r
        r.phase_started(PHASE)
        seen: set[str] = set()  # documents found this pass: what the table holds of them stays
        fed: set[str] = set()  # the sources (self.roots) under which this pass found a document
        held: list[str] = []  # files and folders refused this pass: what it holds below them stays
        complete_walk = True
        items, covered = self._scoped_walk()
        counted = self.scope is None and not self.remote  # a remote source's size is known as it is listed
        self.listed_total: Optional[int] = None
        if counted:  # a listing pass first (no reads): progress and ETA know the job's size
            sizes = {i.path: i.size for i in walk(self.local, self.limits) if isinstance(i, Candidate)}
            self.listed_total = len(sizes)
            r.add_bytes(sum(sizes.values()))
            r.add_total(PHASE, self.listed_total)
            r.total_known(PHASE)
        listed = 0
        for item in items:
            self.control.check()
            if self.control.draining:  # drain: no new documents; the rest are counted, not processed
                complete_walk = False  # a walk cut short removes nothing
                r.set("documents_not_processed", self._not_processed(listed))
                break
            if isinstance(item, Skipped):
                r.count("files_ignored")
                continue
            if isinstance(item, Problem):
                if item.kind == "too_many_files":
                    complete_walk = False
                r.doc_error(item.path, PHASE, item.kind, item.message)
                if item.kind != "vanished":
                    held.append(fs_text(item.path))  # refused now (unreadable, too deep...): its chunks stay
                continue
            try:
                canon = identity(item)
            except (OSError, ValueError):  # a link on its path changed while it was resolved
                r.doc_error(
                    item.path,
                    PHASE,
                    "path_changed",
                    "its path changed (a link replaced) while it was resolved: not read; ingest again once it settles",
                )
                held.append(fs_text(item.path))  # refused now: what the table holds of it stays
                if counted:
                    r.settle_bytes(item.size)
                else:
                    r.add_total(PHASE)
                listed += 1
                r.progress(PHASE)
                continue
            did = self._same_file(ids.doc_id(canon), item)
            if did in seen:  # overlapping sources (a folder and a file or folder in it): loaded once
                self._feeds(fed, item.path)
                continue
            if not counted:
                r.add_total(PHASE)
                r.add_bytes(item.size)
            listed += 1
            fmt = formats.for_path(item.path)
            r.found(fmt.name if fmt else "unknown")
            raw, gone = self._read(item)
            if not gone:  # a document that failed to load keeps what it had indexed
                seen.add(did)
                self._feeds(fed, item.path)
            # its version from its bytes and the settings, before its format extracts it: an unchanged
            # document is skipped unparsed (a scan is not read by OCR again)
            version = ids.doc_version(raw.content_hash, self.version_key) if raw is not None else ""
            old = self.stored.get(did)
            unchanged = raw is not None and old is not None and old.version == version
            doc = self._extract(raw) if raw is not None and not unchanged else None
            if doc is not None and doc.warnings:  # loaded (e.g. invalid UTF-8 replaced), but flagged
                r.warning(doc.path, doc.warnings)
            r.progress(PHASE)
            if doc is None:
                if unchanged and old is not None:
                    self._count_skipped(old.chunks)
                r.settle_bytes(item.size)
                continue
            yield Doc(path=doc.path, doc_id=did, version=version, replaces=old is not None, loaded=doc, canonical=canon)
        if self.remote and self.scope is None and complete_walk:
            self._complete = True
            yield from self._remote(seen, fed, held)
            complete_walk = self._complete
        r.total_known(PHASE)
        if complete_walk:
            covered = [fs_text(p) for p in covered]  # sources are stored as fs_text
            stored = self.stored
            removed = [
                d
                for d, s in stored.items()
                if d not in seen
                and s.source is not None
                and any(within(s.source, p) for p in covered)
                and not any(within(s.source, h) for h in held)
            ]
            removed = self._guard_removals(removed, fed)
            for did in removed:
                yield Doc(path=stored[did].source, doc_id=did, version="", replaces=True)
        r.phase_done(PHASE)

    def _remote(self, seen: set[str], fed: set[str], held: list[str]) -> Iterator[Doc]:
        """The documents of the URI sources (pipeline/load/sources.py): an object whose listed version
        (ETag) the table holds is skipped without being read; a page answered 304 too. A source that
        cannot be listed holds what the table has of it; a page or object that fails is its own error."""
        r, key = self.r, self.version_key
        state = sources.WebState(self.state_path)
        for url, entry in list(state.pages.items()):  # a conditional request only for what the table holds
            old = self.stored.get(ids.doc_id(url))
            entry["conditional"] = bool(
                old is not None
                and old.version == entry.get("version")
                and (entry.get("etag") or entry.get("last_modified"))
            )
        try:
            for uri in self.remote:
                src = sources.open_source(uri, self.limits, state)
                if self.page_fetch is not None and isinstance(src, sources.WebSource):
                    src.fetch_remote = self.page_fetch
                self.opened.append(src)
                for item in src.items():
                    self.control.check()
                    if self.control.draining:
                        self._complete = False
                        return
                    if isinstance(item, sources.Problem):
                        if item.kind == "too_many_files":
                            self._complete = False
                        r.doc_error(item.path, PHASE, item.kind, item.message)
                        if item.kind != "not_found":  # refused or failed now: what the table holds of it stays
                            held.append(item.path)
                        continue
                    did = ids.doc_id(item.uri)
                    if did in seen:
                        continue
                    seen.add(did)
                    fed.add(uri)
                    r.add_total(PHASE)
                    size = item.size or 0  # an object's listed size; a page's once fetched (none before)
                    r.add_bytes(size)
                    doc = yield_doc = None
                    old = self.stored.get(did)
                    fmt = sources.format_for(item.uri, "text/html" if item.not_modified else None)
                    version = ids.doc_version(item.version, key) if item.version else None
                    if item.not_modified or (version is not None and old is not None and old.version == version):
                        r.found(fmt.name if fmt else "unknown")
                        r.progress(PHASE)
                        r.settle_bytes(size)
                        if old is not None:
                            self._count_skipped(old.chunks)
                        continue
                    if item.loaded is not None:  # a page a worker fetched and read: its text stays there
                        r.found(item.fmt)
                        r.progress(PHASE)
                        if item.warnings:
                            r.warning(item.uri, list(item.warnings))
                        version = ids.doc_version(item.content_hash, key)
                        v = item.validators
                        if v.get("etag") or v.get("last_modified") or v.get("links"):
                            state.put(item.uri, {**v, "version": version})
                        if old is not None and old.version == version:
                            self._count_skipped(old.chunks)
                            r.settle_bytes(size)
                            continue
                        yield Doc(
                            path=item.uri,
                            doc_id=did,
                            version=version,
                            replaces=old is not None,
                            canonical=item.uri,
                            fetch=Fetch(item.uri, uri, size, loaded=item.loaded),
                        )
                        continue
                    if self.defer_remote and item.by_uri and version is not None and fmt is not None:
                        r.found(fmt.name)  # planned from the listing: a worker reads it (Doc.fetch)
                        r.progress(PHASE)
                        yield Doc(
                            path=item.uri,
                            doc_id=did,
                            version=version,
                            replaces=old is not None,
                            canonical=item.uri,
                            fetch=Fetch(item.uri, uri, size),
                        )
                        continue
                    note_document(item.uri)
                    try:
                        data, ctype = item.read()
                        fmt = sources.format_for(item.uri, ctype)
                        if fmt is None:
                            raise LoadError("unsupported_format", "no format reads this document: not loaded")
                        r.found(fmt.name)
                        with ocr.session(self.config.ocr, self.control.check, self._page_read, self.config.ocr_engine):
                            doc = loading.loaded_from_bytes(item.uri, uri, data, fmt, self.limits)
                    except LoadError as e:
                        r.doc_error(item.uri, PHASE, e.kind, e.message)
                        if e.kind == "vanished":
                            seen.discard(did)  # deleted between listing and read: its chunks go too
                        else:
                            held.append(item.uri)
                        r.progress(PHASE)
                        r.settle_bytes(size)
                        continue
                    except MemoryError as e:
                        r.doc_error(item.uri, PHASE, "out_of_memory", reason(e))
                        held.append(item.uri)
                        r.progress(PHASE)
                        r.settle_bytes(size)
                        continue
                    r.progress(PHASE)
                    if doc.warnings:
                        r.warning(doc.path, doc.warnings)
                    version = version or ids.doc_version(doc.content_hash, key)
                    v = item.validators
                    if v.get("etag") or v.get("last_modified") or v.get("links"):
                        state.put(item.uri, {**v, "version": version})
                    if old is not None and old.version == version:
                        self._count_skipped(old.chunks)
                        r.settle_bytes(size)
                        continue
                    yield_doc = Doc(
                        path=item.uri,
                        doc_id=did,
                        version=version,
                        replaces=old is not None,
                        loaded=doc,
                        canonical=item.uri,
                    )
                    yield yield_doc
        except sources.SourceUnusable as e:
            self._complete = False
            r.doc_error(self.remote[0], PHASE, "source_unusable", str(e))
        finally:
            for url in [u for u in state.pages if ids.doc_id(u) not in seen]:
                state.forget(url)
            try:
                state.save()
            except OSError:
                pass

    def _not_processed(self, taken: int) -> int:
        """Documents a drain left: those listed and not taken (0 for a watch burst, which lists none)."""
        return max(0, (self.listed_total or 0) - taken)

    def _same_file(self, did: str, item: Candidate) -> str:
        """The id of this document: `did`, from its canonical path, unless the knowledge base holds
        none by that id but holds this very file under another path that no link explains (a bind
        mount of the same folder, a hard link): a stored document of the same file name whose path
        is, now, the same (device, inode). Asked only of documents new to the knowledge base, and
        only of stored documents of the same name: a stat or two, never a scan."""
        if did in self.stored or item.dev_ino is None or not item.dev_ino[1]:
            return did
        if self._by_name is None:
            self._by_name = {}
            for d, s in self.stored.items():
                if s.source:
                    self._by_name.setdefault(os.path.basename(s.source), []).append(d)
        for other in self._by_name.get(os.path.basename(fs_text(item.path)), ()):
            try:
                st = os.stat(self.stored[other].source)
            except (OSError, ValueError):
                continue
            if (st.st_dev, st.st_ino) == item.dev_ino:
                return other
        return did

    def _feeds(self, fed: set[str], path: str) -> None:
        """A document was found under these sources: none of them is empty."""
        p = fs_text(path)
        fed.update(root for root in self.roots if within(p, root))

    def _guard_removals(self, gone: list[str], fed: set[str]) -> list[str]:
        """What of `gone` this pass removes. A source under which the walk found no document, while
        the knowledge base holds documents from it, keeps them (an unmounted share among several
        sources is a minority of the knowledge base); the rest is measured against the knowledge
        base's high-water mark (_mass_removal). One document, or --allow-mass-removal: no guard."""
        share = self.config.max_removal_share
        if len(gone) <= 1 or share >= 1.0:
            return gone
        stored, kept = self.stored, set()
        for root in self.roots:
            if root in fed:
                continue
            going = [d for d in gone if within(stored[d].source, root)]
            if len(going) < 2 or len(going) != sum(1 for s in stored.values() if s.source and within(s.source, root)):
                continue  # a single document, or some of the source's documents stay
            kept.update(going)
            self.r.doc_error(
                root,
                PHASE,
                "mass_removal_refused",
                f"this pass would remove {len(going)} of the {len(stored)} documents of knowledge "
                f"base {self.config.kb!r}: all of this source's, where no document was found "
                "(an empty or unmounted source looks like this): none was removed, their chunks are "
                "kept; if the removal is meant, run again with --allow-mass-removal",
            )
        rest = [d for d in gone if d not in kept]
        return [] if self._mass_removal(len(rest)) else rest

    def _mass_removal(self, n: int) -> bool:
        """More than max_removal_share of the knowledge base's documents would be gone (rsync's
        --max-delete is the model): an unmounted share or a missing disk looks like this. Measured
        against its high-water mark (the documents it held at the end of the last pass that added
        some), so that halving it run after run is refused too. Nothing is removed, and the refusal
        is recorded with the counts."""
        total, share = len(self.stored), self.config.max_removal_share
        if n <= 1 or share >= 1.0:
            return False
        mark = max(total, self.high_water or 0)
        since = mark - (total - n)  # documents gone since the mark, this pass's included
        if since <= share * mark:
            return False
        where = self.scope[0] if self.scope else self.config.sources[0]
        if since == n:
            what = f"({100 * n / total:.0f}%, over the {100 * share:.0f}% limit)"
        else:
            what = (
                f"which held {mark} when documents were last added: {since} of them would be gone "
                f"({100 * since / mark:.0f}%, over the {100 * share:.0f}% limit)"
            )
        self.r.doc_error(
            where,
            PHASE,
            "mass_removal_refused",
            f"this pass would remove {n} of the {total} documents of knowledge base "
            f"{self.config.kb!r} {what}: none "
            "was removed, their chunks are kept. An empty or unmounted source looks like this; if "
            "the removal is meant, run again with --allow-mass-removal",
        )
        return True

    def _read(self, cand: Candidate) -> tuple[Optional[RawDocument], bool]:
        """The document's bytes (not extracted yet), or None with its error recorded; and whether it
        is gone from disk."""
        note_document(cand.path)
        try:
            return loading.read_raw(cand, self.limits), False
        except LoadError as e:
            self.r.doc_error(cand.path, PHASE, e.kind, e.message)
            if e.kind == "vanished":  # deleted between walk and read: its chunks go too
                return None, True
        except OSError as e:
            self.r.doc_error(cand.path, PHASE, "os_error", f"{e.strerror or e}")
        except MemoryError as e:  # one document too large for this process: recorded, the job goes on
            self.r.doc_error(cand.path, PHASE, "out_of_memory", reason(e))
        return None, False

    def _extract(self, raw: RawDocument) -> Optional[LoadedDocument]:
        """The document extracted by its format, or None with its error (or its warning) recorded."""
        try:  # OCR (formats/ocr.py): --ocr's mode, a stop within one page, pages counted as they are read
            with ocr.session(self.config.ocr, self.control.check, self._page_read, self.config.ocr_engine):
                return raw.extract(self.limits)
        except NoText as e:  # an image without text (an icon): skipped, warned and counted, not an error
            self.r.warning(raw.path, [e.message])
            self.r.count("documents_without_text")
        except LoadError as e:
            self.r.doc_error(raw.path, PHASE, e.kind, e.message)
        except OSError as e:
            self.r.doc_error(raw.path, PHASE, "os_error", f"{e.strerror or e}")
        except MemoryError as e:  # one document too large for this process: recorded, the job goes on
            self.r.doc_error(raw.path, PHASE, "out_of_memory", reason(e))
        return None

    def _page_read(self, by_ocr: bool) -> None:
        self.r.count("pages_read")
        if by_ocr:
            self.r.count("pages_ocr")

    def _count_skipped(self, chunks: int) -> None:
        r = self.r
        r.count("documents_skipped")
        r.add_total(JobPhase.CHUNKING)
        r.progress(JobPhase.CHUNKING, 1, True)
        for phase in (JobPhase.EMBEDDING, JobPhase.INDEXING):
            r.add_total(phase, chunks)
            r.progress(phase, chunks, True)
