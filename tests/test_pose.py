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
