"""The seams of issue 11, proved by use: a new format is one module plus one registration; a
setting is versioned or not, and the version follows; the service's typed errors map to one exit
code each; an unchanged re-run never constructs the embedder."""

from __future__ import annotations

import pytest
from conftest import SMALL_PAGES, copy_pages

from kbingest.pipeline.load import formats
from kbingest.pipeline.load.formats.base import Extracted, Format, LoadError
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.service import (
    Busy,
    ControlTimeout,
    EngineFailure,
    InvalidInput,
    KbBusy,
    NotFound,
    Service,
    WrongState,
)
from kbingest.pipeline.status import JobStatus


class ToyFormat(Format):
    """A toy format: '.toy' files hold 'TITLE|line|line', each line a section."""

    name = "toy"
    suffixes = (".toy",)

    def identify(self, head: bytes):
        return None if head.startswith(b"TOY|") else "something that is not a toy file"

    def extract(self, data: bytes, *, path: str) -> Extracted:
        _, title, *lines = data.decode().split("|")
        if not lines:
            raise LoadError("toy_empty", "a toy file with no lines")
        body = "\n\n".join(f"## Part {i}\n\n{line}" for i, line in enumerate(lines, 1))
        return Extracted(text=f"# {title}\n\n{body}\n", markdown=True, title=title)


@pytest.fixture
def toy():
    fmt = formats.register(ToyFormat())
    yield fmt
    formats.unregister(fmt)


def _service(home) -> Service:
    return Service(home)


def _run(svc: Service, config: JobConfig):
    job = svc.start(config)
    return job, job.run()


def test_a_new_format_is_one_registration(toy, tmp_path, home):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.toy").write_bytes(b"TOY|Toys|the first line about trains|the second line about boats")
    (src / "liar.toy").write_bytes(b"%PDF-1.7 not a toy")
    (src / "empty.toy").write_bytes(b"TOY|Nothing")
    (src / "b.md").write_text("# Markdown\n\nstill read\n")
    svc = _service(home)
    job, snap = _run(svc, svc.config([str(src)], "toys", embedder="fake"))
    assert snap.status == JobStatus.COMPLETED
    assert snap.m.documents_added == 2
    errors = {e.path.rsplit("/", 1)[-1]: e for e in job.errors}
    assert errors["liar.toy"].kind == "wrong_format" and "not a toy file" in errors["liar.toy"].message
    assert errors["empty.toy"].kind == "toy_empty"
    hits = svc.search("toys", "boats", k=5)
    toy_hits = [h for h in hits if h.source.endswith("a.toy")]
    assert toy_hits and {h.heading_path for h in toy_hits} >= {"Toys > Part 2"}
    assert all(h.title == "Toys" for h in toy_hits)


def test_without_its_registration_the_format_is_not_a_document(tmp_path, home):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.toy").write_bytes(b"TOY|Toys|a line")
    (src / "b.md").write_text("# Markdown\n\nread\n")
    svc = _service(home)
    _, snap = _run(svc, svc.config([str(src)], "toys", embedder="fake"))
    assert snap.m.documents_found == 1 and snap.m.files_ignored == 1


def test_a_suffix_belongs_to_one_format(toy):
    class Other(ToyFormat):
        name = "other"

    with pytest.raises(ValueError, match="taken"):
        formats.register(Other())


def test_every_setting_is_versioned_or_not_exactly_once():
    fields = set(JobConfig.model_fields)
    versioned, unversioned = set(JobConfig.VERSIONED), set(JobConfig.UNVERSIONED)
    assert not versioned & unversioned
    assert versioned | unversioned == fields


CHANGED = {
    "model": "other-model",
    "embedder": "fake",
    "max_tokens": 128,
    "overlap_tokens": 8,
    "max_chars": 2000,
    "ocr": "force",
    "ocr_engine": "tesseract",
    "embed_context": True,
}


def test_the_version_key_follows_every_versioned_setting_and_no_other():
    base = JobConfig(sources=["/d"], kb="k")  # fastembed: the model name matters (the fake has one model)
    for name in JobConfig.VERSIONED:
        assert base.model_copy(update={name: CHANGED[name]}).version_key() != base.version_key(), name
    for name, value in {
        "commit_rows": 7,
        "batch_size": 4,
        "retries": 0,
        "max_files": 10,
        "threads": 1,
        "commit_seconds": 1.0,
        "optimize_every": 3,
        "max_depth": 2,
        "follow_links": True,
        "max_file_bytes": 100,
        "watch": True,
        "sources": ["/e"],
        "kb": "j",
    }.items():
        assert base.model_copy(update={name: value}).version_key() == base.version_key(), name


def test_versions_are_those_of_the_previous_version():
    """Tables made before the seams keep their document versions and chunk ids: the key is the
    chunker's fingerprint and the model, as it was ("v1-t240-o32-c4000|all-MiniLM-L6-v2")."""
    assert JobConfig(sources=["/d"], kb="k").version_key() == "v1-t240-o32-c4000|all-MiniLM-L6-v2"
    assert JobConfig(sources=["/d"], kb="k", embedder="fake").version_key() == "v1-t240-o32-c4000|fake"


@pytest.mark.parametrize(
    "change,reingests",
    [
        ({"max_tokens": 128}, True),
        ({"overlap_tokens": 8}, True),
        ({"max_chars": 2000}, True),
        ({"commit_rows": 3}, False),
        ({"batch_size": 4}, False),
    ],
)
def test_changing_a_setting_reingests_only_when_it_is_versioned(tmp_path, home, change, reingests):
    src = copy_pages(tmp_path / "docs", SMALL_PAGES[:2])
    svc = _service(home)
    _run(svc, svc.config([str(src)], "v", embedder="fake"))
    _, snap = _run(svc, svc.config([str(src)], "v", embedder="fake", **change))
    assert (snap.m.documents_replaced == 2) is reingests and (snap.m.documents_skipped == 2) is not reingests


def test_an_unchanged_rerun_never_constructs_the_embedder(tmp_path, home):
    src = copy_pages(tmp_path / "docs", SMALL_PAGES[:3])
    made = []

    def factory(config):
        from kbingest.pipeline.embed.embedding import FakeEmbedder

        made.append(config)
        return FakeEmbedder()

    svc = Service(home, embedder_factory=factory)
    _run(svc, svc.config([str(src)], "u", embedder="fake"))
    assert len(made) == 1
    job, snap = _run(svc, svc.config([str(src)], "u", embedder="fake"))
    assert snap.status == JobStatus.COMPLETED and snap.m.documents_skipped == 3
    assert len(made) == 1 and job.embedder_loads == 0  # no model for an unchanged run
    assert svc.search("u", "reliability", k=1) and len(made) == 2  # searching loads it: that is its work


def test_typed_errors(tmp_path, home):
    svc = _service(home)
    with pytest.raises(NotFound):
        svc.resume("nope-1")
    with pytest.raises(InvalidInput):
        svc.status("../x")
    with pytest.raises(InvalidInput) as info:
        svc.config([str(tmp_path)], "k", max_tokens=4)
    assert info.value.setting == "max_tokens"
    with pytest.raises(InvalidInput):
        svc.config([str(tmp_path / "missing")], "k")
    with pytest.raises(NotFound):
        svc.search("nothing-here", "q")
    src = copy_pages(tmp_path / "docs", SMALL_PAGES[:1])
    job, snap = _run(svc, svc.config([str(src)], "t", embedder="fake"))
    with pytest.raises(WrongState):
        svc.pause(job.job_id, timeout=1)
    with pytest.raises(WrongState):
        svc.cancel(job.job_id, timeout=1)  # it completed: nothing to cancel


def test_each_error_maps_to_one_exit_code():
    from kbingest.app.exit_codes import ExitCode, exit_code_for_error

    assert exit_code_for_error(ControlTimeout("t")) == ExitCode.TIMEOUT == 5
    assert exit_code_for_error(EngineFailure("e")) == ExitCode.FAILED
    for e in (InvalidInput("i"), NotFound("n"), WrongState("w"), Busy("b")):
        assert exit_code_for_error(e) == ExitCode.USAGE
    assert exit_code_for_error(KbBusy("k")) == ExitCode.FAILED  # --no-wait: the job did not run


def test_a_pause_that_times_out_is_withdrawn(tmp_path, home):
    """A job 'running' in the store with no engine answering: the pause times out (exit 5 in the CLI),
    and the request is withdrawn, so the job never pauses after the CLI said it did not."""
    from kbingest.pipeline.locking import FileLock

    svc = _service(home)
    job = svc.start(svc.config([str(tmp_path)], "t", embedder="fake"))
    job.tracker.set_status(JobStatus.RUNNING)
    job._checkpoint()
    home.kb_lock_file("t").parent.mkdir(exist_ok=True)
    with FileLock(home.kb_lock_file("t")):  # an engine holds the knowledge base: the job looks alive
        svc.store.update(job.job_id, lambda r: r.model_copy(update={"owner_pid": None}))
        with pytest.raises(ControlTimeout, match="withdrawn"):
            svc.pause(job.job_id, timeout=0.5)
    assert svc.store.get(job.job_id).control is None
