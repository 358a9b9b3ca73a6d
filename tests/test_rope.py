"""rope.py against float64 references written out here (PoSE Eq. 1-2, §3.1; HF's YaRN / llama3 / dynamic)."""
import math
import re

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


def hf_yarn_inv_freq(d, base, factor, window, beta_fast=32, beta_slow=1, revised=False, truncate=True):
    """HF _compute_yarn_parameters, re-derived in Python floats; revised = PoSE's revised_yarn."""
    def corr(turns):
        return d * math.log(window / (turns * 2 * math.pi)) / (2 * math.log(base))
    low, high = corr(beta_fast), corr(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    high = high + 0.001 if low == high else high
    out = []
    for j in range(d // 2):
        ramp = min(max((j - low) / (high - low), 0.0), 1.0)
        extrap = 1 - ramp  # HF's inv_freq_extrapolation_factor
        t = theta(j, d, base)
        out.append(t / ((1 - extrap) * factor + extrap) if revised else t / factor * (1 - extrap) + t * extrap)
    return out


def llama3_inv_freq(d, base, s, window, low=1.0, high=4.0):
    """Meta's apply_scaling (Llama 3.1) written out: wavelengths shorter than L_c/high keep θ_j, longer than
    L_c/low get θ_j/s, in between a blend linear in L_c/wavelength."""
    out = []
    for j in range(d // 2):
        f = theta(j, d, base)
        wavelen = 2 * math.pi / f
        if wavelen < window / high:
            out.append(f)
        elif wavelen > window / low:
            out.append(f / s)
        else:
            smooth = (window / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / s + smooth * f)
    return out


def ref_inv_freq(rope_type, d=D, base=BASE, factor=4.0, window=256, seq_len=None):
    """(θ'_j, cos/sin multiplier) of each rope type from its formula, never from rope.py (LLAMA3's bands)."""
    if rope_type == "linear":                            # PI: m -> m/α
        return [theta(j, d, base) / factor for j in range(d // 2)], 1.0
    if rope_type == "ntk":                               # PoSE §3.1: base·α^(d/(d-2))
        return [theta(j, d, base * factor ** (d / (d - 2))) for j in range(d // 2)], 1.0
    if rope_type == "dynamic" and seq_len is not None and seq_len > window:  # HF's dynamic NTK
        return [theta(j, d, base * (factor * seq_len / window - (factor - 1)) ** (d / (d - 2)))
                for j in range(d // 2)], 1.0
    if rope_type in ("yarn", "yarn-revised"):            # YaRN: sqrt(1/t) = 0.1 ln(s) + 1 on cos and sin
        return hf_yarn_inv_freq(d, base, factor, window, revised=rope_type == "yarn-revised"), \
            0.1 * math.log(factor) + 1
    if rope_type == "llama3":
        return llama3_inv_freq(d, base, factor, window, LLAMA3["low_freq_factor"], LLAMA3["high_freq_factor"]), 1.0
    return [theta(j, d, base) for j in range(d // 2)], 1.0  # default; dynamic inside the window


def score(rope, q, k, m, n):
    """<f(q, m), f(k, n)> through RotaryEmbedding + apply_rotary_emb; q, k [D] float64."""
    cos, sin = RotaryEmbedding(rope, D)(torch.tensor([[m, n]]))
    x = torch.stack([q, k])[None, None]  # [B=1, H=1, T=2, D]
    y = apply_rotary_emb(x, cos, sin)[0, 0]
    return float(y[0] @ y[1])


def relative_score(q, k, distance, inv_freq, scale):
    """PoSE Eq. 2's g(q, k, m - n) written out: pair j of the rotate-half layout is the complex number
    z = x_j + i·x_(j+d/2), rotated by e^(i·m·θ_j); the score is Σ_j Re[z_q·conj(z_k)·e^(i(m-n)θ_j)], times the
    cos/sin multiplier squared."""
    h, total = len(q) // 2, 0.0
    for j, f in enumerate(inv_freq):
        a, b, c, e = q[j], q[j + h], k[j], k[j + h]
        total += (a * c + b * e) * math.cos(distance * f) - (b * c - a * e) * math.sin(distance * f)
    return total * scale ** 2


@pytest.mark.parametrize("rope", STATIC, ids=lambda r: r["rope_type"])
@given(m=st.integers(0, 10**6), n=st.integers(0, 10**6), shift=st.integers(-10**5, 10**5))
def test_score_is_eq_2s_function_of_relative_distance_with_each_types_frequencies(rope, m, n, shift):
    # PoSE Eq. 2: a(q, k) = g(q, k, θ, m - n), with g written out from the type's own formula: a rotation with
    # other frequencies, another pairing or the wrong sense fails the first assertion, not only the second.
    shift = max(shift, -min(m, n))
    q, k = torch.randn(2, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    inv_freq, scale = ref_inv_freq(rope["rope_type"])
    want = relative_score(q.tolist(), k.tolist(), m - n, inv_freq, scale)
    assert score(rope, q, k, m, n) == pytest.approx(want, abs=1e-4)
    assert score(rope, q, k, m + shift, n + shift) == pytest.approx(want, abs=1e-4)


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
                                             (16, 4096, 4.0, 100.0), (16, 640, 4.0, 10.0)])  # last: ramp 4..d-1
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
    assert inv.tolist() == pytest.approx(llama3_inv_freq(d, base, s, window), rel=1e-12)
    ratio = [float(inv[j]) / theta(j, d, base) for j in range(d // 2)]
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
    ref = ref_cos_sin(positions, *ref_inv_freq(rope["rope_type"]))  # the type's formula, not compute_inv_freq
    cos, sin = RotaryEmbedding(rope, D)(torch.tensor(positions))
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape == (2, 6, D)
    assert (cos.double() - ref[0]).abs().max() < 1e-5 and (sin.double() - ref[1]).abs().max() < 1e-5


def test_angles_at_128k_are_exact_where_float32_angles_would_be_off_by_1e_2():
    # Why rope.py forms m·θ_j in float64: the naive float32 product is off by ~1e-2 rad at 128k; rope.py is not.
    m = torch.arange(131_000, 131_072)
    exact = torch.tensor([[math.cos(p * theta(j)) for j in range(D // 2)] for p in m.tolist()], dtype=torch.float64)
    naive = (m.float()[:, None] * torch.tensor([theta(j) for j in range(D // 2)], dtype=torch.float32)).cos()
    assert (naive.double() - exact).abs().max() > 1e-3
    cos, _ = RotaryEmbedding(canon("default"), D)(m[None])
    assert (cos[0, :, :D // 2].double() - exact).abs().max() < 1e-6
    assert torch.equal(cos[..., :D // 2], cos[..., D // 2:])  # pair j at j and j + d/2


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_apply_rotary_emb_of_the_projections_transposed_view_is_contiguous_and_the_same_numbers(dtype):
    """q arrives as [B, T, H, D].transpose(1, 2); the result is laid out as [B, H, T, D] (what SDPA's CPU kernel
    reads fastest) and holds, bit for bit, x * cos + rotate_half(x) * sin computed plainly in >= float32."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 7, 3, D, generator=gen).to(dtype).transpose(1, 2)  # [B, H, T, D], strided
    cos, sin = RotaryEmbedding(canon("yarn"), D)(torch.randint(0, 10**5, (2, 7), generator=gen))
    y = apply_rotary_emb(x, cos, sin)
    assert y.is_contiguous() and y.dtype == dtype and y.shape == x.shape
    wide = torch.promote_types(dtype, torch.float32)
    h = D // 2
    xf, c, s = x.to(wide), cos[:, None].to(wide), sin[:, None].to(wide)
    plain = xf * c + torch.cat([-xf[..., h:], xf[..., :h]], dim=-1) * s
    assert torch.equal(y, plain.to(dtype))


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


EXPORTED = STATIC + [canon("dynamic"), canon("yarn", truncate=False, attention_factor=1.3),
                     canon("ntk", factor=2.0), canon("dynamic", factor=1.0), canon("linear", factor=1.0)]


@pytest.mark.parametrize("rope", EXPORTED, ids=lambda r: f"{r['rope_type']}-{r['factor']:g}")
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
# Checked against transformers 4.57.6 and 5.24.0 (each list accepted without a warning, one key more warned about):
# benchmarks/hf_consumers.py, in side environments (TESTING.md).
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


@pytest.mark.parametrize("extra,ref", [
    ({"beta_fast": 16.0, "beta_slow": 2.0}, dict(beta_fast=16.0, beta_slow=2.0)),
    ({"beta_fast": 8.0, "beta_slow": 8.0, "truncate": False}, dict(beta_fast=8.0, beta_slow=8.0, truncate=False)),
])
def test_yarn_ramp_options_equal_hf_formula(extra, ref):
    # equal betas without truncation: low == high, HF adds 0.001 to the end (a step, not a division by zero)
    inv, _ = compute_inv_freq(canon("yarn", window=4096, **extra), 128)
    assert inv.tolist() == pytest.approx(hf_yarn_inv_freq(128, BASE, 4.0, 4096, **ref), rel=1e-12)


def test_yarn_attention_factor_edge_cases():
    assert compute_inv_freq(canon("yarn", factor=1.0), D)[1] == 1.0        # no extension, no temperature
    s, m, m_all = 40.0, 0.707, 0.8                                          # HF: mscale(s, m) / mscale(s, m_all)
    got = compute_inv_freq(canon("yarn", factor=s, mscale=m, mscale_all_dim=m_all), D)[1]
    assert got == pytest.approx((0.1 * m * math.log(s) + 1) / (0.1 * m_all * math.log(s) + 1), rel=1e-12)
    got = compute_inv_freq(canon("yarn", factor=s, mscale=m), D)[1]        # one of the two: HF ignores it
    assert got == pytest.approx(0.1 * math.log(s) + 1, rel=1e-12)


def test_rope_parameters_precedence_and_fallbacks():
    linear = rope_parameters({"rope_theta": BASE, "rope_scaling": {"type": "linear", "factor": 2.0}})
    # a non-null rope_scaling (or rope_parameters) overrides a canonical dict, as from_pretrained's override does
    assert rope_parameters({**linear, "rope_scaling": {"type": "yarn", "factor": 4.0}})["rope_type"] == "yarn"
    assert rope_parameters({**linear, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})["rope_type"] == "yarn"
    # an override of a transformers-5 config keeps the rope_theta that lives in its rope_parameters
    new = {"max_position_embeddings": 4096, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
    assert rope_parameters({**new, "rope_scaling": {"type": "linear", "factor": 2.0}})["rope_theta"] == 5e5
    # issue 35: a top-level rope_theta that disagrees with the block's is refused (it was: the block's wins)
    with pytest.raises(ValueError, match=r"rope_theta 10000 and rope_parameters' rope_theta 500000 \(transformers 4 "
                                         r"reads 10000, transformers 5 500000\): make them equal"):
        rope_parameters({**new, "rope_theta": BASE})
    # the original window: the scaling's, else a top-level original_max_position_embeddings (Phi-3), else 2048
    phi3 = {"max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
            "rope_scaling": {"type": "linear", "factor": 32.0}}
    assert rope_parameters(phi3)["original_max_position_embeddings"] == 4096
    assert rope_parameters({})["original_max_position_embeddings"] == 2048
    # yarn without a factor: HF's fallback max_position_embeddings / original (DeepSeek-style)
    yarn = {"max_position_embeddings": 16384,
            "rope_scaling": {"type": "yarn", "original_max_position_embeddings": 4096}}
    assert rope_parameters(yarn)["factor"] == 4.0
    with pytest.raises(ValueError, match="'linear' needs a 'factor'"):  # the fallback is YaRN's only
        rope_parameters({"max_position_embeddings": 16384, "rope_scaling": {"type": "linear"}})


@pytest.mark.parametrize("alias,name", [("vanilla_ntk", "ntk"), ("yarn_revised", "yarn-revised"),
                                        ("revised_yarn", "yarn-revised")])
def test_the_pose_repositorys_names_are_aliases(alias, name):
    assert rope_parameters({"rope_scaling": {"type": alias, "factor": 2.0}})["rope_type"] == name


@pytest.mark.parametrize("scaling,message", [
    ({"type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5},
     "partial_rotary_factor=0.5 is not supported (only 1.0)"),
    ({"rope_type": "llama3", "factor": 8.0}, "rope type 'llama3' needs 'low_freq_factor' and 'high_freq_factor'"),
])
def test_unsupported_rope_configs_raise_naming_the_key(scaling, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        rope_parameters({"rope_scaling": scaling})
    with pytest.raises(ValueError, match=r"^head_dim 15 must be even for RoPE$"):
        RotaryEmbedding(canon("default"), 15)


def test_cos_sin_are_made_on_the_positions_device():
    # "meta" stands in for an accelerator here: the float64 frequencies must follow the positions
    cos, sin = RotaryEmbedding(canon("yarn"), D)(torch.zeros(1, 3, dtype=torch.long, device="meta"))
    assert cos.device.type == sin.device.type == "meta" and cos.shape == (1, 3, D)


def test_scaling_to_config_writes_what_hf_reads():
    plain = {"rope_theta": BASE, "rope_parameters": {"rope_type": "default", "rope_theta": BASE}}
    assert scaling_to_config(canon("default"), D) == scaling_to_config(canon("ntk", factor=1.0), D) == plain
    assert scaling_to_config(canon("linear"), D)["original_max_position_embeddings"] == 256  # L_c is recorded
    assert "truncate" not in scaling_to_config(canon("yarn", truncate=True), D)["rope_scaling"]  # HF's default
    assert scaling_to_config(canon("yarn", truncate=False), D)["rope_scaling"]["truncate"] is False
