"""model.py against transformers' own classes, by hand, in a side venv (transformers is never a project dependency,
and no test imports this file).

    /work/hfvenv/bin/python benchmarks/parity_hf.py      # transformers 5.x
    /work/hf4venv/bin/python benchmarks/parity_hf.py     # transformers 4.x

For each family (Qwen2, Qwen3, OLMo 2, and the Llama 3.2 / SmolLM2 / Mistral Nemo shapes of llama / mistral):
transformers builds a tiny model, every parameter is redrawn (norms around 1, non-zero biases and q/k norms),
transformers saves it in fp32; model.py loads that folder and both compute fp32 logits at contiguous and at PoSE
position ids, with an explicit all-ones attention_mask (without one, transformers >= 4.53 reads PoSE's jumps as
packed-sequence boundaries). Greedy decoding: model.py's KV-cache generate() against transformers' greedy argmax
over full forwards at the next position ids. Then hf.save_pretrained(base_config=...) is loaded back by
transformers, which must log no warning and give the same logits. Prints one line per family: the worst absolute
logit error (and the logits' scale) and whether the decoded tokens agree.
"""
import json
import logging
import math
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from generate import generate  # noqa: E402
from hf import from_pretrained, load_config, save_pretrained  # noqa: E402

SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
             vocab_size=128, max_position_embeddings=64)
FAMILIES = {
    "qwen2": ("Qwen2Config", dict(rope_theta=1e6, tie_word_embeddings=True, use_sliding_window=False)),
    "qwen3": ("Qwen3Config", dict(head_dim=32, rope_theta=1e6, tie_word_embeddings=False)),
    "qwen3 (attention_bias)": ("Qwen3Config", dict(head_dim=32, attention_bias=True)),
    "olmo2": ("Olmo2Config", dict(rope_theta=5e5, eos_token_id=2, pad_token_id=1)),  # defaults exceed this vocab
    "llama3.2 (llama3 rope, tied)": ("LlamaConfig", dict(head_dim=32, rope_theta=5e5, tie_word_embeddings=True,
                                                         max_position_embeddings=512, rope_scaling=dict(
                                                             rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                             high_freq_factor=4.0,
                                                             original_max_position_embeddings=64))),
    "smollm2 (tied, head_dim 64)": ("LlamaConfig", dict(hidden_size=128, num_attention_heads=2,
                                                        num_key_value_heads=1, tie_word_embeddings=True)),
    "mistral nemo (head_dim 32 != 64/4)": ("MistralConfig", dict(head_dim=32, sliding_window=None, rope_theta=1e6)),
}
VERSION = Version(transformers.__version__)
POSE = torch.tensor([list(range(12)) + list(range(3000, 3012)), list(range(5, 13)) + list(range(700, 716))])


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def hf_config(cls_name, extra):
    kwargs = {**SHAPE, **extra}
    if VERSION >= Version("5") and "rope_scaling" in kwargs:  # 5 takes rope_parameters (theta inside)
        kwargs["rope_parameters"] = {**kwargs.pop("rope_scaling"), "rope_theta": kwargs.pop("rope_theta")}
    return getattr(transformers, cls_name)(**kwargs)


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))


def hf_logits(model, tokens, positions):
    with torch.no_grad():
        return model(input_ids=tokens, position_ids=positions, attention_mask=torch.ones_like(tokens)).logits.float()


def check(label, cls_name, extra, root):
    torch.manual_seed(0)
    config = hf_config(cls_name, extra)
    config._attn_implementation = "eager"
    hf = AutoModelForCausalLM.from_config(config).float().eval()
    randomise(hf, seed=1)
    folder = root / label.split()[0]
    hf.save_pretrained(folder, safe_serialization=True)
    ours = from_pretrained(folder, dtype=torch.float32).eval()
    tokens = torch.randint(0, SHAPE["vocab_size"], POSE.shape, generator=torch.Generator().manual_seed(2))
    worst, scale = [], 0.0
    for positions in (torch.arange(POSE.shape[1]).expand_as(POSE), POSE):
        want = hf_logits(hf, tokens, positions)
        with torch.no_grad():
            got = ours(tokens, positions)
        worst.append((got - want).abs().max().item())
        scale = max(scale, want.abs().max().item())
    # The PoSE gap is transformers' float32 angles: with its rotary made float64 (default rope only) it closes.
    exact = "n/a"
    if "rope_scaling" not in extra:
        rotary, D = hf.model.rotary_emb, config.head_dim if getattr(config, "head_dim", None) else \
            config.hidden_size // config.num_attention_heads
        theta = float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"])
        inv_freq = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
        f32 = rotary.forward

        def f64(x, position_ids):
            emb = torch.cat([position_ids[..., None].double() * inv_freq] * 2, dim=-1)
            return emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        rotary.forward = f64
        with torch.no_grad():
            exact = f"{(ours(tokens, POSE) - hf_logits(hf, tokens, POSE)).abs().max().item():.1e}"
        rotary.forward = f32
    worst.append(exact)
    prompt, positions = tokens[:1], POSE[:1]
    new = generate(ours, prompt, 6, positions)
    seq, pos = prompt, positions
    for _ in range(6):
        nxt = hf_logits(hf, seq, pos)[:, -1:].argmax(-1)
        seq, pos = torch.cat([seq, nxt], 1), torch.cat([pos, pos[:, -1:] + 1], 1)
    decodes = torch.equal(new, seq[:, prompt.shape[1]:])
    # our export of the same weights, read back by transformers: no warning, the same logits; then as a PoSE run
    # exports it, with PI x4 (alpha = L_t / L_c) on its rope, against model.py with that rope
    out = root / (folder.name + "-ours")
    save_pretrained(ours, out, base_config=load_config(folder))
    handler = Warnings()
    logging.getLogger("transformers").addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dtype = {"dtype" if VERSION >= Version("4.56") else "torch_dtype": torch.float32}  # the rename
        back = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", **dtype)
        scaled = {}
        for kind in ("linear", "yarn"):
            pi = from_pretrained(folder, dtype=torch.float32, rope_scaling={"type": kind, "factor": 4.0})
            save_pretrained(pi, root / f"{folder.name}-{kind}", base_config=load_config(folder))
            try:
                back_pi = AutoModelForCausalLM.from_pretrained(root / f"{folder.name}-{kind}",
                                                               attn_implementation="eager", **dtype)
            except ValueError as e:  # transformers 4's Olmo2Config: rope_scaling linear / dynamic only
                scaled[kind] = f"refused by transformers ({str(e)[:60]}...)"
                continue
            with torch.no_grad():
                scaled[kind] = (hf_logits(back_pi.eval(), tokens, POSE) - pi(tokens, POSE)).abs().max().item()
    logging.getLogger("transformers").removeHandler(handler)
    noise = handler.records + [str(w.message) for w in caught if "deprecat" not in str(w.message).lower()]
    again = (hf_logits(back.eval(), tokens, POSE) - hf_logits(hf, tokens, POSE)).abs().max().item()
    exported = json.loads((out / "config.json").read_text())
    print(f"{label:36s} worst |dlogit| contiguous {worst[0]:.1e}, PoSE {worst[1]:.1e} (with float64 angles in "
          f"transformers: {worst[2]}; max |logit| {scale:.1f}); "
          f"greedy 6 tokens equal: {decodes}; "
          f"export: {exported['model_type']}/{exported['architectures'][0]}, reloaded |dlogit| {again:.1e}, "
          f"x4 exports vs model.py at PoSE ids: " + ", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}"
                                                             for k, v in scaled.items()) +
          f"; warnings: {noise or 'none'}")
    worst[1] = max(worst[1], *(v for v in scaled.values() if isinstance(v, float)))
    return worst, decodes, again, noise


def main():
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, fp32 on CPU, eager attention")
    with tempfile.TemporaryDirectory() as tmp:
        results = [check(label, *spec, Path(tmp)) for label, spec in FAMILIES.items()]
    # PoSE's ids reach 3,000: transformers forms position x inv_freq in float32 (~2e-4 rad off there), model.py in
    # float64 (rope.py), so the PoSE bound is looser than the contiguous one.
    ok = all(w[0] < 2e-5 and w[1] < 2e-3 and d and a == 0.0 and not n for w, d, a, n in results)
    print("all agree" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
