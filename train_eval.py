"""Evaluation during training (train.py --eval-every): evaluate.py's perplexity and passkey every K steps.

    python train.py --eval-every 50 --eval-data heldout.jsonl                     # at L_c and L_t
    python train.py --model M --data D --eval-every 100 --eval-data E --eval-lengths 2048 8192 16384
    python -m pytest tests/test_eval_every.py -q

--eval-every K --eval-data FILE [--eval-lengths L ...] (default L_c and L_t) scores
the model after every K-th step and after the last with evaluate.py's own functions and defaults: perplexity on
the first --eval-docs (10) documents of >= max(L) tokens of FILE (read, cut and given BOS as `evaluate.py ppl`
does; --eval-stride, default its 1,024, clamped to L - 1), and passkey retrieval, --eval-trials (10) prompts a
length on evaluate.py's fixed seed. A row {"step": k, "eval": {"ppl": {"128": ...}, "passkey": {"128": ...},
"passkey_digits": ..., "key_logprob": ...}, "eval_s": ...} (passkey's exact match, per-digit accuracy and the
key's teacher-forced log-probability) goes to metrics.jsonl and to TensorBoard (eval/ppl_128, ...), one line
(perplexity and exact match) to the log; so
    python train.py --export-only --out OUT --checkpoint step_K
    python evaluate.py ppl --model OUT/exports/step_K --data FILE --lengths L ... --docs 10
    python evaluate.py passkey --model OUT/exports/step_K --lengths L ... --trials 10
print the very numbers of step K (on the same device type; tests/test_eval_every.py checks it). Rank 0 evaluates
a plain gathered copy while the other ranks wait (run_eval says why). The evaluation runs after the step's
checkpoint and off the throughput clock; a run first scores the weights it starts from (step 0: the
checkpoint under the run's scaling; a resumed run: the checkpoint it resumes) unless metrics.jsonl already holds
that step's row. The --eval-* flags are free to change on --resume.

In order: what is scored (Evaluation, read once by eval_setup; the --eval-* flags are checked by
options.check_eval before anything is written); the evaluation of one step (run_eval), the group the other ranks
wait in, and the step's row (evaluate_step).
"""
import contextlib
import datetime
import io
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

import evaluate
from checkpoints import gather_plain, on_rank_0
from data import Tokenizer
from metrics import Log, eval_line
from model import ModelArgs


@dataclass
class Evaluation:
    """What --eval-every scores, the same at every step: evaluate.py's own options (their defaults are its
    defaults), the documents its ppl reads and the tokenizer the export ships. Rank 0 holds it; others None."""
    ppl: evaluate.PplOptions
    passkey: evaluate.PasskeyOptions
    documents: list
    bos_id: int | None
    tokenizer: Tokenizer


def eval_setup(opts, args: ModelArgs, tokenizer_path) -> Evaluation | None:
    """Rank 0 reads --eval-data as `evaluate.py ppl` reads --data (load_documents: the first --eval-docs
    documents of >= max(--eval-lengths) tokens, their own BOS/EOS dropped) and fits one passkey prompt per
    length; a corpus with no such document, or a length below the passkey template, is refused here, before
    anything is written, on every rank together (rank 0's message is broadcast)."""
    if opts.eval_every is None:
        return None
    lengths = list(opts.eval_lengths)
    ppl = evaluate.PplOptions(lengths=lengths, data=opts.eval_data, text_field=opts.text_field,
                              stride=opts.eval_stride, docs=opts.eval_docs,
                              max_tokens=opts.eval_max_tokens)
    keys = evaluate.PasskeyOptions(lengths=lengths, trials=opts.eval_trials)
    setup, message = None, [None]
    if dist.get_rank() == 0:
        try:
            tokenizer = Tokenizer(tokenizer_path)
            with contextlib.redirect_stderr(io.StringIO()):  # its "ppl: --data ..." note: our log says it
                documents, bos_id = evaluate.load_documents(ppl, args, max(lengths), tokenizer_path, "--eval-data")
            for L in lengths:
                evaluate.passkey_prompt(tokenizer, L, 10_000, 0.0, keys.fit)
            setup = Evaluation(ppl, keys, documents, bos_id, tokenizer)
        except (ValueError, FileNotFoundError) as e:
            message = [str(e).splitlines()[0]]
    dist.broadcast_object_list(message)
    if message[0] is not None:
        raise ValueError(message[0])
    return setup


def eval_header(opts, ev: Evaluation | None) -> str:
    """The log's line saying what --eval-every will score (ev is rank 0's; the others print nothing)."""
    lengths = ", ".join(f"{L:,}" for L in opts.eval_lengths)
    return (f"eval: every {opts.eval_every} steps and at the end, at L = {lengths}, by rank 0 on a gathered copy: "
            f"ppl on {len(ev.documents) if ev else opts.eval_docs} documents of --eval-data (stride "
            f"{opts.eval_stride:,}), passkey {opts.eval_trials} prompts a length (seed {evaluate.PasskeyOptions.seed})")


def wait_group_for(opts, world: int):
    """The group in which the other ranks wait for rank 0's evaluation (run_eval): gloo, with a timeout longer
    than any evaluation; None when there is nothing to wait for."""
    if opts.eval_every is None or world == 1:
        return None
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(days=7))


def run_eval(model, args: ModelArgs, ev: Evaluation | None, device, wait_group) -> dict | None:
    """evaluate.py's perplexity and passkey of the model as it is now: rank 0's row, None on the others.

    Rank 0 evaluates a plain gathered copy while the other ranks wait (gather_plain: the gather is the only
    collective). The copy is what the export of this step is, cast to evaluate.py's default dtype for the device
    (float32 on CPU, bfloat16 on CUDA, the export's own dtype there), so a logged value equals `evaluate.py ppl
    / passkey --model <the export>` exactly. Every rank running the sharded model instead would need the same
    number of forwards on every rank (greedy decoding stops on EOS per prompt), and its numbers would come from
    FSDP2's mixed-precision path, --compile's kernels and activation checkpointing rather than from evaluate.py's
    plain model. The price is one full copy on rank 0 for the duration (bf16 on a GPU: 2 bytes a parameter,
    after 4 of host memory for the gathered fp32 weights, as export() takes), and idle ranks. They wait for rank
    0's outcome (checkpoints.on_rank_0: its failure stops every rank) on wait_group, a gloo group with a long
    timeout: an evaluation may outlast NCCL's default collective timeout (10 minutes; gloo's is 30)."""
    plain = gather_plain(model, args)

    def scores(plain):  # rank 0, on the gathered copy
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # evaluate.py's load_model default
        copy = plain.to(device=device, dtype=dtype).eval()
        p, k = ev.ppl, ev.passkey
        ppl = evaluate.perplexity(copy, ev.documents, p.lengths, p.stride, ev.bos_id, p.truncate, device, every=None)
        keys = evaluate.passkey(copy, ev.tokenizer, k.lengths, k.trials, k.depths, k.seed, k.new_tokens, device,
                                every=None, fit=k.fit)
        by_length = lambda rows, key: {str(r["length"]): r[key] for r in rows}  # noqa: E731
        return {"ppl": by_length(ppl, "ppl"), "passkey": by_length(keys, "accuracy"),
                "passkey_digits": by_length(keys, "digit_accuracy"), "key_logprob": by_length(keys, "key_logprob")}

    try:  # the others wait in wait_group for rank 0's row, or for its failure, which every rank then raises
        return on_rank_0(scores, plain, device=device, group=wait_group, what="the evaluation")
    finally:
        del plain
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the copy's memory back to the training steps


def evaluate_step(model, args: ModelArgs, ev: Evaluation | None, device, wait_group, log: Log, steps: int,
                  step: int) -> float:
    """--eval-every's row for this step: evaluated (run_eval), logged and written on rank 0; the seconds it took."""
    t0 = time.perf_counter()
    scores = run_eval(model, args, ev, device, wait_group)
    seconds = time.perf_counter() - t0
    if scores is not None:  # rank 0
        row = {"step": step, "eval": scores, "eval_s": seconds}
        # key_logprob is None for a tokenizer without a clean answer (evaluate.passkey_ids): no scalar for it
        log.row(row, eval_line(row, steps), {f"eval/{task}_{L}": value for task, by_length in scores.items()
                                             for L, value in by_length.items() if value is not None})
    return seconds
