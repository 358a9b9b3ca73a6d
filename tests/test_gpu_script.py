"""benchmarks/gpu.sh --dry-run (issue 15): every stage of the one-call GPU check runs at toy sizes on the CPU,
through the same code (FSDP2, --compile, activation checkpointing, flash-only attention, the OOM recovery), and
writes its JSON and table; plus the driver's time budget (skip) and deadline (timeout) handling.

    python -m pytest tests/test_gpu_script.py -x -q
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_gpu  # noqa: E402

pytestmark = pytest.mark.slow  # both tests start other interpreters (gpu.sh's stages)


def test_dry_run_runs_every_stage_and_writes_the_json_and_the_table(tmp_path):
    # --budget 900: the stages' caps scale with it, so a loaded CI box slows the run but never cuts it short.
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "--dry-run", "--budget", "900", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    stages = json.loads((tmp_path / "gpu.json").read_text())["stages"]
    assert list(stages) == list(bench_gpu.STAGES)
    for name, stage in stages.items():
        if name == "sliding":  # another engineer's benchmark, called when its file exists
            assert stage["status"] in ("ok", "timeout") and stage["rows"], stage
            continue
        assert stage["status"] == "ok" and stage["rows"], (name, stage)
        assert not any("error" in r or "skipped" in r for r in stage["rows"]), (name, stage["rows"])
    env_row = stages["env"]["rows"][0]
    assert env_row["torch"] and env_row["bf16_peak_tflops"] == "n/a (CPU)"
    flash = stages["flash"]["rows"]  # training and evaluation, at both lengths, with only flash allowed
    assert [(r["path"].split(":")[0], r["T"], r["ok"]) for r in flash] == \
        [("train", 256, True), ("evaluate", 256, True), ("train", 1024, True), ("evaluate", 1024, True)]
    assert any("flash" in k for k in flash[0]["kernels"])
    precision = stages["precision"]["rows"][0]  # bf16 moves the logits a little, not to other tokens
    assert 0 < precision["mean_rel_diff"] < 0.05 and precision["top1_agreement"] > 0.9
    mfu = stages["mfu"]["rows"]  # the dry run's pretended OOMs: eager stops doubling, compiled halves
    assert [(r["compile"], r["activation_checkpointing"], r["micro_batch"], r["oom_at_micro_batch"]) for r in mfu] \
        == [(False, False, 2, 4), (False, True, 1, 2), (True, False, 1, 2), (True, True, 1, None)]
    assert all(r["mfu"] is None and r["tokens_per_s"] > 0 for r in mfu)
    # The same model and first batch: --compile and activation checkpointing change no loss beyond fp32 rounding
    # (here through FSDP2, which the compiled blocks run under on a GPU).
    losses = [r["first_loss"] for r in mfu if r["micro_batch"] == 1]
    assert len(losses) == 3 and max(losses) - min(losses) < 1e-5 * losses[0]
    fig3 = stages["fig3"]["rows"]
    assert [(r["method"], r["target"]) for r in fig3] == \
        [(m, t) for m in ("pose", "full") for t in (256, 512, 1024, 2048)]
    assert all(r["tokens"] == 64 for r in fig3[:4]) and [r["tokens"] for r in fig3[4:7]] == [256, 512, 1024]
    assert fig3[-1].get("oom") is True
    # --plan's estimate beside every measured row (plan.py, issue 26)
    assert all(isinstance(r["plan_gib"], float) and r["plan_gib"] > 0 for r in fig3 if "peak_mem_gib" in r)
    evals = stages["eval"]["rows"]
    assert [(r["config"], r["length"]) for r in evals] == \
        [(c, n) for c in ("tiny", "small") for n in (512, 1024, 2048)]
    assert evals[-1].get("oom") is True and all(r["tokens_per_s"] > 0 for r in evals[:-1])
    table = (tmp_path / "gpu.md").read_text()
    assert table == done.stdout and "| n/a (CPU) |" in table and table.count("not meaningful (dry run") == 4
    for name in bench_gpu.STAGES:
        assert f"## {name}: {stages[name]['status']}" in table


def test_a_stage_past_its_deadline_is_killed_and_stages_past_the_budget_are_skipped(tmp_path):
    S = dict(bench_gpu.DRY, caps=dict(bench_gpu.DRY["caps"], env=0.5), reserve=0.1, budget=60)
    results = bench_gpu.run_stages(S, ["env"], dry=True)  # python + torch cannot start in half a second
    assert results["env"]["status"] == "timeout" and "timed out" in results["env"]["note"]
    results = bench_gpu.run_stages(dict(bench_gpu.DRY, budget=0), ["env", "flash"], dry=True)
    assert [r["status"] for r in results.values()] == ["skipped", "skipped"]
    assert "time budget" in results["flash"]["note"]
