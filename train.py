"""PoSE fine-tuning (arXiv 2309.10400 §3.2, recipe §4.1) with torchrun + FSDP2 + DCP; one code path for CPU and GPU.

    python train.py                       # embedded default: tiny model, stdlib corpus, ~1 min on CPU -> out/final
    torchrun --nproc_per_node 8 train.py --model ./Llama-2-7b-hf --data pile.jsonl --target 16384
    torchrun --nproc_per_node 8 train.py --model ./Llama-2-7b-hf --data pile.jsonl --target 16384 --resume
    torchrun --nproc_per_node 2 train.py  # CPU: two processes over gloo (what CI runs)
    python train.py --compile             # torch.compile per block: pays off on long runs (BENCHMARKS.md)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 train.py ...  # shared --out
    python evaluate.py ppl --model out/final  # the export is a Hugging Face LLaMA folder
On a CPU busy with other jobs, OMP_NUM_THREADS=1 is several times faster (idle OpenMP threads spin).

Defaults are the paper's §4.1 recipe for a real --model: window L_c = the checkpoint's context, N = 2 chunks with
uniform content (Eq. 3-5), linear interpolation with alpha = L_t / L_c, 1,000 steps, global batch 64, AdamW with
torch's defaults, lr 2e-5, 10 warm-up steps then linear decay, bf16 on GPU. Without --model/--data the embedded
default trains the "tiny" preset from scratch on the .py files of Python's standard library (L_c 128 -> L_t 1,024)
with a 4,096-piece sentencepiece tokenizer trained on them at first use and cached in .cache/.

--data: a .jsonl (field --text-field), a .txt (one document), a directory of text files (one per file), or
pre-tokenised ids: a 1-D .npy of any integer dtype, or a raw uint16 .bin (nanoGPT layout), in which every
document ends with EOS (the config's eos_token_id), exactly what tokenising text with eos=True gives.
Each rank tokenises only its own shard (every world-th document), so tokenising is spread over the ranks;
corpora too large for that are better pre-tokenised once into .npy (memory-mapped, nothing re-read).

Windows: every example starts at its document's start, so token 0 is the document's BOS at position id 0, as in
the authors' code (each document tokenised with truncation=True) and as evaluation feeds every window; PoSE's
chunk 0 does so by Eq. 5 (v_0 = 0). Every method reads the same documents, those of >= L_c + 1 tokens (§4.1's
minimum length); full-length takes each one's first min(L_x, L_t) tokens. --crop random crops full / plain /
randpos windows anywhere instead (for many epochs over few documents; see pose.contiguous for why not default).

Labels: every position's label is the document's true next token x[index + 1]. Where Eq. 5 skips text
(v_1 > v_0), the token after a chunk's last one in the *window* is not its successor in the text, so the usual
"shift the window by one" would teach the model to predict an unrelated token; we draw indices from
doc[:-1] so x[index + 1] always exists, and every one of the L_c positions is scored (no -100 needed).
"""
import argparse
import contextlib
import dataclasses
import functools
import io
import json
import math
import resource
import os
import shutil
import sys
import sysconfig
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed._composable import checkpoint as activation_checkpoint
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor
from torch.nn.attention import SDPBackend, sdpa_kernel

import pose
import rope
from model import PRESETS, ModelArgs, Tokenizer, Transformer, load_config

CACHE = Path(os.environ.get("POSE_CACHE", Path(__file__).resolve().parent / ".cache"))
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".tex", ".py")


@dataclass
class TrainOptions:
    """Every flag of train.py; None means "the paper's value for --model, a small one for the embedded default"."""
    model: str | None = field(default=None, metadata={"help": "Hugging Face LLaMA folder (config.json, safetensors)"})
    preset: str = field(default="tiny", metadata={"help": f"from-scratch shape when no --model: {', '.join(PRESETS)}"})
    data: str | None = field(default=None, metadata={"help": ".jsonl | .txt | folder | .npy | .bin (default: stdlib)"})
    text_field: str = field(default="text", metadata={"help": "the .jsonl field holding the text"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer.model (default: --model's or stdlib's)"})
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


def parse_args(argv=None) -> TrainOptions:
    """The dataclass fields are the flags: --help, the defaults and the tests cannot disagree."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: fail(message)  # one line on stderr, exit 2, like every other bad input
    for f in dataclasses.fields(TrainOptions):
        kind = next(t for t in (bool, int, float, str) if t is f.type or t in typing.get_args(f.type))
        flag, help_ = "--" + f.name.replace("_", "-"), f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=help_)
        else:
            parser.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"), help=help_)
    return TrainOptions(**vars(parser.parse_args(argv)))


def resolve(opts: TrainOptions, world_size: int) -> tuple[TrainOptions, dict]:
    """Fill the None defaults (paper recipe for --model, small for the embedded default) and check every value."""
    if opts.model is not None:
        if not (Path(opts.model) / "config.json").is_file():
            raise FileNotFoundError(f"--model {opts.model}: no such folder with a config.json")
        config = load_config(opts.model)
    elif opts.preset in PRESETS:
        config = dict(PRESETS[opts.preset])
    else:
        raise ValueError(f"--preset {opts.preset!r} unknown; choose from {', '.join(PRESETS)}")
    paper = opts.model is not None  # fine-tuning a real checkpoint: §4.1; from scratch: a one-minute demo
    o = dataclasses.replace(opts)
    pick = lambda value, recipe, demo: value if value is not None else (recipe if paper else demo)  # noqa: E731
    o.window = pick(o.window, config.get("max_position_embeddings", 2048), 128)
    if o.target is None:  # Table 1's 2k -> 16k; "plain" does not extend
        o.target = o.window if o.method == "plain" else 8 * o.window
    o.steps, o.batch_size = pick(o.steps, 1000, 100), pick(o.batch_size, 64, 8)
    o.micro_batch_size = pick(o.micro_batch_size, 1, max(1, o.batch_size // world_size))
    o.lr, o.warmup = pick(o.lr, 2e-5, 3e-3), pick(o.warmup, 10, 10)  # from scratch wants a larger rate
    o.save_every, o.log_every = pick(o.save_every, 100, 50), pick(o.log_every, 10, 10)
    o.max_documents = o.max_documents or o.steps * o.batch_size  # one fresh document per example is plenty
    for name in ("window", "steps", "batch_size", "micro_batch_size", "lr", "save_every", "log_every",
                 "keep_checkpoints", "max_documents"):
        if getattr(o, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(o, name)}")
    if o.weight_decay < 0 or o.grad_clip < 0:
        raise ValueError(f"--weight-decay {o.weight_decay} and --grad-clip {o.grad_clip} must be >= 0")
    if o.target < o.window:
        raise ValueError(f"--target {o.target} < --window {o.window}: context extension needs L_t >= L_c")
    if o.crop == "random" and o.method == "pose":
        raise ValueError("--crop random applies to full / plain / randpos: PoSE's chunk 0 starts at the document's "
                         "start (v_0 = 0, §3.2) and --content sets where its other chunks read")
    if not 1 <= o.chunks <= o.window:
        raise ValueError(f"--chunks {o.chunks} must be in 1..window {o.window}")
    if o.batch_size % (o.micro_batch_size * world_size):
        raise ValueError(f"--batch-size {o.batch_size} is not divisible by --micro-batch-size {o.micro_batch_size}"
                         f" x world size {world_size}")
    if o.data is not None and not Path(o.data).exists():
        raise FileNotFoundError(f"--data {o.data}: no such file or folder")
    check_writable(Path(o.out))
    if not o.resume and latest_checkpoint(Path(o.out)) is not None:
        raise ValueError(f"--out {o.out} already holds {latest_checkpoint(Path(o.out))}; pass --resume or a new --out")
    return o, config


def check_writable(out: Path):
    """Refuse an --out we could not write, without creating anything yet (nothing half-written on bad input)."""
    probe = out.resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out} is not writable ({probe} is not a writable folder)")


def lr_factor(step: int, warmup: int, steps: int) -> float:
    """LambdaLR multiplier: linear warm-up to 1 over `warmup` steps, then linear decay towards 0 at `steps` (§4.1).
    Step 0 already trains (1/warmup, not HF's 0) and the last step keeps a small non-zero rate."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


# ---------------------------------------------------------------- data

def read_texts(path, text_field="text"):
    """Yield the raw text documents of a .jsonl / .txt file or a folder of text files, in a fixed order."""
    path = Path(path)
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES + (".jsonl",)):
            yield from read_texts(file, text_field)
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as lines:
            for lineno, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        yield json.loads(line)[text_field]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ValueError(f"{path}:{lineno}: not a JSON object with a {text_field!r} field") from None
    elif path.suffix in TEXT_SUFFIXES:
        yield path.read_text(encoding="utf-8", errors="replace")
    else:
        raise ValueError(f"--data {path}: unsupported type {path.suffix!r} (.jsonl, .txt, a folder, .npy, .bin)")


def read_token_file(path, eos_id: int | list[int]) -> list[np.ndarray]:
    """Documents of a pre-tokenised 1-D .npy / uint16 .bin file; each ends with (and includes) its EOS."""
    path = Path(path)
    ids = np.load(path, mmap_mode="r") if path.suffix == ".npy" else np.memmap(path, dtype=np.uint16, mode="r")
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"--data {path}: expected a 1-D array of integer token ids, got {ids.dtype} {ids.shape}")
    ends = np.flatnonzero(np.isin(ids, eos_id)) + 1  # eos_id: an id, or a list (Llama 3 Instruct configs)
    return [ids[a:b] for a, b in zip(np.r_[0, ends], np.r_[ends, len(ids)]) if b > a]  # memory-mapped views


def read_documents(path, tokenizer=None, text_field="text", min_len=1, rank=0, world_size=1, max_documents=None,
                   eos_id=2, split="train"):
    """This rank's shard (documents rank, rank + world, ...) as int arrays of >= min_len tokens; path None is the
    embedded stdlib corpus (`split` "train" or "eval"). Text is tokenised with BOS and EOS; at most max_documents
    are kept. Returns (documents, n_skipped_too_short)."""
    if path is not None and Path(path).suffix in (".npy", ".bin"):
        source = read_token_file(path, eos_id)[rank::world_size]
    else:
        if tokenizer is None:
            raise ValueError(f"--data {path} is text: it needs a tokenizer.model (--tokenizer) or pre-tokenised .npy")
        texts = read_texts(path, text_field) if path is not None else default_texts(split)
        texts = (t for i, t in enumerate(texts) if i % world_size == rank)
        source = (np.asarray(tokenizer.encode(t, bos=True, eos=True), dtype=np.int32) for t in texts)
    documents, skipped = [], 0
    for doc in source:
        if len(doc) >= min_len:
            documents.append(doc)
            if max_documents and len(documents) >= max_documents:
                break
        else:
            skipped += 1  # §4.1 keeps documents >= L_c tokens only
    return documents, skipped


def default_texts(split="train", max_bytes=3_000_000) -> list[str]:
    """The embedded corpus: .py files of Python's standard library (no tests), in path order, every 10th one held
    out as split="eval"; capped at max_bytes of text so tokenising stays a second or two."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not {"site-packages", "test", "tests", "idle_test"} & set(p.parts))
    texts, size = [], 0
    for i, file in enumerate(files):
        if (i % 10 == 0) == (split == "eval") and size < max_bytes:
            texts.append(file.read_text(encoding="utf-8", errors="replace")[:50_000])  # a few huge files stay a few
            size += len(texts[-1])
    return texts


def default_tokenizer(vocab_size=4096) -> Path:
    """A sentencepiece BPE trained on a sample of the stdlib corpus at first use, cached atomically under .cache/."""
    path = CACHE / f"stdlib-py{sys.version_info[0]}.{sys.version_info[1]}-bpe{vocab_size}.model"
    if not path.exists():
        import sentencepiece as spm
        lines = [line for text in default_texts()[::3] for line in text.splitlines() if line.strip()][:60_000]
        proto = io.BytesIO()
        spm.SentencePieceTrainer.train(  # LLaMA's settings: unk 0, bos 1, eos 2; bytes for anything unseen
            sentence_iterator=iter(lines), model_writer=proto, vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(proto.getvalue())
        os.replace(tmp, path)
    return path


@functools.lru_cache(maxsize=2)  # this epoch's and the next: one shuffle per epoch, not one per example
def epoch_order(seed: int, rank: int, epoch: int, n: int) -> np.ndarray:
    """The order in which this rank reads its n documents in this epoch (a function of its arguments)."""
    return np.random.default_rng([seed, rank, epoch, 2**32 - 1]).permutation(n)


def make_batch(documents, opts: TrainOptions, rank: int, step: int, micro: int, accum: int):
    """One micro-batch (tokens, targets, positions), each int64 [micro_batch, L]: a pure function of
    (seed, rank, step, micro), so a resumed run replays the very same stream.

    Every window starts at its document's start (token 0 = the document's BOS at position id 0), as the
    authors' code cuts every document and as PoSE's chunk 0 does (v_0 = 0); --crop random crops full /
    plain / randpos windows anywhere instead. Full-length takes a document's first min(L_x - 1, L_t) tokens
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
    """This rank's documents of >= length + 1 tokens, and the tokenizer.model to ship with the export (or None).
    Every rank raises the same error together on a corpus that leaves some rank nothing to train on."""
    rank, world = dist.get_rank(), dist.get_world_size()
    text = opts.data is None or Path(opts.data).suffix not in (".npy", ".bin")
    tokenizer_path = opts.tokenizer or opts.model
    if tokenizer_path is None and text:  # from scratch on text: the stdlib tokenizer (vocab 4096 = the presets')
        if rank == 0:
            default_tokenizer()  # trained once and cached; the other ranks wait, then read the cache
        dist.barrier()
        tokenizer_path = default_tokenizer()
    tokenizer = Tokenizer(tokenizer_path) if text else None
    if tokenizer_path is not None and Path(tokenizer_path).is_dir():
        tokenizer_path = Path(tokenizer_path) / "tokenizer.model"
    if tokenizer_path is not None and not Path(tokenizer_path).is_file():
        tokenizer_path = None  # pre-tokenised data and a checkpoint without tokenizer.model: nothing to copy
    t0 = time.perf_counter()
    documents, skipped = read_documents(opts.data, tokenizer, opts.text_field, length + 1, rank, world,
                                        -(-opts.max_documents // world), args.eos_token_id)
    # Sums over ranks, then the extremes: the largest token id and the smallest shard (negated, so MAX works).
    counts = torch.tensor([len(documents), skipped, sum(len(d) for d in documents)], dtype=torch.float64)
    extremes = torch.tensor([max((int(d.max()) for d in documents), default=0), -len(documents)], dtype=torch.float64)
    dist.all_reduce(counts)
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    (n_docs, n_skipped, n_tokens), (max_id, smallest_shard) = counts.long().tolist(), extremes.long().tolist()
    if smallest_shard == 0:
        raise ValueError(f"--data {opts.data or 'stdlib'}: no document with >= {length + 1} tokens on some rank "
                         f"({n_skipped} too short, {n_docs} kept over {world} ranks)")
    if max_id >= args.vocab_size:
        raise ValueError(f"--data {opts.data}: token id {max_id} >= the model's vocab_size {args.vocab_size}")
    say(f"data: {n_docs} documents, {n_tokens / 1e6:.2f}M tokens ({n_skipped} shorter than {length + 1} skipped),"
        f" read in {time.perf_counter() - t0:.1f}s")
    return documents, tokenizer_path


# ---------------------------------------------------------------- model, distributed, checkpoints

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


def scaled_rope(base: dict, kind: str, window: int, target: int) -> dict:
    """The checkpoint's rope with alpha = L_t / L_c interpolation (§3.1); "none" keeps it unchanged.
    A checkpoint that already carries a scaling (Llama 3.1's llama3, an earlier export) is refused rather than
    silently replaced by a scaling of plain RoPE: its weights were trained on the scaled frequencies."""
    if kind == "none" or target == window:
        return base
    if base["rope_type"] != "default":
        raise ValueError(f"--model already uses rope scaling {base['rope_type']!r} x{base['factor']:g}; --rope {kind} "
                         f"would replace it. Pass --rope none to train with the checkpoint's own scaling")
    return rope.rope_parameters({"rope_theta": base["rope_theta"], "max_position_embeddings": window, "rope_scaling": {
        "rope_type": kind, "factor": target / window, "original_max_position_embeddings": window}})


def build_model(opts: TrainOptions, args: ModelArgs, device, mesh: DeviceMesh | None) -> Transformer:
    """torchtitan's order: meta-device model -> activation checkpointing -> compile -> fully_shard per block ->
    root -> to_empty -> full state dict read on rank 0 (checkpoint or fresh init) and broadcast into the shards.
    mesh None: no FSDP2 (train() passes None to a lone CPU process, which has nothing to shard or cast: the
    hooks, copies and DTensor arithmetic cost ~4% of its step and change no number). Checkpoints are DCP's
    either way, so a run may resume at another world size."""
    with torch.device("meta"):
        model = Transformer(args)  # no memory: every rank holds 1/world of the weights only after sharding
    model.set_rope(args.rope)  # outside the meta context: the rope tables must be real CPU tensors
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" \
        else MixedPrecisionPolicy()  # CPU: fp32 throughout (bf16 matmuls on CPU are slow, and tests compare exactly)
    if opts.compile:
        model.compile_regions()  # replaces each block's forward; the hooks added below wrap it
    for block in model.model.layers:
        if opts.activation_checkpointing:
            activation_checkpoint(block)  # composable form: parameter names stay HF's
        if mesh is not None:
            fully_shard(block, mesh=mesh, mp_policy=mp)
    if mesh is not None:
        fully_shard(model, mesh=mesh, mp_policy=mp)  # root: embeddings, final norm, lm_head
        register_fsdp_forward_method(model, "loss")  # loss() is not forward(); without this the root stays sharded
    model.to_empty(device=device)
    full = {}
    if dist.get_rank() == 0:
        if opts.model:
            full = Transformer.from_pretrained(opts.model, dtype=torch.float32).state_dict()  # fp32 master weights
        else:
            fresh = Transformer(args)
            fresh.init_weights(seed=opts.seed)
            full = fresh.state_dict()
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model


def build_optimizer(model, opts: TrainOptions):
    """§4.1's "AdamW with its default hyper-parameters" (torch's: betas 0.9/0.999, eps 1e-8, weight decay
    0.01) and the warm-up / linear-decay schedule. fused: one kernel per step instead of ~10 per parameter
    (each a DTensor dispatch under FSDP2), the same update; the largest cost train.py added around the model
    on CPU (BENCHMARKS.md)."""
    optim = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay, fused=True)
    return optim, torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_factor(s, opts.warmup, opts.steps))


def latest_checkpoint(out: Path) -> Path | None:
    done = sorted((out / "checkpoints").glob("step_*"))  # never the .tmp-* of an interrupted save
    return done[-1] if done else None


def checkpoint_state(model, optim, scheduler, step, opts) -> dict:
    """The one dict DCP saves and loads in place. The data position is `step`: the stream is a function of
    (seed, rank, step), so no generator state is needed (seed and world size are recorded to warn on change)."""
    model_sd, optim_sd = get_state_dict(model, optim)
    return {"model": model_sd, "optim": optim_sd, "scheduler": scheduler.state_dict(), "step": step,
            "seed": opts.seed, "world_size": dist.get_world_size()}


def save_checkpoint(out: Path, state: dict, keep: int):
    """Sharded DCP save into .tmp-step_N, then an atomic rename: a kill mid-save leaves the previous one intact."""
    final = out / "checkpoints" / f"step_{state['step']:06d}"
    tmp = final.with_name(".tmp-" + final.name)
    if final.exists():
        return  # same step, same state (e.g. --resume of a finished run)
    if dist.get_rank() == 0 and tmp.exists():
        shutil.rmtree(tmp)  # left by a killed save
    dist.barrier()
    dcp.save(state, checkpoint_id=tmp)
    dist.barrier()
    if dist.get_rank() == 0:
        os.replace(tmp, final)
        for old in sorted((out / "checkpoints").glob("step_*"))[:-keep]:
            shutil.rmtree(old)
    dist.barrier()


def export(model, args: ModelArgs, opts: TrainOptions, tokenizer_path, device):
    """Gather the full state dict on rank 0 and write a plain Hugging Face folder via save_pretrained."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    final = Path(opts.out) / "final"
    if dist.get_rank() == 0:
        with torch.device("meta"):
            plain = Transformer(args)
        plain.load_state_dict(full, assign=True)  # adopt the gathered tensors, no second copy
        plain.set_rope(args.rope)
        if args.tie_word_embeddings:
            plain.lm_head.weight = plain.model.embed_tokens.weight  # assign=True replaced the shared tensor
        if device.type == "cuda":
            plain.to(torch.bfloat16)  # what LLaMA checkpoints ship; the fp32 masters are in checkpoints/
        tmp, old = final.with_name(".tmp-final"), final.with_name(".old-final")
        shutil.rmtree(tmp, ignore_errors=True)
        plain.save_pretrained(tmp)  # config.json: rope scaling + max_position_embeddings = L_t
        if tokenizer_path is not None:
            shutil.copy(tokenizer_path, tmp / "tokenizer.model")
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
            if opts.model and (Path(opts.model) / name).is_file():  # what transformers / vLLM look for besides
                shutil.copy(Path(opts.model) / name, tmp / name)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


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


def train(opts: TrainOptions, device) -> Transformer:
    rank, world = dist.get_rank(), dist.get_world_size()
    opts, config = resolve(opts, world)
    out = Path(opts.out)
    say = print if rank == 0 else (lambda *a, **k: None)
    if opts.model is None:
        config["max_position_embeddings"] = opts.window  # the from-scratch model's "original" context is L_c
    args = ModelArgs.from_config(config)
    args = dataclasses.replace(args, rope=scaled_rope(args.rope, opts.rope, opts.window, opts.target),
                               max_position_embeddings=opts.target)
    length = opts.target if opts.method == "full" else opts.window  # tokens per training sequence (at most)
    accum = opts.batch_size // (opts.micro_batch_size * world)
    say("settings: " + " ".join(f"{k}={v}" for k, v in dataclasses.asdict(opts).items()))
    say(f"world {world} on {device.type}, gradient accumulation {accum}, sequence {length}, rope {args.rope}")

    # Every method reads the same documents, those of >= L_c + 1 tokens (§4.1: "a minimum length requirement"
    # of L_c); full-length truncates them at L_t. A bad corpus fails here, before any weights load.
    documents, tokenizer_path = load_data(opts, args, opts.window, say)
    dist.barrier()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    # FSDP2 shards over several ranks, and on a GPU it computes in bf16 from fp32 masters even alone
    mesh = init_device_mesh(device.type, (world,)) if world > 1 or device.type == "cuda" else None
    model = build_model(opts, args, device, mesh)
    optim, scheduler = build_optimizer(model, opts)
    start = 0
    if opts.resume and (path := latest_checkpoint(out)) is not None:
        state = checkpoint_state(model, optim, scheduler, 0, opts)
        dcp.load(state, checkpoint_id=path)
        set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
        if (state["seed"], state["world_size"]) != (opts.seed, world):
            say(f"warning: {path} was written with seed {state['seed']}, world {state['world_size']}: the data "
                "stream differs from an uninterrupted run")
        say(f"resumed from {path} at step {start}")
    elif opts.resume:
        say(f"--resume: no checkpoint in {out}/checkpoints, starting at step 0")
    metrics = out / "metrics.jsonl"
    if rank == 0:  # keep the rows of the steps we resume after, drop those a killed run logged beyond them
        rows = metrics.read_text().splitlines() if metrics.exists() and start else []
        metrics.write_text("".join(r + "\n" for r in rows if json.loads(r)["step"] <= start))

    flops = flops_per_token(model, length)
    clock, clock_step, clock_tokens = time.perf_counter(), start, 0.0
    for step in range(start, opts.steps):
        model.train()
        batches = [make_batch(documents, opts, rank, step, micro, accum) for micro in range(accum)]
        lr = scheduler.get_last_lr()[0]
        loss, grad_norm, tokens = train_step(model, optim, batches, opts.grad_clip)
        clock_tokens += tokens
        if not math.isfinite(loss):  # train_step made no update: no checkpoint from a broken step either
            last = latest_checkpoint(out)
            raise Diverged(f"loss is {loss} at step {step + 1}; stopped before the update, newest checkpoint: {last}")
        scheduler.step()
        done = step + 1
        if done % opts.save_every == 0 or done == opts.steps:
            save_checkpoint(out, checkpoint_state(model, optim, scheduler, done, opts), opts.keep_checkpoints)
        if done % opts.log_every == 0 or done == opts.steps:
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
            say(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            if rank == 0:
                with open(metrics, "a") as f:
                    f.write(json.dumps(row) + "\n")
    say(f"exported {export(model, args, opts, tokenizer_path, device)}")
    return model


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    opts = parse_args(argv)
    with distributed() as device:
        try:
            train(opts, device)
        except (ValueError, FileNotFoundError) as e:
            if dist.get_rank() == 0:
                print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except Diverged as e:
            if dist.get_rank() == 0:
                print(f"error: {e}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
