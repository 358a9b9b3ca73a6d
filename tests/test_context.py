"""The training window and L_c are two numbers (issue 33): alpha = L_t / L_c with L_c the checkpoint's context
(config.json's, or --context where max_position_embeddings is not the pre-training window), the window <= L_c
(default L_c), PoSE's skips spanning L_t whatever the window; the export records L_c; refusals and --resume
cover both.

    python -m pytest tests/test_context.py -q

The micro checkpoint's context is 16 (conftest.MICRO's max_position_embeddings).
"""
import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import distributed
import options
import train
from hf import load_config

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread per test
RUN = ["--steps", "2", "--batch-size", "2", "--lr", "1e-3", "--warmup", "1", "--log-every", "1"]


def resolved(micro_model, corpus, tmp_path, *flags):
    argv = ["--model", str(micro_model), "--data", str(corpus), "--out", str(tmp_path / "o"), *flags]
    return options.resolve(options.parse_args(argv), 1)


def run(argv) -> str:
    """One training run in this process; what it printed."""
    log = io.StringIO()
    with contextlib.redirect_stdout(log), distributed.distributed() as device:
        train.train(options.parse_args(argv), device)
    return log.getvalue()


def test_a_window_below_the_checkpoints_context_keeps_alpha_at_target_over_the_context(micro_model, corpus,
                                                                                     tmp_path):
    opts, config = resolved(micro_model, corpus, tmp_path, "--window", "4", "--target", "64")
    assert (opts.context, opts.window, opts.target) == (16, 4, 64)
    rope = options.training_args(opts, config).rope
    assert (rope["rope_type"], rope["factor"], rope["original_max_position_embeddings"]) == ("linear", 4.0, 16)
    default, _ = resolved(micro_model, corpus, tmp_path, "--window", "4")
    assert (default.context, default.window, default.target) == (16, 4, 128)  # L_t = 8 L_c, not 8 x the window
    for kind in ("ntk", "yarn", "yarn-revised"):
        o, c = resolved(micro_model, corpus, tmp_path, "--window", "8", "--target", "48", "--rope", kind)
        r = options.training_args(o, c).rope
        assert (r["rope_type"], r["factor"], r["original_max_position_embeddings"]) == (kind, 3.0, 16)


def test_context_overrides_the_configs_window_and_alpha_follows_it(micro_model, corpus, tmp_path):
    """--context: a config whose max_position_embeddings is not the pre-training window (Qwen3's 40,960 for
    32,768): alpha divides by --context, the export records it."""
    opts, config = resolved(micro_model, corpus, tmp_path, "--context", "8", "--target", "64")
    assert (opts.context, opts.window, opts.target) == (8, 8, 64)
    rope = options.training_args(opts, config).rope
    assert (rope["factor"], rope["original_max_position_embeddings"]) == (8.0, 8)


@pytest.mark.parametrize("flags, message", [
    (["--context", "32"], "error: --context 32 > {model}'s context 16 (max_position_embeddings): L_c is the window "
                          "the checkpoint was pre-trained at, at most 16"),
    (["--window", "32"], "error: --window 32 > {model}'s context 16 (max_position_embeddings): PoSE trains within "
                         "the checkpoint's own window, L_c <= 16"),
    (["--context", "8", "--window", "12"], "error: --window 12 > L_c = --context 8: PoSE trains within the "
                                           "checkpoint's own window, L_c <= 8"),
    (["--window", "8", "--target", "12"], "error: --target 12 < L_c 16: context extension needs L_t >= L_c"),
    (["--context", "0"], "error: --context must be in 1 .. 2147483647, got 0"),
])
def test_each_bad_context_window_or_target_is_one_line_and_nothing_written(micro_model, corpus, tmp_path, capsys,
                                                                           flags, message):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exit_:
        train.main(["--model", str(micro_model), "--data", str(corpus), "--out", str(out), *flags])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err == message.format(model=micro_model)
    assert not out.exists()


def test_pose_positions_span_the_target_whatever_the_window_and_each_row_holds_a_window(micro_model, tmp_path):
    """Windows of 4 tokens extended to 64: every row has 4 tokens whose position ids jump (Eq. 4) up to L_t - 1;
    over many examples the largest position reached is L_t - 1 and the skips are spread over 0..L_t - window."""
    opts = dataclasses.replace(options.TrainOptions(), context=16, window=4, target=64, micro_batch_size=8)
    documents = [np.arange(1000, 1100 + 7 * i) for i in range(10)]
    top, last = set(), []
    for step in range(200):
        tokens, targets, positions = train.make_batch(documents, opts, 0, step, 0, 1)
        assert tokens.shape == positions.shape == (8, 4)
        assert (targets == tokens + 1).all()  # the true next token (these documents count up by one)
        assert (positions[:, 1:] > positions[:, :-1]).all() and int(positions.max()) <= 63
        top.update(positions.max(dim=1).values.tolist())
        last += positions[:, -1].tolist()
    assert 63 in top  # u_1 = L_t - window: the last position reaches L_t - 1
    assert np.mean(np.array(last) > 32) > 0.3  # the chunk ends are spread over the target, not held below L_c


def test_a_run_with_a_short_window_exports_lc_and_alpha_and_says_both(micro_model, corpus, tmp_path):
    out = tmp_path / "run"
    printed = run(["--model", str(micro_model), "--data", str(corpus), "--out", str(out), "--window", "8",
                   "--target", "64", *RUN])
    line = next(line for line in printed.splitlines() if line.startswith("extension:"))
    assert line == ("extension: L_c 16 -> L_t 64, alpha 4 (linear rope x4 on L_c 16); PoSE, 2 chunks, content "
                    "uniform; training window 8")
    assert "batch: 2 sequences of <= 8 tokens a step" in printed
    config = load_config(out / "final")
    assert config["max_position_embeddings"] == 64 and config["original_max_position_embeddings"] == 16
    assert config["rope_scaling"]["factor"] == 4.0 and config["rope_parameters"]["factor"] == 4.0
    settings = json.loads((out / "settings.json").read_text())["options"]
    assert (settings["context"], settings["window"], settings["target"]) == (16, 8, 64)


def test_resume_refuses_a_new_context_and_reads_an_older_settings_json_as_context_equal_window(
        micro_model, corpus, tmp_path, capsys):
    """A settings.json written before --context existed trained with L_c = its --window: resuming it under
    today's default L_c (the checkpoint's 16) would change alpha silently, so it is refused, naming --context."""
    out = tmp_path / "run"
    argv = ["--model", str(micro_model), "--data", str(corpus), "--out", str(out), "--window", "8", "--target", "64",
            *RUN]
    run(argv)
    with pytest.raises(SystemExit) as exit_:
        train.main([*argv, "--context", "8", "--resume"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: --resume: --context 8 differs from this run's 16 (")
    old = tmp_path / "old"
    shutil.copytree(out, old)
    settings = json.loads((old / "settings.json").read_text())
    del settings["options"]["context"]  # as an older train.py wrote it: its L_c was its window, 8
    (old / "settings.json").write_text(json.dumps(settings))
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    resumed = [a if a != str(out) else str(old) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        train.main([*resumed, "--resume"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: --resume: --context 16 differs from this run's 8 (")
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
    printed = run([*resumed, "--context", "8", "--steps", "3", "--resume"])  # said explicitly, it continues
    assert "resumed from" in printed and "alpha 8 (linear rope x8 on L_c 8)" in printed


def test_eval_lengths_default_to_lc_and_lt_not_the_window(micro_model, corpus, tmp_path):
    (tmp_path / "held.txt").write_text("word " * 100)
    opts, _ = resolved(micro_model, corpus, tmp_path, "--window", "8", "--target", "64", "--eval-every", "1",
                       "--eval-data", str(tmp_path / "held.txt"))
    assert opts.eval_lengths == [16, 64]
    assert Path(opts.out).exists() is False
