"""Issue 30: the job's ETA and progress as a script reads `kbingest ingest --batch` (a subprocess, the
fake embedder slowed per text so that embedding is the bottleneck, as with the real model)."""

import json
import random
import statistics
import subprocess
import sys
import time

from conftest import REPO, WAF

DELAY = "0.02"  # seconds per text embedded


def _skewed(dest, n_small=12):
    """n_small corpus pages in a/, then zz-big.md (last in walk order), about 40 % of the chunks."""
    pages = sorted(WAF.rglob("*.md"))[:n_small]
    rest = 0
    for i, p in enumerate(pages):
        out = dest / "a" / f"{i:02d}-{p.name}"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(p.read_bytes())
        rest += out.stat().st_size
    words = " ".join(p.read_text(encoding="utf-8") for p in sorted(WAF.rglob("*.md"))[n_small : n_small + 40]).split()
    rnd = random.Random(30)
    parts, size, k = [], 0, 0
    while size < rest * 0.4 / 0.6:
        para = " ".join(rnd.choice(words) for _ in range(120)) + f" paragraph {k}."
        parts.append(f"\n\n## Section {k}\n\n{para}")
        size += len(parts[-1])
        k += 1
    (dest / "zz-big.md").write_text("# Big\n" + "".join(parts), encoding="utf-8")
    return dest


def _run_sampled(args, home):
    """Each stdout line with the time it arrived, as a script piping the output would see it."""
    cmd = [sys.executable, "-m", "kbingest", "--home", str(home), *args]
    env = dict(__import__("os").environ, KBINGEST_FAKE_DELAY=DELAY)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO), env=env)
    out = []
    for line in p.stdout:
        out.append((time.monotonic(), json.loads(line)))
    err = p.stderr.read()
    assert p.wait() == 0, err
    return out


def test_batch_lines_carry_an_eta_that_agrees_with_the_phases_and_the_time_left(tmp_path):
    docs = _skewed(tmp_path / "docs")
    samples = _run_sampled(["ingest", str(docs), "--kb", "k", "--batch", "--embedder", "fake"], tmp_path / "h")
    t0, t1 = samples[0][0], samples[-1][0]
    total = t1 - t0
    assert samples[-1][1]["status"] == "completed" and samples[-1][1]["eta_seconds"] is None
    errors, last, bars = [], -1.0, {}
    for t, s in samples:
        assert "eta_seconds" in s
        assert s["progress"] >= last  # the job's progress never goes back
        last = s["progress"]
        for p in s["phase_details"]:
            assert p["progress"] >= bars.get(p["name"], 0), (p, bars)  # nor a phase's bar
            bars[p["name"]] = p["progress"]
            if p["eta_seconds"] is not None:  # no phase ETA beyond the job's
                assert s["eta_seconds"] is not None and p["eta_seconds"] <= s["eta_seconds"] + 0.05, s
            if p["items_total_estimate"] is not None:  # items beside the bar agree with it
                est = p["items_total_estimate"]
                # the estimate is a whole number (processed / bar, rounded): rounding it by 0.5 moves
                # processed / estimate by processed * 0.5 / estimate**2, a few points while both are small
                slack = 1 + 100 * p["items_processed"] * 0.5 / est**2
                assert abs(100 * p["items_processed"] / est - p["progress"]) <= slack, p
        if s["status"] == "running" and t - t0 >= 0.2 * total and s["eta_seconds"] is not None:
            errors.append(abs(s["eta_seconds"] - (t1 - t)) / total)
    assert len(errors) >= 3, (len(samples), total)
    # generous on a loaded machine: the slept embedder keeps the rate steady, the big document is
    # counted by its bytes from the listing on (an ETA by documents would be ~40 % short)
    assert statistics.median(errors) <= 0.25, errors
