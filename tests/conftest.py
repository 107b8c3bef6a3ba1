"""Shared fixtures: a home in tmp_path, a few real pages copied from the waf corpus, the status schema."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Test modules import helpers from other rooms' test modules by name (test_control, test_repair...):
# every room folder is on the path, so that one room's folder runs alone as it runs in the whole suite.
for _room in sorted(Path(__file__).resolve().parent.iterdir()):
    if _room.is_dir() and any(_room.glob("test_*.py")) and str(_room) not in sys.path:
        sys.path.append(str(_room))


DATA = REPO / "tests" / "data"
WAF = DATA / "waf" / "well-architected"  # the whole corpus, CC-BY-4.0 (tests/data/waf/NOTICE.md)
SCHEMA_FILE = REPO / "contracts" / "job_status.schema.json"  # generated from the pydantic models
CONTRACT_V1 = DATA / "job_status.contract-v1.schema.json"  # the contract as first given: never broken

# a few small real pages, stable across runs
SMALL_PAGES = [
    "reliability/principles.md",
    "reliability/checklist.md",
    "security/principles.md",
    "cost-optimization/principles.md",
    "operational-excellence/principles.md",
    "performance-efficiency/principles.md",
]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    monkeypatch.setenv("KBINGEST_HOME", str(tmp_path / "default-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("KBINGEST_FAKE_DELAY", raising=False)
    monkeypatch.delenv("KBINGEST_FAKE_FAIL_ON", raising=False)


S3_BUCKETS = ("kbingest-test", "kbingest-sources")  # tests/kb/test_storage.py's, tests/load/test_sources.py's


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free loopback port, started once for the session, with the suite's
    buckets, every request logged (bench/moto_server.py: which process read which object)."""
    pytest.importorskip("moto.server")
    from bench.moto_server import LoggedMotoServer

    server = LoggedMotoServer().start()
    try:
        server.create_buckets(*S3_BUCKETS)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(s3_server) -> str:
    return s3_server.url


@pytest.fixture
def home(tmp_path):
    from kbingest.pipeline.paths import Home

    return Home(tmp_path / "home").ensure()


def copy_pages(dest: Path, pages=SMALL_PAGES) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for rel in pages:
        src = WAF / rel
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out)
    return dest


@pytest.fixture
def pages(tmp_path) -> Path:
    return copy_pages(tmp_path / "docs")


class _BothSchemas:
    """Validates a status against the committed schema (generated from the models) and against the
    first contract, which every status of a job that uses no later feature must still satisfy."""

    def __init__(self, current, v1) -> None:
        self.current, self.v1 = current, v1

    def validate(self, instance) -> None:
        self.current.validate(instance)
        if not any(p.get("status") == "skipped" for p in instance.get("phase_details", [])):  # a dry run: newer
            self.v1.validate(instance)


@pytest.fixture(scope="session")
def status_validator():
    import jsonschema

    validators = []
    for path in (SCHEMA_FILE, CONTRACT_V1):
        schema = json.loads(path.read_text())
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        validators.append(cls(schema))
    return _BothSchemas(*validators)


def listed_folder(path) -> str:
    """The folder an os.scandir call lists: the loader passes a descriptor opened beneath the source
    root, a test that refuses one folder compares paths."""
    return os.readlink(f"/proc/self/fd/{path}") if isinstance(path, int) else os.fspath(path)


def run_cli(
    *args: str, home: Path | None = None, env: dict | None = None, timeout: float = 300, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m kbingest ...` as a user would, in a subprocess."""
    e = dict(os.environ)
    if env:
        e.update(env)
    cmd = [sys.executable, "-m", "kbingest"]
    if home is not None:
        cmd += ["--home", str(home)]
    cmd += list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=str(REPO), input=input)
