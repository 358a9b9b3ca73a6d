"""train.py --plan's tables for Llama-2-7B shapes (issue 26): PoSE vs full-length per-GPU peak memory, and the
paper's Fig. 3 setting, from a config.json written here (no weights, no GPU).

    python benchmarks/bench_plan.py                        # every table, markdown on stdout (20-120 s a plan)
    python benchmarks/bench_plan.py --table fig3 --json rows.jsonl

grid8, grid16: L_c 4,096 (Llama-2's context) -> L_t 16k / 32k / 64k / 128k, PoSE and full-length, activation
checkpointing off / on, on 8 or 16 ranks, micro-batch 1, global batch 64 (§4.1). fig3: the paper's §5.1 setting,
LLaMA-7B (the same shapes) 2k -> 4k / 8k / 16k, global batch 16 on 8 ranks (fig3: micro-batch 1, fig3mb2: 2, with
activation checkpointing, as the authors' script runs). Every row is what
`python train.py --plan --model FOLDER ...` prints for those flags (stderr names each row's flags as it goes).
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import plan  # noqa: E402
import options  # noqa: E402

# Llama-2-7b-hf's config.json, the keys that shape the model (LLaMA-1-7B has the same shapes at context 2,048)
LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
             "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float16",
             "bos_token_id": 1, "eos_token_id": 2}


def write_config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(LLAMA2_7B, indent=1) + "\n")
    return folder


def rows(model: Path, table: str, done: dict):
    """(flags, plan) for every row of a table, planned one after another in this process; a row in `done` (flags
    -> plan, read back from --json) is not planned again. A step's FLOPs depend on the global batch, not on the
    world: grid16 takes grid8's."""
    if table.startswith("grid"):
        cells = [(m, t, ac, int(table[4:])) for ac in (False, True) for m in ("pose", "full")
                 for t in (16384, 32768, 65536, 131072)]
        common = ["--window", "4096", "--batch-size", "64"]
    elif table == "fig3":
        cells = [(m, t, ac, 8) for ac in (False, True) for m in ("pose", "full") for t in (4096, 8192, 16384)]
        common = ["--window", "2048", "--batch-size", "16"]
    else:  # fig3mb2: two sequences per GPU (16 / 8, the authors' script accumulates nothing), checkpointing on
        cells = [(m, t, True, 8) for m in ("pose", "full") for t in (4096, 8192, 16384)]
        common = ["--window", "2048", "--batch-size", "16", "--micro-batch-size", "2"]
    for method, target, ac, world in cells:
        flags = ["--model", str(model), *common, "--method", method, "--target", str(target),
                 "--world-size", str(world)] + ["--activation-checkpointing"] * ac
        key = " ".join(flags[2:])
        if key not in done:
            opts = options.parse_args(["--plan", *flags])
            done[key] = plan.estimate(opts, world, count_flops=world == 8)
            if world != 8:
                done[key]["flops_per_step"] = done[key.replace(f"--world-size {world}", "--world-size 8")][
                    "flops_per_step"]
            done[key]["new"] = True
        yield flags, done[key]


def markdown(results) -> str:
    lines = ["| ranks | act. ckpt | method | L_t | tokens/seq | peak GiB | activations | temporaries | "
             "params+grads+Adam | FLOPs/step | planned in |", "|" + "---|" * 11]
    for _, p in results:
        c = p["categories"]
        states = c["sharded_params"] + c["sharded_grads"] + c["optimizer_state"]
        lines.append(f"| {p['world_size']} | {'on' if p['activation_checkpointing'] else 'off'} | {p['method']} | "
                     f"{p['target']:,} | {p['sequence_length']:,} | {p['peak_gib']:.2f} | {c['activations']:.2f} | "
                     f"{c['temporaries']:.2f} | {states:.2f} | {p['flops_per_step']:.3g} | {p['seconds']:.0f} s |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", choices=("grid8", "grid16", "fig3", "fig3mb2", "all"), default="all")
    p.add_argument("--json", help="also append each row's plan as a JSON line here")
    o = p.parse_args()
    known = {}  # flags without --model -> plan, from an earlier run's --json
    if o.json and Path(o.json).is_file():
        for line in Path(o.json).read_text().splitlines():
            row = json.loads(line)
            known[" ".join(row.pop("flags"))] = row
    with tempfile.TemporaryDirectory() as tmp:
        model = write_config(Path(tmp) / "Llama-2-7b-config")
        for table in ("grid8", "fig3", "grid16", "fig3mb2") if o.table == "all" else (o.table,):
            done = []
            for flags, result in rows(model, table, known):
                done.append((flags, result))
                print(f"[{table}] {' '.join(flags[2:])}: peak {result['peak_gib']:.2f} GiB in "
                      f"{result['seconds']:.0f} s", file=sys.stderr, flush=True)
                if o.json and result.pop("new", False):
                    with open(o.json, "a") as f:
                        f.write(json.dumps({"table": table, "flags": flags[2:], **result}) + "\n")
            print(f"\n{table}: {len(done)} plans, {sum(p['seconds'] for _, p in done):.0f} s of planning\n\n"
                  f"{markdown(done)}", flush=True)


if __name__ == "__main__":
    main()
