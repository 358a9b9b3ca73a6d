"""evaluate.py: sliding-window perplexity against a float64 reference, passkey prompts and scoring, the CLI.

    python -m pytest tests/test_evaluate.py -x -q

A micro LLaMA (2 layers, width 64, vocab 512) saved with save_pretrained and a 400-piece sentencepiece model
trained on a few KB of text in a temp folder keep the file to seconds on two CPU cores.
"""
import io
import json
import re
import types
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import evaluate
from data import Tokenizer
from hf import PRESETS, args_from_config, from_pretrained, save_pretrained
from generate import generate
from model import Transformer

MICRO = dict(PRESETS["tiny"], hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, intermediate_size=128, vocab_size=512, max_position_embeddings=32)
BOS = 1


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread per test


WORDS = ("the of and to in is was for on that with as by at from his her an which but they have had not are this "
         "river mountain garden letter window morning evening number seven twelve hundred pass key remember grass "
         "sky sun here there go went come came house water stone paper light night winter summer quick brown fox "
         "jumps over lazy dog every day some many few old new long short green blue yellow red white black").split()
# The tokenizer's training text: fixed sentences written here (never the project's own source files, whose every
# edit would change the tokenizer and with it the prompts the passkey tests build).
FIXED_TEXT = [" ".join(WORDS[(i * 7 + k * 3 + k * k) % len(WORDS)] for k in range(6 + i % 9)) + f" {i * 7919 % 100000}."
              for i in range(3000)]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """A random micro model with a sentencepiece tokenizer.model beside it; weights scaled up so that the
    next-token distributions are far from uniform and a wrongly scored token changes the perplexity."""
    import sentencepiece as spm

    path = tmp_path_factory.mktemp("micro") / "model"
    model = Transformer(args_from_config(MICRO))
    model.init_weights(seed=0)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(20)
        model.lm_head.weight.mul_(20)
    save_pretrained(model, path)
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(FIXED_TEXT + [evaluate.TASK, " ".join(evaluate.FILLER), evaluate.QUESTION] * 20),
        model_writer=proto, vocab_size=400, model_type="bpe", byte_fallback=True, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (path / "tokenizer.model").write_bytes(proto.getvalue())
    return path


@pytest.fixture(scope="module")
def model64(micro):
    return from_pretrained(micro, dtype=torch.float64)


def reference_nll(model, doc, length, stride, bos):
    """Plain float64 sliding-window NLL. Windows start at k*s (s = min(stride, L - 1)) and hold L tokens with
    the BOS (L - 1 of the document's). Token j is scored once, in the first window that holds it with at least
    one token before it (BOS counts), i.e. the smallest k with k*s + (0 if bos else 1) <= j < k*s + width."""
    width, s = length - bos, min(stride, length - 1)
    total, count = 0.0, 0
    for j in range(0 if bos else 1, len(doc)):
        k = next(k for k in range(len(doc)) if k * s + (not bos) <= j < k * s + width)
        window = ([BOS] if bos else []) + list(doc[k * s:min(k * s + width, len(doc))])
        logp = torch.log_softmax(model(torch.tensor([window]))[0].double(), dim=-1)  # full forward, [T, V]
        i = j - k * s + bos  # x_j's index in the window, predicted by the row before it
        total -= logp[i - 1, window[i]].item()
        count += 1
    return total, count


@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize("length,stride", [(16, 4), (16, 7), (12, 1024), (9, 1)])
def test_perplexity_equals_a_float64_full_forward_per_window_scoring_each_token_once(model64, bos, length, stride):
    rng = np.random.default_rng(length + stride)
    docs = [rng.integers(3, 512, size=n) for n in (40, 23, length - 1)]  # the last one fits one window
    rows = evaluate.perplexity(model64, docs, [length], stride, BOS if bos else None)
    nll, count = zip(*(reference_nll(model64, d, length, stride, bos) for d in docs))
    assert rows[0]["tokens"] == sum(count) == sum(len(d) - (not bos) for d in docs)
    assert rows[0]["nll"] == pytest.approx(sum(nll), rel=1e-10)
    assert rows[0]["ppl"] == pytest.approx(np.exp(sum(nll) / sum(count)), rel=1e-10)


def test_stride_equal_to_length_is_disjoint_windows(model64):
    doc, L = np.random.default_rng(1).integers(3, 512, size=50), 16  # chunks of 15 tokens + BOS: 15, 15, 15, 5
    total = 0.0
    for c in range(0, len(doc), L - 1):
        window = [BOS] + list(doc[c:c + L - 1])
        logp = torch.log_softmax(model64(torch.tensor([window]))[0].double(), -1)
        total -= sum(logp[i, window[i + 1]].item() for i in range(len(window) - 1))
    row = evaluate.perplexity(model64, [doc], [L], L, BOS)[0]
    assert row["windows"] == 4 and row["tokens"] == 50
    assert row["nll"] == pytest.approx(total, rel=1e-10)


def test_a_document_shorter_than_the_window_is_scored_whole_in_one_window_and_counted_short(model64):
    doc = np.random.default_rng(2).integers(3, 512, size=10)
    assert evaluate.window_plan(10, 32, 4) == [(0, 10, 0)]
    window = [BOS] + list(doc)
    logp = torch.log_softmax(model64(torch.tensor([window]))[0].double(), -1)
    expected = -sum(logp[i, window[i + 1]].item() for i in range(10))
    row = evaluate.perplexity(model64, [doc], [32], 4, BOS)[0]
    assert (row["windows"], row["tokens"], row["short"]) == (1, 10, 1)
    assert row["nll"] == pytest.approx(expected, rel=1e-10)


def test_each_window_feeds_the_model_bos_and_at_most_L_minus_1_document_tokens(model64):
    """What the model is fed, pinned: at L = 16, stride 4 on 40 tokens, window k holds BOS + x[4k : 4k + 15] and its
    targets score x_j (from the token before it) only where no earlier window did."""
    fed = []

    class Recorder:  # model.loss as perplexity() calls it, recorded
        def loss(self, tokens, targets, positions=None):
            fed.append((tokens[0].tolist(), targets[0].tolist()))
            return model64.loss(tokens, targets, positions)

    doc = np.random.default_rng(5).integers(3, 512, size=40)
    evaluate.perplexity(Recorder(), [doc], [16], 4, BOS)
    scored = 0
    for k, (tokens, targets) in enumerate(fed):
        begin, end = 4 * k, min(4 * k + 15, 40)
        assert tokens == [BOS, *doc[begin:end]]
        first = 0 if k == 0 else min(4 * (k - 1) + 15, 40)  # the previous window's end
        assert targets == [-100] * (first - begin) + list(doc[first:end]) + [-100]
        scored += end - first
    assert end == 40 and len(fed) == 8 and scored == 40  # starts 0, 4, ..., 28: the last reaches the end


def test_window_plan_slides_unless_told_to_truncate():
    assert evaluate.window_plan(50, 16, 8) == evaluate.window_plan(50, 16, 8, bos=True, truncate=False)
    assert len(evaluate.window_plan(50, 16, 8)) == 6  # starts 0, 8, ..., 40: the last reaches the end


@given(st.integers(1, 300), st.integers(2, 64), st.integers(1, 80), st.booleans(), st.booleans())
def test_windows_hold_at_most_L_tokens_and_score_every_token_exactly_once(n, length, stride, bos, truncate):
    plan = evaluate.window_plan(n, length, stride, bos, truncate)
    scored = [j for begin, end, first in plan for j in range(first, end)]
    assert all(end - begin + bos <= length and begin + (not bos) <= first for begin, end, first in plan)
    if truncate:
        assert scored == list(range(int(not bos), min(n, length - bos)))
    else:
        assert scored == list(range(int(not bos), n))  # in order, so each exactly once


@pytest.mark.parametrize("length", [1024, 3000])
@pytest.mark.parametrize("depth", [0.0, 0.37, 1.0])
def test_passkey_prompt_has_the_requested_token_length_and_holds_its_key_at_the_depth(micro, length, depth):
    tokenizer = Tokenizer(micro)
    ids = evaluate.passkey_prompt(tokenizer, length, 31415, depth)
    # the longest whose answer still fits: one more filler sentence (and the space before it) would not
    slack = max(len(tokenizer.encode(" " + s, bos=False)) for s in evaluate.FILLER) + 1
    answered = tokenizer.encode(tokenizer.decode(ids[1:]) + " 31415", bos=True)  # what a right answer makes
    assert answered[:len(ids)] == ids and length - slack < len(answered) <= length and ids[0] == tokenizer.bos_id
    alone = evaluate.passkey_prompt(tokenizer, length, 31415, depth, fit="prompt")  # the authors' bound
    assert length - slack < len(alone) <= length and len(alone) > len(ids)
    text = tokenizer.decode(ids)
    assert text.startswith(evaluate.TASK) and text.endswith(evaluate.QUESTION)
    assert "The pass key is 31415. Remember it. 31415 is the pass key." in text
    before, after = text.split("The pass key is 31415")
    ahead, behind = before.count(".") - 3, after.count(".") - 3  # filler sentences (TASK and key line: 3 each)
    fraction = ahead / (ahead + behind)
    assert fraction == pytest.approx(depth, abs=0.02)



@pytest.fixture
def stand_ins(monkeypatch):
    """evaluate.py decodes through generate.generate(model, ...); a stand-in model answers with its own generate."""
    monkeypatch.setattr(evaluate, "generate", lambda model, *args, **kwargs: model.generate(*args, **kwargs))


class Oracle:
    """A stand-in model (stand_ins) that reads the key from the prompt and answers it (or key + 1)."""
    args = types.SimpleNamespace(n_layers=1, sliding_window=None)  # what passkey reads to cache shared prefixes

    def __init__(self, tokenizer, wrong=False):
        self.tokenizer, self.wrong = tokenizer, wrong

    def generate(self, tokens, max_new_tokens, stop_ids=(), score=None, prompts=None):
        key = int(re.search(r"The pass key is (\d+)", self.tokenizer.decode(tokens[0].tolist())).group(1))
        ids = torch.tensor([self.tokenizer.encode(f" {key + self.wrong}. Remember it.", bos=False)[:max_new_tokens]])
        return ids if score is None else (ids, torch.zeros(1))  # certain of every token it is asked: log p(key) = 0


@pytest.mark.parametrize("wrong,accuracy", [(False, 1.0), (True, 0.0)])
def test_scorer_gives_one_to_a_model_that_answers_the_key_and_zero_to_one_that_does_not(micro, wrong, accuracy,
                                                                                      stand_ins):
    tokenizer = Tokenizer(micro)
    rows = evaluate.passkey(Oracle(tokenizer, wrong), tokenizer, [300, 600], trials=5, seed=3)
    assert [r["accuracy"] for r in rows] == [accuracy, accuracy]
    keys = [c["key"] for c in rows[0]["cases"]]
    same = [sum(a == b for a, b in zip(str(k), str(k + wrong))) / 5 for k in keys]  # key + 1: the last digit(s)
    assert [c["digits"] for c in rows[0]["cases"]] == same and rows[0]["digit_accuracy"] == pytest.approx(sum(same) / 5)
    assert all(c["key_logprob"] == 0.0 for r in rows for c in r["cases"]) and rows[0]["key_logprob"] == 0.0
    assert all(10_000 <= k < 100_000 for k in keys) and len(set(keys)) == 5  # 5-digit keys, §4.3
    again = evaluate.passkey(Oracle(tokenizer, wrong), tokenizer, [300], trials=5, seed=3)
    assert [c["key"] for c in again[0]["cases"]] == keys  # seeded: every model gets the same prompts
    assert evaluate.first_integer(" 4711. Remember") == 4711 and evaluate.first_integer("no digits") is None


class Answers:
    """A stand-in model (stand_ins) that answers `template` filled with the prompt's key, and keeps each
    prompt's text."""
    args = Oracle.args

    def __init__(self, tokenizer, template="{key}"):
        self.tokenizer, self.template, self.prompts = tokenizer, template, []
        self.by_key = {}  # key -> the prompt that asked it (passkey reads the deepest key first)

    def generate(self, tokens, max_new_tokens, stop_ids=(), score=None, prompts=None):
        self.prompts.append(self.tokenizer.decode(tokens[0].tolist()))
        key = int(re.search(r"The pass key is (\d+)", self.prompts[-1]).group(1))
        self.by_key[key] = self.prompts[-1]
        answer = self.template.format(key=key, other=key - 4321, head=str(key)[:3], tail=str(key)[3:])
        ids = torch.tensor([self.tokenizer.encode(answer, bos=False)[:max_new_tokens]])
        return ids if score is None else (ids, torch.zeros(1))  # log p(key) = 0, as Oracle


@pytest.mark.parametrize("template,passed", [
    (" {key}. Remember it.", True), ("{key}", True), (" The pass key is {key}.", True), (" pass key: {key}0", False),
    (" {other}, no: {key}", False), (" 9{key}", False), (" {key}0", False), (" {head} {tail}", False),
    (" {head}.{tail}", False), (" I do not know.", False)])
def test_a_passkey_answer_passes_only_when_its_first_integer_is_the_key(micro, template, passed, stand_ins):
    """§4.3's rule, as the authors' eval: the first integer of the answer must be the key. A key said second, or
    inside a longer number, or split, fails."""
    tokenizer = Tokenizer(micro)
    rows = evaluate.passkey(Answers(tokenizer, template), tokenizer, [300], trials=3, seed=0, new_tokens=40)
    assert [c["passed"] for c in rows[0]["cases"]] == [passed] * 3
    assert rows[0]["accuracy"] == float(passed)


def test_the_keys_depth_is_drawn_at_random_for_each_prompt_and_the_seed_decides_it(micro, stand_ins):
    """Without --depths every trial draws its key (5 digits) and its depth, uniform in [0, 1): the depths vary and
    cover the range, the key sits at that depth of the filler, and another seed draws other keys and depths."""
    tokenizer = Tokenizer(micro)
    model = Answers(tokenizer)
    cases = evaluate.passkey(model, tokenizer, [400], trials=40, seed=0)[0]["cases"]
    depths = [c["depth"] for c in cases]
    assert len(set(depths)) == 40 and min(depths) < 0.1 and max(depths) > 0.9 and 0.35 < np.mean(depths) < 0.65
    for case, text in ((c, model.by_key[c["key"]]) for c in cases):
        before, after = text.split(f"The pass key is {case['key']}.")
        ahead, behind = before.count(".") - 3, after.count(".") - 2  # filler sentences (TASK: 3; the key line: 2)
        assert ahead / (ahead + behind) == pytest.approx(case["depth"], abs=0.03)
    again = evaluate.passkey(Answers(tokenizer), tokenizer, [400], trials=40, seed=0)[0]["cases"]
    other = evaluate.passkey(Answers(tokenizer), tokenizer, [400], trials=40, seed=1)[0]["cases"]
    assert [(c["key"], c["depth"]) for c in again] == [(c["key"], c["depth"]) for c in cases]
    assert not {c["key"] for c in other} & {c["key"] for c in cases}
    assert not {c["depth"] for c in other} & set(depths)


@pytest.mark.parametrize("answer, key, digits", [
    (" 12345. Remember", 12345, 1.0), ("12355", 12345, 0.8), ("the key is 1234", 12345, 0.8),
    ("123456", 12345, 5 / 6), ("no digits", 12345, 0.0), ("54321", 12345, 0.2), ("1 2345", 12345, 0.2)])
def test_digit_accuracy_counts_the_keys_digits_right_place_by_place_in_the_first_integer(answer, key, digits):
    assert evaluate.digit_accuracy(answer, key) == pytest.approx(digits)


def test_key_logprob_is_the_teacher_forced_log_probability_of_the_keys_tokens(micro, model64):
    """Against a float64 full forward: log p of the tokens ' {key}' adds after the prompt, each given the rest."""
    tokenizer = Tokenizer(micro)
    (row,) = evaluate.passkey(model64, tokenizer, [200], trials=3, seed=5, new_tokens=2)
    for case in row["cases"]:
        ids = evaluate.passkey_prompt(tokenizer, 200, case["key"], case["depth"])
        full = tokenizer.encode(tokenizer.decode(ids[1:]) + f" {case['key']}", bos=True)  # a right answer's ids
        assert full[:len(ids)] == ids and tokenizer.decode(full[len(ids):]).strip() == str(case["key"])
        with torch.no_grad():
            logp = torch.log_softmax(model64(torch.tensor([full]))[0].double(), dim=-1)  # [T, V]
        want = sum(logp[i - 1, full[i]].item() for i in range(len(ids), len(full)))
        assert case["key_logprob"] == pytest.approx(want, rel=1e-10) and want < -1
    assert row["key_logprob"] == pytest.approx(sum(c["key_logprob"] for c in row["cases"]) / 3, rel=1e-12)


def test_passkey_reads_each_prompt_once_and_equals_the_two_forward_answer_and_key_logprob_in_float32(micro):
    """One prefill per prompt (the key's tokens decoded from its KV cache, then rewound for the greedy answer)
    against what passkey computed before, written out here: generate() alone for the answer, and a second full
    forward of prompt + key for log p(key). Same answers and digits; log p(key) within 1e-4 nats in float32."""
    tokenizer = Tokenizer(micro)
    model = from_pretrained(micro, dtype=torch.float32)
    prefills = []
    hook = model.model.layers[0].register_forward_hook(lambda m, args, out: prefills.append(args[0].shape[1]))
    rows = evaluate.passkey(model, tokenizer, [200, 300], trials=4, seed=7, new_tokens=6)
    hook.remove()
    assert sum(n > 1 for n in prefills) == 8  # one forward of more than one token per prompt: its prefill
    for row in rows:
        for case in row["cases"]:
            ids, right = evaluate.passkey_ids(tokenizer, row["length"], case["key"], case["depth"])
            with torch.no_grad():
                out = generate(model, torch.tensor([ids]), 6, stop_ids=[tokenizer.eos_id])[0].tolist()
                logp = torch.log_softmax(model(torch.tensor([ids + right]))[0], dim=-1)  # [T, V]
            out = out[:out.index(tokenizer.eos_id)] if tokenizer.eos_id in out else out
            assert case["answer"] == tokenizer.decode(out) and case["tokens"] == len(ids)
            want = sum(logp[i - 1, t].item() for i, t in enumerate(right, start=len(ids)))
            assert abs(case["key_logprob"] - want) < 1e-4 and want < -1


def test_every_issue_flag_exists_and_the_defaults_are_the_papers():
    parse = evaluate.build_parser().parse_args
    ppl = parse(["ppl"])
    assert (ppl.stride, ppl.docs, ppl.truncate, ppl.no_bos, ppl.rope, ppl.factor) == \
        (1024, 50, False, False, None, None)
    assert parse(["passkey"]).trials == 50
    ppl = parse(["ppl", "--model", "m", "--data", "d", "--text-field", "t", "--lengths", "64", "128", "--min-tokens",
                 "5", "--truncate", "--no-bos", "--rope", "yarn", "--factor", "4", "--original-window", "7", "--out",
                 "o", "--plot", "p", "--device", "cpu", "--dtype", "float64"])
    assert (ppl.lengths, ppl.min_tokens, ppl.truncate, ppl.no_bos, ppl.factor, ppl.dtype) == (
        [64, 128], 5, True, True, 4.0, "float64")
    passkey = parse(["passkey", "--depths", "0", "0.5", "--seed", "3", "--trials", "7", "--rope", "none"])
    assert (passkey.depths, passkey.seed, passkey.trials, passkey.rope) == ([0.0, 0.5], 3, 7, "none")


def test_ppl_and_passkey_commands_write_results_json_with_rope_override(micro, tmp_path, capsys):
    rng = np.random.default_rng(4)
    ids = np.concatenate([np.append(rng.integers(3, 512, size=n), 2) for n in (40, 70, 9)]).astype(np.int32)
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "r" / "ppl.json"
    evaluate.main(["ppl", "--model", str(micro), "--data", str(tmp_path / "ids.npy"), "--lengths", "16", "32",
                   "--stride", "8", "--rope", "linear", "--factor", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["rope"]["rope_type"] == "linear" and result["rope"]["factor"] == 2.0
    assert [r["documents"] for r in result["results"]] == [2, 2]  # the 9-token document is below --min-tokens 32
    assert [r["tokens"] for r in result["results"]] == [110, 110] and result["bos"] is True
    printed = capsys.readouterr().out.splitlines()  # the table says what it measured, and where it went
    assert printed[0] == (f"ppl | {result['label']} | model {micro} (linear rope x2 on L_c 32, theta 10000, "
                          f"max_position_embeddings 64) | data {tmp_path / 'ids.npy'}: 2 documents, stride 8")
    assert printed[-1] == f"wrote {out}"
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"body": " ".join(evaluate.FILLER) * k}) + "\n"
                                                 for k in (3, 4)))
    evaluate.main(["ppl", "--model", str(micro), "--data", str(tmp_path / "docs.jsonl"), "--text-field", "body",
                   "--lengths", "16", "--rope", "none", "--truncate", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["rope"]["rope_type"] == "default" and result["results"][0]["tokens"] == 2 * 15
    capsys.readouterr()
    evaluate.main(["passkey", "--model", str(micro), "--lengths", "200", "--trials", "2", "--depths", "0", "1",
                   "--new-tokens", "3", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [(r["depth"], r["trials"]) for r in result["results"]] == [(0.0, 2), (1.0, 2)]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"passkey | {result['label']} | model {micro} (plain RoPE, theta 10000, ")
    assert printed[0].endswith("| data: the Fig. 2a passkey prompt, seed 0") and printed[-1] == f"wrote {out}"
    model, tokenizer = from_pretrained(micro, dtype=torch.float32), Tokenizer(micro)
    for row in result["results"]:  # each case records the prompt it built and what the model answered to it
        for case in row["cases"]:
            ids = evaluate.passkey_prompt(tokenizer, 200, case["key"], case["depth"])
            assert case["tokens"] == len(ids) <= 200
            assert case["answer"] == tokenizer.decode(generate(model, torch.tensor([ids]), 3)[0].tolist())
            assert case["passed"] == (evaluate.first_integer(case["answer"]) == case["key"])
        assert row["accuracy"] == sum(c["passed"] for c in row["cases"]) / 2


def test_max_tokens_cuts_each_document_before_the_min_tokens_filter_as_the_authors_eval(micro, tmp_path, capsys):
    """Hand-worked: documents of 20, 12 and 40 tokens (BOS/EOS dropped first), --max-tokens 15 --min-tokens 15:
    the first is cut to x[0:15], the 12-token one is dropped, the third is cut to x[0:15] as well (the authors'
    eval_ppl.py: truncation=True, max_length=max_input_tokens - 1, then len >= min_input_tokens - 1)."""
    docs = [[1, *range(10, 30), 2], [1, *range(40, 52), 2], [1, *range(60, 100), 2]]
    np.save(tmp_path / "ids.npy", np.concatenate(docs).astype(np.int32))
    opts = evaluate.PplOptions(model=str(micro), data=str(tmp_path / "ids.npy"), max_tokens=15, min_tokens=15)
    documents, bos = evaluate.load_documents(opts, args_from_config(MICRO), 15)
    assert [d.tolist() for d in documents] == [list(range(10, 25)), list(range(60, 75))] and bos == BOS
    out = tmp_path / "ppl.json"
    evaluate.main(["ppl", "--model", str(micro), "--data", str(tmp_path / "ids.npy"), "--lengths", "8", "16",
                   "--stride", "4", "--max-tokens", "15", "--min-tokens", "15", "--out", str(out)])
    assert [r["tokens"] for r in json.loads(out.read_text())["results"]] == [30, 30]  # 2 documents x 15 tokens
    whole = tmp_path / "whole.json"
    evaluate.main(["ppl", "--model", str(micro), "--data", str(tmp_path / "ids.npy"), "--lengths", "8", "16",
                   "--stride", "4", "--min-tokens", "15", "--out", str(whole)])
    assert [r["tokens"] for r in json.loads(whole.read_text())["results"]] == [60, 60]  # 20 + 40 uncut
    capsys.readouterr()


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return exit_.value.code, err


@pytest.mark.parametrize("case,argv,message", [
    ("missing data", ["ppl", "--data", "nowhere.jsonl"], "nowhere.jsonl: not found"),
    ("no long document", ["ppl", "--data", "ids.npy", "--lengths", "4096"], "no document with >= 4096 tokens"),
    ("unknown rope", ["ppl", "--rope", "cubic"], "invalid choice: 'cubic'"),
    ("rope without factor", ["ppl", "--rope", "yarn", "--data", "ids.npy"], "--rope yarn needs --factor"),
    ("missing model", ["passkey", "--model", "no_model"], "config.json: not found"),
    ("template too long", ["passkey", "--lengths", "20"], "shorter than the bare template"),
    ("bad depth", ["passkey", "--depths", "1.5"], "--depths must lie in [0, 1]"),
    ("max below min", ["ppl", "--max-tokens", "10", "--min-tokens", "20"], "--max-tokens 10 < --min-tokens 20"),
])
def test_bad_input_prints_one_error_line_exits_2_and_writes_nothing(micro, tmp_path, capsys, case, argv, message):
    np.save(tmp_path / "ids.npy", np.arange(3, 103, dtype=np.int32))
    argv = [str(tmp_path / a) if a in ("ids.npy", "nowhere.jsonl", "no_model") else a for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(micro)]
    code, err = run_main(argv + ["--out", str(tmp_path / "r.json")], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "r.json").exists()


def test_plotting_without_matplotlib_is_one_clear_line(micro, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, err = run_main(["passkey", "--model", str(micro), "--plot", str(tmp_path / "f.png")], capsys)
    assert code == 2 and err == ["error: plotting needs matplotlib, which is not installed (pip install matplotlib)"]


class _RecordingPyplot:
    """Stands in for matplotlib.pyplot: records what would be drawn, writes a marker on savefig."""

    def __init__(self):
        self.lines, self.axes = [], []

    def subplots(self, rows, cols, **_):
        test = self

        class Ax:
            def plot(self, xs, ys, label=None, **_):
                test.lines.append((label, list(xs), list(ys)))

            def __getattr__(self, name):
                return lambda *a, **k: None

        self.axes = [Ax() for _ in range(cols)]
        fig = type("Fig", (), {"tight_layout": lambda self: None,
                               "savefig": lambda self, f, **k: Path(f).write_bytes(b"figure")})()
        return fig, [self.axes]

    def close(self, fig):
        pass


def test_plot_overlays_ppl_and_passkey_results(tmp_path, monkeypatch):
    plt = _RecordingPyplot()
    monkeypatch.setattr(evaluate, "_pyplot", lambda: plt)
    files = []
    for name, task, key in (("a", "ppl", "ppl"), ("b", "ppl", "ppl"), ("c", "passkey", "accuracy")):
        files.append(tmp_path / f"{name}.json")
        # two depths per length for passkey: the plot shows their mean
        depths = (0.0, 1.0) if task == "passkey" else (0,)
        rows = [{"length": L, key: 1.0 + L / 100 + d, "depth": d} for L in (128, 64) for d in depths]
        files[-1].write_text(json.dumps({"task": task, "label": name, "results": rows}))
    evaluate.main(["plot", *map(str, files), "--out", str(tmp_path / "fig.png")])
    assert len(plt.axes) == 2 and (tmp_path / "fig.png").read_bytes() == b"figure"
    assert [(label, xs) for label, xs, _ in plt.lines] == [("a", [64, 128]), ("b", [64, 128]), ("c", [64, 128])]
    assert [y for *_, ys in plt.lines for y in ys] == pytest.approx([1.64, 2.28, 1.64, 2.28, 2.14, 2.78])


def test_passkey_prefills_each_prompt_from_its_key_on_after_the_first(micro):
    """The prompts of a length share the filler before their keys: read deepest key first, every prompt after the
    first is prefilled from where it parts from the one before (its key line), not whole; the answers and log
    p(key) are those of prompts read whole (test_passkey_reads_each_prompt_once... checks them)."""
    tokenizer = Tokenizer(micro)
    model = from_pretrained(micro, dtype=torch.float32)
    fed = []
    hook = model.model.layers[0].register_forward_hook(lambda m, args, out: fed.append(args[0].shape[1]))
    (row,) = evaluate.passkey(model, tokenizer, [300], trials=6, seed=2, new_tokens=3)
    hook.remove()
    asked = [evaluate.passkey_ids(tokenizer, 300, c["key"], c["depth"])[0]
             for c in sorted(row["cases"], key=lambda c: -c["depth"])]
    want = [len(asked[0])]
    for before, ids in zip(asked, asked[1:]):
        same = next(i for i, (a, b) in enumerate(zip(before, ids)) if a != b)
        want.append(len(ids) - same)
    assert [n for n in fed if n > 1] == want
    assert sum(want) < 0.7 * sum(map(len, asked))  # these six depths: under 70 % of the tokens read whole
