"""The corpora of the CPU reproduction (benchmarks/reproduce.sh), built offline from Python's standard library.

    python benchmarks/repro_data.py --out runs/repro/data --window 128 --target 1024

Every training example starts at its document's start (BOS at position 0, as in the authors' code and as evaluation
feeds every window), so a document gives one window per epoch; the files are therefore cut at line breaks into
pieces, each one a document of its own, so that the windows cover the whole text rather than only file heads.

pretrain.jsonl  the stdlib train split (the .py files train.py embeds; every 10th file is held out for evaluation)
                cut into pieces of >= L_c + 1 tokens, plus passkey documents (§4.3's prompt with its answer inside
                the first L_c + 1 tokens, then filler), each with its own key, so the base model learns retrieval
                inside its window — the skill LLaMA brings to the paper's Fig. 2a. With --varied-keys a share of
                them words the key line and question otherwise and hides other numbers (distractors) in the
                filler, so that the answer must be found by what precedes it, not as "the only number";
                --copy-fraction adds pieces with a span of random words written twice (an induction task).
finetune.jsonl  the same files cut into pieces of >= L_t + 1 tokens, plus --finetune-passkey-fraction passkey
                documents like the pre-training ones (short: L_c + 1 tokens) and --finetune-long-fraction of
                L_t + 1 tokens (prompt and answer within L_t + 1). Every method (PoSE, full-length, RandPos)
                reads the same documents: full-length takes each one's first min(L_x, L_t) tokens, so a short
                passkey document is a short sequence for it, as a short Pile document is in the paper's runs,
                while PoSE's skip puts a short document's key and question up to L_t apart.
eval.jsonl      held out: the stdlib eval split (every 10th file, in neither file above) with each file cut to its
                first --eval-chars characters, so a fixed number of documents (evaluate.py --docs) spans many files.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data import Tokenizer, default_texts, default_tokenizer  # noqa: E402
from evaluate import FILLER, TASK, passkey_text  # noqa: E402


# --varied-keys: what the key is called, how its line and the question are worded (the first is evaluate.py's)
NAMES = ("pass key", "secret code", "magic number", "access number", "lucky number", "room number")


def varied_text(rng, key: int, n: int, before: int, most: int = 3) -> str:
    """A passkey prompt in other words: the key's name, the key line and the question drawn at random, and up to
    three distractor lines (other names, other numbers; at most `most`) among the n filler sentences."""
    name, *others = rng.permutation(NAMES)
    info = rng.choice([f"The {name} is {key}. Remember it. {key} is the {name}.", f"The {name} is {key}.",
                       f"Remember this: the {name} is {key}."])
    filler = [FILLER[int(i)] for i in rng.integers(len(FILLER), size=n)]
    lines = [" ".join(filler[:before]), info, " ".join(filler[before:])]
    for other in others[:min(most, int(rng.integers(0, 4)))]:  # distractors go anywhere but after the question
        lines.insert(int(rng.integers(len(lines) + 1)), f"The {other} is {int(rng.integers(10_000, 100_000))}.")
    return "\n".join([TASK, *lines, f"What is the {name}? The {name} is"])


def passkey_document(tokenizer, rng, window: int, varied: bool = False) -> str:
    """A §4.3 passkey prompt and its answer within the first window + 1 tokens (BOS included), so one training
    window holds the key line, the question and the answer as targets; filler after the answer makes the
    document longer than that (train.py keeps documents of >= L_c + 1 tokens). The number of filler sentences
    before the question is drawn from the upper half of what fits; the key's depth is uniform. varied: the
    prompt is varied_text's (same key and depth rule)."""
    key, depth = int(rng.integers(10_000, 100_000)), float(rng.random())
    seed, distractors = int(rng.integers(2**31)) if varied else 0, 3  # (no draw unless varied: the same stream)

    def prompt(n):  # the same wording for every n: the search below only changes the filler's length
        text = varied_text(np.random.default_rng(seed), key, n, round(depth * n), distractors) if varied else \
            passkey_text(key, n, round(depth * n))
        return f"{text} {key}."

    while len(tokenizer.encode(prompt(0), bos=True)) > window + 1:  # a short window: fewer distractors
        if not varied or distractors == 0:
            raise ValueError(f"window {window} is shorter than the bare passkey prompt and its answer")
        distractors -= 1

    most = 0
    while len(tokenizer.encode(prompt(most + 1), bos=True)) <= window + 1:
        most += 1
    text = prompt(int(rng.integers(most // 2, most + 1)))
    while len(tokenizer.encode(text, bos=True, eos=True)) < window + 2:
        text += " " + FILLER[int(rng.integers(len(FILLER)))]
    return text


def copy_document(rng, piece: str) -> str:
    """A piece with a span of 4-16 random words (letters and 5-digit numbers) written at two random line breaks:
    the second copy is predictable only by finding the first (an induction head's task)."""
    words = [str(int(rng.integers(10_000, 100_000))) if rng.random() < 0.5 else
             "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=int(rng.integers(3, 8))))
             for _ in range(int(rng.integers(4, 17)))]
    lines = piece.splitlines(keepends=True)
    first, second = sorted(int(i) for i in rng.integers(len(lines) + 1, size=2))
    span = " ".join(words) + "\n"
    return "".join(lines[:first] + [span] + lines[first:second] + [span] + lines[second:])


def pieces(tokenizer, text: str, min_tokens: int):
    """Consecutive pieces of a file, cut at line breaks, each of >= min_tokens tokens (BOS and EOS counted as
    train.py tokenises); the tail too short for one more piece is dropped."""
    piece, count = [], 0
    for line in text.splitlines(keepends=True):
        piece.append(line)
        count += len(tokenizer.encode(line, bos=False))  # a cheap estimate; checked exactly below
        if count + 2 >= min_tokens and len(tokenizer.encode("".join(piece), bos=True, eos=True)) >= min_tokens:
            yield "".join(piece)
            piece, count = [], 0


def write_jsonl(path: Path, texts):
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("w") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")
    os.replace(tmp, path)  # nothing half-written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for pretrain.jsonl and finetune.jsonl")
    p.add_argument("--window", type=int, required=True, help="L_c: passkey documents are just longer")
    p.add_argument("--target", type=int, required=True, help="L_t: fine-tuning documents are longer")
    p.add_argument("--passkey-fraction", type=float, default=0.25, help="share of pre-training documents")
    p.add_argument("--finetune-passkey-fraction", type=float, default=0.25, help="share of fine-tuning documents")
    p.add_argument("--finetune-long-fraction", type=float, default=0.0,
                   help="share of fine-tuning documents that are passkey prompts of L_t + 1 tokens")
    p.add_argument("--varied-keys", type=float, default=0.0,
                   help="share of passkey documents worded otherwise, with distractor numbers (varied_text)")
    p.add_argument("--copy-fraction", type=float, default=0.0,
                   help="share of pre-training pieces with a random span written twice (copy_document)")
    p.add_argument("--max-bytes", type=int, default=12_000_000, help="stdlib text to use")
    p.add_argument("--eval-chars", type=int, default=12_000, help="eval.jsonl: each file's first characters")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not 0 < a.window <= a.target:
        p.error(f"need 0 < --window {a.window} <= --target {a.target}")
    for name in ("passkey_fraction", "finetune_passkey_fraction", "finetune_long_fraction", "varied_keys",
                 "copy_fraction"):
        if not 0 <= getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(a, name)} must be in [0, 1)")
    tokenizer = Tokenizer(default_tokenizer())
    rng = np.random.default_rng(a.seed)
    code = default_texts("train", a.max_bytes)
    short = [piece for text in code for piece in pieces(tokenizer, text, a.window + 1)]
    long = [piece for text in code for piece in pieces(tokenizer, text, a.target + 1)]
    if a.finetune_passkey_fraction + a.finetune_long_fraction >= 1:
        p.error("--finetune-passkey-fraction + --finetune-long-fraction must be < 1")
    if not long:
        sys.exit(f"error: no stdlib file has >= --target + 1 = {a.target + 1} tokens")

    def keys(n, window):
        return [passkey_document(tokenizer, rng, window, bool(a.varied_keys and rng.random() < a.varied_keys))
                for _ in range(n)]  # (no draw without --varied-keys: the documents of the earlier builder)

    def shuffled(texts):
        return [texts[i] for i in rng.permutation(len(texts))]

    short = [copy_document(rng, t) if a.copy_fraction and rng.random() < a.copy_fraction else t for t in short]
    pre_keys = round(len(short) * a.passkey_fraction / (1 - a.passkey_fraction))
    try:
        pretrain = shuffled(short + keys(pre_keys, a.window))
    except ValueError as e:  # a --window too short for the template: one line, nothing written
        p.error(str(e))
    rest = 1 - a.finetune_passkey_fraction - a.finetune_long_fraction  # the stdlib pieces' share
    ft_keys, ft_long = (round(len(long) * f / rest) for f in (a.finetune_passkey_fraction, a.finetune_long_fraction))
    finetune = shuffled(long + keys(ft_keys, a.window) + keys(ft_long, a.target))
    a.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(a.out / "pretrain.jsonl", pretrain)
    write_jsonl(a.out / "finetune.jsonl", finetune)
    write_jsonl(a.out / "eval.jsonl", (t[:a.eval_chars] for t in default_texts("eval", a.max_bytes)))
    print(f"pretrain.jsonl: {len(short)} pieces of >= {a.window + 1} tokens from {len(code)} stdlib files + "
          f"{pre_keys} passkey documents; finetune.jsonl: {len(long)} pieces of >= {a.target + 1} tokens + "
          f"{ft_keys} + {ft_long} passkey documents of L_c + 1 / L_t + 1 tokens")

if __name__ == "__main__":
    main()
