"""The PoSE paper's two evaluations: sliding-window perplexity (§4.2, Table 1, App. C) and passkey retrieval (§4.3);
and the command line for RULER's synthetic tasks (Hsieh et al. 2024; prompts and scoring in ruler.py).

    python evaluate.py ppl --model DIR --data FILE --lengths 2048 4096 8192 16384 --stride 1024 --out ppl.json
    python evaluate.py passkey --model DIR --lengths 2048 4096 8192 16384 32768 --trials 50 --out passkey.json
    python evaluate.py ruler --model DIR --lengths 4096 8192 16384 --tasks all --samples 50 --seed 0 --out ruler.json
    python evaluate.py plot original.json pi-only.json pose.json passkey.json --out fig.png  # as Fig. 2b
    python evaluate.py ppl --model llama-7b --rope linear --factor 8 --data govreport.jsonl  # App. C's PI-only row

--rope replaces the checkpoint's rope scaling, so "Original" (--rope none) and the training-free rows (--rope
linear / ntk / yarn-revised --factor α) come from the base checkpoint itself (App. C, Table 6).

Read top to bottom: the options (the dataclass fields are the flags) and their checks; loading the model;
perplexity (window_plan: which tokens each window feeds and scores, window_nll, perplexity, load_documents: the
authors' document cut); passkey (the Fig. 2a prompt fitted to L tokens with its answer, greedy decoding with the
KV cache, the first-integer rule, per-digit accuracy and the key's log-probability); RULER's decoding loop;
tables, the results JSON and plots; main. docs/evaluation.md: the window rule, the passkey's fit against the
authors' bound, and the paper's commands on a real checkpoint.
"""
import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from data import (Tokenizer, as_list, check_out, check_vocabulary, describe, find_files, iter_documents,
                  needs_tokenizer)
from hf import from_pretrained, load_config
from generate import PromptCache, generate
from model import Transformer
from rope import ROPE_TYPES, rope_parameters
from ruler import (NEW_TOKENS, DoesNotFit, effective_length, fit_prompt, postprocess, print_ruler_table, read_haystack,
                   ruler_averages, ruler_sample, ruler_tasks, string_match_all)

DTYPES = ("float32", "bfloat16", "float16", "float64")

# ---------------------------------------------------------------- options (the fields are the flags)


@dataclass
class Options:
    model: str = field(default="out/final", metadata=dict(help="Hugging Face LLaMA folder (+ tokenizer.model or "
                       "tokenizer.json)"))
    lengths: list[int] | None = field(default=None, metadata=dict(type=int, nargs="+", help="evaluation lengths L "
                                      "in tokens (default: L_c, 2 L_c, ... up to the config's "
                                      "max_position_embeddings)"))
    rope: str | None = field(default=None, metadata=dict(choices=("none",) + ROPE_TYPES[1:], help="replace the "
                             "checkpoint's rope scaling: none = Original (plain RoPE), linear = PI, ... "
                             "(with --factor)"))
    factor: float | None = field(default=None, metadata=dict(type=float, help="alpha = L_t / L_c for --rope"))
    original_window: int | None = field(default=None, metadata=dict(type=int, help="L_c for --rope (default: the "
                                        "checkpoint's original_max_position_embeddings)"))
    label: str | None = field(default=None, metadata=dict(help="legend name in plots (default: folder + rope)"))
    out: str | None = field(default=None, metadata=dict(help="write the results JSON here"))
    plot: str | None = field(default=None, metadata=dict(help="also draw the results as this PNG (matplotlib)"))
    device: str | None = field(default=None, metadata=dict(help="cuda if available, else cpu"))
    dtype: str | None = field(default=None, metadata=dict(choices=DTYPES, help="bfloat16 on cuda, float32 on cpu"))
    compile: bool = field(default=False, metadata=dict(action="store_true", help="torch.compile each block and the "
                          "loss: for long runs (compile time and break-even in BENCHMARKS.md)"))


@dataclass
class PplOptions(Options):
    data: list[str] | None = field(default=None, metadata=dict(nargs="+", help="files, folders or globs, as "
                                   "train.py reads them (data.py; default: the embedded stdlib eval split)"))
    text_field: str = field(default="text", metadata=dict(help="the .jsonl field / parquet column of the text"))
    stride: int = field(default=1024, metadata=dict(type=int, help="sliding-window step (§4.2: 1,024; §5.3: 16k)"))
    docs: int = field(default=50, metadata=dict(type=int, help="first N long-enough documents (§4.2: 50)"))
    max_tokens: int | None = field(default=None, metadata=dict(type=int, help="cut each document to its first N "
                                   "tokens before --min-tokens applies (the authors' eval: 32,767; default: whole)"))
    min_tokens: int | None = field(default=None, metadata=dict(type=int, help="keep documents of >= this many "
                                   "tokens (the authors' eval: 32,767; default: the largest length)"))
    truncate: bool = field(default=False, metadata=dict(action="store_true", help="one window of the first L "
                           "tokens per document (Fig. 4)"))
    no_bos: bool = field(default=False, metadata=dict(action="store_true", help="do not prepend BOS to windows"))


@dataclass
class PasskeyOptions(Options):
    trials: int = field(default=50, metadata=dict(type=int, help="prompts per length (and depth) (§4.3: 50)"))
    depths: list[float] | None = field(default=None, metadata=dict(type=float, nargs="+", help="depth x length "
                                       "grid: key-line depths in [0, 1] (default: uniform at random)"))
    new_tokens: int = field(default=10, metadata=dict(type=int, help="greedy tokens decoded per prompt"))
    seed: int = field(default=0, metadata=dict(type=int))
    fit: str = field(default="answer", metadata=dict(choices=("answer", "prompt"), help="what holds <= L tokens: "
                     "the prompt and its answer (default, RULER's count) or the prompt alone (the authors' bound)"))


@dataclass
class RulerOptions(Options):
    tasks: str = field(default="all", metadata=dict(help="all, or a comma list of RULER's synthetic tasks: "
                       "niah_single_1..3, niah_multikey_1..3, niah_multivalue, niah_multiquery, vt, cwe, fwe"))
    samples: int = field(default=50, metadata=dict(type=int, help="prompts per task and length (RULER: 500)"))
    seed: int = field(default=0, metadata=dict(type=int))
    threshold: float = field(default=85.6, metadata=dict(type=float, help="average score (%%) a length must reach "
                             "for the effective length (RULER: Llama-2-7B's at 4k; small models need a lower one)"))
    haystack: str | None = field(default=None, metadata=dict(help=".txt | .jsonl text for the tasks RULER runs on "
                                 "Paul Graham's essays (default: its noise sentences)"))
    text_field: str = field(default="text", metadata=dict(help="the --haystack .jsonl field holding the text"))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr and exit 2, like every other bad input
        fail(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, cls in (("ppl", PplOptions), ("passkey", PasskeyOptions), ("ruler", RulerOptions)):
        sub = commands.add_parser(name, help=f"{name} vs length")
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            sub.add_argument("--" + f.name.replace("_", "-"), default=default, **f.metadata)
    sub = commands.add_parser("plot", help="overlay results JSON files in one PNG")
    sub.add_argument("files", nargs="+")
    sub.add_argument("--out", required=True)
    return parser


def check_device(name: str | None):
    """--device: cpu, or a CUDA device torch sees (evaluate.py's kernels are chosen for these two)."""
    if name is None:
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {name}: not a device name (cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: evaluate.py runs on cpu or cuda")
    count = torch.cuda.device_count() if device.type == "cuda" and torch.cuda.is_available() else 0
    if device.type == "cuda" and count == 0:
        raise ValueError(f"--device {name}: torch sees no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= count:
        raise ValueError(f"--device {name}: torch sees {count} CUDA device{'s' * (count > 1)}, "
                         f"cuda:0 .. cuda:{count - 1}")


def check(opts: Options):
    """Refuse bad values before any weights load."""
    load_config(opts.model)  # a missing or broken checkpoint folder: one line naming it
    check_device(opts.device)
    if opts.lengths is not None and min(opts.lengths) < 2:
        raise ValueError(f"--lengths must be >= 2 tokens, got {min(opts.lengths)}")
    if opts.rope is None and (opts.factor is not None or opts.original_window is not None):
        raise ValueError("--factor / --original-window replace the checkpoint's scaling: give --rope too")
    for name in ("stride", "docs", "trials", "new_tokens", "min_tokens", "max_tokens", "original_window", "samples"):
        if getattr(opts, name, None) is not None and getattr(opts, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(opts, name)}")
    if getattr(opts, "seed", 0) < 0:
        raise ValueError(f"--seed must be >= 0, got {opts.seed}")
    if not all(0 <= d <= 1 for d in getattr(opts, "depths", None) or ()):
        raise ValueError(f"--depths must lie in [0, 1], got {opts.depths}")
    if None not in (getattr(opts, "max_tokens", None), getattr(opts, "min_tokens", None)) \
            and opts.max_tokens < opts.min_tokens:
        raise ValueError(f"--max-tokens {opts.max_tokens} < --min-tokens {opts.min_tokens}: no document could pass")
    if getattr(opts, "data", None) is not None:
        find_files(opts.data)  # a missing file, an empty folder or glob: one line naming it
    if isinstance(opts, RulerOptions):
        ruler_tasks(opts.tasks)
        if not 0 <= opts.threshold <= 100:
            raise ValueError(f"--threshold is a percentage in [0, 100], got {opts.threshold}")
        if opts.haystack is not None:
            find_files(opts.haystack, "--haystack")  # missing, or nothing readable: one line naming it
    if opts.factor is not None and not (math.isfinite(opts.factor) and opts.factor >= 1):
        raise ValueError(f"--factor must be a finite number >= 1 (alpha = target / original window), got {opts.factor}")
    for flag, path in (("--out", opts.out), ("--plot", opts.plot)):
        if path is not None:
            check_out(Path(path), flag, create=True)  # a folder there, or no way to write it: now, not after hours
    if opts.plot:
        _pyplot()  # fail now, not after hours of evaluation


# ---------------------------------------------------------------- model


def rope_override(opts: Options, config: dict) -> dict | None:
    """config.json-style rope_scaling replacing the checkpoint's (None: keep it). App. C's baselines."""
    if opts.rope is None:
        return None
    if opts.rope == "none":  # "Original": plain RoPE, whatever scaling the checkpoint carries
        return {"rope_type": "default"}
    if opts.factor is None:
        raise ValueError(f"--rope {opts.rope} needs --factor (alpha = target / original window)")
    original = opts.original_window or rope_parameters(config)["original_max_position_embeddings"]
    scaling = {"rope_type": opts.rope, "factor": opts.factor, "original_max_position_embeddings": original}
    if opts.rope == "llama3":
        scaling.update(low_freq_factor=1.0, high_freq_factor=4.0)  # Llama 3.1's values
    return scaling


def load_model(opts: Options):
    """(model in eval mode, device). Long sequences: bf16 + SDPA flash on CUDA (see attention())."""
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {opts.device}: torch sees no CUDA device")
    dtype = getattr(torch, opts.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    scaling = rope_override(opts, load_config(opts.model))
    model = from_pretrained(opts.model, device=device, dtype=dtype, rope_scaling=scaling)
    if opts.compile:
        model.compile_regions()  # passkey's decoding with the KV cache stays eager (see compile_regions)
    return model.eval(), device


def attention(model, device):
    # On GPU only flash / memory-efficient SDPA fit 128k tokens, in bf16/fp16 only (and only flash takes
    # enable_gqa): a silent fall-back to the math kernel would allocate [H, T, T] scores, so it is made an error.
    # float32 on GPU (short checks) may use math; the CPU picks its own flash kernel.
    if torch.device(device).type == "cuda" and model.lm_head.weight.dtype in (torch.bfloat16, torch.float16):
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])
    return contextlib.nullcontext()


def default_lengths(model) -> list[int]:
    """L_c, 2 L_c, ... up to max_position_embeddings (L_t), with L_c = L_t / alpha."""
    rope, top = model.args.rope, model.args.max_position_embeddings
    lo = min(rope["original_max_position_embeddings"], max(2, round(top / rope["factor"])))
    return [lo * 2**i for i in range(64) if lo * 2**i <= top] or [top]


class Progress:
    """Work done of a known total on stderr, with speed and ETA, at most every `every` seconds (None: silent, as
    train.py's --eval-every runs it)."""

    def __init__(self, total: float, unit: str, every: float | None = 10.0):
        self.total, self.unit, self.every, self.done = max(total, 1), unit, every, 0.0
        self.start = self.last = time.perf_counter()

    def __call__(self, work: float, note: str, final: bool = False):
        self.done += work
        now = time.perf_counter()
        if self.every is not None and (final or now - self.last >= self.every):
            self.last, rate = now, self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            print(f"{note}: {100 * self.done / self.total:.0f}% {rate:,.0f} {self.unit}/s "
                  f"ETA {eta // 3600:.0f}h{eta % 3600 // 60:02.0f}m{eta % 60:02.0f}s", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- perplexity (§4.2, App. C)


def window_plan(n: int, length: int, stride: int, bos: bool = True, truncate: bool = False):
    """[(begin, end, first)] for a document of n tokens: a window feeds x[begin:end] (after BOS) and scores
    x[first:end]. See the module docstring; tests/test_evaluate.py spells the rule out independently."""
    width = length - bos  # document tokens per window: BOS takes one of the L slots
    if truncate:
        return [(0, min(n, width), int(not bos))]
    stride = min(stride, length - 1)  # a window predicts L - 1 tokens; a longer step would skip some
    plan, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + width, n)
        plan.append((begin, end, max(prev_end, begin + (not bos))))  # without BOS x_begin has no context
        prev_end = end
        if end == n:
            break
    return plan


@torch.inference_mode()
def window_nll(model, doc: np.ndarray, begin: int, end: int, first: int, bos_id: int | None, device):
    """(sum of NLL, tokens) of x[first:end] given BOS + x[begin:end]: one forward, no KV cache, chunked loss."""
    bos = [bos_id] if bos_id is not None else []
    tokens = torch.tensor(bos + doc[begin:end].tolist(), device=device)  # [T]
    offset = len(bos) - begin  # x_j sits at input index j + offset and is predicted from index j + offset - 1
    targets = torch.full_like(tokens, -100)
    targets[first + offset - 1:end + offset - 1] = tokens[first + offset:end + offset]
    nll, n = model.loss(tokens[None], targets[None])  # never [T, V] fp32 logits (model.py)
    return float(nll), int(n)


def perplexity(model, documents, lengths, stride, bos_id, truncate=False, device="cpu", every=10.0):
    """One row per length: ppl = exp(sum NLL / tokens) over every scored token of every document."""
    bos = bos_id is not None
    plans = {L: [window_plan(len(d), L, stride, bos, truncate) for d in documents] for L in lengths}
    work = {L: sum(e - b + bos for plan in plans[L] for b, e, _ in plan) for L in lengths}  # tokens fed
    progress, rows = Progress(sum(work.values()), "tok", every), []
    for L in lengths:
        t0, nll, tokens, windows = time.perf_counter(), 0.0, 0, 0
        with attention(model, device):
            for i, (doc, plan) in enumerate(zip(documents, plans[L])):
                for begin, end, first in plan:
                    s, n = window_nll(model, doc, begin, end, first, bos_id, device)
                    nll, tokens, windows = nll + s, tokens + n, windows + 1
                    progress(end - begin + bos, f"ppl L={L} doc {i + 1}/{len(documents)}")
        seconds = time.perf_counter() - t0
        progress(0, f"ppl L={L} done", final=True)
        if not math.isfinite(nll):  # never a result: a NaN would be written, plotted and compared as one
            raise ValueError(f"ppl at L={L}: the model's loss is {nll} (non-finite activations: try --dtype "
                             f"float32, and check the checkpoint)")
        rows.append(dict(length=L, ppl=math.exp(nll / max(tokens, 1)), nll=nll, tokens=tokens, windows=windows,
                         documents=len(documents), short=sum(len(d) < L - bos for d in documents),
                         seconds=seconds, tokens_per_s=work[L] / max(seconds, 1e-9)))
    return rows


def load_documents(opts: PplOptions, args, min_tokens: int, tokenizer_path=None, flag: str = "--data"):
    """(the first --docs documents of >= min_tokens tokens without their own BOS/EOS, the windows' BOS id).
    As the authors' eval_ppl.py: drop the document's own special tokens, cut it to its first --max-tokens
    tokens, then keep it only if it still has >= min_tokens. Reading stops once they are in. The BOS is the
    tokenizer's convention (data.Tokenizer: none for Qwen's), token files included when the folder has a
    tokenizer; only a folder without one falls back on config.json's bos_token_id. The tokenizer is --model's
    (tokenizer_path: the one a train.py run ships with its export, for --eval-every, whose errors name `flag`)."""
    files = find_files(opts.data, say=functools.partial(print, file=sys.stderr)) if opts.data else None
    folder = Path(tokenizer_path or opts.model)
    own = tokenizer_path is not None or any((folder / name).is_file() for name in ("tokenizer.model", "tokenizer.json"))
    tokenizer = Tokenizer(folder) if needs_tokenizer(files) or own else None  # an error if text and none
    if tokenizer:
        check_vocabulary(tokenizer, args.vocab_size)
    eos = args.eos_token_id[0] if isinstance(args.eos_token_id, list) else args.eos_token_id
    bos_id, eos_id = (tokenizer.bos_id, tokenizer.eos_id) if tokenizer else (args.bos_token_id, eos)
    if tokenizer and not needs_tokenizer(files):  # a token file splits at the config's EOS, as before
        eos_id, tokenizer = eos, None
    name = " ".join(map(str, as_list(opts.data))) if opts.data else "the embedded stdlib eval split"
    documents, skipped = [], 0
    for doc in iter_documents(files, tokenizer, opts.text_field, eos_id=2 if eos_id is None else eos_id, split="eval"):
        doc = doc[1:] if len(doc) and doc[0] == bos_id else doc  # each window gets its own BOS instead
        doc = doc[:-1] if len(doc) and doc[-1] == eos_id else doc  # no EOS target, as the released code
        doc = doc[:opts.max_tokens]  # None: whole
        if len(doc) < min_tokens:
            skipped += 1
        else:  # the first --docs in file order
            documents.append(np.asarray(doc, dtype=np.int64))
            if len(documents) == opts.docs:
                break
    if not documents:
        hint = "a lower --min-tokens scores short ones in one window each" if flag == "--data" else \
            "the longest --eval-lengths decides"
        raise ValueError(f"{flag} {name}: no document with >= {min_tokens} tokens ({skipped} shorter; {hint})")
    top, bottom = max(int(d.max()) for d in documents), min(int(d.min()) for d in documents)
    if top >= args.vocab_size or bottom < 0:
        raise ValueError(f"{flag} {name}: token id {top if top >= args.vocab_size else bottom} outside the model's "
                         f"vocabulary 0 .. {args.vocab_size - 1}")
    print(f"ppl: --data {describe(files) if files else name}", file=sys.stderr)
    return documents, None if opts.no_bos or bos_id is None or bos_id < 0 else int(bos_id)


def run_ppl(opts: PplOptions) -> tuple[dict, Transformer]:
    model, device = load_model(opts)
    lengths = opts.lengths or default_lengths(model)
    documents, bos_id = load_documents(opts, model.args, opts.min_tokens or max(lengths))
    print(f"ppl: {len(documents)} documents, {sum(map(len, documents)):,} tokens, rope {model.args.rope}",
          file=sys.stderr)
    rows = perplexity(model, documents, lengths, opts.stride, bos_id, opts.truncate, device)
    return dict(data=opts.data or "stdlib-eval", bos=bos_id is not None, results=rows), model


# ---------------------------------------------------------------- passkey retrieval (§4.3, Fig. 2a)

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
QUESTION = "What is the pass key? The pass key is"


def passkey_text(key: int, n: int, before: int) -> str:
    """The Fig. 2a prompt with n filler sentences, `before` of them ahead of the key line."""
    filler = [FILLER[i % len(FILLER)] for i in range(n)]
    info = f"The pass key is {key}. Remember it. {key} is the pass key."
    return "\n".join([TASK, " ".join(filler[:before]), info, " ".join(filler[before:]), QUESTION])


def passkey_prompt(tokenizer, length: int, key: int, depth: float, fit: str = "answer") -> list[int]:
    """Token ids (BOS first) of the longest prompt that, with its answer's tokens after it (fit "answer"), or
    alone (fit "prompt", the authors' bound), holds <= length tokens (~5 tokens per filler sentence); see the
    module docstring."""
    return passkey_ids(tokenizer, length, key, depth, fit)[0]


def passkey_ids(tokenizer, length: int, key: int, depth: float, fit: str = "answer") -> tuple[list[int], list | None]:
    """(the prompt's ids, BOS first; the right answer's ids): the answer is what the prompt's text followed by
    " {key}" tokenises to after the prompt's own ids, the tokens a right greedy answer produces (None for a
    tokenizer that merges across that boundary, so that no answer follows the prompt's own ids)."""
    def encode(n):  # with the answer: the tokens the model sees if it answers right
        return tokenizer.encode(passkey_text(key, n, round(depth * n)) + (f" {key}" if fit == "answer" else ""),
                                bos=True)

    fitted = fit_prompt(encode, length)
    if fitted is None:
        raise ValueError(f"passkey length {length} is shorter than the bare template and its answer "
                         f"({len(encode(0))} tokens)")
    text = passkey_text(key, fitted[0], round(depth * fitted[0]))
    prompt, answered = tokenizer.encode(text, bos=True), tokenizer.encode(text + f" {key}", bos=True)
    return prompt, answered[len(prompt):] if answered[:len(prompt)] == prompt else None


def digit_accuracy(answer: str, key: int) -> float:
    """The fraction of the key's digits the answer's first integer has right, place by place; a digit short or
    too many counts as wrong (so 1.0 exactly when the integer is the key): 12355 for 12345 scores 0.8."""
    match, want = re.search(r"\d+", answer), str(key)
    got = match.group() if match else ""
    return sum(a == b for a, b in zip(got, want)) / max(len(got), len(want))


def greedy_answer(model, tokenizer, ids: list[int], new_tokens: int, device, score: list[int] | None = None,
                  prompts: PromptCache | None = None):
    """Greedy decoding of new_tokens tokens after the prompt with the KV cache, as text: cut at EOS (where
    generation would stop) and without ids beyond the tokenizer's pieces (a padded embedding's). score: ids whose
    teacher-forced log-probability after the prompt to return too, (text, nats), from the same prefill. prompts:
    the caches of the prompts before, whose shared prefix is not read again (generate.PromptCache)."""
    with attention(model, device):
        stop = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
        forced = None if score is None else torch.tensor([score], device=device)
        out = generate(model, torch.tensor([ids], device=device), new_tokens, stop_ids=stop, score=forced,
                       prompts=prompts)
    out, logprob = (out, None) if score is None else out
    out = out[0].tolist()
    out = out[:out.index(tokenizer.eos_id)] if tokenizer.eos_id in out else out
    text = tokenizer.decode([i for i in out if 0 <= i < tokenizer.vocab_size])
    return text if score is None else (text, float(logprob[0]))


def first_integer(text: str) -> int | None:
    match = re.search(r"\d+", text)
    return int(match.group()) if match else None


def passkey(model, tokenizer, lengths, trials, depths=None, seed=0, new_tokens=10, device="cpu", every=10.0,
            fit="answer"):
    """One row per (length, depth): accuracy of greedy retrieval over `trials` prompts (depth None: uniform), and
    two graded signals beside it (exact match is all or nothing): the mean per-digit accuracy (digit_accuracy)
    and the mean teacher-forced log-probability of the key's tokens (key_logprob, nats).

    The prompts of a length share their filler up to the key line: read deepest key first, each prompt's prefill
    starts at its own key (generate.PromptCache), about 2/3 of the work of reading every prompt whole at 16k tokens
    (none is saved under a sliding window, whose cache forgets the prefix)."""
    grid = [(L, d) for d in (depths or [None]) for L in lengths]
    progress, rows = Progress(sum(L for L, _ in grid) * trials, "tok", every), []
    for L, depth in grid:
        rng = np.random.default_rng([seed, L, 0 if depth is None else 1 + round(depth * 1e6)])
        t0, cases = time.perf_counter(), [None] * trials
        asked = []  # (key, depth, prompt ids, the right answer's ids), in the seed's order
        for _ in range(trials):
            key, d = int(rng.integers(10_000, 100_000)), float(rng.random()) if depth is None else depth
            asked.append((key, d, *passkey_ids(tokenizer, L, key, d, fit)))
        room = max(len(ids) for _, _, ids, _ in asked) + max(new_tokens, *(len(r or []) for *_, r in asked))
        prompts = PromptCache(model.args.n_layers, room) if model.args.sliding_window is None else None
        for i in sorted(range(trials), key=lambda i: -asked[i][1]):  # deepest key first: the longest shared prefix
            key, d, ids, right = asked[i]
            # One prefill of the prompt for both: the greedy answer and the key's teacher-forced log-probability.
            reply = greedy_answer(model, tokenizer, ids, new_tokens, device, right, prompts)
            answer, logprob = reply if right is not None else (reply, None)
            cases[i] = dict(key=key, depth=d, tokens=len(ids), answer=answer, passed=first_integer(answer) == key,
                            digits=digit_accuracy(answer, key), key_logprob=logprob)
            progress(L, f"passkey L={L}" + ("" if depth is None else f" depth={depth}"))
        rows.append(dict(length=L, depth=depth, accuracy=sum(c["passed"] for c in cases) / trials, trials=trials,
                         digit_accuracy=float(np.mean([c["digits"] for c in cases])),
                         key_logprob=mean_or_none([c["key_logprob"] for c in cases]),
                         prompt_tokens=round(float(np.mean([c["tokens"] for c in cases]))),
                         seconds=time.perf_counter() - t0, cases=cases))
    progress(0, "passkey done", final=True)
    return rows


def mean_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def run_passkey(opts: PasskeyOptions) -> tuple[dict, Transformer]:
    tokenizer = Tokenizer(opts.model)
    model, device = load_model(opts)
    check_vocabulary(tokenizer, model.args.vocab_size)
    lengths = opts.lengths or default_lengths(model)
    rows = passkey(model, tokenizer, lengths, opts.trials, opts.depths, opts.seed, opts.new_tokens, device,
                   fit=opts.fit)
    return dict(seed=opts.seed, results=rows), model


# ---------------------------------------------------------------- RULER (ruler.py's prompts, decoded here)


def ruler(model, tokenizer, lengths, tasks, samples, seed=0, essay=None, device="cpu", every=10.0):
    """One row per (length, task): RULER's score (%) = 100 x mean string_match_all over `samples` prompts, greedy
    decoding of NEW_TOKENS[task] tokens with the KV cache (cut at EOS, as generation would stop there)."""
    progress, rows = Progress(sum(lengths) * len(tasks) * samples, "tok", every), []
    for L in lengths:
        for task in tasks:
            t0, cases, hint, new = time.perf_counter(), [], None, NEW_TOKENS[task]
            for i in range(samples):
                try:
                    sample = ruler_sample(task, tokenizer, L, seed, i, essay, hint)
                except DoesNotFit as e:
                    print(f"ruler L={L}: {e}: skipped", file=sys.stderr)
                    rows.append(dict(length=L, task=task, score=None, skipped=str(e)))
                    progress(L * (samples - i), f"ruler {task} L={L} skipped")
                    break
                hint = sample["units"]  # the next prompt of this cell is about as long: few tokenisations
                prediction = postprocess(greedy_answer(model, tokenizer, sample["ids"], new, device))
                cases.append(dict(index=i, tokens=len(sample["ids"]), units=sample["units"],
                                  depths=sample.get("depths"), answers=sample["answers"], prediction=prediction,
                                  score=string_match_all(prediction, sample["answers"])))
                progress(L, f"ruler {task} L={L}")
            else:
                seconds = time.perf_counter() - t0
                tokens = sum(c["tokens"] for c in cases)
                score = round(100 * float(np.mean([c["score"] for c in cases])), 2)  # RULER rounds so
                rows.append(dict(length=L, task=task, score=score,
                                 samples=samples, prompt_tokens=round(tokens / samples), new_tokens=new,
                                 seconds=seconds, tokens_per_s=tokens / max(seconds, 1e-9), cases=cases))
    progress(0, "ruler done", final=True)
    return rows


def run_ruler(opts: RulerOptions) -> tuple[dict, Transformer]:
    tasks = ruler_tasks(opts.tasks)
    tokenizer = Tokenizer(opts.model)
    essay = read_haystack(opts.haystack, opts.text_field) if opts.haystack else None
    model, device = load_model(opts)
    check_vocabulary(tokenizer, model.args.vocab_size)
    lengths = sorted(opts.lengths or default_lengths(model))
    rows = ruler(model, tokenizer, lengths, tasks, opts.samples, opts.seed, essay, device)
    averages = ruler_averages(rows, lengths)
    effective = effective_length({a["length"]: a["average"] if a["complete"] else None for a in averages},
                                 opts.threshold)
    haystack = opts.haystack or ("noise: no --haystack, so the essay tasks (niah_single_2/3, niah_multikey_1, "
                                 "niah_multivalue, niah_multiquery) use RULER's noise sentences too")
    return dict(seed=opts.seed, threshold=opts.threshold, tasks=tasks, haystack=haystack, averages=averages,
                effective_length=effective, results=rows), model


# ---------------------------------------------------------------- output


def table_title(result: dict) -> str:
    """What was measured: the model and the rope it ran with, and the data, above every table."""
    r = result["rope"]
    rope = "plain RoPE" if r["rope_type"] == "default" else \
        f"{r['rope_type']} rope x{r['factor']:g} on L_c {r['original_max_position_embeddings']:,}"
    rope += f", theta {r['rope_theta']:g}, max_position_embeddings {result['max_position_embeddings']:,}"
    if result["task"] == "ppl":
        docs = result["results"][0]["documents"] if result["results"] else 0
        data = f"data {' '.join(map(str, as_list(result['data'])))}: {docs} documents, " \
               f"stride {result['options']['stride']:,}"
    elif result["task"] == "passkey":
        data = f"data: the Fig. 2a passkey prompt, seed {result['seed']}"
    else:
        data = f"data: RULER's prompts, haystack {result['haystack'] or 'noise sentences'}, seed {result['seed']}"
    return f"{result['task']} | {result['label']} | model {result['model']} ({rope}) | {data}"


def print_table(result: dict):
    print(table_title(result))
    if result["task"] == "ruler":
        return print_ruler_table(result)
    if result["task"] == "ppl":
        print(f"{'length':>7} {'ppl':>10} {'tokens':>11} {'docs':>5} {'short':>5} {'windows':>7} {'tok/s':>8}")
        for r in result["results"]:
            print(f"{r['length']:>7} {r['ppl']:>10.4f} {r['tokens']:>11,} {r['documents']:>5} {r['short']:>5} "
                  f"{r['windows']:>7} {r['tokens_per_s']:>8,.0f}")
    else:
        print(f"{'length':>7} {'depth':>6} {'accuracy':>8} {'trials':>6} {'prompt tokens':>13} {'digits':>6} "
              f"{'log p(key)':>10}")
        for r in result["results"]:
            depth = "rand" if r["depth"] is None else f"{r['depth']:.2f}"
            logp = "n/a" if r["key_logprob"] is None else f"{r['key_logprob']:.2f}"  # see passkey_ids
            print(f"{r['length']:>7} {depth:>6} {r['accuracy']:>8.2f} {r['trials']:>6} {r['prompt_tokens']:>13} "
                  f"{r['digit_accuracy']:>6.2f} {logp:>10}")


def write_atomic(path, write):
    """write(tmp_path), then rename: a reader never sees half a file, a failure leaves none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ValueError("plotting needs matplotlib, which is not installed (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot(files, out):
    """`evaluate.py plot`: overlay results JSON files, each checked for what plot_results reads first."""
    results = []
    for file in files:
        try:
            result = json.loads(Path(file).read_text())
        except (OSError, ValueError) as e:  # missing, a folder, not UTF-8, not JSON
            raise ValueError(f"{file}: not a results JSON written by evaluate.py ({type(e).__name__})") from None
        problem = results_problem(result)
        if problem:
            raise ValueError(f"{file}: not a results JSON written by evaluate.py ({problem})")
        results.append(result)
    plot_results(results, out)


def results_problem(result) -> str | None:
    """What plot_results would trip on in a results JSON (None: nothing): the task, the label, and per row the
    length and the value it draws (ruler: the averages per length and the threshold)."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if not isinstance(result, dict):
        return f"a JSON {type(result).__name__}, not an object"
    if result.get("task") not in ("ppl", "passkey", "ruler"):
        return f"'task' is {result.get('task')!r}, not ppl, passkey or ruler"
    if not isinstance(result.get("label"), str):
        return "no text 'label'"
    value = {"ppl": "ppl", "passkey": "accuracy", "ruler": None}[result["task"]]
    tables = [("results", value)] + ([("averages", "average")] if result["task"] == "ruler" else [])
    for table, key in tables:
        rows = result.get(table)
        if not isinstance(rows, list) or not rows:
            return f"no rows in {table!r}"
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or type(row.get("length")) is not int or row["length"] < 1:
                return f"{table}[{i}] has no positive integer 'length'"
            if key is not None and not (number(row.get(key)) or (key == "average" and row.get(key) is None)):
                return f"{table}[{i}] has no number {key!r}"
    if result["task"] == "ruler" and not number(result.get("threshold")):
        return "no number 'threshold'"
    return None


def plot_results(results, out):
    """Perplexity, passkey accuracy and RULER's average vs length, one line per result (Fig. 2b, Table 1)."""
    plt = _pyplot()
    tasks = [t for t in ("ppl", "passkey", "ruler") if any(r["task"] == t for r in results)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in results if r["task"] == task):
            by_length = {}
            for row in r["results"] if task != "ruler" else r["averages"]:  # passkey depth grid: mean over depths
                value = row[{"ppl": "ppl", "passkey": "accuracy", "ruler": "average"}[task]]
                if value is not None:  # None: no RULER task fit that length
                    by_length.setdefault(row["length"], []).append(value)
            xs = sorted(by_length)
            ax.plot(xs, [float(np.mean(by_length[x])) for x in xs], marker="o", label=r["label"])
        if task == "ruler":  # the effective length is where a line last stays above this
            for threshold in sorted({r["threshold"] for r in results if r["task"] == "ruler"}):
                ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        ax.set_xscale("log", base=2)
        ticks = sorted({row["length"] for r in results if r["task"] == task for row in r["results"]})
        ax.set_xticks(ticks, [f"{x // 1024}k" if x % 1024 == 0 else str(x) for x in ticks])
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel({"ppl": "perplexity", "passkey": "passkey accuracy", "ruler": "RULER average (%)"}[task])
        ax.set_yscale("log") if task == "ppl" else ax.set_ylim(*((-0.05, 1.05) if task == "passkey" else (-5, 105)))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    write_atomic(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None) -> dict | None:
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    try:
        if command == "plot":
            check_out(Path(args["out"]), create=True)
            plot(args["files"], args["out"])
            print(f"wrote {args['out']}")
            return None
        options, run = {"ppl": (PplOptions, run_ppl), "passkey": (PasskeyOptions, run_passkey),
                        "ruler": (RulerOptions, run_ruler)}[command]
        opts = options(**args)
        check(opts)
        start = time.perf_counter()
        result, model = run(opts)
        rope = f"{opts.rope} x{opts.factor:g}" if opts.factor else opts.rope
        folder = "/".join(Path(opts.model).resolve().parts[-2:])
        label = opts.label or f"{folder} ({'rope ' + rope if rope else 'its rope'})"
        result = dict(task=command, label=label, model=str(opts.model), rope=model.args.rope,
                      max_position_embeddings=model.args.max_position_embeddings, options=dataclasses.asdict(opts),
                      **result, device=str(next(model.parameters()).device), dtype=str(model.lm_head.weight.dtype),
                      torch=torch.__version__, wall_s=time.perf_counter() - start)
        print_table(result)
        if opts.out:
            write_atomic(opts.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"))
            print(f"wrote {opts.out}")
        if opts.plot:
            plot_results([result], opts.plot)
            print(f"wrote {opts.plot}")
        return result
    except (ValueError, FileNotFoundError) as e:
        fail(str(e).splitlines()[0])


if __name__ == "__main__":
    main()
