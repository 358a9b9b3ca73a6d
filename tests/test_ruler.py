"""evaluate.py ruler: RULER's synthetic tasks, their prompts, fitting, scoring, the effective length and the CLI.

    python -m pytest tests/test_ruler.py -x -q

Every check re-derives what it expects from the prompt text with its own parsing (regular expressions, a
Counter, following the variable chain), never from the generator's internals. A 600-piece sentencepiece model
trained here on English-like text (identity normalisation, so that text and ids round-trip) and a micro LLaMA
keep the file to seconds on two CPU cores.
"""
import io
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import evaluate
import ruler
from data import Tokenizer
from hf import PRESETS, args_from_config, save_pretrained
from model import Transformer

MICRO = dict(PRESETS["tiny"], hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, intermediate_size=128, vocab_size=640, max_position_embeddings=64)
NEEDLE = re.compile(r"One of the special magic (numbers|uuids) for (\S+) is: (\S+)\.")
# NVIDIA/RULER's own configuration, copied by hand from scripts/synthetic.yaml at commit c3f5e3b4f87f97e048793bb5
# 10a3a6b19a46bf3a (2026-07-22), its 11 tasks that need no download (qa_1 / qa_2 need SQuAD, HotpotQA), and each
# task's tokens_to_generate from scripts/data/synthetic/constants.py at the same commit. The tests read what a task
# must be from here, never from ruler.py's tables, so a change that makes scores incomparable with RULER's fails.
SYNTHETIC_YAML = {
    "niah_single_1": ("niah", dict(type_haystack="noise", type_needle_k="words", type_needle_v="numbers",
                                   num_needle_k=1, num_needle_v=1, num_needle_q=1)),
    "niah_single_2": ("niah", dict(type_haystack="essay", type_needle_k="words", type_needle_v="numbers",
                                   num_needle_k=1, num_needle_v=1, num_needle_q=1)),
    "niah_single_3": ("niah", dict(type_haystack="essay", type_needle_k="words", type_needle_v="uuids",
                                   num_needle_k=1, num_needle_v=1, num_needle_q=1)),
    "niah_multikey_1": ("niah", dict(type_haystack="essay", type_needle_k="words", type_needle_v="numbers",
                                     num_needle_k=4, num_needle_v=1, num_needle_q=1)),
    "niah_multikey_2": ("niah", dict(type_haystack="needle", type_needle_k="words", type_needle_v="numbers",
                                     num_needle_k=1, num_needle_v=1, num_needle_q=1)),
    "niah_multikey_3": ("niah", dict(type_haystack="needle", type_needle_k="uuids", type_needle_v="uuids",
                                     num_needle_k=1, num_needle_v=1, num_needle_q=1)),
    "niah_multivalue": ("niah", dict(type_haystack="essay", type_needle_k="words", type_needle_v="numbers",
                                     num_needle_k=1, num_needle_v=4, num_needle_q=1)),
    "niah_multiquery": ("niah", dict(type_haystack="essay", type_needle_k="words", type_needle_v="numbers",
                                     num_needle_k=1, num_needle_v=1, num_needle_q=4)),
    "vt": ("variable_tracking", dict(type_haystack="noise", num_chains=1, num_hops=4)),
    "cwe": ("common_words_extraction", dict(freq_cw=30, freq_ucw=3, num_cw=10)),
    "fwe": ("freq_words_extraction", dict(alpha=2.0)),
}
TOKENS_TO_GENERATE = {"niah": 128, "variable_tracking": 30, "common_words_extraction": 120, "freq_words_extraction": 50}
NIAH_TASKS = [t for t, (kind, _) in SYNTHETIC_YAML.items() if kind == "niah"]


def niah_spec(task):
    """A niah task's configuration in ruler.Niah's terms: RULER's niah.py asks num_needle_q of
    max(num_needle_k, num_needle_q) keys (`args.num_needle_k = max(args.num_needle_k, args.num_needle_q)`)."""
    a = SYNTHETIC_YAML[task][1]
    return ruler.Niah(a["type_haystack"], a["type_needle_k"], a["type_needle_v"],
                         max(a["num_needle_k"], a["num_needle_q"]), a["num_needle_v"], a["num_needle_q"])
ESSAY = ("It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith slipped quickly "
         "through the glass doors! Was it not the case? The hallway smelt of boiled cabbage and old rag mats. ") * 3


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread per test


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A micro model with a tokenizer.model trained on RULER-like text, in one folder."""
    import sentencepiece as spm

    path = tmp_path_factory.mktemp("ruler") / "model"
    model = Transformer(args_from_config(MICRO))
    model.init_weights(seed=0)
    save_pretrained(model, path)
    rng = np.random.default_rng(0)
    words = list(__import__("itertools").islice(ruler.nonce_words(rng), 300))
    text = [ruler.NIAH_MANY, ruler.NIAH_ONE, ruler.VT_PROMPT, ruler.CWE_PROMPT, ruler.FWE_PROMPT,
            ruler.NOISE, ESSAY] * 5 + [" ".join(f"{i}. {w}" for i, w in enumerate(words[k:k + 30]))
                                          for k in range(0, 300, 30)]
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=proto, vocab_size=600, model_type="bpe", byte_fallback=True,
        split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, minloglevel=2)
    (path / "tokenizer.model").write_bytes(proto.getvalue())
    return path


@pytest.fixture(scope="module")
def tok(folder):
    return Tokenizer(folder)


def context_of(text: str, begin: str, end: str) -> str:
    """The text between the last `begin` and the `end` after it (the main prompt, after any one-shot example)."""
    start = text.rindex(begin) + len(begin)
    return text[start:text.index(end, start)]


def check_fits(sample, tok, task, length):
    """ids are the prompt's own tokens with BOS; with RULER's new tokens they fit L, and fill it up to a unit."""
    ids, budget = sample["ids"], length - TOKENS_TO_GENERATE[SYNTHETIC_YAML[task][0]]
    assert ids == tok.encode(sample["text"], bos=True) and ids[0] == tok.bos_id
    assert len(ids) <= budget
    assert len(ids) > budget - 80  # one more haystack unit (a needle, a noise line, 3 list entries) would not fit


# ---------------------------------------------------------------- needles in a haystack


def test_the_task_table_is_rulers_synthetic_yaml():
    assert ruler.RULER_TASKS == tuple(SYNTHETIC_YAML)
    assert ruler.NIAH == {task: niah_spec(task) for task in NIAH_TASKS}
    assert ruler.NEW_TOKENS == {task: TOKENS_TO_GENERATE[kind] for task, (kind, _) in SYNTHETIC_YAML.items()}
    assert ruler.VT_HOPS == SYNTHETIC_YAML["vt"][1]["num_hops"]  # one chain (num_chains 1) by construction


@pytest.mark.parametrize("task", NIAH_TASKS)  # every task, not those hypothesis happens to draw
@settings(max_examples=3)
@given(seed=st.integers(0, 2**32 - 1), length=st.sampled_from([512, 1024, 2048]), index=st.integers(0, 999))
def test_niah_needles_appear_as_specified_at_their_depths_and_answer_the_question(tok, task, seed, length, index):
    spec, sample = niah_spec(task), ruler.ruler_sample(task, tok, length, seed, index)
    text, units, depths = sample["text"], sample["units"], sample["depths"]
    check_fits(sample, tok, task, length)
    many = spec.queries * spec.values > 1
    kind = spec.value if many else spec.value[:-1]
    question = re.search(rf"\nWhat (?:are all|is) the special magic {kind} for (.+) mentioned in the provided text\?",
                         text)
    assert text.startswith(("Some" if many else "A") + f" special magic {kind} ")
    assert text.endswith(f" The special magic {kind} for {question.group(1)} mentioned in the provided text "
                         + ("are" if many else "is"))
    asked = re.split(r", and |, ", question.group(1))
    assert len(asked) == spec.queries == len(set(asked))
    needles = NEEDLE.findall(text)
    assert all(k == spec.value for k, *_ in needles)  # the needle sentence names the plural value type
    by_key = {}
    for _, key, value in needles:
        by_key.setdefault(key, []).append(value)
    chunks = [sample["answers"][i:i + spec.values] for i in range(0, len(sample["answers"]), spec.values)]
    assert [sorted(by_key[key]) for key in asked] == [sorted(c) for c in chunks]  # the asked keys' values, in order
    assert all(len(by_key[key]) == spec.values for key in asked) and len(chunks) == len(asked)
    patterns = {"numbers": r"\d{7}", "uuids": r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                "words": r"[a-z]{5}-[a-z]{5}"}
    assert all(re.fullmatch(patterns[spec.value], v) for _, _, v in needles)
    assert all(re.fullmatch(patterns[spec.key], k) for _, k, _ in needles)

    lines = context_of(text, "afterwards.\n", "\nWhat ").split("\n")
    if spec.haystack == "needle":  # distractors: needles of other keys, one per haystack unit
        real = [i for i, line in enumerate(lines) if NEEDLE.fullmatch(line).group(2) in asked]
        assert len(lines) == units + spec.keys * spec.values and len(by_key) == units + spec.keys
    else:  # noise lines (the essay tasks too, without --haystack)
        real = [i for i, line in enumerate(lines) if line != ruler.NOISE]
        assert lines.count(ruler.NOISE) == units and len(real) == spec.keys * spec.values
        assert len(by_key) == spec.keys and all(NEEDLE.fullmatch(lines[i]) for i in real)
    assert depths == sorted(depths) and len(depths) == len(real)
    if spec.haystack == "essay":  # RULER's grid of 40 depths, each used at most once
        assert all(round(100 * d) in np.round(np.linspace(0, 100, 40)) for d in depths)
        assert len(set(depths)) == len(depths)
    for j, (i, depth) in enumerate(zip(real, depths)):
        assert i - j == int(depth * units)  # haystack units before the j-th needle
        at = len("\n".join(lines[:i]))  # the same in characters, give or take a unit and the needles
        slack = (max(map(len, lines)) + 1) * (len(real) + 1) / len("\n".join(lines))
        assert abs(at / len("\n".join(lines)) - depth) <= slack


@pytest.mark.parametrize("task", [t for t in NIAH_TASKS if SYNTHETIC_YAML[t][1]["type_haystack"] == "essay"])
def test_a_text_haystack_puts_the_needles_between_its_sentences_at_the_depths(tok, task):
    words = ESSAY.split()
    for index in range(4):
        sample = ruler.ruler_sample(task, tok, 1024, 5, index, essay=words)
        check_fits(sample, tok, task, 1024)
        context = context_of(sample["text"], "afterwards.\n", "\nWhat ")
        n = sample["units"]
        assert n > len(words)  # the text repeats, as RULER's does
        haystack = " ".join(words[i % len(words)] for i in range(n))
        sentences = re.split(r"(?<=[.!?]) ", haystack)
        spots = [m.start() for m in NEEDLE.finditer(context)]
        assert len(spots) == niah_spec(task).keys * niah_spec(task).values == len(sample["depths"])
        for spot, depth in zip(spots, sample["depths"]):
            before = NEEDLE.sub("", context[:spot]).split()  # the haystack words ahead of this needle
            assert before == " ".join(sentences[:int(depth * len(sentences))]).split()
        assert NEEDLE.sub("", context).split() == haystack.split()  # nothing lost, nothing added


@pytest.mark.parametrize("task", [t for t, (_, a) in SYNTHETIC_YAML.items() if a.get("type_haystack") != "essay"])
def test_a_text_haystack_leaves_the_other_tasks_as_ruler_builds_them(tok, task):
    """synthetic.yaml gives these a noise or needle haystack (vt: noise; cwe / fwe: their own word lists): the
    --haystack text never enters their prompts, which are those made without it."""
    length = 8192 if task == "cwe" else 1024  # cwe's 30 / 3 repeats from 4k on, which this tokenizer overfills
    sample = ruler.ruler_sample(task, tok, length, 5, 0, essay=ESSAY.split())
    assert sample == ruler.ruler_sample(task, tok, length, 5, 0)
    assert not {"Winston", "cabbage", "thirteen."} & set(sample["text"].split())


# ---------------------------------------------------------------- variable tracking, common and frequent words


@settings(max_examples=10)
@given(seed=st.integers(0, 2**32 - 1), length=st.sampled_from([512, 1024, 2048]), index=st.integers(0, 999))
def test_vt_answer_is_the_chain_followed_from_the_queried_value(tok, seed, length, index):
    sample = ruler.ruler_sample("vt", tok, length, seed, index)
    text = sample["text"]
    check_fits(sample, tok, "vt", length)
    main = text[text.rindex("Memorize and track"):]
    value = re.search(r"assigned the value (\d{5}) in the text above", main).group(1)
    assert main.endswith(f"5 variables are assigned the value {value}, they are: ")
    lines = context_of(text, "text.\n\n", "\nQuestion:").split("\n")
    chain = [re.fullmatch(rf"VAR ([A-Z]{{5}}) = {value}", line) for line in lines]
    names = [next(m.group(1) for m in chain if m)]
    while True:  # follow VAR next = VAR previous
        follow = [m.group(1) for line in lines if (m := re.fullmatch(rf"VAR ([A-Z]{{5}}) = VAR {names[-1]} ", line))]
        assert len(follow) <= 1
        if not follow:
            break
        names.append(follow[0])
    assert names == sample["answers"] and len(names) == 5  # one chain, 4 hops
    assert sum(line.startswith("VAR ") for line in lines) == 5 and lines.count(ruler.NOISE) == sample["units"]
    spots = [i for i, line in enumerate(lines) if line.startswith("VAR ")]
    assert [i - j for j, i in enumerate(spots)] == [int(d * sample["units"]) for d in sample["depths"]]
    example = text[:text.rindex("Memorize and track")]  # the one-shot example, answered, 3-letter names
    shot = re.search(r"they are:  ([A-Z]{3}(?: [A-Z]{3}){4})\n\n$", example).group(1).split()
    shot_value = re.search(r"VAR [A-Z]{3} = (\d{5})\n", example).group(1)
    assert shot_value != value and f"VAR {shot[1]} = VAR {shot[0]} " in example
    assert len(tok.encode(example[:example.rindex("  ") + 1], bos=False)) <= min(500, length // 4) or \
        example.count(ruler.NOISE) == 0


@settings(max_examples=8)
@given(seed=st.integers(0, 2**32 - 1), length=st.sampled_from([2048, 3072, 8192]), index=st.integers(0, 999))
def test_cwe_answer_is_the_ten_words_counted_most_often(tok, seed, length, index):
    sample = ruler.ruler_sample("cwe", tok, length, seed, index)
    check_fits(sample, tok, "cwe", length)
    common, uncommon = (30, 3) if length >= 4096 else (6, 1)  # RULER: fewer repeats below 4k
    entries = re.findall(r"(\d+)\. ([a-z]+)", context_of(sample["text"], "appear most often.\n", "\nQuestion:"))
    assert [int(i) for i, _ in entries] == list(range(1, len(entries) + 1))
    counts = Counter(w for _, w in entries)
    top = [w for w, c in counts.items() if c == common]
    assert sorted(top) == sorted(sample["answers"]) and len(top) == 10
    assert all(c == uncommon for w, c in counts.items() if w not in top) and len(counts) == 10 + sample["units"]
    shot = sample["text"][:sample["text"].index("\nBelow is")]  # the one-shot example answers its own list
    shot_counts = Counter(re.findall(r"\d+\. ([a-z]+)", context_of(shot, "often.\n", "\nQuestion:")))
    answered = re.findall(r"\d+\. ([a-z]+)", shot[shot.index("are:"):])
    assert sorted(answered) == sorted(w for w, _ in shot_counts.most_common(10))
    assert min(shot_counts[w] for w in answered) > max(c for w, c in shot_counts.items() if w not in answered)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**32 - 1), length=st.sampled_from([256, 512, 1024, 4096]), index=st.integers(0, 999))
def test_fwe_answer_is_the_three_most_frequent_coded_words_with_zipf_counts(tok, seed, length, index):
    sample = ruler.ruler_sample("fwe", tok, length, seed, index)
    check_fits(sample, tok, "fwe", length)
    words = context_of(sample["text"], "coded words. ", "\nQuestion:").split(" ")
    counts = Counter(words)
    ranked = [w for w, _ in counts.most_common() if w != "..."] + [None]
    assert sorted(ranked[:3]) == sorted(sample["answers"])
    assert counts[ranked[2]] > counts.get(ranked[3], 0)  # no tie for third place
    n, zeta2 = sample["base_words"] + sample["units"], math.pi**2 / 6  # zeta(2), Basel
    assert counts["..."] == math.floor(n / zeta2)  # rank 1 is the noise word
    for rank, word in enumerate(sample["answers"], start=2):
        assert counts[word] == math.floor(n / (zeta2 * rank**2))
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in ranked[:-1])


# ---------------------------------------------------------------- fitting and determinism


@settings(max_examples=40)
@given(base=st.integers(0, 50), steps=st.lists(st.integers(1, 9), min_size=1, max_size=200),
       length=st.integers(0, 1200), hint=st.one_of(st.none(), st.integers(0, 400)))
def test_fit_prompt_finds_the_largest_count_that_fits_from_any_hint(base, steps, length, hint):
    sizes = [base] + [base + s for s in np.cumsum(steps).tolist()]

    def encode(n):  # a prompt growing by steps[n] tokens per unit, then by 1
        return [7] * (sizes[n] if n < len(sizes) else sizes[-1] + n - len(sizes) + 1)

    fitted = ruler.fit_prompt(encode, length, hint)
    fitting = [n for n in range(len(sizes) + length + 2) if len(encode(n)) <= length]
    assert fitted == (None if not fitting else (max(fitting), encode(max(fitting))))


@pytest.mark.parametrize("task", SYNTHETIC_YAML)
def test_samples_depend_only_on_seed_task_length_and_index(tok, task):
    length = 8192 if task == "cwe" else 1024
    one = ruler.ruler_sample(task, tok, length, seed=7, index=3)
    assert ruler.ruler_sample(task, tok, length, seed=7, index=3) == one
    for hint in (0, one["units"] // 2, one["units"] + 40):  # the search's start changes nothing
        assert ruler.ruler_sample(task, tok, length, seed=7, index=3, hint=hint) == one
    assert ruler.ruler_sample(task, tok, length, seed=8, index=3)["text"] != one["text"]
    assert ruler.ruler_sample(task, tok, length, seed=7, index=4)["text"] != one["text"]
    assert ruler.ruler_sample(task, tok, length, seed=7, index=4)["answers"] != one["answers"]


def test_a_task_that_cannot_fit_the_length_says_so(tok):
    with pytest.raises(ruler.DoesNotFit, match=r"cwe: the shortest prompt \(\d+ tokens\) \+ 120 new tokens > 512"):
        ruler.ruler_sample("cwe", tok, 512)
    with pytest.raises(ruler.DoesNotFit, match="128 new tokens > 100"):
        ruler.ruler_sample("niah_single_1", tok, 100)


# ---------------------------------------------------------------- scoring and the verdict


def test_string_match_all_is_the_case_blind_fraction_of_answers_found():
    score = ruler.string_match_all
    assert score("The special magic number is 1234567.", ["1234567"]) == 1.0
    assert score("It is 1234568", ["1234567"]) == 0.0
    assert score("3F2504E0-4F89-41D3-9A0C-0305E82C3301!", ["3f2504e0-4f89-41d3-9a0c-0305e82c3301"]) == 1.0
    assert score("1111111, 3333333 and more", ["1111111", "2222222", "3333333", "4444444"]) == 0.5
    assert score("1. tonek 2. gural", ["TONEK", "gural", "vibos"]) == pytest.approx(2 / 3)
    assert score("", ["x"]) == 0.0
    assert ruler.postprocess("  ABC\tDEF\x00GHI \n") == "ABC\nDEF\nGHI"


@pytest.mark.parametrize("averages,threshold,expected", [
    ({4096: 90.0, 8192: 86.0, 16384: 80.0, 32768: 88.0}, 85.6, 8192),  # a later recovery does not count
    ({4096: 85.6, 8192: 85.59}, 85.6, 4096),  # at the threshold passes
    ({4096: 80.0, 8192: 95.0}, 85.6, None),  # not even the shortest
    ({128: None, 256: 90.0, 512: 91.0}, 85.6, 512),  # a length where a task did not fit is left out
    ({256: 10.0, 128: 30.0, 512: 21.0}, 20.0, 128),  # unsorted input
    ({}, 50.0, None),
])
def test_effective_length_is_the_longest_run_of_passing_lengths_from_the_shortest(averages, threshold, expected):
    assert ruler.effective_length(averages, threshold) == expected



@pytest.fixture
def stand_ins(monkeypatch):
    """evaluate.py decodes through generate.generate(model, ...); a stand-in model answers with its own generate."""
    monkeypatch.setattr(evaluate, "generate", lambda model, *args, **kwargs: model.generate(*args, **kwargs))


class Oracle:
    """A stand-in model (stand_ins): answers a known prompt with all its answers, or with the first half
    before EOS and the rest after it (generation stops at EOS, so the rest must not count)."""

    def __init__(self, tok, answers_of, half=False):
        self.tok, self.answers_of, self.half = tok, answers_of, half

    def generate(self, tokens, max_new_tokens, stop_ids=(), score=None, prompts=None):
        answers = self.answers_of[tuple(tokens[0].tolist())]
        cut = len(answers) // 2 if self.half else len(answers)
        ids = self.tok.encode(" " + ", ".join(answers[:cut]), bos=False) + [self.tok.eos_id] + \
            self.tok.encode(" " + ", ".join(answers[cut:]), bos=False)
        return torch.tensor([(ids + [0] * max_new_tokens)[:max_new_tokens]])


@pytest.mark.parametrize("half,score", [(False, 100.0), (True, 50.0)])
def test_runner_scores_an_oracle_in_percent_and_stops_at_eos(tok, half, score, stand_ins):
    tasks, lengths = ["niah_multivalue", "niah_multiquery", "fwe"], [512, 1024]
    answers_of = {tuple(s["ids"]): s["answers"] for L in lengths for t in tasks for i in range(3)
                  for s in [ruler.ruler_sample(t, tok, L, 1, i)]}
    rows = evaluate.ruler(Oracle(tok, answers_of, half), tok, lengths, tasks, samples=3, seed=1)
    niah = [r for r in rows if r["task"] != "fwe"]
    assert [(r["length"], r["task"]) for r in rows] == [(L, t) for L in lengths for t in tasks]
    assert all(r["score"] == score for r in niah)  # 4 answers each: 2 of 4 before EOS
    assert all(r["score"] == (100.0 if not half else 33.33) for r in rows if r["task"] == "fwe")  # 1 of 3, rounded
    case = rows[0]["cases"][0]
    assert case["prediction"] == ", ".join(case["answers"][:2 if half else 4]) and case["tokens"] <= 512 - 128


class Silent:
    """A stand-in model (stand_ins): answers EOS at once."""

    def __init__(self, tok):
        self.tok = tok

    def generate(self, tokens, max_new_tokens, stop_ids=(), score=None, prompts=None):
        return torch.tensor([[self.tok.eos_id]])


def test_the_seed_reaches_every_ruler_prompt(tok, stand_ins):
    """ruler()'s seed decides every prompt: seed 1 twice asks the same, seed 2 asks other needles, chains, words."""
    tasks = ["niah_single_1", "niah_multikey_3", "vt", "fwe"]
    asked = {seed: [c["answers"] for r in evaluate.ruler(Silent(tok), tok, [512], tasks, samples=2, seed=seed)
                    for c in r["cases"]] for seed in (1, 2)}
    again = [c["answers"] for r in evaluate.ruler(Silent(tok), tok, [512], tasks, samples=2, seed=1)
             for c in r["cases"]]
    assert len(asked[1]) == 8 and asked[1] == again
    assert all(a != b for a, b in zip(asked[1], asked[2]))


# ---------------------------------------------------------------- the command line


def test_ruler_command_writes_the_results_json_and_the_table(folder, tok, tmp_path, capsys):
    out, tasks, lengths = tmp_path / "r" / "ruler.json", ["niah_single_1", "vt", "fwe"], [128, 512]
    argv = ["ruler", "--model", str(folder), "--lengths", "512", "128", "--tasks", ",".join(tasks), "--samples", "2",
            "--seed", "3", "--threshold", "0", "--rope", "linear", "--factor", "2", "--out", str(out)]
    evaluate.main(argv)
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["task"] == "ruler" and result["rope"]["rope_type"] == "linear" and result["seed"] == 3
    assert result["tasks"] == tasks and result["haystack"].startswith("noise")
    rows = {(r["length"], r["task"]): r for r in result["results"]}
    assert list(rows) == [(L, t) for L in lengths for t in tasks]  # lengths ascending
    for (L, task), r in rows.items():
        try:
            ruler.ruler_sample(task, tok, L, 3, 0)
        except ruler.DoesNotFit as e:
            assert r["score"] is None and r["skipped"] == str(e) and "new tokens > " in str(e)
            continue
        assert len(r["cases"]) == 2 and r["new_tokens"] == TOKENS_TO_GENERATE[SYNTHETIC_YAML[task][0]]
        for i, c in enumerate(r["cases"]):
            assert c == dict(c, index=i, answers=ruler.ruler_sample(task, tok, L, 3, i)["answers"])
            assert c["tokens"] + r["new_tokens"] <= L and isinstance(c["prediction"], str) and 0 <= c["score"] <= 1
            assert {"units", "depths"} <= set(c)
        assert r["score"] == pytest.approx(100 * np.mean([c["score"] for c in r["cases"]]), abs=0.01)
    assert rows[(128, "niah_single_1")]["score"] is None  # 128 new tokens leave no room
    assert all(rows[(512, t)]["score"] is not None for t in tasks)
    averages = {a["length"]: a for a in result["averages"]}
    assert not averages[128]["complete"] and averages[512]["complete"] and averages[512]["tasks"] == 3
    assert result["effective_length"] == 512  # threshold 0: every complete length passes; 128 is left out
    assert re.search(r"^niah_single_1 +- +\d+\.\d$", table, re.M) and "effective length: 512" in table
    title = table.splitlines()[0]  # what was measured, above the table; where it went, below
    assert title.startswith(f"ruler | {result['label']} | model {folder} (linear rope x2 on L_c ") and \
        title.endswith(f"| data: RULER's prompts, haystack {result['haystack']}, seed 3")
    assert table.splitlines()[-1] == f"wrote {out}"
    first = json.loads(out.read_text())
    evaluate.main(argv)  # the same run again: the same JSON but for the timings
    second = json.loads(out.read_text())

    def untimed(r):
        r = dict(r, wall_s=None, results=[dict(x, seconds=None, tokens_per_s=None) for x in r["results"]])
        return json.dumps(r, sort_keys=True)
    assert untimed(first) == untimed(second)


def test_ruler_table_states_the_effective_length(capsys):
    rows = [dict(length=L, task=t, score=s) for L, t, s in
            [(4096, "vt", 100.0), (4096, "cwe", 90.0), (8192, "vt", 90.0), (8192, "cwe", 70.0)]]
    averages = ruler.ruler_averages(rows, [4096, 8192])
    assert [a["average"] for a in averages] == [95.0, 80.0]
    ruler.print_ruler_table(dict(task="ruler", tasks=["vt", "cwe"], results=rows, averages=averages, threshold=85.6,
                                    effective_length=ruler.effective_length({4096: 95.0, 8192: 80.0}, 85.6)))
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["task", "4096", "8192"] and table[1].split() == ["vt", "100.0", "90.0"]
    assert table[3].split() == ["average", "95.0", "80.0"] and table[4].startswith("effective length: 4096 ")


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(argv)
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("argv,message", [
    (["--tasks", "niah_single_1,niah_single_9"], "--tasks: unknown task 'niah_single_9'; valid: all, niah_single_1, "
     "niah_single_2, niah_single_3, niah_multikey_1, niah_multikey_2, niah_multikey_3, niah_multivalue, "
     "niah_multiquery, vt, cwe, fwe"),
    (["--tasks", ""], "--tasks: unknown task ''"),
    (["--samples", "0"], "--samples must be >= 1"),
    (["--threshold", "120"], "--threshold is a percentage in [0, 100]"),
    (["--haystack", "nowhere.txt"], "--haystack nowhere.txt: not found"),
    (["--haystack", "bad.jsonl"], "BAD:2: not a JSON object with a text 'text' field"),
    (["--haystack", "bad.csv"], "--haystack BADCSV: unsupported file type"),
])
def test_bad_ruler_input_is_one_error_line_exit_2_and_nothing_written(folder, tmp_path, capsys, argv, message):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    (tmp_path / "bad.csv").write_text("a,b\n")
    argv = [str(tmp_path / a) if a in ("bad.jsonl", "bad.csv") else a for a in argv]
    code, err = run_main(["ruler", "--model", str(folder), "--lengths", "512", *argv,
                          "--out", str(tmp_path / "r.json")], capsys)
    message = message.replace("BADCSV", str(tmp_path / "bad.csv")).replace("BAD", str(tmp_path / "bad.jsonl"))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "r.json").exists()


def test_haystack_file_feeds_the_essay_tasks(folder, tmp_path, monkeypatch):
    """--haystack is the text the essay tasks' prompts are made of, as the model is fed them: the prompt of
    niah_single_2 without its needle is the file's words, repeated; niah_single_1's is noise lines."""
    (tmp_path / "essays.jsonl").write_text("".join(json.dumps({"body": p}) + "\n" for p in ESSAY.split(". ")))
    out, fed = tmp_path / "r.json", []

    def greedy_answer(model, tokenizer, ids, new_tokens, device):  # records what the model would read
        fed.append(tokenizer.decode(ids))
        return ""

    monkeypatch.setattr(evaluate, "greedy_answer", greedy_answer)
    evaluate.main(["ruler", "--model", str(folder), "--lengths", "512", "--tasks", "niah_single_2,niah_single_1",
                   "--samples", "1", "--haystack", str(tmp_path / "essays.jsonl"), "--text-field", "body",
                   "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["haystack"] == str(tmp_path / "essays.jsonl")
    words = " ".join(ESSAY.split(". ")).split()
    assert ruler.read_haystack(tmp_path / "essays.jsonl", "body") == words
    essay, noise = (context_of(text, "afterwards.\n", "\nWhat ") for text in fed)
    haystack = NEEDLE.sub("", essay).split()
    assert len(haystack) > len(words) and haystack == [words[i % len(words)] for i in range(len(haystack))]
    assert set(noise.split("\n")) == {ruler.NOISE, NEEDLE.search(noise).group()}


class _Recorder:
    """matplotlib.pyplot stand-in: records plotted lines and horizontal lines."""

    def __init__(self):
        self.lines, self.hlines = [], []

    def subplots(self, rows, cols, **_):
        rec = self

        class Ax:
            def plot(self, xs, ys, label=None, **_):
                rec.lines.append((label, list(xs), list(ys)))

            def axhline(self, y, **_):
                rec.hlines.append(y)

            def __getattr__(self, name):
                return lambda *a, **k: None

        fig = type("Fig", (), {"tight_layout": lambda self: None,
                               "savefig": lambda self, f, **k: Path(f).write_bytes(b"png")})()
        return fig, [[Ax() for _ in range(cols)]]

    def close(self, fig):
        pass


def test_plot_draws_ruler_average_vs_length_with_the_threshold(tmp_path, monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(evaluate, "_pyplot", lambda: rec)
    averages = [dict(length=256, average=None, tasks=0, complete=False), dict(length=512, average=61.5, tasks=2,
                                                                              complete=True)]
    (tmp_path / "r.json").write_text(json.dumps(dict(task="ruler", label="pose", threshold=50.0, averages=averages,
                                                     results=[dict(length=512, task="vt", score=61.5)])))
    evaluate.main(["plot", str(tmp_path / "r.json"), "--out", str(tmp_path / "f.png")])
    assert rec.lines == [("pose", [512], [61.5])] and rec.hlines == [50.0]
    assert (tmp_path / "f.png").read_bytes() == b"png"
