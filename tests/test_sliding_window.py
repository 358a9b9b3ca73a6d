"""Mistral v0.1's sliding window (model.py: Attention, sliding_window_attention, KVCache) against a plain float64
reference with an explicit band mask (reference_logits(..., window=) of tests/test_model.py), and through
training and evaluation: a PoSE run whose window L_c is twice the sliding window, perplexity past the window.

    python -m pytest tests/test_sliding_window.py -x -q
"""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate
import model as model_py
import distributed
import options
import train
from hf import from_pretrained
from generate import generate
from model import KVCache
from test_model import (LAYERS, POSE_POSITIONS, V, config, meta_weights, reference_logits, rel_err, tokens_for,
                        write_checkpoint)

SW = 8  # the sliding window: POSE_POSITIONS' 32 tokens are 4 windows, and each jump of ids lies inside a band


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread per test


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    """A micro Mistral v0.1 (GQA: 4 query heads share 2 K/V heads) with sliding_window SW: (weights, folder)."""
    W = meta_weights(tied=False, seed=3)
    cfg = config(model_type="mistral", sliding_window=SW)
    return W, write_checkpoint(tmp_path_factory.mktemp("mistral"), W, cfg, tied=False)


CASES = {"contiguous": torch.arange(37).expand(2, 37), "pose": POSE_POSITIONS}  # T = 37 and 32, both > SW


@pytest.mark.parametrize("case", CASES)
def test_logits_past_the_window_equal_a_float64_band_mask_reference_and_the_band_is_exactly_sw_wide(mistral, case):
    W, path = mistral
    model = from_pretrained(path, dtype=torch.float64)
    positions = CASES[case]
    tokens = tokens_for(positions)
    logits = model(tokens, positions)
    assert rel_err(logits, reference_logits(W, tokens, positions, window=SW)) < 1e-6
    for other in (SW - 1, SW + 1, None):  # one key fewer, one more (j >= i - W), or plain causal: far off
        assert rel_err(logits, reference_logits(W, tokens, positions, window=other)) > 1e-2


def plain_band_attention(q, k, v, window):
    """float64 attention, K/V heads repeated, with the band i - window < j <= i written out as a mask."""
    k, v = (x.double().repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    T = q.shape[2]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    scores = q.double() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill((j > i) | (i - j >= window), float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_path_computes_the_band_with_gqa_in_the_model_and_across_128_token_tiles(mistral, monkeypatch):
    """The CUDA path run on the CPU: FLEX_DEVICES admits "cpu", and FlexAttention and create_block_mask run
    uncompiled (torch.compile is PyTorch's code generator; its CPU build takes minutes on this box, and
    benchmarks/bench_sliding.py runs it). What is proved: the mask function, the block mask, GQA, the dispatch."""
    calls = []

    def counting_flex(*args, **kwargs):
        calls.append(kwargs["block_mask"])
        return model_py.flex_attention.__wrapped__(*args, **kwargs)

    counting_flex.__wrapped__ = model_py.flex_attention
    monkeypatch.setattr(model_py, "flex_attention", counting_flex)
    monkeypatch.setattr(model_py, "_compiled", lambda fn: fn)
    monkeypatch.setattr(model_py, "FLEX_DEVICES", ("cpu",))
    W, path = mistral
    model = from_pretrained(path, dtype=torch.float32)  # FlexAttention takes fp16/bf16/fp32
    tokens = tokens_for(POSE_POSITIONS)
    with torch.no_grad():  # FlexAttention has no backward on the CPU
        logits = model(tokens, POSE_POSITIONS)
    assert rel_err(logits, reference_logits(W, tokens, POSE_POSITIONS, window=SW)) < 1e-4
    assert len(calls) == LAYERS
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, 300, 16, generator=g) for heads in (4, 2, 2))  # T = 2 tiles + a partial one
    want = plain_band_attention(q, k, v, window=50)
    flex = model_py.sliding_window_attention(q, k, v, 50)
    assert len(calls) == LAYERS + 1 and calls[-1].sparsity() > 0  # tiles outside the band were skipped
    assert (flex.double() - want).abs().max() < 1e-5
    monkeypatch.setattr(model_py, "FLEX_DEVICES", ())  # the CPU's own path: SDPA with a [T, T] band mask
    assert (model_py.sliding_window_attention(q, k, v, 50).double() - want).abs().max() < 1e-5
    assert len(calls) == LAYERS + 1


PROMPTS = {"prompt past the window": torch.arange(13)[None], "decoding across it": torch.arange(3)[None],
           "pose prompt, batch of 2": POSE_POSITIONS}


@pytest.mark.parametrize("case", PROMPTS)
def test_greedy_generate_past_the_window_equals_a_float64_reference_that_recomputes_the_sequence(mistral, case):
    W, path = mistral
    model = from_pretrained(path, dtype=torch.float64)
    positions = PROMPTS[case]
    prompt = tokens_for(positions, seed=5)
    new = generate(model, prompt, 20, positions)

    def greedy(window):  # no cache: the whole sequence again each step, next position = last + 1
        seq, pos = prompt, positions
        for _ in range(20):
            next_token = reference_logits(W, seq, pos, window=window)[:, -1].argmax(-1, keepdim=True)
            seq, pos = torch.cat([seq, next_token], 1), torch.cat([pos, pos[:, -1:] + 1], 1)
        return seq[:, prompt.shape[1]:]

    assert torch.equal(new, greedy(SW))
    assert not torch.equal(new, greedy(None))  # the window changes what is generated


@pytest.mark.parametrize("case", PROMPTS)
def test_generate_scores_forced_tokens_from_the_prefill_and_rewinds_the_rolling_cache_for_the_greedy_answer(
        mistral, case):
    """generate(score=): log p of SW + 3 forced tokens after the prompt, decoded from the prefill's cache (more than
    the window: they overwrite every slot of the rolling buffer, some twice), against the float64 band reference's
    full forward of prompt + forced tokens (within the float32 rounding of rope.py's cos/sin); the greedy tokens
    after the rewind equal a generate() without score."""
    W, path = mistral
    model = from_pretrained(path, dtype=torch.float64)
    positions = PROMPTS[case]
    prompt, forced = tokens_for(positions, seed=5), tokens_for(torch.zeros(positions.shape[0], SW + 3), seed=6)
    new, logprob = generate(model, prompt, 20, positions, score=forced)
    assert torch.equal(new, generate(model, prompt, 20, positions))
    T, m = prompt.shape[1], forced.shape[1]
    seq, pos = torch.cat([prompt, forced], 1), torch.cat([positions, positions[:, -1:] + 1 + torch.arange(m)], 1)
    logp = torch.log_softmax(reference_logits(W, seq, pos, window=SW), dim=-1)  # [B, T + m, V]
    want = sum(logp[:, T - 1 + i].gather(1, forced[:, i:i + 1])[:, 0] for i in range(m))  # [B]
    assert logprob.dtype == torch.float64 and torch.allclose(logprob, want, rtol=1e-7, atol=0)  # fp32 cos/sin


def test_kv_cache_keeps_the_last_window_in_a_rolling_buffer_and_decodes_what_a_full_forward_computes(mistral):
    model = from_pretrained(mistral[1], dtype=torch.float64)
    seq, pos = tokens_for(POSE_POSITIONS), POSE_POSITIONS
    cache = [KVCache(32) for _ in range(LAYERS)]
    model.hidden(seq[:, :12], pos[:, :12], cache)  # a prompt longer than the window: its last SW keys are kept
    steps = [model.hidden(seq[:, t:t + 1], pos[:, t:t + 1], cache) for t in range(12, 32)]  # past the jump at 16
    assert cache[0].k.shape[2] == SW and cache[0].len == 32
    assert rel_err(torch.cat(steps, 1), model.hidden(seq, pos)[:, 12:]) < 1e-12
    with pytest.raises(ValueError, match="KV cache of 32 tokens is full"):
        model.hidden(seq[:, :1], pos[:, :1] + 32, cache)


def test_perplexity_past_the_window_equals_the_float64_band_reference(mistral, tmp_path):
    W, path = mistral
    doc = np.random.default_rng(1).integers(3, V, size=39)
    np.save(tmp_path / "doc.npy", np.append(doc, 2).astype(np.int32))  # one document: 39 tokens + EOS
    out = tmp_path / "ppl.json"
    evaluate.main(["ppl", "--model", str(path), "--data", str(tmp_path / "doc.npy"), "--lengths", "40",
                   "--min-tokens", "39", "--out", str(out)])  # one window: BOS + 39 tokens, 5 sliding windows
    got = json.loads(out.read_text())["results"][0]
    seq = torch.tensor([[1, *doc]])  # BOS + the document; x_0 is predicted from BOS alone
    logits = reference_logits(W, seq, torch.arange(40)[None], window=SW)[0, :-1]
    want = math.exp(F.cross_entropy(logits, seq[0, 1:]).item())
    assert got["tokens"] == 39 and got["ppl"] == pytest.approx(want, rel=1e-5)


def test_pose_training_past_the_sliding_window_scores_the_band_and_exports_mistral(mistral, tmp_path):
    W, path = mistral
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(3, V, size=rng.integers(30, 80)), 2) for _ in range(8)]
    np.save(tmp_path / "ids.npy", np.concatenate(docs).astype(np.int32))
    argv = ["--model", str(path), "--data", str(tmp_path / "ids.npy"), "--out", str(tmp_path / "out"),
            "--context", "16", "--target", "64", "--steps", "2", "--batch-size", "2", "--micro-batch-size", "2",
            "--log-every", "1"]
    opts, _ = options.resolve(options.parse_args(argv), 1)  # L_c = 16 = 2 sliding windows (the window), L_t = 64
    documents, _ = train.read_documents(opts.data, min_len=17, max_documents=opts.max_documents)
    tokens, targets, positions = train.make_batch(documents, opts, rank=0, step=0, micro=0, accum=1)
    assert (positions[:, 1:] - positions[:, :-1] > 1).any()  # PoSE skips inside the window
    with distributed.distributed() as device:
        train.train(options.parse_args(argv), device)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)

    def reference_loss(window):  # step 1's batch at the initial weights; linear PI: positions / (L_t / L_c)
        logits = reference_logits(W, tokens, positions / 4.0, window=window)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()

    assert rows[0]["loss"] == pytest.approx(reference_loss(SW), rel=1e-5)
    assert rows[0]["loss"] != pytest.approx(reference_loss(None), rel=1e-3)  # not plain causal attention
    config = json.loads((tmp_path / "out" / "final" / "config.json").read_text())
    assert config["model_type"] == "mistral" and config["architectures"] == ["MistralForCausalLM"]
    assert config["sliding_window"] == SW and config["max_position_embeddings"] == 64
    assert config["rope_scaling"]["factor"] == 4.0
    assert from_pretrained(tmp_path / "out" / "final").args.sliding_window == SW


# Issue 28, item 7: the KV-cache paths of decoding, each against the float64 band-mask reference (never the model's
# own full forward). The Mistral passkey at 32k prefills 32k tokens into a 4,096-slot cache: a prefill longer
# than the window is that path, at SW = 8.
KV_CASES = {  # (prompt tokens, tokens decoded after it); the sequence ends at prompt + decoded
    "prefill shorter than the window, decoding across its edge": (5, 6),    # tokens 5..10: the edge at 8
    "prefill of exactly the window": (SW, 3),
    "prefill shorter, decoding far past the window": (3, 6 * SW),           # the rolling buffer wraps 6 times
    "prefill longer than the window (2.5 windows), then far past": (20, 4 * SW + 3),
}


@pytest.mark.parametrize("case", KV_CASES)
def test_kv_cache_prefill_and_decoding_equal_the_float64_band_mask_reference(mistral, case):
    W, path = mistral
    prompt_len, decoded = KV_CASES[case]
    model = from_pretrained(path, dtype=torch.float64)
    T = prompt_len + decoded
    positions = torch.arange(T).expand(2, T)
    seq = tokens_for(positions, seed=7)
    want = reference_logits(W, seq, positions, window=SW)  # [2, T, V]: row t sees tokens t - SW + 1 .. t
    cache = [KVCache(T) for _ in range(LAYERS)]
    prefill = model.lm_head(model.hidden(seq[:, :prompt_len], positions[:, :prompt_len], cache))
    steps = [model.lm_head(model.hidden(seq[:, t:t + 1], positions[:, t:t + 1], cache)) for t in range(prompt_len, T)]
    assert rel_err(prefill, want[:, :prompt_len]) < 1e-6  # cos/sin are float32: 1e-7 (rope.py)
    assert rel_err(torch.cat(steps, 1), want[:, prompt_len:]) < 1e-6  # each decoded row, from the cache alone
    assert cache[0].k.shape[2] == min(SW, T) and cache[0].len == T  # never more than SW slots held
    wrong = reference_logits(W, seq, positions, window=SW + 1)[:, prompt_len:]  # one key too many: far off
    assert T <= SW + 1 or rel_err(torch.cat(steps, 1), wrong) > 1e-3


def test_kv_cache_prefill_longer_than_the_window_with_pose_positions_then_decoding_past_a_jump(mistral):
    """PoSE ids (a jump of position inside the prompt) with a prefill of 20 > SW tokens, then 12 decoded: the
    band is in token index, the rotation in position id, in the cached path as in the reference."""
    W, path = mistral
    model = from_pretrained(path, dtype=torch.float64)
    positions = torch.cat([torch.arange(10), torch.arange(500, 522)])[None]  # [1, 32]: a skip of 490 ids at 10
    seq = tokens_for(positions, seed=9)
    want = reference_logits(W, seq, positions, window=SW)
    cache = [KVCache(32) for _ in range(LAYERS)]
    prefill = model.lm_head(model.hidden(seq[:, :20], positions[:, :20], cache))
    steps = [model.lm_head(model.hidden(seq[:, t:t + 1], positions[:, t:t + 1], cache)) for t in range(20, 32)]
    assert rel_err(prefill, want[:, :20]) < 1e-6 and rel_err(torch.cat(steps, 1), want[:, 20:]) < 1e-6
