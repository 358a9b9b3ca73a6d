"""Rotary position embedding (RoPE, PoSE Eq. 1-2) and the interpolations that stretch it to L_t = α·L_c (§3.1).

    python -m pytest tests/test_rope.py -x -q      # against θ_j written plainly in the test, in float64

RoPE rotates pair j of a query or key at position m by the angle m·θ_j, θ_j = base^(-2j/d) (Eq. 1), so the score
of positions m and n depends on m − n only (Eq. 2): position ids may jump (PoSE's skips u_i) and the model still
sees relative distances alone. Extending the window L_c to L_t = α·L_c keeps every angle m·θ_j inside the range
seen in pre-training: linear (PI) divides m by α, ntk raises the base, yarn / llama3 do either per frequency
band, dynamic raises the base only once a sequence is longer than L_c.

Read top to bottom: compute_inv_freq (the frequencies θ'_j of every type, and YaRN's attention scaling),
RotaryEmbedding (cos / sin at any position ids, the angles formed in float64), apply_rotary_emb (the rotation,
in Hugging Face's rotate-half layout). Then the config.json conventions: interpolate (a rope stretched by α),
rope_parameters (either of Hugging Face's conventions read into one canonical dict, every key checked) and
scaling_to_config (written back so that transformers 4 / 5 and vLLM compute the same rope).
docs/rope.md: why rotate-half equals Eq. 1's interleaved pairs, why float64 angles, YaRN's temperature.
"""
import math

import torch

def compute_inv_freq(rope: dict, head_dim: int, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """float64 inverse frequencies θ_j [head_dim/2] on CPU and the attention scaling (cos/sin multiplier).

    seq_len (max position + 1) matters only for "dynamic".
    """
    d, alpha, base = head_dim, float(rope["factor"]), float(rope["rope_theta"])
    rope_type = rope["rope_type"]
    if rope_type == "ntk":  # PoSE §3.1: base·α^(d/(d-2)) makes m·θ'_{d/2-1} = (m/α)·θ_{d/2-1}
        base = base * alpha ** (d / (d - 2))
    window = rope["original_max_position_embeddings"]
    if rope_type == "dynamic" and seq_len is not None and seq_len > window:
        # HF's dynamic NTK: the NTK scale grows with the sequence, from 1 at L_c to α at α·L_c and beyond.
        base = base * (alpha * seq_len / window - (alpha - 1)) ** (d / (d - 2))
    # device="cpu": under `with torch.device("meta")` a bare arange would be a meta tensor (garbage later).
    inv_freq = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64, device="cpu") / d)  # θ_j = base^(-2j/d)
    if rope_type == "linear":  # PI: θ_j·(m/α) = (θ_j/α)·m
        return inv_freq / alpha, 1.0
    if rope_type == "yarn":
        # HF / YaRN: blend the frequencies, θ_j·((1 - r_j) + r_j/α).
        ramp = _yarn_ramp(rope, d)
        return inv_freq * (1 - ramp) + inv_freq / alpha * ramp, _yarn_attention_factor(rope)
    if rope_type == "yarn-revised":
        # PoSE authors' revised_yarn (github.com/dwzhu-pku/PoSE, src/my_modeling_llama.py; README: "we use
        # the revised version of YaRN", citing jquesnelle/yarn issue 24): blend the position divisor instead,
        # θ_j / ((1 - r_j) + r_j·α). Same ramp, ends and attention factor; inside the ramp it interpolates
        # more (harmonic vs arithmetic mean), e.g. r=0.5, α=4: θ_j/2.5, not 0.625·θ_j. Their config.json
        # says "yarn" (their code always runs the revised blend): load those with rope_type "yarn-revised".
        ramp = _yarn_ramp(rope, d)
        return inv_freq / (1 - ramp + ramp * alpha), _yarn_attention_factor(rope)
    if rope_type == "llama3":
        # Llama 3.1: wavelengths shorter than L_c/high_freq_factor keep θ_j, longer than L_c/low_freq_factor
        # get θ_j/α, and in between a smooth blend linear in L_c/wavelength (HF _compute_llama3_parameters).
        low, high = rope["low_freq_factor"], rope["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        smooth = ((window / wavelen - low) / (high - low)).clamp(0, 1)
        return (1 - smooth) * inv_freq / alpha + smooth * inv_freq, 1.0
    return inv_freq, 1.0



def _yarn_ramp(rope: dict, d: int) -> torch.Tensor:
    """YaRN's per-pair ramp r_j in [0, 1]: 0 = keep θ_j (> β_fast turns over L_c), 1 = fully interpolate
    (< β_slow turns). Pair j turns L_c·θ_j / 2π times over the window; solve that for j (YaRN's
    "NTK-by-parts" ramp)."""
    base, window = rope["rope_theta"], rope["original_max_position_embeddings"]

    def dim_for(turns):  # the (fractional) pair index j that makes `turns` rotations over the window
        return d * math.log(window / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_for(rope.get("beta_fast") or 32), dim_for(rope.get("beta_slow") or 1)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)  # HF clamps to d - 1 (not d/2 - 1); kept for parity
    if low == high:
        high += 0.001  # HF: avoid dividing by zero
    return ((torch.arange(d // 2, dtype=torch.float64, device="cpu") - low) / (high - low)).clamp(0, 1)



def _yarn_attention_factor(rope: dict) -> float:
    """sqrt(1/t) = 0.1·ln(s) + 1 (YaRN's temperature), or HF's mscale / mscale_all_dim variant, or the given value."""
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])

    def mscale(s, m=1.0):
        return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

    s, m, m_all = rope["factor"], rope.get("mscale"), rope.get("mscale_all_dim")
    return mscale(s, m) / mscale(s, m_all) if m and m_all else mscale(s)



class RotaryEmbedding:
    """cos/sin for arbitrary position ids. A plain object, not an nn.Module with buffers: nothing here is
    created on the meta device, so model.to_empty() cannot leave it holding garbage."""

    def __init__(self, rope: dict, head_dim: int):
        if head_dim % 2:
            raise ValueError(f"head_dim {head_dim} must be even for RoPE")
        self.rope, self.head_dim = dict(rope), head_dim
        self.inv_freq, self.attention_scaling = compute_inv_freq(self.rope, head_dim)
        self._on_device = {}

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] int64 (any values, any order) -> cos, sin [B, T, head_dim] float32."""
        # dynamic depends on the longest position: recompute (d/2 numbers; one host sync). Stateless, unlike
        # HF, which keeps the largest base seen until a sequence shorter than L_c resets it.
        if self.rope["rope_type"] == "dynamic":
            inv_freq, _ = compute_inv_freq(self.rope, self.head_dim, int(positions.max()) + 1)
            inv_freq = inv_freq.to(positions.device)
        else:
            inv_freq = self._on_device.get(positions.device)
            if inv_freq is None:
                inv_freq = self._on_device[positions.device] = self.inv_freq.to(positions.device)
        angles = positions.to(torch.float64)[..., None] * inv_freq  # [B, T, d/2], exact to ~1e-10 rad
        angles = torch.cat([angles, angles], dim=-1)  # [B, T, d]: pair j lives at j and j + d/2
        return ((angles.cos() * self.attention_scaling).float(), (angles.sin() * self.attention_scaling).float())


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: the 'i·' of the complex rotation."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by cos/sin [B, T, D] (rotate-half layout); math in >= float32, x.dtype out, laid out
    contiguously as [B, H, T, D] whatever x's strides (the projections' transposed view): SDPA's CPU flash kernel
    reads it ~5 % faster so, and in bf16 the cast back writes that layout at no extra cost (fp32: one copy)."""
    dtype = torch.promote_types(x.dtype, torch.float32)  # bf16 q/k would lose the rotation's precision
    xf, cos, sin = x.to(dtype), cos[:, None].to(dtype), sin[:, None].to(dtype)  # cos/sin [B, 1, T, D]
    out = (xf * cos + rotate_half(xf) * sin).to(x.dtype, memory_format=torch.contiguous_format)
    return out.contiguous()  # to() keeps x's strides when the dtype is already x's


# ---------------------------------------------------------------- config.json conventions

ROPE_TYPES = ("default", "linear", "ntk", "yarn", "yarn-revised", "dynamic", "llama3")
# PoSE's repo calls static NTK "vanilla_ntk"; HF has no name for it or for the revised YaRN.
_ALIASES = {"vanilla_ntk": "ntk", "yarn_revised": "yarn-revised", "revised_yarn": "yarn-revised"}
# Per-type keys kept in the canonical dict (and exported); anything else in the config is ignored.
_EXTRA = {"yarn": ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim", "truncate"),
          "llama3": ("low_freq_factor", "high_freq_factor")}
_EXTRA["yarn-revised"] = _EXTRA["yarn"]


def interpolate(rope: dict, kind: str, alpha: float, original: int, beta_fast: float | None = None) -> dict:
    """A canonical rope dict stretched by α = L_t / L_c (§3.1): `kind` (linear, ntk, yarn, yarn-revised, ...) on the
    pre-training window L_c = `original`, keeping `rope`'s base. beta_fast: YaRN's ramp end (None: its 32)."""
    scaled = {"rope_type": kind, "rope_theta": rope["rope_theta"], "factor": alpha,
              "original_max_position_embeddings": original}
    if beta_fast is not None:
        scaled.update(beta_fast=beta_fast, beta_slow=1.0)
    return rope_parameters(scaled)


def config_value(config: dict, key: str, default=None, kind=float, low=None, above=None, null: bool = False):
    """config[key] (default when absent), checked as it is read: one ValueError naming the key and the value, so
    that no TypeError / OverflowError from a malformed config.json reaches the user further on.
    kind float: a finite number (an int is fine) >= low and > above; int: an integer in low .. 2^31 - 1 (a shape
    or a position; larger ones overflow torch's sizes); bool, str, dict, list: that JSON type.
    null: whether a null reads as absent (the default), as transformers reads it; else it is refused, never
    guessed (transformers fails on it, or reads it as something other than the key's default)."""
    value = config.get(key)
    if kind is float:
        what = "a finite number" + (f" >= {low:g}" if low is not None else "") + (f" > {above:g}" if above is not None
                                                                                  else "")
    elif kind is int:
        what = f"an integer in {low if low is not None else -2**31} .. {2**31 - 1}"
    else:
        what = {bool: "true or false", str: "a string", dict: "an object", list: "a list"}[kind]
    if value is None and (null or key not in config):
        return default
    if value is None:
        raise ValueError(f"config key {key!r} must be {what}, got null (transformers does not read this null as a "
                         f"default either)")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is float:
        ok = number and -1e308 < value < 1e308 and (low is None or value >= low) and (above is None or value > above)
    elif kind is int:  # -1e308 < value < 1e308: False for NaN and inf; no OverflowError for a 400-digit int
        ok = number and isinstance(value, int) and (low is None or value >= low) and value < 2**31
    else:
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if not ok:
        raise ValueError(f"config key {key!r} must be {what}, got {value!r}")
    return float(value) if kind is float else value


# YaRN's optional keys that transformers reads as their defaults when null (`get(key) or 32`, `if ... is None`);
# a null truncate it reads as false (its default is true), a null llama3 band factor it fails on: both refused.
_NULL_IS_DEFAULT = ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim")


def rope_parameters(config: dict) -> dict:
    """One canonical rope dict from a config.json dict in either convention.

    Old: top-level rope_theta + rope_scaling {"type"|"rope_type", "factor", ...}; new: rope_parameters
    {"rope_type", "rope_theta", ...}. A non-null rope_scaling wins (as in HF, so it works as an override);
    a canonical dict (top-level rope_type) is returned normalised, so the function is idempotent.
    Every key read is checked for type and range (config_value): a NaN factor or a negative base is one line; a
    null is read as transformers 5 reads it (absent) or refused where it fails on it or reads something else.
    """
    blocks = {key: config_value(config, key, {}, dict, null=True) for key in ("rope_scaling", "rope_parameters")}
    if "rope_type" in config and not blocks["rope_scaling"] and not blocks["rope_parameters"]:
        scaling = dict(config)
    else:
        scaling = dict(blocks["rope_scaling"] or blocks["rope_parameters"])
    theta = rope_theta(config, scaling, blocks)
    name = config_value(scaling, "rope_type", None, str) or config_value(scaling, "type", None, str) or "default"
    rope_type = _ALIASES.get(name, name)
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unknown rope type {name!r} in config; supported: {', '.join(ROPE_TYPES)}")
    for c in (scaling, config):  # transformers 5 reads it from the rope block, 4 from the top level
        if config_value(c, "partial_rotary_factor", 1.0, null=True) != 1.0:
            raise ValueError(f"partial_rotary_factor={c['partial_rotary_factor']} is not supported (only 1.0)")
    # HF reads the pre-training window from the rope block, else a top-level key (Phi-3), else
    # max_position_embeddings. A null one in the block: yarn and llama3 fail on it, the other types do not read it.
    own = rope_type in ("yarn", "yarn-revised", "llama3")
    original = next((v for c, k, null in ((scaling, "original_max_position_embeddings", not own),
                                          (config, "original_max_position_embeddings", True),
                                          (config, "max_position_embeddings", False))
                     if (v := config_value(c, k, None, int, low=1, null=null)) is not None), 2048)
    factor = config_value(scaling, "factor", low=1, null=True)  # null: absent, as HF reads it (yarn's fallback)
    if rope_type == "default":
        factor = 1.0
    elif factor is None and rope_type == "yarn" and config.get("max_position_embeddings"):
        factor = config_value(config, "max_position_embeddings", kind=int, low=1) / original  # HF's fallback
    elif factor is None:
        raise ValueError(f"rope type {rope_type!r} needs a 'factor' (alpha = target / original window)")
    if factor < 1:
        raise ValueError(f"rope factor {factor} < 1 for type {rope_type!r}: alpha = target / window must be >= 1")
    rope = {"rope_type": rope_type, "rope_theta": theta, "factor": factor,
            "original_max_position_embeddings": original}
    for key in _EXTRA.get(rope_type, ()):
        value = config_value(scaling, key, None, bool if key == "truncate" else float,
                             above=0 if key in ("beta_fast", "beta_slow", "attention_factor") else None,
                             null=key in _NULL_IS_DEFAULT)
        if value is not None:
            rope[key] = value
    if rope_type == "llama3" and not {"low_freq_factor", "high_freq_factor"} <= rope.keys():
        raise ValueError("rope type 'llama3' needs 'low_freq_factor' and 'high_freq_factor'")
    if rope_type == "llama3" and rope["high_freq_factor"] <= rope["low_freq_factor"]:  # the blend divides by it
        raise ValueError(f"rope high_freq_factor {rope['high_freq_factor']} must exceed low_freq_factor "
                         f"{rope['low_freq_factor']}")
    return rope


def rope_theta(config: dict, scaling: dict, blocks: dict) -> float:
    """The rope base, from wherever config.json gives it. transformers 4 reads the top-level rope_theta; 5 reads
    the rope block's (rope_scaling's if that is non-null, else rope_parameters'), else the top-level one. Given in
    two places with two values, the base is ambiguous: refused, naming both and what each version reads."""
    # θ_j = base^(-2j/d) needs base > 1: at 1 every pair turns alike (and YaRN's ramp divides by ln base).
    in_block = any(b.get("rope_theta") is not None for b in blocks.values())
    given = {}
    for where, c in (("rope_theta", config), ("rope_scaling's rope_theta", blocks["rope_scaling"]),
                     ("rope_parameters' rope_theta", blocks["rope_parameters"])):
        # a null top-level one transformers 5 reads past, to the block's; a null in a block it fails on
        value = config_value(c, "rope_theta", None, above=1, null=c is config and in_block)
        if value is not None:
            given[where] = value
    if len(set(given.values())) > 1:
        v4 = given.get("rope_theta", 10000.0)
        v5 = config_value(scaling, "rope_theta", None, above=1) or v4
        both = " and ".join(f"{where} {value:g}" for where, value in given.items())
        raise ValueError(f"config keys disagree on the rope base: {both} (transformers 4 reads {v4:g}, "
                         f"transformers 5 {v5:g}): make them equal")
    return next(iter(given.values()), 10000.0)  # one value wherever it is given (an override keeps the block's)


def scaling_to_config(rope: dict, head_dim: int) -> dict:
    """config.json keys under which transformers 4 and 5, vLLM and llama.cpp compute the same rope, with no warning.

    Two conventions, both written: transformers 4 reads top-level rope_theta + rope_scaling and warns about any
    key its per-type validator does not list (linear / dynamic: only rope_type and factor); transformers 5 reads
    rope_parameters (rope_theta inside; it also accepts rope_scaling, which then wins) and warns the same way.
    L_c goes in a top-level original_max_position_embeddings, which no validator checks for these types
    (transformers 5 and vLLM copy it into the rope only for yarn / llama3 / longrope, whose own key agrees);
    rope_parameters() reads it back. "type" repeats rope_type for readers older than transformers 4.43.
    ntk has no HF type, so it is written as plain RoPE with the raised base (PoSE §3.1). yarn-revised is
    written as rope_type "yarn-revised": HF (KeyError in ROPE_INIT_FUNCTIONS), vLLM and old LlamaConfig
    reject that name, so no other tool silently computes standard YaRN instead; rope_parameters() reads it.
    For dynamic, HF takes the original window from max_position_embeddings, so the exporter must write
    max_position_embeddings = original_max_position_embeddings for HF to agree.
    """
    rope_type, theta, factor = rope["rope_type"], float(rope["rope_theta"]), float(rope["factor"])
    window = int(rope["original_max_position_embeddings"])
    if rope_type == "default" or (rope_type == "ntk" and factor == 1.0):
        return {"rope_theta": theta, "rope_parameters": {"rope_type": "default", "rope_theta": theta}}
    if rope_type == "ntk":
        theta = theta * factor ** (head_dim / (head_dim - 2))
        return {"rope_theta": theta, "rope_parameters": {"rope_type": "default", "rope_theta": theta},
                "original_max_position_embeddings": window}
    extra = {k: rope[k] for k in _EXTRA.get(rope_type, ()) if k in rope and k != "truncate"}
    if rope.get("truncate") is False:  # only write it when it differs from HF's default
        extra["truncate"] = False
    if rope_type in ("yarn", "yarn-revised", "llama3"):  # a key of their own in both conventions
        extra["original_max_position_embeddings"] = window
    return {"rope_theta": theta,
            "rope_scaling": {"rope_type": rope_type, "type": rope_type, "factor": factor, **extra},
            "rope_parameters": {"rope_type": rope_type, "rope_theta": theta, "factor": factor, **extra},
            "original_max_position_embeddings": window}
