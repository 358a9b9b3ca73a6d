"""train.py's log: the header, a line and a metrics.jsonl row per logged step, TensorBoard, FLOPs and MFU.

    python train.py                     # the lines below on stdout, the rows in out/metrics.jsonl
    python -m pytest tests/test_train.py -q

Log speaks on rank 0 only. A row is one JSON object a line: {"step", "loss", "lr", "grad_norm", "tokens_per_s",
"s_per_step", "eta_s", "peak_mem_gib"[, "mfu"]} for a logged step, {"step", "eval", "eval_s"} for an evaluation
(train_eval.py). tokens_per_s counts scored tokens of all ranks; mem is the process's peak RSS on CPU, the peak
allocated CUDA memory on a GPU; MFU divides achieved model FLOPs (flops_per_token) by the card's bf16 peak.
"""
import json
import resource
from pathlib import Path

import torch

from model import ModelArgs, Transformer
from options import TrainOptions, checkpoint_context


class Log:
    """Lines on stdout, rows in --out/metrics.jsonl and (--tensorboard) TensorBoard; silent on ranks other than 0."""

    def __init__(self, rank: int):
        self.on, self.metrics, self.board = rank == 0, None, None

    def say(self, *lines: str):
        if self.on:
            for line in lines:
                print(line, flush=True)

    def read(self, out: Path, start: int) -> list[dict]:
        """The rows of --out/metrics.jsonl that a run resumed at step `start` keeps (rank 0; [] elsewhere and when
        starting afresh), read before anything is written: a line that is no row of train.py's (a run folder from
        elsewhere, a hand edit) is one line naming the file and the line."""
        metrics = out / "metrics.jsonl"
        if not (self.on and start and metrics.exists()):
            return []
        kept = []
        for number, line in enumerate(metrics.read_text().splitlines(), 1):
            try:
                row = json.loads(line)
                assert isinstance(row, dict) and type(row["step"]) is int
            except (ValueError, KeyError, AssertionError):
                raise ValueError(f"{metrics}:{number}: not a row of train.py's metrics.jsonl (a JSON object with an "
                                 f"integer 'step')") from None
            if row["step"] <= start:
                kept.append(row)
        return kept

    def open(self, out: Path, kept: list[dict], tensorboard: bool):
        """Start writing: metrics.jsonl holds the rows kept (read) and drops those a killed run logged beyond them."""
        if not self.on:
            return
        self.metrics = out / "metrics.jsonl"
        self.metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # checked in options.check_inputs
            self.board = SummaryWriter(log_dir=str(out / "tensorboard"))

    def row(self, row: dict, line: str, scalars: dict[str, float]):
        """One logged step or evaluation: its line, its metrics.jsonl row, its TensorBoard scalars."""
        self.say(line)
        if not self.on:
            return
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.board is not None:
            for tag, value in scalars.items():
                self.board.add_scalar(tag, value, row["step"])
            self.board.flush()

    def close(self):
        if self.board is not None:
            self.board.close()


def step_row(step: int, steps: int, loss: float, lr: float, grad_norm: float, tokens: float, elapsed: float,
             since: int, device, mfu_flops: float, world: int) -> dict:
    """A logged step's row: `tokens` scored over the `step - since` steps of the last `elapsed` seconds."""
    seconds = elapsed / (step - since)
    row = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens / elapsed,
           "s_per_step": seconds, "eta_s": seconds * (steps - step)}
    if device.type == "cuda":
        row["mfu"] = row["tokens_per_s"] / world * mfu_flops / peak_flops(device)
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:  # ru_maxrss: KiB on Linux; the whole process, not only tensors
        row["peak_mem_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row



def flops_per_token(model: Transformer, length: int) -> float:
    """Training FLOPs per token of a length-token sequence (PaLM App. B): 6 N for the weight matrices (N = the
    parameters outside the embedding table) + 12 L H Q T for attention (L layers, H heads of size Q)."""
    a = model.args
    n = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()
    return 6 * n + 12 * a.n_layers * a.n_heads * a.head_dim * length


def peak_flops(device) -> float:
    """Dense bf16 peak of the card (H100/H200 SXM 989 TFLOP/s unless it is an A100)."""
    return 312e12 if "A100" in torch.cuda.get_device_name(device) else 989e12



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
              "plain": f"plain fine-tuning at positions 0..{opts.window - 1:,}"}[opts.method]
    length = opts.target if opts.method == "full" else opts.window
    accum = opts.batch_size // (opts.micro_batch_size * world)
    size = 12 * n_params  # fp32 weights + Adam's two moments
    return [model], [
        f"extension: L_c {opts.context:,} -> L_t {opts.target:,}, alpha {opts.target / opts.context:g} ({scaling}); "
        f"{method}" + ("" if opts.method == "full" else f"; training window {opts.window:,}"),
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


def eval_line(row: dict, steps: int) -> str:
    """The log's line for an evaluation: eval step 20/100: ppl 128 41.2, 1,024 97.3; passkey 128 0.80, ... (3s)."""
    show = lambda scores, f: ", ".join(f"{int(L):,} {f(v)}" for L, v in scores.items())  # noqa: E731
    return (f"eval step {row['step']}/{steps}: ppl {show(row['eval']['ppl'], lambda v: f'{v:.4g}')}; "
            f"passkey {show(row['eval']['passkey'], lambda v: f'{v:.2f}')} ({human(row['eval_s'])})")
