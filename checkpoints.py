"""The run folder of train.py on disk: its settings and what --resume may change, DCP checkpoints, the export.

    runs/pose16k/settings.json                 the resolved options (written once the inputs are checked)
    runs/pose16k/metrics.jsonl                 a row per logged step (train.py)
    runs/pose16k/checkpoints/step_000500/      DCP: every rank's shards of fp32 weights and Adam's moments
    runs/pose16k/final/                        the Hugging Face folder at the end (bf16 on GPU)
    runs/pose16k/exports/step_000500/          `python train.py --export-only --out runs/pose16k --checkpoint 500`

A run is its --out folder. settings.json holds the resolved options; --resume refuses, in one line, any change of
what is trained: RESUME_FIXED (the checkpoint and corpus, L_c, the training window, L_t and with them alpha, the
method and its sampling, the rope, the batch, the optimizer's hyper-parameters, the seed). Free to change: --steps,
saving and logging, and --micro-batch-size and the world size (memory, hardware). A checkpoint holds the model and
optimizer state and the step, nothing else: the data stream is a function of (seed, rank, step) and the learning
rate of the step (train.py), so no generator or scheduler state is saved. Checkpoints are DCP's (sharded, one file
per rank), so a run may resume at another world size, and --export-only reads one on a single process. Every file is
written under a temporary name and renamed, so a kill at any moment leaves the previous checkpoint / export intact.

A run folder may come from elsewhere: every checkpoint is read through safe_dcp.dcp_load, which admits only what
this project's checkpoints hold and runs nothing from the folder (DCP's own reader unpickles .metadata and the
plain values with no restriction).

In order: settings.json and the resume refusals; checkpoints (latest, save); loading one (damage, load, the one
--export-only picks); the Hugging Face folder (export gathers the shards, write_hf_folder writes config, weights
and tokenizer files).
"""
import contextlib
import dataclasses
import errno
import json
import os
import shlex
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from torch.distributed.tensor import DTensor

from data import tokenizer_files
from hf import save_pretrained
from model import ModelArgs, Transformer
from safe_dcp import SafeReader, Untrusted, dcp_load

# ---------------------------------------------------------------- the run's settings (resume safety)

# What is trained: a change on --resume would silently train another thing (a new target changes alpha, so the
# weights trained so far would meet new frequencies). Everything else may change (see the docstring).
RESUME_FIXED = ("model", "preset", "data", "text_field", "tokenizer", "context", "window", "target", "method",
                "chunks", "content", "crop", "rope", "beta_fast", "batch_size", "lr", "warmup", "weight_decay",
                "grad_clip", "seed", "max_documents")
PATHS = ("model", "data", "tokenizer")


def run_settings(o, world: int, device, tokenizer_path) -> dict:
    """settings.json: the resolved options (paths made absolute, so a resume from elsewhere compares the same
    files), the world, and what --export-only needs besides."""
    options = dataclasses.asdict(o)
    for name in PATHS:  # --data is a list of files, folders and globs
        value = options[name]
        if isinstance(value, (list, tuple)):
            options[name] = [str(Path(v).resolve()) for v in value]
        elif value is not None:
            options[name] = str(Path(value).resolve())
    return {"options": options, "world_size": world, "device": device.type,
            "tokenizer_file": None if tokenizer_path is None else str(Path(tokenizer_path).resolve())}


# What --resume and --export-only read back from settings.json: check_resume's options, --steps (the schedule's
# length, train.resume), and export_only's tokenizer and device. Every train.py has written them since settings.json
# exists (issue 16), but --beta-fast and --context, added since (read_settings gives a settings.json from before them
# what their absence meant then). The other options (logging, --compile, --eval-*, --plan's) are never read back.
SETTINGS_READ = ("device", "tokenizer_file")
OPTIONS_READ = (*RESUME_FIXED, "steps")


def read_settings(out: Path) -> dict | None:
    """--out's settings.json (None when there is none) holding every key that is read back; one missing is refused
    in one line naming the file and the key: a default in its place would resume or export another run."""
    path = out / "settings.json"
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text())
        assert isinstance(settings["options"], dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ValueError(f"{path}: not a settings file written by train.py") from None
    options = settings["options"]
    options.setdefault("beta_fast", None)  # before issue 25: YaRN's own ramp end, 32, the only one
    if "window" in options:  # before issue 33 (--context), L_c was the training window
        options.setdefault("context", options["window"])
    missing = [f"key {k!r}" for k in SETTINGS_READ if k not in settings] + \
        [f"options key {k!r}" for k in OPTIONS_READ if k not in options]
    if missing:
        raise ValueError(f"{path}: {missing[0]} missing, which every settings.json of train.py holds (hand-edited?): "
                         f"--resume and --export-only read it back to continue or export the same run")
    return settings


def write_settings(out: Path, settings: dict):
    """settings.json, atomically: a reader sees the old file or the new one; out of space, DiskFull and no temporary."""
    tmp, text = out / f".tmp{os.getpid()}-settings.json", json.dumps(settings, indent=1) + "\n"
    try:
        tmp.write_text(text)
        os.replace(tmp, out / "settings.json")
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if not disk_full(e):
            raise
        raise DiskFull(f"{full_disk_line(out / 'settings.json', len(text))}; {out / 'settings.json'} is as it "
                       f"was") from None


def check_resume(o, saved: dict, out: Path):
    """Refuse, in one line, a --resume that changes what is trained (RESUME_FIXED)."""
    now = run_settings(o, 1, torch.device("cpu"), None)["options"]
    for name in RESUME_FIXED:
        if now[name] != saved["options"][name]:  # read_settings: every one is there
            show = lambda v: " ".join(map(str, v)) if isinstance(v, list) else v  # noqa: E731
            raise ValueError(f"--resume: --{name.replace('_', '-')} {show(now[name])} differs from this run's "
                             f"{show(saved['options'][name])} ({out / 'settings.json'}); a new --out starts a new run")


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("step_"))


def check_writable(out: Path):
    """Refuse an --out we could not write, without creating anything yet (nothing half-written on bad input)."""
    probe = out.resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out} is not writable ({probe} is not a writable folder)")


# ---------------------------------------------------------------- checkpoints (DCP)

def latest_checkpoint(out: Path) -> Path | None:
    done = sorted((out / "checkpoints").glob("step_*"))  # never the .tmp-* of an interrupted save
    return done[-1] if done else None


def checkpoint_state(model, optim, step, opts) -> dict:
    """The one dict DCP saves and loads in place. The data position is `step`: the stream is a function of
    (seed, rank, step), so no generator state is needed (seed and world size are recorded to warn on change),
    and the learning rate is a function of the step (lr_factor), so no scheduler state either."""
    model_sd, optim_sd = get_state_dict(model, optim)
    return {"model": model_sd, "optim": optim_sd, "step": step, "seed": opts.seed,
            "world_size": dist.get_world_size()}


class DiskFull(RuntimeError):
    """A save ran out of space: its temporary files are removed, the previous checkpoint / export stays."""


def disk_full(e: BaseException) -> bool:
    """Whether e is, or wraps, ENOSPC (DCP re-raises each rank's error inside a CheckpointException)."""
    seen = [e]
    while seen:
        e = seen.pop()
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        failures = [f[0] if isinstance(f, tuple) else f for f in getattr(e, "failures", {}).values()]  # (e, tb)
        seen += [x for x in (e.__cause__, e.__context__, *failures) if isinstance(x, BaseException)]
    return False


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def full_disk_line(what: Path, needed: int) -> str:
    free = shutil.disk_usage(next(p for p in (what, *what.parents) if p.exists())).free
    size = lambda n: f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"  # noqa: E731
    return f"{what}: no space left on device (needs about {size(needed)}, {size(free)} free)"


def on_rank_0(work, *args, device, what: str, group=None):
    """work(*args) on rank 0 alone (the export, settings.json, an evaluation) while the others wait, and its failure
    on every rank: rank 0 raises its own exception, the others one of its kind (DiskFull, ValueError,
    FileNotFoundError, else RuntimeError), so that all stop together with the exit code and the one line of rank
    0 (train.run prints rank 0's), instead of waiting at a barrier for a rank that has left. Returns rank 0's
    result (None on the others). group: a gloo group with a long timeout (an evaluation may outlast NCCL's)."""
    result, failed, kinds = None, None, (DiskFull, ValueError, FileNotFoundError, Exception)
    if dist.get_rank() == 0:
        try:
            result = work(*args)
        except Exception as e:
            failed = e
    code = torch.tensor([0 if failed is None else 1 + next(i for i, k in enumerate(kinds) if isinstance(failed, k))],
                        device="cpu" if group is not None else device)
    dist.all_reduce(code, op=dist.ReduceOp.MAX, group=group)  # rank 0's code: the others hold 0
    if failed is not None:
        raise failed
    if code.item():
        kind = kinds[int(code.item()) - 1]
        raise (RuntimeError if kind is Exception else kind)(f"{what} failed on rank 0")
    return result


def agree_any(flag: bool, device) -> bool:
    """Whether `flag` holds on any rank (one MAX all-reduce; every rank calls it)."""
    vote = torch.tensor([int(flag)], device=device)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())


def weights_finite(model) -> bool:
    """Whether every weight is finite on every rank (each checks its own shards; one MIN all-reduce)."""
    ok = all(bool(torch.isfinite(p.to_local() if isinstance(p, DTensor) else p).all()) for p in model.parameters())
    flag = torch.tensor([int(ok)], device=next(model.parameters()).device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def save_checkpoint(out: Path, state: dict, keep: int):
    """Sharded DCP save into .tmp-step_N, then an atomic rename: a kill mid-save leaves the previous one intact.
    Out of disk space: the temporary folder is removed and DiskFull names it and the space needed."""
    final = out / "checkpoints" / f"step_{state['step']:06d}"
    tmp = final.with_name(".tmp-" + final.name)
    if final.exists():
        return  # same step, same state (e.g. --resume of a finished run)
    if dist.get_rank() == 0 and tmp.exists():
        shutil.rmtree(tmp)  # left by a killed save
    dist.barrier()
    try:
        dcp.save(state, checkpoint_id=tmp)
    except (Exception, CheckpointException) as e:  # every rank gets DCP's (a BaseException) together
        local = nbytes(t.to_local() if isinstance(t, DTensor) else t for part in ("model", "optim")
                       for t in _leaves(state[part]))
        # torch.save's zip writer turns ENOSPC into "RuntimeError: ... unexpected pos": ask the disk too. Each
        # rank asks its own (another node's may be the full one), so the ranks agree on the answer (MAX):
        # one rank raising DiskFull while another re-raised would leave the first waiting at a barrier.
        full = disk_full(e) or shutil.disk_usage(tmp.parent).free < local * dist.get_world_size()
        if not agree_any(full, next(t for t in _leaves(state["model"]) if isinstance(t, torch.Tensor)).device):
            raise
        dist.barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise DiskFull(f"{full_disk_line(tmp, local * dist.get_world_size())}; removed it, the latest checkpoint "
                       f"is still {latest_checkpoint(out)}") from None
    dist.barrier()
    if dist.get_rank() == 0:
        os.replace(tmp, final)
        for old in sorted((out / "checkpoints").glob("step_*"))[:-keep]:
            shutil.rmtree(old)
    dist.barrier()


def _leaves(tree):
    """The tensors of a nested state dict (the optimizer's is dicts of dicts)."""
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _leaves(value)
    else:
        yield tree


# ---------------------------------------------------------------- loading a checkpoint (through safe_dcp)

def damage(checkpoint: Path) -> str | None:
    """What is wrong with a DCP checkpoint folder, from its .metadata and its files' sizes (no data read): a
    missing or unreadable .metadata, a .distcp file it lists missing or shorter than its entries. None: intact."""
    try:
        metadata = SafeReader(checkpoint).read_metadata()  # a pickle naming anything else: Untrusted, raised
        storage = list(metadata.storage_data.values())
    except Untrusted:
        raise
    except Exception as e:  # a missing file, a truncated pickle: whatever the unpickler raises
        return f".metadata missing or unreadable ({type(e).__name__})"
    for info in storage:
        file = checkpoint / info.relative_path
        if not file.is_file():
            return f"{info.relative_path} missing"
        if file.stat().st_size < info.offset + info.length:
            return f"{info.relative_path} truncated ({file.stat().st_size} bytes, {info.offset + info.length} listed)"
    return None


def check_intact(checkpoint: Path, resume: bool):
    """One line naming a damaged checkpoint, the newest intact one and the exact way to use it, before DCP's
    traceback would. Never a silent fall-back to the intact one: the user asked for the newest state, its steps
    would be trained again, and the damaged folder (a disk fault?) is theirs to look at; left in place it would
    also stay the latest (a save of the same step is skipped), so --resume is told to move it aside."""
    what = damage(checkpoint)
    if what is None:
        return
    intact = next((c for c in sorted(checkpoint.parent.glob("step_*"), reverse=True) if c != checkpoint
                   and damage(c) is None), None)
    line = f"{checkpoint}: damaged checkpoint ({what}); newest intact one: {intact or 'none'}"
    if resume and intact is not None:  # "damaged-step_N" is no checkpoint name: the intact one becomes the latest
        aside = checkpoint.with_name(f"damaged-{checkpoint.name}")
        line += f"; to resume from it: {shlex.join(['mv', str(checkpoint), str(aside)])}, then rerun with --resume"
    elif intact is not None:
        line += f"; export it with --checkpoint {intact.name}"
    elif resume:
        line += "; a new --out starts the run afresh"
    raise ValueError(line)


def load_checkpoint(model, optim, path: Path, opts) -> dict:
    """Load `path` in place into the (sharded) model and optimizer; returns the saved state (step, seed, world)."""
    check_intact(path, resume=True)
    state = checkpoint_state(model, optim, 0, opts)
    dcp_load(state, path)
    if not all(type(state[key]) is int and state[key] >= 0 for key in ("step", "seed", "world_size")):
        raise Untrusted(f"{path}: refused, not a checkpoint of this project (step {state['step']!r}, seed "
                        f"{state['seed']!r}, world_size {state['world_size']!r}: non-negative integers expected)")
    set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return state


def find_checkpoint(out: Path, name: str | None) -> Path:
    """--checkpoint step_N (or N) of --out, default the latest; a missing one names what is there."""
    saved = sorted((out / "checkpoints").glob("step_*"))
    if name is None:
        checkpoint = latest_checkpoint(out)
    else:
        number = name.removeprefix("step_")
        checkpoint = next((c for c in saved if number.isdigit() and step_of(c) == int(number)), None)
    if checkpoint is None:
        have = ", ".join(c.name for c in saved) or "none"
        raise FileNotFoundError(f"--checkpoint {name or '(latest)'}: not in {out / 'checkpoints'} "
                                f"(saved: {have})")
    return checkpoint


def load_weights(args: ModelArgs, checkpoint: Path) -> Transformer:
    """A plain (unsharded, CPU) model holding a checkpoint's weights, on one process without FSDP: DCP reshards
    the saved shards into full tensors. What --export-only exports."""
    with torch.device("meta"):
        plain = Transformer(args)
    plain.to_empty(device="cpu")
    plain._tie()
    check_intact(checkpoint, resume=False)
    state = {"model": plain.state_dict()}  # the parameters' own storage: DCP loads in place
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        dcp_load(state, checkpoint, no_dist=True)
    bad = next((name for name, t in state["model"].items() if not torch.isfinite(t).all()), None)
    if bad is not None:  # an export of NaN weights would evaluate as a model
        raise ValueError(f"{checkpoint}: tensor {bad!r} holds NaN or infinite values; not exported")
    return plain


# ---------------------------------------------------------------- the Hugging Face folder


def gather_plain(model, args: ModelArgs) -> Transformer | None:
    """A plain (unsharded) copy of the (sharded) model in rank 0's CPU memory, rope tables and tied head set;
    None on the other ranks. A collective: every rank calls it (FSDP2 all-gathers the shards)."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    with torch.device("meta"):
        plain = Transformer(args)
    plain.load_state_dict(full, assign=True)  # adopt the gathered tensors, no second copy
    plain._tie()  # assign replaced the shared tensor (the rope tables are CPU tensors even meta-built: rope.py)
    return plain


def export(model, args: ModelArgs, base: dict | None, opts, tokenizer_path, device) -> Path:
    """Gather the full state dict on rank 0 and write it to --out/final (write_hf_folder). Rank 0 alone writes;
    its failure stops every rank (on_rank_0)."""
    plain = gather_plain(model, args)
    final = Path(opts.out) / "final"
    # bf16 is what LLaMA checkpoints ship; the fp32 masters stay in checkpoints/
    on_rank_0(write_hf_folder, plain, base, opts.model, tokenizer_path, final,
              torch.bfloat16 if device.type == "cuda" else None, device=device, what=f"the export to {final}")
    return final


def write_hf_folder(plain: Transformer, base: dict | None, model_dir, tokenizer_path, folder: Path, dtype):
    """A Hugging Face folder at `folder`, swapped in whole: config.json is --model's own with only what training
    changed (hf.config_from_args), plus the tokenizer files transformers / vLLM look for. A failure leaves nothing
    of it: its temporary is removed, and so is the parent this call made (exports/ of a first --export-only)."""
    if plain.args.tie_word_embeddings:
        plain.lm_head.weight = plain.model.embed_tokens.weight  # assign / to_empty replaced the shared tensor
    if dtype is not None:
        plain.to(dtype)
    tmp, old = folder.with_name(f".tmp-{folder.name}"), folder.with_name(f".old-{folder.name}")
    files = tokenizer_files(tokenizer_path)  # every tokenizer file of its folder, chat templates included
    if model_dir and (Path(model_dir) / "generation_config.json").is_file():  # what transformers / vLLM read
        files["generation_config.json"] = Path(model_dir) / "generation_config.json"
    made = not folder.parent.exists()
    try:
        folder.parent.mkdir(exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed export
        save_pretrained(plain, tmp, base_config=base)  # rope scaling, max_position_embeddings = L_t, L_c recorded
        for name, source in files.items():
            (tmp / name).parent.mkdir(exist_ok=True)  # additional_chat_templates/
            shutil.copy(source, tmp / name)
        tokenizer_config, target = tmp / "tokenizer_config.json", plain.args.max_position_embeddings
        if tokenizer_config.is_file():  # a real model_max_length below L_t would cap vLLM and warn in transformers
            config = json.loads(tokenizer_config.read_text())
            if isinstance(config.get("model_max_length"), int) and config["model_max_length"] < target:
                tokenizer_config.write_text(json.dumps({**config, "model_max_length": target}, indent=2) + "\n")
    except Exception as e:  # ENOSPC arrives as OSError, or inside safetensors' SafetensorError (os error 28)
        needed = nbytes(plain.state_dict().values()) + sum(f.stat().st_size for f in files.values())
        full = disk_full(e) or folder.parent.exists() and shutil.disk_usage(folder.parent).free < needed
        shutil.rmtree(tmp, ignore_errors=True)
        if made:
            with contextlib.suppress(OSError):  # empty now, unless another export writes into it meanwhile
                folder.parent.rmdir()
        if not full:
            raise
        raise DiskFull(f"{full_disk_line(folder, needed)}; removed the partial export, {folder} is as it was") \
            from None
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
