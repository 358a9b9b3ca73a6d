"""Shared test set-up: a derandomised hypothesis profile so CI never flakes; one torch thread on request; the micro
checkpoint and the token corpus the training tests run on."""
import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf import PRESETS, args_from_config, save_pretrained  # noqa: E402
from model import Transformer  # noqa: E402  (the repository is on sys.path now)

# A two-layer checkpoint small enough for a training step in milliseconds (head_dim 16, 2 KV heads: GQA).
MICRO = dict(PRESETS["tiny"], hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, intermediate_size=128, max_position_embeddings=16)

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=50, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")


@pytest.fixture
def one_thread():
    """Two OpenMP threads on a shared two-core box run several times slower than one; one is also bitwise stable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory):
    """MICRO with seed-0 weights, saved as a Hugging Face folder."""
    path = tmp_path_factory.mktemp("micro") / "model"
    model = Transformer(args_from_config(MICRO))
    model.init_weights(seed=0)
    save_pretrained(model, path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 documents of random ids, each ending with EOS (= 2): the .npy layout train.py documents."""
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(3, 4096, size=rng.integers(30, 200)), 2) for _ in range(40)]
    path = tmp_path_factory.mktemp("corpus") / "ids.npy"
    np.save(path, np.concatenate(docs).astype(np.int32))
    return path
