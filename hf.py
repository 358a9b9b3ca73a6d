"""Hugging Face checkpoint folders: config.json <-> ModelArgs, the families, safetensors weights in and out.

    from hf import from_pretrained, load_config, save_pretrained
    model = from_pretrained("Llama-2-7b-hf", rope_scaling={"type": "linear", "factor": 4.0})  # a model.Transformer
    save_pretrained(model, "out/llama-16k", base_config=load_config("Llama-2-7b-hf"))
    python -m pytest tests/test_model.py tests/test_families.py -q

model.py is the network and reads no file; this file is everything between it and a folder on disk. config.json is
read into ModelArgs (args_from_config) with every key checked for type and range as it is read (a null read as
transformers 5 reads it, or refused where it fails: NULL_IS_DEFAULT), and written back (config_from_args) so that
transformers 4 / 5 and vLLM compute what the model computes. Weights are checked from
the safetensors headers alone before gigabytes are allocated (check_checkpoint), loaded one tensor at a time into a
meta-built model, and saved sharded under a temporary name. Modules carry Hugging Face's names
(model.layers.{i}.self_attn.q_proj, ...), so state_dict() keys are the checkpoint keys: no key map.

Families: one Transformer; config.json's model_type sets the few ModelArgs fields in which they differ (FAMILIES,
read from transformers' modeling_<type>.py; everything else is LLaMA's SwiGLU, RMSNorm and RoPE):

    model_type  qkv_bias        o_bias          qk_norm                      post_norm  norm_cast_last
    llama       attention_bias  attention_bias  -                            -          -
    mistral     attention_bias  attention_bias  -                            -          -
    qwen2       always          never           -                            -          -
    qwen3       attention_bias  attention_bias  "head": per head, over D     -          -
    olmo2       attention_bias  attention_bias  "proj": over all H x D       yes        yes

The families in REFUSED, and Qwen's use_sliding_window true, are refused in one line naming what model.py lacks.
"""
import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model import ModelArgs, Transformer
from rope import config_value, rope_parameters, scaling_to_config

# ---------------------------------------------------------------- config.json <-> ModelArgs

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


# A null config.json key: what transformers 5.25 reads it as, checked for every family in its side environment
# (benchmarks/hf_nulls.py). Ids and the window: none; rope_scaling / rope_parameters / partial_rotary_factor and a
# top-level original_max_position_embeddings: absent (rope.py); these keys: their default (absent), for the families
# listed only, the others failing on it (MistralConfig's num_key_value_heads, Qwen3Config's head_dim) or, where the
# family does not read the key, treating it as false. Any other null this file reads is refused, never a default.
NULL_IS_DEFAULT = {"num_key_value_heads": ("llama", "qwen2", "qwen3", "olmo2"),  # = num_attention_heads
                   "head_dim": ("llama", "mistral"),  # = hidden_size / num_attention_heads
                   "attention_bias": ("mistral", "qwen2"), "mlp_bias": ("mistral", "qwen2", "qwen3", "olmo2"),
                   "use_sliding_window": ("llama", "mistral", "olmo2")}


def args_from_config(config: dict) -> ModelArgs:
    """From a config.json dict; omitted keys take HF LlamaConfig's defaults, null ones as NULL_IS_DEFAULT says."""
    family, model_type = family_fields(config), config.get("model_type", "llama")
    config = {**FAMILY_DEFAULTS.get(model_type, {}), **config}
    if config_value(config, "hidden_act", "silu", str) != "silu":
        raise ValueError(f"hidden_act {config['hidden_act']!r} is not supported (LLaMA's SwiGLU needs 'silu')")

    def read(key, default, kind, **limits):
        return config_value(config, key, default, kind, null=model_type in NULL_IS_DEFAULT.get(key, ()), **limits)

    def positive(key, default):
        return read(key, default, int, low=1)

    def flag(key, default=False):
        return read(key, default, bool)

    def token_ids(key, default):  # an id, a list of them (Llama 3 Instruct's EOS) or null (none)
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
    head_dim = positive("head_dim", None)
    if head_dim is None and dim % n_heads:
        raise ValueError(f"hidden_size {dim} is not divisible by num_attention_heads {n_heads} (set head_dim)")
    window = config.get("sliding_window") if flag("use_sliding_window", True) else None  # Qwen's: refused
    return ModelArgs(dim=dim, n_layers=positive("num_hidden_layers", 32), n_heads=n_heads, n_kv_heads=n_kv_heads,
                     head_dim=head_dim or dim // n_heads, hidden_dim=positive("intermediate_size", 11008),
                     vocab_size=positive("vocab_size", 32000),
                     norm_eps=read("rms_norm_eps", 1e-6, float, above=0),  # 0: rsqrt(0) of a zero row
                     max_position_embeddings=positive("max_position_embeddings", 2048), rope=rope_parameters(config),
                     tie_word_embeddings=flag("tie_word_embeddings"), mlp_bias=flag("mlp_bias"),
                     sliding_window=None if window is None else positive("sliding_window", None),
                     bos_token_id=token_ids("bos_token_id", 1), eos_token_id=token_ids("eos_token_id", 2),
                     **{"qkv_bias": flag("attention_bias"), "o_bias": flag("attention_bias"), **family})


def config_from_args(args: ModelArgs, dtype: torch.dtype = torch.float32, base: dict | None = None) -> dict:
    """A Hugging Face config.json dict that makes other LLaMA tools compute what this model computes.

    base: the config.json this model was loaded from. Its keys are all kept (pad_token_id, use_cache,
    initializer_range, ...) but those training changes: the rope keys and max_position_embeddings, rewritten when
    they changed (in both conventions: scaling_to_config), kept as they were when not, and the dtype. Without it
    the config is built from these args alone (a model trained from scratch).
    """
    unchanged = False
    if base is not None:
        read = args_from_config(base)
        if dataclasses.replace(read, rope=args.rope, max_position_embeddings=args.max_position_embeddings) != args:
            raise ValueError("the base config.json describes another model than the one being saved")
        unchanged = (read.rope, read.max_position_embeddings) == (args.rope, args.max_position_embeddings)
    rope = scaling_to_config(args.rope, args.head_dim)  # ntk -> raised rope_theta; yarn-revised -> refused type
    # HF's dynamic NTK takes its original window from max_position_embeddings (see rope.scaling_to_config).
    dynamic = args.rope["rope_type"] == "dynamic"
    context = args.rope["original_max_position_embeddings"] if dynamic else args.max_position_embeddings
    if base is None and (args.qkv_bias != args.o_bias or args.qk_norm or args.post_norm or args.norm_cast_last):
        raise ValueError("a config.json without a base is written for llama / mistral only: pass the "
                         "checkpoint's own config.json as base")
    if base is None:
        config = {
            # A sliding window is only honoured by the Mistral class; as "llama" it would be silently dropped.
            "architectures": ["MistralForCausalLM" if args.sliding_window else "LlamaForCausalLM"],
            "model_type": "mistral" if args.sliding_window else "llama",
            "hidden_size": args.dim, "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
            "num_key_value_heads": args.n_kv_heads, "head_dim": args.head_dim,
            "intermediate_size": args.hidden_dim, "hidden_act": "silu", "vocab_size": args.vocab_size,
            "rms_norm_eps": args.norm_eps, "tie_word_embeddings": args.tie_word_embeddings,
            "attention_bias": args.qkv_bias, "mlp_bias": args.mlp_bias,
            "bos_token_id": args.bos_token_id, "eos_token_id": args.eos_token_id}
        if args.sliding_window:
            config["sliding_window"] = args.sliding_window
    else:  # a changed rope's keys are all rewritten below: a stale one of the other convention would contradict it
        config = dict(base) if unchanged else {k: v for k, v in base.items() if k not in
                                               ("rope_theta", "rope_scaling", "rope_parameters",
                                                "original_max_position_embeddings")}
        # A bare config may lack what picks the class (vLLM reads architectures, transformers model_type).
        config.setdefault("model_type", "mistral" if args.sliding_window else "llama")
        config.setdefault("architectures", [ARCHITECTURES[config["model_type"]]])
    # transformers 4 reads "torch_dtype", 5 writes "dtype" (and reads both): update the checkpoint's own.
    for key in [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]:
        config[key] = str(dtype).removeprefix("torch.")
    if unchanged:  # its own rope keys and window, which its readers read as the model computes
        return config
    config["max_position_embeddings"] = context
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


# ---------------------------------------------------------------- loading and saving weights

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
        args_from_config(config)  # every key the project reads, checked once for type and range
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None
    return config


def from_preset(name: str, seed: int | None = None, **overrides) -> Transformer:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    model = Transformer(args_from_config({**PRESETS[name], **overrides}))
    model.init_weights(seed)
    return model


def from_pretrained(path, device="cpu", dtype=torch.bfloat16, rope_scaling: dict | None = None) -> Transformer:
    """Load a Hugging Face folder of a FAMILIES model_type (config.json + model.safetensors, or shards + index).

    rope_scaling (config.json's own form, e.g. {"type": "linear", "factor": 4.0}) overrides the config.
    The model is built on the meta device, materialised once on `device` in `dtype`, and filled one
    tensor at a time, so host memory holds the weights once plus the largest single tensor. The headers
    are checked against the config first (check_checkpoint); a NaN or infinite weight is refused by name.
    model.source_config is config.json as read (before the override): save_pretrained writes it back.
    """
    path = Path(path)
    config = source = load_config(path)
    try:
        if rope_scaling is not None:
            config = {**config, "rope_scaling": dict(rope_scaling)}
        args = args_from_config(config)
    except ValueError as e:
        raise ValueError(f"{path / 'config.json'}: {e}") from None
    if rope_scaling is not None and args.rope["rope_type"] not in ("default", "dynamic"):
        # The context the override is for: alpha x the original window (PI / YaRN's target L_t).
        target = round(args.rope["factor"] * args.rope["original_max_position_embeddings"])
        args = dataclasses.replace(args, max_position_embeddings=max(args.max_position_embeddings, target))
    headers = check_checkpoint(path, args)  # names, shapes, dtypes: before allocating gigabytes
    with torch.device("meta"):
        model = Transformer(args)
    model.to(dtype).to_empty(device=device)  # uninitialised memory, every byte overwritten below
    model._tie()
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
    model.source_config = source
    return model


def save_pretrained(model: Transformer, path, max_shard_size: int = 5 * 2**30, base_config: dict | None = None):
    """Write config.json + model.safetensors (or model-0000i-of-0000n.safetensors + index) in HF's layout.
    base_config: the config.json the weights came from, kept but for what training changed (config_from_args);
    by default the one from_pretrained read (model.source_config), so that every family saves as it loads.

    Everything is written into a sibling temp folder first; a failure leaves `path` as it was. Into an
    existing folder, our files replace the old weights and config and leave others (tokenizer) alone.
    """
    path = Path(path).absolute()  # a sibling temp name needs a real last component ("." has none)
    if max_shard_size <= 0:
        raise ValueError(f"max_shard_size must be > 0, got {max_shard_size}")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a folder")
    tensors = model.state_dict()
    if model.args.tie_word_embeddings:
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
        config = config_from_args(model.args, model.model.embed_tokens.weight.dtype,
                                  model.source_config if base_config is None else base_config)
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


# ---------------------------------------------------------------- safetensors, checked before it is trusted

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
