"""Bad input, second round (issue 28): each rule is a bad value given to the real entry point (train.main,
evaluate.main, data.main, load_config, from_pretrained), which must answer with one line naming the file / key /
flag and value, exit 2, and leave a fresh --out absent. Grouped as the issue: validate first, config types,
non-finite numbers, one rank's error under torchrun, files read once, resources and signals. Issue 35 adds: a run
folder runs no code (malicious checkpoint pickles), what issue 28 left open (a full disk on one rank, a damaged
latest checkpoint), the last bad inputs (--device, plot files, token files) and the export's tokenizer files.

    python -m pytest tests/test_bad_input.py -x -q

Everything is made in the test: a micro LLaMA written with save_pretrained, a small sentencepiece model, token
files. In-process calls (SystemExit and capsys) wherever possible; the torchrun case starts a subprocess (slow).
"""
import contextlib
import io
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import data
import evaluate
import train
from hf import args_from_config, check_checkpoint, from_pretrained, load_config
from conftest import MICRO

ROOT = Path(__file__).resolve().parent.parent
RUN = ["--window", "16", "--target", "64", "--steps", "2", "--batch-size", "2", "--micro-batch-size", "2",
       "--lr", "1e-3", "--warmup", "1"]
WORDS = "the model reads long documents and keeps 12345 positions apart while we train it on text".split()
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def texts(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(40, 80))) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(3, 4096, size=rng.integers(30, 80)), 2) for _ in range(12)]
    path = tmp_path_factory.mktemp("corpus") / "ids.npy"
    np.save(path, np.concatenate(docs).astype(np.int32))
    return path


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    """A folder with a 400-piece sentencepiece tokenizer.model (LLaMA's ids: unk 0, BOS 1, EOS 2)."""
    import sentencepiece as spm
    path = tmp_path_factory.mktemp("spm")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts(200)), model_writer=proto, vocab_size=400,
                                   model_type="bpe", byte_fallback=True, minloglevel=2)
    (path / "tokenizer.model").write_bytes(proto.getvalue())
    return path


def copy_model(src: Path, dst: Path, config=None, tensors=None) -> Path:
    """A copy of a checkpoint folder with config.json keys replaced and / or its tensors replaced."""
    dst.mkdir(parents=True)
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
    weights = load_file(src / "model.safetensors")
    save_file(tensors(weights) if tensors else weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def exits(main, argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().err.strip()


def one_line(code, err, *needles):
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err


# ---------------------------------------------------------------- 1. validate first, write after

FLAGS = [("--lr", "inf"), ("--lr", "nan"), ("--lr", "0"), ("--lr", "-1e-3"), ("--weight-decay", "inf"),
         ("--weight-decay", "nan"), ("--weight-decay", "-0.1"), ("--grad-clip", "nan"), ("--grad-clip", "inf"),
         ("--grad-clip", "-1"), ("--seed", "-1"), ("--seed", str(2**63)), ("--warmup", "-1"),
         ("--max-documents", "0"), ("--max-documents", "-5"), ("--target", str(2**31)), ("--steps", "0"),
         ("--chunks", "0"), ("--keep-checkpoints", "0"), ("--save-every", "-1")]


FLOATS = ("--lr", "--weight-decay", "--grad-clip")


@pytest.mark.parametrize("flag,value", FLAGS, ids=[f"{f} {v}" for f, v in FLAGS])
def test_every_numeric_train_flag_is_finite_and_in_range_before_anything_is_written(micro_model, corpus, tmp_path,
                                                                                    capsys, flag, value):
    out = tmp_path / "out"
    argv = ["--model", str(micro_model), "--data", str(corpus), "--out", str(out), *RUN, f"{flag}={value}"]
    code, err = exits(train.main, argv, capsys)
    one_line(code, err, f"error: {flag} must be", f", got {float(value) if flag in FLOATS else value}")
    assert not out.exists()


def test_a_combination_only_the_sampler_would_notice_at_step_1_is_refused_before_anything_is_written(
        micro_model, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = exits(train.main, ["--model", str(micro_model), "--data", str(corpus), "--out", str(out), *RUN,
                                   "--content", "released", "--chunks", "3"], capsys)
    one_line(code, err, "--content released is the authors' two-chunk rule: --chunks must be 2, got 3")
    assert not out.exists()


def shape_mismatch(w):
    return {**w, "model.layers.0.mlp.up_proj.weight": w["model.layers.0.mlp.up_proj.weight"][:100]}


HEADERS = {  # what is done to the checkpoint's tensors -> what the one line says
    "a shape the config does not imply": (shape_mismatch, "'model.layers.0.mlp.up_proj.weight' has shape (100, 64)"),
    "an integer weight": (lambda w: {**w, "model.norm.weight": w["model.norm.weight"].to(torch.int32)},
                          "'model.norm.weight' is I32, not a float weight"),
    "a missing weight": (lambda w: {k: v for k, v in w.items() if k != "model.layers.1.self_attn.o_proj.weight"},
                         "'model.layers.1.self_attn.o_proj.weight' missing from the checkpoint"),
    "a tensor of another model": (lambda w: {**w, "model.layers.9.mlp.up_proj.weight": torch.zeros(2)},
                                  "unexpected tensor 'model.layers.9.mlp.up_proj.weight'"),
}


@pytest.mark.parametrize("case", HEADERS)
def test_the_checkpoints_headers_are_checked_against_its_config_before_anything_is_written(micro_model, corpus,
                                                                                          tmp_path, capsys, case):
    change, needle = HEADERS[case]
    model = copy_model(micro_model, tmp_path / "model", tensors=change)
    out = tmp_path / "out"
    code, err = exits(train.main, ["--model", str(model), "--data", str(corpus), "--out", str(out), *RUN], capsys)
    one_line(code, err, str(model / "model.safetensors") if "missing" not in case else str(model), needle)
    assert not out.exists()


def test_a_header_whose_bytes_disagree_with_its_shape_is_refused_without_reading_the_data(micro_model, tmp_path):
    model = copy_model(micro_model, tmp_path / "model")
    file = model / "model.safetensors"
    raw = file.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["model.norm.weight"]["shape"] = [32]  # 64 floats of data, a shape of 32
    text = json.dumps(header, separators=(",", ":")).encode().ljust(n)  # the same length: the offsets stay valid
    file.write_bytes(raw[:8] + text + raw[8 + n:])
    with pytest.raises(ValueError, match=r"tensor 'model.norm.weight' has 256 bytes, its F32 shape \[32\] needs 128"):
        check_checkpoint(model, args_from_config(MICRO))


def test_a_tokenizer_with_ids_past_the_models_vocabulary_is_refused_before_anything_is_written(micro_model, spm_model,
                                                                                              tmp_path, capsys):
    model = copy_model(micro_model, tmp_path / "model", config={"vocab_size": 300},
                       tensors=lambda w: {k: v[:300] if k in ("model.embed_tokens.weight", "lm_head.weight") else v
                                          for k, v in w.items()})
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(8)))
    out = tmp_path / "out"
    argv = ["--model", str(model), "--data", str(tmp_path / "t.jsonl"), "--tokenizer",
            str(spm_model / "tokenizer.model"), "--out", str(out), *RUN]
    code, err = exits(train.main, argv, capsys)
    one_line(code, err, "tokenizer.model: ids up to 399", "vocab_size is 300")
    assert not out.exists()


def test_negative_token_ids_of_a_pre_tokenised_file_are_refused(micro_model, tmp_path, capsys):
    ids = np.concatenate([np.arange(3, 40), [2], np.arange(3, 40), [-7, 5, 2]]).astype(np.int32)
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "out"
    code, err = exits(train.main, ["--model", str(micro_model), "--data", str(tmp_path / "ids.npy"), "--out", str(out),
                                   *RUN], capsys)
    one_line(code, err, "token id -7 outside the model's vocabulary 0 .. 4095")
    assert not out.exists()
    code, err = exits(evaluate.main, ["ppl", "--model", str(micro_model), "--data", str(tmp_path / "ids.npy"),
                                      "--lengths", "16", "--min-tokens", "2", "--out", str(out)], capsys)
    one_line(code, err, "token id -7 outside")
    assert not out.exists()


@pytest.mark.parametrize("command", ["ppl", "passkey", "ruler"])
def test_evaluate_checks_out_and_plot_before_loading_the_model(micro_model, tmp_path, capsys, command):
    (tmp_path / "folder.json").mkdir()
    for flag in ("--out", "--plot"):  # an existing folder where the file goes
        code, err = exits(evaluate.main, [command, "--model", str(micro_model), flag, str(tmp_path / "folder.json")],
                          capsys)
        one_line(code, err, f"{flag} {tmp_path / 'folder.json'}: is a folder")
    (tmp_path / "a_file").write_text("")
    code, err = exits(evaluate.main, [command, "--model", str(micro_model), "--out",
                                      str(tmp_path / "a_file" / "r.json")], capsys)
    one_line(code, err, f"{tmp_path / 'a_file'} is not a folder")
    code, err = exits(evaluate.main, ["plot", str(tmp_path / "r.json"), "--out", str(tmp_path / "folder.json")], capsys)
    one_line(code, err, "is a folder")


def test_evaluate_refuses_a_non_finite_factor(micro_model, tmp_path, capsys):
    for value in ("nan", "inf", "0.5"):
        code, err = exits(evaluate.main, ["ppl", "--model", str(micro_model), "--rope", "linear", "--factor", value,
                                          "--out", str(tmp_path / "r.json")], capsys)
        one_line(code, err, "--factor must be a finite number >= 1", value)
    assert not (tmp_path / "r.json").exists()


def test_data_py_checks_out_before_reading_anything(spm_model, tmp_path, capsys):
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "a b c"}) + "\n")
    (tmp_path / "dir.npy").mkdir()
    base = ["--data", str(tmp_path / "t.jsonl"), "--tokenizer", str(tmp_path / "no-tokenizer-here")]
    code, err = exits(data.main, [*base, "--out", str(tmp_path / "dir.npy")], capsys)
    one_line(code, err, f"--out {tmp_path / 'dir.npy'}: is a folder")
    code, err = exits(data.main, [*base, "--out", str(tmp_path / "missing" / "t.npy")], capsys)
    one_line(code, err, f"folder {tmp_path / 'missing'} does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.npy", "t.jsonl"]


# ---------------------------------------------------------------- 2. config.json and tokenizer files: types, ranges

NAN = float("nan")
CONFIGS = {  # config.json keys -> the key the one line names
    "rope_scaling a list": ({"rope_scaling": [1, 2]}, "'rope_scaling' must be an object"),
    "factor a string": ({"rope_scaling": {"type": "linear", "factor": "2"}}, "'factor' must be a finite number"),
    "factor NaN": ({"rope_scaling": {"type": "linear", "factor": NAN}}, "'factor' must be a finite number >= 1"),
    "factor infinite": ({"rope_scaling": {"type": "linear", "factor": math.inf}}, "'factor'"),
    "factor a 400-digit integer": ({"rope_scaling": {"type": "linear", "factor": 10**400}}, "'factor'"),
    "rope_type a list": ({"rope_scaling": {"rope_type": ["linear"], "factor": 2}}, "'rope_type' must be a string"),
    "negative rope_theta": ({"rope_theta": -1e4, "rope_parameters": {"rope_type": "default", "rope_theta": -1e4}},
                            "'rope_theta' must be a finite number > 1"),
    "rope_theta a string": ({"rope_parameters": {"rope_type": "default", "rope_theta": "big"}}, "'rope_theta'"),
    "yarn beta_fast a string": ({"rope_scaling": {"type": "yarn", "factor": 2, "beta_fast": "x"}}, "'beta_fast'"),
    "yarn truncate a string": ({"rope_scaling": {"type": "yarn", "factor": 2, "truncate": "no"}}, "'truncate'"),
    "llama3 equal band factors": ({"rope_scaling": {"type": "llama3", "factor": 8, "low_freq_factor": 4,
                                                    "high_freq_factor": 4}}, "high_freq_factor 4.0 must exceed"),
    "partial_rotary_factor a string": ({"partial_rotary_factor": "half"}, "'partial_rotary_factor'"),
    "original window a float": ({"rope_scaling": {"type": "linear", "factor": 2,
                                                  "original_max_position_embeddings": 1.5}},
                                "'original_max_position_embeddings' must be an integer"),
    "negative rms_norm_eps": ({"rms_norm_eps": -1e-6}, "'rms_norm_eps' must be a finite number > 0"),
    "rms_norm_eps a string": ({"rms_norm_eps": "1e-6"}, "'rms_norm_eps'"),
    "hidden_size a string": ({"hidden_size": "64"}, "'hidden_size' must be an integer"),
    "hidden_size a float": ({"hidden_size": 64.0}, "'hidden_size'"),
    "vocab_size past 2^31": ({"vocab_size": 2**40}, "'vocab_size' must be an integer in 1 .. 2147483647"),
    "max_position_embeddings 1e40": ({"max_position_embeddings": 1e40}, "'max_position_embeddings'"),
    "tie_word_embeddings a string": ({"tie_word_embeddings": "yes"}, "'tie_word_embeddings' must be true or false"),
    "eos_token_id a string": ({"eos_token_id": "2"}, "'eos_token_id' must be a token id"),
    "bos_token_id negative": ({"bos_token_id": -1}, "'bos_token_id'"),
    "eos_token_id a list with null": ({"eos_token_id": [2, None]}, "'eos_token_id'"),
    "sliding_window 0": ({"model_type": "mistral", "sliding_window": 0}, "'sliding_window'"),
    "use_sliding_window a string": ({"use_sliding_window": "true"}, "'use_sliding_window'"),
    # issue 35: a null transformers fails on is no default (section 11 has every family); a 0 is no absent key
    "rms_norm_eps null": ({"rms_norm_eps": None}, "'rms_norm_eps' must be a finite number > 0, got null"),
    "rope_theta null, no rope block": ({"rope_theta": None, "rope_parameters": None},
                                       "'rope_theta' must be a finite number > 1, got null"),
    "rope_theta 0": ({"rope_theta": 0, "rope_parameters": None}, "'rope_theta' must be a finite number > 1, got 0"),
    "rope_parameters' rope_theta 0": ({"rope_parameters": {"rope_type": "default", "rope_theta": 0}},
                                      "'rope_theta' must be a finite number > 1, got 0"),
    "original window 0": ({"rope_scaling": {"type": "linear", "factor": 2, "original_max_position_embeddings": 0}},
                          "'original_max_position_embeddings' must be an integer in 1 .. 2147483647, got 0"),
    "rope_theta disagreeing with rope_parameters'": (
        {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}},
        "config keys disagree on the rope base: rope_theta 10000 and rope_parameters' rope_theta 500000 "
        "(transformers 4 reads 10000, transformers 5 500000): make them equal"),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_every_config_key_read_is_checked_for_type_and_range_naming_file_key_and_value(micro_model, tmp_path, capsys,
                                                                                       case):
    keys, needle = CONFIGS[case]
    model = copy_model(micro_model, tmp_path / "model", config=keys)
    with pytest.raises(ValueError) as e:
        load_config(model)
    assert str(e.value).startswith(f"{model / 'config.json'}: config key") or needle.startswith("high"), e.value
    assert needle in str(e.value)
    code, err = exits(evaluate.main, ["ppl", "--model", str(model), "--out", str(tmp_path / "r.json")], capsys)
    one_line(code, err, str(model / "config.json"), needle)
    code, err = exits(train.main, ["--model", str(model), "--data", str(tmp_path), "--out", str(tmp_path / "o")],
                      capsys)
    one_line(code, err, needle)
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "o").exists()


INDEXES = {  # model.safetensors.index.json -> what the line says
    "weight_map a list": ({"weight_map": ["model.safetensors"]}, "an empty or non-object weight_map"),
    "a shard name a number": ({"weight_map": {"model.norm.weight": 5}}, "shard 5 is not a file name"),
    "a shard outside the folder": ({"weight_map": {"model.norm.weight": "../model.safetensors"}},
                                   "shard '../model.safetensors' is not a file name"),
    "no weight_map": ({"metadata": {}}, "'weight_map'"),
}


@pytest.mark.parametrize("case", INDEXES)
def test_a_malformed_safetensors_index_is_one_line_naming_it(micro_model, tmp_path, capsys, case):
    index, needle = INDEXES[case]
    model = copy_model(micro_model, tmp_path / "model")
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    code, err = exits(evaluate.main, ["ppl", "--model", str(model), "--out", str(tmp_path / "r.json")], capsys)
    one_line(code, err, str(model / "model.safetensors.index.json"), needle)
    assert not (tmp_path / "r.json").exists()


TOKENIZER_FILES = {  # a file beside tokenizer.model -> what the line names
    "bos_token a number": ("tokenizer_config.json", {"bos_token": 5}, "bos_token must be a string"),
    "eos_token a list": ("tokenizer_config.json", {"eos_token": ["</s>"]}, "eos_token must be a string"),
    "add_bos_token a string": ("tokenizer_config.json", {"bos_token": "<s>", "add_bos_token": "yes"},
                               "add_bos_token true or false"),
    # BOS never comes from config.json (the tokenizer's convention, issue 24); EOS falls back on it
    "config.json's eos_token_id a string": ("config.json", {"eos_token_id": "one"}, "eos_token_id must be a token id"),
}


@pytest.mark.parametrize("case", TOKENIZER_FILES)
def test_tokenizer_config_and_config_ids_are_checked_naming_the_file(spm_model, tmp_path, case):
    name, content, needle = TOKENIZER_FILES[case]
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes((spm_model / "tokenizer.model").read_bytes())
    (folder / name).write_text(json.dumps(content))
    with pytest.raises(ValueError) as e:
        data.Tokenizer(folder)
    assert str(e.value).startswith(f"{folder / name}: ") and needle in str(e.value), e.value


# ---------------------------------------------------------------- 3. non-finite numbers are never a result

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_weight_is_refused_when_the_checkpoint_loads_naming_the_tensor(micro_model, tmp_path, capsys,
                                                                                  value):
    def poison(w):
        bad = w["model.layers.1.mlp.down_proj.weight"].clone()
        bad[3, 5] = value
        return {**w, "model.layers.1.mlp.down_proj.weight": bad}

    model = copy_model(micro_model, tmp_path / "model", tensors=poison)
    with pytest.raises(ValueError, match=r"tensor 'model.layers.1.mlp.down_proj.weight' holds NaN or infinite"):
        from_pretrained(model)
    out = tmp_path / "r.json"
    code, err = exits(evaluate.main, ["ppl", "--model", str(model), "--lengths", "16", "--out", str(out)], capsys)
    one_line(code, err, "'model.layers.1.mlp.down_proj.weight' holds NaN or infinite values")
    assert not out.exists()


def test_evaluate_never_writes_a_nan_perplexity_as_a_result(micro_model, corpus, tmp_path, capsys, monkeypatch):
    """Finite weights can still compute a NaN (an fp16 overflow): the run fails rather than report it."""
    monkeypatch.setattr(evaluate, "window_nll", lambda *args: (math.nan, 5))
    out = tmp_path / "r.json"
    code, err = exits(evaluate.main, ["ppl", "--model", str(micro_model), "--data", str(corpus), "--lengths", "16",
                                      "--docs", "2", "--out", str(out)], capsys)
    one_line(code, err.splitlines()[-1], "ppl at L=16: the model's loss is nan")  # after the progress lines
    assert not out.exists()


# ---------------------------------------------------------------- 4. one rank's error under torchrun

@pytest.mark.slow
def test_a_bad_record_only_rank_1_reads_is_one_line_of_ours_naming_file_and_line(spm_model, tmp_path):
    """Rank r parses records r, r + 2, ...: line 2 is rank 1's alone. Both ranks agree on the failure
    (distributed.agreed), rank 0 prints rank 1's line, every rank exits 2; torchrun then adds its own report."""
    lines = [json.dumps({"text": t}) for t in texts(12, seed=3)]
    lines[1] = json.dumps({"body": "no text field"})
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train.py"), "--data", str(tmp_path / "c.jsonl"), "--tokenizer",
           str(spm_model / "tokenizer.model"), "--out", str(out), "--window", "16", "--target", "64", "--steps", "2",
           "--batch-size", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,  # a hang guard
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(ours) == 1, done.stderr[-3000:]
    assert ours[0] == f"error: {tmp_path / 'c.jsonl'}:2: not a JSON object with a text 'text' field (pass --text-field)"
    assert "Connection reset" not in done.stderr and f'File "{ROOT / "train.py"}"' not in done.stderr
    assert "exitcode  : 2" in done.stderr  # torchrun's own report: the ranks exited 2
    assert not out.exists()


# ---------------------------------------------------------------- 5. files read once

def test_each_file_is_read_once_through_symlinks_loops_and_repeats_and_the_log_says_so(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    (folder / "b.jsonl").symlink_to(folder / "a.jsonl")  # a symlink beside its target
    (folder / "loop").symlink_to(folder)                  # a folder loop
    said = []
    files = data.find_files([str(folder / "**" / "*.jsonl"), str(folder / "a.jsonl"), str(folder)], say=said.append)
    assert files == [folder / "a.jsonl"]
    assert len(said) == 1 and said[0].startswith("--data: ") and "dropped" in said[0], said
    dropped = int(said[0].split()[1])
    assert dropped >= 3  # b.jsonl, the second a.jsonl, the folder; the loop adds its copies
    assert data.find_files([str(folder / "a.jsonl")], say=said.append) == [folder / "a.jsonl"] and len(said) == 1


# ---------------------------------------------------------------- 6. resources and signals

def test_data_py_workers_are_capped_at_the_cpus_and_the_batches_with_a_note(spm_model, tmp_path, capsys):
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(5)))
    out = tmp_path / "t.npy"
    result = data.main(["--data", str(tmp_path / "t.jsonl"), "--tokenizer", str(spm_model), "--out", str(out),
                        "--workers", "100000"])
    stdout = capsys.readouterr().out
    cpus = len(os.sched_getaffinity(0))
    assert f"--workers 100000 capped at {cpus}, the CPUs" in stdout
    assert cpus == 1 or f"--workers {cpus} capped at 1: the corpus has 1 batches" in stdout  # 5 short documents
    assert result["documents"] == 5 and np.load(out).size == result["tokens"]
    assert multiprocessing.active_children() == []


@pytest.mark.slow  # --workers 2: spawned interpreters
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_data_py_its_workers_and_removes_the_temporary_file(spm_model, tmp_path, capsys, monkeypatch,
                                                                           signum):
    """The signal arrives after the first batch is written (the process sends it to itself, so no timing):
    two worker processes are running; they end, the temporary file goes, one line, exit 128 + signum."""
    monkeypatch.setattr(data, "BATCH_CHARS", 500)
    encoded = data._encoded

    def signalled(*args, **kwargs):
        for i, item in enumerate(encoded(*args, **kwargs)):
            if i == 1:
                assert len(multiprocessing.active_children()) == 2  # the pool is up
                os.kill(os.getpid(), signum)
            yield item

    monkeypatch.setattr(data, "_encoded", signalled)
    before = signal.getsignal(signum)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(40)))
    out = tmp_path / "t.npy"
    code, err = exits(data.main, ["--data", str(tmp_path / "t.jsonl"), "--tokenizer", str(spm_model), "--out",
                                  str(out), "--workers", "2"], capsys)
    assert code == 128 + signum and err == f"stopped by {signal.Signals(signum).name}: workers ended, nothing " \
                                           f"written to {out}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]  # no .tmp file, no output
    assert multiprocessing.active_children() == []
    assert signal.getsignal(signum) == before  # pretokenise's handler is gone again


# ---------------------------------------------------------------- the run folder: written last, saved whole

import errno  # noqa: E402
import shutil  # noqa: E402

import checkpoints  # noqa: E402
import safe_dcp  # noqa: E402


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(micro_model, corpus, tmp_path_factory):
    """A finished 2-step run (checkpoints at steps 1 and 2, kept both): (out, argv)."""
    out = tmp_path_factory.mktemp("run") / "out"
    argv = ["--model", str(micro_model), "--data", str(corpus), "--out", str(out), *RUN, "--save-every", "1"]
    train.main(argv)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    return out, argv


def run_copy(finished, tmp_path) -> tuple[Path, list[str]]:
    out, argv = finished
    shutil.copytree(out, tmp_path / "out")
    argv = list(argv)
    argv[argv.index("--out") + 1] = str(tmp_path / "out")
    return tmp_path / "out", argv


def test_a_non_finite_weight_found_while_loading_leaves_a_fresh_out_absent(micro_model, corpus, tmp_path, capsys):
    def poison(w):
        return {**w, "model.norm.weight": torch.full_like(w["model.norm.weight"], math.nan)}

    model = copy_model(micro_model, tmp_path / "model", tensors=poison)
    out = tmp_path / "out"
    code, err = exits(train.main, ["--model", str(model), "--data", str(corpus), "--out", str(out), *RUN], capsys)
    one_line(code, err, "tensor 'model.norm.weight' holds NaN or infinite values")
    assert not out.exists()


DAMAGE = {  # what is done to the newest checkpoint -> what the line says
    ".metadata missing": (lambda c: (c / ".metadata").unlink(), ".metadata missing or unreadable"),
    ".metadata truncated": (lambda c: (c / ".metadata").write_bytes((c / ".metadata").read_bytes()[:40]),
                            ".metadata missing or unreadable"),
    "a .distcp missing": (lambda c: next(c.glob("*.distcp")).unlink(), ".distcp missing"),
    "a .distcp truncated": (lambda c: (lambda f: f.write_bytes(f.read_bytes()[:100]))(next(c.glob("*.distcp"))),
                            "truncated (100 bytes"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_checkpoint_is_one_line_naming_it_and_the_newest_intact_one_and_resume_touches_nothing(
        finished, tmp_path, capsys, case):
    out, argv = run_copy(finished, tmp_path)
    damage, needle = DAMAGE[case]
    damage(out / "checkpoints" / "step_000002")
    before = snapshot(out)
    code, err = exits(train.main, [*argv, "--steps", "3", "--resume"], capsys)
    one_line(code, err, f"{out / 'checkpoints' / 'step_000002'}: damaged checkpoint", needle,
             f"newest intact one: {out / 'checkpoints' / 'step_000001'}")
    assert snapshot(out) == before  # settings.json and metrics.jsonl as they were
    code, err = exits(train.main, ["--export-only", "--out", str(out)], capsys)
    one_line(code, err, "damaged checkpoint", needle)
    assert snapshot(out) == before


def poisoned_step_2(monkeypatch):
    """train_step as it is, but step 2 leaves a NaN in one weight with a finite loss (what an infinite gradient
    clipped to NaN does): only the weights check can catch it before the save."""
    real, calls = train.train_step, []

    def step(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                model.model.norm.weight[0] = math.nan
        return result

    monkeypatch.setattr(train, "train_step", step)


def test_non_finite_weights_after_a_finite_loss_are_never_checkpointed_or_exported(micro_model, corpus, tmp_path,
                                                                                  capsys, monkeypatch):
    poisoned_step_2(monkeypatch)
    out = tmp_path / "out"
    code, err = exits(train.main, ["--model", str(micro_model), "--data", str(corpus), "--out", str(out), *RUN,
                                   "--steps", "3", "--save-every", "1"], capsys)
    assert code == 1 and err == (f"error: weights are not finite after step 2; nothing saved, newest checkpoint: "
                                 f"{out / 'checkpoints' / 'step_000001'}"), err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001"] and not (out / "final").exists()


def test_export_only_refuses_a_checkpoint_with_non_finite_weights(micro_model, corpus, tmp_path, capsys, monkeypatch):
    poisoned_step_2(monkeypatch)
    monkeypatch.setattr(train, "weights_finite", lambda model: True)  # as before issue 28: the NaN is saved
    out = tmp_path / "out"
    code, _ = exits(train.main, ["--model", str(micro_model), "--data", str(corpus), "--out", str(out), *RUN,
                                 "--steps", "3", "--save-every", "1"], capsys)
    assert code == 1  # step 3's loss is NaN: stopped, step_000002 holds the NaN weight
    code, err = exits(train.main, ["--export-only", "--out", str(out)], capsys)
    one_line(code, err, f"{out / 'checkpoints' / 'step_000002'}: tensor 'model.norm.weight' holds NaN",
             "not exported")
    assert not (out / "exports").exists()


def full_disk_at(monkeypatch, module, name: str, when):
    """Fault injected at write time: module.name writes what it writes, then the disk is full (ENOSPC)."""
    real = getattr(module, name)

    def writes_then_fails(*args, **kwargs):
        result = real(*args, **kwargs)
        if when():
            raise OSError(errno.ENOSPC, "No space left on device")
        return result

    monkeypatch.setattr(module, name, writes_then_fails)


def test_a_checkpoint_save_out_of_space_removes_its_temporary_and_the_previous_one_stays_latest(
        micro_model, corpus, tmp_path, capsys, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):  # DCP syncs each file it wrote: the disk is full while step 2's files are flushed
        if ".tmp-step_000002" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)  # DCP wraps the error in its CheckpointException, as a real one
    out = tmp_path / "out"
    code, err = exits(train.main, ["--model", str(micro_model), "--data", str(corpus), "--out", str(out), *RUN,
                                   "--steps", "3", "--save-every", "1"], capsys)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {out / 'checkpoints' / '.tmp-step_000002'}: no space left on device (needs about ")
    assert err.endswith(f"iB free); removed it, the latest checkpoint is still {out / 'checkpoints' / 'step_000001'}")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001"]
    assert checkpoints.latest_checkpoint(out) == out / "checkpoints" / "step_000001"


def test_an_export_out_of_space_removes_its_temporary_and_leaves_no_final(finished, tmp_path, capsys, monkeypatch):
    out, argv = run_copy(finished, tmp_path)
    import hf
    full_disk_at(monkeypatch, hf, "save_file", lambda: True)
    before = snapshot(out / "checkpoints")
    code, err = exits(train.main, ["--export-only", "--out", str(out)], capsys)
    assert code == 1 and len(err.splitlines()) == 1, err
    folder = out / "exports" / "step_000002"
    assert err.startswith(f"error: {folder}: no space left on device (needs about ")
    assert err.endswith(f"removed the partial export, {folder} is as it was")
    # issue 35: not even the exports/ folder made for it is left (issue 28 asserted it empty)
    assert not (out / "exports").exists() and snapshot(out / "checkpoints") == before


def test_an_export_that_fails_for_another_reason_leaves_no_temporary_and_no_exports_folder(finished, tmp_path,
                                                                                          monkeypatch):
    """write_hf_folder makes exports/ and removes what it made whatever the failure (here a write refused after the
    weights were written); the failure stays its own (a bug's traceback, not a disk-full line)."""
    out, _ = run_copy(finished, tmp_path)
    import hf
    real = hf.save_file

    def refused(*args, **kwargs):
        real(*args, **kwargs)
        raise PermissionError(13, "Permission denied", str(args[1]))

    monkeypatch.setattr(hf, "save_file", refused)
    before = snapshot(out)
    with pytest.raises(PermissionError):
        train.main(["--export-only", "--out", str(out)])
    assert not (out / "exports").exists() and snapshot(out) == before
    monkeypatch.undo()
    train.main(["--export-only", "--out", str(out)])
    assert sorted(p.name for p in (out / "exports").iterdir()) == ["step_000002"]


def test_a_npy_out_of_space_removes_its_temporary_and_says_how_far_it_got(spm_model, tmp_path, capsys, monkeypatch):
    real_open = open

    class Full:  # the .npy's file: the first write (the header) fits, the second finds the disk full
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, b):
            self.writes += 1
            if self.writes == 2:
                self.f.write(b[:10])
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(file, mode="r", *args, **kwargs):  # data.py's own name lookup; only the .npy is written
        f = real_open(file, mode, *args, **kwargs)
        return Full(f) if "w" in mode else f

    monkeypatch.setattr(data, "open", full_open, raising=False)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(5)))
    out = tmp_path / "t.npy"
    code, err = exits(data.main, ["--data", str(tmp_path / "t.jsonl"), "--tokenizer", str(spm_model), "--out",
                                  str(out), "--workers", "1"], capsys)
    one_line(code, err, f"--out {out}: no space left on device after 0.0 MiB of ids", "the temporary file is removed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]


# ---------------------------------------------------------------- 7. a run folder runs no code (issue 35)

import pickle  # noqa: E402

from torch.distributed.checkpoint.format_utils import dcp_to_torch_save  # noqa: E402


class Calls:
    """Pickles as the call fn(*args): what a malicious checkpoint file holds (its unpickling would run it)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(marker: Path) -> dict:
    """Each would create `marker` if unpickled: a shell command, a file opened for writing, a process, eval."""
    return {"os.system": Calls(os.system, f"touch {marker}"), "open": Calls(open, str(marker), "w"),
            "subprocess": Calls(subprocess.check_call, ["touch", str(marker)]),  # synchronous: no race
            "eval": Calls(eval, f"open({str(marker)!r}, 'w')")}


METADATA_ATTACKS = ["os.system", "open", "subprocess", "eval", "inside a genuine .metadata"]


@pytest.mark.parametrize("attack", METADATA_ATTACKS)
def test_a_metadata_whose_pickle_would_run_code_is_refused_by_resume_and_export_and_nothing_runs(
        finished, tmp_path, capsys, attack):
    out, argv = run_copy(finished, tmp_path)
    marker, checkpoint = tmp_path / "marker", out / "checkpoints" / "step_000002"
    if attack.startswith("inside"):  # one object of a real checkpoint's metadata swapped for a call
        metadata = pickle.loads((checkpoint / ".metadata").read_bytes())  # the test's own checkpoint: trusted
        metadata.storage_meta.modules = [payloads(marker)["os.system"]]
        payload = metadata
    else:
        payload = payloads(marker)[attack]
    (checkpoint / ".metadata").write_bytes(pickle.dumps(payload))
    fn = payload.fn if isinstance(payload, Calls) else os.system
    named = f"names {fn.__module__}.{fn.__qualname__}"  # posix.system, io.open, subprocess.check_call, builtins.eval
    before = snapshot(out)
    for args in ([*argv, "--steps", "3", "--resume"], ["--export-only", "--out", str(out)]):
        code, err = exits(train.main, args, capsys)
        one_line(code, err, f"error: {checkpoint / '.metadata'}: refused, its pickle {named}",
                 "nothing from it was run")
        assert not marker.exists() and snapshot(out) == before


def test_a_metadata_that_would_send_dcp_elsewhere_is_refused(finished, tmp_path, capsys):
    """Only the admitted classes, but pointing at a file outside the checkpoint, or at a decompression: refused."""
    out, argv = run_copy(finished, tmp_path)
    checkpoint = out / "checkpoints" / "step_000002"
    metadata = pickle.loads((checkpoint / ".metadata").read_bytes())
    index, info = next(iter(metadata.storage_data.items()))
    info.relative_path = "../../../settings.json"
    (checkpoint / ".metadata").write_bytes(pickle.dumps(metadata))
    code, err = exits(train.main, [*argv, "--steps", "3", "--resume"], capsys)
    one_line(code, err, f"{checkpoint / '.metadata'}: refused, not a checkpoint of this project",
             f"{index.fqn!r} is stored in '../../../settings.json'")
    info.relative_path, info.transform_descriptors = "__0_0.distcp", ["zstd/1"]
    (checkpoint / ".metadata").write_bytes(pickle.dumps(metadata))
    code, err = exits(train.main, ["--export-only", "--out", str(out)], capsys)
    one_line(code, err, f"{index.fqn!r} transformed by ['zstd/1']")


def test_a_checkpoint_value_whose_pickle_would_run_code_is_refused_and_nothing_runs(finished, tmp_path, capsys):
    """DCP keeps the step, seed and Adam's hyper-parameters as pickles inside the .distcp file, and its own planner
    unpickles them with torch.load(weights_only=False): a checkpoint re-saved with a call as its step."""
    out, argv = run_copy(finished, tmp_path)
    marker, checkpoint = tmp_path / "marker", out / "checkpoints" / "step_000002"
    dcp_to_torch_save(checkpoint, tmp_path / "whole.pt")
    state = torch.load(tmp_path / "whole.pt", weights_only=False)  # written just now by this test
    state["step"] = payloads(marker)["os.system"]
    shutil.rmtree(checkpoint)
    with pytest.warns(UserWarning, match="torch.distributed is disabled"):
        checkpoints.dcp.save(state, checkpoint_id=checkpoint)
    before = snapshot(out)
    code, err = exits(train.main, [*argv, "--steps", "3", "--resume"], capsys)
    one_line(code, err, f"error: {checkpoint / '__0_0.distcp'}: refused, the pickle of 'step' names posix.system")
    assert not marker.exists() and snapshot(out) == before
    train.main(["--export-only", "--out", str(out)])  # the export reads the weights alone: tensors, weights_only
    assert not marker.exists() and (out / "exports" / "step_000002" / "model.safetensors").is_file()


def test_a_genuine_checkpoint_passes_the_restricted_reader_and_resumes_through_it(finished, tmp_path, capsys,
                                                                                monkeypatch):
    """Every load goes through SafeReader and SafePlanner (the bit-identical resumes at world 1 and 2 are
    test_train.py's, which now load through them too)."""
    out, argv = run_copy(finished, tmp_path)
    used = []
    real_load = safe_dcp.dcp.load

    def load(state, **kwargs):
        used.append((type(kwargs["storage_reader"]), type(kwargs["planner"])))
        return real_load(state, **kwargs)

    monkeypatch.setattr(safe_dcp.dcp, "load", load)
    train.main([*argv, "--steps", "3", "--resume"])
    train.main(["--export-only", "--out", str(out), "--checkpoint", "2"])
    assert used == [(safe_dcp.SafeReader, safe_dcp.SafePlanner)] * 2
    assert "resumed from" in capsys.readouterr().out


# ---------------------------------------------------------------- 8. left open by issue 28 (issue 35)

FULL_ON_RANK_1 = """
import os, runpy, shutil, sys
sys.path.insert(0, {root!r})
if os.environ["RANK"] == "1":  # rank 1's disk alone is full while step 2 is saved; rank 0's has room
    real_fsync = os.fsync

    def fsync(fd):  # what torch.save's zip writer reports for ENOSPC: no errno, so each rank asks its disk
        if ".tmp-step_000002" in os.readlink(f"/proc/self/fd/{{fd}}"):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4480 vs 4374")
        real_fsync(fd)

    os.fsync = fsync
    shutil.disk_usage = lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0)
sys.argv[0] = {train!r}
runpy.run_path({train!r}, run_name="__main__")
"""


@pytest.mark.slow
def test_a_disk_full_on_one_rank_only_is_one_line_and_every_rank_stops_together(micro_model, corpus, tmp_path):
    """Rank 1's save of step 2 fails with what torch.save reports for a full disk and its disk has no space;
    rank 0 sees that failure inside DCP's CheckpointException and its own disk has room. The ranks agree
    (checkpoints.agree_any): both exit 1, rank 0 prints the one line, the temporary goes, step 1 stays latest."""
    (tmp_path / "full_on_rank_1.py").write_text(FULL_ON_RANK_1.format(root=str(ROOT), train=str(ROOT / "train.py")))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "full_on_rank_1.py"), "--model", str(micro_model), "--data", str(corpus), "--out", str(out),
           *RUN, "--batch-size", "4", "--steps", "3", "--save-every", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,  # a hang guard
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1, done.stderr[-3000:]
    assert "Connection reset" not in done.stderr and 'File "' + str(ROOT) not in done.stderr  # no rank's traceback
    assert ours[0].startswith(f"error: {out / 'checkpoints' / '.tmp-step_000002'}: no space left on device")
    assert ours[0].endswith(f"removed it, the latest checkpoint is still {out / 'checkpoints' / 'step_000001'}")
    assert "exitcode  : 1" in done.stderr and "exitcode  : 2" not in done.stderr  # torchrun's report: exit 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001"]


FULL_AT_RANK_0S_EXPORT = """
import errno, os, runpy, sys
import safetensors.torch
sys.path.insert(0, {root!r})
if os.environ["RANK"] == "0":  # rank 0 alone writes final/: safetensors' write finds the disk full
    real = safetensors.torch.save_file

    def save_file(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    safetensors.torch.save_file = save_file  # before the project's modules import it
sys.argv[0] = {train!r}
runpy.run_path({train!r}, run_name="__main__")
"""


@pytest.mark.slow
def test_a_full_disk_at_rank_0s_export_stops_every_rank_with_its_one_line(micro_model, corpus, tmp_path):
    """The other ranks wait for rank 0's export; told its failure (checkpoints.export), they stop with it: exit 1
    everywhere, rank 0's line, no final/ (the checkpoints are all there)."""
    (tmp_path / "full.py").write_text(FULL_AT_RANK_0S_EXPORT.format(root=str(ROOT), train=str(ROOT / "train.py")))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "full.py"), "--model", str(micro_model), "--data", str(corpus), "--out", str(out),
           *RUN, "--batch-size", "4", "--steps", "2", "--save-every", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,  # a hang guard
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and ours[0].startswith(f"error: {out / 'final'}: no space left on device"), \
        done.stderr[-3000:]
    assert ours[0].endswith(f"removed the partial export, {out / 'final'} is as it was")
    assert "Connection" not in done.stderr and 'File "' + str(ROOT) not in done.stderr  # no rank's traceback
    assert "exitcode  : 1" in done.stderr and "exitcode  : 2" not in done.stderr
    assert not (out / "final").exists() and sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_000001", "step_000002"]


def test_a_damaged_latest_checkpoint_names_the_exact_command_that_resumes_from_the_intact_one(finished, tmp_path,
                                                                                               capsys):
    """Never a silent fall-back (checkpoints.check_intact says why): the line gives the command, which works."""
    import shlex
    out, argv = run_copy(finished, tmp_path)
    damaged, intact = out / "checkpoints" / "step_000002", out / "checkpoints" / "step_000001"
    (damaged / ".metadata").unlink()
    code, err = exits(train.main, ["--export-only", "--out", str(out)], capsys)
    one_line(code, err, f"newest intact one: {intact}; export it with --checkpoint step_000001")
    train.main(["--export-only", "--out", str(out), "--checkpoint", "step_000001"])
    assert (out / "exports" / "step_000001" / "model.safetensors").is_file()
    code, err = exits(train.main, [*argv, "--steps", "3", "--resume"], capsys)
    one_line(code, err, f"newest intact one: {intact}; to resume from it: mv ", ", then rerun with --resume")
    command = shlex.split(err.split("to resume from it: ")[1].split(", then rerun")[0])
    assert command == ["mv", str(damaged), str(out / "checkpoints" / "damaged-step_000002")]
    subprocess.run(command, check=True)
    train.main([*argv, "--steps", "3", "--resume"])
    assert f"resumed from {intact} at step 1" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["damaged-step_000002", "step_000002",
                                                                       "step_000003"]
    for step in ("step_000002", "step_000003"):  # no intact one left: a new --out
        (out / "checkpoints" / step / ".metadata").unlink()
    code, err = exits(train.main, [*argv, "--steps", "4", "--resume"], capsys)
    one_line(code, err, "newest intact one: none; a new --out starts the run afresh")


# ---------------------------------------------------------------- 9. the last bad inputs (issue 35)

DEVICES = {  # --device -> (CUDA devices torch sees, what the line says)
    "foo": (0, "--device foo: not a device name (cpu, cuda or cuda:N)"),
    "cuda:x": (0, "--device cuda:x: not a device name"),
    "mps": (0, "--device mps: evaluate.py runs on cpu or cuda"),
    "meta": (0, "--device meta: evaluate.py runs on cpu or cuda"),
    "cuda": (0, "--device cuda: torch sees no CUDA device"),
    "cuda:7": (2, "--device cuda:7: torch sees 2 CUDA devices, cuda:0 .. cuda:1"),
}


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_refuses_a_device_torch_cannot_use_before_anything_loads(micro_model, tmp_path, capsys, monkeypatch,
                                                                         device):
    count, needle = DEVICES[device]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)  # the same answer on a GPU box
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(evaluate, "load_model", None)  # checked before the weights load
    for command in ("ppl", "passkey", "ruler"):
        code, err = exits(evaluate.main, [command, "--model", str(micro_model), "--device", device, "--out",
                                          str(tmp_path / "r.json")], capsys)
        one_line(code, err, needle)
    assert list(tmp_path.iterdir()) == []


NOT_RESULTS = {  # the JSON of a file given to `evaluate.py plot` -> what the line says
    "a list": ([1, 2], "a JSON list, not an object"),
    "a string": ("results", "a JSON str, not an object"),
    "train.py's settings.json": ({"options": {}, "world_size": 1}, "'task' is None, not ppl, passkey or ruler"),
    "no label": ({"task": "ppl", "results": [{"length": 16, "ppl": 3.0}]}, "no text 'label'"),
    "no rows": ({"task": "passkey", "label": "a", "results": []}, "no rows in 'results'"),
    "a ppl row without ppl": ({"task": "ppl", "label": "a", "results": [{"length": 16, "ppl": 3.0}, {"length": 32}]},
                              "results[1] has no number 'ppl'"),
    "a length as text": ({"task": "passkey", "label": "a", "results": [{"length": "16", "accuracy": 1.0}]},
                         "results[0] has no positive integer 'length'"),
    "ruler without averages": ({"task": "ruler", "label": "a", "threshold": 85.6, "results": [{"length": 16}]},
                               "no rows in 'averages'"),
    "ruler without threshold": ({"task": "ruler", "label": "a", "results": [{"length": 16}],
                                 "averages": [{"length": 16, "average": None}]}, "no number 'threshold'"),
}


@pytest.mark.parametrize("case", NOT_RESULTS)
def test_plot_of_a_json_that_is_not_a_results_file_is_one_line_naming_it(tmp_path, capsys, monkeypatch, case):
    content, needle = NOT_RESULTS[case]
    monkeypatch.setattr(evaluate, "_pyplot", None)  # refused before matplotlib is asked for
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"task": "ppl", "label": "g", "results": [{"length": 16, "ppl": 3.0}]}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content))
    code, err = exits(evaluate.main, ["plot", str(good), str(bad), "--out", str(tmp_path / "fig.png")], capsys)
    one_line(code, err, f"error: {bad}: not a results JSON written by evaluate.py ({needle})")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "good.json"]


def _npz(path):
    np.savez(path.with_suffix(".tmp"), ids=np.arange(3, 40))
    os.replace(path.with_suffix(".tmp.npz"), path)


def _truncated(path):
    np.save(path, np.arange(3, 1003, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:300])


TOKEN_FILES = {  # a pre-tokenised --data file -> what the one line says after the file's name
    "a .bin of 5 bytes": ("ids.bin", lambda p: p.write_bytes(b"\x03\x00\x04\x00\x02"),
                          "(5 bytes): not a whole number of uint16 token ids"),
    "an empty .npy file": ("ids.npy", lambda p: p.write_bytes(b""), "(0 bytes): not a NumPy .npy array (EOF"),
    "a pickle named .npy": ("ids.npy", lambda p: p.write_bytes(pickle.dumps(list(range(3, 40)))),
                            "not a NumPy .npy array (the magic string is not correct"),
    "an .npz named .npy": ("ids.npy", _npz, "not a NumPy .npy array (the magic string is not correct"),
    "an object array": ("ids.npy", lambda p: np.save(p, np.array([3, "x", None], dtype=object), allow_pickle=True),
                        "expected a 1-D array of integer token ids, got object (3,)"),
    "floats": ("ids.npy", lambda p: np.save(p, np.arange(3.0, 40.0)), "got float64 (37,)"),
    "two dimensions": ("ids.npy", lambda p: np.save(p, np.ones((4, 20), dtype=np.int32)), "got int32 (4, 20)"),
    "truncated": ("ids.npy", _truncated, "(300 bytes): truncated, its header declares 1,000 int32 ids (4,128 bytes)"),
}


@pytest.mark.parametrize("case", TOKEN_FILES)
def test_a_token_file_of_the_wrong_shape_is_one_line_naming_it_and_nothing_is_unpickled(micro_model, tmp_path, capsys,
                                                                                        case):
    name, write, needle = TOKEN_FILES[case]
    write(tmp_path / name)
    out = tmp_path / "out"
    code, err = exits(train.main, ["--model", str(micro_model), "--data", str(tmp_path / name), "--out", str(out),
                                   *RUN], capsys)
    one_line(code, err, f"error: --data {tmp_path / name}", needle)
    code, err = exits(evaluate.main, ["ppl", "--model", str(micro_model), "--data", str(tmp_path / name),
                                      "--lengths", "16", "--out", str(out)], capsys)
    one_line(code, err, f"error: --data {tmp_path / name}", needle)
    assert not out.exists()


def test_a_token_file_is_never_unpickled(tmp_path):
    """A .npy whose header says object dtype and whose data is a pickle that would create a file: refused from the
    header, the data never read (np.load with allow_pickle=True would run it)."""
    marker = tmp_path / "marker"
    np.save(tmp_path / "ids.npy", np.array([Calls(os.system, f"touch {marker}")], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="got object"):
        list(data.read_token_file(tmp_path / "ids.npy", 2))
    assert not marker.exists()


# ---------------------------------------------------------------- 10. the export keeps the tokenizer's files (issue 35)

INSTRUCT_FILES = {  # what an Instruct checkpoint ships beside its weights (Qwen2.5-Instruct's layout, plus extras)
    "tokenizer_config.json": json.dumps({"bos_token": None, "eos_token": "<|im_end|>", "model_max_length": 131072}),
    "special_tokens_map.json": json.dumps({"eos_token": "<|im_end|>"}),
    "added_tokens.json": json.dumps({"<|im_start|>": 4094, "<|im_end|>": 4095}),
    "chat_template.jinja": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
    "chat_template.json": json.dumps({"chat_template": "{{ messages }}"}),
    "additional_chat_templates/tool_use.jinja": "{{ tools }}{% for m in messages %}{{ m.content }}{% endfor %}",
    "vocab.json": json.dumps({"a": 0, "b": 1}),
    "merges.txt": "#version: 0.2\na b\n",
    "tekken.json": json.dumps({"config": {}}),
    "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE"}}),
    "generation_config.json": json.dumps({"eos_token_id": [4095, 2], "temperature": 0.7}),
}


def test_the_export_copies_every_tokenizer_file_of_an_instruct_folder_chat_template_included(micro_model, corpus,
                                                                                              tmp_path):
    """Trained on a token file, so the tokenizer files are never parsed here, only carried: byte for byte into
    final/ and into an --export-only folder (model_max_length, above L_t, stays)."""
    model = copy_model(micro_model, tmp_path / "instruct")
    for name, text in INSTRUCT_FILES.items():
        (model / name).parent.mkdir(exist_ok=True)
        (model / name).write_text(text)
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        train.main(["--model", str(model), "--data", str(corpus), "--out", str(out), *RUN])
        train.main(["--export-only", "--out", str(out)])
    for folder in (out / "final", out / "exports" / "step_000002"):
        got = {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()
               and p.name not in ("config.json", "model.safetensors")}
        assert got == INSTRUCT_FILES


def test_a_tokenizer_file_given_exports_with_the_configs_and_templates_beside_it_not_the_other_vocabularies(tmp_path):
    for name, text in INSTRUCT_FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    files = data.tokenizer_files(tmp_path / "tokenizer.json")
    assert sorted(files) == ["added_tokens.json", "additional_chat_templates/tool_use.jinja", "chat_template.jinja",
                             "chat_template.json", "special_tokens_map.json", "tokenizer.json",
                             "tokenizer_config.json"]
    assert all(source == tmp_path / name for name, source in files.items())


def replace_one_tensor(checkpoint: Path, file: str, payload: bytes = b"") -> str:
    """Overwrite the bytes of one weight stored in `file` with `payload` and zeros, sizes unchanged (damage() sees
    nothing): the name of the weight."""
    metadata = pickle.loads((checkpoint / ".metadata").read_bytes())  # the test's own checkpoint: trusted
    index, info = next((i, s) for i, s in metadata.storage_data.items()
                       if s.relative_path == file and i.fqn.startswith("model."))
    raw = bytearray((checkpoint / file).read_bytes())
    raw[info.offset:info.offset + info.length] = payload.ljust(info.length, b"\0")
    (checkpoint / file).write_bytes(bytes(raw))
    return index.fqn


def test_a_tensor_record_that_is_no_tensor_or_would_run_code_is_one_line_naming_its_file(finished, tmp_path, capsys):
    """DCP unpickles each tensor with torch.load(weights_only=True): a record of zeros is unreadable, a record
    whose pickle calls os.system is refused, both naming the .distcp, never torch's advice to retry unsafely."""
    for payload, needle in ((b"", "unreadable, a tensor is no pickle torch.load(weights_only=True) reads "
                                  "(Unsupported operand 0)"),
                            (None, "refused, the pickle of a tensor names posix.system")):
        out, argv = run_copy(finished, tmp_path / str(payload is None))
        marker, checkpoint = tmp_path / "marker", out / "checkpoints" / "step_000002"
        replace_one_tensor(checkpoint, "__0_0.distcp",
                           pickle.dumps(payloads(marker)["os.system"], protocol=2) if payload is None else payload)
        before = snapshot(out)
        for args in ([*argv, "--steps", "3", "--resume"], ["--export-only", "--out", str(out)]):
            code, err = exits(train.main, args, capsys)
            one_line(code, err, f"error: {checkpoint / '__0_0.distcp'}: {needle}")
            assert "weights_only` set to `False`" not in err and not marker.exists() and snapshot(out) == before


@pytest.mark.slow
def test_a_checkpoint_only_rank_1_cannot_read_is_one_line_of_ours_and_every_rank_exits_2(micro_model, corpus,
                                                                                         tmp_path):
    """A world-2 checkpoint whose rank-1 file holds zeros where a weight's bytes were: only rank 1 reads that
    file on a world-2 resume. DCP gathers its error to both ranks (safe_dcp.dcp_load), so both exit 2 and
    rank 0 prints rank 1's reason; nothing of the run folder changes."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train.py"), "--model", str(micro_model), "--data", str(corpus), "--out", str(out), *RUN,
           "--batch-size", "4", "--steps", "2", "--save-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env, check=True)
    checkpoint = out / "checkpoints" / "step_000002"
    replace_one_tensor(checkpoint, "__1_0.distcp")
    before = snapshot(out)
    done = subprocess.run([*cmd[:-4], "--steps", "3", "--resume"], capture_output=True, text=True, timeout=900,
                          cwd=ROOT, env=env)
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert ours == [f"error: {checkpoint / '__1_0.distcp'}: unreadable, a tensor is no pickle "
                    "torch.load(weights_only=True) reads (Unsupported operand 0)"], done.stderr[-3000:]
    assert 'File "' + str(ROOT) not in done.stderr and "exitcode  : 2" in done.stderr
    assert snapshot(out) == before


# ---------------------------------------------------------------- 11. nulls in config.json (issue 35)

# What transformers 5.25 does with a null key, every family (benchmarks/hf_nulls.py, by hand in its side venv): the
# keys it fails on for every family, those it fails on for some, and what the nulls it reads mean (an equivalent
# config.json change). The null truncate it reads as false, not as its default true: refused too.
FAMILY_TYPES = ("llama", "mistral", "qwen2", "qwen3", "olmo2")
NULL_FAILS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
              "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "hidden_act")
NULL_FAILS_FOR = {"num_key_value_heads": ("mistral",), "head_dim": ("qwen2", "qwen3", "olmo2"),
                  "attention_bias": ("llama", "qwen3", "olmo2"), "mlp_bias": ("llama",),
                  "use_sliding_window": ("qwen2", "qwen3")}
NULL_MEANS = {"num_key_value_heads": {"num_key_value_heads": 4}, "head_dim": {"head_dim": 16},  # 4 heads, 64 / 4
              "attention_bias": {"attention_bias": False}, "mlp_bias": {"mlp_bias": False},
              "use_sliding_window": {}, "sliding_window": {}, "bos_token_id": {"bos_token_id": "NONE"},
              "eos_token_id": {"eos_token_id": "NONE"}, "rope_scaling": {}, "rope_parameters": {},
              "partial_rotary_factor": {}, "original_max_position_embeddings": {}}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
ROPE_NULLS_REFUSED = {  # config.json change -> the key the one line names (transformers 5 fails on all but truncate)
    "rope_parameters' rope_theta": ({"rope_theta": None, "rope_parameters": {"rope_type": "default",
                                                                             "rope_theta": None}}, "'rope_theta'"),
    "rope_parameters' rope_theta, a top-level one given": ({"rope_parameters": {"rope_type": "default",
                                                                                "rope_theta": None}}, "'rope_theta'"),
    "rope_type (type linear)": ({"rope_scaling": {"rope_type": None, "type": "linear", "factor": 2.0}},
                                "'rope_type' must be a string"),
    "yarn's original window": ({"rope_scaling": dict(YARN, original_max_position_embeddings=None)},
                               "'original_max_position_embeddings' must be an integer"),
    "yarn's truncate": ({"rope_scaling": dict(YARN, truncate=None)}, "'truncate' must be true or false"),
    "llama3's low_freq_factor": ({"rope_scaling": dict(LLAMA3, low_freq_factor=None)}, "'low_freq_factor'"),
}
ROPE_NULLS_READ = {  # config.json change with a null -> the same config without it (transformers 5 reads these)
    "top-level rope_theta, rope_parameters has one": ({"rope_theta": None}, {"rope_theta": 1e4}),
    "yarn's factor (max_position_embeddings / the original window)": (  # MICRO's 16 / 4
        {"rope_scaling": dict(YARN, factor=None, original_max_position_embeddings=4)},
        {"rope_scaling": dict(YARN, factor=4.0, original_max_position_embeddings=4)}),
    **{f"yarn's {key}": ({"rope_scaling": dict(YARN, **{key: None})}, {"rope_scaling": YARN})
       for key in ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim")},
    "linear's original window (linear does not read it)": (
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0, "original_max_position_embeddings": None}},
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "type (rope_type linear)": ({"rope_scaling": {"rope_type": "linear", "type": None, "factor": 2.0}},
                                {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "rope_parameters' partial_rotary_factor": (
        {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": None}}, {}),
}


def family_config(family: str, **change) -> dict:
    """MICRO's shape as `family`, its keys all given (as released configs give them), then changed."""
    config = dict(MICRO, model_type=family, head_dim=16, rms_norm_eps=1e-5, rope_theta=1e4, tie_word_embeddings=False,
                  attention_bias=False, mlp_bias=False, hidden_act="silu", bos_token_id=1, eos_token_id=2,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e4}, **(
                      {"sliding_window": 4096} if family == "mistral" else {"use_sliding_window": False}
                      if family in ("qwen2", "qwen3") else {}))
    config.update(change)
    return {k: (None if v == "NONE" else v) for k, v in config.items() if v != "ABSENT"}


NULLS_REFUSED = [(f, k) for f in FAMILY_TYPES for k in NULL_FAILS] + [
    (f, k) for k, families in NULL_FAILS_FOR.items() for f in families]


@pytest.mark.parametrize("family,key", NULLS_REFUSED, ids=[f"{f} {k}" for f, k in NULLS_REFUSED])
def test_a_null_transformers_fails_on_is_refused_in_one_line_naming_file_key_and_null(micro_model, tmp_path, capsys,
                                                                                     family, key):
    """Never the silent default it used to be (rms_norm_eps null was 1e-6); from every entry point for LLaMA."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(family_config(family, **{key: None})))
    with pytest.raises(ValueError) as e:
        load_config(model)
    assert str(e.value).startswith(f"{model / 'config.json'}: config key {key!r} must be ") and \
        str(e.value).endswith("got null (transformers does not read this null as a default either)"), e.value
    if family == "llama":
        (model / "model.safetensors").write_bytes((micro_model / "model.safetensors").read_bytes())
        code, err = exits(evaluate.main, ["ppl", "--model", str(model), "--out", str(tmp_path / "r.json")], capsys)
        one_line(code, err, f"{model / 'config.json'}: config key {key!r}", "got null")
        code, err = exits(train.main, ["--model", str(model), "--data", str(tmp_path), "--out", str(tmp_path / "o")],
                          capsys)
        one_line(code, err, f"config key {key!r}", "got null")
        assert not (tmp_path / "r.json").exists() and not (tmp_path / "o").exists()


NULLS_READ = [(f, k) for f in FAMILY_TYPES for k in NULL_MEANS if f not in NULL_FAILS_FOR.get(k, ())]


@pytest.mark.parametrize("family,key", NULLS_READ, ids=[f"{f} {k}" for f, k in NULLS_READ])
def test_a_null_transformers_reads_means_what_it_means_there(family, key):
    """Ids none, windows none, the rope blocks absent, the head count and head size their defaults."""
    null = args_from_config(family_config(family, **{key: None}))
    assert null == args_from_config(family_config(family, **{key: "ABSENT", **NULL_MEANS[key]}))
    if key in ("bos_token_id", "eos_token_id"):
        assert getattr(null, key) is None


@pytest.mark.parametrize("case", ROPE_NULLS_REFUSED)
def test_a_null_in_the_rope_blocks_that_transformers_fails_on_is_refused_naming_the_key(tmp_path, case):
    change, needle = ROPE_NULLS_REFUSED[case]
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(family_config("llama", **change)))
    with pytest.raises(ValueError) as e:
        load_config(model)
    assert str(e.value).startswith(f"{model / 'config.json'}: config key {needle}") and "got null" in str(e.value)


@pytest.mark.parametrize("case", ROPE_NULLS_READ)
def test_a_null_in_the_rope_blocks_that_transformers_reads_is_read_as_it_does(case):
    null, plain = ROPE_NULLS_READ[case]
    assert args_from_config(family_config("llama", **null)) == args_from_config(family_config("llama", **plain))


@pytest.mark.parametrize("kind", ["default", "linear", "ntk", "yarn", "yarn-revised", "dynamic", "llama3"])
def test_every_export_writes_one_rope_theta_in_both_conventions(kind):
    """The refusal of a disagreeing rope_theta never meets our own exports: config_from_args writes the top-level
    rope_theta (transformers 4) and rope_parameters' (5) equal, and what it writes reads back."""
    import dataclasses
    from hf import config_from_args
    from rope import interpolate, rope_parameters
    base = args_from_config(family_config("llama"))
    rope = {"rope_type": "llama3", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 16,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0} if kind == "llama3" else \
        base.rope if kind == "default" else interpolate(base.rope, kind, 4.0, 16)
    config = config_from_args(dataclasses.replace(base, rope=rope, max_position_embeddings=64))
    thetas = [config["rope_theta"], config["rope_parameters"]["rope_theta"]]
    assert thetas[0] == thetas[1] and "rope_theta" not in config.get("rope_scaling", {})
    read = rope_parameters(config)  # nothing to refuse
    assert read["rope_theta"] == thetas[0] and read["rope_type"] == ("default" if kind == "ntk" else kind)


# ---------------------------------------------------------------- 12. settings.json lacking keys (issue 35)

# What --resume and --export-only read back, which every settings.json has held since issue 16 wrote the first.
READ_BACK = [*[("options", k) for k in ("model", "preset", "data", "text_field", "tokenizer", "window", "target",
                                        "method", "chunks", "content", "crop", "rope", "batch_size", "lr", "warmup",
                                        "weight_decay", "grad_clip", "seed", "max_documents", "steps")],
             (None, "device"), (None, "tokenizer_file")]


@pytest.mark.parametrize("where,key", READ_BACK, ids=[k for _, k in READ_BACK])
def test_a_settings_json_lacking_a_key_that_is_read_back_is_one_line_naming_it_and_nothing_is_written(
        finished, tmp_path, capsys, where, key):
    """Before: a KeyError on every rank (--resume: max_documents, steps), a silently skipped comparison (the other
    resume-fixed options), or an export at the default (a missing target exported at 8 x L_c)."""
    out, argv = run_copy(finished, tmp_path)
    settings = json.loads((out / "settings.json").read_text())
    del (settings["options"] if where else settings)[key]
    (out / "settings.json").write_text(json.dumps(settings))
    before = snapshot(out)
    for args in ([*argv, "--steps", "3", "--resume"], ["--export-only", "--out", str(out)]):
        code, err = exits(train.main, args, capsys)
        one_line(code, err, f"error: {out / 'settings.json'}: {'options key' if where else 'key'} {key!r} missing")
        assert snapshot(out) == before and not (out / "exports").exists()


def test_a_settings_json_from_before_the_later_options_resumes_and_exports_as_it_did_then(finished, tmp_path,
                                                                                          capsys):
    """--context (L_c was the window), --beta-fast (YaRN's own 32), --compile, --eval-* and --plan's flags came after
    settings.json: a run folder without them exports what one with them exports, and resumes."""
    out, argv = run_copy(finished, tmp_path)
    intact = tmp_path / "intact"
    shutil.copytree(out, intact)
    settings = json.loads((out / "settings.json").read_text())
    later = ("context", "beta_fast", "compile", "eval_every", "eval_data", "eval_lengths", "eval_docs", "eval_stride",
             "eval_trials", "eval_max_tokens", "plan", "world_size", "gpu_memory", "plan_json")
    assert set(later) <= set(settings["options"])
    settings["options"] = {k: v for k, v in settings["options"].items() if k not in later}
    (out / "settings.json").write_text(json.dumps(settings))
    for run in (out, intact):
        train.main(["--export-only", "--out", str(run)])
    assert snapshot(out / "exports") == snapshot(intact / "exports")
    train.main([*argv, "--steps", "3", "--resume"])
    assert f"resumed from {out / 'checkpoints' / 'step_000002'} at step 2" in capsys.readouterr().out


# ---------------------------------------------------------------- 13. rank 0's writes, agreed (issue 35)

def test_a_metrics_jsonl_that_is_not_train_pys_is_one_line_naming_its_line_and_resume_writes_nothing(finished,
                                                                                                   tmp_path, capsys):
    out, argv = run_copy(finished, tmp_path)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"loss": 1.0}\n')
    lines = len((out / "metrics.jsonl").read_text().splitlines())
    before = snapshot(out)
    code, err = exits(train.main, [*argv, "--steps", "3", "--resume"], capsys)
    one_line(code, err, f"error: {out / 'metrics.jsonl'}:{lines}: not a row of train.py's metrics.jsonl")
    assert snapshot(out) == before


def test_settings_json_out_of_space_is_one_line_and_leaves_a_fresh_out_absent(micro_model, corpus, tmp_path, capsys,
                                                                             monkeypatch):
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "settings.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out"
    code, err = exits(train.main, ["--model", str(micro_model), "--data", str(corpus), "--out", str(out), *RUN],
                      capsys)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {out / 'settings.json'}: no space left on device (needs about ")
    assert err.endswith(f"{out / 'settings.json'} is as it was") and not out.exists()


RANK_0_FAILS = """
import errno, os, runpy, sys
sys.path.insert(0, {root!r})
if os.environ["RANK"] == "0":
{patch}
sys.argv[0] = {train!r}
runpy.run_path({train!r}, run_name="__main__")
"""
SETTINGS_FULL = """
    real = os.replace

    def replace(src, dst):  # rank 0 alone writes settings.json: its disk is full
        if os.path.basename(dst) == "settings.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    os.replace = replace
"""
def torchrun(tmp_path, patch: str | None, args: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """train.py on 2 CPU ranks (rank 0 patched by `patch`); its stderr's lines of ours."""
    script = ROOT / "train.py"
    if patch is not None:
        script = tmp_path / "rank_0_fails.py"
        script.write_text(RANK_0_FAILS.format(root=str(ROOT), train=str(ROOT / "train.py"), patch=patch))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), *args], capture_output=True, text=True, timeout=900, cwd=ROOT,  # a hang guard
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    return done, [line for line in done.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_rank_0s_settings_json_out_of_space_stops_every_rank_with_its_line(micro_model, corpus, tmp_path):
    """Rank 0 alone writes settings.json (train.open_run); its failure reaches rank 1 (checkpoints.on_rank_0): both
    exit 1, one line, no rank's traceback, a fresh --out absent."""
    out = tmp_path / "out"
    done, ours = torchrun(tmp_path, SETTINGS_FULL, ["--model", str(micro_model), "--data", str(corpus), "--out",
                                                    str(out), *RUN, "--batch-size", "4"])
    assert len(ours) == 1 and ours[0].startswith(f"error: {out / 'settings.json'}: no space left on device"), \
        done.stderr[-3000:]
    assert "Connection" not in done.stderr and 'File "' + str(ROOT) not in done.stderr
    assert "exitcode  : 1" in done.stderr and "exitcode  : 2" not in done.stderr and not out.exists()


@pytest.mark.slow
def test_rank_0s_failed_export_only_stops_every_rank_with_its_line(finished, tmp_path):
    """--export-only under torchrun: rank 0 alone loads and writes; a damaged checkpoint it finds stops rank 1 too."""
    out, _ = run_copy(finished, tmp_path)
    (out / "checkpoints" / "step_000002" / ".metadata").unlink()
    before = snapshot(out)
    done, ours = torchrun(tmp_path, None, ["--export-only", "--out", str(out)])
    assert len(ours) == 1 and ours[0].startswith(f"error: {out / 'checkpoints' / 'step_000002'}: damaged checkpoint"), \
        done.stderr[-3000:]
    assert "Connection" not in done.stderr and 'File "' + str(ROOT) not in done.stderr
    assert "exitcode  : 2" in done.stderr and "exitcode  : 1" not in done.stderr and snapshot(out) == before
