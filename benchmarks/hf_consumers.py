"""Does Hugging Face transformers read a train.py export as model.py does? Logits of both, per transformers version.

    python benchmarks/hf_consumers.py                                   # the project's venv: makes the exports
    python benchmarks/hf_consumers.py --python /work/hf4venv/bin/python /work/hfvenv/bin/python --out DIR

Not a test and not a dependency: transformers lives in side environments only (README: no transformers in the
project). The driver, in the project's environment, trains a micro LLaMA (2 layers, width 64, L_c 16) for two
steps with train.py at each --rope (linear, yarn, ntk, and none = plain RoPE, L_t = L_c), in-process, and writes the
exports under --out. Then, for each --python (an interpreter with transformers), it runs this file with --one: it
loads every export with AutoModelForCausalLM and with model.Transformer, both in float64, and prints the largest
|logit difference| over 64 tokens (L_t: past L_c, where the rope scaling acts) at contiguous position ids 0..63
and at PoSE-like ones (two chunks, a jump of 24), and whether transformers logged a warning while loading (an
unrecognised rope key, say). Weights and activations are float64 on both sides, but transformers computes its
rope cos / sin in float32 (LlamaRotaryEmbedding casts inv_freq and the positions with .float()), so agreement
reads ~1e-6 on logits of size ~6; the control column is model.py given half the factor, i.e. what a misread
rope key would cost (order 1). A second table checks tests/test_rope.py's golden rope key lists against the
same transformers: each list accepted without a warning, one key more warned about.
"""
import argparse
import contextlib
import io
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ROPES = ("linear", "yarn", "ntk", "none")


def make_exports(out: Path) -> dict:
    """train.py runs of a micro LLaMA, one per --rope: {rope: export folder}."""
    import numpy as np

    import distributed
    import options
    import train
    from hf import PRESETS, args_from_config, save_pretrained
    from model import Transformer

    micro = dict(PRESETS["tiny"], hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, intermediate_size=128, max_position_embeddings=16)
    model = Transformer(args_from_config(micro))
    model.init_weights(seed=0)
    with torch.no_grad():  # weights far from the init's near-uniform logits, so that a rope error shows
        for p in model.parameters():
            p.mul_(3)
    save_pretrained(model, out / "micro")
    rng = np.random.default_rng(0)
    np.save(out / "ids.npy", np.concatenate([np.append(rng.integers(3, 4096, size=200), 2) for _ in range(8)]))
    folders = {}
    for kind in ROPES:
        target = "16" if kind == "none" else "64"
        argv = ["--model", str(out / "micro"), "--data", str(out / "ids.npy"), "--out", str(out / kind), "--window",
                "16", "--target", target, "--rope", kind, "--steps", "2", "--batch-size", "2", "--lr", "1e-3"]
        with contextlib.redirect_stdout(io.StringIO()), distributed.distributed() as device:
            train.train(options.parse_args(argv), device)
        folders[kind] = str(out / kind / "final")
    return folders


def compare(folders: dict) -> dict:
    """In an interpreter with transformers: {rope: {max errors, warnings}} and the versions."""
    import transformers
    from transformers import AutoModelForCausalLM

    from hf import from_pretrained

    records = io.StringIO()
    handler = logging.StreamHandler(records)
    transformers.logging.get_logger().addHandler(handler)
    transformers.logging.set_verbosity_warning()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 4096, (1, 64), generator=g)
    rows = {}
    for kind, folder in folders.items():
        length = json.loads((Path(folder) / "config.json").read_text())["max_position_embeddings"]
        ids = tokens[:, :length]
        positions = {"contiguous": torch.arange(length)[None],
                     "pose": torch.cat([torch.arange(length // 2), torch.arange(length // 2) + length // 2
                                        + (24 if length > 16 else 0)])[None]}
        before = records.tell()
        hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").to(torch.float64).eval()
        warned = records.getvalue()[before:].strip()
        ours = from_pretrained(folder, dtype=torch.float64).eval()
        row = {"rope": json.loads((Path(folder) / "config.json").read_text()).get("rope_scaling"), "warnings": warned}
        # the control: model.py told the wrong factor (x2 instead of x4): what a misread rope key would cost
        wrong = None if row["rope"] is None else from_pretrained(
            folder, dtype=torch.float64, rope_scaling={**row["rope"], "factor": row["rope"]["factor"] / 2}).eval()
        with torch.no_grad():
            for name, pos in positions.items():
                want = hf(input_ids=ids, position_ids=pos).logits
                row[name] = float((ours(ids, pos) - want).abs().max())
                row["logit_scale"] = float(want.abs().max())
            row["control"] = None if wrong is None else float((wrong(ids, positions["contiguous"]) - want).abs().max())
        rows[kind] = row
    return {"transformers": transformers.__version__, "torch": torch.__version__, "rows": rows,
            "keys": check_keys(records)}


def check_keys(records: io.StringIO) -> list[dict]:
    """tests/test_rope.py's golden key lists (HF4_KEYS for transformers 4's rope_scaling, HF5_KEYS for 5's
    rope_parameters), read from the test file's text: does this transformers accept each list without a warning,
    and warn at one key more (so that silence means acceptance)?"""
    import ast

    import transformers
    from transformers import LlamaConfig

    tree = ast.parse((ROOT / "tests" / "test_rope.py").read_text())
    gold = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
            and getattr(node.targets[0], "id", "") in ("HF4_KEYS", "HF5_KEYS")}
    five = int(transformers.__version__.split(".")[0]) >= 5
    name, field = ("HF5_KEYS", "rope_parameters") if five else ("HF4_KEYS", "rope_scaling")
    values = dict(factor=4.0, original_max_position_embeddings=16, attention_factor=1.0, beta_fast=32.0,
                  beta_slow=1.0, mscale=1.0, mscale_all_dim=0.0, truncate=True, low_freq_factor=1.0,
                  high_freq_factor=4.0, rope_theta=10000.0)
    rows = []
    for kind, keys in gold[name].items():
        row = {"list": name, "field": field, "kind": kind}
        for case, extra in (("golden", ()), ("one_more", ("unknown_key",))):
            start = records.tell()
            LlamaConfig(**{field: {k: kind if k in ("rope_type", "type") else values.get(k, 1.0)
                                   for k in (*keys, *extra)}}, max_position_embeddings=64)
            row[case] = records.getvalue()[start:].strip().replace("\n", " ") or "no warning"
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", nargs="+", default=["/work/hf4venv/bin/python", "/work/hfvenv/bin/python"])
    parser.add_argument("--out", help="where the exports go (default: a temporary folder)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: a JSON {rope: folder} to compare here
    opts = parser.parse_args()
    if opts.one:
        print(json.dumps(compare(json.loads(opts.one))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(opts.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        folders = make_exports(out)
        print("| transformers | torch | --rope | config rope_scaling | max abs logit error, positions 0..L_t-1 | "
              "the same, PoSE positions | control: factor / 2 | max abs logit | warnings while loading |")
        print("|---|---|---|---|---:|---:|---:|---:|---|")
        results = []
        for python in opts.python:
            done = subprocess.run([python, __file__, "--one", json.dumps(folders)], capture_output=True, text=True)
            if done.returncode:
                print(f"| {python}: failed | | | | | | | | {done.stderr.strip().splitlines()[-1]} |")
                continue
            results.append(result := json.loads(done.stdout.strip().splitlines()[-1]))
            for kind, r in result["rows"].items():
                print(f"| {result['transformers']} | {result['torch']} | {kind} | `{json.dumps(r['rope'])}` | "
                      f"{r['contiguous']:.2e} | {r['pose']:.2e} | "
                      f"{'n/a' if r['control'] is None else format(r['control'], '.2f')} | {r['logit_scale']:.3g} | "
                      f"{r['warnings'] or 'none'} |")
        print("\n| transformers | golden list | rope type | the list's keys | the list + 1 unknown key |")
        print("|---|---|---|---|---|")
        for result in results:
            for r in result["keys"]:
                print(f"| {result['transformers']} | {r['list']} ({r['field']}) | {r['kind']} | {r['golden']} | "
                      f"{r['one_more']} |")


if __name__ == "__main__":
    main()
