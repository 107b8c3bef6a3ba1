"""Loading: walk each SOURCE (a file or a folder) and read each document safely.

Folders are unvetted: hostile names, symlinks out of the tree, FIFOs, binaries, files that
change or vanish. Nothing here raises out of `walk`; every refusal is a `Problem` (from the
walk) or a `LoadError` (from `read_document`) with a short machine-readable kind and one
clear sentence for a person. Paths are `str` (os.fsdecode-compatible: undecodable bytes in
names survive as surrogate escapes).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import stat
import unicodedata
from dataclasses import dataclass, field
from typing import Iterator, Optional

from kbingest.pipeline.load import formats
from kbingest.pipeline.load.formats.base import Format, LoadError, inflation_limit
from kbingest.pipeline.models import LoadLimits

BINARY_SAMPLE = 8192  # the bytes a format's `identify` sees
READ_ATTEMPTS = 4  # the first read plus up to 3 retries when the file changes while being read

_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in after the walk must not block the open
    | getattr(os, "O_NOFOLLOW", 0)  # the last component must not have become a symlink
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


@dataclass(frozen=True)
class Candidate:
    """A document found by the walk, not read yet."""

    path: str  # os.path.abspath of the document (symlinks NOT resolved)
    root: str  # absolute path of the SOURCE it was found under
    size: int
    mtime_ns: int
    # its canonical path (the document's identity), as the walk reached it: the source's real path and
    # the real folders opened beneath it, or a link's target resolved when it was judged; None where
    # the walk cannot know it (a file named as a source, a folder reached through --follow-links)
    real: Optional[str] = field(default=None, compare=False)
    dev_ino: Optional[tuple[int, int]] = field(default=None, compare=False)  # (st_dev, st_ino) the walk saw


@dataclass(frozen=True)
class Problem:
    """Something the walk refused."""

    path: str
    kind: str
    message: str


@dataclass(frozen=True)
class Skipped:
    """A file that is not a document: counted, not an error."""

    path: str
    reason: str


@dataclass(frozen=True)
class LoadedDocument:
    path: str
    root: str
    text: str
    content_hash: str  # sha256 hex of the raw bytes
    size: int
    markdown: bool
    warnings: tuple[str, ...] = ()
    format: str = "text"
    title: Optional[str] = None  # the format's own title (HTML <title>), if any
    page_starts: tuple[int, ...] = ()  # paged formats: offset in text where page i+1 begins
    page_ocr: tuple[Optional[float], ...] = ()  # per page: None from its text layer, else OCR's confidence


class SourceError(ValueError):
    """A SOURCE that does not exist or is not a usable file or folder."""


# ---------------------------------------------------------------------------------- helpers


def _show(text: str) -> str:
    """A path made safe to put in a one-line message: control, format (bidi) and
    undecodable characters are escaped."""
    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # an undecodable byte kept by surrogateescape
            out.append(f"\\x{o - 0xDC00:02x}")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def is_document(path: str) -> bool:
    """A file some registered format reads (pipeline/load/formats)."""
    return formats.for_path(path) is not None


def within(target: str, root: str) -> bool:
    """True when the path target is root or lies below it (plain string paths, no resolving)."""
    prefix = root if root.endswith(os.sep) else root + os.sep
    return target == root or target.startswith(prefix)


def _file_type(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISDIR(mode):
        return "directory"
    return "special file"


def _not_regular(mode: int) -> tuple[str, str]:
    return "not_regular_file", f"not a regular file ({_file_type(mode)}): never opened"


def _outside(target: str) -> tuple[str, str]:
    return (
        "symlink_outside_root",
        f"symlink points outside the source root ({_show(target)}): not followed; use --follow-links to follow",
    )


def _outside_allowed(target: str) -> tuple[str, str]:
    return (
        "outside_allowed_root",
        f"it leads outside the --allow-root folders of the server running this job ({_show(target)}): not read",
    )


def _os_kind(e: OSError, doing: str) -> tuple[str, str]:
    """Map an OSError to (kind, message); `doing` is e.g. 'list this folder'."""
    if isinstance(e, PermissionError):
        return "permission_denied", f"permission denied: cannot {doing}"
    if isinstance(e, FileNotFoundError):
        return "vanished", f"it disappeared before it could be read (cannot {doing})"
    if e.errno == errno.ELOOP:
        return "symlink_loop", f"symlink loop: cannot {doing}"
    return "unreadable", f"cannot {doing}: {e.strerror or type(e).__name__}"


def _problem(path: str, kind_message: tuple[str, str]) -> Problem:
    return Problem(path, *kind_message)


# ------------------------------------------------------------------------------------ sources


def validate_sources(sources: list[str]) -> list[str]:
    """Absolute, de-duplicated sources; raise SourceError naming the first bad one."""
    if not sources:
        raise SourceError("no source given: name at least one file or folder")
    from kbingest.pipeline.load.sources import SourceUnusable, is_uri, validate_uri

    out: list[str] = []
    for source in sources:
        if is_uri(source):  # s3:// or http(s):// (pipeline/load/sources.py): syntax only, nothing fetched
            try:
                uri = validate_uri(source)
            except SourceUnusable as e:
                raise SourceError(str(e)) from None
            if uri not in out:
                out.append(uri)
            continue
        path = os.path.abspath(os.fsdecode(source))
        if "\x00" in path:
            raise SourceError(f"source path contains a NUL character: {_show(path)}")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if os.path.lexists(path):
                raise SourceError(f"source is a symlink whose target does not exist: {_show(path)}") from None
            raise SourceError(f"source not found: {_show(path)}") from None
        except PermissionError:
            raise SourceError(f"source cannot be accessed (permission denied): {_show(path)}") from None
        except OSError as e:
            raise SourceError(f"source cannot be accessed ({e.strerror}): {_show(path)}") from None
        except ValueError:  # a lone surrogate (from JSON) that no file name can hold
            raise SourceError(f"source path is not a valid file name: {_show(path)}") from None
        if stat.S_ISREG(st.st_mode):
            if formats.unsupported(path):
                raise SourceError(f"{formats.unsupported(path)}: {_show(path)}")
            if not is_document(path):
                raise SourceError(f"source is not a document (expected {', '.join(formats.suffixes())}): {_show(path)}")
        elif not stat.S_ISDIR(st.st_mode):
            raise SourceError(f"source is neither a file nor a folder ({_file_type(st.st_mode)}): {_show(path)}")
        if path not in out:
            out.append(path)
    return out


# --------------------------------------------------------------------------------------- walk
#
# The walk and the read never trust a path string twice. Each folder is opened relative to the
# folder above it, one component at a time from the source root's descriptor, with O_NOFOLLOW and
# O_DIRECTORY at every step (unless --follow-links): a folder swapped for a symlink between the
# listing and the open is refused by the kernel, so no swap can lead the walk, or the read, out of
# the root. Descriptors are held only while a folder is listed (the root's for the whole walk of
# its source), so the walk needs O(1) of them whatever the depth.

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open_beneath(base_fd: int, parts: tuple[str, ...] | list[str], follow: bool) -> int:
    """A new descriptor of the folder base/parts..., reached one component at a time, never through
    a symlink unless `follow`. Raises OSError (ELOOP or ENOTDIR when a component is not a real folder)."""
    flags = _DIR_FLAGS | (0 if follow else _NOFOLLOW)
    fd = os.dup(base_fd)
    try:
        for name in parts:
            nfd = os.open(name, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _replaced(e: OSError, follow: bool) -> bool:
    """The open failed because a component is no longer a real folder (a swap since it was listed)."""
    return not follow and e.errno in (errno.ELOOP, errno.ENOTDIR)


def _swapped() -> tuple[str, str]:
    return (
        "path_changed",
        "it was replaced by a symlink or a file while the source was walked: "
        "not followed; ingest again once it settles",
    )


def _fd_path(fd: int) -> str:
    """Where the file or folder open at `fd` is now, as the kernel names it: every symlink resolved,
    whatever path led to it. OSError where the system cannot say (then nothing is inside)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:  # no /proc: macOS names it with F_GETPATH
        import fcntl

        if not hasattr(fcntl, "F_GETPATH"):
            raise OSError(errno.ENOSYS, "cannot tell where an open file lies") from None
        return os.fsdecode(fcntl.fcntl(fd, fcntl.F_GETPATH, bytes(1024)).rstrip(b"\0"))


class Bounds:
    """The allowed roots of a job run by `kbingest serve` (LoadLimits.allowed_roots), opened for a
    walk (held to its end) or a read. Each root is opened from / one real folder at a time (the
    server stored it resolved), so a root swapped for a symlink is refused, not followed. What is
    inside is judged on the descriptor actually opened (its path as the kernel has it now), never on
    a path string checked before the open: no symlink, --follow-links or swap can lead a walk or a
    read out of the roots."""

    def __init__(self, roots: tuple[str, ...]) -> None:
        self.fds: list[int] = []
        top = os.open(os.sep, _DIR_FLAGS)
        try:
            for root in roots:
                parts = [p for p in os.path.abspath(root).split(os.sep) if p]
                self.fds.append(_open_beneath(top, parts, follow=False))
        except BaseException:
            self.close()
            raise
        finally:
            os.close(top)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def _reals(self) -> list[str]:
        return [_fd_path(fd) for fd in self.fds]  # now: a root renamed since it was opened is followed

    def holds_path(self, real: str) -> bool:
        """A resolved path (os.path.realpath) lies in a root: a judgement before an open, to say why."""
        try:
            return any(within(real, r) for r in self._reals())
        except OSError:
            return False

    def holds(self, fd: int) -> bool:
        """The file or folder open at fd lies in a root: the check that decides."""
        try:
            where = _fd_path(fd)
        except OSError:
            return False
        return self.holds_path(where)

    def located(self, fd: int) -> str:
        try:
            return _fd_path(fd)
        except OSError:
            return "?"


class _OutsideRoots(OSError):
    """A folder opened by the walk lies outside the allowed roots."""

    def __init__(self, where: str) -> None:
        super().__init__(errno.EACCES, "outside the allowed roots")
        self.where = where


def _roots_unusable(e: BaseException) -> tuple[str, str]:
    why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
    return (
        "outside_allowed_root",
        f"the --allow-root folders of the server running this job cannot be opened "
        f"({why}; a folder on the way replaced by a symlink?): nothing read",
    )


def walk(sources: list[str], limits: LoadLimits) -> Iterator[Candidate | Problem | Skipped]:
    """Stream Candidates, Skipped and Problems, sorted by name within each folder."""
    yield from _Walker(limits).run(sources)


def walk_within(root: str, paths: list[str], limits: LoadLimits) -> Iterator[Candidate | Problem | Skipped]:
    """Walk only these paths (files or folders at or below root), judged against root's boundary
    and depth limit exactly as a full walk of root would judge them. Paths that no longer exist
    yield nothing: the caller decides what their absence means."""
    yield from _Walker(limits).run_within(root, paths)


@dataclass(frozen=True)
class _Root:
    """One source folder being walked: its path as given, its real path, and an open descriptor."""

    path: str
    real: str
    fd: int

    def join(self, parts: tuple[str, ...]) -> str:
        return os.path.join(self.path, *parts) if parts else self.path


@dataclass(frozen=True)
class _Entry:
    name: str
    link: bool
    st: Optional[os.stat_result]
    error: Optional[OSError]


class _Walker:
    def __init__(self, limits: LoadLimits) -> None:
        self.limits = limits
        self.count = 0
        self.stopped = False
        self.walked: set[tuple[int, int]] = set()  # (st_dev, st_ino) of every folder walked
        self.bounds: Optional[Bounds] = None  # a job of `kbingest serve`: its roots, held while it walks

    def _bounded(self, sources: list[str], body) -> Iterator[Candidate | Problem | Skipped]:
        """Run the walk `body()` with the allowed roots (if any) opened at its start and held to its end."""
        if self.limits.allowed_roots is None:
            yield from body()
            return
        try:
            self.bounds = Bounds(self.limits.allowed_roots)
        except (OSError, ValueError) as e:
            for source in sources:
                yield _problem(os.path.abspath(os.fsdecode(source)), _roots_unusable(e))
            return
        try:
            yield from body()
        finally:
            self.bounds.close()
            self.bounds = None

    def run(self, sources: list[str]) -> Iterator[Candidate | Problem | Skipped]:
        yield from self._bounded(sources, lambda: self._run(sources))

    def _run(self, sources: list[str]) -> Iterator[Candidate | Problem | Skipped]:
        for source in sources:
            root = os.path.abspath(os.fsdecode(source))
            try:
                st = os.stat(root)
            except (OSError, ValueError) as e:
                yield _problem(root, _os_kind(_as_oserror(e), "open this source"))
                continue
            if self.bounds is not None and not stat.S_ISDIR(st.st_mode):  # a file: judged now, decided at its read
                real = os.path.realpath(root)
                if not self.bounds.holds_path(real):
                    yield _problem(root, _outside_allowed(real))
                    continue
            if stat.S_ISDIR(st.st_mode):
                yield from self._source_dir(root, lambda r: self._dir(r, (), 0, ()))
            else:
                yield from self._file(root, root, st)
            if self.stopped:
                return

    def _source_dir(self, root: str, body, report: bool = True) -> Iterator[Candidate | Problem | Skipped]:
        """Open the source folder (the user named it: a symlink there is followed) and walk below it."""
        try:
            real = os.path.realpath(root)
            fd = os.open(root, _DIR_FLAGS)
        except (OSError, ValueError) as e:
            if report:
                yield _problem(root, _os_kind(_as_oserror(e), "open this source"))
            return
        try:
            if self.bounds is not None and not self.bounds.holds(fd):  # the folder opened, wherever it is
                yield _problem(root, _outside_allowed(self.bounds.located(fd)))
                return
            yield from body(_Root(root, real, fd))
        finally:
            os.close(fd)

    def run_within(self, root: str, paths: list[str]) -> Iterator[Candidate | Problem | Skipped]:
        yield from self._bounded([root], lambda: self._run_within(root, paths))

    def _run_within(self, root: str, paths: list[str]) -> Iterator[Candidate | Problem | Skipped]:
        root = os.path.abspath(os.fsdecode(root))
        wanted = sorted({os.path.abspath(os.fsdecode(x)) for x in paths})
        if root in wanted:
            yield from self._run([root])
            return
        wanted = [p for p in wanted if within(p, root)]
        if wanted:
            yield from self._source_dir(root, lambda r: self._within(r, wanted), report=False)  # gone: not ours

    def _within(self, r: _Root, wanted: list[str]) -> Iterator[Candidate | Problem | Skipped]:
        follow = self.limits.follow_links
        for p in wanted:
            parts = tuple(os.path.relpath(p, r.path).split(os.sep))
            try:
                pfd = _open_beneath(r.fd, parts[:-1], follow)
            except OSError:
                continue  # gone, or no longer reached through real folders: not ours to report
            try:
                st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
            except OSError:
                continue
            finally:
                os.close(pfd)
            depth = len(parts)
            if stat.S_ISLNK(st.st_mode):
                yield from self._link(r, parts, depth - 1, ())
            elif stat.S_ISDIR(st.st_mode):
                yield from self._subdir(r, parts, depth, ())
            else:
                yield from self._file(p, r.path, st, self._real(r, parts))
            if self.stopped:
                return

    def _real(self, r: _Root, parts: tuple[str, ...]) -> Optional[str]:
        """The canonical path of a file found beneath the root through real folders only (no link
        followed: every folder was opened with O_NOFOLLOW), with no realpath; None with --follow-links."""
        return None if self.limits.follow_links else os.path.join(r.real, *parts)

    def _file(
        self, path: str, root: str, st: os.stat_result, real: Optional[str] = None
    ) -> Iterator[Candidate | Problem | Skipped]:
        if not is_document(path):
            why = formats.unsupported(path)
            if why:
                yield Problem(path, "unsupported_format", why)
            else:
                yield Skipped(path, f"not a document (extension is not {', '.join(formats.suffixes())})")
        elif not stat.S_ISREG(st.st_mode):
            yield _problem(path, _not_regular(st.st_mode))
        elif st.st_size > self.limits.max_file_bytes:
            yield Problem(path, "too_large", _too_large(st.st_size, self.limits))
        elif self.count >= self.limits.max_files:
            self.stopped = True
            yield Problem(
                path,
                "too_many_files",
                f"more than {self.limits.max_files} documents found: stopped listing here; "
                "raise the file limit to load the rest",
            )
        else:
            self.count += 1
            yield Candidate(path, root, st.st_size, st.st_mtime_ns, real, (st.st_dev, st.st_ino))

    def _list(self, r: _Root, parts: tuple[str, ...]) -> tuple[tuple[int, int], list[_Entry]]:
        """Open the folder beneath the root and list it: its identity and its entries, each looked
        at (lstat) through the folder's descriptor before that descriptor is closed."""
        fd = _open_beneath(r.fd, parts, self.limits.follow_links)
        try:
            if self.bounds is not None and not self.bounds.holds(fd):  # reached through a followed link
                raise _OutsideRoots(self.bounds.located(fd))
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if key in self.walked:
                return key, []
            with os.scandir(fd) as it:
                names = sorted(e.name for e in it)
            out = []
            for name in names:
                try:
                    est = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    out.append(_Entry(name, stat.S_ISLNK(est.st_mode), est, None))
                except OSError as e:
                    out.append(_Entry(name, False, None, e))
            return key, out
        finally:
            os.close(fd)

    def _dir(
        self, r: _Root, parts: tuple[str, ...], depth: int, ancestors: tuple
    ) -> Iterator[Candidate | Problem | Skipped]:
        path = r.join(parts)
        try:
            key, entries = self._list(r, parts)
        except _OutsideRoots as e:
            yield _problem(path, _outside_allowed(e.where))
            return
        except OSError as e:
            follow = self.limits.follow_links
            yield _problem(path, _swapped() if parts and _replaced(e, follow) else _os_kind(e, "list this folder"))
            return
        if key in ancestors:
            yield Problem(
                path, "symlink_loop", "symlink loop: this folder leads back to one of its parents; not followed"
            )
            return
        if key in self.walked:  # nothing is lost: its documents were loaded through the other path
            yield Skipped(
                path,
                "this folder was already walked through another source or link: "
                "skipped so its documents are not loaded twice",
            )
            return
        self.walked.add(key)
        ancestors = ancestors + (key,)
        for entry in entries:
            yield from self._entry(r, parts + (entry.name,), entry, depth, ancestors)
            if self.stopped:
                return

    def _entry(
        self, r: _Root, parts: tuple[str, ...], entry: _Entry, depth: int, ancestors: tuple
    ) -> Iterator[Candidate | Problem | Skipped]:
        if entry.error is not None:
            yield _problem(r.join(parts), _os_kind(entry.error, "look at this entry"))
        elif entry.link:
            yield from self._link(r, parts, depth, ancestors)
        elif entry.st is None:  # never: an entry is looked at (st) or has its error
            raise AssertionError(f"{entry.name}: neither looked at nor failed")
        elif stat.S_ISDIR(entry.st.st_mode):  # a folder named like a document is still a folder
            yield from self._subdir(r, parts, depth + 1, ancestors)
        else:
            yield from self._file(r.join(parts), r.path, entry.st, self._real(r, parts))

    def _subdir(
        self, r: _Root, parts: tuple[str, ...], depth: int, ancestors: tuple
    ) -> Iterator[Candidate | Problem | Skipped]:
        if depth > self.limits.max_depth:
            yield Problem(
                r.join(parts),
                "too_deep",
                f"folder is more than {self.limits.max_depth} levels below the source: not walked",
            )
        else:
            yield from self._dir(r, parts, depth, ancestors)

    def _link(
        self, r: _Root, parts: tuple[str, ...], depth: int, ancestors: tuple
    ) -> Iterator[Candidate | Problem | Skipped]:
        """A symlink met in the walk is only judged here (inside or outside the root, file or folder);
        nothing is opened through it: a folder is descended (with --follow-links) by _dir, a file is
        read by read_document, each of which checks again at the moment it opens."""
        path = r.join(parts)
        try:
            st = os.stat(path)
        except OSError as e:
            if isinstance(e, FileNotFoundError) and os.path.lexists(path):
                try:
                    target = os.readlink(path)
                except OSError:
                    target = "?"
                kind, message = "dangling_symlink", f"symlink target does not exist ({_show(target)})"
            elif e.errno == errno.ELOOP:
                kind, message = "symlink_loop", "symlink loop: the link leads back to itself and never resolves"
            else:
                kind, message = _os_kind(e, "follow this symlink")
            if is_document(path):
                yield Problem(path, kind, message)
            else:
                yield Skipped(path, message)
            return
        try:
            target = os.path.realpath(path)
        except OSError:  # a link on the way changed while it was resolved
            yield _problem(path, _swapped())
            return
        inside = within(target, r.real)
        follow = self.limits.follow_links
        if (
            self.bounds is not None
            and (stat.S_ISDIR(st.st_mode) or is_document(path))
            and not self.bounds.holds_path(target)
        ):  # never followed, whatever --follow-links says
            yield _problem(path, _outside_allowed(target))
            return
        if stat.S_ISDIR(st.st_mode):
            if not inside and not follow:
                yield _problem(path, _outside(target))
            elif not follow:  # nothing is lost: the folder is inside the root, walked under its own name
                yield Skipped(
                    path,
                    f"symlink to a folder inside the source ({_show(target)}): not descended, "
                    "the folder is walked under its own path",
                )
            else:
                yield from self._subdir(r, parts, depth + 1, ancestors)
        elif is_document(path) and not inside and not follow:
            yield _problem(path, _outside(target))
        else:
            yield from self._file(path, r.path, st, target)


def _as_oserror(e: Exception) -> OSError:
    return e if isinstance(e, OSError) else OSError(errno.EINVAL, "invalid path")


def _too_large(size: int, limits: LoadLimits) -> str:
    return f"file is too large ({size} bytes, limit {limits.max_file_bytes}): not loaded"


# --------------------------------------------------------------------------------------- read


@dataclass(frozen=True)
class RawDocument:
    """A document's bytes as read, before its format extracts them: enough to know its version
    (the hash of its bytes), so an unchanged document is skipped without being extracted (no PDF
    parsed, no page read by OCR)."""

    path: str
    root: str
    data: bytes
    fmt: Format  # its format (pipeline/load/formats)
    warnings: tuple[str, ...] = ()

    @functools.cached_property
    def content_hash(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def extract(self, limits: LoadLimits) -> LoadedDocument:
        """The document extracted by its format; raises LoadError."""
        return loaded_from_bytes(
            self.path, self.root, self.data, self.fmt, limits, self.warnings, content_hash=self.content_hash
        )


def read_document(c: Candidate, limits: LoadLimits) -> LoadedDocument:
    """Read one Candidate and extract it with its format; raise LoadError(kind, message) on failure."""
    return read_raw(c, limits).extract(limits)


def read_raw(c: Candidate, limits: LoadLimits) -> RawDocument:
    """Read one Candidate's bytes safely, not extracted yet; raise LoadError(kind, message) on failure."""
    fmt = formats.for_path(c.path)
    if fmt is None:
        raise LoadError("unsupported_format", "no format reads this file type: not loaded")
    bounds = _read_bounds(limits)
    try:
        dfd, name = _opening(lambda: _document_folder(c, limits), limits)
    except BaseException:
        if bounds is not None:
            bounds.close()
        raise
    try:
        for _ in range(READ_ATTEMPTS):
            data, before, after = _read_once(c, dfd, name, limits, bounds)
            if _sig(before) == _sig(after) and len(data) == after.st_size:
                break
        else:
            raise LoadError(
                "unstable",
                f"the file kept changing while it was read ({READ_ATTEMPTS} attempts): try again once it is written",
            )
    finally:
        os.close(dfd)
        if bounds is not None:
            bounds.close()
    warnings = []
    if (before.st_size, before.st_mtime_ns) != (c.size, c.mtime_ns):
        warnings.append("changed since it was listed: its current content was loaded")
    return RawDocument(c.path, c.root, data, fmt, tuple(warnings))


def loaded_from_bytes(
    path: str,
    root: str,
    data: bytes,
    fmt,
    limits: LoadLimits,
    warnings: tuple[str, ...] = (),
    content_hash: Optional[str] = None,
) -> LoadedDocument:
    """A document's bytes identified and extracted by its format: the one way files and remote
    documents (pipeline/load/sources.py) become text. Raises LoadError."""
    if not data:
        raise LoadError("empty", "the file is empty (0 bytes)")
    really = fmt.identify(data[:BINARY_SAMPLE])
    if really is not None:
        raise LoadError("wrong_format", f"not a {fmt.name} file: it looks like {really}: not loaded")
    ex = fmt.extract_within(data, path=path, max_inflated=inflation_limit(limits.max_file_bytes))
    if not ex.text.strip():
        raise LoadError(
            "empty",
            "the file contains only whitespace"
            if fmt.name in ("text", "markdown")
            else f"no text found in this {fmt.name} file",
        )
    return LoadedDocument(
        path=path,
        root=root,
        text=ex.text,
        content_hash=content_hash or hashlib.sha256(data).hexdigest(),
        size=len(data),
        markdown=ex.markdown,
        warnings=warnings + ex.warnings,
        format=fmt.name,
        title=ex.title,
        page_starts=ex.page_starts,
        page_ocr=ex.page_ocr,
    )


def _read_bounds(limits: LoadLimits) -> Optional[Bounds]:
    """The allowed roots for one read (a job of `kbingest serve`), or None."""
    if limits.allowed_roots is None:
        return None
    try:
        return Bounds(limits.allowed_roots)
    except (OSError, ValueError) as e:
        raise LoadError(*_roots_unusable(e)) from None


def _sig(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _opening(fn, limits: LoadLimits):
    """Run an open, turning its OSError into the LoadError a person reads."""
    try:
        return fn()
    except OSError as e:
        if _replaced(e, limits.follow_links):
            raise LoadError(
                "path_changed",
                "a folder on its path was replaced by a symlink or a file since it "
                "was listed: not read; ingest again once it settles",
            ) from None
        raise LoadError(*_os_kind(e, "open the file")) from None
    except ValueError:  # e.g. a NUL character in the path
        raise LoadError("unreadable", "cannot open the file: its path is invalid") from None


def _folder_of(path: str) -> tuple[int, str]:
    return os.open(os.path.dirname(path) or os.sep, _DIR_FLAGS), os.path.basename(path)


def _beneath(base: str, rel_parts: list[str], follow: bool) -> tuple[int, str]:
    """The folder of base/rel_parts (opened from base, through real folders unless `follow`) and the last name."""
    bfd = os.open(base, _DIR_FLAGS)
    try:
        return _open_beneath(bfd, rel_parts[:-1], follow), rel_parts[-1]
    finally:
        os.close(bfd)


def _document_folder(c: Candidate, limits: LoadLimits) -> tuple[int, str]:
    """A descriptor of the folder holding the document, reached from its source root one real
    folder at a time (any folder with --follow-links), and the document's name in that folder."""
    path, root = os.path.abspath(c.path), os.path.abspath(c.root)
    if path == root:  # a file named as a source: the user named its folder too
        return _folder_of(path)
    if not within(path, root):
        if not limits.follow_links:
            raise LoadError(*_outside(path))
        return _folder_of(path)
    return _beneath(root, os.path.relpath(path, root).split(os.sep), limits.follow_links)


def _open_link_target(c: Candidate, dfd: int, name: str, limits: LoadLimits) -> int:
    """The document is a symlink. Followed with --follow-links; otherwise its target, resolved now,
    must lie inside the real root and is opened from there through real folders only."""
    if limits.follow_links:
        st = os.stat(name, dir_fd=dfd)
        if not stat.S_ISREG(st.st_mode):
            raise LoadError(*_not_regular(st.st_mode))
        return os.open(name, _OPEN_FLAGS & ~_NOFOLLOW, dir_fd=dfd)
    target, real_root = os.path.realpath(c.path), os.path.realpath(c.root)
    if not within(target, real_root):
        raise LoadError(*_outside(target))
    tfd, tname = (
        _folder_of(target)
        if target == real_root
        else _beneath(real_root, os.path.relpath(target, real_root).split(os.sep), False)
    )
    try:
        return _open_regular(tfd, tname)
    finally:
        os.close(tfd)


def _open_regular(dfd: int, name: str, st: Optional[os.stat_result] = None) -> int:
    """Open a regular file of this folder, never through a link; `st` is its lstat if already taken."""
    st = st or os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):  # the resolved target became a link: a swap in progress
        raise OSError(errno.ELOOP, "symlink")
    if not stat.S_ISREG(st.st_mode):  # never open a FIFO, socket or device
        raise LoadError(*_not_regular(st.st_mode))
    return os.open(name, _OPEN_FLAGS, dir_fd=dfd)


def _read_once(
    c: Candidate, dfd: int, name: str, limits: LoadLimits, bounds: Optional[Bounds] = None
) -> tuple[bytes, os.stat_result, os.stat_result]:
    def open_it() -> int:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            return _open_link_target(c, dfd, name, limits)
        return _open_regular(dfd, name, st)

    fd = _opening(open_it, limits)
    try:
        if bounds is not None and not bounds.holds(fd):  # the file opened, whatever links or swaps led there
            raise LoadError(*_outside_allowed(bounds.located(fd)))
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):  # replaced by something else after the check above
            raise LoadError(*_not_regular(before.st_mode))
        if before.st_size > limits.max_file_bytes:
            raise LoadError("too_large", _too_large(before.st_size, limits))
        chunks, remaining = [], limits.max_file_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limits.max_file_bytes:
            raise LoadError("too_large", _too_large(len(data), limits))
        after = os.fstat(fd)
    except OSError as e:
        raise LoadError(*_os_kind(e, "read the file")) from None
    finally:
        os.close(fd)
    return data, before, after
