"""Smoke run of benchmarks/reproduce.sh --quick (issue 7): every step of the pipeline runs and reports.
It checks the plumbing, not the science: the quick run trains for a handful of steps."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("original", "pi-only", "full", "full-tokens", "randpos", "pose", "pose-ntk", "pose-yarn", "pose-yarn-b2",
         "full-yarn-b2")


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the whole pipeline (~3 min idle, 15+ on a busy 2-core box): past the 600 s default
def test_quick_reproduction_runs_every_step_and_writes_the_tables(tmp_path):
    out = tmp_path / "repro"
    # This interpreter, and a PATH without it: the pipeline must not depend on a `python` with torch on PATH.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable, PATH=os.defpath)
    # Timeouts here are hang guards, not speed limits: on a loaded 2-core box --quick took over 15 minutes.
    run = subprocess.run(["bash", "benchmarks/reproduce.sh", "--quick", str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for name in NAMES:
        ppl = json.loads((out / "results" / f"{name}.ppl.json").read_text())
        keys = json.loads((out / "results" / f"{name}.passkey.json").read_text())
        assert [r["length"] for r in ppl["results"]] == [r["length"] for r in keys["results"]] == [128, 256]
        assert all(math.isfinite(r["ppl"]) and r["ppl"] > 1 for r in ppl["results"])
        assert all(0 <= r["accuracy"] <= 1 for r in keys["results"])
    # the rope each row claims: Original is plain RoPE, PI-only linear x2, the fine-tunes carry their own
    assert json.loads((out / "results" / "original.ppl.json").read_text())["rope"]["rope_type"] == "default"
    pi = json.loads((out / "results" / "pi-only.ppl.json").read_text())["rope"]
    assert pi["rope_type"] == "linear" and pi["factor"] == 2.0
    assert json.loads((out / "results" / "pose-yarn.ppl.json").read_text())["rope"]["rope_type"] == "yarn-revised"
    tuned = json.loads((out / "results" / "pose-yarn-b2.ppl.json").read_text())["rope"]
    assert tuned["rope_type"] == "yarn-revised" and tuned["beta_fast"] == 2
    report = (out / "report.md").read_text()
    for label in ("Original", "PI-only", "Full-length", "Full-length, equal tokens", "RandPos", "PoSE (linear)",
                  "PoSE (NTK)", "PoSE (YaRN)", "PoSE (YaRN, beta_fast 2: miniature-tuned)",
                  "Full-length (YaRN, beta_fast 2: miniature-tuned)"):
        assert report.count(f"| {label} |") >= 3, label  # perplexity, passkey and key log-probability rows
    # every fine-tune scored itself with --eval-every (step 0, 2 and 4; 0 and 2 for the equal-tokens run)
    for name in ("full", "pose", "pose-yarn", "pose-yarn-b2", "full-tokens"):
        rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in rows if "eval" in r]
        assert steps == ([0, 2] if name == "full-tokens" else [0, 2, 4]), (name, steps)
    assert "**Retrieval against fine-tuning steps**" in report and "**Diagnosis of the base" in report
    diag = json.loads((out / "results" / "diag.json").read_text())
    assert [r["scaling"] for r in diag["rows"]][:4] == ["none", "linear x2", "ntk x2", "yarn-revised x2, beta_fast 32"]
    commands = (out / "commands.sh").read_text().splitlines()
    assert sum(c.startswith("python train.py") for c in commands) == 9
    assert sum(c.startswith("python evaluate.py") for c in commands) == 20
    assert sum(c.startswith("python benchmarks/repro_diag.py") for c in commands) == 1
    # a second run finds every output and redoes nothing
    again = subprocess.run(["bash", "benchmarks/reproduce.sh", "--quick", str(out)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0 and again.stdout.count("exists, skipped") == 31, again.stdout[-2000:]
