"""The change feed of watch mode (pipeline/job/watch.py) on its own: real watchdog observers on tmp_path.

Each test does what an editor or a user does, then collects bursts until one holds the path,
and keeps collecting a little past the quiet time to be sure no second burst comes.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from kbingest.pipeline.job import watch as watch_mod
from kbingest.pipeline.job.watch import Burst, ChangeFeed, _outermost, is_junk

QUIET = 0.3
STABLE = 0.15
TAIL = QUIET + STABLE + 0.35  # after the first burst: long enough for a second one to show up
POLL_INTERVAL = 0.3  # the polling observer's interval in these tests (1 s in use)
POLL_TAIL = TAIL + POLL_INTERVAL


def collect(feed: ChangeFeed, want=None, timeout: float = 6.0, tail: float = TAIL) -> list[Burst]:
    """Bursts until `want(burst)` is true for one of them (or timeout), then `tail` seconds more."""
    bursts: list[Burst] = []
    deadline = time.monotonic() + timeout
    end = None
    while True:
        now = time.monotonic()
        if end is not None and now >= end:
            break
        if end is None and now >= deadline:
            break
        b = feed.next_burst(timeout=0.1)
        if b is not None:
            bursts.append(b)
            if end is None and (want is None or want(b)):
                end = time.monotonic() + tail
    return bursts


def holding(bursts: list[Burst], path) -> list[Burst]:
    return [b for b in bursts if str(path) in b.paths]


def quiet_now(feed: ChangeFeed, seconds: float = 0.3) -> None:
    """Drain whatever setting up the folder produced."""
    collect(feed, want=lambda b: False, timeout=seconds, tail=0)


@pytest.fixture
def docs(tmp_path) -> Path:
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "a.md").write_text("# A\n\nalpha\n")
    (d / "sub" / "b.md").write_text("# B\n\nbeta\n")
    return d


@pytest.fixture
def feed(docs):
    f = ChangeFeed([str(docs)], quiet_seconds=QUIET, stable_seconds=STABLE).start()
    quiet_now(f)
    yield f
    f.stop()


# ---- helpers ---------------------------------------------------------------------------------


def test_is_junk():
    for name in (
        "x.md.swp",
        ".x.md.swp",
        "x.md.swx",
        "x.md~",
        ".#x.md",
        "#x.md#",
        "4913",
        "x.md.tmp",
        ".x.md.tmp",
        "image.gif",
        "Makefile",
        "",
    ):
        assert is_junk(name), name
    for name in ("x.md", "X.MD", "notes.markdown", "a.txt", ".hidden.md"):
        assert not is_junk(name), name


def test_coarsen_big_bursts(monkeypatch):
    monkeypatch.setattr(watch_mod, "MAX_BURST_PATHS", 10)
    feed = ChangeFeed(["/r", "/other/one.md"])
    paths = [f"/r/a{i}/x{j}.md" for i in range(5) for j in range(4)] + ["/other/one.md"]
    assert sorted(feed._coarsen(paths)) == ["/other/one.md"] + [f"/r/a{i}" for i in range(5)]
    deep = [f"/r/d{i}/e/x.md" for i in range(30)]
    assert feed._coarsen(deep) == ["/r"]  # never above the source root
    assert feed._coarsen(["/r/a.md"]) == ["/r/a.md"]


def test_watch_maps_real_paths_back_to_the_source():
    w = watch_mod._Watch(source="/link", real="/data/docs", watch_dir="/data/docs", recursive=True)
    assert w.map("/data/docs") == "/link"
    assert w.map("/data/docs/a/b.md") == "/link/a/b.md"
    assert w.map("/data/docsx/b.md") is None
    root = watch_mod._Watch(source="/", real="/", watch_dir="/", recursive=True)
    assert root.map("/x.md") == "/x.md"
    f = watch_mod._Watch(source="/s/one.md", real="/s/one.md", watch_dir="/s", recursive=False)
    assert f.map("/s/one.md") == "/s/one.md" and f.map("/s/two.md") is None


def test_outermost():
    assert sorted(_outermost(["/a/b", "/a/b/c.md", "/a/b/d/e.md", "/a/bc.md", "/x.md"])) == [
        "/a/b",
        "/a/bc.md",
        "/x.md",
    ]


# ---- editors' save patterns ---------------------------------------------------------------------


def _in_background(fn) -> tuple[threading.Thread, list[float]]:
    """Run fn in a thread (as an editor would, while the feed is being asked); [when it ended]."""
    ended: list[float] = []

    def run():
        fn()
        ended.append(time.monotonic())

    th = threading.Thread(target=run)
    th.start()
    return th, ended


def collect_timed(feed: ChangeFeed, want, timeout: float = 8.0) -> list[tuple[float, Burst]]:
    out: list[tuple[float, Burst]] = []
    deadline = time.monotonic() + timeout
    end = None
    while time.monotonic() < (end or deadline):
        b = feed.next_burst(timeout=0.05)
        if b is not None:
            out.append((time.monotonic(), b))
            if end is None and want(b):
                end = time.monotonic() + TAIL
    return out


def test_chunked_write_is_one_burst(feed, docs):
    p = docs / "big.md"

    def write():
        with open(p, "w") as fh:
            for i in range(10):
                fh.write(f"## part {i}\n\n" + "words " * 200 + "\n")
                fh.flush()
                time.sleep(0.05)

    th, ended = _in_background(write)
    got = collect_timed(feed, want=lambda b: str(p) in b.paths)
    th.join()
    assert [b.paths for _, b in got] == [frozenset({str(p)})]
    assert got[0][0] >= ended[0] + QUIET  # not before the last chunk had been quiet for a while


def test_slow_chunked_write_waits_until_stable(feed, docs):
    """Pauses longer than the stable time but shorter than the quiet time: one burst, after the end."""
    p = docs / "slow.md"

    def write():
        with open(p, "w") as fh:
            for i in range(5):
                fh.write(f"line {i}\n")
                fh.flush()
                time.sleep(0.2)

    th, ended = _in_background(write)
    got = collect_timed(feed, want=lambda b: str(p) in b.paths)
    th.join()
    assert [b.paths for _, b in got] == [frozenset({str(p)})]
    assert got[0][0] >= ended[0]


def test_write_without_events_is_waited_for_until_stable(feed, docs):
    """Stability is checked by stat, not only by events: a file whose size still changes after the
    quiet period (here: the quiet time is cut short by hand) is not reported until it stops."""
    feed._stop_observer()  # no events: only the stat checks
    p = docs / "a.md"
    p.write_text("# A\n\nfirst\n")
    with feed._lock:
        feed._touch(str(p), time.monotonic() - 10)  # an event, long quiet since
    assert feed._collect(time.monotonic())[0] is None  # first stat sample taken
    p.write_text("# A\n\nfirst and more\n")  # no event for this write
    assert feed._collect(time.monotonic())[0] is None  # changed since the sample: wait again
    time.sleep(STABLE + 0.05)
    burst, _ = feed._collect(time.monotonic())
    assert burst is not None and burst.paths == frozenset({str(p)})


def test_atomic_rename_save(feed, docs):
    tmp = docs / ".x.md.tmp"
    dest = docs / "x.md"
    tmp.write_text("# X\n\nnew content\n")
    os.replace(tmp, dest)
    bursts = collect(feed, want=lambda b: str(dest) in b.paths)
    assert len(holding(bursts, dest)) == 1
    assert not holding(bursts, tmp)
    assert all(str(tmp) not in b.paths for b in bursts)


def test_atomic_rename_over_existing(feed, docs):
    dest = docs / "a.md"
    tmp = docs / "a.md.tmp"
    tmp.write_text("# A\n\nalpha, rewritten\n")
    os.replace(tmp, dest)
    bursts = collect(feed, want=lambda b: str(dest) in b.paths)
    assert len(holding(bursts, dest)) == 1
    assert [b.paths for b in bursts] == [frozenset({str(dest)})]


def test_vim_style_save(feed, docs):
    """vim (backupcopy=no): write test file 4913, rename x.md to x.md~, write x.md, delete x.md~."""
    x = docs / "a.md"
    backup = docs / "a.md~"
    (docs / "4913").write_text("")
    os.unlink(docs / "4913")
    os.rename(x, backup)
    with open(x, "w") as fh:
        fh.write("# A\n\nalpha, edited in vim\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.unlink(backup)
    bursts = collect(feed, want=lambda b: str(x) in b.paths)
    assert len(holding(bursts, x)) == 1
    assert [b.paths for b in bursts] == [frozenset({str(x)})]


def test_vim_backupcopy_save(feed, docs):
    """vim (backupcopy=yes): copy x.md to x.md~, swap file churn, rewrite x.md in place."""
    x = docs / "a.md"
    shutil.copyfile(x, docs / "a.md~")
    (docs / ".a.md.swp").write_bytes(b"\0" * 4096)
    x.write_text("# A\n\nalpha, edited in place\n")
    os.unlink(docs / ".a.md.swp")
    bursts = collect(feed, want=lambda b: str(x) in b.paths)
    assert [b.paths for b in bursts] == [frozenset({str(x)})]


def test_rapid_appends_are_one_burst(feed, docs):
    p = docs / "log.md"
    for i in range(100):
        with open(p, "a") as fh:
            fh.write(f"- entry {i}\n")
    bursts = collect(feed, want=lambda b: str(p) in b.paths)
    assert len(bursts) == 1
    assert bursts[0].paths == frozenset({str(p)})


def test_many_files_saved_together_are_one_burst(feed, docs):
    paths = [docs / f"n{i}.md" for i in range(20)]
    for i, p in enumerate(paths):
        p.write_text(f"# note {i}\n")
        time.sleep(0.01)
    bursts = collect(feed, want=lambda b: True)
    assert len(bursts) == 1
    assert bursts[0].paths == frozenset(str(p) for p in paths)


# ---- deletions and moves ----------------------------------------------------------------------


def test_deletion(feed, docs):
    p = docs / "sub" / "b.md"
    p.unlink()
    bursts = collect(feed, want=lambda b: str(p) in b.paths)
    assert len(holding(bursts, p)) == 1


def test_folder_deleted(feed, docs):
    sub = docs / "sub"
    shutil.rmtree(sub)
    bursts = collect(feed, want=lambda b: str(sub) in b.paths)
    assert [b.paths for b in bursts] == [frozenset({str(sub)})]  # its files are covered by the folder


def test_move_within_tree(feed, docs):
    src, dest = docs / "a.md", docs / "sub" / "a2.md"
    os.rename(src, dest)
    bursts = collect(feed, want=lambda b: str(src) in b.paths or str(dest) in b.paths)
    assert len(bursts) == 1
    assert bursts[0].paths == frozenset({str(src), str(dest)})


def test_move_out_of_tree(feed, docs, tmp_path):
    src = docs / "a.md"
    os.rename(src, tmp_path / "elsewhere.md")
    bursts = collect(feed, want=lambda b: str(src) in b.paths)
    assert [b.paths for b in bursts] == [frozenset({str(src)})]


def test_move_into_tree(feed, docs, tmp_path):
    outside = tmp_path / "incoming.md"
    outside.write_text("# In\n")
    dest = docs / "incoming.md"
    os.rename(outside, dest)
    bursts = collect(feed, want=lambda b: str(dest) in b.paths)
    assert [b.paths for b in bursts] == [frozenset({str(dest)})]


def test_folder_moved_in(feed, docs, tmp_path):
    outside = tmp_path / "batch"
    (outside / "deep").mkdir(parents=True)
    (outside / "one.md").write_text("# one\n")
    (outside / "deep" / "two.md").write_text("# two\n")
    dest = docs / "batch"
    os.rename(outside, dest)
    bursts = collect(feed, want=lambda b: str(dest) in b.paths)
    assert [b.paths for b in bursts] == [frozenset({str(dest)})]


def test_folder_moved_within_tree(feed, docs):
    src, dest = docs / "sub", docs / "renamed"
    os.rename(src, dest)
    bursts = collect(feed, want=lambda b: str(dest) in b.paths)
    assert [b.paths for b in bursts] == [frozenset({str(src), str(dest)})]


def test_folder_copied_in_waits_for_its_files(feed, docs):
    """A folder whose files are still being written is reported once, after they are complete."""
    dest = docs / "copying"
    dest.mkdir()
    with open(dest / "part.md", "w") as fh:
        for _i in range(8):
            fh.write("chunk " * 100 + "\n")
            fh.flush()
            time.sleep(0.1)
    bursts = collect(feed, want=lambda b: str(dest) in b.paths)
    assert [b.paths for b in bursts] == [frozenset({str(dest)})]


# ---- what is ignored ----------------------------------------------------------------------------


def test_junk_is_ignored(feed, docs):
    for name in (".a.md.swp", "a.md.swx", "a.md~", ".#a.md", "#a.md#", "4913", "notes.tmp", "image.gif", "data.json"):
        (docs / name).write_text("junk")
    (docs / ".git" / "objects").mkdir(parents=True)
    (docs / ".git" / "objects" / "readme.md").write_text("not ours")
    for name in (".a.md.swp", "4913", "notes.tmp"):
        (docs / name).unlink()
    assert collect(feed, timeout=QUIET + STABLE + 0.6) == []


def test_excluded_paths_are_ignored(docs):
    home = docs / "kb-home"
    home.mkdir()
    with ChangeFeed([str(docs)], QUIET, STABLE, exclude=[str(home)]) as feed:
        (home / "notes.md").write_text("# written by the engine's home, not a user\n")
        (home / "lancedb").mkdir()
        (docs / "real.md").write_text("# real\n")
        bursts = collect(feed, want=lambda b: True)
    assert [b.paths for b in bursts] == [frozenset({str(docs / "real.md")})]


def test_reading_files_is_not_a_change(feed, docs):
    for p in docs.rglob("*.md"):
        p.read_bytes()
    assert collect(feed, timeout=QUIET + STABLE + 0.6) == []


# ---- sources of every kind ----------------------------------------------------------------------


def test_single_file_source(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    f = d / "only.md"
    f.write_text("# only\n")
    with ChangeFeed([str(f)], quiet_seconds=QUIET, stable_seconds=STABLE) as feed:
        (d / "other.md").write_text("# other\n")
        f.write_text("# only, edited\n")
        bursts = collect(feed, want=lambda b: str(f) in b.paths)
    assert [b.paths for b in bursts] == [frozenset({str(f)})]


def test_source_created_later(tmp_path):
    src = tmp_path / "later" / "docs"
    with ChangeFeed([str(src)], quiet_seconds=QUIET, stable_seconds=STABLE) as feed:
        assert feed.next_burst(0.3) is None
        src.mkdir(parents=True)
        (src / "n.md").write_text("# n\n")
        bursts = collect(feed, want=lambda b: str(src) in b.paths)
        assert [b.paths for b in bursts] == [frozenset({str(src)})]
        # and now it is watched as a folder
        (src / "m.md").write_text("# m\n")
        bursts = collect(feed, want=lambda b: str(src / "m.md") in b.paths)
        assert [b.paths for b in bursts] == [frozenset({str(src / "m.md")})]


def test_source_folder_deleted(feed, docs):
    shutil.rmtree(docs)
    bursts = collect(feed, want=lambda b: str(docs) in b.paths)
    assert len(holding(bursts, docs)) == 1
    assert not any(b.rescan for b in bursts)


def test_symlinked_source_reports_the_path_as_given(tmp_path, docs):
    link = tmp_path / "link"
    link.symlink_to(docs, target_is_directory=True)
    with ChangeFeed([str(link)], quiet_seconds=QUIET, stable_seconds=STABLE) as feed:
        (docs / "c.md").write_text("# c\n")
        bursts = collect(feed, want=lambda b: True)
    assert [b.paths for b in bursts] == [frozenset({str(link / "c.md")})]


def test_relative_source_gives_absolute_paths(docs, monkeypatch):
    monkeypatch.chdir(docs.parent)
    with ChangeFeed(["docs"], quiet_seconds=QUIET, stable_seconds=STABLE) as feed:
        (docs / "r.md").write_text("# r\n")
        bursts = collect(feed, want=lambda b: True)
    assert [b.paths for b in bursts] == [frozenset({str(docs / "r.md")})]


# ---- polling, lost events, dead observers ----------------------------------------------------------


@pytest.fixture
def fast_polling(monkeypatch):
    monkeypatch.setattr(watch_mod, "POLL_INTERVAL_S", POLL_INTERVAL)


def test_forced_polling_reports_changes(docs, fast_polling):
    with ChangeFeed([str(docs)], QUIET, STABLE, force_polling=True) as feed:
        assert feed.polling
        from watchdog.observers.polling import PollingObserver

        assert isinstance(feed._observer, PollingObserver)
        p = docs / "a.md"
        p.write_text("# A\n\nchanged under polling\n")
        q = docs / "new.md"
        q.write_text("# new\n")
        bursts = collect(feed, want=lambda b: str(p) in b.paths, timeout=8, tail=POLL_TAIL)
        assert feed.warning is None  # asked for: nothing is wrong
    assert len(holding(bursts, p)) == 1
    assert any(str(q) in b.paths for b in bursts)
    assert not any(b.rescan for b in bursts)


def test_forced_polling_reports_moves_and_deletions(docs, fast_polling):
    with ChangeFeed([str(docs)], QUIET, STABLE, force_polling=True) as feed:
        os.rename(docs / "a.md", docs / "sub" / "moved.md")
        (docs / "sub" / "b.md").unlink()
        want = {str(docs / "a.md"), str(docs / "sub" / "moved.md"), str(docs / "sub" / "b.md")}
        seen: set[str] = set()
        for b in collect(
            feed, want=lambda b: want <= seen.union(b.paths) or not seen.update(b.paths), timeout=8, tail=POLL_TAIL
        ):
            seen |= b.paths
    assert want <= seen


@pytest.mark.parametrize(
    "method,err", [("start", errno.ENOSPC), ("schedule", errno.ENOSPC), ("schedule", errno.EMFILE)]
)
def test_inotify_limit_falls_back_to_polling(docs, monkeypatch, fast_polling, method, err):
    from watchdog.observers.inotify import InotifyObserver

    def refuse(self, *a, **kw):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(InotifyObserver, method, refuse)
    with ChangeFeed([str(docs)], QUIET, STABLE) as feed:
        assert feed.polling
        assert feed.warning and "fell back to polling" in feed.warning
        assert ("watch limit" if err == errno.ENOSPC else "instance limit") in feed.warning
        p = docs / "a.md"
        p.write_text("# A\n\nchanged after the fallback\n")
        bursts = collect(feed, want=lambda b: str(p) in b.paths, timeout=8, tail=POLL_TAIL)
    assert len(holding(bursts, p)) == 1


def test_watch_limit_on_a_new_subfolder_switches_to_polling_and_rescans(feed, docs, monkeypatch, fast_polling):
    """A folder created later cannot be watched (ENOSPC, swallowed by watchdog for sub-folders)."""
    from watchdog.observers.inotify_c import InotifyFD

    real_add = InotifyFD.add_callback

    def add_callback(self, path, *a, **kw):
        if b"crowded" in path:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return real_add(self, path, *a, **kw)

    monkeypatch.setattr(InotifyFD, "add_callback", add_callback)
    (docs / "crowded").mkdir()
    bursts = collect(feed, want=lambda b: b.rescan)
    assert any(b.rescan for b in bursts)
    assert feed.polling and "watch limit" in (feed.warning or "")
    p = docs / "crowded" / "late.md"
    p.write_text("# late\n")  # only polling sees this one
    bursts = collect(feed, want=lambda b: str(p) in b.paths, timeout=8, tail=0)
    assert holding(bursts, p)


def test_queue_overflow_means_rescan_and_restart(feed, docs):
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent

    old = feed._observer
    # what the kernel sends when its queue overflowed: wd -1, IN_Q_OVERFLOW, through watchdog's own path
    old._inotify_fd.handle_event(InotifyEvent(-1, InotifyConstants.IN_Q_OVERFLOW, 0, b""))
    b = feed.next_burst(timeout=2)
    assert b == Burst(frozenset(), rescan=True)
    assert feed._observer is not old and feed._observer.is_alive()
    assert feed.restarts == 1
    p = docs / "after.md"
    p.write_text("# after\n")
    bursts = collect(feed, want=lambda b: str(p) in b.paths)
    assert [b.paths for b in bursts] == [frozenset({str(p)})]


def test_dead_observer_means_rescan_and_restart(feed, docs):
    old = feed._observer
    old.stop()
    old.join(5)
    b = feed.next_burst(timeout=2)
    assert b == Burst(frozenset(), rescan=True)
    assert feed._observer is not old and feed._observer.is_alive()
    p = docs / "after.md"
    p.write_text("# after\n")
    bursts = collect(feed, want=lambda b: str(p) in b.paths)
    assert [b.paths for b in bursts] == [frozenset({str(p)})]


def test_stop_is_prompt_and_idempotent(docs):
    feed = ChangeFeed([str(docs)]).start()
    t = time.monotonic()
    feed.stop()
    feed.stop()
    assert time.monotonic() - t < 3
    assert feed.next_burst(0.5) is None
