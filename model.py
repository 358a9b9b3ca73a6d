"""LLaMA-family transformer (LLaMA 1/2/3, Mistral, Qwen2/2.5, Qwen3, OLMo 2) in plain PyTorch, reading and writing
Hugging Face folders.

    python -m pytest tests/test_model.py -x -q     # no CLI: train.py and evaluate.py import this file
    python benchmarks/bench_model.py               # CPU: SDPA vs explicit-mask attention, one training step
    python -m pytest tests/test_sliding_window.py  # Mistral v0.1's sliding window against a float64 band mask
    python benchmarks/bench_sliding.py             # CPU: the band mask vs FlexAttention past the window

    from model import Transformer
    model = Transformer.from_pretrained("Llama-2-7b-hf", rope_scaling={"type": "linear", "factor": 4.0})
    logits = model(tokens, positions)              # positions: PoSE's skipped ids (Eq. 3-5), default arange

Names. Modules carry Hugging Face's names (model.layers.{i}.self_attn.q_proj, ...), not Meta's (layers.{i}.
attention.wq, ...), so `state_dict()` keys are the checkpoint keys: no key map to get wrong, and what we save
loads elsewhere unchanged. Classes keep Meta's names (ModelArgs, RMSNorm, Attention, FeedForward, ...).
q/k rows are in HF's rotate-half layout (see rope.py's docstring for why that equals the paper's Eq. 1).

Families. One Transformer; config.json's model_type sets the few ModelArgs fields in which the families differ
(FAMILIES, read from transformers' modeling_<type>.py; everything else is LLaMA's SwiGLU, RMSNorm and RoPE):

    model_type  qkv_bias        o_bias          qk_norm                      post_norm  norm_cast_last
    llama       attention_bias  attention_bias  -                            -          -
    mistral     attention_bias  attention_bias  -                            -          -
    qwen2       always          never           -                            -          -
    qwen3       attention_bias  attention_bias  "head": per head, over D     -          -
    olmo2       attention_bias  attention_bias  "proj": over all H x D       yes        yes

q/k norms come before RoPE; "head" after the per-head reshape, "proj" before it. post_norm: no input_layernorm,
each sub-layer's output is normed before the residual add. norm_cast_last: the weight multiplies in float32, then
the cast (LLaMA casts, then scales; the same in fp32). Qwen's sliding window (use_sliding_window true, never in
a released config) and the families in REFUSED are refused in one line naming what this file lacks.
"""
import dataclasses
import functools
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.utils.checkpoint import checkpoint

from rope import RotaryEmbedding, apply_rotary_emb, config_value, rope_parameters, scaling_to_config

# ---------------------------------------------------------------- options

# HF-style config.json dicts; callers may override vocab_size / max_position_embeddings.
PRESETS = {
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                 intermediate_size=688, vocab_size=4096, max_position_embeddings=256),
    "mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,  # tiny's
                 intermediate_size=688, vocab_size=4096, max_position_embeddings=256),  # sizes, head_dim 64
    "small": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2,
                  intermediate_size=1024, vocab_size=4096, max_position_embeddings=256),
    "1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,  # TinyLlama
               intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5),
}


# model_type -> the ModelArgs fields that differ from LLaMA's; defaults of omitted keys that differ from LlamaConfig's.
FAMILIES = {"llama": {}, "mistral": {}, "qwen2": dict(qkv_bias=True, o_bias=False), "qwen3": dict(qk_norm="head"),
            "olmo2": dict(qk_norm="proj", post_norm=True, norm_cast_last=True)}
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "olmo2": "Olmo2ForCausalLM"}  # what a bare config.json gets
FAMILY_DEFAULTS = {"qwen3": dict(head_dim=128), "olmo2": dict(rms_norm_eps=1e-5)}
# model_type -> what a checkpoint of it computes that this file does not (a clear refusal until one is built).
REFUSED = {
    "gemma": "(1 + w) RMSNorms, a sqrt(hidden_size) embedding scale and a GeGLU MLP",
    "gemma2": "(1 + w) sandwich RMSNorms, an embedding scale, logit soft-capping and alternating sliding windows",
    "gemma3": "(1 + w) sandwich RMSNorms, an embedding scale, alternating local/global layers, two rope tables",
    "phi3": "fused qkv_proj / gate_up_proj weights, partial rotary (Phi-4-mini) and longrope scaling",
    "phi": "parallel attention and MLP, LayerNorm with biases, partial rotary and a GELU MLP",
    "glm": "fused gate_up_proj weights and partial rotary on interleaved pairs",
    "glm4": "fused gate_up_proj weights, partial rotary on interleaved pairs and post-sub-layer norms",
    "internlm2": "a fused wqkv projection (remote code)", "internlm3": "remote code this file does not mirror",
    "deepseek_v2": "multi-head latent attention (MLA) and mixture-of-experts MLPs",
    "deepseek_v3": "multi-head latent attention (MLA) and mixture-of-experts MLPs",
    "smollm3": "NoPE layers (no_rope_layers: every 4th layer without RoPE)",
    "ministral": "alternating sliding-window layers (layer_types)",
    "ministral3": "a position-dependent query scale (llama_4_scaling_beta)",
    "olmo3": "alternating sliding-window layers (layer_types)",
    **dict.fromkeys(("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"), "mixture-of-experts MLPs"),
}
REFUSED["gemma3_text"] = REFUSED["gemma3"]


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32         # < n_heads: grouped-query attention (LLaMA-2 70B, LLaMA-3, Mistral)
    head_dim: int = 128
    hidden_dim: int = 11008      # SwiGLU inner size (intermediate_size)
    vocab_size: int = 32000
    norm_eps: float = 1e-6
    max_position_embeddings: int = 2048  # the context this model is meant for (L_t after PoSE), not enforced
    rope: dict = field(default_factory=lambda: rope_parameters({}))  # canonical dict, see rope.rope_parameters
    tie_word_embeddings: bool = False
    qkv_bias: bool = False       # bias on q/k/v_proj (config.json attention_bias; Qwen2: always)
    o_bias: bool = False         # bias on o_proj (attention_bias; Qwen2: never)
    mlp_bias: bool = False
    qk_norm: str | None = None   # RMSNorm on q and k before RoPE: "head" (Qwen3) or "proj" (OLMo 2); see FAMILIES
    post_norm: bool = False      # OLMo 2: norm each sub-layer's output, then add the residual (no input_layernorm)
    norm_cast_last: bool = False  # OLMo 2's RMSNorm: weight * x in float32, then cast back
    sliding_window: int | None = None  # Mistral v0.1: a token attends to the last W tokens only (Attention)
    bos_token_id: int | None = 1
    eos_token_id: int | list | None = 2

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        """From a config.json dict; omitted keys take HF LlamaConfig's defaults."""
        family = family_fields(config)
        config = {**FAMILY_DEFAULTS.get(config.get("model_type"), {}), **config}
        if config.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {config['hidden_act']!r} is not supported (LLaMA's SwiGLU needs 'silu')")

        def positive(key, default):
            return config_value(config, key, default, int, low=1)

        def flag(key, default=False):
            return config_value(config, key, default, bool)

        def token_ids(key, default):  # an id, a list of them (Llama 3 Instruct's EOS) or null
            value = config.get(key, default)
            for i in value if isinstance(value, list) else [] if value is None else [value]:
                if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < 2**31:
                    raise ValueError(f"config key {key!r} must be a token id >= 0, a list of them or null, "
                                     f"got {value!r}")
            return value

        dim, n_heads = positive("hidden_size", 4096), positive("num_attention_heads", 32)
        n_kv_heads = positive("num_key_value_heads", n_heads)
        if n_heads % n_kv_heads:
            raise ValueError(f"num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv_heads}")
        if config.get("head_dim") is None and dim % n_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by num_attention_heads {n_heads} (set head_dim)")
        window = config.get("sliding_window") if flag("use_sliding_window", True) else None  # Qwen's: refused
        return cls(dim=dim, n_layers=positive("num_hidden_layers", 32), n_heads=n_heads, n_kv_heads=n_kv_heads,
                   head_dim=positive("head_dim", dim // n_heads), hidden_dim=positive("intermediate_size", 11008),
                   vocab_size=positive("vocab_size", 32000),
                   norm_eps=config_value(config, "rms_norm_eps", 1e-6, above=0),  # 0: rsqrt(0) of a zero row
                   max_position_embeddings=positive("max_position_embeddings", 2048), rope=rope_parameters(config),
                   tie_word_embeddings=flag("tie_word_embeddings"), mlp_bias=flag("mlp_bias"),
                   sliding_window=None if window is None else positive("sliding_window", None),
                   bos_token_id=token_ids("bos_token_id", 1), eos_token_id=token_ids("eos_token_id", 2),
                   **{"qkv_bias": flag("attention_bias"), "o_bias": flag("attention_bias"), **family})

    def to_config(self, dtype: torch.dtype = torch.float32, base: dict | None = None) -> dict:
        """A Hugging Face config.json dict that makes other LLaMA tools compute what this model computes.

        base: the config.json this model was loaded from. Its keys are all kept (pad_token_id, use_cache,
        initializer_range, ...) but those training changes: the rope keys, max_position_embeddings and the
        dtype. Without it the config is built from these args alone (a model trained from scratch).
        """
        if base is not None:
            same = dataclasses.replace(ModelArgs.from_config(base), rope=self.rope,
                                       max_position_embeddings=self.max_position_embeddings)
            if same != self:
                raise ValueError("the base config.json describes another model than the one being saved")
        rope = scaling_to_config(self.rope, self.head_dim)  # ntk -> raised rope_theta; yarn-revised -> refused type
        # HF's dynamic NTK takes its original window from max_position_embeddings (see rope.scaling_to_config).
        dynamic = self.rope["rope_type"] == "dynamic"
        context = self.rope["original_max_position_embeddings"] if dynamic else self.max_position_embeddings
        if base is None and (self.qkv_bias != self.o_bias or self.qk_norm or self.post_norm or self.norm_cast_last):
            raise ValueError("a config.json without a base is written for llama / mistral only: pass the "
                             "checkpoint's own config.json as base")
        if base is None:
            config = {
                # A sliding window is only honoured by the Mistral class; as "llama" it would be silently dropped.
                "architectures": ["MistralForCausalLM" if self.sliding_window else "LlamaForCausalLM"],
                "model_type": "mistral" if self.sliding_window else "llama",
                "hidden_size": self.dim, "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads,
                "num_key_value_heads": self.n_kv_heads, "head_dim": self.head_dim,
                "intermediate_size": self.hidden_dim, "hidden_act": "silu", "vocab_size": self.vocab_size,
                "rms_norm_eps": self.norm_eps, "tie_word_embeddings": self.tie_word_embeddings,
                "attention_bias": self.qkv_bias, "mlp_bias": self.mlp_bias,
                "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id}
            if self.sliding_window:
                config["sliding_window"] = self.sliding_window
        else:  # every rope key is rewritten below: a stale one of the other convention would contradict it
            config = {k: v for k, v in base.items() if k not in
                      ("rope_theta", "rope_scaling", "rope_parameters", "original_max_position_embeddings")}
            # A bare config may lack what picks the class (vLLM reads architectures, transformers model_type).
            config.setdefault("model_type", "mistral" if self.sliding_window else "llama")
            config.setdefault("architectures", [ARCHITECTURES[config["model_type"]]])
        config["max_position_embeddings"] = context
        # transformers 4 reads "torch_dtype", 5 writes "dtype" (and reads both): update the checkpoint's own.
        for key in [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]:
            config[key] = str(dtype).removeprefix("torch.")
        if config["model_type"] == "olmo2" and rope.get("rope_scaling", {}).get("type") in ("linear", "dynamic"):
            # transformers 4's Olmo2Config refuses a rope_scaling of other than exactly {type, factor}
            rope["rope_scaling"] = {k: rope["rope_scaling"][k] for k in ("type", "factor")}
        return {**config, **rope}


def family_fields(config: dict) -> dict:
    """The ModelArgs fields config.json's model_type sets (FAMILIES); a refused family or Qwen's sliding window
    raises one line naming what this file does not compute."""
    kind = config.get("model_type", "llama")
    if not isinstance(kind, str):
        raise ValueError(f"config key 'model_type' must be a string, got {kind!r}")
    if kind in REFUSED:
        raise ValueError(f"model_type {kind!r} is not supported: it needs {REFUSED[kind]}, which model.py does not "
                         f"implement (supported: {', '.join(FAMILIES)})")
    if kind not in FAMILIES:
        raise ValueError(f"model_type {kind!r} is not supported ({', '.join(FAMILIES)})")
    # Qwen2/3 slide only when use_sliding_window is true, and then on the layers max_window_layers / layer_types pick.
    if kind in ("qwen2", "qwen3") and config.get("use_sliding_window"):
        raise ValueError(f"use_sliding_window true is not supported for {kind} (its per-layer windows, "
                         f"max_window_layers / layer_types, are not implemented): set it false or use transformers")
    return FAMILIES[kind]


# ---------------------------------------------------------------- layers

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, cast_last: bool = False):
        super().__init__()
        self.eps, self.cast_last = eps, cast_last
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # HF's order: normalise in float32 (bf16 sums of squares lose digits), cast back, then scale;
        # OLMo 2 scales in float32, then casts (norm_cast_last). Equal in fp32, a rounding apart in bf16.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * xf).to(x.dtype) if self.cast_last else self.weight * xf.to(x.dtype)


# RoPE application (apply_rotary_emb, RotaryEmbedding) is imported from rope.py.

class KVCache:
    """One layer's keys/values for incremental decoding, allocated on first use: [B, Hkv, max_len, D], or with a
    sliding window W < max_len a rolling buffer of W slots, token index i in slot i % W (Mistral's rolling cache).

    The rule is "prefill once, then decode 1 at a time": a decoded token attends to every stored key with no
    mask, so the order of the slots does not matter, and W slots hold exactly its window i - W < j <= i.
    """

    def __init__(self, max_len: int):
        self.max_len, self.len, self.k, self.v = max_len, 0, None, None

    def update(self, k, v, window: int | None = None):
        """Store k, v [B, Hkv, T, D] of tokens len..len+T-1; return the stored keys/values [B, Hkv, min(len, W), D]
        (views, no copy): what the next decoded token attends to. A prompt longer than W keeps its last W."""
        T = k.shape[2]
        if self.len + T > self.max_len:
            raise ValueError(f"KV cache of {self.max_len} tokens is full: {self.len} cached + {T} new")
        if self.k is None:
            shape = (*k.shape[:2], min(self.max_len, window or self.max_len), k.shape[3])
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        size = self.k.shape[2]
        keep = min(T, size)  # token indices len+T-keep .. len+T-1 go to slots index % size
        slots = torch.arange(self.len + T - keep, self.len + T, device=k.device) % size
        self.k.index_copy_(2, slots, k[:, :, T - keep:])
        self.v.index_copy_(2, slots, v[:, :, T - keep:])
        self.len += T
        return self.k[:, :, :min(self.len, size)], self.v[:, :, :min(self.len, size)]

    def save(self, n: int):
        """What storing the next n tokens changes, for restore(): the length, and copies of the slots they will
        overwrite. In a rolling buffer those hold tokens still in the window of the tokens after them."""
        slots = torch.arange(self.len, self.len + n, device=self.k.device) % self.k.shape[2]
        return self.len, slots, self.k[:, :, slots].clone(), self.v[:, :, slots].clone()

    def restore(self, saved):
        """Back to the state save() recorded: the tokens stored since are forgotten, their slots as they were."""
        self.len, slots, k, v = saved
        self.k.index_copy_(2, slots, k)  # a slot listed twice (n > W) holds its saved value in both copies
        self.v.index_copy_(2, slots, v)


# Where sliding-window attention runs as FlexAttention (fused, block-sparse: memory O(T·W)) rather than SDPA with a
# materialised [T, T] band mask. torch 2.13 also compiles it for CPU, but forward only (training needs backward)
# and after a minute or more of compiling; benchmarks/bench_sliding.py measures both there.
FLEX_DEVICES = ("cuda",)


@functools.cache
def _compiled(fn):
    """torch.compile(fn), built on first use: FlexAttention is only fast compiled (PyTorch's docs: compile it
    once), and importing torch.compile's machinery costs seconds that the other paths should not pay."""
    return torch.compile(fn)


@functools.lru_cache(maxsize=8)
def _band_block_mask(T: int, window: int, device: torch.device):
    """FlexAttention's block mask of the band, built once per (T, W, device): 128 x 128 tiles wholly outside the
    band are skipped, so time and memory are O(T·W). Compiled, create_block_mask never holds the [T, T] boolean
    mask it would otherwise materialise (1 GiB at 32k tokens) to find the tiles."""
    def band(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)
    return _compiled(create_block_mask)(band, None, None, T, T, device=device)  # B, H = None: broadcast


def sliding_window_attention(q, k, v, window: int):
    """Causal attention over a band: query i attends to keys j with i - window < j <= i, i.e. itself and the
    window - 1 tokens before it (transformers' sliding_window_overlay: kv_idx > q_idx - sliding_window).
    q [B, H, T, D], k/v [B, Hkv, T, D] (GQA when Hkv < H) -> [B, H, T, D]. FlexAttention on FLEX_DEVICES in
    fp16 / bf16 / fp32; elsewhere (CPU, float64) SDPA with the band as an explicit [T, T] mask."""
    T, gqa = q.shape[2], q.shape[1] != k.shape[1]
    if q.device.type in FLEX_DEVICES and q.dtype in (torch.float16, torch.bfloat16, torch.float32):
        block_mask = _band_block_mask(T, window, q.device)
        return _compiled(flex_attention)(q, k, v, block_mask=block_mask, enable_gqa=gqa)
    i = torch.arange(T, device=q.device)
    behind = i[:, None] - i[None, :]          # [T, T]: query index - key index
    band = (behind >= 0) & (behind < window)  # True = attend
    return F.scaled_dot_product_attention(q, k, v, attn_mask=band, enable_gqa=gqa)


class Attention(nn.Module):
    """Multi-head self-attention with RoPE and GQA; causal, or Mistral v0.1's sliding window.

    Sliding window W (config.json "sliding_window"): the token at index i in the sequence attends to the tokens
    at indices i - W + 1 .. i, as transformers' MistralForCausalLM computes it. The band is in token index (HF
    builds it from cache positions), not in position id: under PoSE's skips (Eq. 4) a query just after a jump
    still sees the W - 1 tokens before it in the window, though their position ids may be thousands lower. That
    is what fine-tuning HF's Mistral with PoSE position_ids does (with an attention_mask passed, as the authors'
    code does: without one, recent transformers read every jump as the start of a new packed sequence and block
    attention across the chunks). With contiguous position ids, index and position differ by a constant.
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.window, self.qk_norm = args.sliding_window, args.qk_norm
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=args.qkv_bias)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=args.o_bias)
        if args.qk_norm:  # Qwen3: one weight of D shared by the heads; OLMo 2: H x D (k: Hkv x D) weights
            per_head = args.qk_norm == "head"
            self.q_norm = RMSNorm(args.head_dim * (1 if per_head else args.n_heads), args.norm_eps, args.norm_cast_last)
            self.k_norm = RMSNorm(args.head_dim * (1 if per_head else args.n_kv_heads), args.norm_eps,
                                  args.norm_cast_last)

    def forward(self, x, cos, sin, cache: KVCache | None = None):
        B, T, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [B, T, H*D], [B, T, Hkv*D] x 2
        if self.qk_norm == "proj":  # OLMo 2: over the whole projection, before the per-head split
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_heads, self.head_dim)     # [B, T, H, D]
        k = k.view(B, T, self.n_kv_heads, self.head_dim)  # [B, T, Hkv, D]
        if self.qk_norm == "head":  # Qwen3: each head's D values, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)                                # [B, H, T, D], [B, Hkv, T, D]
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)          # [B, Hkv, T, D]
        # Rotate by the position ids, whatever they are (PoSE's jumps): scores depend on m - n only (Eq. 2).
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        if cache is not None:
            if cache.len and T > 1:  # SDPA's causal mask is aligned top-left: right only if keys == queries
                raise ValueError(f"{T} new tokens after {cache.len} cached: prefill once, then decode 1 at a time")
            stored_k, stored_v = cache.update(k, v, self.window)  # [B, Hkv, S, D], S = min(tokens so far, W)
            if T == 1:  # decoding: exactly the keys in its window; a prefill attends over its own k, v below
                k, v = stored_k, stored_v
        if self.window is not None and T > self.window:
            out = sliding_window_attention(q, k, v, self.window)  # [B, H, T, D]
        else:
            # Within the window the band is plain causal attention. is_causal=True instead of a [T, T] mask keeps
            # the flash / memory-efficient kernels eligible; a single decoded token (T = 1) sees every key it is
            # given. enable_gqa: each group of H / Hkv query heads shares one K/V head without copying K/V
            # (repeat_kv in Meta's code).
            out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1,
                                                 enable_gqa=self.n_heads != self.n_kv_heads)  # [B, H, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))  # [B, T, dim]


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020, as in LLaMA): down(silu(gate(x)) * up(x))."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.hidden_dim, bias=args.mlp_bias)
        self.up_proj = nn.Linear(args.dim, args.hidden_dim, bias=args.mlp_bias)
        self.down_proj = nn.Linear(args.hidden_dim, args.dim, bias=args.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn, self.mlp, self.post_norm = Attention(args), FeedForward(args), args.post_norm
        norm = functools.partial(RMSNorm, args.dim, args.norm_eps, args.norm_cast_last)
        if args.post_norm:  # OLMo 2's names: post_attention_layernorm norms the attention's output here
            self.post_attention_layernorm, self.post_feedforward_layernorm = norm(), norm()
        else:
            self.input_layernorm, self.post_attention_layernorm = norm(), norm()

    def forward(self, x, cos, sin, cache=None):
        if self.post_norm:  # OLMo 2: x + norm(sublayer(x))
            h = x + self.post_attention_layernorm(self.self_attn(x, cos, sin, cache))
            return h + self.post_feedforward_layernorm(self.mlp(h))
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)  # pre-norm residuals: x + sublayer(norm(x))
        return h + self.mlp(self.post_attention_layernorm(h))


# ---------------------------------------------------------------- model

class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model = nn.ModuleDict(dict(  # the "model." prefix of HF keys
            embed_tokens=nn.Embedding(args.vocab_size, args.dim),
            layers=nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers)),
            norm=RMSNorm(args.dim, args.norm_eps, args.norm_cast_last)))
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        self._tie()
        self.set_rope(args.rope)

    def _tie(self):
        # Call again after to_empty()/load_state_dict(assign=True): both replace parameters and break the tie.
        if self.args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def set_rope(self, rope: dict):
        """Switch the rope scaling (e.g. PI with alpha = L_t / L_c). RotaryEmbedding is a plain object holding
        CPU float64 frequencies, so building the model on the meta device never touches it."""
        rope = rope_parameters(rope)  # idempotent on a canonical dict; validates
        self.args = dataclasses.replace(self.args, rope=rope)
        self.rotary_emb = RotaryEmbedding(rope, self.args.head_dim)

    def compile_regions(self):
        """torch.compile each transformer block's forward and the loss chunk ("regional compilation", as
        torchtitan compiles per block): the blocks are identical, so they share one compiled graph and compile
        time is one block's; module hooks (FSDP2's gathers, activation checkpointing) stay outside it; names
        and state dict are unchanged. Decoding with a KV cache stays eager: its growing length would
        recompile the graph per token."""
        def eager_while_decoding(eager, compiled):
            def forward(*args, **kwargs):
                decoding = any(isinstance(a, KVCache) for a in (*args, *kwargs.values()))
                return (eager if decoding else compiled)(*args, **kwargs)
            return forward

        for block in self.model.layers:
            block.forward = eager_while_decoding(block.forward, torch.compile(block.forward))
        self._chunk_nll = torch.compile(self._chunk_nll)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None):
        """From-scratch init: every matrix N(0, 0.02) (HF's initializer_range), norms 1, biases 0."""
        device = self.lm_head.weight.device
        g = torch.Generator(device=device)
        g.manual_seed(seed) if seed is not None else g.seed()
        for name, p in self.named_parameters():  # a tied matrix is listed once
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=g)

    def hidden(self, tokens, positions=None, cache: list[KVCache] | None = None):
        """Final-normed hidden states [B, T, dim] for tokens [B, T] at position ids [B, T] (default arange)."""
        B, T = tokens.shape
        start = cache[0].len if cache else 0
        if positions is None:
            positions = torch.arange(start, start + T, device=tokens.device)
        positions = positions.expand(B, T)
        cos, sin = self.rotary_emb(positions)  # [B, T, head_dim] float32, angles in float64 (rope.py)
        h = self.model.embed_tokens(tokens)  # [B, T, dim]
        for i, layer in enumerate(self.model.layers):
            h = layer(h, cos, sin, cache[i] if cache else None)
        return self.model.norm(h)

    def forward(self, tokens, positions=None):
        """Logits [B, T, V] float32. For long T use loss() (no [T, V] tensor) or generate()."""
        logits = self.lm_head(self.hidden(tokens, positions))
        return logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32; a float64 model stays

    def loss(self, tokens, targets, positions=None, chunk_size: int = 4096):
        """(sum of next-token NLL float32, number of scored targets); targets == -100 are ignored.

        Logits are formed chunk_size rows at a time and, under autograd, recomputed in backward
        (checkpoint), so no [B*T, V] tensor ever exists: 128k tokens x 32k vocab in fp32 would be 16 GB.
        The last chunk is kept instead: backward starts with it, so its saved logits cost no more memory
        than recomputing them would (one chunk and its gradient either way), and a sequence that fits in
        one chunk (every short training step) pays no recompute at all.
        """
        h = self.hidden(tokens, positions).flatten(0, 1)  # [B*T, dim]
        targets = targets.flatten().to(h.device)          # [B*T]
        total = torch.zeros((), dtype=torch.promote_types(h.dtype, torch.float32), device=h.device)
        for i in range(0, h.shape[0], chunk_size):
            args = (h[i:i + chunk_size], targets[i:i + chunk_size])
            last = i + chunk_size >= h.shape[0]
            total = total + (checkpoint(self._chunk_nll, *args, use_reentrant=False)
                             if torch.is_grad_enabled() and not last else self._chunk_nll(*args))
        return total, (targets != -100).sum()

    def _chunk_nll(self, h, targets):
        logits = self.lm_head(h)  # [chunk, V]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")

    @torch.no_grad()
    def generate(self, tokens, max_new_tokens: int, positions=None, stop_ids=(), score=None):
        """Greedy decoding with a KV cache: prefill the prompt, then one token at a time at the next position
        id (last prompt position + 1, + 2, ...). Returns the new ids [B, n], n = max_new_tokens, or fewer when
        every row has produced one of stop_ids (e.g. EOS) by then. Under a sliding window W each layer's cache
        keeps the last W tokens only (KVCache), however long the prompt.

        score: ids [B, m] to teacher-force after the same prompt; then returns (new ids, log p(score | prompt)
        [B] in float32 or wider: the sum over its m tokens, each given the prompt and those before it). They are
        decoded one at a time from the prompt's prefill, and the caches rewound to it before the greedy decoding
        (KVCache.save / restore), so the prompt is read once for both (evaluate.py's passkey)."""
        B, T = tokens.shape
        if positions is None:
            positions = torch.arange(T, device=tokens.device)
        positions = positions.expand(B, T)
        forced = 0 if score is None else score.shape[1]
        cache = [KVCache(T + max(max_new_tokens, forced)) for _ in self.model.layers]
        prefill = self.lm_head(self.hidden(tokens, positions, cache)[:, -1:])  # [B, 1, V]: no [T, V] prefill logits
        if score is not None:
            saved = [c.save(forced) for c in cache]
            logits, logprob = prefill, 0.0
            for i in range(forced):
                logp = torch.log_softmax(logits[:, 0].to(torch.promote_types(logits.dtype, torch.float32)), -1)
                logprob = logprob + logp.gather(1, score[:, i:i + 1])[:, 0]  # [B]
                if i + 1 < forced:
                    logits = self.lm_head(self.hidden(score[:, i:i + 1], positions[:, -1:] + 1 + i, cache))
            for c, s in zip(cache, saved):
                c.restore(s)
        logits, new, pos = prefill, [], positions[:, -1:]
        stop = torch.as_tensor(list(stop_ids), dtype=torch.long, device=tokens.device)
        stopped = torch.zeros(B, 1, dtype=torch.bool, device=tokens.device)
        for step in range(max_new_tokens):
            new.append(logits.argmax(-1))  # [B, 1]
            stopped |= torch.isin(new[-1], stop)
            if step + 1 < max_new_tokens and not (len(stop) and bool(stopped.all())):
                pos = pos + 1
                logits = self.lm_head(self.hidden(new[-1], pos, cache))
            else:
                break
        new = torch.cat(new, dim=1) if new else tokens.new_empty(B, 0)
        return new if score is None else (new, logprob)

    # ------------------------------------------------------------ loading / saving

    @classmethod
    def from_preset(cls, name: str, seed: int | None = None, **overrides) -> "Transformer":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        model = cls(ModelArgs.from_config({**PRESETS[name], **overrides}))
        model.init_weights(seed)
        return model

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=torch.bfloat16, rope_scaling: dict | None = None):
        """Load a Hugging Face folder of a FAMILIES model_type (config.json + model.safetensors, or shards + index).

        rope_scaling (config.json's own form, e.g. {"type": "linear", "factor": 4.0}) overrides the config.
        The model is built on the meta device, materialised once on `device` in `dtype`, and filled one
        tensor at a time, so host memory holds the weights once plus the largest single tensor. The headers
        are checked against the config first (check_checkpoint); a NaN or infinite weight is refused by name.
        """
        path = Path(path)
        config = load_config(path)
        try:
            if rope_scaling is not None:
                config = {**config, "rope_scaling": dict(rope_scaling)}
            args = ModelArgs.from_config(config)
        except ValueError as e:
            raise ValueError(f"{path / 'config.json'}: {e}") from None
        if rope_scaling is not None and args.rope["rope_type"] not in ("default", "dynamic"):
            # The context the override is for: alpha x the original window (PI / YaRN's target L_t).
            target = round(args.rope["factor"] * args.rope["original_max_position_embeddings"])
            args = dataclasses.replace(args, max_position_embeddings=max(args.max_position_embeddings, target))
        headers = check_checkpoint(path, args)  # names, shapes, dtypes: before allocating gigabytes
        with torch.device("meta"):
            model = cls(args)
        model.to(dtype).to_empty(device=device)  # uninitialised memory, every byte overwritten below
        model._tie()
        model.set_rope(args.rope)  # recomputed outside the meta context, whatever happened above
        expected = model.state_dict()  # name -> the parameter's own storage
        with torch.no_grad():
            for file in headers:
                try:
                    with safe_open(file, framework="pt", device="cpu") as f:
                        for name in f.keys():
                            if name not in expected or name.endswith("rotary_emb.inv_freq") or \
                                    name == "lm_head.weight" and args.tie_word_embeddings:
                                continue  # check_checkpoint allowed it: an old RoPE table or a tied head
                            tensor = f.get_tensor(name)
                            if not torch.isfinite(tensor).all():  # a NaN weight makes every result NaN
                                raise ValueError(f"{file}: tensor {name!r} holds NaN or infinite values")
                            expected[name].copy_(tensor)  # casts to dtype and moves to device in place
                except (SafetensorError, OSError) as e:
                    raise ValueError(f"{file}: unreadable safetensors ({str(e).splitlines()[0]})") from None
        return model

    def save_pretrained(self, path, max_shard_size: int = 5 * 2**30, base_config: dict | None = None):
        """Write config.json + model.safetensors (or model-0000i-of-0000n.safetensors + index) in HF's layout.
        base_config: the config.json the weights came from, kept but for what training changed (to_config).

        Everything is written into a sibling temp folder first; a failure leaves `path` as it was. Into an
        existing folder, our files replace the old weights and config and leave others (tokenizer) alone.
        """
        path = Path(path).absolute()  # a sibling temp name needs a real last component ("." has none)
        if max_shard_size <= 0:
            raise ValueError(f"max_shard_size must be > 0, got {max_shard_size}")
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path}: exists and is not a folder")
        tensors = self.state_dict()
        if self.args.tie_word_embeddings:
            tensors.pop("lm_head.weight")  # HF omits the tied head; safetensors refuses shared storage anyway
        shards, size = [[]], 0  # greedy, in module order: a new shard when the next tensor would overflow
        for name, t in tensors.items():
            nbytes = t.numel() * t.element_size()
            if shards[-1] and size + nbytes > max_shard_size:
                shards, size = shards + [[]], 0
            shards[-1].append(name)
            size += nbytes
        tmp = path.with_name(f".tmp-{path.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            config = self.args.to_config(self.model.embed_tokens.weight.dtype, base_config)
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            names = ["model.safetensors"] if len(shards) == 1 else \
                [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
            for shard, name in zip(shards, names):
                save_file({k: tensors[k].detach().contiguous().cpu() for k in shard}, tmp / name,
                          metadata={"format": "pt"})  # "pt": what HF's loader checks for
            if len(shards) > 1:
                index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                         "weight_map": {k: name for shard, name in zip(shards, names) for k in shard}}
                (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
            if not path.exists():
                os.replace(tmp, path)
                return
            for old in [*path.glob("model*.safetensors"), path / "model.safetensors.index.json"]:
                old.unlink(missing_ok=True)  # stale shards of an earlier save would confuse loaders
            for new in tmp.iterdir():
                os.replace(new, path / new.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def load_config(path) -> dict:
    """config.json of a checkpoint folder (or the file itself) as a dict."""
    path = Path(path)
    file = path if path.suffix == ".json" else path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found (expected a Hugging Face checkpoint folder with config.json)")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(config).__name__}")
    try:
        ModelArgs.from_config(config)  # every key the project reads, checked once for type and range
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None
    return config


def _checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a folder: the shards named by model.safetensors.index.json, else model.safetensors."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            assert isinstance(weight_map, dict) and weight_map, "an empty or non-object weight_map"
            bad = next((v for v in weight_map.values() if not isinstance(v, str) or Path(v).name != v), None)
            assert bad is None, f"shard {bad!r} is not a file name in the folder"
            files = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AssertionError) as e:
            raise ValueError(f"{index}: not a safetensors index with a 'weight_map' ({e})") from None
        for name in files:
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name}: shard listed in {index.name} not found")
        return [path / name for name in files]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json "
                            f"(convert .bin checkpoints to safetensors first)")


# Bytes per element of safetensors' dtypes; the weights must be floating point (they are cast to the model's dtype).
SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                      "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def read_safetensors_header(file: Path) -> dict:
    """The JSON header of a safetensors file, checked before safetensors trusts it: 8-byte little-endian length
    n, n bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}}, then the data; offsets relative to it.
    Each entry's bytes must be its shape times its dtype's size, and lie inside the file."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        raw = fh.read(8)
        n = int.from_bytes(raw, "little")
        if len(raw) < 8 or n > size - 8:
            raise ValueError(f"{file}: corrupt safetensors (header length {n} but the file has {size} bytes)")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{file}: corrupt safetensors header (not JSON: {e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{file}: corrupt safetensors header (not a JSON object)")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            shape, itemsize = info["shape"], SAFETENSORS_DTYPES[info["dtype"]]
            ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in [begin, end, *shape])
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{file}: tensor {name!r} has a malformed header entry {info!r}")
        if not begin <= end <= data:
            raise ValueError(f"{file}: tensor {name!r} data_offsets [{begin}, {end}] run past the end of the "
                             f"data ({data} bytes): truncated file?")
        if end - begin != math.prod(shape) * itemsize:
            raise ValueError(f"{file}: tensor {name!r} has {end - begin} bytes, its {info['dtype']} shape "
                             f"{shape} needs {math.prod(shape) * itemsize}")
    return header


def check_checkpoint(path, args: ModelArgs) -> dict[Path, dict]:
    """The safetensors headers of a checkpoint folder checked against the model its config describes, without
    reading the data: every weight present once, no other tensor, each of its shape and of a float dtype.
    Returns {file: header}. Cheap (headers only): train.py calls it before anything is written."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in Transformer(args).state_dict().items()}
    if args.tie_word_embeddings:
        expected.pop("lm_head.weight")
    headers, seen = {}, {}
    for file in _checkpoint_files(Path(path)):
        headers[file] = header = read_safetensors_header(file)
        for name, info in header.items():
            # Old checkpoints store the RoPE table; a tied head is the embedding (HF ties it too).
            if name == "__metadata__" or name.endswith("rotary_emb.inv_freq") or \
                    name == "lm_head.weight" and args.tie_word_embeddings:
                continue
            if name not in expected:
                raise ValueError(f"{file}: unexpected tensor {name!r} (not a weight of this config)")
            if name in seen:
                raise ValueError(f"{file}: tensor {name!r} is also in {seen[name]}")
            if tuple(info["shape"]) != expected[name]:
                raise ValueError(f"{file}: tensor {name!r} has shape {tuple(info['shape'])}, config implies "
                                 f"{expected[name]}")
            if info["dtype"] not in FLOAT_DTYPES:
                raise ValueError(f"{file}: tensor {name!r} is {info['dtype']}, not a float weight "
                                 f"({', '.join(FLOAT_DTYPES)})")
            seen[name] = file
    missing = [name for name in expected if name not in seen]
    if missing:
        raise ValueError(f"{path}: tensor {missing[0]!r} missing from the checkpoint ({len(missing)} missing)")
    return headers
