"""The network: a LLaMA-family transformer (LLaMA 1/2/3, Mistral, Qwen2/2.5, Qwen3, OLMo 2) in plain PyTorch.

    from hf import from_pretrained                  # reading and writing Hugging Face folders is hf.py's job
    model = from_pretrained("Llama-2-7b-hf", rope_scaling={"type": "linear", "factor": 4.0})
    logits = model(tokens, positions)              # positions: PoSE's skipped ids (Eq. 3-5), default arange
    python -m pytest tests/test_model.py -x -q     # against a float64 forward written in the test

Read top to bottom: ModelArgs (the shape; hf.args_from_config fills it from config.json), RMSNorm, the KV cache,
Attention (RoPE at the position ids it is given, whatever they are: Eq. 2 makes scores depend on m - n only),
the SwiGLU FeedForward, the pre-norm block, and Transformer (hidden, forward, a chunked loss); greedy
decoding with the cache is generate.py's.
The rope itself (Eq. 1 and the interpolations of §3.1) is rope.py's. This file reads and writes no file.

Names. Modules carry Hugging Face's names (model.layers.{i}.self_attn.q_proj, ...), so state_dict() keys are the
checkpoint keys; classes keep Meta's (ModelArgs, RMSNorm, Attention, FeedForward). q/k rows are in HF's
rotate-half layout (rope.py says why that equals Eq. 1). The families differ in a few ModelArgs switches only
(qkv_bias, o_bias, qk_norm, post_norm, norm_cast_last: hf.py's FAMILIES table).
"""
import dataclasses
import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.utils.checkpoint import checkpoint

from rope import RotaryEmbedding, apply_rotary_emb, rope_parameters


@dataclass
class ModelArgs:
    """The network's shape and the families' switches (hf.args_from_config reads them from config.json)."""
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
    qk_norm: str | None = None   # RMSNorm on q and k before RoPE: "head" (Qwen3) or "proj" (OLMo 2); see hf.FAMILIES
    post_norm: bool = False      # OLMo 2: norm each sub-layer's output, then add the residual (no input_layernorm)
    norm_cast_last: bool = False  # OLMo 2's RMSNorm: weight * x in float32, then cast back
    sliding_window: int | None = None  # Mistral v0.1: a token attends to the last W tokens only (Attention)
    bos_token_id: int | None = 1
    eos_token_id: int | list | None = 2


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

    The rule is "prefill, then decode 1 at a time": a decoded token attends to every stored key with no mask, so
    the order of the slots does not matter, and W slots hold exactly its window i - W < j <= i. A prefill may also
    continue a cached prefix (generate.PromptCache, without a window): its tokens attend to the prefix and
    causally to each other (continued_attention).
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


def continued_attention(q, k, v, cached: int):
    """Causal attention of T new tokens after `cached` ones: q [B, H, T, D], k / v [B, Hkv, cached + T, D] (GQA
    when Hkv < H). Query i sees every cached key and the new keys up to its own: SDPA's is_causal would align the
    mask top-left (query i sees keys 0..i), so the two parts run as two passes merged by their log-sum-exps, the
    way flash attention merges its blocks: cached keys unmasked, new keys causal. On CPU the flash kernel returns the
    log-sum-exp; elsewhere one SDPA call with the bottom-right mask."""
    T, groups = q.shape[2], q.shape[1] // k.shape[1]
    if q.device.type != "cpu":
        mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=q.device).tril(k.shape[2] - T)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=groups > 1)
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    expand = lambda x: x.repeat_interleave(groups, dim=1) if groups > 1 else x  # noqa: E731  (no GQA in the op)
    old, old_lse = flash(q, expand(k[:, :, :cached]), expand(v[:, :, :cached]))
    new, new_lse = flash(q, expand(k[:, :, cached:]), expand(v[:, :, cached:]), is_causal=True)
    top = torch.maximum(old_lse, new_lse)  # [B, H, T], float32 or wider: softmax over both = the sums reweighted
    w_old, w_new = (old_lse - top).exp()[..., None], (new_lse - top).exp()[..., None]
    wide = torch.promote_types(q.dtype, torch.float32)
    return ((old.to(wide) * w_old + new.to(wide) * w_new) / (w_old + w_new)).to(q.dtype)


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
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)  # contiguous [B, H(kv), T, D]
        v = v.contiguous() if T > 1 else v  # as q and k: SDPA's CPU kernels read contiguous rows faster
        cached = 0 if cache is None else cache.len
        if cache is not None:
            if cached and T > 1 and self.window is not None:  # the rolling buffer may have lost the prefix
                raise ValueError(f"{T} new tokens after {cached} cached under a sliding window: prefill once, then "
                                 "decode 1 at a time")
            stored_k, stored_v = cache.update(k, v, self.window)  # [B, Hkv, S, D], S = min(tokens so far, W)
            if T == 1:  # decoding: exactly the keys in its window; a prefill attends over its own k, v below
                k, v = stored_k, stored_v
        if cached and T > 1:  # a prompt continuing a cached prefix (generate.PromptCache)
            out = continued_attention(q, stored_k, stored_v, cached)  # [B, H, T, D]
        elif self.window is not None and T > self.window:
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
        self.source_config: dict | None = None  # the config.json hf.from_pretrained read (save_pretrained's base)
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
        """Logits [B, T, V] float32. For long T use loss() (no [T, V] tensor) or generate.generate()."""
        logits = self.lm_head(self.hidden(tokens, positions))
        return logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32; a float64 model stays

    def loss(self, tokens, targets, positions=None, chunk_size: int = 4096):
        """(sum of next-token NLL float32, number of scored targets); targets == -100 are ignored.

        Logits are formed chunk_size rows at a time and, under autograd, recomputed in backward
        (checkpoint), so no [B*T, V] tensor ever exists: 128k tokens x 32k vocab in fp32 would be 16 GB.
        The last chunk is kept instead: backward starts with it, so its saved logits cost no more memory
        than recomputing them would (one chunk and its gradient either way), and a sequence that fits in
        one chunk (every short training step) pays no recompute at all. Without autograd (evaluation) the rows
        whose target is ignored get no logits at all: a perplexity window past the first scores its last stride
        tokens only, and lm_head with its log-softmax was ~1/5 of a 2k window's work on SmolLM2-135M.
        """
        h = self.hidden(tokens, positions).flatten(0, 1)  # [B*T, dim]
        targets = targets.flatten().to(h.device)          # [B*T]
        if not torch.is_grad_enabled():  # under autograd a gather and a host sync each step, for padding only
            scored = (targets != -100).nonzero().squeeze(1)
            h, targets = h[scored], targets[scored]
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
