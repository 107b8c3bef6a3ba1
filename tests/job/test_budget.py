"""The home's shared embedding budget (pipeline/job/budget.py): one embedding call at a time across jobs,
fair turns, and a watch burst before bulk work."""

from __future__ import annotations

import threading
import time

import pytest

from kbingest.pipeline.job.budget import BudgetedEmbedder, EmbedBudget


class Probe:
    """An embedder that records how many calls run at once, and whose calls they were."""

    model, dim = "fake", 4
    lock = threading.Lock()

    def __init__(self, name: str, shared: dict) -> None:
        self.name, self.shared = name, shared

    def embed(self, texts):
        with self.lock:
            self.shared["now"] += 1
            self.shared["peak"] = max(self.shared["peak"], self.shared["now"])
            self.shared["order"].append(self.name)
        time.sleep(0.005)
        with self.lock:
            self.shared["now"] -= 1
        return [[0.0] * 4 for _ in texts]


def _two_jobs(home, calls=40):
    shared = {"now": 0, "peak": 0, "order": []}
    jobs = [BudgetedEmbedder(Probe(n, shared), EmbedBudget(home)) for n in "ab"]
    threads = [threading.Thread(target=lambda e=e: [e.embed(["x"]) for _ in range(calls)]) for e in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in jobs:
        e.budget.close()
    return shared


def test_two_jobs_never_embed_at_once_and_take_turns(home, monkeypatch):
    monkeypatch.setenv("KBINGEST_EMBED_BUDGET", "turns")
    shared = _two_jobs(home)
    assert shared["peak"] == 1
    order = shared["order"]
    switches = sum(1 for x, y in zip(order, order[1:]) if x != y)
    assert switches >= 20, f"turns are not shared: {''.join(order)}"  # not one job's 40 calls, then the other's


@pytest.mark.parametrize("mode", ["0", "priority"])
def test_without_turns_they_embed_side_by_side(home, monkeypatch, mode):
    monkeypatch.setenv("KBINGEST_EMBED_BUDGET", mode)
    assert _two_jobs(home, calls=20)["peak"] == 2


def test_a_watch_burst_goes_before_bulk_calls(home):
    shared = {"now": 0, "peak": 0, "order": []}
    bulk = BudgetedEmbedder(Probe("bulk", shared), EmbedBudget(home))
    watch = BudgetedEmbedder(Probe("watch", shared), EmbedBudget(home))
    with watch.budget.priority():
        t = threading.Thread(target=lambda: [bulk.embed(["x"]) for _ in range(3)])
        t.start()
        for _ in range(10):
            watch.embed(["x"])
        time.sleep(0.05)
        assert shared["order"] == ["watch"] * 10  # the bulk job waited for the whole burst
    t.join(5)
    assert shared["order"] == ["watch"] * 10 + ["bulk"] * 3
