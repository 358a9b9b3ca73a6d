"""PoSE: positional skip-wise training examples (§3.2, Eq. 3-5; App. A, B), the baselines, and coverage.

    python pose.py --window 2048 --target 16384 --chunks 2       # coverage summary (App. B)
    python pose.py --window 2048 --target 16384 --plot fig5.png  # + Fig. 5 (needs matplotlib)
    python -m pytest tests/test_pose.py -q                       # the sampler's guarantees, proved

Fig. 1 by hand: extend L_c = 2,048 to L_t = 8,192 with N = 2 chunks, on a document of L_x = 10,000 tokens.
  Eq. 3  cut the window: l_0 = 1,000, l_1 = 1,048, so st_0 = 0, st_1 = 1,000.
  Eq. 4  skips: u_0 = 0, u_1 ~ U{0..L_t-L_c} = U{0..6,144}; say u_1 = 3,000. Chunk 0 gets position ids
         0..999, chunk 1 gets 3,000+1,000 .. 3,000+2,047 = 4,000..5,047. Relative distances seen: 1..1,047
         inside the chunks, 3,001..5,047 (= u_1+1 .. u_1+L_c-1) across them. A fresh draw of l_i and u_i
         for every example moves these ranges, so over many examples every distance 1..8,191 is trained.
  Eq. 5  content: v_0 = 0, v_1 ~ U{0..L_x-L_c} = U{0..7,952}; say v_1 = 5,000. Chunk 0 holds x[0:1000],
         chunk 1 holds x[6000:7048]: the model reads real text, only its position ids jump.
Both equations collapse to one line each: positions = arange(L_c) + repeat(u, l), index = arange(L_c) +
repeat(v, l), because st_i + k is simply the token's slot in the window.

Read: example (one training example, tokens, labels and positions, of PoSE or a baseline), sample (Eq. 3-5),
randpos and contiguous (the baselines), then coverage and examples_until_full (App. B) and the CLI.
docs/pose.md: App. A's content modes, the authors' released sampler (--content released) and where it differs
from the paper, chunk lengths for N >= 3.
"""
import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field

import numpy as np

CONTENT = ("uniform", "zero", "aligned", "released")


def _check(doc_len, window, target, chunks, content):
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if target < window:
        raise ValueError(f"target {target} < window {window}: PoSE extends, it never shrinks")
    if doc_len < window:
        raise ValueError(f"doc_len {doc_len} < window {window}: document too short for one example")
    if not 1 <= chunks <= window:
        raise ValueError(f"chunks must be in 1..window={window}, got {chunks}")
    if content not in CONTENT:
        raise ValueError(f"unknown content mode {content!r}; choose from {CONTENT}")
    if content == "released" and chunks != 2:
        raise ValueError(f"content 'released' supports chunks=2 only, got {chunks}")


def _skips(rng, trials, n, hi):
    """u_0 = 0, u_i ~ U{u_{i-1}..hi} (Eq. 4; the same chain gives v_i in Eq. 5) -> [trials, n]."""
    u = np.zeros((trials, n), dtype=np.int64)
    for i in range(1, n):  # sequential by definition; vectorised over trials
        u[:, i] = rng.integers(u[:, i - 1], hi + 1)
    return u


def _layout(rng, trials, window, target, chunks, released=False):
    """Chunk lengths l_i (Eq. 3) and skips u_i (Eq. 4) of `trials` examples -> l, u each [trials, N]."""
    if chunks == 1:
        cuts = np.zeros((trials, 0), dtype=np.int64)
    elif chunks == 2:  # Fig. 6: l_0 ~ U{1..L_c-1}; released code: l_0 ~ U{1..ceil(L_c/2)}
        cuts = rng.integers(1, (window + 1) // 2 + 1 if released else window, size=(trials, 1))
    else:  # N-1 distinct cut points of {1..L_c-1}: the smallest N-1 of L_c-1 random keys
        keys = rng.random((trials, window - 1))
        cuts = np.sort(np.argpartition(keys, chunks - 2, axis=1)[:, : chunks - 1], axis=1) + 1
    edges = np.concatenate([np.zeros((trials, 1), np.int64), cuts, np.full((trials, 1), window)], axis=1)
    return np.diff(edges, axis=1), _skips(rng, trials, chunks, target - window)



def example(rng, doc, method="pose", window=2048, target=16384, chunks=2, content="uniform", crop=False):
    """One training example of the token ids `doc`: (tokens, labels, positions), each int64 [L].

    method: "pose" (sample: L = the window, positions skipped by Eq. 4), "randpos" (random sorted positions in
    0..L_t-1), "full" (contiguous, L = min(L_x - 1, L_t)) or "plain" (contiguous, L = the window); crop: where
    full / plain / randpos windows begin (see contiguous).

    Labels: every position's label is the document's true next token, x[index + 1]. Where Eq. 5 skips text
    (v_1 > v_0), the token after a chunk's last one in the window is not its successor in the text, so the usual
    "shift the window by one" would teach the model to predict an unrelated token. Indices are drawn from
    doc[:-1], so x[index + 1] always exists and every position is scored. (The authors' code shifts the window:
    docs/pose.md.)"""
    n = len(doc) - 1
    if method == "pose":
        index, positions = sample(rng, n, window, target, chunks, content)
    elif method == "randpos":
        index, positions = randpos(rng, n, window, target, crop)
    else:  # full-length fine-tuning trains at up to L_t tokens, plain at the window
        index, positions = contiguous(rng, n, min(n, target) if method == "full" else window, crop)
    return doc[index], doc[index + 1], positions


def sample(rng, doc_len, window, target, chunks=2, content="uniform"):
    """One PoSE example: token indices into the document and their position ids, both int64 [L_c]."""
    _check(doc_len, window, target, chunks, content)
    released = content == "released"
    l, u = _layout(rng, 1, window, target, chunks, released)
    l, u = l[0], u[0]
    slot = np.arange(window, dtype=np.int64)       # st_i + k for the k-th token of chunk i (Eq. 3)
    positions = slot + np.repeat(u, l)             # Eq. 4: u_i + st_i + k
    if content == "zero":
        v = np.zeros_like(u)                       # App. A: v_i = 0, unbroken text
    elif content == "aligned":
        v = np.minimum(u, doc_len - window)        # App. A: v_i = u_i, clamped to the document's end
    else:
        doc = min(doc_len, 5 * window) if released else doc_len  # released code truncates to 5 L_c
        v = _skips(rng, 1, chunks, doc - window)[0]  # Eq. 5: v_i ~ U{v_{i-1}..L_x-L_c}
    return slot + np.repeat(v, l), positions       # Eq. 5: x[v_i + st_i + k]


def _start(rng, doc_len, window, random_start):
    """Where a contiguous window begins: 0, as the authors' tokeniser cuts every document
    (`truncation=True, max_length=L`), or uniformly anywhere it fits (a random crop)."""
    return int(rng.integers(0, doc_len - window + 1)) if random_start else 0


def randpos(rng, doc_len, window, target, random_start=False):
    """RandPos (Ruoss et al.): contiguous text, positions a sorted random L_c-subset of {0..L_t-1}.
    The text is the document's first L_c tokens unless random_start (see `contiguous`)."""
    _check(doc_len, window, target, 1, "uniform")
    start = _start(rng, doc_len, window, random_start)
    positions = np.sort(rng.choice(target, size=window, replace=False)).astype(np.int64)
    return np.arange(start, start + window, dtype=np.int64), positions


def contiguous(rng, doc_len, window, random_start=False):
    """Plain fine-tuning (positions 0..L_c-1); with window = L_t it is full-length fine-tuning.

    The window is the document's first `window` tokens, as in the authors' code for every method and as
    PoSE's chunk 0 (v_0 = 0): token 0 is then the document's BOS at position id 0, which is also what
    evaluation puts in front of every window. random_start=True takes a uniform random crop instead. It is
    not the default because a crop almost never starts with BOS at position 0, so a baseline trained on
    crops would be scored on an input it rarely saw while PoSE saw it every step; it is useful when many
    epochs over few documents would otherwise repeat the same windows."""
    _check(doc_len, window, window, 1, "uniform")
    start = _start(rng, doc_len, window, random_start)
    return np.arange(start, start + window, dtype=np.int64), np.arange(window, dtype=np.int64)


def _pieces(l, u):
    """Covered relative distances of each example as disjoint integer ranges (App. B).

    Chunk i spans positions a_i..b_i. Its own pairs give distances 0..l_i-1; chunks i < j give every
    integer a_j-b_i .. b_j-a_i. Sort each example's ranges by start and drop what earlier ranges
    already cover -> (example id, start, end) of disjoint pieces, flattened."""
    trials, n = l.shape
    a = u + np.cumsum(l, axis=1) - l               # a_i = u_i + st_i
    b = a + l - 1
    i, j = np.triu_indices(n, 1)
    lo = np.concatenate([np.zeros_like(l), a[:, j] - b[:, i]], axis=1)   # [trials, n + n(n-1)/2]
    hi = np.concatenate([l - 1, b[:, j] - a[:, i]], axis=1)
    order = np.argsort(lo, axis=1)
    lo, hi = np.take_along_axis(lo, order, 1), np.take_along_axis(hi, order, 1)
    reach = np.maximum.accumulate(hi, axis=1)      # furthest distance covered by ranges 0..k
    start = np.maximum(lo, np.concatenate([np.full((trials, 1), -1), reach[:, :-1]], axis=1) + 1)
    keep = hi >= start
    return np.nonzero(keep)[0], start[keep], hi[keep]


def _count(start, end, size):
    """How many pieces cover each distance 0..size-1 (difference array)."""
    diff = np.bincount(start, minlength=size + 1) - np.bincount(end + 1, minlength=size + 1)
    return np.cumsum(diff)[:size]


def coverage(window, target, chunks, trials=10_000, seed=0, randpos=False, batch=4096):
    """P(one example covers relative distance d), d = 0..L_t-1 -> float64 [L_t] (App. B, Fig. 5).

    Monte Carlo over `trials` examples like Fig. 6, but each example's covered set is computed exactly
    as a union of ranges: O(trials * N^2), no L_c^2 pair loop. randpos=True measures RandPos instead
    (chunks is then ignored; PoSE with N = L_c is not RandPos: its skips are Eq. 4's chain, not a
    uniform subset): one FFT autocorrelation of the position indicator per example, O(L_t log L_t)."""
    _check(window, window, target, chunks, "uniform")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    rng, hits = np.random.default_rng(seed), np.zeros(target)
    if randpos:
        rows = max(1, 2**22 // target)                          # [rows, 2 L_t] float64: 64 MiB
        for lo in range(0, trials, rows):
            n = min(trials - lo, rows)
            mark = np.zeros((n, target))
            for row in mark:
                row[rng.choice(target, size=window, replace=False)] = 1.0
            f = np.fft.rfft(mark, n=2 * target, axis=1)
            pairs = np.fft.irfft(f * f.conj(), n=2 * target, axis=1)[:, :target]  # pairs[d] = #{p, p+d}
            hits += (pairs > 0.5).sum(axis=0)
        return hits / trials
    batch = max(1, min(batch, 2**22 // (chunks * (chunks + 1) // 2)))  # [batch, N(N+1)/2] ranges
    for lo in range(0, trials, batch):
        _, start, end = _pieces(*_layout(rng, min(batch, trials - lo), window, target, chunks))
        hits += _count(start, end, target)
    return hits / trials


def _covers_all(seen, pieces, k, target):
    """Do the distances seen so far plus those of a batch's first k examples cover every one of 0..L_t-1?"""
    ex, start, end = pieces
    m = ex < k
    return (seen | (_count(start[m], end[m], target) > 0)).all()


def examples_until_full(window, target, chunks, runs=20, seed=0, batch=4096):
    """Examples drawn until every distance 0..L_t-1 has been covered once, for `runs` independent runs.

    Simulated directly: the coupon-collector formula with independent distances is badly wrong here,
    because one draw of u_{N-1} = L_t-L_c covers the whole far tail at once."""
    if chunks == 1 and target > window:
        return np.full(runs, np.inf)   # distances >= L_c are never seen
    rng, out = np.random.default_rng(seed), np.zeros(runs)
    for r in range(runs):
        seen, drawn = np.zeros(target, bool), 0
        while True:
            pieces = _pieces(*_layout(rng, batch, window, target, chunks))
            if _covers_all(seen, pieces, batch, target):
                lo, hi = 1, batch      # bisect the first k that completes the set
                while lo < hi:
                    k = (lo + hi) // 2
                    lo, hi = (lo, k) if _covers_all(seen, pieces, k, target) else (k + 1, hi)
                out[r] = drawn + lo
                break
            seen |= _count(pieces[1], pieces[2], target) > 0
            drawn += batch
    return out


def prob_last_skip_at_max(window, target, chunks):
    """Exact P(u_{N-1} = L_t-L_c) = P(distance L_t-1 covered), by dynamic programming over Eq. 4's chain."""
    m = target - window
    p = np.zeros(m + 1)
    p[0] = 1.0                                     # u_0 = 0
    for _ in range(1, chunks):
        # P(u_i = w) = sum_{v <= w} P(u_{i-1} = v) / (m - v + 1)
        p = np.cumsum(p / (m + 1 - np.arange(m + 1)))
    return p[m]


def plot_coverage(path, window, target, trials, seed, randpos_trials):
    """Fig. 5: coverage per distance for N = 1, 2, 3 and RandPos; written to a temp name, then renamed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"note: matplotlib is not installed; skipped --plot {path}", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 3.5))
    d = np.arange(target)
    for n in (1, 2, 3):
        ax.plot(d, coverage(window, target, n, trials, seed), lw=0.8, label=f"N = {n}")
    ax.plot(d, coverage(window, target, window, randpos_trials, seed, randpos=True), lw=0.8, label="RandPos")
    ax.axvline(window, color="gray", ls=":")
    ax.set(xlabel="relative distance", ylabel="coverage probability", yscale="log",
           title=f"{window} -> {target}: one training example")
    ax.legend()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=150, bbox_inches="tight")
    os.replace(tmp, path)
    return True


@dataclass
class Options:
    window: int = field(default=2048, metadata={"help": "training window L_c"})
    target: int = field(default=16384, metadata={"help": "target context L_t"})
    chunks: int = field(default=2, metadata={"help": "number of chunks N"})
    trials: int = field(default=10_000, metadata={"help": "Monte Carlo examples for coverage()"})
    runs: int = field(default=20, metadata={"help": "independent runs for examples-until-every-distance"})
    randpos_trials: int = field(default=200, metadata={"help": "RandPos examples for the plot"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    plot: str = field(default="", metadata={"help": "write a Fig. 5-like PNG here (needs matplotlib)"})


def summary(opt):
    """The CLI's report as a list of lines."""
    _check(opt.window, opt.window, opt.target, opt.chunks, "uniform")
    if min(opt.trials, opt.runs, opt.randpos_trials) < 1:
        raise ValueError(f"trials, runs, randpos_trials must be >= 1, got {opt.trials}, {opt.runs}, "
                         f"{opt.randpos_trials}")
    lc, lt, n = opt.window, opt.target, opt.chunks
    p = coverage(lc, lt, n, opt.trials, opt.seed)
    d = 1 + int(np.argmin(p[1:])) if lt > 1 else 0
    lines = [f"PoSE {lc} -> {lt}, N = {n}, {opt.trials} examples (Monte Carlo, exact per example)",
             f"mean coverage, distances 1..{lc - 1} (inside L_c): {p[1:lc].mean() if lc > 1 else 1.0:.4f}"]
    if lt > lc:
        lines.append(f"mean coverage, distances {lc}..{lt - 1} (beyond L_c): {p[lc:].mean():.4f}")
    lines += [f"least-covered distance: {d}, p = {p[d]:.2e} ({round(p[d] * opt.trials)} of {opt.trials})",
              f"exact p(distance {lt - 1}) = P(u_(N-1) = L_t-L_c) = {prob_last_skip_at_max(lc, lt, n):.3e}"]
    t = examples_until_full(lc, lt, n, opt.runs, opt.seed)
    if np.isinf(t).any():
        return lines + ["examples until every distance is seen: never (N = 1 cannot skip past L_c)"]
    se = t.std(ddof=1) / np.sqrt(len(t)) if len(t) > 1 else float("nan")
    return lines + [f"examples until every distance is seen: {t.mean():,.0f} +- {se:,.0f} "
                    f"(mean +- s.e. of {len(t)} simulated runs)"]


def main(argv=None):
    parser = argparse.ArgumentParser(description="PoSE coverage analysis (App. B)")
    for f in dataclasses.fields(Options):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                            help=f.metadata["help"])

    def fail(msg):
        raise ValueError(msg)
    parser.error = fail      # argparse would print usage + exit; we want one `error:` line, exit 2
    try:
        opt = Options(**vars(parser.parse_args(argv)))
        print("\n".join(summary(opt)))
        if opt.plot and plot_coverage(opt.plot, opt.window, opt.target, opt.trials, opt.seed,
                                      opt.randpos_trials):
            print(f"wrote {opt.plot}")
    except (ValueError, OSError) as e:   # OSError: --plot into a missing folder
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
