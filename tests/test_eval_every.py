"""train.py --eval-every: each logged value equals evaluate.py's on that step's export; bad --eval-* values refused.

    python -m pytest tests/test_eval_every.py -x -q

A micro LLaMA (2 layers, width 64, context 256: the passkey template takes 145 of its tokenizer's tokens) with a
400-piece sentencepiece tokenizer trained here on fixed sentences, fine-tuned from 256 to 1,024 for 4 steps on
documents of those sentences, evaluated every 2 steps.
"""
import io
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import evaluate
import distributed
import metrics
import options
import train
import train_eval
from hf import PRESETS, args_from_config, save_pretrained
from model import Transformer

ROOT = Path(__file__).resolve().parent.parent
MICRO = dict(PRESETS["tiny"], hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, intermediate_size=128, vocab_size=512, max_position_embeddings=256)
WORDS = ("the of and to in is was for on that with as by at from his her an which but they have had not are this "
         "river mountain garden letter window morning evening number seven twelve hundred pass key remember grass "
         "sky sun here there go went come came house water stone paper light night winter summer quick brown fox "
         "jumps over lazy dog every day some many few old new long short green blue yellow red white black").split()
SENTENCES = [" ".join(WORDS[(i * 7 + k * 3 + k * k) % len(WORDS)] for k in range(6 + i % 9)) + f" {i * 7919 % 100000}."
             for i in range(3000)]
RUN = ["--window", "256", "--target", "1024", "--batch-size", "2", "--micro-batch-size", "1", "--lr", "3e-3",
       "--warmup", "1", "--log-every", "1", "--save-every", "2", "--keep-checkpoints", "5"]
EVAL = ["--eval-every", "2", "--eval-docs", "2", "--eval-trials", "3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
WAIT = 900  # seconds: a hang guard for a loaded machine, never a speed assertion


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread per test


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """A micro model folder with its tokenizer.model, and .jsonl corpora: (model, train data, eval data)."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("micro")
    model = Transformer(args_from_config(MICRO))
    model.init_weights(seed=0)
    save_pretrained(model, root / "model")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES + [evaluate.TASK, " ".join(evaluate.FILLER), evaluate.QUESTION] * 20),
        model_writer=proto, vocab_size=400, model_type="bpe", byte_fallback=True, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (root / "model" / "tokenizer.model").write_bytes(proto.getvalue())
    docs = [" ".join(SENTENCES[i:i + 60]) for i in range(0, 3000, 60)]  # 50 documents of ~1,750 tokens
    for name, part in (("train.jsonl", docs[:40]), ("eval.jsonl", docs[40:])):
        (root / name).write_text("".join(json.dumps({"text": d}) + "\n" for d in part))
    return root / "model", root / "train.jsonl", root / "eval.jsonl"


def evaluate_export(export: Path, eval_data: Path, lengths, *rope) -> dict:
    """What `evaluate.py ppl` and `evaluate.py passkey` print for an export (in this process: main's results);
    rope: evaluate.py's --rope flags (the base at step 0 is scored under the run's interpolation)."""
    lengths = [str(L) for L in lengths]
    ppl = evaluate.main(["ppl", "--model", str(export), *rope, "--data", str(eval_data), "--lengths", *lengths,
                         "--docs", "2"])
    keys = evaluate.main(["passkey", "--model", str(export), *rope, "--lengths", *lengths, "--trials", "3"])
    return {"ppl": {str(r["length"]): r["ppl"] for r in ppl["results"]},
            "passkey": {str(r["length"]): r["accuracy"] for r in keys["results"]},
            "passkey_digits": {str(r["length"]): r["digit_accuracy"] for r in keys["results"]},
            "key_logprob": {str(r["length"]): r["key_logprob"] for r in keys["results"]},
            "answers": [c["answer"] for r in keys["results"] for c in r["cases"]]}


@pytest.mark.slow
def test_every_eval_row_equals_evaluate_py_on_that_steps_export(micro, tmp_path, capsys, monkeypatch):
    model, data, eval_data = micro
    out = tmp_path / "out"
    answers = []  # the greedy answers behind each logged passkey accuracy: a copy that differs shows here first
    passkey = evaluate.passkey
    monkeypatch.setattr(evaluate, "passkey", lambda *a, **k: [answers.append([c["answer"] for c in r["cases"]])
                                                             or r for r in passkey(*a, **k)])
    board = []

    class SummaryWriter:  # stands in for torch.utils.tensorboard's, which needs the optional package
        def __init__(self, log_dir):
            pass

        def add_scalar(self, tag, value, step):
            board.append((tag, value, step))

        flush = close = lambda self: None

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    with distributed.distributed() as device:
        train.train(options.parse_args(["--model", str(model), "--data", str(data), "--out", str(out), "--steps", "4",
                                      *RUN, *EVAL, "--eval-data", str(eval_data), "--tensorboard"]), device)
    monkeypatch.undo()
    with distributed.distributed() as device:  # the same run without evaluation: it changes no training number
        train.train(options.parse_args(["--model", str(model), "--data", str(data), "--out", str(tmp_path / "plain"),
                                      "--steps", "4", *RUN]), device)
    losses = [[(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, (folder / "metrics.jsonl").read_text()
               .splitlines()) if "loss" in r] for folder in (out, tmp_path / "plain")]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    log = capsys.readouterr().out.splitlines()
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval" in r]
    assert [r["step"] for r in rows] == [0, 2, 4]  # the start, every 2 steps, the last one included
    assert rows[1]["eval"]["ppl"] != rows[2]["eval"]["ppl"]  # the weights moved: each step has its own numbers
    start = evaluate_export(model, eval_data, [256, 1024], "--rope", "linear", "--factor", "4")
    assert rows[0]["eval"] == {k: v for k, v in start.items() if k != "answers"}  # the base, linear x4: exactly
    assert answers[0] + answers[1] == start["answers"]
    assert {b for b in board if b[0].startswith("eval/")} == {
        (f"eval/{task}_{L}", value, r["step"]) for r in rows for task, scores in r["eval"].items()
        for L, value in scores.items()}
    rows, answers = rows[1:], answers[2:]  # step 0 is checked above; steps 2 and 4 against their exports
    for row, step_answers in zip(rows, [answers[0] + answers[1], answers[2] + answers[3]]):
        assert train.main(["--export-only", "--out", str(out), "--checkpoint", f"step_{row['step']}"]) is None
        want = evaluate_export(out / "exports" / f"step_{row['step']:06d}", eval_data, [256, 1024])
        assert row["eval"] == {k: v for k, v in want.items() if k != "answers"}  # exactly, every number
        assert step_answers == want["answers"] and len(step_answers) == 2 * 3
        line = next(x for x in log if x.startswith(f"eval step {row['step']}/4: "))
        ppl, keys = (row["eval"][k] for k in ("ppl", "passkey"))
        assert line == (f"eval step {row['step']}/4: ppl 256 {ppl['256']:.4g}, 1,024 {ppl['1024']:.4g}; passkey "
                        f"256 {keys['256']:.2f}, 1,024 {keys['1024']:.2f} ({metrics.human(row['eval_s'])})")
    assert re.search(r"^eval: every 2 steps and at the end, at L = 256, 1,024, by rank 0 on a gathered copy: ppl on 2 "
                     r"documents of --eval-data \(stride 1,024\), passkey 3 prompts a length \(seed 0\)$",
                     "\n".join(log), re.M)

    # eval flags are free to change on --resume; the resumed run does not score step 4 again (its row is there)
    with distributed.distributed() as device:
        train.train(options.parse_args(["--model", str(model), "--data", str(data), "--out", str(out), "--steps", "6",
                                      *RUN, "--eval-every", "3", "--eval-docs", "1", "--eval-trials", "1",
                                      "--eval-lengths", "512", "--eval-data", str(eval_data), "--resume"]), device)
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval" in r]
    assert [(r["step"], list(r["eval"]["ppl"])) for r in rows] == [(0, ["256", "1024"]), (2, ["256", "1024"]),
                                                                   (4, ["256", "1024"]), (6, ["512"])]


@pytest.mark.slow
def test_under_torchrun_rank_0s_rows_equal_evaluate_py_on_the_export_and_a_resume_scores_its_start(micro, tmp_path):
    """Two processes (FSDP2 over gloo): the gather and the wait are collective-safe, the numbers exact."""
    model, data, eval_data = micro
    out = tmp_path / "out"
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / "train.py"),
            "--model", str(model), "--data", str(data), "--out", str(out), *RUN]
    done = subprocess.run([*base, "--steps", "2"], capture_output=True, text=True, timeout=WAIT, env=ENV, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([*base, "--steps", "4", *EVAL, "--eval-data", str(eval_data), "--resume"],
                          capture_output=True, text=True, timeout=WAIT, env=ENV, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sum(line.startswith("eval step ") for line in done.stdout.splitlines()) == 2  # rank 0 only speaks
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval" in r]
    assert [r["step"] for r in rows] == [2, 4]  # step 2: where the resumed run starts (no eval row there yet)
    for row in rows:
        assert train.main(["--export-only", "--out", str(out), "--checkpoint", f"step_{row['step']}"]) is None
        want = evaluate_export(out / "exports" / f"step_{row['step']:06d}", eval_data, [256, 1024])
        assert row["eval"] == {k: v for k, v in want.items() if k != "answers"}


def refusals(micro, tmp_path) -> dict:
    model, data, eval_data = micro
    ids = tmp_path / "ids.npy"
    np.save(ids, np.append(np.arange(3, 300), 2).astype(np.int32))
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": " ".join(SENTENCES[:5])}) + "\n")
    run = ["--model", str(model), "--data", str(data), *RUN]
    with_eval = [*run, "--eval-data", str(eval_data)]
    return {
        "no --eval-data": ([*run, "--eval-every", "2"], "error: --eval-every needs --eval-data: the held-out "
                                                        "documents of its perplexity"),
        "--eval-data without --eval-every": (with_eval, "error: --eval-data / --eval-lengths are --eval-every's: "
                                                        "give --eval-every K too"),
        "--eval-every 0": ([*with_eval, "--eval-every", "0"], "error: --eval-every must be > 0, got 0"),
        "--eval-docs 0": ([*with_eval, "--eval-every", "2", "--eval-docs", "0"],
                          "error: --eval-docs must be > 0, got 0"),
        "--eval-trials -1": ([*with_eval, "--eval-every", "2", "--eval-trials", "-1"],
                             "error: --eval-trials must be > 0, got -1"),
        "--eval-stride 0": ([*with_eval, "--eval-every", "2", "--eval-stride", "0"],
                            "error: --eval-stride must be > 0, got 0"),
        "--eval-lengths 1": ([*with_eval, "--eval-every", "2", "--eval-lengths", "1", "256"],
                             "error: --eval-lengths must be >= 2 tokens, got 1"),
        "--eval-max-tokens below the longest length": ([*with_eval, "--eval-every", "2", "--eval-lengths", "64", "256",
                                                        "--eval-max-tokens", "255"],
                                                       "error: --eval-max-tokens 255 < the longest --eval-lengths 256: "
                                                       "no document would be long enough to score"),
        "missing --eval-data": ([*run, "--eval-every", "2", "--eval-data", str(tmp_path / "nope.jsonl")],
                                f"error: --eval-data {tmp_path / 'nope.jsonl'}: not found"),
        "token files without a tokenizer": (["--data", str(ids), "--window", "16", "--eval-every", "2", "--eval-data",
                                             str(eval_data)], "error: --eval-every's passkey prompts are text, and a "
                                            "run on token files without --tokenizer has none (nor will its export): "
                                            "pass --tokenizer"),
        "no document of max(--eval-lengths)": ([*run, "--eval-every", "2", "--eval-data", str(short)],
                                               f"error: --eval-data {short}: no document with >= 1024 tokens (1 "
                                               "shorter; the longest --eval-lengths decides)"),
        "a length below the passkey template": ([*with_eval, "--eval-every", "2", "--eval-lengths", "8"],
                                                "error: passkey length 8 is shorter than the bare template"),
    }


@pytest.mark.parametrize("case", ["no --eval-data", "--eval-data without --eval-every", "--eval-every 0",
                                  "--eval-docs 0", "--eval-trials -1", "--eval-stride 0", "--eval-lengths 1",
                                  "--eval-max-tokens below the longest length",
                                  "missing --eval-data", "token files without a tokenizer",
                                  "no document of max(--eval-lengths)", "a length below the passkey template"])
def test_bad_eval_values_are_one_line_exit_2_and_nothing_written(case, micro, tmp_path, capsys):
    argv, want = refusals(micro, tmp_path)[case]
    out = tmp_path / "fresh-out"
    with pytest.raises(SystemExit) as exit_:
        train.main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and err.startswith(want), err
    assert not out.exists()


def test_eval_max_tokens_cuts_the_documents_as_evaluate_py_ppl_max_tokens_does(micro, tmp_path):
    """--eval-max-tokens N: --eval-every's perplexity reads the documents `evaluate.py ppl --max-tokens N` reads
    (each cut to its first N tokens, then kept if it still has max(--eval-lengths)), so long held-out books cost
    one window at the longest length instead of many."""
    model, data, eval_data = micro
    argv = ["--model", str(model), "--data", str(data), "--out", str(tmp_path / "o"), *RUN, "--eval-every", "2",
            "--eval-data", str(eval_data), "--eval-docs", "3", "--eval-lengths", "256", "--eval-max-tokens", "300"]
    with distributed.distributed():
        opts, config = options.resolve(options.parse_args(argv), 1)
        args = options.training_args(opts, config)
        ev = train_eval.eval_setup(opts, args, model)
    want, bos = evaluate.load_documents(evaluate.PplOptions(data=[str(eval_data)], docs=3, max_tokens=300), args, 256,
                                       model)
    assert [len(d) for d in ev.documents] == [300] * 3 and ev.bos_id == bos
    assert all(np.array_equal(a, b) for a, b in zip(ev.documents, want))
    whole = evaluate.load_documents(evaluate.PplOptions(data=[str(eval_data)], docs=3), args, 256, model)[0]
    assert all(np.array_equal(a, b[:300]) and len(b) > 300 for a, b in zip(ev.documents, whole))


EVALUATION_FAILS = """
import os, runpy, sys
sys.path.insert(0, {root!r})
if os.environ["RANK"] == "0":  # rank 0 alone evaluates, the other ranks wait for it: its evaluation fails
    import evaluate

    def perplexity(*args, **kwargs):
        raise ValueError("perplexity is NaN at L = 256 (injected)")

    evaluate.perplexity = perplexity
sys.argv[0] = {train!r}
runpy.run_path({train!r}, run_name="__main__")
"""


@pytest.mark.slow
def test_under_torchrun_a_failure_of_rank_0s_evaluation_stops_every_rank_with_its_line(micro, tmp_path):
    """Issue 35: rank 1 waits for rank 0's evaluation in a gloo group with a 7-day timeout (run_eval); rank 0's
    failure reaches it (checkpoints.on_rank_0): both exit 2 at step 0's evaluation, rank 0's one line, no rank's
    traceback. Before, rank 0 left alone and rank 1 died in its barrier ("Connection closed by peer")."""
    model, data, eval_data = micro
    (tmp_path / "fails.py").write_text(EVALUATION_FAILS.format(root=str(ROOT), train=str(ROOT / "train.py")))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "fails.py"), "--model", str(model), "--data", str(data), "--out",
                           str(tmp_path / "out"), *RUN, "--steps", "2", *EVAL, "--eval-data", str(eval_data)],
                          capture_output=True, text=True, timeout=WAIT, env=ENV, cwd=ROOT)
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert ours == ["error: perplexity is NaN at L = 256 (injected)"], done.stderr[-3000:]
    assert "Connection" not in done.stderr and 'File "' + str(ROOT) not in done.stderr
    assert "exitcode  : 2" in done.stderr and "exitcode  : 1" not in done.stderr
    assert not list((tmp_path / "out").glob("checkpoints/step_*"))  # stopped before step 1
