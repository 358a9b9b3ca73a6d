"""model.py on the families beside LLaMA (Qwen2/2.5, Qwen3, OLMo 2) and the LLaMA / Mistral shapes of Llama 3.x,
SmolLM2 and Mistral Nemo, against a float64 forward written here from transformers' modeling_qwen2.py /
modeling_qwen3.py / modeling_olmo2.py; the refused families; a Qwen3-shaped checkpoint whose tokenizer adds no BOS,
trained with PoSE, exported and evaluated.

    python -m pytest tests/test_families.py -x -q
"""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

import data
import evaluate
import rope
import ruler
import distributed
import options
import train
from hf import args_from_config, config_from_args, from_pretrained, load_config, save_pretrained
from generate import generate
from model import Transformer
from test_rope import llama3_inv_freq

POSE_POSITIONS = torch.tensor([list(range(12)) + list(range(4000, 4012)),    # two chunks, skip u_1 ~ 4000
                               list(range(5, 13)) + list(range(900, 916))])  # another sample in the batch
SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 96, "vocab_size": 101, "hidden_act": "silu", "max_position_embeddings": 64}
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
# config.json dicts in the shape of each family's released configs (keys the family's HF class reads and writes).
FAMILIES = {
    "qwen2": dict(SHAPE, model_type="qwen2", architectures=["Qwen2ForCausalLM"], rope_theta=1e6, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, use_sliding_window=False, sliding_window=131072, max_window_layers=21,
                  bos_token_id=100, eos_token_id=100),  # Qwen2.5-0.5B: tied, a window that is never used
    "qwen3": dict(SHAPE, model_type="qwen3", architectures=["Qwen3ForCausalLM"], head_dim=32, rope_theta=1e6,
                  rms_norm_eps=1e-6, attention_bias=False, tie_word_embeddings=False, use_sliding_window=False,
                  sliding_window=None, max_window_layers=2, max_position_embeddings=80),  # head_dim != 64 / 4
    "qwen3-bias": dict(SHAPE, model_type="qwen3", attention_bias=True),  # head_dim omitted: Qwen3Config's 128
    "olmo2": dict(SHAPE, model_type="olmo2", architectures=["Olmo2ForCausalLM"], rope_theta=5e5,
                  attention_bias=False, tie_word_embeddings=False, pad_token_id=1),  # rms_norm_eps omitted: 1e-5
    "llama3.2": dict(SHAPE, model_type="llama", architectures=["LlamaForCausalLM"], head_dim=16, rope_theta=5e5,
                     rope_scaling=LLAMA3_ROPE, rms_norm_eps=1e-5, tie_word_embeddings=True,
                     max_position_embeddings=512),  # tied, no lm_head.weight in the file
    "smollm2": dict(SHAPE, model_type="llama", hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                    rope_theta=1e5, rms_norm_eps=1e-5, tie_word_embeddings=True),  # head_dim 128 / 2 = 64
    "mistral-nemo": dict(SHAPE, model_type="mistral", architectures=["MistralForCausalLM"], head_dim=32,
                         sliding_window=None, rope_theta=1e6, rms_norm_eps=1e-5),  # 64 / 4 would give 16
}
HEAD_DIM = {"qwen2": 16, "qwen3": 32, "qwen3-bias": 128, "olmo2": 16, "llama3.2": 16, "smollm2": 64,
            "mistral-nemo": 32}
EPS = {"qwen2": 1e-6, "qwen3": 1e-6, "qwen3-bias": 1e-6, "olmo2": 1e-5, "llama3.2": 1e-5, "smollm2": 1e-5,
       "mistral-nemo": 1e-5}


def hf_weights(name, seed=0):
    """Random float64 tensors under transformers' names for family `name`: non-unit norms, non-zero biases."""
    cfg, D = FAMILIES[name], HEAD_DIM[name]
    dim, H, Hkv, F, V = (cfg[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                          "intermediate_size", "vocab_size"))
    g = torch.Generator().manual_seed(seed)
    mat = lambda rows, cols: torch.randn(rows, cols, generator=g, dtype=torch.float64) / math.sqrt(cols)  # noqa: E731
    vec = lambda n, mean=0.0: mean + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)  # noqa: E731
    kind = cfg["model_type"]
    W = {"model.embed_tokens.weight": torch.randn(V, dim, generator=g, dtype=torch.float64),
         "model.norm.weight": vec(dim, 1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        W.update({p + "self_attn.q_proj.weight": mat(H * D, dim), p + "self_attn.k_proj.weight": mat(Hkv * D, dim),
                  p + "self_attn.v_proj.weight": mat(Hkv * D, dim), p + "self_attn.o_proj.weight": mat(dim, H * D),
                  p + "mlp.gate_proj.weight": mat(F, dim), p + "mlp.up_proj.weight": mat(F, dim),
                  p + "mlp.down_proj.weight": mat(dim, F), p + "post_attention_layernorm.weight": vec(dim, 1.0)})
        if kind == "olmo2":
            W[p + "post_feedforward_layernorm.weight"] = vec(dim, 1.0)
        else:
            W[p + "input_layernorm.weight"] = vec(dim, 1.0)
        if kind == "qwen2" or cfg.get("attention_bias"):  # Qwen2: q/k/v always, o never
            W.update({p + f"self_attn.{x}_proj.bias": vec(n) for x, n in (("q", H * D), ("k", Hkv * D),
                                                                          ("v", Hkv * D))})
        if cfg.get("attention_bias"):
            W[p + "self_attn.o_proj.bias"] = vec(dim)
        if kind == "qwen3":  # one weight over head_dim
            W.update({p + "self_attn.q_norm.weight": vec(D, 1.0), p + "self_attn.k_norm.weight": vec(D, 1.0)})
        if kind == "olmo2":  # over the whole projection
            W.update({p + "self_attn.q_norm.weight": vec(H * D, 1.0), p + "self_attn.k_norm.weight": vec(Hkv * D, 1.0)})
    if not cfg.get("tie_word_embeddings"):
        W["lm_head.weight"] = mat(V, dim)
    return W


def reference_logits(name, W, tokens, positions):
    """Plain float64 forward of family `name`, line by line from transformers' modeling_<type>.py: explicit causal
    mask, softmax, K/V heads repeated, rotate-half RoPE at the given position ids."""
    cfg, D, eps = FAMILIES[name], HEAD_DIM[name], EPS[name]
    kind, H, Hkv = cfg["model_type"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    B, T = tokens.shape

    def rms(x, w):
        return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    def get(key, default=0.0):
        return W.get(key, default)

    if cfg.get("rope_scaling"):
        inv_freq = torch.tensor(llama3_inv_freq(D, cfg["rope_theta"], 8.0, 64, 1.0, 4.0), dtype=torch.float64)
    else:
        inv_freq = cfg.get("rope_theta", 1e4) ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angle = positions.double()[:, None, :, None] * torch.cat([inv_freq, inv_freq])  # [B, 1, T, D]

    def rope(x):  # HF's rotate_half: pairs (j, j + D/2)
        rotated = torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1)
        return x * angle.cos() + rotated * angle.sin()

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = W["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = x if kind == "olmo2" else rms(x, W[p + "input_layernorm.weight"])
        q = a @ W[p + "self_attn.q_proj.weight"].T + get(p + "self_attn.q_proj.bias")
        k = a @ W[p + "self_attn.k_proj.weight"].T + get(p + "self_attn.k_proj.bias")
        v = a @ W[p + "self_attn.v_proj.weight"].T + get(p + "self_attn.v_proj.bias")
        if kind == "olmo2":
            q, k = rms(q, W[p + "self_attn.q_norm.weight"]), rms(k, W[p + "self_attn.k_norm.weight"])
        q, k, v = (t.view(B, T, -1, D) for t in (q, k, v))
        if kind == "qwen3":
            q, k = rms(q, W[p + "self_attn.q_norm.weight"]), rms(k, W[p + "self_attn.k_norm.weight"])
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~causal, float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * D)
        out = out @ W[p + "self_attn.o_proj.weight"].T + get(p + "self_attn.o_proj.bias")
        x = x + (rms(out, W[p + "post_attention_layernorm.weight"]) if kind == "olmo2" else out)
        m = x if kind == "olmo2" else rms(x, W[p + "post_attention_layernorm.weight"])
        gate = m @ W[p + "mlp.gate_proj.weight"].T
        m = (gate * torch.sigmoid(gate) * (m @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
        x = x + (rms(m, W[p + "post_feedforward_layernorm.weight"]) if kind == "olmo2" else m)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return rms(x, W["model.norm.weight"]) @ head.T


def write_checkpoint(path, name, W):
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in W.items()}, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(FAMILIES[name], indent=2))
    return path


def tokens_for(positions, vocab, seed=1):
    return torch.randint(0, vocab, positions.shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    name = request.param
    W = hf_weights(name)
    return name, W, write_checkpoint(tmp_path_factory.mktemp(name), name, W)


# ---------------------------------------------------------------- numerics

def test_each_family_reads_its_shape_and_matches_the_float64_reference_at_contiguous_and_pose_positions(family):
    name, W, path = family
    model = from_pretrained(path, dtype=torch.float64)
    assert (model.args.head_dim, model.args.norm_eps) == (HEAD_DIM[name], EPS[name])
    assert ("lm_head.weight" in W) != model.args.tie_word_embeddings and model.args.sliding_window is None
    tokens = tokens_for(POSE_POSITIONS, FAMILIES[name]["vocab_size"])
    for positions in (POSE_POSITIONS, torch.arange(24).expand(2, 24)):
        want = reference_logits(name, W, tokens, positions)
        got = model(tokens, positions)
        # cos / sin are rounded to float32 (rope.py), so float64 agrees to ~1e-7 of the logits' scale
        assert (got - want).abs().max() < 1e-5 * want.abs().max(), name


def test_each_family_decodes_greedily_with_the_kv_cache_what_the_reference_decodes(family):
    name, W, path = family
    model = from_pretrained(path, dtype=torch.float64)
    prompt, positions = tokens_for(POSE_POSITIONS, FAMILIES[name]["vocab_size"])[:1], POSE_POSITIONS[:1]
    new = generate(model, prompt, 5, positions)
    seq, pos = prompt, positions
    for _ in range(5):  # no cache: the reference on the whole sequence, next position = last + 1
        logits = reference_logits(name, W, seq, pos)[0, -1]
        top2 = logits.topk(2).values
        assert top2[0] - top2[1] > 1e-6  # the greedy choice is not a rounding coin toss
        seq, pos = torch.cat([seq, logits.argmax().view(1, 1)], 1), torch.cat([pos, pos[:, -1:] + 1], 1)
    assert new.tolist() == seq[:, prompt.shape[1]:].tolist(), name


# ---------------------------------------------------------------- save / load

def test_save_pretrained_round_trip_keeps_every_config_key_and_the_weights_bit_exact(family, tmp_path):
    name, W, path = family
    model = from_pretrained(path, dtype=torch.float32)
    base = load_config(path)
    save_pretrained(model, tmp_path / "out", base_config=base)
    cfg = load_config(tmp_path / "out")
    rope_keys = ("torch_dtype", "rope_theta", "rope_scaling", "rope_parameters", "original_max_position_embeddings")
    same = lambda c: {k: v for k, v in c.items() if k not in rope_keys}  # noqa: E731
    arch = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}  # filled in where the config has none
    assert same(cfg) == {"architectures": [arch.get(base["model_type"])], **same(base)}  # every key kept
    assert cfg["torch_dtype"] == "float32"  # and the rope, in both conventions:
    assert rope.rope_parameters(cfg) == rope.rope_parameters(base) and set(base) <= set(cfg)
    loaded = from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert loaded.args == model.args and model.state_dict().keys() == loaded.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    from safetensors import safe_open
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert set(f.keys()) == set(W)  # transformers' names, nothing more (no lm_head when tied), nothing less


def test_every_family_saves_as_it_loads_without_a_base_config(family, tmp_path):
    """Issue 35: save_pretrained(from_pretrained(folder)) writes the folder's own config.json back (model.source_config;
    before: refused for qwen2 / qwen3 / olmo2, which a config built from the args alone cannot describe). Unchanged,
    its keys are all the source's, rope keys and window as they were; only the dtype changes (a bare config also
    gains the architectures that pick the class). The weights and logits come back bit for bit."""
    name, W, path = family
    source = json.loads((path / "config.json").read_text())
    model = from_pretrained(path, dtype=torch.float64)
    save_pretrained(model, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    bare = {} if "architectures" in source else {"architectures": [{"qwen3": "Qwen3ForCausalLM",
                                                                    "llama": "LlamaForCausalLM"}[source["model_type"]]]}
    assert saved == {**source, **bare, "torch_dtype": "float64"}
    loaded = from_pretrained(tmp_path / "out", dtype=torch.float64)
    assert loaded.args == model.args
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    tokens = tokens_for(POSE_POSITIONS, FAMILIES[name]["vocab_size"])
    assert torch.equal(loaded(tokens, POSE_POSITIONS), model(tokens, POSE_POSITIONS))
    # a rope override is what changed: the rope keys and the window are rewritten, every other key is the source's
    scaled = from_pretrained(path, dtype=torch.float64, rope_scaling={"type": "yarn", "factor": 4.0})
    save_pretrained(scaled, tmp_path / "scaled")
    again = from_pretrained(tmp_path / "scaled", dtype=torch.float64)
    assert again.args == scaled.args and torch.equal(again(tokens, POSE_POSITIONS), scaled(tokens, POSE_POSITIONS))
    rewritten = {"rope_theta", "rope_scaling", "rope_parameters", "original_max_position_embeddings",
                 "max_position_embeddings", "torch_dtype"}
    kept = json.loads((tmp_path / "scaled" / "config.json").read_text())
    assert {k: v for k, v in kept.items() if k not in rewritten} == {
        k: v for k, v in {**source, **bare}.items() if k not in rewritten}


def test_olmo2_exports_a_linear_rope_scaling_of_exactly_type_and_factor(family, tmp_path):
    """transformers 4's Olmo2Config refuses any other rope_scaling; transformers 5 reads rope_parameters too."""
    name, W, path = family
    model = from_pretrained(path, dtype=torch.float32, rope_scaling={"type": "linear", "factor": 4.0})
    cfg = config_from_args(model.args, base=load_config(path))
    want = {"type": "linear", "factor": 4.0} if name == "olmo2" else {"type": "linear", "rope_type": "linear",
                                                                       "factor": 4.0}
    assert cfg["rope_scaling"] == want and cfg["rope_parameters"]["factor"] == 4.0


def test_qwen2_layout_has_qkv_biases_but_none_on_o_proj_whatever_attention_bias_says():
    args = args_from_config(dict(FAMILIES["qwen2"], attention_bias=True))
    names = Transformer(args).state_dict().keys()
    assert "model.layers.0.self_attn.k_proj.bias" in names and "model.layers.0.self_attn.o_proj.bias" not in names


# ---------------------------------------------------------------- refusals

REFUSED = {  # model_type -> words the one line must contain: what model.py lacks
    "gemma2": "soft-capping", "gemma3": "two rope tables", "gemma3_text": "two rope tables", "phi3": "longrope",
    "glm4": "gate_up_proj", "internlm2": "wqkv", "deepseek_v3": "MLA", "smollm3": "NoPE", "ministral3":
    "llama_4_scaling_beta"}


@pytest.mark.parametrize("config", [*({"model_type": t} for t in REFUSED),
                                    {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 32},
                                    {"model_type": "qwen3", "use_sliding_window": True, "max_window_layers": 1}])
def test_refused_families_fail_train_and_evaluate_in_one_line_exit_2_and_write_nothing(config, tmp_path, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**SHAPE, **config}))
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "some words " * 40}) + "\n")
    needle = REFUSED.get(config["model_type"], "use_sliding_window true is not supported")
    for main, argv, out in ((train.main, ["--data", str(tmp_path / "d.jsonl"), "--window", "16"], tmp_path / "run"),
                            (evaluate.main, ["--lengths", "16"], tmp_path / "ppl.json")):
        with pytest.raises(SystemExit) as exit_:
            main([*(["ppl"] if main is evaluate.main else []), "--model", str(folder), *argv, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and len(err.splitlines()) == 1 and needle in err, err
        assert config["model_type"] in err and not out.exists()


# ---------------------------------------------------------------- a BOS-less Qwen3 checkpoint end to end

WORDS = "the a model reads long text of many words and numbers 12 345 6789 while positions skip ahead".split()


def texts(n, seed, words):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(*words))) for _ in range(n)]


@pytest.fixture(scope="module")
def qwen3_checkpoint(tmp_path_factory):
    """Qwen's layout: a byte-level BPE tokenizer.json whose post-processor adds nothing, tokenizer_config.json with
    bos_token null, config.json naming <|endoftext|> as both bos_token_id and eos_token_id."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    corpus = texts(200, 0, (3, 30)) + [evaluate.TASK, " ".join(evaluate.FILLER), evaluate.QUESTION] * 30
    hf.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel
                                                       .alphabet(), show_progress=False))
    hf.add_special_tokens(["<|endoftext|>", "<|im_start|>"])
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    eot = hf.token_to_id("<|endoftext|>")
    path = tmp_path_factory.mktemp("qwen3") / "model"
    cfg = dict(FAMILIES["qwen3"], vocab_size=hf.get_vocab_size(), bos_token_id=eot, eos_token_id=eot,
               max_position_embeddings=40, torch_dtype="bfloat16", transformers_version="4.51.0")
    model = Transformer(args_from_config(cfg))
    model.init_weights(seed=0)
    save_pretrained(model, path, base_config=cfg)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))  # the checkpoint's own, bf16 label and all
    hf.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": None, "eos_token": "<|endoftext|>",
                                                            "pad_token": "<|endoftext|>"}))
    return path, hf, cfg


def test_bosless_qwen3_trains_with_pose_exports_and_scores_every_token_but_each_documents_first(
        qwen3_checkpoint, tmp_path, capsys, one_thread):
    path, hf, cfg = qwen3_checkpoint
    eot = hf.token_to_id("<|endoftext|>")
    tok = data.Tokenizer(path)
    assert tok.bos_id is None and tok.eos_id == eot
    train_docs = texts(30, 1, (10, 40))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in train_docs))
    docs, _ = data.read_documents(tmp_path / "train.jsonl", tok)
    assert all(d[0] != eot and d[-1] == eot and list(d[:-1]) == hf.encode(t).ids for d, t in zip(docs, train_docs))
    out = tmp_path / "run"
    # Qwen3's max_position_embeddings (here 40, 40,960 in the release) is not its window: --context gives L_c
    with distributed.distributed() as device:
        train.train(options.parse_args(["--model", str(path), "--data", str(tmp_path / "train.jsonl"), "--out",
                                        str(out), "--context", "16", "--target", "64", "--steps", "2",
                                        "--batch-size", "2", "--lr", "1e-3", "--method", "pose"]), device)
    capsys.readouterr()
    final = out / "final"
    exported = load_config(final)
    assert exported["model_type"] == "qwen3" and exported["architectures"] == ["Qwen3ForCausalLM"]
    assert {k: v for k, v in exported.items() if k in cfg and k not in ("max_position_embeddings", "torch_dtype")} \
        == {k: v for k, v in cfg.items() if k not in ("max_position_embeddings", "torch_dtype")}
    assert exported["max_position_embeddings"] == 64 and exported["rope_scaling"]["factor"] == 4.0
    loaded = from_pretrained(final, dtype=torch.float32)
    assert loaded.args.qk_norm == "head" and loaded.args.head_dim == 32
    assert data.Tokenizer(final).bos_id is None  # the export ships the tokenizer's own files

    eval_docs = texts(6, 2, (30, 60))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in eval_docs))
    result = evaluate.main(["ppl", "--model", str(final), "--data", str(tmp_path / "eval.jsonl"), "--lengths",
                            "16", "32", "--stride", "8", "--docs", "3", "--min-tokens", "32"])
    kept = [n for n in (len(hf.encode(t).ids) for t in eval_docs) if n >= 32][:3]
    assert len(kept) == 3 and [r["tokens"] for r in result["results"]] == [sum(kept) - 3] * 2  # x_0 unscored
    assert all(np.isfinite(r["ppl"]) for r in result["results"])
    # a token file as data.py writes it records the convention: no BOS, though config.json names one
    np.save(tmp_path / "eval.npy", np.concatenate(data.read_documents(tmp_path / "eval.jsonl", tok)[0]))
    result = evaluate.main(["ppl", "--model", str(final), "--data", str(tmp_path / "eval.npy"), "--lengths",
                            "16", "32", "--stride", "8", "--docs", "3", "--min-tokens", "32"])
    assert [r["tokens"] for r in result["results"]] == [sum(kept) - 3] * 2
    result = evaluate.main(["passkey", "--model", str(final), "--lengths", "256", "--trials", "2", "--new-tokens",
                            "2"])
    assert all(200 < c["tokens"] <= 256 for c in result["results"][0]["cases"]), result
    prompt = evaluate.passkey_prompt(tok, 256, 12345, 0.5)
    assert eot not in prompt and prompt[:4] == hf.encode(evaluate.TASK).ids[:4]
    sample = ruler.ruler_sample("niah_single_1", tok, 512)  # RULER's prompts: the text's own ids, no BOS
    assert sample["ids"] == hf.encode(sample["text"]).ids and len(sample["ids"]) <= 512 - ruler.NEW_TOKENS[
        "niah_single_1"]


def test_qwen25_with_the_cards_yarn_trains_at_its_original_window_and_only_with_rope_none(tmp_path):
    """Qwen2.5's card adds rope_scaling yarn x4 over 32k: the weights were trained at 32k with plain RoPE and the
    YaRN is an inference-time setting. train.py takes original_max_position_embeddings as L_c and refuses to
    stack a second scaling on it, naming --rope none (train with the card's YaRN as it is)."""
    path = tmp_path / "qwen2.5"
    W = hf_weights("qwen2")
    cfg = dict(FAMILIES["qwen2"], max_position_embeddings=128,
               rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32})
    write_checkpoint(path, "qwen2", W)
    (path / "config.json").write_text(json.dumps(cfg))
    assert options.checkpoint_context(cfg) == (32, "original_max_position_embeddings")
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    base = dict(model=str(path), data=str(tmp_path / "d.jsonl"), out=str(tmp_path / "run"))
    opts, _ = options.resolve(options.TrainOptions(**base, target=128, rope="yarn"), 1)
    assert opts.window == 32
    with pytest.raises(ValueError, match="already uses rope scaling 'yarn' x4; --rope yarn would replace it. "
                                         "Pass --rope none"):
        options.training_args(opts, cfg)
    none = options.training_args(options.resolve(options.TrainOptions(**base, target=128, rope="none"), 1)[0], cfg)
    assert none.rope == args_from_config(cfg).rope and none.max_position_embeddings == 128
