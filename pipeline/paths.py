"""Where things live under a home folder, and the validation of names that become paths."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from pathlib import Path

from kbingest.pipeline.errors import InvalidInput

ENV_HOME = "KBINGEST_HOME"
NAME_MAX = 128  # job ids, knowledge base names: they become table names and file names
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
KB_NAME = "knowledge base name"
# what engine.new_job_id appends to a knowledge base name: "-{YYYYmmdd-HHMMSS}-{6 hex}"
JOB_ID_SUFFIX_LEN = len("-20260101-120000-abcdef")
# a name others are made from leaves room for what is appended: every job id of a valid name is valid
MAX_LEN = {KB_NAME: NAME_MAX - JOB_ID_SUFFIX_LEN}


class InvalidName(InvalidInput, ValueError):
    pass


def validate_name(value: str, what: str) -> str:
    """KB names and job ids become table names and file names: letters, digits, '.', '_', '-' only;
    a knowledge base name short enough that the job ids made from it are valid too."""
    limit = MAX_LEN.get(what, NAME_MAX)
    if not isinstance(value, str) or not _NAME_RE.match(value) or ".." in value or len(value) > limit:
        raise InvalidName(
            f"invalid {what} {value[:40] + '...' if isinstance(value, str) and len(value) > 43 else value!r}: "
            f"use 1-{limit} letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, with no '..' and no path separators"
        )
    return value


def default_home() -> Path:
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("kbingest", appauthor=False))


class HomeError(InvalidInput):
    """The home cannot be used, or not safely: not a folder, owned by another user, writable by
    others, or a file in it is a symlink or another user's. One line for a person; the CLI exits 2."""


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def check_home_folder(root: Path, st: os.stat_result) -> None:
    """An existing home must be a folder of this user that no one else can write: anyone who can
    write it can plant a symlink or a file kbingest would trust. Refused, never changed."""
    if not stat.S_ISDIR(st.st_mode):
        raise HomeError(f"home {root} is not a folder: name a folder (or a new path) with --home")
    if st.st_uid != os.geteuid():
        raise HomeError(
            f"home {root} belongs to {_owner(st.st_uid)}, not to you ({_owner(os.geteuid())}): "
            "use a home of your own with --home"
        )
    if st.st_mode & 0o022:
        raise HomeError(
            f"home {root} can be written by other users (mode {stat.S_IMODE(st.st_mode):o}): "
            f"anyone could plant files in it; make it private (chmod 700) or use another --home"
        )


def _check_home_file(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise HomeError(f"{path} is a symbolic link: kbingest never follows links in its home; remove it")
    if st.st_uid != os.geteuid():
        raise HomeError(
            f"{path} belongs to {_owner(st.st_uid)}, not to you: kbingest will not use it; "
            "remove it or give it back to you (chown)"
        )


def _check_home_subfolder(path: Path, st: os.stat_result) -> None:
    _check_home_file(path, st)
    if not stat.S_ISDIR(st.st_mode):
        raise HomeError(f"{path} is not a folder: kbingest keeps its own files there; remove it")
    if st.st_mode & 0o022:
        raise HomeError(
            f"{path} can be written by other users (mode {stat.S_IMODE(st.st_mode):o}): anyone could "
            "plant files in it; make it private (chmod 700) or remove it"
        )


def _open_subfolder(dfd: int, name: str, path: Path, create: bool, where: str) -> int:
    """Folder NAME of the folder open at dfd, never through a link; made (0700) if missing and `create`."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in (1, 2):
        try:
            return os.open(name, flags, dir_fd=dfd)
        except FileNotFoundError:
            if not create or attempt == 2:
                raise
            with contextlib.suppress(FileExistsError):  # made meanwhile, or planted: opened as any
                os.mkdir(name, 0o700, dir_fd=dfd)  # mkdirat: never follows a link it finds there
        except PermissionError:
            raise HomeError(f"cannot open {path}: permission denied") from None
        except OSError as e:
            if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            if stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                raise HomeError(
                    f"{path} is a symbolic link: kbingest never follows links in {where}; remove it"
                ) from None
            raise HomeError(f"{path} is not a folder: kbingest keeps its own files there; remove it") from None
    raise AssertionError("unreachable")


def open_folder(root: Path, rel: Path | str, create: bool = False, home: bool = True) -> int:
    """A descriptor of the folder ROOT/REL: ROOT as named (a home is checked: check_home_folder),
    then each folder below it opened relative to the one above with O_NOFOLLOW | O_DIRECTORY, so a
    folder planted as a symlink (HOME/locks -> elsewhere) is refused in one line (HomeError), never
    followed. Missing folders are created (0700) when `create`; else FileNotFoundError. In a home
    (`home`), every folder must also be this user's and writable by no one else."""
    root = Path(root)
    try:
        dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError:
        raise HomeError(f"cannot open {root}: permission denied") from None
    path = root
    try:
        if home:
            check_home_folder(root, os.fstat(dfd))
        for part in Path(rel).parts:
            if part in (".", "..", "/"):
                raise HomeError(f"{root / rel}: not a folder below {root}")
            path = path / part
            fd = _open_subfolder(dfd, part, path, create, "its home" if home else "the folders it keeps")
            os.close(dfd)
            dfd = fd
            if home:
                _check_home_subfolder(path, os.fstat(dfd))
    except BaseException:
        os.close(dfd)
        raise
    return dfd


def open_private(path: Path, flags: int, mode: int = 0o600, root: Path | None = None, home: bool = True) -> int:
    """Open a file of a home: its folder is checked again (check_home_folder), the file is opened
    relative to it without following a symlink (O_NOFOLLOW), and must be a regular file of this user.
    With `root` (the home, when the file is in a folder below it: HOME/locks/...), every folder
    from the root down is opened without following a link (open_folder), created with O_CREAT.
    Raises HomeError with one line instead; FileNotFoundError passes through. `home=False`: a
    file kbingest keeps outside a home (a writer lock beside a table), not checked for its owner."""
    path = Path(path)
    if root is not None and path.parent != Path(root):
        dfd = open_folder(Path(root), path.parent.relative_to(root), create=bool(flags & os.O_CREAT), home=home)
    else:
        try:
            dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except PermissionError:
            raise HomeError(f"cannot open the home {path.parent}: permission denied") from None
    try:
        if home and (root is None or path.parent == Path(root)):  # a folder below: open_folder checked it
            check_home_folder(path.parent, os.fstat(dfd))
        try:
            fd = os.open(path.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, mode, dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                where = "its home" if home else "the folders it keeps"
                raise HomeError(
                    f"{path} is a symbolic link: kbingest never follows links in {where}; remove it"
                ) from None
            if isinstance(e, PermissionError):
                try:
                    _check_home_file(path, os.stat(path.name, dir_fd=dfd, follow_symlinks=False))
                except OSError:
                    pass
                raise HomeError(f"cannot open {path}: permission denied") from None
            raise
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if home:
            _check_home_file(path, st)
        if not stat.S_ISREG(st.st_mode):
            raise HomeError(f"{path} is not a regular file: remove it")
    except BaseException:
        os.close(fd)
        raise
    return fd


class Home:
    """The layout of one home folder. Two homes never share anything."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser().absolute() if root else default_home().absolute()

    @property
    def store_file(self) -> Path:
        return self.root / "jobs.json"

    @property
    def store_lock_file(self) -> Path:
        return self.root / "jobs.json.lock"

    @property
    def engine_lock_file(self) -> Path:
        return self.root / "engine.lock"

    @property
    def locks_dir(self) -> Path:
        """Per-knowledge-base writer locks, queue places, the shared embedding budget (docs/queue.md)."""
        return self.root / "locks"

    def kb_lock_file(self, kb: str) -> Path:
        """The lock one writer of knowledge base `kb` holds (docs/queue.md): jobs on other knowledge
        bases run at the same time. `kb` is a validated name (no separators)."""
        return self.locks_dir / f"kb-{validate_name(kb, 'knowledge base name')}.lock"

    def queue_lock_file(self, job_id: str) -> Path:
        """Held by the process that owns a pending job while it waits: when that process dies, the
        kernel drops it and the job shows as interrupted, not stuck pending."""
        return self.locks_dir / f"wait-{validate_name(job_id, 'job id')}.lock"

    @property
    def lancedb_dir(self) -> Path:
        return self.root / "lancedb"

    def table_dir(self, kb: str) -> Path:
        """Where LanceDB keeps knowledge base KB's table."""
        return self.lancedb_dir / f"{kb}.lance"

    @property
    def damaged_dir(self) -> Path:
        """Where `kbingest repair` moves what it takes out of a damaged table (kept for inspection)."""
        return self.root / "damaged"

    def optimize_marker(self, kb: str) -> Path:
        """Present while an optimize of KB has started and not finished: the next run redoes it."""
        return self.root / "pending" / f"{kb}.optimize"

    FOLDERS = ("locks", "kbstate", "damaged", "pending")  # what kbingest makes in a home (besides lancedb)

    def open_file(self, path: Path, flags: int, mode: int = 0o600) -> int:
        """Open a file of this home (open_private), every folder from the home down opened without
        following a link: HOME/locks planted as a symlink is refused, never written through."""
        return open_private(path, flags, mode, root=self.root)

    def open_folder(self, rel: Path | str, create: bool = False) -> int:
        """A descriptor of folder HOME/REL, opened without following a link (open_folder)."""
        return open_folder(self.root, rel, create)

    def remove_file(self, path: Path) -> None:
        """Remove a file of a folder of this home, relative to the folder opened without following a
        link (a planted HOME/kbstate -> elsewhere loses nothing); a missing one is no error."""
        try:
            dfd = self.open_folder(Path(path).parent.relative_to(self.root))
        except FileNotFoundError:
            return
        try:
            os.unlink(Path(path).name, dir_fd=dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)

    def ensure(self) -> "Home":
        """Create a new home readable by its owner only (0700). An existing one is checked, never
        changed: it must be this user's folder, writable by no one else, and the files kbingest
        keeps in it (files and folders) must be this user's and no symlinks (HomeError otherwise)."""
        try:
            self._create()
            st = os.stat(self.root)
        except FileNotFoundError:
            raise HomeError(f"home {self.root} is a symbolic link to nothing: name a folder with --home") from None
        except (NotADirectoryError, FileExistsError):
            raise HomeError(f"home {self.root}: a part of this path is a file, not a folder") from None
        except PermissionError:
            raise HomeError(f"cannot create or reach the home {self.root}: permission denied") from None
        except OSError as e:
            raise HomeError(f"cannot create the home {self.root}: {e.strerror}") from None
        check_home_folder(self.root, st)
        for path in (
            self.store_file,
            self.store_lock_file,
            self.engine_lock_file,
            self.lancedb_dir,
            *(self.root / name for name in self.FOLDERS),
        ):
            try:
                _check_home_file(path, os.lstat(path))
            except FileNotFoundError:
                pass
        return self

    def _create(self) -> None:
        """Make the home if it does not exist; only a folder made here is given its mode."""
        if os.path.lexists(self.root):
            return
        self.root.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(self.root, 0o700)
        except FileExistsError:  # made by another process meanwhile: checked as any existing home
            return
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o700)  # whatever the umask
        finally:
            os.close(fd)
