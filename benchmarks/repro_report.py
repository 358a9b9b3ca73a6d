"""Tables (and plots) of a benchmarks/reproduce.sh run: Table 1 / Table 6 style perplexity, Fig. 2 style passkey
retrieval (exact match, per-digit accuracy, the key's log-probability), retrieval against fine-tuning steps (the
fine-tunes' --eval-every rows), the fine-tuning cost (Fig. 3) and the base's diagnosis (repro_diag.py), as markdown.

    python benchmarks/repro_report.py runs/repro                                   # print
    python benchmarks/repro_report.py runs/repro --into BENCHMARKS.md --plot benchmarks/reproduce.png

--plot P also draws retrieval against steps into P's name with "-steps" added (benchmarks/reproduce-steps.png).

--into replaces the text between the "<!-- reproduce:begin -->" and "<!-- reproduce:end -->" lines of the file.
"""
import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import evaluate  # noqa: E402
from hf import args_from_config  # noqa: E402
from model import Transformer  # noqa: E402

ROWS = [  # (name in the run, row label, what it is)
    ("original", "Original", "the base model, plain RoPE, no training"),
    ("pi-only", "PI-only", "the base model, linear interpolation x alpha, no training"),
    ("full", "Full-length", "fine-tuned on L_t-token windows, linear PI"),
    ("full-tokens", "Full-length, equal tokens", "the same for steps / alpha: PoSE's tokens per sequence x steps"),
    ("full-yarn-b2", "Full-length (YaRN, beta_fast 2: miniature-tuned)", "the tuned PoSE row's control"),
    ("randpos", "RandPos", "fine-tuned on L_c tokens, sorted random positions in [0, L_t), linear PI"),
    ("pose", "PoSE (linear)", "fine-tuned on L_c tokens, 2 chunks with skips, linear PI"),
    ("pose-ntk", "PoSE (NTK)", "same, NTK-aware base"),
    ("pose-yarn", "PoSE (YaRN)", "same, the revised YaRN the paper used (yarn-revised)"),
    ("pose-yarn-b2", "PoSE (YaRN, beta_fast 2: miniature-tuned)", "same, YaRN's ramp ending at 2 turns, not 32"),
]
BEGIN, END = "<!-- reproduce:begin -->", "<!-- reproduce:end -->"


def load(out: Path, name: str, task: str) -> dict | None:
    path = out / "results" / f"{name}.{task}.json"
    return json.loads(path.read_text()) if path.exists() else None


# evaluate.py passkey --fit: what holds at most L tokens
FIT = {"answer": "prompt and answer within the length (`--fit answer`)",
       "prompt": "the prompt alone within the length, the authors' bound (`--fit prompt`)"}


def machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def report(out: Path, plot_link: str | None) -> str:
    times = dict(line.split("\t") for line in (out / "times.tsv").read_text().splitlines() if "\t" in line)
    base = json.loads((out / "base" / "final" / "config.json").read_text())
    base_opts, ft_opts = _options(out / "base"), _options(out / "pose")
    ppl = {name: load(out, name, "ppl") for name, *_ in ROWS}
    keys = {name: load(out, name, "passkey") for name, *_ in ROWS}
    ppl_opts = next(r for r in ppl.values() if r)["options"]  # every row ran with the same options
    key_opts = next(r for r in keys.values() if r)["options"]
    lengths = ppl_opts["lengths"]
    with torch.device("meta"):
        model = Transformer(args_from_config(base))
    n_params = sum(p.numel() for p in model.parameters())
    lc, lt = int(ft_opts.get("window", 0)), int(ft_opts.get("target", 0))

    md = [f"Machine: {machine()}. Wall time of the whole pipeline: {wall(times) / 60:.1f} min (per step: "
          f"`{out}/times.tsv`; a model's perplexity and passkey run side by side).",
          "",
          f"Model: LLaMA \"{base_opts.get('preset', '?')}\" preset from scratch, {n_params / 1e6:.1f}M parameters "
          f"(hidden {base['hidden_size']}, {base['num_hidden_layers']} layers, {base['num_attention_heads']} heads of "
          f"{base.get('head_dim') or base['hidden_size'] // base['num_attention_heads']} / "
          f"{base['num_key_value_heads']} KV heads, vocab {base['vocab_size']}), fp32. Pre-training: "
          f"{base_opts.get('steps')} steps x "
          f"{base_opts.get('batch_size')} sequences of L_c = {base_opts.get('window')} tokens, lr "
          f"{base_opts.get('lr')}, seed {base_opts.get('seed')}. Every fine-tune: {ft_opts.get('steps')} steps x "
          f"{ft_opts.get('batch_size')} sequences, lr {ft_opts.get('lr')}, seed {ft_opts.get('seed')}, "
          f"L_c = {lc} -> L_t = {lt}. Held-out data: {ppl_opts['docs']} stdlib eval-split files, sliding windows "
          f"with stride {ppl_opts['stride']}; passkey: {key_opts['trials']} prompts per length, key at a random "
          f"depth, {FIT[key_opts.get('fit', 'answer')]}.",
          "",
          "**Perplexity** (lower is better; Table 1 and Table 6 of the paper)", "",
          "| method | " + " | ".join(str(L) for L in lengths) + " |",
          "|---|" + "---:|" * len(lengths)]
    for name, label, _ in ROWS:
        r = ppl[name]
        cells = [f"{row['ppl']:.2f}" if row["ppl"] < 1e4 else f"{row['ppl']:.1e}" for row in r["results"]] if r else []
        md.append(f"| {label} | " + " | ".join(cells or ["not run"] * len(lengths)) + " |")
    trials = key_opts["trials"]
    md += ["", f"**Passkey retrieval**, exact match (per-digit accuracy) (Fig. 2a prompt; the paper's Table 2 / "
           f"Fig. 2); {trials} prompts a length, so an exact-match rate p has standard error sqrt(p(1-p)/{trials}) "
           f"<= {0.5 / trials ** 0.5:.2f}", "",
           "| method | " + " | ".join(str(L) for L in lengths) + " |", "|---|" + "---:|" * len(lengths)]
    for name, label, _ in ROWS:
        r = keys[name]
        cells = [f"{row['accuracy']:.2f} ({row['digit_accuracy']:.2f})" for row in r["results"]] if r else []
        md.append(f"| {label} | " + " | ".join(cells or ["not run"] * len(lengths)) + " |")
    md += ["", "**The key's log-probability** (nats, teacher-forced, mean over the prompts; 0 is certainty)", "",
           "| method | " + " | ".join(str(L) for L in lengths) + " |", "|---|" + "---:|" * len(lengths)]
    for name, label, _ in ROWS:
        r = keys[name]
        cells = [f"{row['key_logprob']:.2f}" if row.get("key_logprob") is not None else "-" for row in r["results"]] \
            if r else []
        md.append(f"| {label} | " + " | ".join(cells or ["not run"] * len(lengths)) + " |")
    md += steps_table(out)
    md += ["", "**Fine-tuning cost** (Fig. 3: PoSE trains on L_c tokens whatever L_t is; scored tokens: padding "
           "and the unscored first token excluded, from the log's throughput)", "",
           "| method | tokens / sequence | steps | scored tokens | s / step (median) | peak memory (RSS, GiB) | "
           "wall (s) | final loss |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, label, _ in ROWS[2:]:
        metrics = out / name / "metrics.jsonl"
        if not metrics.exists():
            continue
        rows = [r for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]  # not --eval-every's
        seq = lt if name.startswith("full") else lc
        steps = rows[-1]["step"]
        scored = statistics.median(r["tokens_per_s"] * r["s_per_step"] for r in rows) * steps
        md.append(f"| {label} | {seq} | {steps} | {scored / 1e3:,.0f}k | "
                  f"{statistics.median(r['s_per_step'] for r in rows):.2f} | "
                  f"{max(r['peak_mem_gib'] for r in rows):.2f} | {times.get(name, '?')} | {rows[-1]['loss']:.3f} |")
    md += diagnosis_table(out)
    if plot_link:
        md += ["", f"![perplexity and passkey accuracy vs length]({plot_link})",
               "", f"![passkey accuracy vs fine-tuning steps]({steps_name(plot_link)})"]
    md += ["", "The exact commands `benchmarks/reproduce.sh` ran (logged to `OUT/commands.sh`):", "", "```bash",
           *(out / "commands.sh").read_text().splitlines(), "```"]
    return "\n".join(md) + "\n"


def wall(times: dict) -> int:
    """Seconds the pipeline took: its steps one after another, except each model's NAME.ppl and NAME.passkey,
    which reproduce.sh runs side by side (the longer of the two counts)."""
    pairs = {}
    for step, seconds in times.items():
        model, dot, task = step.rpartition(".")
        key = (model, "evaluations") if dot and task in ("ppl", "passkey") else step
        pairs[key] = max(pairs.get(key, 0), int(seconds))
    return sum(pairs.values())


def eval_rows(out: Path, name: str) -> list[dict]:
    """The fine-tune's --eval-every rows (metrics.jsonl), one per evaluated step."""
    metrics = out / name / "metrics.jsonl"
    return [r for r in map(json.loads, metrics.read_text().splitlines()) if "eval" in r] if metrics.exists() else []


def steps_table(out: Path) -> list[str]:
    """Passkey exact match at each length --eval-every scored, against the fine-tuning step (train.py's rows)."""
    runs = {label: rows for name, label, _ in ROWS if (rows := eval_rows(out, name))}
    if not runs:
        return []
    first = next(iter(runs.values()))[0]["eval"]
    lengths, trials = list(first["passkey"]), _options(out / "pose").get("eval_trials")
    steps = sorted({r["step"] for rows in runs.values() for r in rows})
    md = ["", f"**Retrieval against fine-tuning steps** (`train.py --eval-every`: passkey exact match at "
          f"{' / '.join(lengths)} tokens, {trials} prompts on a fixed seed; step 0 is the base under the run's "
          f"scaling)", "", "| method | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---:|" * len(steps)]
    for label, rows in runs.items():
        by_step = {r["step"]: r["eval"]["passkey"] for r in rows}
        md.append(f"| {label} | " + " | ".join(" / ".join(f"{by_step[s][L]:.2f}" for L in lengths)
                                               if s in by_step else "" for s in steps) + " |")
    return md


def diagnosis_table(out: Path) -> list[str]:
    """benchmarks/repro_diag.py's rows: the base's passkey at L_c under each scaling, and its copy heads."""
    path = out / "results" / "diag.json"
    if not path.exists():
        return []
    d = json.loads(path.read_text())
    md = ["", f"**Diagnosis of the base, no training** (`benchmarks/repro_diag.py`): passkey at L_c = {d['window']} "
          f"({d['trials']} prompts) under each scaling a fine-tune starts from, and the strongest previous-token "
          f"and induction heads (mean attention on {40} random tokens written twice; layer L, head H)", "",
          "| scaling | exact | digits | key log p | previous-token head | induction head |",
          "|---|---:|---:|---:|---:|---:|"]
    for r in d["rows"]:
        cells = []
        for scores in (r["previous_token"], r["induction"]):
            flat = [(v, layer, head) for layer, row in enumerate(scores) for head, v in enumerate(row)]
            v, layer, head = max(flat)
            cells.append(f"L{layer}H{head} {v:.2f}")
        md.append(f"| {r['scaling']} | {r['accuracy']:.2f} | {r['digits']:.2f} | {r['key_logprob']:.2f} | "
                  + " | ".join(cells) + " |")
    return md


def steps_name(plot: str) -> str:
    stem, dot, ext = plot.rpartition(".")
    return f"{stem}-steps.{ext}" if dot else f"{plot}-steps"


def plot_steps(out: Path, path: str):
    """Passkey exact match against fine-tuning steps, one panel per evaluated length, one line per method."""
    plt = evaluate._pyplot()
    runs = {label: rows for name, label, _ in ROWS if (rows := eval_rows(out, name))}
    lengths = list(next(iter(runs.values()))[0]["eval"]["passkey"])
    fig, axes = plt.subplots(1, len(lengths), figsize=(6 * len(lengths), 4), squeeze=False)
    for ax, L in zip(axes[0], lengths):
        for label, rows in runs.items():
            ax.plot([r["step"] for r in rows], [r["eval"]["passkey"][L] for r in rows], marker="o", label=label)
        ax.set_title(f"passkey at {L} tokens")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("passkey exact match")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the panels, not over the lines
    fig.tight_layout()
    evaluate.write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def _options(run: Path) -> dict:
    """The resolved options train.py wrote to RUN/settings.json ({} for a run not there)."""
    path = run / "settings.json"
    return json.loads(path.read_text())["options"] if path.exists() else {}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the reproduce.sh output folder")
    p.add_argument("--into", type=Path, help="markdown file whose reproduce:begin/end block is replaced")
    p.add_argument("--plot", help="also draw perplexity and passkey accuracy vs length into this PNG")
    a = p.parse_args(argv)
    if not (a.out / "times.tsv").exists():
        sys.exit(f"error: {a.out}/times.tsv not found: not a reproduce.sh output folder")
    plot_link = None  # the image's path as the markdown file links it
    if a.plot:
        results = [r for name, *_ in ROWS for task in ("ppl", "passkey") if (r := load(a.out, name, task))]
        try:
            evaluate.plot_results(results, a.plot)
            if any(eval_rows(a.out, name) for name, *_ in ROWS):
                plot_steps(a.out, steps_name(a.plot))
            where = (a.into or a.out / "report.md").resolve().parent
            plot_link = os.path.relpath(Path(a.plot).resolve(), where)
        except ValueError as e:  # no matplotlib: the tables still get written
            print(f"no plot: {e}", file=sys.stderr)
    md = report(a.out, plot_link)
    (a.out / "report.md").write_text(md)
    if a.into:
        text = a.into.read_text()
        if BEGIN not in text or END not in text:
            sys.exit(f"error: {a.into} has no {BEGIN} ... {END} block")
        head, rest = text.split(BEGIN, 1)
        a.into.write_text(head + BEGIN + "\n" + md + END + rest.split(END, 1)[1])
    print(md)


if __name__ == "__main__":
    main()
