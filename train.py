"""PoSE fine-tuning (arXiv 2309.10400 §3.2, recipe §4.1) with torchrun + FSDP2 + DCP; one code path for CPU and GPU.

    python train.py                       # embedded default: tiny model, stdlib corpus, ~1 min on CPU -> out/final
    torchrun --nproc_per_node 8 train.py --model ./Llama-2-7b-hf --data pile.jsonl --target 16384
    torchrun --nproc_per_node 8 train.py --model ./Llama-2-7b-hf --data pile.jsonl --target 16384 --resume
    torchrun --nproc_per_node 2 train.py  # CPU: two processes over gloo (what CI runs)
    python train.py --compile             # torch.compile per block: pays off on long runs (BENCHMARKS.md)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 train.py ...  # shared --out
    python evaluate.py ppl --model out/final  # the export is a Hugging Face LLaMA folder
    python train.py --export-only --out runs/pose16k --checkpoint step_000500  # -> runs/pose16k/exports/step_000500
    python train.py --eval-every 20 --eval-data held-out.jsonl  # + perplexity and passkey at L_c, L_t every 20 steps
    python train.py --plan --model ./Llama-2-7b-hf --target 16384 --world-size 8 --gpu-memory 80  # fits? (plan.py)
On a CPU busy with other jobs, OMP_NUM_THREADS=1 is several times faster (idle OpenMP threads spin). On a CPU
the process keeps the memory a step frees for the next one (keep_freed_memory: glibc's malloc, Linux).

Defaults are the paper's §4.1 recipe for a real --model: window L_c = the checkpoint's context, N = 2 chunks with
uniform content (Eq. 3-5), linear interpolation with alpha = L_t / L_c, 1,000 steps, global batch 64, AdamW with
torch's defaults, lr 2e-5, 10 warm-up steps then linear decay, bf16 on GPU; --model needs --data (a real
checkpoint is never fine-tuned on the demo corpus) and --window <= its context. Without --model the embedded
default trains the "tiny" preset from scratch on the .py files of Python's standard library (L_c 128 -> L_t 1,024)
with a 4,096-piece sentencepiece tokenizer trained on them at first use and cached in .cache/.

--data (data.py reads it): one or more .jsonl / .jsonl.gz / .jsonl.zst / .parquet (text in --text-field), .txt
files, folders or globs of them, or pre-tokenised ids (.npy / uint16 .bin, every document ending with EOS, as
`python data.py` writes them); --tokenizer (default: --model's) is a tokenizer.model or a tokenizer.json. Each
rank tokenises only its own shard (every world-th document) and stops reading once it has --max-documents / world;
corpora too large for that are better pre-tokenised once (`python data.py ... --out tokens.npy`, memory-mapped).
The log's first lines say what was read: files and size, documents kept, skipped as too short, tokens.

Windows: every example starts at its document's start, so token 0 is the document's BOS at position id 0, as in
the authors' code (each document tokenised with truncation=True) and as evaluation feeds every window; PoSE's
chunk 0 does so by Eq. 5 (v_0 = 0). BOS is the tokenizer's own convention (data.Tokenizer): with none (Qwen),
token 0 is the document's first text token, which is never a label (nothing precedes it); every later one is.
Every method reads the same documents, those of >= L_c + 1 tokens (§4.1's minimum length); full-length takes
each one's first min(L_x, L_t) tokens. --crop random crops full / plain / randpos windows anywhere instead (for
many epochs over few documents; see pose.contiguous for why not default).

Labels: every position's label is the document's true next token x[index + 1]. Where Eq. 5 skips text
(v_1 > v_0), the token after a chunk's last one in the *window* is not its successor in the text, so the usual
"shift the window by one" would teach the model to predict an unrelated token; we draw indices from
doc[:-1] so x[index + 1] always exists, and every one of the L_c positions is scored (no -100 needed).

A run is its --out folder (checkpoints.py: settings.json, DCP checkpoints, the export). settings.json is written
once the inputs are checked, the data read and the weights (or the resumed checkpoint) loaded, so a bad input found
on the way leaves a fresh --out absent and a resumed one untouched; --resume refuses, in one line, any change of
what is trained (RESUME_FIXED). Free to change: --steps, saving and logging, --micro-batch-size and the world size
(the examples drawn then differ from an uninterrupted run's, as the log warns for the world). The learning rate is a
pure function of (step, --warmup, --steps) (lr_factor): raising --steps on resume re-stretches the linear decay, so
a finished 40-step run resumed with --steps 44 trains steps 41-44 at the 44-step schedule's rates (the log says
which), never at the 0 the 40-step schedule ended on. Checkpoints hold fp32 weights + Adam's two moments: about 12
bytes per parameter (7B: ~84 GB each; --keep-checkpoints of them stay).

Evaluation during training (--eval-every K --eval-data FILE): train_eval.py, which scores the model with
evaluate.py's own functions, so a logged value equals `evaluate.py` on that step's export.

Stopping. Ctrl-C (SIGINT) or SIGTERM stops at the next step boundary, which every rank agrees on (one MAX
all-reduce of the flag per step), so no rank is left inside a collective. SIGTERM (what schedulers send before
a kill) first saves a checkpoint of that step; SIGINT (a person, who wants the prompt back) does not. Either
way rank 0 prints one line on stderr, the latest checkpoint and the command that resumes, and the run exits
128 + the signal number. Every file is written under a temporary name and renamed, so a kill at any moment
leaves the previous checkpoint / export intact. A second signal stops at once. torchrun forwards the signal to
the workers and kills them --shutdown-timeout seconds later (default 30: raise it if a step plus a save takes
longer); it then prints its own "Received ... death signal" lines and SignalException traceback. Likewise a
bad input is one "error:" line from rank 0 with exit 2 on every rank, whichever rank found it (agreed(): a bad
record only rank 1 reads is rank 1's line, file and line number), after which torchrun adds its own
ChildFailedError report: the launcher's, and the same for any failing worker.

In order: the options (TrainOptions: the fields are the flags) and resolve(), which fills the recipe's defaults
and refuses bad values before anything is written (train_eval.check_eval: the --eval-* flags); the schedule;
the data (make_batch: one micro-batch of PoSE / full / RandPos / plain windows; load_data); the model, FSDP2 and
the optimizer; training args and FLOPs; signals; the log's lines (eval_line: --eval-every's); the step
(train_step) and the loop (train); --export-only and main.
"""
import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import resource
import shlex
import signal
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed._composable import checkpoint as activation_checkpoint
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor
from torch.nn.attention import SDPBackend, sdpa_kernel

import evaluate
import pose
import rope
from checkpoints import (DiskFull, check_resume, check_writable, checkpoint_state, export, find_checkpoint,
                         latest_checkpoint, load_checkpoint, load_weights, read_settings, run_settings,
                         save_checkpoint, step_of, weights_finite, write_hf_folder, write_settings)
from data import (Tokenizer, as_list, check_vocabulary, default_tokenizer, describe, find_files, needs_tokenizer,
                  read_documents)
from hf import PRESETS, args_from_config, check_checkpoint, from_pretrained, load_config
from model import ModelArgs, Transformer
from train_eval import check_eval, eval_header, eval_setup, run_eval, wait_group_for


@dataclass
class TrainOptions:
    """Every flag of train.py; None means "the paper's value for --model, a small one for the embedded default"."""
    model: str | None = field(default=None, metadata={"help": "Hugging Face folder (config.json, safetensors) of a "
                                                      "llama, mistral, qwen2, qwen3 or olmo2 checkpoint"})
    preset: str = field(default="tiny", metadata={"help": f"from-scratch shape when no --model: {', '.join(PRESETS)}"})
    data: list[str] | None = field(default=None, metadata={"nargs": "+", "help": "files, folders or globs: .jsonl"
                                   "[.gz|.zst] .parquet .txt .npy .bin (data.py; default: stdlib)"})
    text_field: str = field(default="text", metadata={"help": "the .jsonl field / parquet column holding the text"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer.model or tokenizer.json (default: "
                                  "--model's, else stdlib's)"})
    out: str = field(default="out", metadata={"help": "checkpoints/, metrics.jsonl and the export final/"})
    window: int | None = field(default=None, metadata={"help": "training window L_c (default: config's context)"})
    target: int | None = field(default=None, metadata={"help": "target context L_t (default: 8 x window)"})
    method: str = field(default="pose", metadata={"choices": ("pose", "full", "randpos", "plain"), "help":
                        "pose (§3.2) | full: train on L_t tokens | randpos (Ruoss et al.) | plain: 0..L_c-1"})
    chunks: int = field(default=2, metadata={"help": "PoSE chunks N (§3.2 uses 2)"})
    content: str = field(default="uniform", metadata={"choices": pose.CONTENT, "help": "v_i rule (Eq. 5, App. A)"})
    crop: str = field(default="start", metadata={"choices": ("start", "random"), "help": "where full / plain / "
                      "randpos windows begin: the document's start, as the authors' code (BOS at position 0) | "
                      "a random crop (see pose.contiguous)"})
    rope: str = field(default="linear", metadata={"choices": ("linear", "ntk", "yarn", "yarn-revised", "none")})
    beta_fast: float | None = field(default=None, metadata={"help": "--rope yarn / yarn-revised: pairs turning more "
                                    "than this many times over L_c keep their frequency (YaRN's default 32, the "
                                    "paper's; Llama 3.1's high_freq_factor is 4)"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (1000)"})
    batch_size: int | None = field(default=None, metadata={"help": "global batch in sequences (64)"})
    micro_batch_size: int | None = field(default=None, metadata={"help": "sequences per rank per forward"})
    lr: float | None = field(default=None, metadata={"help": "peak learning rate (2e-5)"})
    warmup: int | None = field(default=None, metadata={"help": "linear warm-up steps (10)"})
    grad_clip: float = field(default=1.0, metadata={"help": "max grad norm, 0 = off (paper silent; HF Trainer's 1.0)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (torch's default; the authors' "
                                "HF-Trainer run used Trainer's 0.0)"})
    seed: int = 0
    save_every: int | None = field(default=None, metadata={"help": "checkpoint every k steps (and at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many recent checkpoints to keep"})
    log_every: int | None = field(default=None, metadata={"help": "log every k steps"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in --out"})
    activation_checkpointing: bool = field(default=False, metadata={"help": "recompute each block in backward"})
    compile: bool = field(default=False, metadata={"help": "torch.compile each block and the loss (worth it for "
                          "long runs: see BENCHMARKS.md for the compile time and break-even step count)"})
    max_documents: int | None = field(default=None, metadata={"help": "stop reading after this many (steps x batch)"})
    tensorboard: bool = field(default=False, metadata={"help": "also log to --out/tensorboard "
                              "(pip install tensorboard)"})
    eval_every: int | None = field(default=None, metadata={"help": "evaluate every k steps and at the end: "
                                   "evaluate.py's perplexity and passkey on a copy of the model (needs --eval-data)"})
    eval_data: list[str] | None = field(default=None, metadata={"nargs": "+", "help": "held-out documents for "
                                        "--eval-every's perplexity, read as `evaluate.py ppl --data` reads them"})
    eval_lengths: list[int] | None = field(default=None, metadata={"nargs": "+", "help": "lengths L of "
                                           "--eval-every (default: L_c and L_t)"})
    eval_docs: int = field(default=10, metadata={"help": "--eval-every's perplexity: the first N documents of "
                           ">= max(--eval-lengths) tokens (evaluate.py ppl --docs)"})
    eval_stride: int = field(default=evaluate.PplOptions.stride, metadata={"help": "--eval-every's sliding-window "
                             "step (evaluate.py ppl --stride)"})
    eval_trials: int = field(default=10, metadata={"help": "--eval-every's passkey prompts per length, seed "
                             f"{evaluate.PasskeyOptions.seed} (evaluate.py passkey --trials)"})
    export_only: bool = field(default=False, metadata={"help": "write a checkpoint of --out as a Hugging Face folder "
                              "--out/exports/step_N and stop (the run's settings.json decides the rest)"})
    checkpoint: str | None = field(default=None, metadata={"help": "with --export-only: step_N (default: the latest)"})
    plan: bool = field(default=False, metadata={"help": "print this run's per-GPU peak memory and FLOPs per step, "
                       "measured on fake tensors over --world-size fake ranks (plan.py), and stop: needs config.json "
                       "only, writes nothing"})
    world_size: int | None = field(default=None, metadata={"help": "with --plan: the ranks to plan for (default: "
                                   "torchrun's WORLD_SIZE, else 1)"})
    gpu_memory: float | None = field(default=None, metadata={"help": "with --plan: GiB per GPU; say whether the run "
                                     "fits, with a margin for what the estimate leaves out"})
    plan_json: str | None = field(default=None, metadata={"help": "with --plan: also write the numbers to this JSON"})


def parse_args(argv=None) -> TrainOptions:
    """The dataclass fields are the flags: --help, the defaults and the tests cannot disagree."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: fail(message)  # one line on stderr, exit 2, like every other bad input
    for f in dataclasses.fields(TrainOptions):
        kind = next(t for t in (bool, int, float, str) if t is f.type or {t, list[t]} & {*typing.get_args(f.type)})
        flag, help_ = "--" + f.name.replace("_", "-"), f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=help_)
        else:
            parser.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"),
                                nargs=f.metadata.get("nargs"), help=help_)
    return TrainOptions(**vars(parser.parse_args(argv)))


def checkpoint_config(o: TrainOptions) -> dict:
    """The config.json of --model, or the --preset shape of a from-scratch run."""
    if o.model is not None:
        if not (Path(o.model) / "config.json").is_file():
            raise FileNotFoundError(f"--model {o.model}: no such folder with a config.json")
        return load_config(o.model)
    if o.preset not in PRESETS:
        raise ValueError(f"--preset {o.preset!r} unknown; choose from {', '.join(PRESETS)}")
    return dict(PRESETS[o.preset])


def checkpoint_context(config: dict) -> tuple[int, str]:
    """The window a checkpoint was trained at, and the config key that says so: the original window of an
    already-scaled rope (Llama 3.1, an earlier export), else max_position_embeddings."""
    r = rope.rope_parameters(config)
    if r["rope_type"] != "default":
        return r["original_max_position_embeddings"], "original_max_position_embeddings"
    return config.get("max_position_embeddings", 2048), "max_position_embeddings"


def resolve(opts: TrainOptions, world_size: int) -> tuple[TrainOptions, dict]:
    """Fill the None defaults (paper recipe for --model, small for the embedded default) and check every value."""
    if opts.model is not None and opts.data is None and not opts.plan:  # never fine-tune on the demo corpus
        raise ValueError(f"--model {opts.model} needs --data (the embedded stdlib corpus is only the default of "
                         "the from-scratch demo)")
    config = checkpoint_config(opts)
    paper = opts.model is not None  # fine-tuning a real checkpoint: §4.1; from scratch: a one-minute demo
    context, context_key = checkpoint_context(config)
    saved = read_settings(Path(opts.out)) if opts.resume else None
    o = dataclasses.replace(opts)
    pick = lambda value, recipe, demo: value if value is not None else (recipe if paper else demo)  # noqa: E731
    o.window = pick(o.window, context, 128)
    if o.target is None:  # Table 1's 2k -> 16k; "plain" does not extend
        o.target = o.window if o.method == "plain" else 8 * o.window
    o.steps, o.batch_size = pick(o.steps, 1000, 100), pick(o.batch_size, 64, 8)
    o.micro_batch_size = pick(o.micro_batch_size, 1, max(1, o.batch_size // world_size))
    o.lr, o.warmup = pick(o.lr, 2e-5, 3e-3), pick(o.warmup, 10, 10)  # from scratch wants a larger rate
    o.save_every, o.log_every = pick(o.save_every, 100, 50), pick(o.log_every, 10, 10)
    if o.max_documents is None and saved:  # derived from --steps: keep the run's documents when --steps grows
        o.max_documents = saved["options"]["max_documents"]
    if o.max_documents is None:  # one fresh document per example is plenty
        o.max_documents = o.steps * o.batch_size
    check_numbers(o)
    if paper and o.window > context:  # the export would claim a window the checkpoint never saw as L_c
        raise ValueError(f"--window {o.window} > {o.model}'s context {context} ({context_key}): PoSE trains "
                         f"within the checkpoint's own window, L_c <= {context}")
    if o.target < o.window:
        raise ValueError(f"--target {o.target} < --window {o.window}: context extension needs L_t >= L_c")
    if o.crop == "random" and o.method == "pose":
        raise ValueError("--crop random applies to full / plain / randpos: PoSE's chunk 0 starts at the document's "
                         "start (v_0 = 0, §3.2) and --content sets where its other chunks read")
    if not 1 <= o.chunks <= o.window:
        raise ValueError(f"--chunks {o.chunks} must be in 1..window {o.window}")
    if o.method == "pose" and o.content == "released" and o.chunks != 2:  # else pose.sample refuses it at step 1
        raise ValueError(f"--content released is the authors' two-chunk rule: --chunks must be 2, got {o.chunks}")
    if o.batch_size % (o.micro_batch_size * world_size):
        raise ValueError(f"--batch-size {o.batch_size} is not divisible by --micro-batch-size {o.micro_batch_size}"
                         f" x world size {world_size}")
    if not o.plan and (o.world_size, o.gpu_memory, o.plan_json) != (None, None, None):
        raise ValueError("--world-size, --gpu-memory and --plan-json go with --plan (a run's world is torchrun's)")
    if o.plan:  # plan.py: config.json is all it reads, and it writes nothing (no --data, no --out)
        return check_beta(o), config
    if o.data is not None:
        find_files(o.data)  # a missing file, an empty folder or glob: one line now, before anything is written
    if o.model is not None:  # names, shapes, dtypes of every weight, from the headers alone (no data read)
        check_checkpoint(o.model, args_from_config(config))
    if o.checkpoint is not None:
        raise ValueError("--checkpoint picks what --export-only exports; training resumes from the latest (--resume)")
    check_eval(o)
    if o.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (an optional extra)
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    check_writable(Path(o.out))
    latest = latest_checkpoint(Path(o.out))
    if not o.resume and latest is not None:
        raise ValueError(f"--out {o.out} already holds {latest}; pass --resume or a new --out")
    if saved:
        check_resume(o, saved, Path(o.out))
    if latest is not None and step_of(latest) > o.steps:
        raise ValueError(f"--steps {o.steps} is below {latest}'s step {step_of(latest)}; to export that checkpoint: "
                         f"python train.py --export-only --out {o.out}")
    return check_beta(o), config


def check_beta(o: TrainOptions) -> TrainOptions:
    """--beta-fast goes with YaRN only (after check_resume, so that a resume names the changed flag first)."""
    if o.beta_fast is not None and (o.rope not in ("yarn", "yarn-revised") or not 1 < o.beta_fast < math.inf):
        raise ValueError(f"--beta-fast {o.beta_fast} needs --rope yarn or yarn-revised and a finite value > 1 "
                         f"(beta_slow is 1), got --rope {o.rope}")
    return o


# Each integer flag's range, both ends included: past 2^31 a size overflows torch's, past 2^63 a seed numpy's.
RANGES = {"window": (1, 2**31 - 1), "target": (1, 2**31 - 1), "chunks": (1, 2**31 - 1), "steps": (1, 2**31 - 1),
          "batch_size": (1, 2**31 - 1), "micro_batch_size": (1, 2**31 - 1), "warmup": (0, 2**31 - 1),
          "save_every": (1, 2**31 - 1), "keep_checkpoints": (1, 2**31 - 1), "log_every": (1, 2**31 - 1),
          "max_documents": (1, 2**62), "seed": (0, 2**63 - 1)}


def check_numbers(o: TrainOptions):
    """Every numeric flag in range, and the float ones finite: a NaN or infinite --lr, --weight-decay or
    --grad-clip would turn every weight into NaN at step 1 (and then be checkpointed)."""
    for name, (low, high) in RANGES.items():
        if not low <= getattr(o, name) <= high:
            raise ValueError(f"--{name.replace('_', '-')} must be in {low} .. {high}, got {getattr(o, name)}")
    for name in ("lr", "weight_decay", "grad_clip"):
        value = getattr(o, name)
        if not math.isfinite(value) or value < 0 or value == 0 and name == "lr":
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number {'> 0' if name == 'lr' else '>= 0'}"
                             f", got {value}")




def lr_factor(step: int, warmup: int, steps: int) -> float:
    """LambdaLR multiplier: linear warm-up to 1 over `warmup` steps, then linear decay towards 0 at `steps` (§4.1).
    Step 0 already trains (1/warmup, not HF's 0) and the last step keeps a small non-zero rate."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


# ---------------------------------------------------------------- data

@functools.lru_cache(maxsize=2)  # this epoch's and the next: one shuffle per epoch, not one per example
def epoch_order(seed: int, rank: int, epoch: int, n: int) -> np.ndarray:
    """The order in which this rank reads its n documents in this epoch (a function of its arguments)."""
    return np.random.default_rng([seed, rank, epoch, 2**32 - 1]).permutation(n)


def make_batch(documents, opts: TrainOptions, rank: int, step: int, micro: int, accum: int):
    """One micro-batch (tokens, targets, positions), each int64 [micro_batch, L]: a pure function of
    (seed, rank, step, micro), so a resumed run replays the very same stream.

    Every window starts at its document's start (token 0 = the document's BOS, where its tokenizer adds one, at
    position id 0), as the authors' code cuts every document and as PoSE's chunk 0 does (v_0 = 0); --crop random
    crops full / plain / randpos windows anywhere instead. Full-length takes a document's first min(L_x - 1, L_t) tokens
    (the authors truncate at L_t), so rows may differ in length: they are right-padded to the longest with
    target -100 (never scored; causal attention keeps every real token from seeing the padding)."""
    rng = np.random.default_rng([opts.seed, rank, step, micro])
    crop = opts.crop == "random"
    rows = []
    for b in range(opts.micro_batch_size):
        example = (step * accum + micro) * opts.micro_batch_size + b  # this rank's running example number
        epoch, k = divmod(example, len(documents))
        doc = documents[epoch_order(opts.seed, rank, epoch, len(documents))[k]]
        n = len(doc) - 1  # draw from doc[:-1] so the true next token x[index + 1] always exists (see docstring)
        if opts.method == "pose":
            index, positions = pose.sample(rng, n, opts.window, opts.target, opts.chunks, opts.content)
        elif opts.method == "randpos":
            index, positions = pose.randpos(rng, n, opts.window, opts.target, crop)
        else:  # full-length fine-tuning trains at up to L_t tokens, plain at L_c
            index, positions = pose.contiguous(rng, n, min(n, opts.target) if opts.method == "full" else opts.window,
                                               crop)
        rows.append(np.stack([doc[index], doc[index + 1], positions]).astype(np.int64))
    width = max(row.shape[1] for row in rows)
    batch = np.zeros((len(rows), 3, width), dtype=np.int64)  # padding: token 0, target -100, position 0
    batch[:, 1] = -100
    for b, row in enumerate(rows):
        batch[b, :, :row.shape[1]] = row
    return tuple(torch.from_numpy(batch).unbind(1))  # [B, 3, L] -> 3 x [B, L]


def load_data(opts: TrainOptions, args: ModelArgs, length: int, say=print):
    """This rank's documents of >= length + 1 tokens, and the tokenizer (folder or file) to ship with the export.
    Every rank raises the same error together on a corpus that leaves some rank nothing to train on."""
    rank, world = dist.get_rank(), dist.get_world_size()
    files = find_files(opts.data, say=say) if opts.data else None
    name = " ".join(map(str, as_list(opts.data))) if opts.data else "stdlib"
    tokenizer_path = opts.tokenizer or opts.model
    if tokenizer_path is None and needs_tokenizer(files):  # from scratch on text: the stdlib tokenizer (vocab 4096)
        if rank == 0:
            default_tokenizer()  # trained once and cached; the other ranks wait, then read the cache
        dist.barrier()
        tokenizer_path = default_tokenizer()
    tokenizer = Tokenizer(tokenizer_path) if needs_tokenizer(files) else None
    if tokenizer:
        check_vocabulary(tokenizer, args.vocab_size)
    # A token file's documents end at any EOS id the config lists, and at the tokenizer's (what data.py appends).
    config_eos = args.eos_token_id if isinstance(args.eos_token_id, list) else [args.eos_token_id]
    eos_ids = sorted({*config_eos, tokenizer.eos_id if tokenizer else None} - {None})
    say(f"data: {describe(files) if files else 'the embedded stdlib corpus'}"
        f"{f'; tokenizer {tokenizer.path}' if tokenizer else ''}")
    t0 = time.perf_counter()
    # Each rank parses only its own documents: a bad record may be found by one rank alone (agreed()).
    documents, skipped = agreed(read_documents, files, tokenizer, opts.text_field, length + 1, rank, world,
                                -(-opts.max_documents // world), eos_ids, every=5 if rank == 0 else math.inf)
    # Sums over ranks, then the extremes: the largest token id and the smallest shard (negated, so MAX works).
    counts = torch.tensor([len(documents), skipped, sum(len(d) for d in documents)], dtype=torch.float64)
    extremes = torch.tensor([max((int(d.max()) for d in documents), default=0), -len(documents),
                             -min((int(d.min()) for d in documents), default=0)], dtype=torch.float64)
    dist.all_reduce(counts)
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    (n_docs, n_skipped, n_tokens), (max_id, smallest_shard, min_id) = counts.long().tolist(), extremes.long().tolist()
    min_id = -min_id
    if smallest_shard == 0:
        raise ValueError(f"--data {name}: no document with >= {length + 1} tokens on some rank ({n_skipped} too "
                         f"short, {n_docs} kept over {world} ranks)")
    if max_id >= args.vocab_size or min_id < 0:  # an embedding lookup would fail (or wrap) at step 1
        raise ValueError(f"--data {name}: token id {max_id if max_id >= args.vocab_size else min_id} outside the "
                         f"model's vocabulary 0 .. {args.vocab_size - 1}")
    say(f"data: {n_docs:,} documents kept, {n_skipped:,} skipped as shorter than L_c + 1 = {length + 1} tokens, "
        f"{n_tokens:,} tokens, read in {time.perf_counter() - t0:.1f}s")
    return documents, tokenizer_path


# ---------------------------------------------------------------- model, distributed

@contextlib.contextmanager
def distributed():
    """torchrun's env:// rendezvous when launched by torchrun, a one-process group for plain `python train.py`.
    NCCL on CUDA, gloo on CPU; the rest of the file never asks which."""
    cuda = torch.cuda.is_available()
    if "RANK" in os.environ:
        dist.init_process_group("nccl" if cuda else "gloo")
    else:
        dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def agreed(work, *args, **kwargs):
    """work(*args, **kwargs) on every rank, failing on all of them together: a bad input that some ranks found (a record
    only rank 1 parses) is raised on every rank with the lowest such rank's message, which rank 0 prints (run()).
    Otherwise the rank that found it would exit alone, its message unsaid, and its peers die in their next
    collective with a "Connection reset by peer" traceback instead."""
    try:
        result, message = work(*args, **kwargs), None
    except (ValueError, FileNotFoundError) as e:
        result, message = None, str(e)
    messages = [None] * dist.get_world_size()
    dist.all_gather_object(messages, message)
    first = next((m for m in messages if m is not None), None)
    if first is not None:
        raise ValueError(first)
    return result


def scaled_rope(base: dict, kind: str, window: int, target: int, beta_fast: float | None = None) -> dict:
    """The checkpoint's rope with alpha = L_t / L_c interpolation (§3.1); "none" keeps it unchanged; beta_fast:
    YaRN's ramp end (None: its default 32).
    A checkpoint that already carries a scaling (Llama 3.1's llama3, an earlier export) is refused rather than
    silently replaced by a scaling of plain RoPE: its weights were trained on the scaled frequencies."""
    if kind == "none" or target == window:
        return base
    if base["rope_type"] != "default":
        raise ValueError(f"--model already uses rope scaling {base['rope_type']!r} x{base['factor']:g}; --rope {kind} "
                         f"would replace it. Pass --rope none to train with the checkpoint's own scaling")
    return rope.rope_parameters({"rope_theta": base["rope_theta"], "max_position_embeddings": window, "rope_scaling": {
        "rope_type": kind, "factor": target / window, "original_max_position_embeddings": window,
        **({"beta_fast": beta_fast, "beta_slow": 1.0} if beta_fast is not None else {})}})


def build_model(opts: TrainOptions, args: ModelArgs, device, mesh: DeviceMesh | None) -> Transformer:
    """wrap_model (meta-device model -> each block's forward compiled -> activation checkpointing -> fully_shard
    per block -> root) -> to_empty -> full state dict read on rank 0 (checkpoint or fresh init) and broadcast
    into the shards.
    mesh None: no FSDP2 (train() passes None to a lone CPU process, which has nothing to shard or cast: the
    hooks, copies and DTensor arithmetic cost ~4% of its step and change no number). Checkpoints are DCP's
    either way, so a run may resume at another world size."""
    model = wrap_model(opts, args, mesh, mixed_precision(device.type == "cuda"))
    model.to_empty(device=device)

    def full_state():  # rank 0 reads the weights (a NaN one is refused: agreed() tells every rank)
        if dist.get_rank() != 0:
            return {}
        if opts.model:
            return from_pretrained(opts.model, dtype=torch.float32).state_dict()  # fp32 master weights
        fresh = Transformer(args)
        fresh.init_weights(seed=opts.seed)
        return fresh.state_dict()

    full = agreed(full_state)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model


def mixed_precision(cuda: bool) -> MixedPrecisionPolicy:
    """FSDP2's policy: on a GPU bf16 compute from fp32 masters, gradients reduced in fp32; on a CPU fp32
    throughout (bf16 matmuls on CPU are slow, and tests compare exactly)."""
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cuda \
        else MixedPrecisionPolicy()


def wrap_model(opts: TrainOptions, args: ModelArgs, mesh: DeviceMesh | None, mp: MixedPrecisionPolicy):
    """build_model's meta-device part, which plan.py repeats on fake tensors: the model on the meta device,
    compiled, checkpointed and sharded in training's order, before any memory is allocated."""
    with torch.device("meta"):
        model = Transformer(args)  # no memory: every rank holds 1/world of the weights only after sharding
    model.set_rope(args.rope)  # outside the meta context: the rope tables must be real CPU tensors
    if opts.compile:  # first: it replaces each block's forward, and the hooks added below wrap it (compile never
        model.compile_regions()  # traces activation checkpointing's or FSDP2's hooks)
    for block in model.model.layers:
        if opts.activation_checkpointing:
            activation_checkpoint(block)  # composable form: parameter names stay HF's
        if mesh is not None:
            fully_shard(block, mesh=mesh, mp_policy=mp)
    if mesh is not None:
        fully_shard(model, mesh=mesh, mp_policy=mp)  # root: embeddings, final norm, lm_head
        register_fsdp_forward_method(model, "loss")  # loss() is not forward(); without this the root stays sharded
    return model


def build_optimizer(model, opts: TrainOptions):
    """§4.1's "AdamW with its default hyper-parameters" (torch's: betas 0.9/0.999, eps 1e-8, weight decay
    0.01); the schedule is set each step (lr_factor). fused: one kernel per step instead of ~10 per parameter
    (each a DTensor dispatch under FSDP2), the same update; the largest cost train.py added around the model
    on CPU (BENCHMARKS.md)."""
    return torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay, fused=True)


def keep_freed_memory() -> bool:
    """CPU training: keep the memory a step frees for the next step instead of giving it back to the kernel.

    glibc's malloc serves big blocks (above a threshold that never exceeds 32 MB) with mmap and unmaps them on
    free, and trims the heap's top, so each step's activations, logits and gradients arrive as fresh pages that
    the kernel faults in and zeroes: ~38,000 page faults (150 MB) per step of issue 15's tiny step, ~10 % of
    its time (BENCHMARKS.md). With mmap off (M_MMAP_MAX = 0) and trimming off (M_TRIM_THRESHOLD = -1) freed
    blocks stay in the heap and the next step reuses them, as jemalloc or tcmalloc would (PyTorch's CPU tuning
    guide preloads one of those; this needs no package). The process keeps its peak resident memory, which a
    training step reaches again every step. Skipped off glibc, and when the environment already sets either
    knob (MALLOC_MMAP_MAX_, MALLOC_TRIM_THRESHOLD_: the user's choice wins). Returns whether it applied."""
    import ctypes

    if sys.platform != "linux" or os.environ.keys() & {"MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"}:
        return False
    mallopt = ctypes.CDLL(None).mallopt  # glibc's returns 1 on success; musl's is a stub returning 0
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))


def training_args(o: TrainOptions, config: dict) -> ModelArgs:
    """The trained model's args: the checkpoint's (or preset's) shape with alpha = L_t / L_c on its rope."""
    if o.model is None:
        config = {**config, "max_position_embeddings": o.window}  # the from-scratch model's "original" context
    args = args_from_config(config)
    return dataclasses.replace(args, rope=scaled_rope(args.rope, o.rope, o.window, o.target, o.beta_fast),
                               max_position_embeddings=o.target)


def flops_per_token(model: Transformer, length: int) -> float:
    """Training FLOPs per token of a length-token sequence (PaLM App. B): 6 N for the weight matrices (N = the
    parameters outside the embedding table) + 12 L H Q T for attention (L layers, H heads of size Q)."""
    a = model.args
    n = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()
    return 6 * n + 12 * a.n_layers * a.n_heads * a.head_dim * length


def peak_flops(device) -> float:
    """Dense bf16 peak of the card (H100/H200 SXM 989 TFLOP/s unless it is an A100)."""
    return 312e12 if "A100" in torch.cuda.get_device_name(device) else 989e12


class Diverged(RuntimeError):
    pass


# ---------------------------------------------------------------- stopping on a signal

class Stopped(Exception):
    """Raised at a step boundary after SIGINT / SIGTERM (see the module docstring)."""

    def __init__(self, signum: int, step: int):
        super().__init__(signum, step)
        self.signum, self.step = signum, step


class Signals:
    """The first SIGINT / SIGTERM is noted, to stop at the next step boundary; a second stops at once."""

    def __init__(self):
        self.received, self.step = 0, 0

    def __call__(self, signum, frame):
        if self.received:
            raise KeyboardInterrupt
        self.received = signum

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def agreed(self, device) -> int:
        """The signal any rank received (0: none): every rank stops at the same step boundary."""
        flag = torch.tensor([self.received], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


def resume_command(argv: list[str]) -> str:
    """The command line that continues this run: the same launcher and flags, plus --resume."""
    args = [*argv, *([] if "--resume" in argv else ["--resume"])]
    if "LOCAL_WORLD_SIZE" not in os.environ:  # plain python
        return shlex.join(["python", sys.argv[0] if sys.argv[0].endswith("train.py") else "train.py", *args])
    launcher = ["torchrun", "--nproc_per_node", os.environ["LOCAL_WORLD_SIZE"]]
    if int(os.environ.get("GROUP_WORLD_SIZE", 1)) > 1:  # the rendezvous flags are the agent's, not ours to see
        launcher[1:1] = ["--nnodes", os.environ["GROUP_WORLD_SIZE"], "<your rendezvous flags>"]
    return shlex.join([*launcher, sys.argv[0], *args])








def eval_line(row: dict, steps: int) -> str:
    """The log's line for an evaluation: eval step 20/100: ppl 128 41.2, 1,024 97.3; passkey 128 0.80, ... (3s)."""
    show = lambda scores, f: ", ".join(f"{int(L):,} {f(v)}" for L, v in scores.items())  # noqa: E731
    return (f"eval step {row['step']}/{steps}: ppl {show(row['eval']['ppl'], lambda v: f'{v:.4g}')}; "
            f"passkey {show(row['eval']['passkey'], lambda v: f'{v:.2f}')} ({human(row['eval_s'])})")


# ---------------------------------------------------------------- output

def count(n: float, unit: str = "") -> str:
    """4.7M, 6.74B, 81G: three significant digits."""
    for scale, suffix in ((1e12, "T"), (1e9, "G" if unit else "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def human(seconds: float) -> str:
    """1h02m, 3m05s, 42s: evaluate.py's Progress style, to the minute above an hour."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def header(opts: TrainOptions, args: ModelArgs, config: dict, world: int, device) -> tuple[list[str], list[str]]:
    """The log's first lines, around load_data's "data:" line: what model, what extension, what batch."""
    with torch.device("meta"):
        n_params = sum(p.numel() for p in Transformer(args).parameters())
    context, _ = checkpoint_context(config)
    model = (f"model: {opts.model} ({count(n_params)} parameters, context {context:,})" if opts.model else
             f"model: from scratch, preset {opts.preset} ({count(n_params)} parameters, vocab {args.vocab_size:,})")
    r = args.rope
    scaling = "rope unchanged" if r["rope_type"] == "default" else \
        f"{r['rope_type']} rope x{r['factor']:g} on L_c {r['original_max_position_embeddings']:,}"
    method = {"pose": f"PoSE, {opts.chunks} chunks, content {opts.content}",
              "full": f"full-length, up to L_t = {opts.target:,} tokens a sequence",
              "randpos": "RandPos, random position ids in 0..L_t-1",
              "plain": "plain fine-tuning at positions 0..L_c-1"}[opts.method]
    length = opts.target if opts.method == "full" else opts.window
    accum = opts.batch_size // (opts.micro_batch_size * world)
    size = 12 * n_params  # fp32 weights + Adam's two moments
    return [model], [
        f"extension: L_c {opts.window:,} -> L_t {opts.target:,}, alpha {opts.target / opts.window:g} ({scaling}); "
        f"{method}",
        f"batch: {opts.batch_size} sequences of <= {length:,} tokens a step = world {world} ({device.type}) x "
        f"micro-batch {opts.micro_batch_size} x accumulation {accum}; {opts.steps:,} steps, lr {opts.lr:g} "
        f"({opts.warmup} warm-up, linear decay to 0 at step {opts.steps:,})",
        f"out: {opts.out} (settings.json, metrics.jsonl; a checkpoint every {opts.save_every} steps, "
        f"~{count(size, 'B')} each, {opts.keep_checkpoints} kept; final/ at the end)"]


def log_line(row: dict, steps: int) -> str:
    """A human line per log step; the same numbers go to metrics.jsonl."""
    parts = [f"step {row['step']}/{steps}", f"loss {row['loss']:.4f}", f"lr {row['lr']:.3g}",
             f"grad {row['grad_norm']:.3g}", f"{row['tokens_per_s']:,.0f} tok/s", f"{row['s_per_step']:.3g} s/step"]
    if "mfu" in row:
        parts.append(f"mfu {100 * row['mfu']:.0f}%")
    return "  ".join([*parts, f"mem {row['peak_mem_gib']:.2f} GiB", f"ETA {human(row['eta_s'])}"])


# ---------------------------------------------------------------- training

def attention_kernels(device):
    """On GPU, SDPA restricted to flash / memory-efficient kernels: a silent fall-back to the math kernel (and
    its [H, T, T] scores) is an error. A new context each time: sdpa_kernel's cannot be entered twice."""
    if device.type == "cuda":
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])
    return contextlib.nullcontext()


def train_step(model, optim, batches, grad_clip: float) -> tuple[float, float, float]:
    """One optimizer step over this rank's micro-batches [(tokens, targets, positions)]; returns (loss, grad
    norm, scored tokens of all ranks). A non-finite loss returns before the update, leaving the weights as
    they were. The loss is the mean NLL over the global batch's scored tokens (full-length rows may be padded,
    so count them): each rank scales its sum by world / global count, and FSDP2 averages the gradients over
    the ranks (divides by world), which leaves the gradient of that global mean."""
    device, world = next(model.parameters()).device, dist.get_world_size()
    scored = torch.tensor([float(sum((targets != -100).sum() for _, targets, _ in batches))], device=device)
    dist.all_reduce(scored)
    scale = world / scored.item()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of nll, scored tokens] on this rank
    for batch in batches:
        tokens, targets, positions = (t.to(device) for t in batch)
        with attention_kernels(device):
            sum_nll, n = model.loss(tokens, targets, positions)
            (sum_nll * scale).backward()
        totals += torch.stack([sum_nll.detach().double(), n.double()])
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    grad_norm = grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm
    dist.all_reduce(totals)
    loss = (totals[0] / totals[1]).item()
    if math.isfinite(loss):
        optim.step()
        optim.zero_grad(set_to_none=True)
    return loss, grad_norm.item(), totals[1].item()


def train(opts: TrainOptions, device, signals: Signals | None = None) -> Transformer:
    rank, world = dist.get_rank(), dist.get_world_size()
    opts, config = resolve(opts, world)
    signals = signals or Signals()
    out = Path(opts.out)
    say = functools.partial(print, flush=True) if rank == 0 else (lambda *a, **k: None)
    args = training_args(opts, config)
    length = opts.target if opts.method == "full" else opts.window  # tokens per training sequence (at most)
    accum = opts.batch_size // (opts.micro_batch_size * world)
    before, after = header(opts, args, config, world, device)
    for line in before:
        say(line)
    # Every method reads the same documents, those of >= L_c + 1 tokens (§4.1: "a minimum length requirement"
    # of L_c); full-length truncates them at L_t. A bad corpus fails here, before any weights load.
    documents, tokenizer_path = load_data(opts, args, opts.window, say)  # says "data: ..."
    ev = eval_setup(opts, args, tokenizer_path)  # --eval-data read and checked on rank 0 (None without it)
    for line in after:
        say(line)
    if opts.eval_every is not None:
        say(eval_header(opts, ev))
    wait_group = wait_group_for(opts, world)  # where the other ranks wait for rank 0's evaluations
    dist.barrier()
    saved = read_settings(out) if opts.resume else None

    # FSDP2 shards over several ranks, and on a GPU it computes in bf16 from fp32 masters even alone
    mesh = init_device_mesh(device.type, (world,)) if world > 1 or device.type == "cuda" else None
    if device.type == "cpu":
        keep_freed_memory()
    model = build_model(opts, args, device, mesh)
    optim = build_optimizer(model, opts)
    start = 0
    if opts.resume and (path := latest_checkpoint(out)) is not None:
        state = load_checkpoint(model, optim, path, opts)
        start = state["step"]
        if (state["seed"], state["world_size"]) != (opts.seed, world):
            say(f"warning: {path} was written with seed {state['seed']}, world {state['world_size']}: the data "
                "stream differs from an uninterrupted run")
        say(f"resumed from {path} at step {start}")
        old_steps = saved["options"]["steps"] if saved else opts.steps
        if old_steps != opts.steps and start < opts.steps:
            rate = lambda steps: opts.lr * lr_factor(start, opts.warmup, steps)  # noqa: E731
            say(f"--steps {old_steps} -> {opts.steps}: the learning rate follows the {opts.steps}-step schedule, "
                f"step {start + 1} at {rate(opts.steps):.3g} (the {old_steps}-step one had {rate(old_steps):.3g})")
    elif opts.resume:
        say(f"--resume: no checkpoint in {out}/checkpoints, starting at step 0")
    # Only now, with the data read, the weights loaded (and found finite) and any checkpoint resumed, is anything
    # written: a bad input found on the way leaves a fresh --out absent and a resumed one as it was.
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_settings(out, run_settings(opts, world, device, tokenizer_path))
    metrics = out / "metrics.jsonl"
    if rank == 0:  # keep the rows of the steps we resume after, drop those a killed run logged beyond them
        rows = metrics.read_text().splitlines() if metrics.exists() and start else []
        metrics.write_text("".join(r + "\n" for r in rows if json.loads(r)["step"] <= start))
    board = None
    if opts.tensorboard and rank == 0:
        from torch.utils.tensorboard import SummaryWriter  # checked in resolve()
        board = SummaryWriter(log_dir=str(out / "tensorboard"))

    def save(step: int):  # never a checkpoint of non-finite weights (a finite loss, then an infinite gradient)
        if not weights_finite(model):
            raise Diverged(f"weights are not finite after step {step}; nothing saved, newest checkpoint: "
                           f"{latest_checkpoint(out)}")
        save_checkpoint(out, checkpoint_state(model, optim, step, opts), opts.keep_checkpoints)

    def evaluate_at(step: int) -> float:
        """--eval-every's row for this step: evaluated (run_eval), logged, written; returns the seconds it took."""
        t0 = time.perf_counter()
        scores = run_eval(model, args, ev, device, wait_group)
        seconds = time.perf_counter() - t0
        if rank == 0:
            row = {"step": step, "eval": scores, "eval_s": seconds}
            say(eval_line(row, opts.steps))
            with open(metrics, "a") as f:
                f.write(json.dumps(row) + "\n")
            if board is not None:
                for task, by_length in scores.items():
                    for L, value in by_length.items():
                        if value is not None:  # key_logprob of a tokenizer without a clean answer (passkey_ids)
                            board.add_scalar(f"eval/{task}_{L}", value, step)
                board.flush()
        return seconds

    flops = flops_per_token(model, length)
    try:
        # The weights a run starts from are scored first (step 0: the checkpoint under the run's scaling, where a
        # retrieval-vs-steps curve begins), unless the run it continues already did (a kill between a step's
        # checkpoint and its evaluation; or --eval-every added on resume).
        due = [opts.eval_every is not None and rank == 0 and
               not any(r.get("step") == start and "eval" in r for r in map(json.loads, rows))]
        dist.broadcast_object_list(due)
        if due[0]:
            evaluate_at(start)
        clock, clock_step, clock_tokens = time.perf_counter(), start, 0.0
        for step in range(start, opts.steps):
            signals.step = step
            if received := signals.agreed(device):  # a step boundary: every rank stops here, together
                if received == signal.SIGTERM and step > start:  # a scheduler's kill follows: keep the progress
                    save(step)
                raise Stopped(received, step)
            model.train()
            for group in optim.param_groups:  # the schedule is a function of the step (see lr_factor)
                group["lr"] = opts.lr * lr_factor(step, opts.warmup, opts.steps)
            batches = [make_batch(documents, opts, rank, step, micro, accum) for micro in range(accum)]
            loss, grad_norm, tokens = train_step(model, optim, batches, opts.grad_clip)
            lr, clock_tokens = optim.param_groups[0]["lr"], clock_tokens + tokens
            if not math.isfinite(loss):  # train_step made no update: no checkpoint from a broken step either
                last = latest_checkpoint(out)
                raise Diverged(f"loss is {loss} at step {step + 1}; stopped before the update, newest checkpoint: "
                               f"{last}")
            done = step + 1
            if done % opts.save_every == 0 or done == opts.steps:
                save(done)
            if done % opts.log_every == 0 or done == opts.steps or done == start + 1:  # step 1: it runs, and how fast
                elapsed = time.perf_counter() - clock
                seconds = elapsed / (done - clock_step)
                row = {"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                       "tokens_per_s": clock_tokens / elapsed, "s_per_step": seconds,  # scored tokens, all ranks
                       "eta_s": seconds * (opts.steps - done)}
                clock, clock_step, clock_tokens = time.perf_counter(), done, 0.0
                if device.type == "cuda":
                    row["mfu"] = row["tokens_per_s"] / world * flops / peak_flops(device)
                    row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                else:  # ru_maxrss: KiB on Linux; the whole process, not only tensors
                    row["peak_mem_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                say(log_line(row, opts.steps))
                if rank == 0:
                    with open(metrics, "a") as f:
                        f.write(json.dumps(row) + "\n")
                if board is not None:
                    for key, value in row.items():
                        if key != "step":
                            board.add_scalar(f"train/{key}", value, done)
                    board.flush()
            if opts.eval_every is not None and (done % opts.eval_every == 0 or done == opts.steps):
                clock += evaluate_at(done)  # after the checkpoint (a kill mid-evaluation keeps the step), off the clock
        signals.step = opts.steps
        if not weights_finite(model):  # the last save checked them, but a resumed finished run saves nothing
            raise Diverged(f"weights are not finite; not exported, newest checkpoint: {latest_checkpoint(out)}")
        say(f"exported {export(model, args, config if opts.model else None, opts, tokenizer_path, device)}")
    finally:
        if board is not None:
            board.close()
    return model


# ---------------------------------------------------------------- --export-only, main

def export_only(opts: TrainOptions) -> Path:
    """--export-only: --out's checkpoint (--checkpoint step_N, default the latest) as a Hugging Face folder
    --out/exports/step_N; the run's settings.json says what was trained (checkpoints.py does the loading)."""
    out = Path(opts.out)
    settings = read_settings(out)
    if settings is None:
        raise FileNotFoundError(f"--out {out}: no settings.json (not a train.py run folder)")
    run = TrainOptions(**{k: v for k, v in settings["options"].items() if k in TrainOptions.__dataclass_fields__})
    checkpoint = find_checkpoint(out, opts.checkpoint)
    config = checkpoint_config(run)
    folder = out / "exports" / checkpoint.name
    if dist.get_rank() == 0:
        plain = load_weights(training_args(run, config), checkpoint)
        folder.parent.mkdir(exist_ok=True)
        write_hf_folder(plain, config if run.model else None, run.model, settings["tokenizer_file"], folder,
                        torch.bfloat16 if settings["device"] == "cuda" else None)
    dist.barrier()
    return folder


def main(argv=None):
    """Run train.py; exit code 0, 1 (diverged), 2 (bad input) or 128 + the signal (stopped). Every rank
    ends the same way and only rank 0 speaks, so torchrun shows one line of ours, not one per rank."""
    signals = Signals()
    with signals.installed():
        opts = parse_args(argv)
        if opts.plan:  # fake ranks on fake tensors, no process group of ours; plan.py imports this file
            import plan
            code, message = plan.run(opts)
        else:
            with distributed() as device:
                code, message = run(opts, device, signals, argv if argv is not None else sys.argv[1:])
    if message and int(os.environ.get("RANK", 0)) == 0:
        print(message, file=sys.stderr if code else sys.stdout, flush=True)
    if code:
        sys.exit(code)


def run(opts: TrainOptions, device, signals: Signals, argv: list[str]) -> tuple[int, str | None]:
    """(exit code, the one line to print) of a run; nothing of it (no traceback, no model) outlives the call."""
    try:
        if opts.export_only:
            folder = export_only(opts)
            return 0, f"exported {folder}"
        train(opts, device, signals)
        return 0, None
    except (ValueError, FileNotFoundError) as e:
        return 2, f"error: {e}"
    except (Diverged, DiskFull) as e:
        return 1, f"error: {e}"
    except Stopped as e:
        return 128 + e.signum, stop_line(opts, argv, e.signum, f"before step {e.step + 1}")
    except KeyboardInterrupt:  # a second signal: at once, wherever the run was
        pass
    except Exception:
        if not signals.received:
            raise  # a bug: its traceback, from every rank
        # else part of the stop, e.g. the broken connection of a peer that stopped at once
    signum = signals.received or signal.SIGINT
    return 128 + signum, stop_line(opts, argv, signum, f"during step {signals.step + 1}")


def stop_line(opts: TrainOptions, argv: list[str], signum: int, when: str) -> str:
    latest = latest_checkpoint(Path(opts.out))
    saved = f"latest checkpoint {latest}" if latest else "no checkpoint yet"
    return f"stopped by {signal.Signals(signum).name} {when}; {saved}; resume: {resume_command(argv)}"


def fail(message: str):
    """argparse's errors: one line, from rank 0 only under torchrun, exit 2."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    # Leave without the interpreter's finalization and C++ exit. torch keeps the process group, and so gloo's
    # worker and socket threads, alive after destroy_process_group (DTensor's caches hold the DeviceMesh, which
    # holds the group), and a rank exits right after its last collective while its peer's sockets close: a rank
    # torn down around running gloo threads could abort ("terminate called without an active exception",
    # SIGABRT: rank 1 of the two-process test, under load). Everything is written and closed and the group
    # destroyed by now: only the exit code and the flushed output remain to deliver.
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
