"""Time the PoSE sampler and the coverage analysis; prints the markdown table of BENCHMARKS.md.

    python benchmarks/bench_pose.py
    python benchmarks/bench_pose.py --repeats 2000 --out pose-timings.md   # also write it to a file
"""
import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pose  # noqa: E402


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def best_of(fn, repeats, rounds=5):
    """Best mean seconds per call over `rounds` rounds of `repeats` calls (least disturbed by neighbours)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - t) / repeats)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    lc, lt, lx = 2048, 16384, 5 * 2048
    each = {f"`sample(rng, {lx}, {lc}, {lt}, 2, {c!r})`": (lambda c=c: pose.sample(rng, lx, lc, lt, 2, c))
            for c in pose.CONTENT}
    each[f"`sample(rng, {lx}, {lc}, {lt}, 3)`"] = lambda: pose.sample(rng, lx, lc, lt, 3)
    each[f"`randpos(rng, {lx}, {lc}, {lt})`"] = lambda: pose.randpos(rng, lx, lc, lt)
    once = {"`coverage(2048, 131072, 2, 10000)`": lambda: pose.coverage(2048, 131072, 2, 10_000),
            "`coverage(2048, 16384, 3, 10000)`": lambda: pose.coverage(2048, 16384, 3, 10_000),
            "`coverage(2048, 16384, 2048, 200, randpos=True)`":
                lambda: pose.coverage(2048, 16384, 2048, 200, randpos=True),
            "`examples_until_full(2048, 16384, 2, runs=20)`": lambda: pose.examples_until_full(2048, 16384, 2, 20)}
    rows = [(what, best_of(fn, args.repeats) * 1e6, "µs") for what, fn in each.items()]
    rows += [(what, best_of(fn, 1, 3) * 1e3, "ms") for what, fn in once.items()]
    lines = ["# pose.py timings", "",
             f"Command: `python benchmarks/bench_pose.py --repeats {args.repeats}`  ",
             f"Machine: {os.cpu_count()}-core CPU ({cpu_name()}), no GPU, shared with other jobs; "
             f"Python {platform.python_version()}, numpy {np.__version__}. Best of 5 rounds (3 for ms rows).", "",
             "| what | time | unit |", "|---|---:|---|"]
    lines += [f"| {what} | {t:,.1f} | {unit} |" for what, t, unit in rows]
    text = "\n".join(lines) + "\n"
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)
    print(text)


if __name__ == "__main__":
    main()
