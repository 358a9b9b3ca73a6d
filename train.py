"""PoSE fine-tuning (arXiv 2309.10400 §3.2, recipe §4.1) with torchrun + FSDP2 + DCP; one code path for CPU and GPU.

    python train.py                       # embedded default: tiny model, stdlib corpus, ~1 min on CPU -> out/final
    torchrun --nproc_per_node 8 train.py --model ./Llama-2-7b-hf --data pile.jsonl --target 16384
    torchrun --nproc_per_node 8 train.py --model ./Llama-2-7b-hf --data pile.jsonl --target 16384 --resume
    python train.py --export-only --out runs/pose16k --checkpoint step_000500  # -> runs/pose16k/exports/step_000500
    python train.py --eval-every 20 --eval-data held-out.jsonl  # + perplexity and passkey at L_c, L_t every 20 steps
    python train.py --plan --model ./Llama-2-7b-hf --target 16384 --world-size 8 --gpu-memory 80  # fits? (plan.py)

Read top to bottom, this file is the recipe: the schedule (lr_factor), one micro-batch of PoSE examples
(make_batch: pose.example per row, Eq. 3-5), the documents (load_data), one optimizer step (train_step), and the
loop (train): resolve the options, read the data, build the model, then step, log, save, evaluate and export.
Around it: options.py (the flags, the §4.1 defaults, every refusal), distributed.py (process group, FSDP2, the
model and the optimizer), checkpoints.py (the run folder: settings.json, DCP checkpoints, the export), metrics.py
(the log), train_eval.py (--eval-every), plan.py (--plan). docs/training.md: windows and labels, the run folder
and --resume, stopping on a signal, errors under torchrun.
"""
import contextlib
import functools
import math
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

import pose
from checkpoints import (DiskFull, checkpoint_state, export, find_checkpoint, latest_checkpoint, load_checkpoint,
                         load_weights, on_rank_0, read_settings, run_settings, save_checkpoint, weights_finite,
                         write_hf_folder, write_settings)
from data import Tokenizer, as_list, check_vocabulary, default_tokenizer, describe, find_files, needs_tokenizer, \
    read_documents
from distributed import (agreed, attention_kernels, build_model, build_optimizer, distributed, keep_freed_memory)
from metrics import Log, flops_per_token, header, log_line, step_row
from model import ModelArgs, Transformer
from options import TrainOptions, checkpoint_config, parse_args, resolve, training_args
from train_eval import eval_header, eval_setup, evaluate_step, wait_group_for


# ---------------------------------------------------------------- the schedule

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

    Each row is pose.example of the next document in this rank's epoch order: PoSE's skipped positions (Eq. 3-5)
    or a baseline's, every label the document's true next token. Full-length rows may differ in length (a
    document's first min(L_x - 1, L_t) tokens): they are right-padded to the longest with target -100 (never
    scored; causal attention keeps every real token from seeing the padding)."""
    rng = np.random.default_rng([opts.seed, rank, step, micro])
    rows = []
    for b in range(opts.micro_batch_size):
        example = (step * accum + micro) * opts.micro_batch_size + b  # this rank's running example number
        epoch, k = divmod(example, len(documents))
        doc = documents[epoch_order(opts.seed, rank, epoch, len(documents))[k]]
        rows.append(np.stack(pose.example(rng, doc, opts.method, opts.window, opts.target, opts.chunks,
                                          opts.content, opts.crop == "random")).astype(np.int64))
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
    say(f"data: {n_docs:,} documents kept, {n_skipped:,} skipped as shorter than the window + 1 = {length + 1} tokens, "
        f"{n_tokens:,} tokens, read in {time.perf_counter() - t0:.1f}s")
    return documents, tokenizer_path


# ---------------------------------------------------------------- stopping: divergence, signals

class Diverged(RuntimeError):
    """A non-finite loss or weights: the run stops before the update, or before saving them (exit 1)."""


class Stopped(Exception):
    """Raised at a step boundary after SIGINT / SIGTERM (docs/training.md: stopping)."""

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


# ---------------------------------------------------------------- training

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
    """The recipe: options, data, model, then per step the update, the checkpoint, the log line and (--eval-every)
    the evaluation; the export at the end."""
    rank, world = dist.get_rank(), dist.get_world_size()
    opts, config = resolve(opts, world)
    signals, out, log = signals or Signals(), Path(opts.out), Log(rank)
    args = training_args(opts, config)  # the checkpoint's shape with alpha = L_t / L_c on its rope (§3.1)
    accum = opts.batch_size // (opts.micro_batch_size * world)
    before, after = header(opts, args, config, world, device)
    log.say(*before)
    # Every method reads the same documents, those of >= window + 1 tokens (§4.1: "a minimum length requirement"
    # of L_c); full-length truncates them at L_t. A bad corpus fails here, before any weights load.
    documents, tokenizer_path = load_data(opts, args, opts.window, log.say)  # says "data: ..."
    ev = eval_setup(opts, args, tokenizer_path)  # --eval-data read and checked on rank 0 (None without it)
    log.say(*after, *([eval_header(opts, ev)] if opts.eval_every is not None else []))
    wait_group = wait_group_for(opts, world)  # where the other ranks wait for rank 0's evaluations
    dist.barrier()

    # FSDP2 shards over several ranks, and on a GPU it computes in bf16 from fp32 masters even alone
    mesh = init_device_mesh(device.type, (world,)) if world > 1 or device.type == "cuda" else None
    if device.type == "cpu":
        keep_freed_memory()  # page faults on the memory each step frees were ~10 % of a CPU step (BENCHMARKS.md)
    model = build_model(opts, args, device, mesh)
    optim = build_optimizer(model, opts)
    start = resume(model, optim, opts, log) if opts.resume else 0
    # Only now, with the data read, the weights loaded (and found finite) and any checkpoint resumed, is anything
    # written: a bad input found on the way leaves a fresh --out absent and a resumed one as it was.
    kept = on_rank_0(open_run, out, run_settings(opts, world, device, tokenizer_path), log, start, opts.tensorboard,
                     device=device, what=f"writing {out / 'settings.json'}") or []
    evaluate_at = functools.partial(evaluate_step, model, args, ev, device, wait_group, log, opts.steps)
    flops = flops_per_token(model, opts.target if opts.method == "full" else opts.window)
    try:
        # The weights a run starts from are scored first (step 0: the checkpoint under the run's scaling, where a
        # retrieval-vs-steps curve begins), unless the run it continues already did.
        due = [opts.eval_every is not None and rank == 0 and not any(
            r["step"] == start and "eval" in r for r in kept)]
        dist.broadcast_object_list(due)
        if due[0]:
            evaluate_at(start)
        clock, since, tokens = time.perf_counter(), start, 0.0
        for step in range(start, opts.steps):
            signals.step = step
            if received := signals.agreed(device):  # a step boundary: every rank stops here, together
                if received == signal.SIGTERM and step > start:  # a scheduler's kill follows: keep the progress
                    save(model, optim, step, opts)
                raise Stopped(received, step)
            model.train()
            for group in optim.param_groups:  # the schedule is a function of the step (see lr_factor)
                group["lr"] = opts.lr * lr_factor(step, opts.warmup, opts.steps)
            batches = [make_batch(documents, opts, rank, step, micro, accum) for micro in range(accum)]
            loss, grad_norm, scored = train_step(model, optim, batches, opts.grad_clip)
            tokens += scored
            if not math.isfinite(loss):  # train_step made no update: no checkpoint from a broken step either
                raise Diverged(f"loss is {loss} at step {step + 1}; stopped before the update, newest checkpoint: "
                               f"{latest_checkpoint(out)}")
            done = step + 1
            if done % opts.save_every == 0 or done == opts.steps:
                save(model, optim, done, opts)
            if done % opts.log_every == 0 or done == opts.steps or done == start + 1:  # step 1: it runs, and how fast
                row = step_row(done, opts.steps, loss, optim.param_groups[0]["lr"], grad_norm, tokens,
                               time.perf_counter() - clock, since, device, flops, world)
                log.row(row, log_line(row, opts.steps), {f"train/{k}": v for k, v in row.items() if k != "step"})
                clock, since, tokens = time.perf_counter(), done, 0.0
            if opts.eval_every is not None and (done % opts.eval_every == 0 or done == opts.steps):
                clock += evaluate_at(done)  # after the checkpoint (a kill mid-evaluation keeps the step), off the clock
        signals.step = opts.steps
        if not weights_finite(model):  # the last save checked them, but a resumed finished run saves nothing
            raise Diverged(f"weights are not finite; not exported, newest checkpoint: {latest_checkpoint(out)}")
        log.say(f"exported {export(model, args, config if opts.model else None, opts, tokenizer_path, device)}")
    finally:
        log.close()
    return model


def resume(model, optim, opts: TrainOptions, log: Log) -> int:
    """--resume: the latest checkpoint of --out loaded in place; returns its step (0 when there is none yet)."""
    out = Path(opts.out)
    path = latest_checkpoint(out)
    if path is None:
        log.say(f"--resume: no checkpoint in {out}/checkpoints, starting at step 0")
        return 0
    state = load_checkpoint(model, optim, path, opts)
    start = state["step"]
    if (state["seed"], state["world_size"]) != (opts.seed, dist.get_world_size()):
        log.say(f"warning: {path} was written with seed {state['seed']}, world {state['world_size']}: the data "
                "stream differs from an uninterrupted run")
    log.say(f"resumed from {path} at step {start}")
    saved = read_settings(out)
    old_steps = saved["options"]["steps"] if saved else opts.steps
    if old_steps != opts.steps and start < opts.steps:
        rate = lambda steps: opts.lr * lr_factor(start, opts.warmup, steps)  # noqa: E731
        log.say(f"--steps {old_steps} -> {opts.steps}: the learning rate follows the {opts.steps}-step schedule, "
                f"step {start + 1} at {rate(opts.steps):.3g} (the {old_steps}-step one had {rate(old_steps):.3g})")
    return start


def open_run(out: Path, settings: dict, log: Log, start: int, tensorboard: bool) -> list[dict]:
    """Rank 0's first writes: --out, settings.json, metrics.jsonl; returns the metrics rows a resumed run keeps.
    metrics.jsonl is read before anything is written, and an --out made here is removed again on a failure."""
    kept, made = log.read(out, start), not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_settings(out, settings)
        log.open(out, kept, tensorboard)
    except Exception:
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return kept


def save(model, optim, step: int, opts: TrainOptions):
    """A checkpoint of this step, never of non-finite weights (a finite loss, then an infinite gradient)."""
    out = Path(opts.out)
    if not weights_finite(model):
        raise Diverged(f"weights are not finite after step {step}; nothing saved, newest checkpoint: "
                       f"{latest_checkpoint(out)}")
    save_checkpoint(out, checkpoint_state(model, optim, step, opts), opts.keep_checkpoints)


# ---------------------------------------------------------------- --export-only, main

def export_only(opts: TrainOptions, device) -> Path:
    """--export-only: --out's checkpoint (--checkpoint step_N, default the latest) as a Hugging Face folder
    --out/exports/step_N; the run's settings.json says what was trained (checkpoints.py does the loading). Rank 0
    alone loads and writes; its failure stops every rank (on_rank_0)."""
    out = Path(opts.out)
    settings = read_settings(out)
    if settings is None:
        raise FileNotFoundError(f"--out {out}: no settings.json (not a train.py run folder)")
    run = TrainOptions(**{k: v for k, v in settings["options"].items() if k in TrainOptions.__dataclass_fields__})
    checkpoint = find_checkpoint(out, opts.checkpoint)
    config = checkpoint_config(run)
    folder = out / "exports" / checkpoint.name

    def write():
        write_hf_folder(load_weights(training_args(run, config), checkpoint), config if run.model else None,
                        run.model, settings["tokenizer_file"], folder,
                        torch.bfloat16 if settings["device"] == "cuda" else None)

    on_rank_0(write, device=device, what=f"the export to {folder}")
    return folder


def main(argv=None):
    """Run train.py; exit code 0, 1 (diverged), 2 (bad input) or 128 + the signal (stopped). Every rank
    ends the same way and only rank 0 speaks, so torchrun shows one line of ours, not one per rank."""
    signals = Signals()
    with signals.installed():
        opts = parse_args(argv, __doc__)
        if opts.plan:  # fake ranks on fake tensors, no process group of ours
            import plan  # here: its fake-tensor machinery costs import time that a run should not pay
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
            folder = export_only(opts, device)
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
