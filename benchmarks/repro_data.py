"""The corpora of the CPU reproduction (benchmarks/reproduce.sh), built offline from Python's standard library.

    python benchmarks/repro_data.py --out runs/repro/data --window 128 --target 1024

Every training example starts at its document's start (BOS at position 0, as in the authors' code and as evaluation
feeds every window), so a document gives one window per epoch; the files are therefore cut at line breaks into
pieces, each one a document of its own, so that the windows cover the whole text rather than only file heads.

pretrain.jsonl  the stdlib train split (the .py files train.py embeds; every 10th file is held out for evaluation)
                cut into pieces of >= L_c + 1 tokens, plus passkey documents (§4.3's prompt with its answer inside
                the first L_c + 1 tokens, then filler), each with its own key, so the base model learns retrieval
                inside its window — the skill LLaMA brings to the paper's Fig. 2a.
finetune.jsonl  the same files cut into pieces of >= L_t + 1 tokens, plus --finetune-passkey-fraction passkey
                documents like the pre-training ones (short: L_c + 1 tokens). Every method (PoSE, full-length,
                RandPos) reads the same documents: full-length takes each one's first min(L_x, L_t) tokens, so a
                passkey document is a short sequence for it, as a short Pile document is in the paper's runs.
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
from evaluate import FILLER, passkey_text  # noqa: E402


def passkey_document(tokenizer, rng, window: int) -> str:
    """A §4.3 passkey prompt and its answer within the first window + 1 tokens (BOS included), so one training
    window holds the key line, the question and the answer as targets; filler after the answer makes the
    document longer than that (train.py keeps documents of >= L_c + 1 tokens). The number of filler sentences
    before the question is drawn from the upper half of what fits; the key's depth is uniform."""
    key, depth = int(rng.integers(10_000, 100_000)), float(rng.random())

    def prompt(n):
        return f"{passkey_text(key, n, round(depth * n))} {key}."

    most = 0
    while len(tokenizer.encode(prompt(most + 1), bos=True)) <= window + 1:
        most += 1
    text = prompt(int(rng.integers(most // 2, most + 1)))
    while len(tokenizer.encode(text, bos=True, eos=True)) < window + 2:
        text += " " + FILLER[int(rng.integers(len(FILLER)))]
    return text


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
    p.add_argument("--max-bytes", type=int, default=12_000_000, help="stdlib text to use")
    p.add_argument("--eval-chars", type=int, default=12_000, help="eval.jsonl: each file's first characters")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not 0 < a.window <= a.target:
        p.error(f"need 0 < --window {a.window} <= --target {a.target}")
    for name in ("passkey_fraction", "finetune_passkey_fraction"):
        if not 0 <= getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(a, name)} must be in [0, 1)")
    tokenizer = Tokenizer(default_tokenizer())
    rng = np.random.default_rng(a.seed)
    code = default_texts("train", a.max_bytes)
    short = [piece for text in code for piece in pieces(tokenizer, text, a.window + 1)]
    long = [piece for text in code for piece in pieces(tokenizer, text, a.target + 1)]
    if not long:
        sys.exit(f"error: no stdlib file has >= --target + 1 = {a.target + 1} tokens")

    def with_passkeys(texts, fraction):
        n_keys = round(len(texts) * fraction / (1 - fraction))
        texts = texts + [passkey_document(tokenizer, rng, a.window) for _ in range(n_keys)]
        return [texts[i] for i in rng.permutation(len(texts))], n_keys

    pretrain, pre_keys = with_passkeys(short, a.passkey_fraction)
    finetune, ft_keys = with_passkeys(long, a.finetune_passkey_fraction)
    a.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(a.out / "pretrain.jsonl", pretrain)
    write_jsonl(a.out / "finetune.jsonl", finetune)
    write_jsonl(a.out / "eval.jsonl", (t[:a.eval_chars] for t in default_texts("eval", a.max_bytes)))
    print(f"pretrain.jsonl: {len(short)} pieces of >= {a.window + 1} tokens from {len(code)} stdlib files + "
          f"{pre_keys} passkey documents; finetune.jsonl: {len(long)} pieces of >= {a.target + 1} tokens + "
          f"{ft_keys} passkey documents")

if __name__ == "__main__":
    main()
