"""Properties of the PoSE sampler (paper §3.2, Eq. 3-5), its baselines and the coverage analysis (App. B)."""
import dataclasses
import functools
import itertools
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pose


@st.composite
def cases(draw):
    """Any valid (L_c, L_t, L_x, N, content, seed)."""
    content = draw(st.sampled_from(pose.CONTENT))
    window = draw(st.integers(2 if content == "released" else 1, 48))
    target = window + draw(st.integers(0, 200))
    doc_len = window + draw(st.integers(0, 300))
    chunks = 2 if content == "released" else draw(st.integers(1, window))
    return window, target, doc_len, chunks, content, draw(st.integers(0, 2**32 - 1))


def breaks(index, positions):
    """Slots k where token k+1 does not continue token k in position or in text: chunk boundaries."""
    return np.nonzero((np.diff(positions) != 1) | (np.diff(index) != 1))[0]


@settings(max_examples=300)
@given(cases())
def test_sample_is_n_contiguous_chunks_with_increasing_positions_and_indices(case):
    window, target, doc_len, chunks, content, seed = case
    index, positions = pose.sample(np.random.default_rng(seed), doc_len, window, target, chunks, content)
    assert index.dtype == positions.dtype == np.int64
    assert index.shape == positions.shape == (window,)
    assert positions[0] == 0
    assert np.all(np.diff(positions) >= 1) and positions[-1] < target      # no shared or reversed position
    assert np.all(np.diff(index) >= 1) and index[0] >= 0 and index[-1] < doc_len
    assert len(breaks(index, positions)) <= chunks - 1                      # contiguous inside each chunk
    if content == "released":
        assert index[-1] < 5 * window                                      # document truncated to 5 L_c


@settings(max_examples=100)
@given(cases())
def test_target_equal_to_window_gives_positions_0_to_window(case):
    window, _, doc_len, chunks, content, seed = case
    _, positions = pose.sample(np.random.default_rng(seed), doc_len, window, window, chunks, content)
    assert positions.tolist() == list(range(window))


@settings(max_examples=100)
@given(cases())
def test_same_rng_state_gives_same_sample(case):
    window, target, doc_len, chunks, content, seed = case
    a = pose.sample(np.random.default_rng(seed), doc_len, window, target, chunks, content)
    b = pose.sample(np.random.default_rng(seed), doc_len, window, target, chunks, content)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    a = pose.randpos(np.random.default_rng(seed), doc_len, window, target)
    b = pose.randpos(np.random.default_rng(seed), doc_len, window, target)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@settings(max_examples=100)
@given(cases())
def test_aligned_content_equals_positions_when_document_covers_target(case):
    window, target, _, chunks, _, seed = case
    index, positions = pose.sample(np.random.default_rng(seed), target + 5, window, target, chunks, "aligned")
    assert np.array_equal(index, positions)


@settings(max_examples=100)
@given(cases())
def test_randpos_positions_sorted_unique_in_range_and_text_contiguous(case):
    window, target, doc_len, _, _, seed = case
    index, positions = pose.randpos(np.random.default_rng(seed), doc_len, window, target)
    assert len(positions) == window and np.all(np.diff(positions) > 0)
    assert positions[0] >= 0 and positions[-1] < target
    assert np.all(np.diff(index) == 1) and index[0] >= 0 and index[-1] < doc_len


@settings(max_examples=50)
@given(cases())
def test_contiguous_is_positions_0_to_window_on_the_documents_first_tokens(case):
    window, target, doc_len, _, _, seed = case
    index, positions = pose.contiguous(np.random.default_rng(seed), doc_len, window)
    assert positions.tolist() == list(range(window)) and index.tolist() == list(range(window))
    index, positions = pose.randpos(np.random.default_rng(seed), doc_len, window, target)
    assert index.tolist() == list(range(window))  # the authors' truncation: the document's start


def test_random_start_crops_uniformly_over_every_start_that_fits():
    rng, doc_len, window = np.random.default_rng(0), 20, 8
    for draw in (lambda: pose.contiguous(rng, doc_len, window, random_start=True),
                 lambda: pose.randpos(rng, doc_len, window, 64, random_start=True)):
        starts = []
        for _ in range(6500):
            index, _ = draw()
            assert np.all(np.diff(index) == 1) and index[-1] < doc_len
            starts.append(index[0])
        counts = np.bincount(starts, minlength=doc_len - window + 1)
        assert len(counts) == doc_len - window + 1  # 0..12, never past the end
        expected = len(starts) / len(counts)
        assert ((counts - expected) ** 2 / expected).sum() < 32.9  # chi-square, 12 dof, p = 0.001


def distances(positions):
    """All relative distances p_j - p_i, i <= j, by brute force."""
    return {int(b - a) for i, a in enumerate(positions) for b in positions[i:]}


@pytest.mark.parametrize("chunks,content", [(2, "uniform"), (3, "zero"), (2, "released"), (None, "randpos")])
def test_enough_samples_cover_every_distance_32_to_256(chunks, content):
    rng, seen = np.random.default_rng(0), np.zeros(256, bool)
    for _ in range(6000):                              # ~(L_t-L_c+1) = 225 expected for N = 2
        if content == "randpos":
            _, pos = pose.randpos(rng, 300, 32, 256)
        else:
            _, pos = pose.sample(rng, 300, 32, 256, chunks, content)
        seen[(pos[None, :] - pos[:, None])[np.triu_indices(32)]] = True
        if seen[1:].all():
            break
    assert seen[1:].all(), np.nonzero(~seen)[0]


def exact_coverage(window, target, chunks):
    """P(distance d covered), enumerating every (cut points, u_1.., u_{N-1}) with its probability."""
    m, cover = target - window, np.zeros(target)
    cut_sets = list(itertools.combinations(range(1, window), chunks - 1))
    def walk(us, prob):                                 # u_i ~ U{u_{i-1}..m}, u_0 = 0 (Eq. 4)
        if len(us) == chunks:
            for cuts in cut_sets:                       # every composition equally likely
                edges = [0, *cuts, window]
                pos = [us[i] + s for i in range(chunks) for s in range(edges[i], edges[i + 1])]
                for d in distances(pos):
                    cover[d] += prob / len(cut_sets)
            return
        for u in range(us[-1], m + 1):
            walk(us + [u], prob / (m - us[-1] + 1))
    walk([0], 1.0)
    return cover


@pytest.mark.parametrize("window,target,chunks", [(5, 11, 1), (5, 11, 2), (6, 10, 3), (4, 9, 4)])
def test_coverage_agrees_with_brute_force_enumeration(window, target, chunks):
    got = pose.coverage(window, target, chunks, trials=40_000, seed=1)
    assert np.abs(got - exact_coverage(window, target, chunks)).max() < 0.02  # 5 sigma of Monte Carlo


def test_randpos_coverage_agrees_with_brute_force_over_all_subsets():
    subsets = list(itertools.combinations(range(9), 4))
    exact = np.zeros(9)
    for s in subsets:
        exact[list(distances(s))] += 1 / len(subsets)
    got = pose.coverage(4, 9, 4, trials=20_000, seed=2, randpos=True)
    assert np.abs(got - exact).max() < 0.025


def test_coverage_of_one_chunk_is_one_inside_window_and_zero_beyond():
    p = pose.coverage(64, 512, 1, trials=100, seed=0)
    assert np.all(p[:64] == 1) and np.all(p[64:] == 0)


def test_exact_probability_of_farthest_distance_matches_enumeration():
    for window, target, chunks in [(5, 11, 2), (6, 10, 3)]:
        exact = exact_coverage(window, target, chunks)[target - 1]
        assert math.isclose(pose.prob_last_skip_at_max(window, target, chunks), exact, rel_tol=1e-12)


def test_first_skip_is_uniform_on_0_to_target_minus_window_for_two_chunks():
    window, target, n = 8, 24, 3400                     # u_1 in {0..16}: 17 bins of 200 expected
    rng = np.random.default_rng(0)
    u1 = [pose.sample(rng, 50, window, target)[1][-1] - (window - 1) for _ in range(n)]  # last pos = u_1 + L_c - 1
    counts = np.bincount(u1, minlength=17)
    chi2 = ((counts - n / 17) ** 2 / (n / 17)).sum()
    assert len(counts) == 17 and chi2 < 50              # df = 16; P(chi2 > 50) ~ 2e-5


@pytest.mark.parametrize("window,doc_len,limit", [(8, 24, 50), (4, 60, 105)])  # df 16 / 56: P = 2e-5 / 8e-5
def test_content_offset_is_uniform_on_0_to_doc_len_minus_window_for_two_chunks(window, doc_len, limit):
    """Eq. 5: v_1 ~ U{0..L_x-L_c}, over the whole document (only "released" cuts it at 5 L_c)."""
    bins = doc_len - window + 1
    n = 200 * bins
    rng = np.random.default_rng(1)
    v1 = [pose.sample(rng, doc_len, window, 40)[0][-1] - (window - 1) for _ in range(n)]
    counts = np.bincount(v1, minlength=bins)
    assert len(counts) == bins and ((counts - n / bins) ** 2 / (n / bins)).sum() < limit


def first_chunk_lengths(content, window=8, n=3000):
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        index, positions = pose.sample(rng, 10_000, window, 10_000, 2, content)  # u_1 = 0 almost never
        b = breaks(index, positions)
        if len(b):
            out.append(int(b[0]) + 1)
    return set(out)


def test_chunk_lengths_reach_1_and_window_minus_1():
    assert {1, 7} <= first_chunk_lengths("uniform")


def test_released_first_chunk_never_longer_than_half_window_and_reaches_it():
    assert max(first_chunk_lengths("released")) == 4 and min(first_chunk_lengths("released")) == 1
    assert max(first_chunk_lengths("released", window=7)) == 4  # ceil(7 / 2)


@pytest.mark.parametrize("call,bad", [
    (lambda r: pose.sample(r, 100, 16, 8), "8"),                     # target < window
    (lambda r: pose.sample(r, 10, 16, 64), "10"),                    # doc_len < window
    (lambda r: pose.sample(r, 100, 16, 64, chunks=0), "0"),
    (lambda r: pose.sample(r, 100, 16, 64, chunks=17), "17"),
    (lambda r: pose.sample(r, 100, 16, 64, content="shuffled"), "shuffled"),
    (lambda r: pose.sample(r, 100, 16, 64, chunks=3, content="released"), "3"),
    (lambda r: pose.sample(r, 100, 0, 64), "0"),
    (lambda r: pose.randpos(r, 100, 16, 8), "8"),
    (lambda r: pose.randpos(r, 10, 16, 64), "10"),
    (lambda r: pose.contiguous(r, 10, 16), "10"),
    (lambda r: pose.coverage(16, 8, 2), "8"),
    (lambda r: pose.coverage(16, 64, 17), "17"),
    (lambda r: pose.coverage(16, 64, 2, trials=0), "trials must be >= 1, got 0"),
])
def test_every_invalid_argument_raises_value_error_naming_it(call, bad):
    with pytest.raises(ValueError, match=bad):
        call(np.random.default_rng(0))


def test_cli_prints_summary(capsys):
    assert pose.main(["--window", "32", "--target", "256", "--trials", "500", "--runs", "3"]) == 0
    out = capsys.readouterr().out
    assert "beyond L_c" in out and "least-covered distance" in out and "every distance is seen" in out


@pytest.mark.parametrize("argv", [["--target", "8", "--window", "16"], ["--chunks", "x"], ["--bogus"]])
def test_cli_bad_arguments_print_one_error_line_and_exit_2(argv, capsys):
    assert pose.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_cli_plot_writes_png_or_says_matplotlib_is_missing(tmp_path, capsys):
    out = tmp_path / "fig5.png"
    argv = ["--window", "16", "--target", "64", "--trials", "200", "--runs", "2", "--randpos-trials", "20"]
    assert pose.main(argv + ["--plot", str(out)]) == 0
    assert out.exists() or "matplotlib is not installed" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] in ([], ["fig5.png"])   # no temp file left behind


# ---------------------------------------------------------------- content modes (Eq. 5, App. A) and Fig. 1

@settings(max_examples=100)
@given(cases())
def test_zero_content_reads_the_documents_first_window_unbroken(case):
    window, target, doc_len, chunks, _, seed = case
    index, positions = pose.sample(np.random.default_rng(seed), doc_len, window, target, chunks, "zero")
    assert index.tolist() == list(range(window))     # v_i = 0: x[0:L_c], only the position ids jump


@settings(max_examples=150)
@given(cases())
def test_aligned_content_is_each_chunks_skip_clamped_at_the_documents_end(case):
    """App. A: v_i = u_i, i.e. a token's index equals its position id, clamped to v_i = min(u_i, L_x - L_c)."""
    window, target, doc_len, chunks, _, seed = case
    index, positions = pose.sample(np.random.default_rng(seed), doc_len, window, target, chunks, "aligned")
    slot = np.arange(window)
    u = positions - slot                               # repeat(u, l): each chunk's skip, token by token
    assert np.array_equal(index - slot, np.minimum(u, doc_len - window))


def test_aligned_content_clamps_late_chunks_to_the_documents_last_tokens():
    window, target, doc_len = 8, 64, 11               # the document ends 3 tokens past L_c
    rng, clamped = np.random.default_rng(5), 0
    for _ in range(200):
        index, positions = pose.sample(rng, doc_len, window, target, 2, "aligned")
        u_1 = positions[-1] - (window - 1)
        if u_1 > doc_len - window:                     # chunk 1 would read past the end: it takes the last tokens
            assert index[-1] == doc_len - 1 and index[0] == 0
            clamped += 1
        else:
            assert np.array_equal(index, positions)
    assert clamped > 150                               # P(u_1 > 3) = 53 / 57


@pytest.mark.parametrize("doc_len", [100, 12])
def test_released_content_offset_is_uniform_up_to_the_five_window_truncation(doc_len):
    """The authors' code: v_1 = rt2 - L_c with rt2 ~ U{L_c..min(L_x, 5 L_c)}, so v_1 ~ U{0..min(L_x, 5 L_c) - L_c}
    (0..20 for L_x = 100, 0..7 for L_x = 12 at L_c = 5); u_1 ~ U{0..L_t - L_c}; l_0 ~ U{1..ceil(L_c / 2)}."""
    window, target, n = 5, 21, 3400
    rng = np.random.default_rng(7)
    v1, u1, l0 = [], [], []
    for _ in range(n):
        index, positions = pose.sample(rng, doc_len, window, target, 2, "released")
        v1.append(index[-1] - (window - 1))
        u1.append(positions[-1] - (window - 1))
        jump = np.flatnonzero(np.diff(positions) != 1)
        if len(jump):
            l0.append(jump[0] + 1)
    top = min(doc_len, 5 * window) - window
    v1, u1, l0 = np.bincount(v1), np.bincount(u1), np.bincount(l0)[1:]
    assert len(v1) == top + 1 and ((v1 - n / (top + 1)) ** 2 / (n / (top + 1))).sum() < 50  # df 20 / 7: P = 2e-4 / 1e-8
    assert len(u1) == 17 and ((u1 - n / 17) ** 2 / (n / 17)).sum() < 50                     # df 16: P = 2e-5
    assert len(l0) == 3 and ((l0 - l0.sum() / 3) ** 2 / (l0.sum() / 3)).sum() < 23           # df 2: P = 1e-5


class Scripted:
    """A stand-in rng that returns chosen draws and checks the range each one is drawn from:
    draws = [(low, high exclusive, value), ...] in the order the sampler draws them."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def integers(self, low, high, size=None):
        want_low, want_high, value = self.draws.pop(0)
        assert np.all(np.asarray(low) == want_low) and np.all(np.asarray(high) == want_high), (low, high)
        return np.full(size if size is not None else np.broadcast(low, high).shape, value, dtype=np.int64)


def test_fig_1_worked_example_of_the_docstring():
    """pose.py's docstring: L_c = 2,048 -> L_t = 8,192, N = 2, L_x = 10,000; l_0 = 1,000, u_1 = 3,000, v_1 = 5,000."""
    rng = Scripted((1, 2048, 1000),         # Eq. 3: l_0 ~ U{1..L_c-1}
                   (0, 6145, 3000),         # Eq. 4: u_1 ~ U{u_0..L_t-L_c} = U{0..6,144}
                   (0, 7953, 5000))         # Eq. 5: v_1 ~ U{v_0..L_x-L_c} = U{0..7,952}
    index, positions = pose.sample(rng, 10_000, 2048, 8192, 2, "uniform")
    assert rng.draws == []
    assert positions.tolist() == [*range(0, 1000), *range(4000, 5048)]  # chunk 1: 3,000+1,000 .. 3,000+2,047
    assert index.tolist() == [*range(0, 1000), *range(6000, 7048)]      # x[0:1000] and x[6000:7048]
    seen = np.zeros(8192, bool)
    for i in range(len(positions) - 1):
        seen[positions[i + 1:] - positions[i]] = True
    assert np.flatnonzero(seen).tolist() == [*range(1, 1048), *range(3001, 5048)]  # 1..1,047 and 3,001..5,047


@pytest.mark.parametrize("chunks", [3, 4])
def test_chunk_lengths_of_three_or_more_chunks_are_every_composition_equally_likely(chunks):
    """The docstring's rule for N >= 3: N-1 distinct cut points of {1..L_c-1}, uniformly: each of the C(5, N-1)
    compositions of L_c = 6 into N positive lengths has probability 1 / C(5, N-1)."""
    window, n = 6, 5000
    l, _ = pose._layout(np.random.default_rng(11), n, window, 100, chunks)
    assert (l >= 1).all() and (l.sum(axis=1) == window).all()
    compositions = [c for c in itertools.product(range(1, window), repeat=chunks) if sum(c) == window]
    assert len(compositions) == math.comb(window - 1, chunks - 1) == 10
    counts = [int((l == c).all(axis=1).sum()) for c in compositions]
    assert sum(counts) == n and ((np.array(counts) - n / 10) ** 2 / (n / 10)).sum() < 35  # df 9: P = 6e-5


# ---------------------------------------------------------------- App. B: examples until every distance is seen

def example_covers(window, target, chunks):
    """{set of distances one example covers, as a bit mask: probability}, enumerating Eq. 3-4 like exact_coverage."""
    m, law = target - window, {}
    cut_sets = list(itertools.combinations(range(1, window), chunks - 1))
    def walk(us, prob):
        if len(us) == chunks:
            for cuts in cut_sets:
                edges = [0, *cuts, window]
                pos = [us[i] + s for i in range(chunks) for s in range(edges[i], edges[i + 1])]
                mask = sum(1 << d for d in distances(pos))
                law[mask] = law.get(mask, 0.0) + prob / len(cut_sets)
            return
        for u in range(us[-1], m + 1):
            walk(us + [u], prob / (m - us[-1] + 1))
    walk([0], 1.0)
    return law


def examples_until_full_law(window, target, chunks):
    """Mean and standard deviation of T = examples until every distance 0..L_t-1 is covered, exactly: a Markov
    chain over covered sets S, E[T | S] = (1 + sum_c p_c E[T | S + c]) / (1 - P(c within S)), and likewise E[T^2]."""
    law, full = list(example_covers(window, target, chunks).items()), (1 << target) - 1

    @functools.cache
    def moments(s):
        if s == full:
            return 0.0, 0.0
        stay = sum(p for c, p in law if c | s == s)
        grow = [(p, moments(c | s)) for c, p in law if c | s != s]
        t1 = (1 + sum(p * e1 for p, (e1, _) in grow)) / (1 - stay)
        t2 = (1 + sum(p * (2 * e1 + e2) for p, (e1, e2) in grow) + 2 * stay * t1) / (1 - stay)  # T = 1 + T'
        return t1, t2

    t1, t2 = moments(0)
    return t1, math.sqrt(t2 - t1 * t1)


@pytest.mark.parametrize("window,target,chunks,batch", [(4, 8, 2, 3), (4, 9, 3, 2), (3, 7, 2, 64)])
def test_examples_until_full_follows_the_exact_law(window, target, chunks, batch):
    """Over 1,000 simulated runs the mean of T is within 5 standard errors of its exact value (small batches, so
    runs cross batch boundaries and the bisection inside a batch is exercised)."""
    mean, sd = examples_until_full_law(window, target, chunks)
    t = pose.examples_until_full(window, target, chunks, runs=1000, seed=4, batch=batch)
    assert t.shape == (1000,) and (t >= 1).all() and (t == np.round(t)).all()
    assert abs(t.mean() - mean) < 5 * sd / math.sqrt(len(t)), (t.mean(), mean)
    assert t.std() == pytest.approx(sd, rel=0.15)


def test_examples_until_full_with_one_chunk():
    assert pose.examples_until_full(4, 8, 1, runs=3).tolist() == [math.inf] * 3  # never past L_c
    assert pose.examples_until_full(4, 4, 1, runs=3).tolist() == [1.0] * 3       # one example covers 0..L_c-1


def test_defaults_are_the_command_lines_and_seed_0():
    opt = pose.Options()
    assert np.array_equal(pose.coverage(8, 32, 2), pose.coverage(8, 32, 2, opt.trials, seed=0, batch=4096))
    assert np.array_equal(pose.coverage(4, 9, 4, randpos=True), pose.coverage(4, 9, 4, opt.trials, 0, randpos=True))
    assert np.array_equal(pose.examples_until_full(4, 8, 2), pose.examples_until_full(4, 8, 2, opt.runs, 0, 4096))


def test_coverage_takes_any_number_of_trials_and_chunks_and_every_example_covers_distance_0():
    assert pose.coverage(4, 8, 2, trials=1)[0] == 1.0
    # RandPos at L_t = 2^20 draws 4 examples per FFT batch: 10 trials span three batches, the last one partial
    p = pose.coverage(4, 2**20, 4, trials=10, seed=0, randpos=True)
    assert p[0] == 1.0 and p.max() == 1.0 and np.allclose(p * 10, np.round(p * 10))
    assert 0 < p[1:].sum() <= 6                            # at most C(4, 2) = 6 distances > 0 per example
    many = pose.coverage(64, 128, 50, trials=5, seed=0)     # N(N+1)/2 = 1275 ranges per example: smaller batches
    assert many[0] == 1.0 and ((many * 5) == np.round(many * 5)).all()


# ---------------------------------------------------------------- the command line: summary, --help, --plot

def summary_numbers(lines):
    return [[float(x) for x in re.findall(r"-?\d[\d,]*\.?\d*(?:e[-+]\d+)?|nan", line.replace(",", ""))]
            for line in lines]


def test_summary_reports_the_exact_numbers_of_app_b():
    """L_c = 4 -> L_t = 8, N = 2, against the enumeration written here: coverage 1, 1, .8, .6 | .6, .6, .4, .2,
    the least-covered distance 7 (u_1 = 4, p = 1/5 exactly), and E[T] from the Markov chain."""
    opt = pose.Options(window=4, target=8, chunks=2, trials=20_000, runs=400, seed=0)
    lines = pose.summary(opt)
    exact, (mean_t, sd_t) = exact_coverage(4, 8, 2), examples_until_full_law(4, 8, 2)
    assert lines[0] == "PoSE 4 -> 8, N = 2, 20000 examples (Monte Carlo, exact per example)"
    assert lines[1].startswith("mean coverage, distances 1..3 (inside L_c): ")
    assert lines[2].startswith("mean coverage, distances 4..7 (beyond L_c): ")
    assert lines[3].startswith("least-covered distance: 7, p = ") and lines[3].endswith(" of 20000)")
    assert lines[4] == "exact p(distance 7) = P(u_(N-1) = L_t-L_c) = 2.000e-01"
    assert lines[5].endswith("(mean +- s.e. of 400 simulated runs)") and len(lines) == 6
    n = summary_numbers(lines)
    assert n[1][-1] == pytest.approx(exact[1:4].mean(), abs=0.01)
    assert n[2][-1] == pytest.approx(exact[4:].mean(), abs=0.01)
    assert n[3][1] == pytest.approx(0.2, abs=0.01) and n[3][2] == pytest.approx(n[3][1] * 20_000, abs=1)
    t, se = n[5][0], n[5][1]  # printed as whole numbers: 6 +- 0
    assert abs(t - mean_t) < 5 * sd_t / 20 + 0.5 and abs(se - sd_t / 20) <= 0.5


@pytest.mark.filterwarnings("error")  # no numpy warning (mean of nothing, std of one run) reaches the user
@pytest.mark.parametrize("window,target,chunks,runs,want", [
    (4, 4, 2, 1, ["distances 1..3 (inside L_c): 1.0000", "least-covered distance: 1,", "exact p(distance 3)",
                  "seen: 1 +- nan (mean +- s.e. of 1 simulated runs)"]),            # L_t = L_c: no "beyond" line
    (4, 8, 1, 2, ["distances 4..7 (beyond L_c): 0.0000",
                  "examples until every distance is seen: never (N = 1 cannot skip past L_c)"]),
    (1, 2, 1, 2, ["distances 1..0 (inside L_c): 1.0000", "least-covered distance: 1, p = 0.00e+00 (0 of 2000)"]),
    (1, 1, 1, 2, ["least-covered distance: 0, p = 1.00e+00 (2000 of 2000)", "seen: 1 +- 0 (mean"]),
    (2, 5, 2, 2, ["distances 1..1 (inside L_c): 0.2"]),                              # p(1) = 1/4: u_1 = 0 only
])
def test_summary_edge_cases(window, target, chunks, runs, want):
    lines = pose.summary(pose.Options(window=window, target=target, chunks=chunks, trials=2000, runs=runs))
    assert len(lines) == 5 + (target > window)
    for needle in want:
        assert any(needle in line for line in lines), (needle, lines)
    assert lines[-1].startswith("examples until every distance is seen: ")


@pytest.mark.parametrize("field", ["trials", "runs", "randpos_trials"])
def test_summary_needs_at_least_one_trial_of_each_kind(field):
    assert pose.summary(pose.Options(window=4, target=8, trials=1, runs=1, randpos_trials=1))
    opt = pose.Options(window=4, target=8, **{field: 0})
    with pytest.raises(ValueError, match=re.escape(f"trials, runs, randpos_trials must be >= 1, got {opt.trials}, "
                                                   f"{opt.runs}, {opt.randpos_trials}")):
        pose.summary(opt)


def test_summary_estimates_follow_the_seed():
    lines = {seed: pose.summary(pose.Options(window=4, target=32, trials=500, runs=30, seed=seed)) for seed in (0, 7)}
    assert lines[7] == pose.summary(pose.Options(window=4, target=32, trials=500, runs=30, seed=7))
    assert lines[7][1] != lines[0][1] and lines[7][-1] != lines[0][-1]  # coverage and T both drawn from the seed


def test_cli_prints_exactly_the_summary_and_help_names_every_option(capsys):
    argv = ["--window", "4", "--target", "8", "--trials", "300", "--runs", "3"]
    assert pose.main(argv) == 0
    opt = pose.Options(window=4, target=8, trials=300, runs=3)
    assert capsys.readouterr().out == "\n".join(pose.summary(opt)) + "\n"
    with pytest.raises(SystemExit):
        pose.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "\n\nPoSE coverage analysis (App. B)\n\n" in out
    assert all(f.metadata["help"] in out.replace("\n ", " ").replace("  ", " ")
               for f in dataclasses.fields(pose.Options))
    assert pose.main(["--chunks", "x"]) == 2
    assert capsys.readouterr().err == "error: argument --chunks: invalid int value: 'x'\n"


class RecordingPyplot:
    """Stands in for matplotlib (not a dependency): records the backend, the curves, the axes and the file."""

    def __init__(self):
        self.backend, self.curves, self.calls, self.style = None, {}, {}, {}
        test = self

        class Axes:
            def plot(self, x, y, **kw):
                test.curves[kw.get("label")] = (np.asarray(x), np.asarray(y))
                test.style[kw.get("label")] = kw.get("lw")

            def __getattr__(self, name):
                return lambda *a, **kw: test.calls.setdefault(name, (a, kw))

        class Figure:
            def savefig(self, path, **kw):
                assert str(path).endswith(".png")  # matplotlib infers the format from the suffix
                test.style["savefig"] = kw
                Path(path).write_bytes(b"png")

        self.figure, self.axes = Figure(), Axes()

    def use(self, backend):
        self.backend = backend

    def subplots(self, **kw):
        self.style["subplots"] = kw
        return self.figure, self.axes


def test_plot_draws_fig_5s_four_curves_into_the_file(tmp_path, monkeypatch, capsys):
    plt = RecordingPyplot()
    module = types.SimpleNamespace(use=plt.use, pyplot=plt)
    monkeypatch.setitem(sys.modules, "matplotlib", module)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", plt)
    out = tmp_path / "fig5.png"
    assert pose.main(["--window", "5", "--target", "11", "--trials", "20000", "--runs", "2", "--randpos-trials",
                      "20000", "--seed", "3", "--plot", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert out.read_bytes() == b"png" and [p.name for p in tmp_path.iterdir()] == ["fig5.png"]
    assert plt.backend == "Agg" and list(plt.curves) == ["N = 1", "N = 2", "N = 3", "RandPos"]
    for n in (1, 2, 3):
        x, y = plt.curves[f"N = {n}"]
        assert x.tolist() == list(range(11)) and np.abs(y - exact_coverage(5, 11, n)).max() < 0.02
        assert np.array_equal(y, pose.coverage(5, 11, n, 20000, seed=3))  # the command line's seed
    subsets = list(itertools.combinations(range(11), 5))
    exact = np.zeros(11)
    for s in subsets:
        exact[list(distances(s))] += 1 / len(subsets)
    x, y = plt.curves["RandPos"]
    assert x.tolist() == list(range(11)) and np.abs(y - exact).max() < 0.02
    assert np.array_equal(y, pose.coverage(5, 11, 5, 20000, seed=3, randpos=True))
    assert plt.calls["axvline"] == ((5,), {"color": "gray", "ls": ":"})  # L_c marked
    # the figure's style, pinned as a golden spec (change it here when the figure changes)
    assert plt.style == {"subplots": {"figsize": (7, 3.5)}, "N = 1": 0.8, "N = 2": 0.8, "N = 3": 0.8, "RandPos": 0.8,
                         "savefig": {"dpi": 150, "bbox_inches": "tight"}}
    assert plt.calls["set"][1] == {"xlabel": "relative distance", "ylabel": "coverage probability", "yscale": "log",
                                   "title": "5 -> 11: one training example"}


def test_plot_without_matplotlib_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "fig5.png"
    assert pose.main(["--window", "5", "--target", "11", "--trials", "200", "--runs", "2", "--plot", str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote" not in captured.out and list(tmp_path.iterdir()) == []
    assert captured.err == f"note: matplotlib is not installed; skipped --plot {out}\n"
