"""Properties of the PoSE sampler (paper §3.2, Eq. 3-5), its baselines and the coverage analysis (App. B)."""
import itertools
import math

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


def test_content_offset_is_uniform_on_0_to_doc_len_minus_window_for_two_chunks():
    window, doc_len, n = 8, 24, 3400
    rng = np.random.default_rng(1)
    v1 = [pose.sample(rng, doc_len, window, 40)[0][-1] - (window - 1) for _ in range(n)]
    counts = np.bincount(v1, minlength=17)
    assert len(counts) == 17 and ((counts - n / 17) ** 2 / (n / 17)).sum() < 50


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
