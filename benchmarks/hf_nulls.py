"""A null in config.json: does hf.py read it as transformers does, or refuse it? By hand, in a side venv
(transformers is never a project dependency, and no test imports this file).

    /work/side/hfvenv/bin/python benchmarks/hf_nulls.py       # transformers 5.x

For each family (llama, mistral, qwen2, qwen3, olmo2) and each key hf.py / rope.py read, at top level and inside
the rope blocks: a tiny config.json with that key null, and the same model's float64 weights beside it.
transformers loads it (AutoConfig, AutoModelForCausalLM.from_config, the weights copied in) or fails; hf.py loads it
(from_pretrained) or refuses it in one line. Where both load, their logits at positions 0..T-1 are compared.
One line per case: agree (both load, max logit error) / agree (both refuse) / stricter (hf.py refuses what
transformers reads: the reason is STRICTER's) / WRONG (hf.py reads what transformers fails on, or computes
another thing). The exit code is the number of WRONG lines and of stricter lines without a reason.
"""
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hf import from_pretrained, load_config  # noqa: E402

BASE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=96, vocab_size=128, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=1e4,
            tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu", bos_token_id=1,
            eos_token_id=2)
FAMILY = {"llama": {}, "mistral": dict(sliding_window=4096), "qwen2": dict(use_sliding_window=False),
          "qwen3": dict(use_sliding_window=False), "olmo2": {}}
TOP = [*BASE, "rope_scaling", "rope_parameters", "partial_rotary_factor", "original_max_position_embeddings",
       "sliding_window", "use_sliding_window"]
YARN = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=4096)  # wide enough to truncate
LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=16)
BLOCKS = {  # the rope block's keys, null one at a time
    "rope_parameters.rope_theta": dict(rope_parameters=dict(rope_type="default", rope_theta=None)),
    "rope_theta, rope_parameters has one": dict(rope_theta=None, rope_parameters=dict(rope_type="default",
                                                                                      rope_theta=1e4)),
    "rope_parameters.partial_rotary_factor": dict(rope_parameters=dict(rope_type="default", rope_theta=1e4,
                                                                       partial_rotary_factor=None)),
    "rope_scaling.rope_type (type linear)": dict(rope_scaling=dict(rope_type=None, type="linear", factor=2.0)),
    "rope_scaling.type (rope_type linear)": dict(rope_scaling=dict(rope_type="linear", type=None, factor=2.0)),
    "linear factor": dict(rope_scaling=dict(rope_type="linear", factor=None)),
    "dynamic factor": dict(rope_scaling=dict(rope_type="dynamic", factor=None)),
    "linear original_max_position_embeddings": dict(rope_scaling=dict(rope_type="linear", factor=2.0,
                                                                      original_max_position_embeddings=None)),
    "llama3 factor": dict(rope_scaling=dict(LLAMA3, factor=None)),
    "llama3 low_freq_factor": dict(rope_scaling=dict(LLAMA3, low_freq_factor=None)),
    **{f"yarn {key}": dict(rope_scaling=dict(YARN, **{key: None})) for key in (
        "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor", "mscale", "truncate")},
    "yarn factor": dict(rope_scaling=dict(YARN, factor=None, original_max_position_embeddings=16)),  # 64 / 16
}
# hf.py refuses these although transformers 5 reads them: why.
STRICTER = {"yarn truncate": "transformers computes a null truncate as false, an absent one as its default true"}


def transformers_logits(config: dict, folder: Path, tokens):
    """transformers' float64 logits of `config` with fresh weights, which are saved in `folder`; an exception when
    transformers fails on the config."""
    (folder / "config.json").write_text(json.dumps(config))
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).to(torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
        logits = model(tokens).logits
    if not torch.isfinite(logits).all():
        raise ValueError("non-finite logits")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    return logits


def ours(folder: Path, tokens):
    """hf.py's float64 logits of the folder (None without weights), or the one line of its refusal of config.json."""
    try:
        load_config(folder)
    except ValueError as e:
        return str(e).replace(str(folder), "...")
    if not (folder / "model.safetensors").is_file():
        return None
    model = from_pretrained(folder, dtype=torch.float64)
    with torch.no_grad():
        return model(tokens, torch.arange(tokens.shape[1]).expand_as(tokens))


def main() -> int:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    tokens = torch.randint(3, 128, (1, 24))
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    bad = 0
    for family, extra in FAMILY.items():
        base = {**BASE, **extra, "model_type": family}
        cases = {key: {key: None} for key in TOP} | BLOCKS
        for name, change in cases.items():
            config = {**base, **change}
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                try:
                    want = transformers_logits(config, folder, tokens)
                except Exception as e:
                    want = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:70]}"
                    (folder / "config.json").write_text(json.dumps(config))
                    (folder / "model.safetensors").unlink(missing_ok=True)
                got = ours(folder, tokens)
            if isinstance(want, str) and isinstance(got, str):
                line = f"agree: both refuse | transformers {want} | hf.py {got}"
            elif isinstance(want, str):
                line, bad = f"WRONG: hf.py reads what transformers fails on ({want})", bad + 1
            elif isinstance(got, str):
                reason = STRICTER.get(name)
                line, bad = f"stricter: {reason or 'NO REASON'} | hf.py {got}", bad + (reason is None)
            else:
                error = (got - want).abs().max().item()
                ok = error < 1e-6 * want.abs().max().item()
                line, bad = f"{'agree' if ok else 'WRONG'}: both read it, max logit error {error:.2e}", bad + (not ok)
            print(f"{family:8s} {name:45s} {line}")
    return bad


if __name__ == "__main__":
    sys.exit(min(main(), 125))
