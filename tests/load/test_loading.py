"""Loading phase: walking hostile folders and reading documents safely."""

from __future__ import annotations

import hashlib
import inspect
import os
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from conftest import listed_folder  # noqa: E402

from kbingest.pipeline.load import loading  # noqa: E402
from kbingest.pipeline.load.loading import (  # noqa: E402
    Candidate,
    LoadError,
    LoadLimits,
    Problem,
    Skipped,
    SourceError,
    read_document,
    validate_sources,
    walk,
)

LIMITS = LoadLimits()


def write(path: Path, data: bytes | str = "hello\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def items(root: Path | str, limits: LoadLimits = LIMITS) -> list:
    return list(walk([str(root)], limits))


def rel(root: Path, found: list, cls=Candidate) -> list[str]:
    return [os.path.relpath(x.path, root) for x in found if isinstance(x, cls)]


def problems(found: list) -> dict[str, str]:
    """basename -> kind of every Problem."""
    return {os.path.basename(p.path): p.kind for p in found if isinstance(p, Problem)}


def candidate(path: Path, root: Path | None = None) -> Candidate:
    st = os.stat(path)
    return Candidate(str(path), str(root or path.parent), st.st_size, st.st_mtime_ns)


def read(path: Path, limits: LoadLimits = LIMITS):
    return read_document(candidate(path), limits)


def load_error(path: Path, limits: LoadLimits = LIMITS) -> LoadError:
    with pytest.raises(LoadError) as info:
        read(path, limits)
    return info.value


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message and "\x1b" not in message and "Traceback" not in message


# Fail instead of hanging forever if something opens a FIFO in blocking mode (pytest-timeout).
fifo_timeout = pytest.mark.timeout(10)


# ------------------------------------------------------------------------------ sources


def test_validate_sources_accepts_folders_and_documents(tmp_path, monkeypatch):
    write(tmp_path / "a.md")
    monkeypatch.chdir(tmp_path)
    assert validate_sources([".", "a.md", str(tmp_path)]) == [str(tmp_path), str(tmp_path / "a.md")]


def test_validate_sources_not_found(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(SourceError) as info:
        validate_sources([str(missing)])
    assert str(info.value) == f"source not found: {missing}"


@pytest.mark.parametrize("make", ["png", "fifo", "dangling", "empty"])
def test_validate_sources_refuses(tmp_path, make):
    if make == "png":
        sources = [str(write(tmp_path / "x.gif"))]
    elif make == "fifo":
        os.mkfifo(tmp_path / "p.md")
        sources = [str(tmp_path / "p.md")]
    elif make == "dangling":
        os.symlink(tmp_path / "gone", tmp_path / "link")
        sources = [str(tmp_path / "link")]
    else:
        sources = []
    with pytest.raises(SourceError) as info:
        validate_sources(sources)
    assert_one_line(str(info.value))
    if sources:
        assert str(tmp_path) in str(info.value)


def test_source_error_escapes_hostile_names(tmp_path):
    with pytest.raises(SourceError) as info:
        validate_sources([str(tmp_path / "evil\n\x1b[31m\u202e.md")])
    assert_one_line(str(info.value))
    assert "\\x1b" in str(info.value) and "\\u202e" in str(info.value)


# --------------------------------------------------------------------------------- walk


def test_walk_streams_sorted_candidates_and_skips(tmp_path):
    write(tmp_path / "b.md", "bb")
    write(tmp_path / "a.txt", "a")
    write(tmp_path / "C.MARKDOWN", "c")
    write(tmp_path / "image.gif", b"GIF89a")
    write(tmp_path / "sub" / "z.md")
    write(tmp_path / "sub" / "deeper" / "y.md")

    gen = walk([str(tmp_path)], LIMITS)
    assert inspect.isgenerator(gen)
    assert isinstance(next(gen), Candidate)  # streams: the first item arrives before the walk ends

    found = items(tmp_path)
    assert rel(tmp_path, found) == ["C.MARKDOWN", "a.txt", "b.md", "sub/deeper/y.md", "sub/z.md"]
    assert rel(tmp_path, found, Skipped) == ["image.gif"]
    assert not problems(found)
    b = next(x for x in found if x.path.endswith("b.md"))
    st = os.stat(tmp_path / "b.md")
    assert b == Candidate(str(tmp_path / "b.md"), str(tmp_path), 2, st.st_mtime_ns)
    assert items(tmp_path) == found  # deterministic


def test_walk_single_file_source_and_missing_source(tmp_path):
    doc = write(tmp_path / "one.md")
    found = list(walk([str(doc), str(tmp_path / "missing")], LIMITS))
    assert found[0] == Candidate(str(doc), str(doc), 6, os.stat(doc).st_mtime_ns)
    assert isinstance(found[1], Problem) and found[1].kind == "vanished"


def test_directory_named_like_document_is_walked_as_folder(tmp_path):
    write(tmp_path / "notes.md" / "inner.md", "inside")
    found = items(tmp_path)
    assert rel(tmp_path, found) == ["notes.md/inner.md"]
    assert not problems(found)
    assert read_document(found[0], LIMITS).text == "inside"


def test_symlink_outside_root_not_followed_by_default(tmp_path):
    outside = tmp_path / "outside"
    write(outside / "secret.md", "secret")
    root = tmp_path / "root"
    write(root / "ok.md")
    os.symlink(outside / "secret.md", root / "file_link.md")
    os.symlink(outside, root / "dir_link")

    found = items(root)
    assert rel(root, found) == ["ok.md"]
    assert problems(found) == {"file_link.md": "symlink_outside_root", "dir_link": "symlink_outside_root"}
    msg = next(p.message for p in found if isinstance(p, Problem) and p.path.endswith("file_link.md"))
    assert msg == (
        f"symlink points outside the source root ({outside / 'secret.md'}): not followed; use --follow-links to follow"
    )

    # read_document refuses too (a Candidate built by hand, or a link swapped in after the walk)
    with pytest.raises(LoadError) as info:
        read_document(candidate(root / "file_link.md", root), LIMITS)
    assert info.value.kind == "symlink_outside_root"

    followed = items(root, LoadLimits(follow_links=True))
    assert rel(root, followed) == ["dir_link/secret.md", "file_link.md", "ok.md"]
    assert not problems(followed)
    assert read_document(followed[1], LoadLimits(follow_links=True)).text == "secret"


def test_symlinks_inside_root(tmp_path):
    write(tmp_path / "real" / "doc.md", "real doc")
    os.symlink(tmp_path / "real" / "doc.md", tmp_path / "alias.md")
    os.symlink("real", tmp_path / "real_link")  # relative link to a folder inside the root

    found = items(tmp_path)
    assert rel(tmp_path, found) == ["alias.md", "real/doc.md"]  # the link path is the document
    # not descended, not an error: the folder is inside the root and walked under its own path
    assert problems(found) == {}
    assert rel(tmp_path, found, Skipped) == ["real_link"]
    assert read_document(found[0], LIMITS).text == "real doc"

    # followed: the folder is walked once; reaching it again through the link is reported
    followed = items(tmp_path, LoadLimits(follow_links=True))
    assert rel(tmp_path, followed) == ["alias.md", "real/doc.md"]
    assert problems(followed) == {}
    assert rel(tmp_path, followed, Skipped) == ["real_link"]
    assert "already walked" in next(p for p in followed if isinstance(p, Skipped)).reason


def test_follow_links_detects_directory_loops(tmp_path):
    write(tmp_path / "a" / "doc.md")
    os.symlink(tmp_path, tmp_path / "a" / "up")  # a/up -> root: a cycle
    found = items(tmp_path, LoadLimits(follow_links=True))
    assert rel(tmp_path, found) == ["a/doc.md"]
    assert problems(found) == {"up": "symlink_loop"}
    # not followed by default
    assert problems(items(tmp_path)) == {}
    assert rel(tmp_path, items(tmp_path), Skipped) == ["a/up"]


def test_dangling_and_self_looping_symlinks(tmp_path):
    os.symlink(tmp_path / "gone.md", tmp_path / "dangling.md")
    os.symlink("self.md", tmp_path / "self.md")
    os.symlink(tmp_path / "gone.gif", tmp_path / "dangling.gif")  # not a document: skipped
    os.symlink("b.md", tmp_path / "a.md")
    os.symlink("a.md", tmp_path / "b.md")
    found = items(tmp_path, LoadLimits(follow_links=True))
    assert problems(found) == {
        "dangling.md": "dangling_symlink",
        "self.md": "symlink_loop",
        "a.md": "symlink_loop",
        "b.md": "symlink_loop",
    }
    assert rel(tmp_path, found, Skipped) == ["dangling.gif"]
    for p in found:
        assert_one_line(p.message if isinstance(p, Problem) else p.reason)


@fifo_timeout
def test_not_regular_files_are_never_opened(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "pipe.md")
    os.mkfifo(tmp_path / "pipe.bin")  # not a document: only counted
    monkeypatch.chdir(tmp_path)  # short relative name: AF_UNIX paths are limited to ~108 bytes
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock.txt")
    try:
        found = items(tmp_path)
        assert problems(found) == {"pipe.md": "not_regular_file", "sock.txt": "not_regular_file"}
        assert rel(tmp_path, found, Skipped) == ["pipe.bin"]
        fifo = next(p for p in found if isinstance(p, Problem) and p.path.endswith("pipe.md"))
        assert fifo.message == "not a regular file (FIFO): never opened"

        # a regular file replaced by a FIFO between walk and read
        write(tmp_path / "swap.md")
        c = candidate(tmp_path / "swap.md")
        os.unlink(tmp_path / "swap.md")
        os.mkfifo(tmp_path / "swap.md")
        with pytest.raises(LoadError) as info:
            read_document(c, LIMITS)
        assert info.value.kind == "not_regular_file"
    finally:
        sock.close()


@fifo_timeout
def test_fifo_swapped_in_after_the_check_does_not_block(tmp_path, monkeypatch):
    """Even if the pre-open check is fooled, O_NONBLOCK + fstat refuse the FIFO without blocking."""
    regular = write(tmp_path / "regular.md")
    os.mkfifo(tmp_path / "pipe.md")
    c = Candidate(str(tmp_path / "pipe.md"), str(tmp_path), 6, 0)
    real_stat = os.stat
    monkeypatch.setattr(
        os, "stat", lambda p, *a, **k: real_stat(regular) if str(p).endswith("pipe.md") else real_stat(p, *a, **k)
    )
    with pytest.raises(LoadError) as info:
        read_document(c, LIMITS)
    assert info.value.kind == "not_regular_file"


def test_permission_denied_folder(tmp_path, monkeypatch):
    write(tmp_path / "locked" / "x.md")
    write(tmp_path / "open.md")
    locked = str(tmp_path / "locked")
    real_scandir = os.scandir

    def scandir(path="."):
        if listed_folder(path) == locked:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = items(tmp_path)
    assert rel(tmp_path, found) == ["open.md"]
    assert problems(found) == {"locked": "permission_denied"}
    assert found[0].message == "permission denied: cannot list this folder"


def test_permission_denied_file(tmp_path, monkeypatch):
    doc = write(tmp_path / "x.md")
    c = candidate(doc)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(LoadError) as info:
        read_document(c, LIMITS)
    assert info.value.kind == "permission_denied"
    assert_one_line(info.value.message)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits (covered by monkeypatched tests)")
def test_permission_denied_for_real(tmp_path):
    write(tmp_path / "locked" / "x.md")
    doc = write(tmp_path / "unreadable.md")
    os.chmod(tmp_path / "locked", 0)
    os.chmod(doc, 0)
    try:
        assert problems(items(tmp_path)) == {"locked": "permission_denied"}
        assert load_error(doc).kind == "permission_denied"
    finally:
        os.chmod(tmp_path / "locked", 0o755)


def test_too_large(tmp_path):
    big = write(tmp_path / "big.md", "x" * 11)
    write(tmp_path / "small.md", "x" * 10)
    limits = LoadLimits(max_file_bytes=10)
    found = items(tmp_path, limits)
    assert rel(tmp_path, found) == ["small.md"]
    assert problems(found) == {"big.md": "too_large"}
    assert load_error(big, limits).kind == "too_large"


def test_too_large_on_the_bytes_read(tmp_path, monkeypatch):
    """A file that grows past the limit after its size was checked is still refused."""
    doc = write(tmp_path / "grows.md", "x" * 5)
    c = candidate(doc)
    real_read = os.read

    def read_and_grow(fd, n):
        with open(doc, "ab") as f:
            f.write(b"y" * 100)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read_and_grow)
    with pytest.raises(LoadError) as info:
        read_document(c, LoadLimits(max_file_bytes=50))
    assert info.value.kind == "too_large"


@pytest.mark.parametrize("data", [b"", b"  \n\t\r\n ", b"\xef\xbb\xbf", b"\xef\xbb\xbf \n"])
def test_empty(tmp_path, data):
    err = load_error(write(tmp_path / "e.md", data))
    assert err.kind == "empty"
    assert_one_line(err.message)


@pytest.mark.parametrize(
    "data",
    [b"text\x00more text", b"\x01\x02\x03\x04abc\x05\x06\x07", b"%PDF\x00" + b"a" * 9000],
    ids=["nul", "controls", "pdf"],
)
def test_binary(tmp_path, data):
    err = load_error(write(tmp_path / "b.txt", data))
    assert err.kind == "binary"


def test_nul_after_the_sample_is_not_binary(tmp_path):
    doc = read(write(tmp_path / "late.txt", b"a" * 9000 + b"\x00"))
    assert doc.text.endswith("\x00")


def test_invalid_utf8_is_replaced_with_a_warning(tmp_path):
    raw = "ok \ufffd genuine ".encode() + b"bad \xff here \xc3( and \xed\xa0\x80"
    doc = read(write(tmp_path / "x.md", raw))
    assert doc.text.startswith("ok \ufffd genuine bad \ufffd here \ufffd( and ")
    assert doc.warnings == ("invalid UTF-8 replaced at 5 places",)  # \xed\xa0\x80 is 3 places
    assert doc.content_hash == hashlib.sha256(raw).hexdigest()
    assert doc.size == len(raw)
    assert doc.markdown is True

    one = read(write(tmp_path / "y.txt", b"a\xffb"))
    assert one.warnings == ("invalid UTF-8 replaced at 1 place",) and one.markdown is False


def test_bom_and_utf16(tmp_path):
    raw = b"\xef\xbb\xbf# Title\n"
    doc = read(write(tmp_path / "bom.md", raw))
    assert doc.text == "# Title\n" and doc.warnings == ()
    assert doc.content_hash == hashlib.sha256(raw).hexdigest()  # the hash is of the raw bytes

    for name, encoded in [
        ("le.md", "\ufeffh\u00e9llo \u4e16\n".encode("utf-16-le")),
        ("be.md", "\ufeffh\u00e9llo \u4e16\n".encode("utf-16-be")),
        ("default.md", "h\u00e9llo \u4e16\n".encode("utf-16")),
    ]:
        assert read(write(tmp_path / name, encoded)).text == "h\u00e9llo \u4e16\n"

    broken = read(write(tmp_path / "broken16.md", b"\xff\xfeh\x00\x00\xd8i\x00"))  # lone high surrogate
    assert broken.text == "h\ufffdi" and broken.warnings == ("invalid UTF-16 replaced at 1 place",)


def test_vanished(tmp_path):
    doc = write(tmp_path / "gone.md")
    c = candidate(doc)
    doc.unlink()
    with pytest.raises(LoadError) as info:
        read_document(c, LIMITS)
    assert info.value.kind == "vanished"
    assert_one_line(info.value.message)


def test_changed_since_listed_is_read_with_a_warning(tmp_path):
    doc = write(tmp_path / "c.md", "old")
    c = candidate(doc)
    write(doc, "new and longer")
    loaded = read_document(c, LIMITS)
    assert loaded.text == "new and longer"
    assert loaded.warnings == ("changed since it was listed: its current content was loaded",)


def test_changed_while_reading_is_retried(tmp_path, monkeypatch):
    doc = write(tmp_path / "w.md", "first")
    c = candidate(doc)
    real_read = os.read
    calls = []

    def read_once_appending(fd, n):
        calls.append(n)
        if len(calls) == 1:  # only the first read races with a writer
            data = real_read(fd, n)
            with open(doc, "ab") as f:
                f.write(b" second")
            return data
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read_once_appending)
    loaded = read_document(c, LIMITS)
    assert loaded.text == "first second"
    assert "changed since it was listed: its current content was loaded" in loaded.warnings


def test_unstable_after_retries(tmp_path, monkeypatch):
    doc = write(tmp_path / "u.md", "start")
    c = candidate(doc)
    real_read = os.read
    opens, appended = [], []
    real_open = os.open

    def counting_open(*a, **k):
        if a[0] == "u.md":  # the document (its folder is opened once, beneath the root)
            opens.append(a[0])
        return real_open(*a, **k)

    def read_while_writing(fd, n):  # a writer appends during every attempt
        data = real_read(fd, n)
        if len(appended) < len(opens):
            appended.append(fd)
            with open(doc, "ab") as f:
                f.write(b"!")
        return data

    monkeypatch.setattr(os, "open", counting_open)
    monkeypatch.setattr(os, "read", read_while_writing)
    with pytest.raises(LoadError) as info:
        read_document(c, LIMITS)
    assert info.value.kind == "unstable"
    assert len(opens) == loading.READ_ATTEMPTS == 4  # the first read and 3 retries


def test_too_deep(tmp_path):
    write(tmp_path / "a" / "x.md")
    write(tmp_path / "a" / "b" / "y.md")
    write(tmp_path / "a" / "b" / "c" / "z.md")
    found = items(tmp_path, LoadLimits(max_depth=1))
    assert rel(tmp_path, found) == ["a/x.md"]
    assert problems(found) == {"b": "too_deep"}
    assert rel(tmp_path, items(tmp_path, LoadLimits(max_depth=3))) == ["a/b/c/z.md", "a/b/y.md", "a/x.md"]


def test_too_many_files_stops_the_walk(tmp_path):
    for name in "abcde":
        write(tmp_path / "one" / f"{name}.md")
    write(tmp_path / "two" / "f.md")
    limits = LoadLimits(max_files=3)
    found = list(walk([str(tmp_path / "one"), str(tmp_path / "two")], limits))
    assert [os.path.basename(x.path) for x in found] == ["a.md", "b.md", "c.md", "d.md"]
    assert isinstance(found[-1], Problem) and found[-1].kind == "too_many_files"
    assert_one_line(found[-1].message)
    # exactly at the limit: no problem
    assert not problems(items(tmp_path / "one", LoadLimits(max_files=5)))


HOSTILE = [
    'quote\'d "double".md',
    "back\\slash.md",
    "100% %s %n.md",
    "new\nline.md",
    "ansi\x1b[31mred\x1b[0m.md",
    "bidi\u202etxt.md",
    "-dash.md",
    " space .md",
]


def test_hostile_file_names_are_walked_and_read(tmp_path):
    for i, name in enumerate(HOSTILE):
        write(tmp_path / name, f"doc {i}")
    # a name that is not valid UTF-8, created through a bytes path
    raw_name = os.path.join(os.fsencode(tmp_path), b"bad\xff\xfename.md")
    with open(raw_name, "wb") as f:
        f.write(b"bytes name")

    found = items(tmp_path)
    assert not problems(found)
    names = {os.path.basename(c.path) for c in found}
    assert names == set(HOSTILE) | {os.fsdecode(b"bad\xff\xfename.md")}
    texts = {read_document(c, LIMITS).text for c in found}
    assert "bytes name" in texts and {f"doc {i}" for i in range(len(HOSTILE))} <= texts
    assert os.fsencode(next(c.path for c in found if "bad" in c.path)) == raw_name


def test_hostile_names_in_messages_are_escaped(tmp_path):
    outside = tmp_path / "out\n\x1b[2Jside\u202e"
    write(outside / "x.md")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "evil\nlink")
    os.symlink(tmp_path / "gone\x1b[31m.md", root / "dangling.md")
    found = items(root)
    assert {p.kind for p in found} == {"symlink_outside_root", "dangling_symlink"}
    for p in found:
        assert_one_line(p.message)
        assert "\u202e" not in p.message
