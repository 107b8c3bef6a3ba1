"""The front ends' seam (pipeline/seams.py): `Service` and `RemoteService` both implement `JobService`,
`IngestJob` and `RemoteJob` both implement `JobHandle`. mypy checks the assignments below (`make types`
runs it on this module); pytest checks every member of the protocols is there at run time."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from kbingest.app.remote import RemoteJob, RemoteService
from kbingest.pipeline.job.engine import IngestJob
from kbingest.pipeline.seams import JobHandle, JobService
from kbingest.pipeline.service import Service


def _typed(service: Service, remote: RemoteService, job: IngestJob, remote_job: RemoteJob) -> None:
    """Never run: mypy fails here when an implementation leaves its protocol."""
    local_seam: JobService = service
    remote_seam: JobService = remote
    handle: JobHandle = job
    remote_handle: JobHandle = remote_job
    started: JobHandle = service.start(job.config)
    del local_seam, remote_seam, handle, remote_handle, started


def _members(proto: type) -> set[str]:
    return {n for n in dir(proto) if not n.startswith("_")} | set(getattr(proto, "__annotations__", {}))


@pytest.mark.parametrize("proto, impls", [(JobService, (Service, RemoteService)), (JobHandle, (IngestJob, RemoteJob))])
def test_every_member_of_the_seam_is_implemented(proto: type, impls: tuple[type, ...]) -> None:
    for impl in impls:
        init = inspect.getsource(impl)
        missing = [m for m in _members(proto) if not hasattr(impl, m) and f"self.{m}" not in init]
        assert not missing, f"{impl.__name__} lacks {missing} of {proto.__name__}"


def test_a_remote_service_says_what_it_cannot_do(tmp_path: Path) -> None:
    from kbingest.pipeline.errors import Unsupported

    remote = RemoteService("http://127.0.0.1:9", client=object())  # no request is made
    assert remote.can_drain() is False and Service(tmp_path).can_drain() is True
    assert remote.default_embedder() == Service(tmp_path).default_embedder() == "fastembed"
    assert remote.knowledge_bases() == [] and remote.settings() == {}
    for call in (
        lambda: remote.drain("j1"),
        lambda: remote.save_settings(theme="x"),
        lambda: remote.retry("j1", paths=["a"]),
    ):
        with pytest.raises(Unsupported):
            call()
