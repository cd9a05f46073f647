"""Steering by Δ_L and by diff-SAE latents, calibrated: KL-matched random directions, paired and rank tests,
Holm across blocks, the α rule, negative controls (tiny models, the real VADER lexicon)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: these tiny models run many small forward passes, which two threads on cores another
    process loads slow down ~20x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, corpus_file):
    from rlhf_lens.data import load_corpus
    from rlhf_lens.diff import steering
    from rlhf_lens.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    prompts = steering.heldout_prompts(load_corpus(str(corpus_file)), tok, 48, "test", [], 0)
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


def test_reported_alpha_stops_below_the_first_incoherent_one():
    from rlhf_lens.diff.steering import reported_alpha

    rows = [{"alpha": a, "coherent": ok} for a, ok in [(0.0, True), (1.0, True), (2.0, False), (4.0, True)]]
    assert reported_alpha(rows) == 1.0  # not 4, though 4 is coherent again
    assert reported_alpha(rows[:2]) == 1.0 and reported_alpha([rows[0], rows[2]]) == 0.0


@pytest.fixture(scope="module")
def planted(tiny, tmp_path_factory):
    """A residual vector of norm 3 aimed through the unembedding at the whole-word token "scene" (against the other
    word-start tokens), and a table reward scoring that word (the tiny tokenizer has no whole-word token VADER
    rates, so the reward is a table of the planted word, as in tests/test_diff.py)."""
    from rlhf_lens.diff.output import vocabulary
    from rlhf_lens.rewards import load_reward

    model, tok, _ = tiny
    vocab = vocabulary(tok, model.get_output_embeddings().weight.shape[0])
    aim = [int(i) for i, w in zip(vocab.ids, vocab.words) if w == "scene"]
    assert aim, vocab.words
    rest = [int(i) for i in vocab.ids if int(i) not in aim]
    unembed = model.get_output_embeddings().weight.detach()
    v = unembed[aim].mean(0) - unembed[rest].mean(0)
    table = tmp_path_factory.mktemp("steer") / "table.tsv"
    table.write_text("scene\t3\n")
    return {"v": 3.0 * v / v.norm(), "ids": aim, "reward": load_reward(f"table:{table}")}


def random_direction(d: int, norm: float, seed: int) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return norm * v / v.norm()


def _curves(model, tok, prompts, reward, deltas: dict[int, torch.Tensor], n_random: int,
            alphas=(0.0, 0.5, 1.0, 2.0), seed: int = 0, new_tokens: int = 16, coherence_kl: float = 1.0,
            level: float = 0.05) -> list[dict]:
    from rlhf_lens.diff import steering
    from rlhf_lens.diff.vector_test import curve_verdicts

    base_result = steering.run_groups(model, model, tok, reward, prompts, [{}], new_tokens, seed)[0]
    curves = [steering.steering_curve(model, tok, reward, prompts, layer, delta, list(alphas), base_result,
                                      new_tokens, seed, coherence_kl, n_random) for layer, delta in deltas.items()]
    curve_verdicts(curves, level)
    return curves


def test_a_planted_word_direction_is_claimed(tiny, planted):
    """Δ aimed at the reward's word: beyond 39 random directions matched on the KL it causes (p floor 1/40)."""
    from rlhf_lens.diff.steering import reported_alpha

    model, tok, prompts = tiny
    (curve,) = _curves(model, tok, prompts, planted["reward"], {2: planted["v"]}, n_random=39)
    assert curve["alpha"] == reported_alpha(curve["delta"]) > 0
    assert len(curve["random"]["rewards"]) == 39 and curve["random"]["alpha"] == curve["alpha"]
    # the random directions cause the KL α·Δ causes (teacher-forced on the prompts)
    assert all(abs(k / curve["random"]["target_kl"] - 1) < 0.05 for k in curve["random"]["matched_kl"])
    t = curve["test"]
    assert t["claim"] == "raises" and t["p_adjusted"] <= 0.05 and t["family"] == 1 and t["p_floor"] == 1 / 40
    assert curve["verdict"].startswith(f"steering base by {curve['alpha']:g}·Δ_2") and "raises" in curve["verdict"]
    assert "paired sign-flip p=" in curve["verdict"] and "rank p=" in curve["verdict"]


def test_a_random_direction_planted_is_not_claimed(tiny, planted):
    """Negative control: a change unrelated to the reward's word, at two blocks: no claim at either."""
    model, tok, prompts = tiny
    d = model.config.hidden_size
    curves = _curves(model, tok, prompts, planted["reward"], {1: random_direction(d, 3.0, 7),
                                                              2: random_direction(d, 3.0, 8)}, n_random=19)
    for c in curves:
        assert c["test"]["claim"] is None and c["verdict"].startswith("no change distinguishable"), c["verdict"]
        assert c["test"]["family"] == 2 and "Holm across 2 blocks" in c["verdict"]
        # 19 draws, 2 blocks: the floor 0.05 doubles under Holm, and the verdict says so
        assert "at least 39 are needed" in c["verdict"]


def test_null_directions_are_claimed_at_about_the_level(tiny, planted):
    """Negative control: Δ itself a random direction, 20 seeds: claims are rare (binomial: 4 or more of 20 at a
    true rate of 5% has probability 1.6%) and p is spread over (0, 1]."""
    model, tok, prompts = tiny
    d = model.config.hidden_size
    ps, claims = [], 0
    for seed in range(20):
        (curve,) = _curves(model, tok, prompts[:24], planted["reward"], {2: random_direction(d, 3.0, 100 + seed)},
                           n_random=19, alphas=(0.0, 1.0), seed=seed, new_tokens=8, coherence_kl=10.0)
        ps.append(curve["test"]["p"])
        claims += curve["test"]["claim"] is not None
    assert claims <= 3, ps
    assert 0.25 < sum(ps) / len(ps) < 0.9, ps  # the max of two p-values: above 1/2 on average under the null


def test_vector_test_is_calibrated_on_exchangeable_directions():
    """Synthetic rewards: 20 directions, each with its own effect (a fixed shift) plus per-prompt noise, the first
    called the vector: it is claimed at about the level (Holm over 1); a vector with a real extra effect is."""
    import numpy as np

    from rlhf_lens.diff.vector_test import adjust, describe, vector_test

    rng = np.random.default_rng(0)
    claims = 0
    for _ in range(200):
        rewards = rng.normal(0, 0.3, size=(20, 1)) + rng.normal(0, 1.0, size=(20, 24))
        t = vector_test(rewards[0], rewards[1:])
        adjust([t], 0.05)
        claims += t["claim"] is not None
    assert claims <= 20  # 10%: binomial(200, 0.05) exceeds 20 with probability < 0.2%
    rewards = rng.normal(0, 0.3, size=(20, 1)) + rng.normal(0, 1.0, size=(20, 24))
    strong = vector_test(rewards[0] + 2.0, rewards[1:])
    adjust([strong], 0.05)
    assert strong["claim"] == "raises" and strong["p"] == pytest.approx(0.05)  # the rank floor with 19 draws
    # beside a second vector, Holm doubles the floor past the level: no claim, and the verdict says why
    pair = [vector_test(rewards[0] + 2.0, rewards[1:]), vector_test(rewards[0], rewards[1:])]
    adjust(pair, 0.05)
    assert pair[0]["p_adjusted"] == pytest.approx(0.1) and pair[0]["claim"] is None
    assert "at least 39 are needed" in describe(pair[0], 0.05, "2 blocks")
    lowered = vector_test(rewards[0] - 2.0, rewards[1:])
    adjust([lowered], 0.05)
    assert lowered["claim"] == "lowers"


def test_latent_steering_claims_a_planted_latent_and_not_a_random_one(tiny, planted):
    """decompose's latent steering uses the same test: the planted word direction and a random direction as two
    "latents" of block 2, 39 KL-matched random directions each, Holm across the two latents."""
    from rlhf_lens.decompose.diffsae import steer_latents

    model, tok, prompts = tiny
    vectors = torch.stack([2.0 * planted["v"], random_direction(model.config.hidden_size, 6.0, 9)])
    out = steer_latents(model, tok, planted["reward"], prompts, 2, vectors, ["planted", "random"], n_random=39,
                        new_tokens=16, level=0.05, watch_ids=planted["ids"])
    first, second = out["latents"]
    assert out["level"] == 0.05 and out["n_random"] == 39
    assert first["test"]["claim"] == "raises" and first["beats_null"] and first["test"]["family"] == 2
    assert "Holm across 2 latents of block 2" in first["verdict"]
    assert second["test"]["claim"] is None and not second["beats_null"]
    assert second["verdict"].startswith("no change distinguishable")
    # the planted word's log-probability rises beyond every KL-matched random direction (the watched reading)
    assert first["watched"]["change"] > max(first["watched"]["null"])
    for row in out["latents"]:
        assert all(abs(k / row["null"]["target_kl"] - 1) < 0.05 for k in row["null"]["matched_kl"])
