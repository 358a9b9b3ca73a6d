"""Where does a base model's retrieval break under position interpolation? (issue 25's diagnosis; no training)

    python benchmarks/repro_diag.py --model runs/repro/base/final --window 128 --factor 8 --out diag.json

1. Passkey at L_c (evaluate.py's prompts, exact match, per-digit accuracy, key log-probability) under each
   scaling a fine-tune would start from: none, linear x2 / x4 / x8, NTK, the paper's revised YaRN with beta_fast
   32 / 4 / 2 — and linear x alpha applied only to the frequency pairs j >= k (pairs 0..k-1, the fastest, keep
   theta_j), k = 1 .. d/2: the k at which retrieval comes back says which pairs the copying circuit needs.
2. The base's previous-token and induction heads (Olsson et al. 2022) on random tokens written twice: for each
   head, the mean attention from a token to the one before it, and from a token of the second copy to the
   token after its first occurrence; under each scaling above, to show what interpolation does to them.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data import Tokenizer  # noqa: E402
from evaluate import passkey, write_atomic  # noqa: E402
from hf import from_pretrained  # noqa: E402
from rope import RotaryEmbedding, apply_rotary_emb, rope_parameters  # noqa: E402


def set_rope(model, scaling: dict | None, window: int, keep: int = 0):
    """Replace the model's rotary table: config.json-style `scaling` (None: plain RoPE); keep > 0 restores the
    unscaled theta_j of pairs 0..keep-1 (only pairs >= keep are interpolated)."""
    config = {"rope_theta": model.args.rope["rope_theta"], "max_position_embeddings": window,
              "rope_scaling": {"original_max_position_embeddings": window, **scaling} if scaling else None}
    rotary = RotaryEmbedding(rope_parameters(config), model.args.head_dim)
    if keep:
        plain = RotaryEmbedding(rope_parameters({**config, "rope_scaling": None}), model.args.head_dim)
        rotary.inv_freq = torch.cat([plain.inv_freq[:keep], rotary.inv_freq[keep:]])
    model.rotary_emb = rotary


def scalings(alpha: float, pairs: int):
    yield "none", None, 0
    for f in (2, 4, 8):
        if f <= alpha:
            yield f"linear x{f}", {"rope_type": "linear", "factor": f}, 0
    yield f"ntk x{alpha:g}", {"rope_type": "ntk", "factor": alpha}, 0
    for beta in (32, 4, 2):  # 32 is the paper's (YaRN's default); 4 is Llama 3.1's high_freq_factor
        yield f"yarn-revised x{alpha:g}, beta_fast {beta}", {"rope_type": "yarn-revised", "factor": alpha,
                                                             "beta_fast": beta, "beta_slow": 1}, 0
    for k in range(1, pairs + 1):
        yield f"linear x{alpha:g} on pairs >= {k}", {"rope_type": "linear", "factor": alpha}, k


def attention_probs(attn, x, cos, sin) -> torch.Tensor:
    """[B, H, T, T] causal attention probabilities of model.py's Attention `attn` on its input x (RoPE, GQA)."""
    B, T, _ = x.shape
    q = attn.q_proj(x).view(B, T, attn.n_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
    k = k.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=1)  # query head h reads KV head h // group
    scores = q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)
    return scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)


@torch.inference_mode()
def head_scores(model, vocab: int, span: int = 40, batch: int = 16, seed: int = 0, bos: int | None = 1):
    """[layers, heads] previous-token and induction scores on BOS + span random tokens + the same span again."""
    rng = np.random.default_rng(seed)
    body = torch.tensor(rng.integers(min(100, vocab // 2), vocab, size=(batch, span)))
    tokens = torch.cat([body, body], 1) if bos is None else torch.cat([torch.full((batch, 1), bos), body, body], 1)
    T, first = tokens.shape[1], int(bos is not None)  # first: the index of the span's first token
    prev, induction, inputs = [], [], []
    hooks = [layer.self_attn.register_forward_pre_hook(lambda module, args: inputs.append(args[:3]))
             for layer in model.model.layers]
    try:
        model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    for layer, (x, cos, sin) in zip(model.model.layers, inputs):
        probs = attention_probs(layer.self_attn, x, cos, sin)
        t = torch.arange(first + 1, T)  # every token after the span's first: weight on the one before
        prev.append(probs[:, :, t, t - 1].mean((0, 2)))
        t2 = torch.arange(first + span, T)  # second copy: weight on the token after this one's first occurrence
        induction.append(probs[:, :, t2, t2 - span + 1].mean((0, 2)))
    return torch.stack(prev), torch.stack(induction)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the base model's Hugging Face folder")
    p.add_argument("--window", type=int, required=True, help="L_c")
    p.add_argument("--factor", type=float, required=True, help="alpha = L_t / L_c")
    p.add_argument("--trials", type=int, default=100, help="passkey prompts (at L_c)")
    p.add_argument("--every", type=int, default=1, help="pairs k: every k-th of 1 .. d/2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON of every row")
    a = p.parse_args(argv)
    for name in ("window", "trials", "every"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    if not 1 <= a.factor < math.inf:
        p.error(f"--factor must be a finite number >= 1, got {a.factor}")
    torch.manual_seed(a.seed)
    try:
        tokenizer = Tokenizer(a.model)
        model = from_pretrained(a.model, dtype=torch.float32).eval()
    except (OSError, ValueError) as e:  # a missing or broken model folder: one line
        p.error(f"--model {a.model}: {e}")
    pairs = model.args.head_dim // 2
    rows = []
    print(f"{'scaling':<40} {'exact':>6} {'digits':>6} {'log p':>7}   previous-token / induction head (best)")
    for label, scaling, keep in scalings(a.factor, pairs):
        if keep and (keep % a.every and keep != pairs):
            continue
        set_rope(model, scaling, a.window, keep)
        (r,) = passkey(model, tokenizer, [a.window], a.trials, seed=a.seed, every=1e9)
        prev, ind = head_scores(model, model.args.vocab_size, bos=tokenizer.bos_id)
        rows.append(dict(scaling=label, rope=scaling, keep=keep, accuracy=r["accuracy"],
                         digits=r["digit_accuracy"], key_logprob=r["key_logprob"],
                         previous_token=prev.tolist(), induction=ind.tolist()))
        (pl, ph), (il, ih) = (divmod(int(s.argmax()), s.shape[1]) for s in (prev, ind))
        print(f"{label:<40} {r['accuracy']:6.2f} {r['digit_accuracy']:6.2f} {r['key_logprob']:7.2f}   "
              f"L{pl}H{ph} {float(prev.max()):.2f} / L{il}H{ih} {float(ind.max()):.2f}", flush=True)
    if a.out:  # written once, whole, at the end (a killed run leaves no half a table)
        text = json.dumps(dict(model=a.model, window=a.window, factor=a.factor, trials=a.trials, seed=a.seed,
                               rows=rows), indent=1)
        write_atomic(a.out, lambda tmp: Path(tmp).write_text(text))


if __name__ == "__main__":
    main()
