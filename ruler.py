"""RULER's synthetic tasks (Hsieh et al. 2024): what to ask and how to score it; `evaluate.py ruler` runs them.

    python evaluate.py ruler --model DIR --lengths 4096 8192 16384 --tasks all --samples 50 --seed 0 --out ruler.json
    python -m pytest tests/test_ruler.py -q

This file is model-free: prompts (token ids) and expected answers in, scores and an effective length out.
evaluate.py decodes each prompt with the model (its `ruler` loop) and prints the table (print_ruler_table).
In order: the prompt-fitting search the passkey shares (fit_prompt), RULER's templates and task table, the four
generators (niah, variable_tracking, common_words, freq_words), one sample (ruler_sample), the scorer
(string_match_all), the averages and the effective length, the --tasks list and the table.

RULER (Hsieh et al. 2024, github.com/NVIDIA/RULER, scripts/synthetic.yaml and scripts/data/synthetic/): the 11
tasks that need only a tokenizer and the model, with RULER's prompts word for word (its "base" template: the task
template followed by the answer prefix) and its new-token counts. niah_*: needles "One of the special magic
numbers for KEY is: VALUE." among noise lines, other keys' needles, or a text; vt: follow VAR B = VAR A chains;
cwe / fwe: the most common words of a numbered list / of Zipf-distributed coded text. Where RULER downloads,
this does without: its noise sentences replace Paul Graham's essays unless --haystack gives a text (the JSON says
which), nonce words ("tonek-gural") replace wonderwords' English ones, numbers and uuids come from the seeded
generator. A prompt holds at most L - new tokens tokens (BOS and answer prefix included; RULER counts the answer
in L, so decoding stays within positions < L), fitted by the passkey's search on the haystack size; a task whose
shortest prompt cannot fit is skipped ("-"). Samples depend only on (--seed, task, L, index) and the tokenizer.
Greedy decoding with the KV cache, cut at EOS; a sample scores RULER's string_match_all (the fraction of expected
strings in the prediction, ignoring case); a cell is its mean in % over --samples prompts. The effective length is
the largest L whose average over the tasks, and every shorter L's, is >= --threshold: by default 85.6, RULER's
(Llama-2-7B's average at 4k over its 13 tasks); a small model needs a lower one to say anything.
"""
import itertools
import math
import re
import string
import uuid
import zlib
from typing import NamedTuple

import numpy as np

from data import find_files, needs_tokenizer, read_records

# ---------------------------------------------------------------- fitting a prompt to L tokens

def fit_prompt(encode, length: int, hint: int | None = None) -> tuple[int, list[int]] | None:
    """(n, encode(n)) for the largest filler count n >= 0 whose prompt has at most `length` tokens; None when
    even encode(0) is longer. A prompt's length in the model's tokens is only known by tokenising it, and each
    call tokenises a whole prompt (a 128k-token one takes a good fraction of a second), so: start at `hint` (the
    previous prompt's n) or at an estimate from two probes, gallop 1, 2, 4, ... units to a bracket, bisect.
    encode(n) must grow with n; passkey and RULER prompts do."""
    sizes, ids = {}, {}

    def fits(n):
        if n not in sizes:
            ids[n] = encode(n)
            sizes[n] = len(ids[n])
        return sizes[n] <= length

    if not fits(0):
        return None
    if hint is None:  # tokens per filler unit from a 16-unit probe
        fits(16)
        hint = int((length - sizes[0]) * 16 / max(sizes[16] - sizes[0], 1))
    step = 1
    if fits(max(hint, 0)):  # invariant: lo fits, hi does not
        lo = max(hint, 0)
        while fits(lo + step):
            lo, step = lo + step, 2 * step
        hi = lo + step
    else:
        hi = hint
        while hi - step > 0 and not fits(hi - step):
            hi, step = hi - step, 2 * step
        lo = max(hi - step, 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, ids[lo]


# The synthetic tasks that need only a tokenizer and the model, as RULER's scripts/synthetic.yaml configures them
# and scripts/data/synthetic/*.py generates them; the prompts are RULER's task templates followed by their answer
# prefixes (its "base" model template), word for word.

# One needle asked for: RULER rewrites the plural template ("Some" -> "A", "are" -> "is", "numbers" -> "number")
NIAH_ONE = ("A special magic {kind} is hidden within the following text. Make sure to memorize it. I will quiz you "
            "about the {kind} afterwards.\n{context}\nWhat is the special magic {kind} for {query} mentioned in the "
            "provided text? The special magic {kind} for {query} mentioned in the provided text is")
NIAH_MANY = ("Some special magic {kind} are hidden within the following text. Make sure to memorize it. I will quiz "
             "you about the {kind} afterwards.\n{context}\nWhat are all the special magic {kind} for {query} "
             "mentioned in the provided text? The special magic {kind} for {query} mentioned in the provided text are")
NEEDLE = "One of the special magic {kind} for {key} is: {value}."
VT_PROMPT = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
             "Question: Find all variables that are assigned the value {query} in the text above. Answer: According "
             "to the chain(s) of variable assignment in the text above, {num_v} variables are assigned the value "
             "{query}, they are: ")
CWE_PROMPT = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
              "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above "
              "list? Answer: The top 10 words that appear most often in the list are:")
FWE_PROMPT = ("Read the following coded text and track the frequency of each coded word. Find the three most "
              "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
              "the dots '....'. What are the three most frequently appeared words in the above coded text? Answer: "
              "According to the coded text above, the three most frequently appeared words are:")
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."  # RULER's
# noise haystack unit, one line per repetition (its niah.py); the same five sentences are the passkey's filler


class Niah(NamedTuple):
    haystack: str  # noise: NOISE lines; essay: a text (--haystack); needle: distractor needles with other keys
    key: str  # words | uuids
    value: str  # numbers | uuids
    keys: int  # needles' keys (all but the queried ones are distractors)
    values: int  # values (needles) per key
    queries: int  # keys asked at once


NIAH = {
    "niah_single_1": Niah("noise", "words", "numbers", 1, 1, 1),
    "niah_single_2": Niah("essay", "words", "numbers", 1, 1, 1),
    "niah_single_3": Niah("essay", "words", "uuids", 1, 1, 1),
    "niah_multikey_1": Niah("essay", "words", "numbers", 4, 1, 1),
    "niah_multikey_2": Niah("needle", "words", "numbers", 1, 1, 1),
    "niah_multikey_3": Niah("needle", "uuids", "uuids", 1, 1, 1),
    "niah_multivalue": Niah("essay", "words", "numbers", 1, 4, 1),
    "niah_multiquery": Niah("essay", "words", "numbers", 4, 1, 4),
}
RULER_TASKS = (*NIAH, "vt", "cwe", "fwe")
NEW_TOKENS = {**dict.fromkeys(NIAH, 128), "vt": 30, "cwe": 120, "fwe": 50}  # RULER's tokens_to_generate
ESSAY_DEPTHS = np.round(np.linspace(0, 100, 40)).astype(int) / 100  # RULER's 40 needle depths in a text
CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"  # nonce words "tonek", "gural", ...: 14^3 5^2 = 68,600 of them
VT_HOPS, VT_ICL_TOKENS = 4, 500  # one chain of 4 hops; a one-shot example of <= 500 tokens


class DoesNotFit(ValueError):
    """A task's shortest prompt plus its new tokens exceeds the length: the cell is skipped, not an error."""


def nonce_words(rng):
    """Distinct pronounceable 5-letter words, forever (RULER draws English words from wonderwords, a download).
    Equal length, so no answer hides inside another word; short, as each costs prompt tokens (cwe at 4k is
    tight). A stream: the first k never depend on how many are drawn after them."""
    seen = set()
    while True:
        c, v = rng.integers(len(CONSONANTS), size=3), rng.integers(len(VOWELS), size=2)
        word = CONSONANTS[c[0]] + VOWELS[v[0]] + CONSONANTS[c[1]] + VOWELS[v[1]] + CONSONANTS[c[2]]
        if word not in seen:
            seen.add(word)
            yield word


def magic(kind: str, rng, words) -> str:
    """A key or value: a 7-digit number, a uuid4 built from the generator's bits, or RULER's "adj-noun" shape."""
    if kind == "numbers":
        return str(rng.integers(10**6, 10**7))
    if kind == "uuids":
        return str(uuid.UUID(bytes=rng.bytes(16), version=4))
    return f"{next(words)}-{next(words)}"


def insert_at_depths(units: list[str], needles: list[str], depths) -> list[str]:
    """units with needle j after the first int(depths[j] * len(units)) of them (depths ascending)."""
    out, start = [], 0
    for needle, depth in zip(needles, depths):
        at = int(depth * len(units))
        out += units[start:at] + [needle]
        start = at
    return out + units[start:]


def read_haystack(path, text_field="text") -> list[str]:
    """--haystack: the words of a text corpus in file order (any text format data.py reads: .txt, .jsonl[.gz|.zst],
    .parquet, a folder or glob of them)."""
    files = find_files(path, "--haystack")
    if not needs_tokenizer(files):
        raise ValueError(f"--haystack {path}: token ids, not text")
    words = [word for text in read_records(files, text_field) if isinstance(text, str) for word in text.split()]
    if not words:
        raise ValueError(f"--haystack {path}: no text")
    return words


def niah(spec: Niah, rng, stream, essay):
    """Needle(s) in a haystack (RULER niah.py): (render(n) -> prompt with n haystack units, answers, record)."""
    words, keys, values = nonce_words(rng), [], []
    while len(keys) < max(spec.keys, spec.queries):
        key = magic(spec.key, rng, words)
        if key not in keys:
            keys.append(key)
            values.append([magic(spec.value, rng, words) for _ in range(spec.values)])
    needles = [NEEDLE.format(kind=spec.value, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    rng.shuffle(needles)
    if spec.haystack == "essay":  # depths from RULER's grid, without replacement; elsewhere any haystack position
        depths = np.sort(rng.choice(ESSAY_DEPTHS, size=len(needles), replace=False))
    else:
        depths = np.sort(rng.random(len(needles)))
    asked = rng.permutation(len(keys))[:spec.queries]
    query = ", ".join(keys[i] for i in asked[:-1]) + ", and " + keys[asked[-1]] if len(asked) > 1 else keys[asked[0]]
    one = spec.queries * spec.values == 1  # RULER's singular wording ("A special magic number is ...")
    template, kind = (NIAH_ONE, spec.value[:-1]) if one else (NIAH_MANY, spec.value)

    def distractors():  # another key's needle, a stream of them
        g = stream()
        w = nonce_words(g)
        while True:
            key = magic(spec.key, g, w)
            if key not in keys:
                yield NEEDLE.format(kind=spec.value, key=key, value=magic(spec.value, g, w))

    def render(n):
        if spec.haystack == "essay" and essay:  # RULER: a text's first n words, needles between its sentences
            text = " ".join(essay[i % len(essay)] for i in range(n))
            sentences = re.split(r"(?<=[.!?])\s+", text) if text else []
            context = " ".join(insert_at_depths(sentences, needles, depths))
        else:
            units = list(itertools.islice(distractors(), n)) if spec.haystack == "needle" else [NOISE] * n
            context = "\n".join(insert_at_depths(units, needles, depths))
        return template.format(kind=kind, context=context, query=query)

    return render, [v for i in asked for v in values[i]], dict(depths=depths.tolist())


def variable_tracking(rng, tokenizer, icl_tokens: int):
    """RULER variable_tracking.py: a chain VAR A = 12345, VAR B = VAR A, ... in noise lines, after a one-shot
    example of the same task (3-letter names, <= icl_tokens tokens) with its answer."""
    def chain(letters, other_value=None):
        names = []
        while len(names) < VT_HOPS + 1:
            name = "".join(rng.choice(list(string.ascii_uppercase), size=letters))
            if name not in names:
                names.append(name)
        value = other_value
        while value == other_value:
            value = int(rng.integers(10000, 99999))
        # the trailing space after "VAR x" is RULER's
        return names, value, [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a} " for a, b in zip(names, names[1:])]

    def prompt(lines, depths, value, n):
        context = "\n".join(insert_at_depths([NOISE] * n, lines, depths))
        return VT_PROMPT.format(context=context, query=value, num_v=VT_HOPS + 1)

    names, value, lines = chain(5)
    depths = np.sort(rng.random(len(lines)))  # chain order kept: line j follows line j - 1
    icl_names, icl_value, icl_lines = chain(3, value)
    icl_depths = np.sort(rng.random(len(icl_lines)))
    fitted = fit_prompt(lambda n: tokenizer.encode(prompt(icl_lines, icl_depths, icl_value, n), bos=False),
                        icl_tokens)
    example = prompt(icl_lines, icl_depths, icl_value, fitted[0] if fitted else 0) + " " + " ".join(icl_names)

    def render(n):
        return example + "\n\n" + prompt(lines, depths, value, n)

    return render, names, dict(depths=depths.tolist())


def common_words(rng, stream, length: int):
    """RULER common_words_extraction.py: a numbered list where 10 words appear 30 times (6 below 4k tokens) and
    the others 3 times (once), after a one-shot example of the same task with its answer."""
    def numbered(words):
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))

    def word_list(words, common, uncommon, g):
        entries = words[:10] * common + words[10:] * uncommon
        g.shuffle(entries)
        return entries

    if length < 4096:  # RULER's lighter lists below 4k tokens
        shot, shot_common, shot_uncommon, common, uncommon = 20, 3, 1, 6, 1
    else:
        shot, shot_common, shot_uncommon, common, uncommon = 40, 10, 3, 30, 3
    shot_words = list(itertools.islice(nonce_words(rng), shot))
    example = CWE_PROMPT.format(context=numbered(word_list(shot_words, shot_common, shot_uncommon, rng))) + " " + \
        numbered(shot_words[:10])

    def render(n):  # n uncommon words; the stream's first 10 are the common ones whatever n is
        g = stream()
        words = list(itertools.islice(nonce_words(g), 10 + n))
        return example + "\n" + CWE_PROMPT.format(context=numbered(word_list(words, common, uncommon, g)))

    return render, list(itertools.islice(nonce_words(stream()), 10)), dict(repeats=[common, uncommon])


def zipf_counts(n: int, vocab: int) -> list[int]:
    """RULER freq_words_extraction.py (alpha 2): rank k of `vocab` words appears int(n k^-2 / zeta(2)) times."""
    return [int(n / k**2 / (math.pi**2 / 6)) for k in range(1, vocab + 1)]


def freq_words(rng, stream, budget: int):
    """RULER freq_words_extraction.py: coded 6-letter words with Zipf(2) counts; rank 1 is the noise '...', the
    answer is ranks 2-4. RULER's vocabulary is budget // 50 words; at least 5 here so that the answer exists."""
    vocab = ["..."]
    while len(vocab) < max(budget // 50, 5):
        word = "".join(rng.choice(list(string.ascii_lowercase), size=6))
        if word not in vocab:
            vocab.append(word)
    base = next(n for n in itertools.count(1) if zipf_counts(n, 5)[3] > zipf_counts(n, 5)[4])  # unambiguous top 3

    def render(n):
        g = stream()
        words = [w for w, c in zip(vocab, zipf_counts(base + n, len(vocab))) for _ in range(c)]
        g.shuffle(words)
        return FWE_PROMPT.format(context=" ".join(words))

    return render, vocab[1:4], dict(base_words=base)


def ruler_sample(task: str, tokenizer, length: int, seed: int = 0, index: int = 0, essay=None, hint=None) -> dict:
    """One prompt of `task` (ids, BOS if any, at most length - NEW_TOKENS[task] tokens: RULER counts the answer's
    tokens in the length) and its expected answers. A pure function of (seed, task, length, index), the tokenizer
    and --haystack: the question from one generator, the haystack from another re-created for each candidate
    size, so the largest size that fits is the same whatever `hint` the search starts from."""
    seq = [seed, zlib.crc32(task.encode()), length, index]
    rng = np.random.default_rng(seq)

    def stream():
        return np.random.default_rng(seq + [1])

    budget = length - NEW_TOKENS[task]
    if task in NIAH:
        render, answers, record = niah(NIAH[task], rng, stream, essay)
    elif task == "vt":  # RULER's 500-token example; at most L / 4, so that short lengths keep room for the task
        render, answers, record = variable_tracking(rng, tokenizer, min(VT_ICL_TOKENS, length // 4))
    elif task == "cwe":
        render, answers, record = common_words(rng, stream, length)
    else:
        render, answers, record = freq_words(rng, stream, budget)
    fitted = fit_prompt(lambda n: tokenizer.encode(render(n), bos=True), budget, hint) if budget > 0 else None
    if fitted is None:
        bare = len(tokenizer.encode(render(0), bos=True))
        raise DoesNotFit(f"{task}: the shortest prompt ({bare} tokens) + {NEW_TOKENS[task]} new tokens > {length}")
    return dict(index=index, text=render(fitted[0]), ids=fitted[1], units=fitted[0], answers=answers, **record)


def postprocess(prediction: str) -> str:
    """RULER's postprocess_pred: strip, control characters to newlines, strip."""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def string_match_all(prediction: str, answers: list[str]) -> float:
    """RULER's string_match_all for one sample: the fraction of answers found in the prediction, ignoring case."""
    return sum(a.lower() in prediction.lower() for a in answers) / len(answers)


def effective_length(averages: dict, threshold: float) -> int | None:
    """RULER's effective length: the largest L whose average, and every shorter L's, is >= threshold (None:
    not even the shortest). Lengths whose average is None (a task did not fit) are left out."""
    best = None
    for length in sorted(averages):
        if averages[length] is not None:
            if averages[length] < threshold:
                break
            best = length
    return best


def ruler_averages(rows, lengths) -> list[dict]:
    """Per length: the mean score over the tasks that fit; `complete` when every task did."""
    averages = []
    for L in lengths:
        scores = [r["score"] for r in rows if r["length"] == L]
        ran = [s for s in scores if s is not None]
        averages.append(dict(length=L, average=float(np.mean(ran)) if ran else None, tasks=len(ran),
                             complete=len(ran) == len(scores)))
    return averages


def ruler_tasks(spec: str) -> list[str]:
    """--tasks: 'all' or a comma list of RULER_TASKS names."""
    names = list(RULER_TASKS) if spec.strip() == "all" else [t.strip() for t in spec.split(",") if t.strip()]
    for name in names or [spec]:
        if name not in RULER_TASKS:
            raise ValueError(f"--tasks: unknown task {name!r}; valid: all, {', '.join(RULER_TASKS)}")
    return list(dict.fromkeys(names))


def print_ruler_table(result: dict):
    """Task x length scores (%), the average per length, and the effective length."""
    lengths = [a["length"] for a in result["averages"]]
    score = {(r["task"], r["length"]): r["score"] for r in result["results"]}
    width = max(len(t) for t in [*result["tasks"], "average"])
    print(f"{'task':<{width}}" + "".join(f"{L:>9}" for L in lengths))
    for task in result["tasks"]:
        cells = (score.get((task, L)) for L in lengths)
        print(f"{task:<{width}}" + "".join("        -" if s is None else f"{s:>9.1f}" for s in cells))
    print(f"{'average':<{width}}" + "".join("        -" if a["average"] is None else
                                            f"{a['average']:>8.1f}{' ' if a['complete'] else '*'}"
                                            for a in result["averages"]))
    if not all(a["complete"] for a in result["averages"]):
        print("-: the prompt + new tokens cannot fit the length; *: over the tasks that fit, left out of the verdict")
    effective, threshold = result["effective_length"], result["threshold"]
    verdict = ("below the shortest length" if effective is None else
               f"{effective}" + (" (every length passes: at least this)" if effective == max(lengths) else ""))
    print(f"effective length: {verdict} (threshold {threshold:g}: the average there and at every shorter length)")
