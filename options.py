"""train.py's options: the flags (TrainOptions), the recipe's defaults, and every refusal before anything is written.

    python train.py --help                       # the fields below are the flags
    python -m pytest tests/test_recipe.py -q     # every default written out in the test

resolve() is the one entry: it fills the None fields with the paper's §4.1 recipe for a real --model (window
L_c = the checkpoint's context, 1,000 steps, global batch 64, lr 2e-5, 10 warm-up steps) or with the one-minute
demo's values (the "tiny" preset from scratch, L_c 128 -> L_t 1,024), then refuses, in one line naming the flag
and the value, whatever would fail or silently train something else later: numbers out of range, a window past
the checkpoint's context, a bad corpus path, a checkpoint whose headers disagree with its config, an --out that
holds another run, a --resume that changes what is trained (checkpoints.RESUME_FIXED). training_args() is the
model that is trained: the checkpoint's shape with α = L_t / L_c on its rope (scaled_rope, §3.1).
"""
import argparse
import dataclasses
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import evaluate
import pose
import rope
from checkpoints import check_resume, check_writable, latest_checkpoint, read_settings, step_of
from data import find_files, needs_tokenizer
from hf import PRESETS, args_from_config, check_checkpoint, load_config
from model import ModelArgs


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
    context: int | None = field(default=None, metadata={"help": "L_c, the window the checkpoint was pre-trained at, "
                                "which alpha = L_t / L_c divides by (default: config.json's: the original window of an "
                                "already-scaled rope, else max_position_embeddings; give it where that is not the "
                                "pre-training window, e.g. Qwen3's 40,960 for 32,768)"})
    window: int | None = field(default=None, metadata={"help": "training window in tokens, <= L_c (default: L_c): "
                               "PoSE's chunks hold this many tokens, its skips span L_t whatever it is"})
    target: int | None = field(default=None, metadata={"help": "target context L_t (default: 8 x L_c)"})
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
    eval_max_tokens: int | None = field(default=None, metadata={"help": "--eval-every's perplexity: each document "
                                        "cut to its first N tokens, N >= max(--eval-lengths) (evaluate.py ppl "
                                        "--max-tokens; default: whole documents)"})
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


def parse_args(argv=None, description: str | None = None) -> TrainOptions:
    """The dataclass fields are the flags: --help, the defaults and the tests cannot disagree."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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


def fail(message: str):
    """argparse's errors: one line, from rank 0 only under torchrun, exit 2."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


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
    """(the options with every default filled in and every value checked, the checkpoint's config.json dict)."""
    if opts.model is not None and opts.data is None and not opts.plan:  # never fine-tune on the demo corpus
        raise ValueError(f"--model {opts.model} needs --data (the embedded stdlib corpus is only the default of "
                         "the from-scratch demo)")
    config = checkpoint_config(opts)
    saved = read_settings(Path(opts.out)) if opts.resume else None
    o = recipe_defaults(opts, checkpoint_context(config)[0], world_size, saved)
    refuse(o, config, world_size, saved)
    return o, config


def recipe_defaults(opts: TrainOptions, context: int, world_size: int, saved: dict | None) -> TrainOptions:
    """The None fields filled: §4.1's recipe when fine-tuning a real --model, a one-minute demo from scratch."""
    paper = opts.model is not None
    o = dataclasses.replace(opts)
    pick = lambda value, recipe, demo: value if value is not None else (recipe if paper else demo)  # noqa: E731
    # L_c: the checkpoint's own context; from scratch, the window the model is trained at (the demo's 128)
    o.context = pick(o.context, context, o.window if o.window is not None else 128)
    o.window = pick(o.window, o.context, o.context)  # shorter windows save memory; the skips still span L_t
    if o.target is None:  # Table 1's 2k -> 16k; "plain" does not extend
        o.target = o.context if o.method == "plain" else 8 * o.context
    o.steps, o.batch_size = pick(o.steps, 1000, 100), pick(o.batch_size, 64, 8)
    o.micro_batch_size = pick(o.micro_batch_size, 1, max(1, o.batch_size // world_size))
    o.lr, o.warmup = pick(o.lr, 2e-5, 3e-3), pick(o.warmup, 10, 10)  # from scratch wants a larger rate
    o.save_every, o.log_every = pick(o.save_every, 100, 50), pick(o.log_every, 10, 10)
    if o.max_documents is None and saved:  # derived from --steps: keep the run's documents when --steps grows
        o.max_documents = saved["options"]["max_documents"]
    if o.max_documents is None:  # one fresh document per example is plenty
        o.max_documents = o.steps * o.batch_size
    return o


def refuse(o: TrainOptions, config: dict, world_size: int, saved: dict | None):
    """Every value checked, in one line naming the flag, before anything is written (the order is the tests')."""
    check_numbers(o)
    context, context_key = checkpoint_context(config)
    if o.model is not None and o.context > context:  # the export would claim a window the checkpoint never saw
        raise ValueError(f"--context {o.context} > {o.model}'s context {context} ({context_key}): L_c is the window "
                         f"the checkpoint was pre-trained at, at most {context}")
    if o.window > o.context:
        from_config = o.model is not None and o.context == context  # else L_c was given (or is the demo's window)
        what = f"{o.model}'s context {o.context} ({context_key})" if from_config else f"L_c = --context {o.context}"
        raise ValueError(f"--window {o.window} > {what}: PoSE trains within the checkpoint's own window, "
                         f"L_c <= {o.context}")
    if o.target < o.context:
        raise ValueError(f"--target {o.target} < L_c {o.context}: context extension needs L_t >= L_c")
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
    if not o.plan:  # plan.py reads config.json alone and writes nothing (no --data, no --out)
        check_inputs(o, config, saved)
    check_beta(o)


def check_inputs(o: TrainOptions, config: dict, saved: dict | None):
    """What a run reads and writes: the corpus paths, the weights' headers, --eval-*, --out and --resume."""
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


def check_beta(o: TrainOptions):
    """--beta-fast goes with YaRN only (after check_resume, so that a resume names the changed flag first)."""
    if o.beta_fast is not None and (o.rope not in ("yarn", "yarn-revised") or not 1 < o.beta_fast < math.inf):
        raise ValueError(f"--beta-fast {o.beta_fast} needs --rope yarn or yarn-revised and a finite value > 1 "
                         f"(beta_slow is 1), got --rope {o.rope}")


def check_eval(o):
    """Refuse bad --eval-* values (check_inputs, before anything is written); fills --eval-lengths."""
    if o.eval_every is None:
        if o.eval_data is not None or o.eval_lengths is not None:
            raise ValueError("--eval-data / --eval-lengths are --eval-every's: give --eval-every K too")
        return
    if o.eval_every <= 0:
        raise ValueError(f"--eval-every must be > 0, got {o.eval_every}")
    if o.eval_data is None:
        raise ValueError("--eval-every needs --eval-data: the held-out documents of its perplexity")
    for name in ("eval_docs", "eval_stride", "eval_trials"):
        if getattr(o, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(o, name)}")
    o.eval_lengths = o.eval_lengths or sorted({o.context, o.target})
    if min(o.eval_lengths) < 2:  # evaluate.py's own bound: a window predicts L - 1 tokens
        raise ValueError(f"--eval-lengths must be >= 2 tokens, got {min(o.eval_lengths)}")
    if o.eval_max_tokens is not None and o.eval_max_tokens < max(o.eval_lengths):  # it keeps documents of >= max(L)
        raise ValueError(f"--eval-max-tokens {o.eval_max_tokens} < the longest --eval-lengths {max(o.eval_lengths)}: "
                         "no document would be long enough to score")
    find_files(o.eval_data, "--eval-data")  # a missing file, an empty folder or glob: one line naming it
    if o.model is None and o.tokenizer is None and o.data is not None and not needs_tokenizer(find_files(o.data)):
        raise ValueError("--eval-every's passkey prompts are text, and a run on token files without --tokenizer "
                         "has none (nor will its export): pass --tokenizer")



RANGES = {"context": (1, 2**31 - 1), "window": (1, 2**31 - 1), "target": (1, 2**31 - 1),
          "chunks": (1, 2**31 - 1), "steps": (1, 2**31 - 1), "batch_size": (1, 2**31 - 1),
          "micro_batch_size": (1, 2**31 - 1), "warmup": (0, 2**31 - 1), "save_every": (1, 2**31 - 1),
          "keep_checkpoints": (1, 2**31 - 1), "log_every": (1, 2**31 - 1), "max_documents": (1, 2**62),
          "seed": (0, 2**63 - 1)}


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


def scaled_rope(base: dict, kind: str, context: int, target: int, beta_fast: float | None = None) -> dict:
    """The checkpoint's rope with alpha = L_t / L_c interpolation (§3.1), L_c = `context` (the checkpoint's own, not
    the training window: PoSE trains windows <= L_c); "none" keeps it unchanged; beta_fast: YaRN's ramp end (None:
    its default 32).
    A checkpoint that already carries a scaling (Llama 3.1's llama3, an earlier export) is refused rather than
    silently replaced by a scaling of plain RoPE: its weights were trained on the scaled frequencies."""
    if kind == "none" or target == context:
        return base
    if base["rope_type"] != "default":
        raise ValueError(f"--model already uses rope scaling {base['rope_type']!r} x{base['factor']:g}; --rope {kind} "
                         f"would replace it. Pass --rope none to train with the checkpoint's own scaling")
    return rope.interpolate(base, kind, target / context, context, beta_fast)


def training_args(o: TrainOptions, config: dict) -> ModelArgs:
    """The trained model's args: the checkpoint's (or preset's) shape with alpha = L_t / L_c on its rope."""
    if o.model is None:
        config = {**config, "max_position_embeddings": o.context}  # the from-scratch model's "original" context
    args = args_from_config(config)
    return dataclasses.replace(args, rope=scaled_rope(args.rope, o.rope, o.context, o.target, o.beta_fast),
                               max_position_embeddings=o.target)
