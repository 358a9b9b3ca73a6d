"""The corpora of the CPU reproduction (benchmarks/reproduce.sh), built offline from Python's standard library.

    python benchmarks/repro_data.py --out runs/repro/data --window 128 --target 1024

pretrain.jsonl  the stdlib train split (the .py files train.py embeds; every 10th file is held out for evaluation)
                plus passkey documents (§4.3's prompt with its answer) just longer than the window L_c, so the
                base model learns retrieval inside its window — the skill LLaMA brings to the paper's Fig. 2a.
finetune.jsonl  the train-split files of >= L_t + 1 tokens only, no passkeys: every method (PoSE, full-length,
                RandPos) draws from the same long documents, and passkey retrieval beyond L_c stays zero-shot,
                as in the paper (fine-tuned on the Pile, §4.1; passkey is never trained).
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
from evaluate import passkey_text  # noqa: E402
from data import Tokenizer, default_texts, default_tokenizer  # noqa: E402


def passkey_document(tokenizer, rng, window: int) -> str:
    """A §4.3 passkey prompt followed by its answer, the fewest filler sentences giving > window tokens (with
    BOS and EOS, as train.py tokenises it), so a training window of L_c tokens holds key line, question and answer."""
    key, depth = int(rng.integers(10_000, 100_000)), float(rng.random())
    n = 0
    while True:
        text = f"{passkey_text(key, n, round(depth * n))} {key}."
        if len(tokenizer.encode(text, bos=True, eos=True)) >= window + 2:
            return text
        n += 1


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
    p.add_argument("--passkey-fraction", type=float, default=0.2, help="share of pretraining documents")
    p.add_argument("--max-bytes", type=int, default=12_000_000, help="stdlib text to use")
    p.add_argument("--eval-chars", type=int, default=12_000, help="eval.jsonl: each file's first characters")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not 0 < a.window <= a.target:
        p.error(f"need 0 < --window {a.window} <= --target {a.target}")
    if not 0 <= a.passkey_fraction < 1:
        p.error(f"--passkey-fraction {a.passkey_fraction} must be in [0, 1)")
    tokenizer = Tokenizer(default_tokenizer())
    rng = np.random.default_rng(a.seed)
    code = default_texts("train", a.max_bytes)
    lengths = [len(tokenizer.encode(t, bos=True, eos=True)) for t in code]
    n_keys = round(len(code) * a.passkey_fraction / (1 - a.passkey_fraction))
    pretrain = code + [passkey_document(tokenizer, rng, a.window) for _ in range(n_keys)]
    finetune = [t for t, n in zip(code, lengths) if n >= a.target + 1]
    if not finetune:
        sys.exit(f"error: no stdlib file has >= --target + 1 = {a.target + 1} tokens")
    a.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(a.out / "pretrain.jsonl", (pretrain[i] for i in rng.permutation(len(pretrain))))
    write_jsonl(a.out / "finetune.jsonl", (finetune[i] for i in rng.permutation(len(finetune))))
    write_jsonl(a.out / "eval.jsonl", (t[:a.eval_chars] for t in default_texts("eval", a.max_bytes)))
    print(f"pretrain.jsonl: {len(code)} stdlib files ({sum(lengths) / 1e6:.2f}M tokens) + {n_keys} passkey "
          f"documents; finetune.jsonl: {len(finetune)} files of >= {a.target + 1} tokens "
          f"({sum(n for n in lengths if n > a.target) / 1e6:.2f}M tokens)")


if __name__ == "__main__":
    main()
