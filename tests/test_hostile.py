"""Issue 8: hostile input. File names and document text are attacker-controlled data: they are
indexed, replaced and deleted exactly, never become a LanceDB predicate, and reach a person only
escaped. The source root is a boundary, the limits hold, the home is private, and names that
become paths are refused.
"""

from __future__ import annotations

import ast
import json
import os
import stat
from pathlib import Path

import pytest
from conftest import REPO, SMALL_PAGES, copy_pages, run_cli

from kbingest.pipeline.textsafe import fs_text

FAKE = ("--embedder", "fake")
HOSTILE_NAMES = [
    "q\"uote's.md",
    "back\\slash.md",
    "100%s%d%%.md",
    "new\nline.md",
    "a' OR '1'='1.md",
    "\x1b[31mred\x1b[0m.md",
    "carriage\rreturn.md",
    "bidi\u202egnp.md",
    "[bold red]x[/].md",  # a folder `[bold red]x[` holding `].md`
    "[link=http://x]y[/link].md",  # folders `[link=http:` / `x]y[` holding `link].md`
    os.fsdecode(b"invalid-\xff\xfe-utf8.md"),
]
HOSTILE_TEXT = (
    "body \x1b[31mred\x1b[0m \x1b]0;pwned\x07 \u202eevil\u202c \r carriage "
    "[bold red]markup[/] [link=http://evil]click[/link] \x08bs \x7fdel"
)
RAW_FORBIDDEN = ("\x1b", "\u202e", "\r", "\x07", "\x00")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def page(i: int, extra: str = "") -> str:
    return f"# Page {i}\n\nUnique words zebra{i} quokka{i}. {HOSTILE_TEXT}\n{extra}"


def kb_rows(home: Path, kb: str) -> list[dict]:
    from kbingest.pipeline.kb.table import KnowledgeBase
    from kbingest.pipeline.paths import Home

    t = KnowledgeBase(Home(home), kb)._table
    return t.search(None).select(["id", "source", "doc_id", "text"]).limit(None).to_list()


def ids_by_source(rows) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["source"], set()).add(r["id"])
    return out


def assert_no_raw_controls(text: str, where: str) -> None:
    for ch in RAW_FORBIDDEN:
        assert ch not in text, f"raw {ch!r} in {where}: {text!r}"


# ----------------------------------------------------- names: ingested, replaced, deleted exactly


@pytest.fixture
def hostile_root(tmp_path) -> Path:
    # the source root's own name is hostile too (quote, ESC, an undecodable byte)
    root = tmp_path / os.fsdecode(b"src '\x1b[1m \xff")
    for i, name in enumerate(HOSTILE_NAMES):
        write(root / name, page(i))
    copy_pages(root, SMALL_PAGES[:2])
    return root


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda n: ascii(n)[1:-1][:24])
def test_hostile_name_is_ingested_replaced_and_deleted_exactly(tmp_path, hostile_root, name):
    from kbingest.pipeline.job.engine import IngestJob
    from kbingest.pipeline.jobstore.recovery import open_store
    from kbingest.pipeline.models import JobConfig
    from kbingest.pipeline.paths import Home

    home = Home(tmp_path / "home").ensure()
    store = open_store(home)
    cfg = JobConfig(sources=[str(hostile_root)], kb="names", embedder="fake")
    n_docs = len(HOSTILE_NAMES) + 2

    def run():
        job = IngestJob.create(home, store, cfg)
        snap = job.run()
        assert snap.status.value == "completed" and job.errors == [], (snap.error, job.errors)
        return snap.metrics, ids_by_source(kb_rows(home.root, "names"))

    m, first = run()
    target = fs_text(str(hostile_root / name))
    assert m["documents_added"] == n_docs and len(first) == n_docs
    assert target in first
    assert target.startswith(str(hostile_root.parent) + "/src '\x1b[1m \\xff/")  # undecodable byte escaped

    # edit it: exactly its rows are replaced
    write(hostile_root / name, page(99, "A new closing paragraph about pangolins."))
    m, second = run()
    assert (m["documents_replaced"], m["documents_added"], m["documents_removed"]) == (1, 0, 0)
    assert m["documents_skipped"] == n_docs - 1
    assert {s: v for s, v in second.items() if s != target} == {s: v for s, v in first.items() if s != target}
    assert second[target].isdisjoint(first[target])
    texts = [r["text"] for r in kb_rows(home.root, "names") if r["source"] == target]
    assert any("pangolins" in t for t in texts) and not any("zebra" in t and "Page 99" not in t for t in texts)

    # delete it: exactly its rows go
    os.unlink(hostile_root / name)
    m, third = run()
    assert (m["documents_removed"], m["documents_added"], m["documents_replaced"]) == (1, 0, 0)
    assert target not in third
    assert third == {s: v for s, v in first.items() if s != target}


def test_predicates_are_built_only_by_in_predicate():
    """Every LanceDB call that takes a predicate gets it from ids.in_predicate (hex keys only)."""
    from kbingest.pipeline.kb.ids import in_predicate

    calls = []
    for py in sorted((REPO / "pipeline").rglob("*.py")):
        tree = ast.parse(py.read_text(), filename=str(py))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and (
                    node.func.attr in ("delete", "where", "when_not_matched_by_source_delete")
                    or (node.func.attr == "update" and any(k.arg == "where" for k in node.keywords))
                )
            ):
                calls.append((py.name, node.lineno, node))
    assert calls, "no predicate call found: the scan is broken"
    for fname, line, node in calls:
        args = list(node.args) + [k.value for k in node.keywords]
        assert args, f"{fname}:{line}: {node.func.attr}() without a predicate"
        pred = args[0]
        ok = isinstance(pred, ast.Call) and (
            (isinstance(pred.func, ast.Name) and pred.func.id == "in_predicate")
            or (isinstance(pred.func, ast.Attribute) and pred.func.attr == "in_predicate")
        )
        assert ok, f"{fname}:{line}: {node.func.attr}() with a predicate not built by in_predicate"

    with pytest.raises(ValueError):
        in_predicate("doc_id", ["a' OR '1'='1"])
    with pytest.raises(ValueError):
        in_predicate("doc_id", ["0" * 31 + "') OR true --"])
    assert in_predicate("doc_id", ["0" * 32]) == f"doc_id IN ('{'0' * 32}')"


# ------------------------------------------------------------------- text and names reach people escaped


def test_hostile_names_and_text_are_escaped_for_people_and_exact_in_json(tmp_path, status_validator):
    src = tmp_path / "src"
    good = {}
    for i, name in enumerate(HOSTILE_NAMES):
        good[name] = write(src / "good" / name, page(i))
        write(src / "bad" / name, "")  # empty: listed as a document error, by name
    home = tmp_path / "h"

    r = run_cli("ingest", str(src), "--kb", "hostile", "--batch", *FAKE, home=home)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert_no_raw_controls(r.stderr, "ingest stderr")
    lines = [json.loads(line) for line in r.stdout.splitlines()]  # every line is valid JSON
    for d in lines:
        status_validator.validate(d)
    final = lines[-1]
    expected_bad = {fs_text(str(src / "bad" / n)) for n in HOSTILE_NAMES}
    assert {e["path"] for e in final["metrics"]["document_errors"]} == expected_bad  # exact round trip
    assert final["metrics"]["documents_added"] == len(HOSTILE_NAMES)
    assert "\\x1b[31mred\\x1b[0m.md" in r.stderr and "[bold red]x[/].md" in r.stderr
    assert "new\\nline.md" in r.stderr and "bidi\\u202egnp.md" in r.stderr
    assert "invalid-\\xff\\xfe-utf8.md" in r.stderr

    # the text is data: indexed as-is (only line endings are normalised by the chunker)
    rows = kb_rows(home, "hostile")
    assert {r_["source"] for r_ in rows} == {fs_text(str(p)) for p in good.values()}
    for r_ in rows:
        assert "\x1b[31mred\x1b[0m" in r_["text"] and "\u202eevil\u202c" in r_["text"]
        assert "[bold red]markup[/]" in r_["text"] and "\x1b]0;pwned\x07" in r_["text"]

    # status: human output escaped, --json exact
    st = run_cli("status", home=home)
    assert st.returncode == 0, st.stderr
    assert_no_raw_controls(st.stdout + st.stderr, "status output")
    assert st.stdout.count("failed: loading: ") == len(HOSTILE_NAMES)
    assert "\\x1b[31mred\\x1b[0m.md: empty:" in st.stdout
    assert "[link=http:/x]y[/link].md: empty:" in st.stdout  # Rich markup shown literally
    assert "carriage\\x0dreturn.md" in st.stdout and "bidi\\u202egnp.md" in st.stdout
    stj = run_cli("status", "--json", home=home)
    for ch in ("\x1b", "\r", "\x07", "\x00"):  # JSON escapes control characters (not U+202E: valid JSON)
        assert ch not in stj.stdout
    got = json.loads(stj.stdout)
    status_validator.validate(got)
    assert {e["path"] for e in got["metrics"]["document_errors"]} == expected_bad
    jobs = json.loads(run_cli("jobs", "--json", home=home).stdout)
    assert jobs[0]["metrics"]["document_errors"] == got["metrics"]["document_errors"]

    # search: human output escaped, --json exact
    se = run_cli("search", "--kb", "hostile", "zebra5 quokka5 red evil", "-k", str(len(HOSTILE_NAMES)), home=home)
    assert se.returncode == 0, se.stderr
    assert_no_raw_controls(se.stdout + se.stderr, "search output")
    assert "\\x1b[31mred\\x1b[0m.md" in se.stdout and "\\u202eevil" in se.stdout
    assert "[bold red]markup[/]" in se.stdout
    sj = run_cli("search", "--kb", "hostile", "zebra5 quokka5", "-k", str(len(HOSTILE_NAMES)), "--json", home=home)
    hits = json.loads(sj.stdout)
    assert_no_raw_controls(sj.stdout, "search --json")
    assert hits[0]["source"] == str(good["\x1b[31mred\x1b[0m.md"])
    assert {h["source"] for h in hits} == {fs_text(str(p)) for p in good.values()}
    assert "\x1b[31mred" in hits[0]["text"]  # the text itself, exact


# ------------------------------------------------------------------------------ the source boundary


@pytest.fixture
def linked(tmp_path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    write(outside / "secret.md", "# Secret\n\nplatypus outside the source root\n")
    src = copy_pages(tmp_path / "src", SMALL_PAGES[:2])
    system = tmp_path / "system"  # a folder away from the source (in place of a system folder such as /etc)
    system.mkdir()
    os.symlink(system, src / "etc-link")
    os.symlink(outside, src / "outside-dir")
    os.symlink(outside / "secret.md", src / "secret-link.md")
    return src, outside


def test_symlinks_out_of_the_source_are_not_followed_by_default(tmp_path, linked):
    src, outside = linked
    home = tmp_path / "h"
    r = run_cli("ingest", str(src), "--kb", "links", "--batch", *FAKE, home=home)
    final = json.loads(r.stdout.splitlines()[-1])
    assert final["status"] == "completed", r.stderr
    errors = {os.path.basename(e["path"]): e for e in final["metrics"]["document_errors"]}
    assert set(errors) == {"etc-link", "outside-dir", "secret-link.md"}
    for e in errors.values():
        assert e["kind"] == "symlink_outside_root"
        assert "not followed" in e["message"] and "--follow-links" in e["message"]
    assert str(tmp_path / "system") in errors["etc-link"]["message"]
    rows = kb_rows(home, "links")
    assert {r_["source"] for r_ in rows} == {str(src / p) for p in SMALL_PAGES[:2]}
    assert not any("platypus" in r_["text"] for r_ in rows)
    assert r.returncode == 3  # listed: a person sees what was left out, and why


def test_follow_links_follows_them(tmp_path, linked):
    src, outside = linked
    os.unlink(src / "etc-link")  # whatever /etc holds is not this test's business
    home = tmp_path / "h"
    r = run_cli("ingest", str(src), "--kb", "links", "--batch", "--follow-links", *FAKE, home=home)
    assert r.returncode == 0, r.stderr
    sources = {r_["source"] for r_ in kb_rows(home, "links")}
    # followed: the secret is indexed; reached through two links, it is one document (issue 18: keyed by its
    # canonical path), shown under the first path the walk gave
    assert len(sources & {str(src / "outside-dir" / "secret.md"), str(src / "secret-link.md")}) == 1


# ------------------------------------------------------------------------------------ hard limits


def test_max_depth_is_enforced_and_reported(tmp_path):
    src = tmp_path / "src"
    write(src / "top.md", "# Top\n\nlevel zero\n")
    write(src / "a" / "one.md", "# One\n\nlevel one\n")
    write(src / "a" / "b" / "two.md", "# Two\n\nlevel two\n")
    write(src / "a" / "b" / "c" / "three.md", "# Three\n\nlevel three\n")
    home = tmp_path / "h"
    r = run_cli("ingest", str(src), "--kb", "deep", "--batch", "--max-depth", "1", *FAKE, home=home)
    assert r.returncode == 3, r.stderr
    final = json.loads(r.stdout.splitlines()[-1])
    [err] = final["metrics"]["document_errors"]
    assert err["path"] == str(src / "a" / "b") and err["kind"] == "too_deep"
    assert "1 levels" in err["message"]
    assert {r_["source"] for r_ in kb_rows(home, "deep")} == {str(src / "top.md"), str(src / "a" / "one.md")}
    assert "too_deep" in r.stderr


def test_max_files_is_enforced_reported_and_removes_nothing(tmp_path, pages):
    home = tmp_path / "h"
    assert run_cli("ingest", str(pages), "--kb", "many", "--batch", *FAKE, home=home).returncode == 0
    r = run_cli("ingest", str(pages), "--kb", "many", "--batch", "--max-files", "2", *FAKE, home=home)
    assert r.returncode == 3, r.stderr
    final = json.loads(r.stdout.splitlines()[-1])
    m = final["metrics"]
    [err] = m["document_errors"]
    assert err["kind"] == "too_many_files" and "more than 2 documents" in err["message"]
    assert m["documents_found"] == 2 and m["documents_skipped"] == 2
    assert m["documents_removed"] == 0  # an incomplete walk never deletes what it did not see
    assert len({r_["source"] for r_ in kb_rows(home, "many")}) == len(SMALL_PAGES)

    fresh = tmp_path / "h2"
    r = run_cli("ingest", str(pages), "--kb", "many", "--batch", "--max-files", "3", *FAKE, home=fresh)
    assert r.returncode == 3
    assert len({r_["source"] for r_ in kb_rows(fresh, "many")}) == 3


# ------------------------------------------------------------------------------------ private state


def test_home_is_private_after_a_cli_ingest(tmp_path, pages):
    home = tmp_path / "h"
    old = os.umask(0o000)  # the most careless parent: the CLI must not inherit it
    try:
        r = run_cli("ingest", str(pages), "--kb", "private", "--batch", *FAKE, home=home)
        assert r.returncode == 0, r.stderr
        assert run_cli("search", "--kb", "private", "reliability", home=home).returncode == 0
    finally:
        os.umask(old)
    seen = 0
    for dirpath, dirnames, filenames in os.walk(home):
        for p in [dirpath] + [os.path.join(dirpath, f) for f in filenames + dirnames]:
            mode = os.lstat(p).st_mode
            assert mode & 0o077 == 0, f"{p} is {stat.filemode(mode)}"
            seen += 1
    assert (home / "jobs.json").exists() and (home / "lancedb" / "private.lance").is_dir()
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert seen > 5


# --------------------------------------------------------------- safe homes (issue 18, items 4, 5, 12)


def _one_line_refusal(r, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("kbingest: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and "Error:" not in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def _tree(root: Path) -> dict:
    return {str(p): (os.lstat(p).st_mode, os.lstat(p).st_uid) for p in [root, *root.rglob("*")]}


OTHER_UID = 4242  # a user that is not us (the tests run as root, which can chown)


@pytest.mark.parametrize(
    "damage, needle",
    [
        ("mode-777", "can be written by other users (mode 777)"),
        ("mode-1777", "can be written by other users (mode 1777)"),
        ("mode-770", "can be written by other users (mode 770)"),
        ("owner", "belongs to uid 4242"),
        ("store-owner", "jobs.json belongs to uid 4242"),
        ("store-link", "jobs.json.lock is a symbolic link"),
    ],
)
def test_an_unsafe_home_is_refused_in_one_line_and_left_as_it_is(tmp_path, pages, damage, needle):
    """A home others can write (or another user's, or holding their files or planted links) is
    refused: exit 2, one line naming the reason; kbingest changes nothing in it, not even its mode."""
    home = tmp_path / "others_home"
    assert run_cli("ingest", str(pages), "--kb", "k", "--batch", *FAKE, home=home).returncode == 0
    victim = tmp_path / "victim"
    victim.write_text("precious")
    if damage.startswith("mode-"):
        os.chmod(home, int(damage[5:], 8))
    elif damage == "owner":
        os.chown(home, OTHER_UID, OTHER_UID)
    elif damage == "store-owner":
        os.chown(home / "jobs.json", OTHER_UID, OTHER_UID)
    else:
        (home / "jobs.json.lock").unlink()
        os.symlink(tmp_path / "planted", home / "jobs.json.lock")
    before = _tree(home)
    for args in (
        ["jobs"],
        ["status", "--json"],
        ["ingest", str(pages), "--kb", "k", "--batch", *FAKE],
        ["search", "--kb", "k", "reliability"],
    ):
        _one_line_refusal(run_cli(*args, home=home), needle)
    assert _tree(home) == before
    assert victim.read_text() == "precious" and not (tmp_path / "planted").exists()


@pytest.mark.parametrize("where", ["file", "below-a-file"])
def test_a_home_that_is_a_file_is_refused_in_one_line(tmp_path, where):
    f = tmp_path / "afile"
    f.write_text("not a folder")
    home = f if where == "file" else f / "home"
    _one_line_refusal(run_cli("jobs", home=home), "is not a folder" if where == "file" else "is a file")
    assert f.read_text() == "not a folder"


def test_an_existing_home_keeps_its_mode_and_a_new_one_is_private(tmp_path):
    """Only a folder kbingest creates is given a mode (0700); a private home of the user's own
    (here 0750: group may read, no one else may write) is used as it is, never chmodded."""
    from kbingest.pipeline.paths import Home

    mine = tmp_path / "mine"
    mine.mkdir()
    os.chmod(mine, 0o750)
    r = run_cli("jobs", home=mine)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(mine).st_mode) == 0o750
    new = Home(tmp_path / "a" / "b" / "new").ensure()
    assert stat.S_IMODE(os.stat(new.root).st_mode) == 0o700


@pytest.mark.parametrize("planted", ["engine.lock", "jobs.json.lock", "jobs.json"])
def test_a_symlink_planted_in_the_home_is_never_written_through(tmp_path, planted):
    """Planted after the home was checked: every open in the home is O_NOFOLLOW (and checks the
    owner), so a link to a victim is refused, the victim never truncated, no file created."""
    from kbingest.pipeline.jobstore.recovery import open_store
    from kbingest.pipeline.locking import FileLock, holder_pid, is_locked
    from kbingest.pipeline.paths import Home, HomeError

    home = Home(tmp_path / "h").ensure()
    store = open_store(home)
    victim, absent = tmp_path / "victim", tmp_path / "created-by-attacker"
    victim.write_text("precious")
    path = home.root / planted
    if path.exists():
        path.unlink()
    os.symlink(victim if planted != "jobs.json.lock" else absent, path)
    with pytest.raises(HomeError, match="symbolic link"):
        if planted == "engine.lock":
            FileLock(path).acquire()
        else:
            store.all()
    if planted == "engine.lock":
        for probe in (is_locked, holder_pid):
            with pytest.raises(HomeError):
                probe(path)
    assert victim.read_text() == "precious" and not absent.exists()


# ------------------------------------------------------------------------- names that become paths


@pytest.mark.parametrize(
    "args",
    [
        ["ingest", "{src}", "--kb", "../../x", "--batch", *FAKE],
        ["ingest", "{src}", "--kb", "ok", "--job-id", "../../x", "--batch", *FAKE],
        ["status", "../../x"],
        ["status", "--kb", "../../x"],
        ["status", "../../x", "--json"],
        ["resume", "../../x"],
        ["resume", "../../x", "--batch"],
        ["pause", "../../x"],
        ["cancel", "../../x"],
        ["search", "--kb", "../../x", "query"],
        ["search", "--kb", "../../x", "query", "--json"],
    ],
    ids=lambda a: " ".join(a[:3]),
)
def test_traversal_names_are_refused(tmp_path, pages, args):
    base = tmp_path / "a" / "b"
    home = base / "home"
    base.mkdir(parents=True)
    args = [a.format(src=pages) for a in args]
    before = sorted(p for p in tmp_path.rglob("*") if home not in p.parents and p != home)
    r = run_cli(*args, home=home)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == ""
    assert r.stderr.startswith("kbingest: invalid ") and "'../../x'" in r.stderr
    assert "Traceback" not in r.stderr
    after = sorted(p for p in tmp_path.rglob("*") if home not in p.parents and p != home)
    assert after == before  # nothing created outside the home
    assert not (base / "x").exists() and not (tmp_path / "x").exists()
    assert not (REPO.parent / "x").exists()
    if home.exists():
        assert not list(home.rglob("*.lance")) and not (home / "lancedb").exists()


# ------------------------------------------------------------------- the boundary under a symlink race


@pytest.fixture
def swapping(tmp_path):
    """src/sub swapped every few ms between a real folder and a symlink to a folder outside the
    source (both hold a secret.md; only the outside one says platypus)."""
    import threading
    import time

    outside = tmp_path / "outside"
    for i in range(20):
        write(outside / f"secret{i}.md", f"# Secret {i}\n\nplatypus outside the source root {i}\n")
    src = copy_pages(tmp_path / "src", SMALL_PAGES[:2])
    real, link = tmp_path / "parked-real", tmp_path / "parked-link"
    for i in range(20):
        write(real / f"secret{i}.md", f"# Inside {i}\n\nwombat inside the source root {i}\n")
    os.symlink(outside, link)
    sub, stop, swaps = src / "sub", threading.Event(), [0]

    def swap():
        while not stop.is_set():
            for park in (real, link):
                os.rename(park, sub)
                time.sleep(0.002)
                os.rename(sub, park)
                swaps[0] += 1

    th = threading.Thread(target=swap, daemon=True)
    th.start()
    try:
        yield src, swaps
    finally:
        stop.set()
        th.join()


def test_a_folder_swapped_for_an_outside_symlink_never_leads_out_of_the_root(tmp_path, swapping):
    """Issue 18, item 3: the walk and the read open every folder beneath the root's descriptor,
    never through a symlink, so no swap between a check and an open reaches the outside folder."""
    import time

    from kbingest.pipeline.job.engine import IngestJob
    from kbingest.pipeline.jobstore.recovery import open_store
    from kbingest.pipeline.load.loading import Candidate, LoadError, LoadLimits, read_document, walk
    from kbingest.pipeline.models import JobConfig
    from kbingest.pipeline.paths import Home

    src, swaps = swapping
    limits, read_inside, deadline = LoadLimits(), 0, time.monotonic() + 3.0
    while time.monotonic() < deadline:  # the loader, many times over
        for c in walk([str(src)], limits):
            if isinstance(c, Candidate):
                try:
                    text = read_document(c, limits).text
                except LoadError:
                    continue  # refused (vanished, replaced): never read through the link
                assert "platypus" not in text, c.path
                read_inside += "wombat" in text
    assert swaps[0] > 100 and read_inside > 0  # the race ran, and the real folder was read meanwhile

    home = Home(tmp_path / "home").ensure()
    store = open_store(home)
    for _ in range(2):  # the whole engine, re-ingesting the source
        IngestJob.create(home, store, JobConfig(sources=[str(src)], kb="race", embedder="fake")).run()
        assert not any("platypus" in r_["text"] for r_ in kb_rows(home.root, "race"))
