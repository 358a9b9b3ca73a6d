"""rope.py against float64 references written out here (PoSE Eq. 1-2, §3.1; HF's YaRN / llama3 / dynamic)."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rope import ROPE_TYPES, RotaryEmbedding, apply_rotary_emb, compute_inv_freq, rope_parameters, scaling_to_config

D = 64  # head_dim
BASE = 10000.0


def canon(rope_type, factor=4.0, window=256, head_dim=D, **extra):
    """A canonical rope dict through the public parser (old config.json convention)."""
    return rope_parameters({"rope_theta": BASE, "max_position_embeddings": window,
                            "rope_scaling": {"type": rope_type, "factor": factor, **extra}})


LLAMA3 = dict(low_freq_factor=1.0, high_freq_factor=4.0)
STATIC = [canon("default"), canon("linear"), canon("ntk"), canon("yarn"), canon("yarn-revised"),
          canon("llama3", **LLAMA3)]


def theta(j, d=D, base=BASE):
    return base ** (-2 * j / d)  # PoSE Eq. 1: θ_j = base^(-2j/d)


def ref_cos_sin(positions, inv_freq, scale=1.0):
    """Plain-Python float64 cos/sin in rotate-half layout: [B, T, D]."""
    rows = [[[math.cos(m * f) * scale for f in inv_freq] * 2 for m in row] for row in positions]
    rows_sin = [[[math.sin(m * f) * scale for f in inv_freq] * 2 for m in row] for row in positions]
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(rows_sin, dtype=torch.float64)


def hf_yarn_inv_freq(d, base, factor, window, beta_fast=32, beta_slow=1, revised=False):
    """HF _compute_yarn_parameters (truncate=True), re-derived in Python floats; revised = PoSE's revised_yarn."""
    def corr(turns):
        return d * math.log(window / (turns * 2 * math.pi)) / (2 * math.log(base))
    low, high = max(math.floor(corr(beta_fast)), 0), min(math.ceil(corr(beta_slow)), d - 1)
    high = high + 0.001 if low == high else high
    out = []
    for j in range(d // 2):
        ramp = min(max((j - low) / (high - low), 0.0), 1.0)
        extrap = 1 - ramp  # HF's inv_freq_extrapolation_factor
        t = theta(j, d, base)
        out.append(t / ((1 - extrap) * factor + extrap) if revised else t / factor * (1 - extrap) + t * extrap)
    return out


def score(rope, q, k, m, n):
    """<f(q, m), f(k, n)> through RotaryEmbedding + apply_rotary_emb; q, k [D] float64."""
    cos, sin = RotaryEmbedding(rope, D)(torch.tensor([[m, n]]))
    x = torch.stack([q, k])[None, None]  # [B=1, H=1, T=2, D]
    y = apply_rotary_emb(x, cos, sin)[0, 0]
    return float(y[0] @ y[1])


@pytest.mark.parametrize("rope", STATIC, ids=lambda r: r["rope_type"])
@given(m=st.integers(0, 10**6), n=st.integers(0, 10**6), shift=st.integers(-10**5, 10**5))
def test_score_depends_only_on_relative_distance(rope, m, n, shift):
    # PoSE Eq. 2: a(q, k) = g(q, k, θ, m - n); shifting both positions changes nothing.
    shift = max(shift, -min(m, n))
    q, k = torch.randn(2, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert score(rope, q, k, m, n) == pytest.approx(score(rope, q, k, m + shift, n + shift), abs=1e-4)


def test_linear_equals_default_at_positions_over_alpha():
    alpha = 4.0
    k = torch.randint(0, 250_000, (2, 33), generator=torch.Generator().manual_seed(1))
    lin = RotaryEmbedding(canon("linear", factor=alpha), D)(k * int(alpha))
    plain = RotaryEmbedding(canon("default"), D)(k)
    torch.testing.assert_close(lin, plain, rtol=0, atol=1e-6)
    # and at positions that are not multiples of α, against m/α written out (PI: m -> m/α)
    m = [[3, 1001, 777_777]]
    ref = ref_cos_sin([[p / alpha for p in m[0]]], [theta(j) for j in range(D // 2)])
    got = RotaryEmbedding(canon("linear", factor=alpha), D)(torch.tensor(m))
    torch.testing.assert_close([g.double() for g in got], list(ref), rtol=0, atol=1e-6)


@pytest.mark.parametrize("alpha", [2.0, 8.0, 32.0])
def test_ntk_last_pair_turns_like_position_over_alpha(alpha):
    # PoSE §3.1: θ'_j = (base·λ)^(-2j/d), λ = α^(d/(d-2)), so m·θ'_{d/2-1} = (m/α)·θ_{d/2-1}.
    inv, scale = compute_inv_freq(canon("ntk", factor=alpha), D)
    m = 123_457
    assert m * float(inv[-1]) == pytest.approx(m / alpha * theta(D // 2 - 1), rel=1e-12)
    assert float(inv[0]) == 1.0 and scale == 1.0  # the fastest pair is untouched
    lam = alpha ** (D / (D - 2))
    assert inv.tolist() == pytest.approx([(BASE * lam) ** (-2 * j / D) for j in range(D // 2)], rel=1e-12)


@pytest.mark.parametrize("s", [2.0, 8.0, 16.0])
def test_yarn_keeps_fast_dims_divides_slow_dims_and_scales_attention(s):
    d, window = 128, 4096  # LLaMA-2 shape: ramp runs over pairs 20..46, so both ends are pure
    inv, scale = compute_inv_freq(canon("yarn", factor=s, window=window, head_dim=d), d)
    assert inv[:20].tolist() == pytest.approx([theta(j, d) for j in range(20)], rel=1e-12)
    assert inv[46:].tolist() == pytest.approx([theta(j, d) / s for j in range(46, 64)], rel=1e-12)
    assert scale == pytest.approx(0.1 * math.log(s) + 1)


@pytest.mark.parametrize("d,window,s,base", [(128, 4096, 8.0, 10000.0), (64, 256, 4.0, 10000.0),
                                             (128, 8192, 16.0, 500000.0), (16, 64, 2.0, 10000.0),
                                             (16, 4096, 4.0, 100.0)])  # last: HF clamps the ramp end to d - 1
def test_yarn_inv_freq_equals_hf_formula(d, window, s, base):
    rope = rope_parameters({"rope_theta": base, "max_position_embeddings": window,
                            "rope_scaling": {"rope_type": "yarn", "factor": s}})
    inv, _ = compute_inv_freq(rope, d)
    assert inv.tolist() == pytest.approx(hf_yarn_inv_freq(d, base, s, window), rel=1e-12)


def test_yarn_attention_factor_options():
    assert compute_inv_freq(canon("yarn", attention_factor=1.5), D)[1] == 1.5
    # HF (DeepSeek-style): mscale / mscale_all_dim ratio; equal values cancel to 1
    assert compute_inv_freq(canon("yarn", factor=40.0, mscale=1.0, mscale_all_dim=1.0), D)[1] == 1.0
    expect = (0.1 * 0.707 * math.log(40) + 1) / (0.1 * math.log(40) + 1)
    got = compute_inv_freq(canon("yarn", factor=40.0, mscale=0.707, mscale_all_dim=1.0), D)[1]
    assert got == pytest.approx(expect)


def test_yarn_untruncated_ramp_uses_fractional_bounds():
    inv, _ = compute_inv_freq(canon("yarn", window=4096, truncate=False), 128)
    low = 128 * math.log(4096 / (32 * 2 * math.pi)) / (2 * math.log(BASE))
    high = 128 * math.log(4096 / (2 * math.pi)) / (2 * math.log(BASE))
    j = 30
    r = (j - low) / (high - low)
    assert float(inv[j]) == pytest.approx(theta(j, 128) * ((1 - r) + r / 4), rel=1e-12)


def test_yarn_revised_is_pose_blend_and_interpolates_more_inside_ramp():
    d, window, s = 128, 4096, 8.0
    rev, rev_scale = compute_inv_freq(canon("yarn-revised", factor=s, window=window), d)
    std, std_scale = compute_inv_freq(canon("yarn", factor=s, window=window), d)
    assert rev.tolist() == pytest.approx(hf_yarn_inv_freq(d, BASE, s, window, revised=True), rel=1e-12)
    assert rev_scale == std_scale == pytest.approx(0.1 * math.log(s) + 1)
    assert torch.equal(rev[:21], std[:21]) and torch.allclose(rev[46:], std[46:], rtol=1e-15)
    assert (rev[21:46] < std[21:46]).all()  # harmonic < arithmetic mean inside the ramp


def test_llama3_bands():
    # Llama 3.1: θ = 500000, d = 128, factor 8, low/high 1/4, window 8192; Meta's apply_scaling written out.
    d, base, s, window = 128, 500000.0, 8.0, 8192
    rope = rope_parameters({"rope_theta": base, "max_position_embeddings": 131072, "rope_scaling": {
        "rope_type": "llama3", "factor": s, "original_max_position_embeddings": window, **LLAMA3}})
    inv, scale = compute_inv_freq(rope, d)
    ratio = []
    for j in range(d // 2):
        f = theta(j, d, base)
        wavelen = 2 * math.pi / f
        if wavelen < window / 4:
            want = f
        elif wavelen > window / 1:
            want = f / s
        else:
            smooth = (window / wavelen - 1) / (4 - 1)
            want = (1 - smooth) * f / s + smooth * f
        assert float(inv[j]) == pytest.approx(want, rel=1e-12)
        ratio.append(float(inv[j]) / f)
    assert ratio[0] == 1.0 and ratio[-1] == pytest.approx(1 / s) and scale == 1.0
    assert all(a >= b - 1e-12 for a, b in zip(ratio, ratio[1:]))  # monotone from 1 down to 1/s: no jump
    assert any(1 / s < r < 1 for r in ratio)  # a real smooth band exists


def test_dynamic_is_default_inside_window_and_raises_base_beyond():
    rope, window, alpha = canon("dynamic", factor=4.0, window=256), 256, 4.0
    emb, plain = RotaryEmbedding(rope, D), RotaryEmbedding(canon("default"), D)
    for inside in ([[0, 17, 255]], [[3, 100, 7]]):  # seq_len = max position + 1 <= L_c
        inside = torch.tensor(inside)
        assert all(torch.equal(a, b) for a, b in zip(emb(inside), plain(inside)))
    beyond = torch.tensor([[0, 17, 1999]])  # seq_len = 2000
    base = BASE * (alpha * 2000 / window - (alpha - 1)) ** (D / (D - 2))  # HF's dynamic NTK
    ref = ref_cos_sin(beyond.tolist(), [theta(j, D, base) for j in range(D // 2)])
    torch.testing.assert_close([g.double() for g in emb(beyond)], list(ref), rtol=0, atol=1e-6)


@pytest.mark.parametrize("rope", STATIC, ids=lambda r: r["rope_type"])
def test_cos_sin_exact_at_a_million_vs_float64(rope):
    positions = [[0, 1, 131_071, 524_287, 999_983, 1_000_000], [7, 65_536, 262_144, 777_777, 999_999, 3]]
    inv, scale = compute_inv_freq(rope, D)
    ref = ref_cos_sin(positions, inv.tolist(), scale)
    cos, sin = RotaryEmbedding(rope, D)(torch.tensor(positions))
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape == (2, 6, D)
    assert (cos.double() - ref[0]).abs().max() < 1e-5 and (sin.double() - ref[1]).abs().max() < 1e-5


def test_float32_angles_would_be_wrong_at_128k():
    # Why rope.py forms angles in float64: the naive float32 product is off by ~1e-2 rad at 128k.
    m = torch.arange(131_000, 131_072)
    naive = (m.float()[:, None] * torch.tensor([theta(0), theta(1)], dtype=torch.float32)).cos()
    exact = torch.tensor([[math.cos(p * theta(0)), math.cos(p * theta(1))] for p in m.tolist()])
    assert (naive.double() - exact).abs().max() > 1e-3


def test_rotate_half_equals_paper_interleaved_rotation_on_depermuted_vectors():
    # HF row j, j + d/2 = Meta row 2j, 2j + 1 (HF's conversion permutes W_q, W_k rows exactly so).
    gen = torch.Generator().manual_seed(2)
    x_hf = torch.randn(2, 3, 5, D, generator=gen, dtype=torch.float64)  # [B, H, T, D]
    positions = torch.randint(0, 10**6, (2, 5), generator=gen)
    h = D // 2
    x_meta = torch.stack([x_hf[..., :h], x_hf[..., h:]], dim=-1).flatten(-2)  # [.., (j, pair)] interleaved
    ang = positions.double()[:, None, :, None] * torch.tensor([theta(j) for j in range(h)], dtype=torch.float64)
    a, b = x_meta[..., 0::2], x_meta[..., 1::2]
    rot = torch.stack([a * ang.cos() - b * ang.sin(), b * ang.cos() + a * ang.sin()], dim=-1)  # Eq. 1
    want_hf = torch.cat([rot[..., 0], rot[..., 1]], dim=-1)  # back to HF order
    got = apply_rotary_emb(x_hf, *RotaryEmbedding(canon("default"), D)(positions))
    torch.testing.assert_close(got, want_hf, rtol=0, atol=1e-6)
    # Eq. 2: scores are the same in both layouts (one permutation for q and k cancels in the dot product)
    meta_rot = rot.flatten(-2)
    torch.testing.assert_close(got @ got.transpose(-1, -2), meta_rot @ meta_rot.transpose(-1, -2), rtol=0, atol=1e-5)


def test_apply_rotary_emb_keeps_dtype_and_computes_in_float32():
    x = torch.randn(1, 2, 3, D).to(torch.bfloat16)
    cos, sin = RotaryEmbedding(canon("yarn"), D)(torch.tensor([[0, 5000, 10**6]]))
    y = apply_rotary_emb(x, cos, sin)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    torch.testing.assert_close(y, apply_rotary_emb(x.float(), cos, sin).bfloat16(), rtol=0, atol=0)


def test_rotary_embedding_survives_meta_device_construction():
    with torch.device("meta"):
        emb = RotaryEmbedding(canon("yarn"), D)
    assert not isinstance(emb, torch.nn.Module) and emb.inv_freq.device.type == "cpu"
    assert emb.inv_freq.dtype == torch.float64
    ref = RotaryEmbedding(canon("yarn"), D)
    assert torch.equal(emb.inv_freq, ref.inv_freq)


@pytest.mark.parametrize("rope_type,extra", [("linear", {}), ("dynamic", {}), ("yarn", {"beta_fast": 16.0}),
                                             ("yarn-revised", {}), ("llama3", LLAMA3), ("default", {})])
def test_both_config_conventions_parse_to_the_same_dict(rope_type, extra):
    old = {"rope_theta": 500000.0, "max_position_embeddings": 8192,
           "rope_scaling": {"type": rope_type, "factor": 4.0, "original_max_position_embeddings": 2048, **extra}}
    new = {"max_position_embeddings": 8192, "rope_parameters": {
        "rope_type": rope_type, "rope_theta": 500000.0, "factor": 4.0, "original_max_position_embeddings": 2048,
        **extra}}
    assert rope_parameters(old) == rope_parameters(new)
    assert rope_parameters(rope_parameters(old)) == rope_parameters(old)  # canonical in, canonical out


def test_absent_rope_scaling_is_default_with_window_from_config():
    r = rope_parameters({"max_position_embeddings": 4096, "rope_scaling": None})
    assert r == {"rope_type": "default", "rope_theta": 10000.0, "factor": 1.0,
                 "original_max_position_embeddings": 4096}


def test_unknown_type_and_small_factor_raise_value_error_naming_them():
    with pytest.raises(ValueError, match="'longrope'.*supported: default, linear, ntk, yarn, yarn-revised"):
        rope_parameters({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}})
    with pytest.raises(ValueError, match="0.5"):
        rope_parameters({"rope_scaling": {"type": "linear", "factor": 0.5}})
    with pytest.raises(ValueError, match="factor"):
        rope_parameters({"rope_scaling": {"type": "linear"}})


EXPORTED = STATIC + [canon("dynamic"), canon("yarn", truncate=False, attention_factor=1.3)]


@pytest.mark.parametrize("rope", EXPORTED, ids=lambda r: r["rope_type"])
def test_scaling_to_config_round_trip_through_either_convention_alone(rope):
    """A transformers-4 reader sees rope_theta + rope_scaling, a transformers-5 one rope_parameters; each alone,
    with the top-level original_max_position_embeddings, must give back the same rope."""
    exported = scaling_to_config(rope, D)
    assert set(exported) <= {"rope_theta", "rope_scaling", "rope_parameters", "original_max_position_embeddings"}
    window = {"max_position_embeddings": rope["original_max_position_embeddings"] * 4}  # the export's L_t
    top = {k: exported[k] for k in ("original_max_position_embeddings",) if k in exported}
    v4 = {"rope_theta": exported["rope_theta"], **({"rope_scaling": exported["rope_scaling"]}
                                                    if "rope_scaling" in exported else {})}
    v5 = {"rope_parameters": exported["rope_parameters"]}
    positions = torch.tensor([[0, 100, 255, 4000, 999_999]])
    for view in (v4, v5):
        back = rope_parameters({**view, **top, **window})
        if rope["rope_type"] not in ("default", "ntk"):  # ntk is exported as plain RoPE with the raised base
            assert back["original_max_position_embeddings"] == rope["original_max_position_embeddings"]
        for a, b in zip(RotaryEmbedding(rope, D)(positions), RotaryEmbedding(back, D)(positions)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# The keys transformers accepts without "Unrecognized keys in `rope_scaling` / `rope_parameters`", read off its
# validators (4.57: modeling_rope_utils._validate_*_parameters on rope_scaling, where "type" may stand for
# rope_type; 5.x: RotaryEmbeddingConfigMixin._validate_*_rope_parameters on rope_parameters), written out here.
HF4_KEYS = {"linear": {"rope_type", "type", "factor"}, "dynamic": {"rope_type", "type", "factor"},
            "yarn": {"rope_type", "type", "factor", "original_max_position_embeddings", "attention_factor",
                     "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"},
            "llama3": {"rope_type", "type", "factor", "original_max_position_embeddings", "low_freq_factor",
                       "high_freq_factor"}}
HF5_KEYS = {"default": {"rope_type", "rope_theta"}, "linear": {"rope_type", "rope_theta", "factor"},
            "dynamic": {"rope_type", "rope_theta", "factor"},
            "yarn": {"rope_type", "rope_theta", "factor", "original_max_position_embeddings", "attention_factor",
                     "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"},
            "llama3": {"rope_type", "rope_theta", "factor", "original_max_position_embeddings", "low_freq_factor",
                       "high_freq_factor"}}


@pytest.mark.parametrize("rope", [r for r in EXPORTED if r["rope_type"] != "yarn-revised"],  # refused by design
                         ids=lambda r: r["rope_type"])
def test_exported_rope_keys_are_those_each_transformers_version_accepts_and_record_the_window(rope):
    exported = scaling_to_config(rope, D)
    kind = "default" if rope["rope_type"] == "ntk" else rope["rope_type"]
    params = exported["rope_parameters"]
    assert params["rope_type"] == kind and set(params) <= HF5_KEYS[kind]
    assert params["rope_theta"] == exported["rope_theta"]  # the two conventions agree
    if kind == "default":
        assert "rope_scaling" not in exported
    else:
        scaling = exported["rope_scaling"]
        assert scaling["rope_type"] == scaling["type"] == kind and set(scaling) <= HF4_KEYS[kind]
        assert scaling["factor"] == params["factor"] == rope["factor"]
        assert {k: v for k, v in scaling.items() if k != "type"} == \
            {k: v for k, v in params.items() if k != "rope_theta"}
    if rope["rope_type"] != "default":  # L_c, where no validator looks and rope_parameters() reads it back
        assert exported["original_max_position_embeddings"] == rope["original_max_position_embeddings"]


def test_export_ntk_as_raised_base_and_revised_yarn_as_a_type_hf_refuses():
    raised = BASE * 4.0 ** (D / (D - 2))
    assert scaling_to_config(canon("ntk", factor=4.0), D) == {
        "rope_theta": raised, "rope_parameters": {"rope_type": "default", "rope_theta": raised},
        "original_max_position_embeddings": 256}
    hf_types = {"default", "linear", "dynamic", "yarn", "longrope", "llama3"}
    scaling = scaling_to_config(canon("yarn-revised"), D)["rope_scaling"]
    assert scaling["rope_type"] not in hf_types and scaling["type"] not in hf_types
    assert set(ROPE_TYPES) - {"ntk", "yarn-revised"} <= hf_types
