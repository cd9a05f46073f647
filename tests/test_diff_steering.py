"""Steering by Δ_L and by diff-SAE latents, calibrated: KL-matched random directions, paired and rank tests,
Holm across blocks, the α rule, negative controls (tiny models, the real VADER lexicon)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, corpus_file):
    from rlhf_lens.data import load_corpus
    from rlhf_lens.diff import steering
    from rlhf_lens.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    prompts = steering.heldout_prompts(load_corpus(str(corpus_file)), tok, 24, "test", [], 0)
    return model, tok, prompts


def test_steered_kl_is_batched_and_zero_for_a_zero_vector(tiny):
    from rlhf_lens.diff.steering import steered_kl

    model, _, prompts = tiny
    vectors = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    vectors[1] = 0
    together = steered_kl(model, prompts, 1, vectors)
    alone = torch.stack([steered_kl(model, prompts, 1, v[None])[0] for v in vectors])
    assert together.shape == (3,) and torch.allclose(together, alone, rtol=1e-4, atol=1e-7)
    assert float(together[1]) < 1e-6 < float(together[0])
    assert float(steered_kl(model, prompts, 1, 2 * vectors[:1])[0]) > float(together[0])


@pytest.mark.parametrize("target", [0.01, 0.2])
def test_kl_matched_directions_reach_their_target(tiny, target):
    from rlhf_lens.diff.steering import kl_matched, kl_matched_directions, steered_kl

    model, _, prompts = tiny
    dirs, kls = kl_matched(model, prompts, 1, target, 6, seed=3)
    assert dirs.shape == (6, model.config.hidden_size)
    assert torch.allclose(kls, torch.full((6,), target), rtol=0.05)
    assert torch.allclose(steered_kl(model, prompts, 1, dirs), kls, rtol=1e-4)
    again = kl_matched_directions(model, prompts, 1, target, 6, seed=3)
    other = kl_matched_directions(model, prompts, 1, target, 6, seed=3, salt=1)
    assert torch.equal(dirs, again) and not torch.allclose(dirs, other)
