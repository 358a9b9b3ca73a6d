"""train.make_batch: the stream of training examples each method feeds the model, pinned against rules written here.

    python -m pytest tests/test_batch.py -x -q

Document i of a test corpus holds the ids ID * (i + 1) + offset, so every token names its document and its offset
and each row can be checked by eye: which document, which tokens, which position ids, which labels. The laws
(Eq. 3-5's uniform draws, RandPos's uniform subset, a uniform crop) are written out here and compared by chi-square
with fixed seeds; the thresholds are the chi-square quantiles named beside them (p ~ 1e-5).
"""
import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from options import TrainOptions
import train

ID = 10_000  # document i holds ids ID * (i + 1) + 0, 1, 2, ...


def options(method, window=16, target=128, micro_batch_size=4, **kw):
    """The fields make_batch reads; the rest keep TrainOptions' defaults."""
    return dataclasses.replace(TrainOptions(), method=method, window=window, target=target,
                               micro_batch_size=micro_batch_size, **kw)


def corpus(lengths):
    return [ID * (i + 1) + np.arange(n, dtype=np.int64) for i, n in enumerate(lengths)]


def rows(documents, opts, steps, rank=0, accum=1):
    """Every example of steps 0..steps-1 in the order the loop uses them: (step, micro, b) -> (tokens, targets,
    positions) as numpy rows, padding included."""
    out = []
    for step in range(steps):
        for micro in range(accum):
            tokens, targets, positions = train.make_batch(documents, opts, rank, step, micro, accum)
            assert tokens.dtype == targets.dtype == positions.dtype == torch.int64
            assert tokens.shape == targets.shape == positions.shape and tokens.shape[0] == opts.micro_batch_size
            out += zip(tokens.numpy(), targets.numpy(), positions.numpy())
    return out


def chi2(counts, probabilities):
    """Pearson's statistic of observed counts against a law written in the test."""
    expected = np.asarray(probabilities) * np.sum(counts)
    return float(((np.asarray(counts) - expected) ** 2 / expected).sum())


def document_of(tokens):
    doc = np.unique(tokens // ID) - 1
    assert len(doc) == 1, doc  # every token of a row comes from one document
    return int(doc[0])


# ---------------------------------------------------------------- PoSE (§3.2)

def test_pose_positions_pass_the_window_and_their_maximum_over_many_steps_reaches_the_target():
    """The skip u_1 ~ U{0..L_t-L_c} (Eq. 4): almost every example reaches past L_c, and some reach L_t - 1.
    PoSE called with target = window (no skips) puts every position below L_c and fails here."""
    window, target = 16, 128
    opts = options("pose", window, target)
    examples = rows(corpus([300] * 20), opts, steps=100)   # 400 examples
    positions = np.stack([p for _, _, p in examples])
    assert (positions[:, 0] == 0).all() and (np.diff(positions, axis=1) >= 1).all()
    assert positions.max() < target
    last = positions[:, -1]                                 # u_1 + L_c - 1
    assert (last >= window).mean() > 0.9                    # P(u_1 >= 1) = 112 / 113
    assert last.max() >= target - 4                         # P(no u_1 >= 109 in 400) = (109/113)^400 ~ 1e-6


def test_pose_skip_chunk_length_and_content_offset_follow_eq_3_4_5_through_make_batch():
    """N = 2, L_c = 8, L_t = 24, documents of L_x = 26 tokens (25 can be read, the last is only a label):
    l_0 ~ U{1..7} (Eq. 3), u_1 ~ U{0..16} (Eq. 4), v_1 ~ U{0..(L_x - 1) - L_c} = U{0..17} (Eq. 5),
    each compared with the uniform law written here."""
    window, target, doc_len = 8, 24, 26
    opts = options("pose", window, target, micro_batch_size=8)
    documents = corpus([doc_len] * 10)
    u1, v1, l0 = [], [], []
    for tokens, targets, positions in rows(documents, opts, steps=450):  # 3,600 examples
        index = tokens % ID
        assert (targets == tokens + 1).all()                # the document's true next token, x[index + 1]
        jumps = np.flatnonzero((np.diff(positions) != 1) | (np.diff(index) != 1))
        assert len(jumps) <= 1 and positions[0] == 0 and index[0] == 0
        u1.append(positions[-1] - (window - 1))
        v1.append(index[-1] - (window - 1))
        if len(jumps):
            l0.append(jumps[0] + 1)
    u1, v1, l0 = np.bincount(u1), np.bincount(v1), np.bincount(l0)[1:]
    assert len(u1) == target - window + 1 and chi2(u1, [1 / 17] * 17) < 50     # df 16: P(> 50) = 2e-5
    assert len(v1) == doc_len - 1 - window + 1 and chi2(v1, [1 / 18] * 18) < 52  # df 17: P(> 52) = 2e-5
    assert len(l0) == window - 1 and chi2(l0, [1 / 7] * 7) < 35               # df 6: P(> 35) = 4e-6


def test_pose_chunks_and_content_options_reach_the_sampler():
    """--chunks 3 --content zero: the text is the document's first L_c tokens unbroken (App. A, v_i = 0) while
    the position ids jump up to twice."""
    window, target = 16, 256
    opts = options("pose", window, target, chunks=3, content="zero")
    examples = rows(corpus([100] * 8), opts, steps=30)
    jumps = [len(np.flatnonzero(np.diff(p) != 1)) for _, _, p in examples]
    assert all(np.array_equal(t % ID, np.arange(window)) for t, _, _ in examples)
    assert max(jumps) == 2 and all(j <= 2 for j in jumps)


# ---------------------------------------------------------------- the epoch: every document once

@pytest.mark.parametrize("method", ["pose", "randpos", "plain", "full"])
def test_each_rank_uses_every_document_of_its_shard_once_per_epoch_across_steps_micro_batches_and_rows(method):
    """The example number is (step x accum + micro) x micro_batch + b: with gradient accumulation 3, micro-batches
    of 2 and shards of 13 and 12 documents (epochs end inside a step), every window of examples
    [e x shard, (e + 1) x shard) is a permutation of the shard, and epochs are reshuffled."""
    documents = corpus([40 + 7 * i for i in range(38)])
    world, accum = 3, 3
    opts = options(method, window=16, target=64, micro_batch_size=2)
    for rank in range(world):
        shard = documents[rank::world]
        ids = [document_of(t[y != -100]) for t, y, _ in rows(shard, opts, steps=9, rank=rank, accum=accum)]
        own = sorted(int(d[0] // ID) - 1 for d in shard)
        epochs = [ids[e * len(shard):(e + 1) * len(shard)] for e in range(len(ids) // len(shard))]
        assert len(epochs) == 4 and all(sorted(epoch) == own for epoch in epochs), (rank, ids)
        assert epochs[0] != epochs[1]  # a fresh order each epoch


# ---------------------------------------------------------------- baselines: which tokens, which positions

def test_plain_rows_are_each_documents_first_window_at_positions_0_to_window():
    window = 16
    documents = corpus([17, 30, 200, 17, 55])
    for tokens, targets, positions in rows(documents, options("plain", window, window, micro_batch_size=5), 3):
        assert np.array_equal(tokens % ID, np.arange(window))           # x[0:L_c]: BOS at position 0
        assert np.array_equal(targets, tokens + 1)                      # x[1:L_c + 1]
        assert np.array_equal(positions, np.arange(window))


@settings(max_examples=30)
@given(st.lists(st.integers(17, 90), min_size=1, max_size=6), st.integers(0, 50))
def test_full_length_rows_are_the_first_min_of_len_minus_1_and_target_tokens_padded_to_the_longest(lengths, step):
    window, target = 16, 64
    opts = options("full", window, target, micro_batch_size=len(lengths))
    tokens, targets, positions = (t.numpy() for t in train.make_batch(corpus(lengths), opts, 0, step, 0, 1))
    widths = []
    for t, y, p in zip(tokens, targets, positions):
        doc = int(t[0] // ID) - 1
        w = min(lengths[doc] - 1, target)   # every real token has its next token as label
        widths.append(w)
        assert np.array_equal(t[:w] % ID, np.arange(w)) and t[0] // ID == doc + 1
        assert np.array_equal(y[:w], t[:w] + 1) and np.array_equal(p[:w], np.arange(w))
        assert (t[w:] == 0).all() and (y[w:] == -100).all() and (p[w:] == 0).all()  # padding: never scored
    assert sorted(int(t[0] // ID) - 1 for t in tokens) == list(range(len(lengths)))  # each document once
    assert tokens.shape[1] == max(widths)


def test_randpos_rows_read_the_documents_first_window_at_a_uniform_random_subset_of_positions():
    """Ruoss et al.: the L_c position ids are a uniformly random L_c-subset of {0..L_t-1}, sorted. For a uniform
    subset, P(smallest id = k) = C(L_t-1-k, L_c-1) / C(L_t, L_c); compared by chi-square (last bins merged)."""
    window, target = 4, 16
    opts = options("randpos", window, target, micro_batch_size=10)
    smallest = []
    for tokens, targets, positions in rows(corpus([30] * 7), opts, steps=300):  # 3,000 examples
        assert np.array_equal(tokens % ID, np.arange(window)) and np.array_equal(targets, tokens + 1)
        assert (np.diff(positions) >= 1).all() and 0 <= positions[0] and positions[-1] < target
        smallest.append(positions[0])
    law = [math.comb(target - 1 - k, window - 1) / math.comb(target, window) for k in range(target - window + 1)]
    counts = np.bincount(smallest, minlength=len(law))
    assert len(counts) == len(law) and abs(sum(law) - 1) < 1e-12
    merged_counts, merged_law = [*counts[:8], counts[8:].sum()], [*law[:8], sum(law[8:])]  # >= 5 expected per bin
    assert chi2(merged_counts, merged_law) < 35                                            # df 8: P(> 35) = 3e-5


@pytest.mark.parametrize("method", ["plain", "full", "randpos"])
def test_crop_random_takes_a_uniform_contiguous_window_anywhere_in_the_document(method):
    """--crop random: the window starts uniformly at 0..(L_x - 1) - w (w = L_c, or min(L_x - 1, L_t) for full)."""
    window, target, doc_len = 8, 16, 30
    opts = options(method, window, target, micro_batch_size=10, crop="random")
    width = min(doc_len - 1, target) if method == "full" else window
    starts = []
    for tokens, targets, positions in rows(corpus([doc_len] * 5), opts, steps=150):  # 1,500 examples
        index = tokens % ID
        assert np.array_equal(index, index[0] + np.arange(width)) and np.array_equal(targets, tokens + 1)
        if method != "randpos":
            assert np.array_equal(positions, np.arange(width))
        starts.append(index[0])
    counts = np.bincount(starts)
    n = doc_len - 1 - width + 1
    assert len(counts) == n and chi2(counts, [1 / n] * n) < {22: 55, 14: 45}[n]  # df 21 / 13: P(>) = 7e-5 / 2e-5
