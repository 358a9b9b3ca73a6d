"""model.py against a plain float64 LLaMA written here (Meta's layout, the paper's Eq. 1), plus checkpoint I/O.

    python -m pytest tests/test_model.py -x -q
"""
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

import hf
import model as model_py
from generate import PromptCache, generate
from model import Transformer
from hf import args_from_config, config_from_args, from_preset, from_pretrained, load_config, save_pretrained
from test_rope import ref_inv_freq

DIM, H, HKV, D, FFN, V, LAYERS = 64, 4, 2, 16, 96, 101, 2  # GQA: 2 query heads per K/V head
POSE_POSITIONS = torch.tensor([list(range(16)) + list(range(5000, 5016)),       # two chunks, skip u_1 ~ 5000
                               list(range(7, 19)) + list(range(3000, 3020))])   # another sample in the batch


def config(**overrides):
    """A minimal config.json: rms_norm_eps, head_dim and rope_theta omitted -> HF defaults (1e-6, 16, 10000)."""
    return {"hidden_size": DIM, "num_hidden_layers": LAYERS, "num_attention_heads": H, "num_key_value_heads": HKV,
            "intermediate_size": FFN, "vocab_size": V, "max_position_embeddings": 64, **overrides}


def meta_weights(tied, seed=0):
    """Random float64 weights in Meta's layout: q/k rows in interleaved pairs (2j, 2j+1) per head."""
    g = torch.Generator().manual_seed(seed)

    def mat(rows, cols):
        return torch.randn(rows, cols, generator=g, dtype=torch.float64) / math.sqrt(cols)

    def norm():
        return 1 + 0.2 * torch.randn(DIM, generator=g, dtype=torch.float64)

    W = {"emb": torch.randn(V, DIM, generator=g, dtype=torch.float64), "norm": norm(), "layers": []}
    for _ in range(LAYERS):
        W["layers"].append({"wq": mat(H * D, DIM), "wk": mat(HKV * D, DIM), "wv": mat(HKV * D, DIM),
                            "wo": mat(DIM, H * D), "w1": mat(FFN, DIM), "w3": mat(FFN, DIM), "w2": mat(DIM, FFN),
                            "attn_norm": norm(), "ffn_norm": norm()})
    W["out"] = W["emb"] if tied else mat(V, DIM)
    return W


def reference_logits(W, tokens, positions, base=10000.0, eps=1e-6, inv_freq=None, scale=1.0, angles=None,
                     window=None):
    """Plain float64 LLaMA: explicit causal mask, softmax, K/V head repeat; RoPE as the paper's Eq. (1).
    A scaled rope: inv_freq = its θ'_j, scale = its cos/sin multiplier (YaRN's sqrt(1/t)); angles [B, T, D/2]
    gives each token its own angles instead (dynamic NTK under a KV cache). window: Mistral's sliding window,
    a band of that many keys per query (itself included), by token index."""
    B, T = tokens.shape
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # θ_j = base^(-2j/d)
    if inv_freq is not None:
        theta = torch.tensor(inv_freq, dtype=torch.float64)
    angle = positions.double()[:, :, None, None] * theta               # [B, T, 1, D/2]; float positions allowed
    if angles is not None:
        angle = angles.double()[:, :, None, :]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale

    def rope(x):  # x [B, T, heads, D]: rotate pair (x_2j, x_2j+1) by m·θ_j
        even, odd = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2], out[..., 1::2] = even * cos - odd * sin, even * sin + odd * cos
        return out

    def rmsnorm(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]  # query index t, key index s
    hidden = s > t  # causal: a later key is hidden
    if window is not None:
        hidden = hidden | (t - s >= window)  # ... and so is a key `window` or more tokens back
    x = W["emb"][tokens]
    for L in W["layers"]:
        a = rmsnorm(x, L["attn_norm"])
        q = rope((a @ L["wq"].T).view(B, T, H, D))
        k = rope((a @ L["wk"].T).view(B, T, HKV, D))
        v = (a @ L["wv"].T).view(B, T, HKV, D)
        group = [h // (H // HKV) for h in range(H)]  # query head h reads K/V head h // (H / Hkv)
        k, v = k[:, :, group], v[:, :, group]
        scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
        scores = scores.masked_fill(hidden, float("-inf"))
        p = torch.exp(scores - scores.max(-1, keepdim=True).values)
        p = p / p.sum(-1, keepdim=True)
        x = x + torch.einsum("bhts,bshd->bthd", p, v).reshape(B, T, H * D) @ L["wo"].T
        m = rmsnorm(x, L["ffn_norm"])
        gate = m @ L["w1"].T
        x = x + (gate / (1 + torch.exp(-gate)) * (m @ L["w3"].T)) @ L["w2"].T
    return rmsnorm(x, W["norm"]) @ W["out"].T


def to_hf(w, heads):
    """HF's conversion-script permutation: per head, Meta rows 2j, 2j+1 -> HF rows j, j + D/2."""
    return w.view(heads, D // 2, 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


def write_checkpoint(path, W, cfg, tied, dtype=torch.float32, extra=None):
    """A HF folder written independently of model.py: config.json + model.safetensors with permuted q/k."""
    path.mkdir(parents=True, exist_ok=True)
    sd = {"model.embed_tokens.weight": W["emb"], "model.norm.weight": W["norm"]}
    for i, L in enumerate(W["layers"]):
        p = f"model.layers.{i}."
        sd.update({p + "self_attn.q_proj.weight": to_hf(L["wq"], H), p + "self_attn.k_proj.weight": to_hf(L["wk"], HKV),
                   p + "self_attn.v_proj.weight": L["wv"], p + "self_attn.o_proj.weight": L["wo"],
                   p + "mlp.gate_proj.weight": L["w1"], p + "mlp.up_proj.weight": L["w3"],
                   p + "mlp.down_proj.weight": L["w2"], p + "input_layernorm.weight": L["attn_norm"],
                   p + "post_attention_layernorm.weight": L["ffn_norm"]})
    if not tied:
        sd["lm_head.weight"] = W["out"]
    sd = {k: v.to(dtype).contiguous() for k, v in {**sd, **(extra or {})}.items()}
    save_file(sd, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": tied}))
    return path


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def tokens_for(positions, seed=1):
    return torch.randint(0, V, positions.shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tied_ckpt(tmp_path_factory):
    W = meta_weights(tied=True)
    old_rope_table = {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(D // 2)}  # must be ignored
    return W, write_checkpoint(tmp_path_factory.mktemp("tied"), W, config(), tied=True, extra=old_rope_table)


# ---------------------------------------------------------------- numerics

@pytest.mark.parametrize("tied", [True, False])
def test_logits_match_float64_reference_for_gqa_and_pose_positions_that_jump_by_thousands(tmp_path, tied):
    W = meta_weights(tied)
    model = from_pretrained(write_checkpoint(tmp_path, W, config(), tied), dtype=torch.float32)
    assert model.args.norm_eps == 1e-6 and model.args.head_dim == D and model.args.rope["rope_theta"] == 10000.0
    tokens = tokens_for(POSE_POSITIONS)
    assert rel_err(model(tokens, POSE_POSITIONS), reference_logits(W, tokens, POSE_POSITIONS)) < 1e-4
    contiguous = torch.arange(32).expand(2, 32)
    assert rel_err(model(tokens), reference_logits(W, tokens, contiguous)) < 1e-4  # positions default to arange


def test_linear_rope_override_equals_reference_at_positions_divided_by_alpha(tied_ckpt):
    W, path = tied_ckpt
    model = from_pretrained(path, dtype=torch.float32, rope_scaling={"type": "linear", "factor": 4.0})
    assert model.args.rope["rope_type"] == "linear" and model.args.max_position_embeddings == 4 * 64
    tokens = tokens_for(POSE_POSITIONS)
    assert rel_err(model(tokens, POSE_POSITIONS), reference_logits(W, tokens, POSE_POSITIONS / 4.0)) < 1e-4


def test_generate_stops_once_every_row_has_produced_a_stop_id(tied_ckpt):
    model = from_pretrained(tied_ckpt[1], dtype=torch.float32)
    prompt = tokens_for(POSE_POSITIONS)
    full = generate(model, prompt, 12)  # [2, 12] without stopping
    assert full.shape == (2, 12)
    first, second = full[0].tolist(), full[1].tolist()
    stop = first[3]  # a token row 0 produces at step 3
    assert torch.equal(generate(model, prompt[:1], 12, stop_ids=[stop]), full[:1, :first.index(stop) + 1])
    # a batch runs until its last row has stopped; rows that stopped earlier keep their (unused) greedy tokens
    both = max(first.index(stop), second.index(stop) if stop in second else 11) + 1
    assert torch.equal(generate(model, prompt, 12, stop_ids=[stop]), full[:, :both])
    assert torch.equal(generate(model, prompt, 12, stop_ids=[]), full)


SCALED = {  # rope_scaling overrides of the tied checkpoint (L_c = 64, d = 16): every band of each type in use
    "ntk": {"type": "ntk", "factor": 4.0},
    "yarn": {"type": "yarn", "factor": 4.0},                  # ramp over pairs 0..3: r_j = 0, 1/3, 2/3, 1, ...
    "yarn-revised": {"type": "yarn-revised", "factor": 4.0},
    "dynamic": {"type": "dynamic", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},  # 3 bands
}


def scaled_reference(rope_type, seq_len=None):
    """θ'_j and the cos/sin multiplier from each type's formula (tests/test_rope.py writes them out)."""
    factor = SCALED[rope_type]["factor"]
    return ref_inv_freq(rope_type, d=D, base=10000.0, factor=factor, window=64, seq_len=seq_len)


@pytest.mark.parametrize("rope_type", SCALED)
def test_every_scaled_rope_forward_matches_the_float64_reference_at_pose_positions(tied_ckpt, rope_type):
    W, path = tied_ckpt
    model = from_pretrained(path, dtype=torch.float32, rope_scaling=SCALED[rope_type])
    assert model.args.rope["rope_type"] == rope_type
    tokens = tokens_for(POSE_POSITIONS)
    inv_freq, scale = scaled_reference(rope_type, seq_len=int(POSE_POSITIONS.max()) + 1)  # dynamic: L = 5,016
    want = reference_logits(W, tokens, POSE_POSITIONS, inv_freq=inv_freq, scale=scale)
    assert rel_err(model(tokens, POSE_POSITIONS), want) < 1e-4
    plain = reference_logits(W, tokens, POSE_POSITIONS)
    assert rel_err(plain, want) > 1e-2  # the scaling matters at these positions: a no-op rope would fail


@pytest.mark.parametrize("rope_type", SCALED)
def test_every_scaled_rope_generates_what_the_float64_reference_decodes_greedily(tied_ckpt, rope_type):
    """generate() with its KV cache against greedy decoding by the reference. Dynamic NTK recomputes the base per
    call from the largest position it sees: the prompt's keys keep the prefill's angles (max prompt position + 1)
    and each decoded token gets the angles of its own call (its position + 1), so the reference gives every
    token its own angles; causal attention makes that exactly what the cache holds."""
    W, path = tied_ckpt
    model = from_pretrained(path, dtype=torch.float32, rope_scaling=SCALED[rope_type])
    prompt, positions = tokens_for(POSE_POSITIONS)[:1], POSE_POSITIONS[:1]
    new = generate(model, prompt, 5, positions)
    seq, pos = prompt, positions
    call_len = [int(positions.max()) + 1] * positions.shape[1]  # the seq_len each token's call saw
    for _ in range(5):
        if rope_type == "dynamic":
            angles = torch.stack([p * torch.tensor(scaled_reference(rope_type, n)[0], dtype=torch.float64)
                                  for p, n in zip(pos[0].tolist(), call_len)])[None]
            logits = reference_logits(W, seq, pos, angles=angles)[0, -1]
        else:
            inv_freq, scale = scaled_reference(rope_type)
            logits = reference_logits(W, seq, pos, inv_freq=inv_freq, scale=scale)[0, -1]
        top2 = logits.topk(2).values
        assert top2[0] - top2[1] > 1e-3  # the greedy choice is not a float32 coin toss
        seq, pos = torch.cat([seq, logits.argmax().view(1, 1)], 1), torch.cat([pos, pos[:, -1:] + 1], 1)
        call_len.append(int(pos[0, -1]) + 1)
    assert new.tolist() == seq[:, prompt.shape[1]:].tolist()


@pytest.mark.parametrize("rope_type", [None, *SCALED])
def test_a_model_built_on_the_meta_device_holds_real_rope_tables(rope_type):
    """The rope tables are plain CPU float64 tensors whatever the default device (rope.RotaryEmbedding): a model
    built under torch.device("meta") and materialised with to_empty, as hf.from_pretrained, distributed.wrap_model,
    checkpoints.load_weights and gather_plain build theirs, computes what a CPU-built one does with no set_rope."""
    args = args_from_config(config(rope_scaling=SCALED.get(rope_type)))
    torch.manual_seed(0)
    cpu = Transformer(args)
    with torch.device("meta"):
        meta = Transformer(args)
    meta.to_empty(device="cpu")
    meta.load_state_dict(cpu.state_dict())
    assert torch.equal(meta.rotary_emb.inv_freq, cpu.rotary_emb.inv_freq)
    tokens = tokens_for(POSE_POSITIONS)
    assert torch.equal(meta(tokens, POSE_POSITIONS), cpu(tokens, POSE_POSITIONS))


def test_kv_cache_decoding_equals_repeated_full_forwards(tied_ckpt):
    model = from_pretrained(tied_ckpt[1], dtype=torch.float32)
    prompt, positions = tokens_for(POSE_POSITIONS)[:1], POSE_POSITIONS[:1]
    new = generate(model, prompt, 6, positions)
    seq, pos = prompt, positions
    for _ in range(6):  # no cache: the whole sequence again each step, next position = last + 1
        logits = model(seq, pos)
        seq, pos = torch.cat([seq, logits[:, -1:].argmax(-1)], 1), torch.cat([pos, pos[:, -1:] + 1], 1)
    assert torch.equal(new, seq[:, prompt.shape[1]:])
    cache = [model_py.KVCache(seq.shape[1]) for _ in range(LAYERS)]  # and the cached hidden states themselves
    model.hidden(seq[:, :-1], pos[:, :-1], cache)
    last = model.hidden(seq[:, -1:], pos[:, -1:], cache)
    assert rel_err(last, model.hidden(seq, pos)[:, -1:]) < 1e-5


def test_loss_without_autograd_forms_logits_for_the_scored_rows_only_and_equals_plain_cross_entropy(tied_ckpt):
    """Evaluation (no autograd): lm_head sees only the rows whose target counts, as in a perplexity window past
    the first, which scores its last stride tokens; the sum is plain float64 cross-entropy over the full logits."""
    model = from_pretrained(tied_ckpt[1], dtype=torch.float64)
    tokens, targets = tokens_for(POSE_POSITIONS), tokens_for(POSE_POSITIONS, seed=2)
    targets[0, :20] = targets[1, :23] = -100  # 12 + 9 scored rows
    rows = []
    hook = model.lm_head.register_forward_hook(lambda module, inputs, out: rows.append(inputs[0].shape[0]))
    with torch.inference_mode():
        sum_nll, n = model.loss(tokens, targets, POSE_POSITIONS, chunk_size=8)
        logits = model(tokens, POSE_POSITIONS)  # [B, T, V], the full forward
    hook.remove()
    assert rows[:3] == [8, 8, 5] and n.item() == 21  # three chunks of the 21 scored rows (then the full forward)
    plain = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    assert abs(sum_nll.item() - plain.item()) < 1e-10 * plain.item()
    with torch.inference_mode():  # nothing scored: no logits, a zero sum
        rows.clear()
        hook = model.lm_head.register_forward_hook(lambda module, inputs, out: rows.append(inputs[0].shape[0]))
        assert model.loss(tokens, torch.full_like(targets, -100), POSE_POSITIONS)[0].item() == 0.0 and rows == []
        hook.remove()


def test_chunked_loss_and_its_gradient_equal_plain_cross_entropy_in_float64(tied_ckpt):
    model = from_pretrained(tied_ckpt[1], dtype=torch.float64)
    tokens = tokens_for(POSE_POSITIONS)
    targets = tokens_for(POSE_POSITIONS, seed=2)
    targets[0, :5] = targets[1, -3:] = -100  # ignored
    rows = []  # rows of every lm_head call: never the whole [B*T, V]
    hook = model.lm_head.register_forward_hook(lambda module, inputs, out: rows.append(inputs[0].shape[0]))
    sum_nll, n = model.loss(tokens, targets, POSE_POSITIONS, chunk_size=7)  # 64 rows: 10 chunks, last partial
    sum_nll.backward()
    hook.remove()
    assert max(rows) == 7 and sum(rows) == 64 + 63  # forward + the recompute in backward of all but the last
    chunked_grad = model.lm_head.weight.grad.clone()
    model.zero_grad()
    logits = model.hidden(tokens, POSE_POSITIONS).flatten(0, 1) @ model.lm_head.weight.T  # [B*T, V] in float64
    plain = F.cross_entropy(logits, targets.flatten(), ignore_index=-100, reduction="sum")
    plain.backward()
    assert n.item() == 64 - 8 and not n.is_floating_point()
    assert sum_nll.dtype == torch.float64 and abs(sum_nll.item() - plain.item()) < 1e-10 * plain.item()
    assert torch.allclose(chunked_grad, model.lm_head.weight.grad, rtol=1e-10, atol=1e-12)
    rows.clear()  # a sequence that fits in one chunk: lm_head runs once, nothing is recomputed
    hook = model.lm_head.register_forward_hook(lambda module, inputs, out: rows.append(inputs[0].shape[0]))
    model.zero_grad()
    one_chunk, _ = model.loss(tokens, targets, POSE_POSITIONS)
    one_chunk.backward()
    hook.remove()
    assert rows == [64] and abs(one_chunk.item() - plain.item()) < 1e-10 * plain.item()
    assert torch.allclose(chunked_grad, model.lm_head.weight.grad, rtol=1e-10, atol=1e-12)


def test_compiled_regions_give_the_float64_reference_loss_and_the_eager_gradients_with_one_graph_for_all_blocks(
        tmp_path):
    """--compile (Transformer.compile_regions: torch.compile per block and per loss chunk) changes no number
    beyond float32 rounding, the blocks share one compiled graph, and KV-cache decoding (kept eager) still works."""
    import torch._dynamo
    W = meta_weights(tied=False)
    path = write_checkpoint(tmp_path, W, config(), tied=False)
    eager, compiled = (from_pretrained(path, dtype=torch.float32) for _ in range(2))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled.compile_regions()
    tokens, targets = tokens_for(POSE_POSITIONS), tokens_for(POSE_POSITIONS, seed=2)
    logits = reference_logits(W, tokens, POSE_POSITIONS)  # float64, written plainly above
    reference = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
    losses = []
    for model in (eager, compiled):
        sum_nll, _ = model.loss(tokens, targets, POSE_POSITIONS, chunk_size=32)  # 64 rows: one checkpointed + last
        sum_nll.backward()
        losses.append(sum_nll.item())
    assert abs(losses[1] - reference) < 1e-5 * reference and abs(losses[0] - reference) < 1e-5 * reference
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        assert rel_err(b.grad, a.grad) < 1e-5, name
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # one for both blocks, one for the loss chunk
    prompt, positions = tokens[:1], POSE_POSITIONS[:1]
    assert torch.equal(generate(compiled, prompt, 4, positions), generate(eager, prompt, 4, positions))


# ---------------------------------------------------------------- save / load

def test_save_load_round_trip_is_bit_exact_with_biases_and_hf_metadata(tmp_path):
    model = from_preset("tiny", seed=0, num_hidden_layers=1, vocab_size=64,
                                    attention_bias=True, mlp_bias=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_()  # init gives zeros / ones: make a mix-up of tensors visible
    save_pretrained(model, tmp_path / "out")
    loaded = from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert loaded.args == model.args
    assert model.state_dict().keys() == loaded.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    cfg = load_config(tmp_path / "out")
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert cfg["torch_dtype"] == "float32" and cfg["attention_bias"] and cfg["max_position_embeddings"] == 256
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left behind


def test_sharded_save_writes_an_index_and_loads_bit_exact_into_an_existing_folder(tmp_path, tied_ckpt):
    model = from_pretrained(tied_ckpt[1], dtype=torch.float32)
    out = tmp_path / "out"
    save_pretrained(model, out, max_shard_size=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 3 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert "lm_head.weight" not in index["weight_map"]  # tied: HF omits it
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in model.model.state_dict().values())
    loaded = from_pretrained(out, dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    (out / "tokenizer.model").write_bytes(b"keep me")
    save_pretrained(model, out)  # unsharded over the sharded save: old shards go, other files stay
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.model"]


def test_bf16_load_holds_every_weight_rounded_once_and_stays_close_to_fp32(tied_ckpt):
    fp32 = from_pretrained(tied_ckpt[1], dtype=torch.float32)
    bf16 = from_pretrained(tied_ckpt[1])  # default dtype
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert all(torch.equal(a.bfloat16(), b) for a, b in zip(fp32.state_dict().values(), bf16.state_dict().values()))
    tokens = tokens_for(POSE_POSITIONS)
    assert rel_err(bf16(tokens, POSE_POSITIONS), fp32(tokens, POSE_POSITIONS)) < 5e-2


# ---------------------------------------------------------------- configs

def test_both_rope_conventions_and_hf_defaults_give_the_same_args():
    old = args_from_config(config(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0}))
    new = args_from_config(config(rope_parameters={"rope_type": "linear", "rope_theta": 5e5, "factor": 2.0}))
    assert old == new and old.rope["factor"] == 2.0 and old.rope["rope_theta"] == 5e5
    bare = args_from_config({"hidden_size": 64, "num_attention_heads": 4})
    assert (bare.n_kv_heads, bare.head_dim, bare.norm_eps, bare.rope["rope_theta"]) == (4, 16, 1e-6, 10000.0)
    assert (bare.n_layers, bare.hidden_dim, bare.vocab_size, bare.max_position_embeddings) == (32, 11008, 32000, 2048)
    for rope in ({"type": "linear", "factor": 4.0}, {"rope_type": "yarn", "factor": 8.0,
                                                     "original_max_position_embeddings": 64}):
        args = args_from_config(config(rope_scaling=rope))
        assert args_from_config(config_from_args(args)) == args  # the export reads back as the same model


def test_ntk_exports_as_raised_rope_theta_and_sliding_window_as_mistral():
    ntk = args_from_config(config(rope_scaling={"type": "ntk", "factor": 4.0}))
    exported = config_from_args(ntk, torch.bfloat16)
    assert "rope_scaling" not in exported and exported["torch_dtype"] == "bfloat16"
    assert exported["rope_theta"] == pytest.approx(10000 * 4 ** (D / (D - 2)))  # PoSE §3.1
    mistral = config_from_args(args_from_config(config(model_type="mistral", sliding_window=24)))
    assert mistral["model_type"] == "mistral" and mistral["sliding_window"] == 24


def test_mistral_without_a_sliding_window_is_plain_causal_and_gelu_is_refused(tmp_path):
    W = meta_weights(tied=False)
    v02 = config(model_type="mistral", sliding_window=None, rope_theta=1e6)  # Mistral v0.2 / v0.3
    model = from_pretrained(write_checkpoint(tmp_path, W, v02, tied=False), dtype=torch.float32)
    assert model.args.sliding_window is None and model.args.rope["rope_theta"] == 1e6
    tokens = tokens_for(POSE_POSITIONS)
    assert rel_err(model(tokens, POSE_POSITIONS), reference_logits(W, tokens, POSE_POSITIONS, base=1e6)) < 1e-4
    assert args_from_config(config(sliding_window=24, use_sliding_window=False)).sliding_window is None


def test_export_config_keeps_the_checkpoints_own_keys_and_changes_only_rope_context_and_dtype():
    """Issue 16: the export starts from the input's config.json (pad_token_id, use_cache, ... survive)."""
    from rope import rope_parameters
    own = {"pad_token_id": 0, "initializer_range": 0.02, "use_cache": True, "pretraining_tp": 1,
           "transformers_version": "4.31.0", "architectures": ["LlamaForCausalLM"], "model_type": "llama",
           "some_future_key": [1, 2]}
    for base in (config(**own, rope_theta=5e5, torch_dtype="bfloat16", rope_scaling=None),  # transformers 4 style
                 config(**own, dtype="bfloat16", rope_parameters={"rope_type": "default", "rope_theta": 5e5})):  # 5
        args = args_from_config(base)
        extended = dataclasses.replace(args, max_position_embeddings=256, rope=rope_parameters(
            {"rope_theta": 5e5, "rope_scaling": {"rope_type": "linear", "factor": 4.0,
                                                 "original_max_position_embeddings": 64}}))
        exported = config_from_args(extended, torch.float32, base)
        changed = {"max_position_embeddings", "torch_dtype", "dtype", "rope_theta", "rope_scaling", "rope_parameters"}
        assert {k: v for k, v in exported.items() if k not in changed | {"original_max_position_embeddings"}} == \
            {k: v for k, v in base.items() if k not in changed}
        assert exported["max_position_embeddings"] == 256 and exported["original_max_position_embeddings"] == 64
        dtype_key = "torch_dtype" if "torch_dtype" in base else "dtype"
        assert exported[dtype_key] == "float32" and ({"torch_dtype", "dtype"} - {dtype_key}).isdisjoint(exported)
        assert exported["rope_scaling"]["factor"] == exported["rope_parameters"]["factor"] == 4.0
        assert exported["rope_theta"] == exported["rope_parameters"]["rope_theta"] == 5e5
        assert args_from_config(exported) == extended  # and it reads back as the trained model
    with pytest.raises(ValueError, match="another model"):
        config_from_args(extended, torch.float32, config(hidden_size=2 * DIM))
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        args_from_config(config(hidden_act="gelu"))


# ---------------------------------------------------------------- bad input

def _set_header_length(file, n):
    data = bytearray(file.read_bytes())
    data[:8] = n.to_bytes(8, "little")
    file.write_bytes(bytes(data))


def _garble_header(file):
    data = bytearray(file.read_bytes())
    data[8:16] = b"not json"
    file.write_bytes(bytes(data))


def _truncate(file, nbytes):
    file.write_bytes(file.read_bytes()[:-nbytes])


def _rewrite(path, drop=(), add=None):
    with safe_open(path / "model.safetensors", "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys() if k not in drop}
    save_file({**sd, **(add or {})}, path / "model.safetensors", metadata={"format": "pt"})


BAD_INPUTS = {  # case -> (break the folder, error type, words the one-line message must contain)
    "missing config.json": (lambda p: (p / "config.json").unlink(), FileNotFoundError, ["config.json"]),
    "missing weights": (lambda p: (p / "model.safetensors").unlink(), FileNotFoundError, ["model.safetensors"]),
    "bad header length": (lambda p: _set_header_length(p / "model.safetensors", 2**40),
                          ValueError, ["model.safetensors", "header length"]),
    "header not JSON": (lambda p: _garble_header(p / "model.safetensors"), ValueError, ["model.safetensors", "JSON"]),
    "truncated data": (lambda p: _truncate(p / "model.safetensors", 64),
                       ValueError, ["model.safetensors", "data_offsets", "past the end"]),
    "missing tensor": (lambda p: _rewrite(p, drop=["model.norm.weight"]),
                       ValueError, ["'model.norm.weight'", "missing"]),
    "unexpected tensor": (lambda p: _rewrite(p, add={"model.layers.0.mlp.extra": torch.ones(3)}), ValueError,
                          ["model.safetensors", "'model.layers.0.mlp.extra'", "unexpected"]),
    "shape mismatch": (lambda p: _rewrite(p, add={"model.norm.weight": torch.ones(DIM + 1)}),
                       ValueError, ["model.safetensors", "'model.norm.weight'", "(65,)", "(64,)"]),
    "unknown rope type": (lambda p: (p / "config.json").write_text(json.dumps(config(
        rope_scaling={"type": "banana", "factor": 2.0}))), ValueError, ["config.json", "banana"]),
    "config not JSON": (lambda p: (p / "config.json").write_text("{"), ValueError, ["config.json", "JSON"]),
    "index names a lost shard": (lambda p: (p / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}})),
        FileNotFoundError, ["model-00002-of-00002.safetensors"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_each_bad_checkpoint_raises_one_line_error_naming_the_file_tensor_or_key(tmp_path, case):
    path = write_checkpoint(tmp_path / "ckpt", meta_weights(tied=True), config(), tied=True)
    breaks, error, words = BAD_INPUTS[case]
    breaks(path)
    with pytest.raises(error) as info:
        from_pretrained(path, dtype=torch.float32)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_failed_save_leaves_nothing_written_and_an_existing_folder_untouched(tmp_path, monkeypatch):
    model = from_preset("tiny", seed=0, num_hidden_layers=1, vocab_size=64)

    def disk_full(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(hf, "save_file", disk_full)
    with pytest.raises(OSError):
        save_pretrained(model, tmp_path / "new", max_shard_size=50_000)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.safetensors").write_bytes(b"previous weights")
    with pytest.raises(OSError):
        save_pretrained(model, tmp_path / "old")
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert (tmp_path / "old" / "model.safetensors").read_bytes() == b"previous weights"



# ---------------------------------------------------------------- prompts that share a prefix (PromptCache)

@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("cached, new", [(1, 7), (30, 1), (40, 25), (5, 60)])
def test_continued_attention_equals_causal_attention_over_the_whole_sequence(cached, new, dtype, tol):
    """T new queries after `cached` positions, GQA: their rows of causal attention over all cached + T keys,
    written as a float64 softmax over the allowed keys (query i sees keys 0 .. cached + i)."""
    g = torch.Generator().manual_seed(cached * 100 + new)
    q = torch.randn(2, 6, new, 16, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 3, cached + new, 16, generator=g, dtype=torch.float64) for _ in range(2))
    scores = q @ k.repeat_interleave(2, 1).transpose(-1, -2) / 4.0  # [2, 6, new, cached + new]
    allowed = torch.arange(cached + new)[None] <= cached + torch.arange(new)[:, None]
    want = scores.masked_fill(~allowed, -math.inf).softmax(-1) @ v.repeat_interleave(2, 1)
    got = model_py.continued_attention(q.to(dtype), k.to(dtype), v.to(dtype), cached)
    assert got.dtype == dtype and (got.double() - want).abs().max() < tol


def test_prompts_sharing_a_prefix_decode_and_score_as_if_each_were_read_whole(tied_ckpt):
    """generate(prompts=PromptCache): each prompt is prefilled from where it parts from the one before (the
    passkey's prompts part at their keys), and its greedy tokens and teacher-forced log-probability equal those of
    the prompt read whole, in float64 to 1e-10; a prompt equal to the last one re-reads its last token only."""
    model = from_pretrained(tied_ckpt[1], dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    shared = torch.randint(0, V, (40,), generator=g).tolist()
    prompts = [shared + torch.randint(0, V, (n,), generator=g).tolist() for n in (12, 30, 5)]
    prompts.append(shared[:25] + torch.randint(0, V, (15,), generator=g).tolist())  # parts earlier: at 25
    prompts.append(prompts[-1])  # the same prompt again

    def common(a, b):  # leading tokens of b that a also has, at most len(b) - 1
        n = 0
        while n < min(len(a), len(b) - 1) and a[n] == b[n]:
            n += 1
        return n

    cache, fed, last = PromptCache(LAYERS, 100), [], []
    hook = model.model.layers[0].register_forward_hook(lambda m, args, out: fed.append(args[0].shape[1]))
    for ids in prompts:
        answer = torch.randint(0, V, (1, 4), generator=g)
        fed.clear()
        new, logp = generate(model, torch.tensor([ids]), 6, score=answer, prompts=cache)
        assert fed[0] == len(ids) - common(last, ids)  # the prefill: what the last prompt did not share
        alone, logp_alone = generate(model, torch.tensor([ids]), 6, score=answer)
        assert torch.equal(new, alone) and abs(float(logp - logp_alone)) < 1e-10
        last = ids
    hook.remove()
    assert [len(ids) - common(a, ids) for a, ids in zip([[]] + prompts, prompts)] == [52, 30, 5, 15, 1]
