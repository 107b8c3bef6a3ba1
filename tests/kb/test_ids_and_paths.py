import os
import stat

import pytest

from kbingest.pipeline.kb import ids
from kbingest.pipeline.paths import Home, InvalidName, validate_name


def test_chunk_id_is_stable_and_depends_on_every_input():
    base = ("/d/a.md", "h1", 3, "fp1|m1")  # source, content hash, position, version key (settings and model)
    a = ids.chunk_id(*base)
    assert a == ids.chunk_id(*base) and ids.is_key(a)
    for i in range(4):
        changed = list(base)
        changed[i] = changed[i] + 1 if isinstance(changed[i], int) else changed[i] + "x"
        assert ids.chunk_id(*changed) != a


def test_parts_cannot_run_into_each_other():
    assert ids.chunk_id("/a", "bc", 1, "f|m") != ids.chunk_id("/ab", "c", 1, "f|m")


def test_doc_version_changes_with_settings_and_model():
    v = ids.doc_version("h", "fp|m")
    assert v != ids.doc_version("h", "fp2|m") and v != ids.doc_version("h", "fp|m2")


def test_in_predicate_refuses_anything_but_keys():
    k = ids.doc_id("/x/a' OR '1'='1.md")
    assert ids.in_predicate("doc_id", [k]) == f"doc_id IN ('{k}')"
    with pytest.raises(ValueError):
        ids.in_predicate("doc_id", ["a' OR '1'='1"])


@pytest.mark.parametrize("bad", ["../../x", "a/b", "..", ".hidden", "", "a b", "a\nb", "x" * 200, "a\\b", "kb..x"])
def test_invalid_names_refused(bad):
    with pytest.raises(InvalidName):
        validate_name(bad, "knowledge base name")


@pytest.mark.parametrize("good", ["waf", "kb-1", "my_kb.v2", "Job-20260101-120000-abc123"])
def test_valid_names(good):
    assert validate_name(good, "job id") == good


def test_home_is_private(tmp_path):
    h = Home(tmp_path / "h").ensure()
    assert stat.S_IMODE(os.stat(h.root).st_mode) == 0o700


def test_a_knowledge_base_name_leaves_room_for_everything_made_from_it():
    """Issue 18, item 16: every name derived from a valid knowledge base name is valid too."""
    from kbingest.pipeline.job.engine import new_job_id
    from kbingest.pipeline.paths import KB_NAME, MAX_LEN

    longest = "k" * MAX_LEN[KB_NAME]
    assert validate_name(longest, "knowledge base name") == longest
    for derived in (new_job_id(longest), f"{longest}-recovered"):
        assert validate_name(derived, "job id") == derived
    with pytest.raises(InvalidName, match=f"use 1-{MAX_LEN[KB_NAME]} "):
        validate_name(longest + "k", "knowledge base name")


@pytest.mark.parametrize("length", [106, 128])
def test_a_long_knowledge_base_name_is_refused_as_a_name_not_as_a_job_id(tmp_path, pages, length):
    from conftest import run_cli

    r = run_cli("ingest", str(pages), "--kb", "k" * length, "--batch", "--embedder", "fake", home=tmp_path / "h")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("kbingest: invalid knowledge base name") and r.stderr.count("\n") == 1, r.stderr
    ok = run_cli("ingest", str(pages), "--kb", "k" * 105, "--batch", "--embedder", "fake", home=tmp_path / "h")
    assert ok.returncode == 0, ok.stderr
