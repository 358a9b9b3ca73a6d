"""The retrieval miniature's parts (issue 25): the "mini" preset, repro_data.py's documents, repro_diag.py's rope
swaps and head scores, and the committed base's checksums."""
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from data import Tokenizer, default_tokenizer
from evaluate import QUESTION
from hf import PRESETS, args_from_config, from_pretrained, save_pretrained
from model import Transformer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import repro_data  # noqa: E402
import repro_diag  # noqa: E402


def test_mini_preset_has_tinys_sizes_and_llamas_head_dim():
    mini, tiny = args_from_config(PRESETS["mini"]), args_from_config(PRESETS["tiny"])
    assert mini.head_dim == 64 and tiny.head_dim == 32  # 32 RoPE pairs, not 16
    with torch.device("meta"):
        sizes = [sum(p.numel() for p in Transformer(a).parameters()) for a in (mini, tiny)]
    assert sizes[0] == sizes[1]  # same matrices: q 256 x 256, k and v 256 x 128


@pytest.mark.slow
def test_mini_preset_trains_and_exports(tmp_path, one_thread):
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "train.py", "--preset", "mini", "--steps", "3", "--batch-size", "2",
                          "--window", "32", "--max-documents", "20", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    config = json.loads((out / "final" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["hidden_size"]) == (4, 2, 256)
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    model = from_pretrained(out / "final", dtype=torch.float32)
    assert model.args.head_dim == 64


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(default_tokenizer())


@given(seed=st.integers(0, 2**31 - 1), varied=st.booleans(), window=st.sampled_from([128, 512]))
def test_passkey_document_holds_prompt_and_answer_in_the_window(tokenizer, seed, varied, window):
    text = repro_data.passkey_document(tokenizer, np.random.default_rng(seed), window, varied)
    ids = tokenizer.encode(text, bos=True, eos=True)
    assert len(ids) >= window + 2  # longer than one training window: train.py keeps it
    question = text.rindex("? The ")  # the answer follows the question's last words
    name = text[text.rindex("What is the ", 0, question) + len("What is the "):question]
    key = text[question:].split(" is ", 1)[1].split(".")[0]
    assert key.isdigit() and len(key) == 5
    assert f"the {name} is {key}" in text.lower() or f"{name} is {key}" in text  # the key line names the same
    prompt_and_answer = text[:question + len(f"? The {name} is {key}")]
    assert len(tokenizer.encode(prompt_and_answer, bos=True)) <= window + 1
    if not varied:  # evaluate.py's wording exactly
        assert QUESTION in text and text.count(key) == 3 and name == "pass key"
    else:  # distractors are other names with other numbers, never after the question
        lines = text[:question].splitlines()
        for line in lines:
            if line.startswith("The ") and " is " in line and name not in line and line.endswith("."):
                assert line[:-1].rsplit(" ", 1)[1] != key


@given(seed=st.integers(0, 2**31 - 1), n_lines=st.integers(0, 6))
def test_copy_document_writes_one_random_span_twice(seed, n_lines):
    piece = "".join(f"line {i}\n" for i in range(n_lines))
    text = repro_data.copy_document(np.random.default_rng(seed), piece)
    extra = [line for line in text.splitlines(keepends=True) if not line.startswith("line ")]
    assert len(extra) == 2 and extra[0] == extra[1] and 4 <= len(extra[0].split()) <= 16
    assert [line for line in text.splitlines(keepends=True) if line.startswith("line ")] == \
        piece.splitlines(keepends=True)  # the piece itself, in order


@pytest.mark.slow
def test_data_mix_counts_and_refusals(tmp_path):
    out = tmp_path / "d"
    args = ["benchmarks/repro_data.py", "--out", str(out), "--window", "128", "--target", "256", "--max-bytes",
            "200000", "--passkey-fraction", "0.5", "--varied-keys", "0.5", "--copy-fraction", "0.2",
            "--finetune-passkey-fraction", "0.2", "--finetune-long-fraction", "0.2"]
    run = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    tok = Tokenizer(default_tokenizer())
    finetune = [json.loads(line)["text"] for line in (out / "finetune.jsonl").read_text().splitlines()]
    keys = [t for t in finetune if t.startswith(repro_data.TASK)]
    long = [t for t in keys if len(tok.encode(t, bos=True, eos=True)) >= 256 + 2]
    code = len(finetune) - len(keys)
    assert len(long) == round(code * 0.2 / 0.6) and len(keys) - len(long) == round(code * 0.2 / 0.6)
    pretrain = [json.loads(line)["text"] for line in (out / "pretrain.jsonl").read_text().splitlines()]
    varied = [t for t in pretrain if t.startswith(repro_data.TASK) and QUESTION not in t]
    assert 0 < len(varied) < sum(t.startswith(repro_data.TASK) for t in pretrain)
    bad = subprocess.run([sys.executable, *args[:-4], "--finetune-passkey-fraction", "0.6",
                          "--finetune-long-fraction", "0.5", "--out", str(tmp_path / "e")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "must be < 1" in bad.stderr and not (tmp_path / "e").exists()
    short = subprocess.run([sys.executable, args[0], "--out", str(tmp_path / "s"), "--window", "40", "--target", "256",
                            "--max-bytes", "200000"], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert short.returncode == 2 and short.stderr.strip().splitlines()[-1].endswith(
        "window 40 is shorter than the bare passkey prompt and its answer") and not (tmp_path / "s").exists()


def test_diag_rope_swaps(micro_model):
    model = from_pretrained(micro_model, dtype=torch.float32)
    pairs, theta = model.args.head_dim // 2, model.args.rope["rope_theta"]
    plain = 1.0 / theta ** (torch.arange(0, 2 * pairs, 2, dtype=torch.float64) / (2 * pairs))
    repro_diag.set_rope(model, None, 16)
    assert torch.equal(model.rotary_emb.inv_freq, plain)
    repro_diag.set_rope(model, {"rope_type": "linear", "factor": 8}, 16, keep=3)  # pairs 0..2 keep theta_j
    assert torch.allclose(model.rotary_emb.inv_freq, torch.cat([plain[:3], plain[3:] / 8]), rtol=1e-12)
    repro_diag.set_rope(model, {"rope_type": "linear", "factor": 8}, 16, keep=pairs)
    assert torch.allclose(model.rotary_emb.inv_freq, plain, rtol=1e-12)
    repro_diag.set_rope(model, {"rope_type": "yarn-revised", "factor": 8, "beta_fast": 4, "beta_slow": 1}, 16)
    assert model.rotary_emb.rope["beta_fast"] == 4 and model.rotary_emb.attention_scaling > 1
    labels = [label for label, *_ in repro_diag.scalings(8, pairs)]
    assert labels[:5] == ["none", "linear x2", "linear x4", "linear x8", "ntk x8"] and len(labels) == 8 + pairs


def test_head_scores_are_the_attention_the_model_computes(micro_model):
    """attention_probs applied to v gives each layer's attention output (the o_proj input) exactly, so the
    previous-token and induction scores read the weights model.py uses (its q, k, RoPE and GQA); the scores are
    those weights at (t, t - 1) and (t, t - span + 1), written out here with loops."""
    model = from_pretrained(micro_model, dtype=torch.float64).eval()
    span, batch = 5, 3
    inputs, outputs = [], []
    hooks = [layer.self_attn.register_forward_pre_hook(lambda m, a: inputs.append(a[:3])) for layer in
             model.model.layers] + [layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: outputs.append(a[0]))
                                    for layer in model.model.layers]
    prev, induction = repro_diag.head_scores(model, model.args.vocab_size, span=span, batch=batch, bos=1)
    for hook in hooks:
        hook.remove()
    n = len(model.model.layers)
    torch.set_grad_enabled(False)  # the captured inputs are inference tensors
    assert prev.shape == induction.shape == (n, model.args.n_heads)
    for i, layer in enumerate(model.model.layers):
        a, (x, cos, sin), out = layer.self_attn, inputs[i], outputs[i]  # the first forward is head_scores' own
        probs = repro_diag.attention_probs(a, x, cos, sin)
        B, H, T, _ = probs.shape
        v = a.v_proj(x).view(B, T, a.n_kv_heads, a.head_dim).transpose(1, 2)
        group = H // a.n_kv_heads
        ref = torch.stack([probs[:, h] @ v[:, h // group] for h in range(H)], 1)  # [B, H, T, D]
        assert torch.allclose(ref.transpose(1, 2).reshape(B, T, -1), out, atol=1e-12)
        for h in range(H):
            want_prev = sum(float(probs[b, h, t, t - 1]) for b in range(B) for t in range(2, T)) / (B * (T - 2))
            want_ind = sum(float(probs[b, h, t, t - span + 1]) for b in range(B) for t in range(1 + span, T)) / (
                B * (T - 1 - span))
            assert math.isclose(float(prev[i, h]), want_prev, rel_tol=1e-9)
            assert math.isclose(float(induction[i, h]), want_ind, rel_tol=1e-9)
    torch.set_grad_enabled(True)


def test_committed_base_matches_its_checksums_and_command():
    """benchmarks/repro-base: what reproduce.sh copies in instead of pre-training, only if these hold."""
    base = ROOT / "benchmarks" / "repro-base"
    for line in (base / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((base / name.strip()).read_bytes()).hexdigest() == digest, name
    command = (base / "command.txt").read_text().strip()
    script = (ROOT / "benchmarks" / "reproduce.sh").read_text()
    preset = script.split("PRESET=")[1].split()[0]
    assert command.startswith(f"python train.py --preset {preset} --data runs/repro/data/pretrain.jsonl")
    settings = json.loads((base / "settings.json").read_text())["options"]
    assert settings["preset"] == preset and settings["steps"] == int(script.split("PRE_STEPS=")[2].split()[0])
    config = json.loads((base / "final" / "config.json").read_text())
    assert config["num_attention_heads"] == PRESETS[preset]["num_attention_heads"]


def test_beta_fast_reaches_the_trained_and_exported_rope(corpus, tmp_path, capsys, one_thread):
    """--beta-fast 4 (the miniature-tuned YaRN row): the run trains on, and exports, revised YaRN with beta_fast 4;
    with a rope that has no ramp it is one line, exit 2, nothing written. L_c = 128, so that 4 and YaRN's 32 end
    the ramp at different pairs (at 16 both end it at pair 0)."""
    import contextlib
    import io

    import distributed
    import options
    import train
    from conftest import MICRO
    from rope import compute_inv_freq, rope_parameters

    base = tmp_path / "base"
    model = Transformer(args_from_config(dict(MICRO, max_position_embeddings=128)))
    model.init_weights(seed=0)
    save_pretrained(model, base)
    run = ["--model", str(base), "--data", str(corpus), "--window", "128", "--target", "1024", "--steps", "1",
           "--batch-size", "2", "--lr", "1e-3", "--warmup", "0"]
    with pytest.raises(SystemExit) as exit_:
        train.main([*run, "--rope", "linear", "--beta-fast", "4", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "--beta-fast 4.0 needs --rope yarn" in err
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()), distributed.distributed() as device:
        train.train(options.parse_args([*run, "--rope", "yarn-revised", "--beta-fast", "4", "--out", str(out)]), device)
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["rope_scaling"]["beta_fast"] == 4 and config["rope_scaling"]["rope_type"] == "yarn-revised"
    model = from_pretrained(out / "final", dtype=torch.float32)
    want = {"rope_theta": model.args.rope["rope_theta"], "max_position_embeddings": 128, "rope_scaling": {
        "rope_type": "yarn-revised", "factor": 8, "original_max_position_embeddings": 128, "beta_fast": 4,
        "beta_slow": 1}}
    assert torch.equal(model.rotary_emb.inv_freq, compute_inv_freq(rope_parameters(want), model.args.head_dim)[0])
    default = dict(want, rope_scaling={k: v for k, v in want["rope_scaling"].items() if k != "beta_fast"})
    assert not torch.equal(model.rotary_emb.inv_freq,
                           compute_inv_freq(rope_parameters(default), model.args.head_dim)[0])  # 4 is not 32


def test_report_wall_time_counts_side_by_side_evaluations_once():
    """repro_report.wall: steps in turn, but a model's ppl and passkey ran at once (the longer counts); the
    fine-tune called "pose" and the evaluations of "pose" are different steps."""
    import repro_report

    times = {"data": "5", "pose": "10", "pose.ppl": "3", "pose.passkey": "4", "full": "7", "full.ppl": "6",
             "full.passkey": "2"}
    assert repro_report.wall(times) == 5 + 10 + 4 + 7 + 6


@pytest.mark.slow
@pytest.mark.parametrize("flag, value, says", [("--every", "0", "--every must be >= 1, got 0"),
                                               ("--factor", "nan", "--factor must be a finite number >= 1"),
                                               ("--model", "missing", "--model missing: ")])
def test_diag_refuses_bad_values_in_one_line(micro_model, tmp_path, flag, value, says):
    args = {"--model": str(micro_model), "--window": "16", "--factor": "2", "--every": "1"}
    args[flag] = value
    out = tmp_path / "diag.json"
    run = subprocess.run([sys.executable, "benchmarks/repro_diag.py", *[x for kv in args.items() for x in kv],
                          "--trials", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and says in run.stderr.strip().splitlines()[-1], run.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
