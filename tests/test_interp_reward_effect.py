"""The reward effect (interp/reward_effect.py): VocabProj and TokenChange recover a planted direction's words, the
reward effect of a direction aimed at rewarded (penalised) words is claimed raising (lowering), a random one is not,
the reading of a real diff folder reproduces its steering prompts and target KLs, and same seed gives the same bits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import planted_tune

PLANTED_BLOCK = 1


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_model_dir, corpus_file):
    """A tuned copy of the tiny model whose block 1 MLP bias pushes three words, a table valuing them (+3) and one
    penalising them (-3), and the diff of that tune (blocks 1 and 2 steered)."""
    from rlhf_lens.diff.config import DiffConfig
    from rlhf_lens.diff.run import diff_models
    from rlhf_lens.models import load_model

    root = tmp_path_factory.mktemp("reward-effect")
    tuned, v, words = planted_tune(tiny_model_dir, root, 2.0, PLANTED_BLOCK)
    for name, value in (("good", 3), ("bad", -3)):
        (root / f"{name}.tsv").write_text("".join(f"{w}\t{value}\n" for w in words))
    config = DiffConfig(max_docs=24, max_tokens=48, prompts=24, new_tokens=6, alphas=[0.0, 0.5, 1.0],
                        random_directions=2, null_sets=500, top_words=3, rank_spread=1, rank_random=2,
                        coherence_kl=0.4)
    diff = diff_models(str(tiny_model_dir), str(tuned), str(corpus_file), f"table:{root / 'good.tsv'}", [1, 2],
                       root / "diff", config)
    base, base_tok = load_model(str(tiny_model_dir))
    return {"v": v, "words": words, "root": root, "diff": diff, "base": base, "tok": base_tok}


@pytest.fixture(scope="module")
def reading(planted):
    from rlhf_lens.interp.reward_effect import output_reading

    root = planted["root"]
    return output_reading(root / "diff", planted["base"], planted["tok"], f"table:{root / 'good.tsv'}", None)


def _word_direction(model, vocab) -> tuple[torch.Tensor, str]:
    """The unembedding row of the 4+-letter candidate with the largest row norm (so its own logit beats every other
    token's along it), centred on the candidates' mean and divided by the final LayerNorm's weight (so the norm
    gives it back), and that word."""
    from rlhf_lens.diff.output import final_norm

    unembed = model.get_output_embeddings().weight.detach()
    longer = [j for j, w in enumerate(vocab.words) if len(w) >= 4]
    j = max(longer, key=lambda k: float(unembed[int(vocab.ids[k])].norm()))
    aim = unembed[int(vocab.ids[j])] - unembed[torch.from_numpy(vocab.ids)].mean(0)
    v = aim / final_norm(model).weight.detach()
    return v - v.mean(), vocab.words[j]


def _top_word(scores: torch.Tensor, vocab) -> str:
    return vocab.words[int(scores[torch.from_numpy(vocab.ids)].argmax())]


def test_vocab_proj_and_token_change_recover_a_planted_word(planted, reading):
    from rlhf_lens.interp.reward_effect import token_change, vocab_proj

    model = planted["base"]
    v, word = _word_direction(model, reading.vocab)
    assert _top_word(vocab_proj(model, v[None])[0], reading.vocab) == word
    for layer in (1, 2):
        share, norms, kls = token_change(model, reading.prompts, layer, torch.stack([v, 3 * v]), 0.1)
        assert _top_word(share[0], reading.vocab) == word
        # the norm is the direction's, not its length's: a direction and its multiple are scaled alike
        assert torch.allclose(norms[0], norms[1], rtol=1e-4) and torch.allclose(share[0], share[1], atol=1e-6)
        assert abs(float(kls[0]) / 0.1 - 1) <= 0.05 and torch.isclose(share[0].sum(), kls[0], rtol=1e-4)


def test_reward_effect_of_a_planted_direction_and_a_random_one(planted, reading):
    from rlhf_lens.interp.reward_effect import reward_effects

    random = torch.randn(1, planted["v"].shape[0], generator=torch.Generator().manual_seed(5))
    records = reward_effects(planted["base"], reading, PLANTED_BLOCK, torch.cat([planted["v"][None], random]),
                             output_top=3)
    aimed, control = records
    assert {t["word"] for t in aimed["token_change"]["tokens"]} == set(planted["words"])
    assert {t["word"] for t in aimed["vocab_proj"]["tokens"]} == set(planted["words"])
    effect = aimed["reward_effect"]
    assert effect["claim"] == "raises" and effect["effect"] > 0 and effect["q"] <= reading.level
    assert effect["verdict"].startswith("pushes the output toward words the reward favours")
    assert aimed["token_change"]["effect"] == effect["effect"]
    assert abs(aimed["token_change"]["kl"] / reading.kl_at(PLANTED_BLOCK) - 1) <= 0.05
    assert control["reward_effect"]["claim"] is None
    assert control["reward_effect"]["verdict"].startswith("no reward effect beyond random token sets")
    json.dumps(records)  # records go to features.json as they are


def test_a_direction_toward_penalised_words_lowers(planted, reading):
    from rlhf_lens.interp.reward_effect import output_reading, reward_effects

    root = planted["root"]
    bad = output_reading(root / "diff", planted["base"], planted["tok"], f"table:{root / 'good.tsv'}",
                         str(root / "bad.tsv"))
    effect = reward_effects(planted["base"], bad, PLANTED_BLOCK, planted["v"][None], output_top=3)[0]["reward_effect"]
    assert effect["claim"] == "lowers" and effect["effect"] < 0
    assert "penalises" in effect["verdict"]


def test_the_null_draws_from_the_listed_tokens_strata(planted, reading):
    from rlhf_lens.interp.reward_effect import reward_effects

    record = reward_effects(planted["base"], reading, 2, planted["v"][None], output_top=5)[0]
    assert reading.pool.matched and reading.pool.n_strata > 1
    for name in ("vocab_proj", "token_change"):
        part = record[name]
        strata = [reading.pool.stratum_of[t["token_id"]] for t in part["tokens"]]
        assert part["strata"] == np.bincount(strata, minlength=reading.pool.n_strata).tolist()
        assert part["test"].startswith("frequency-matched")
        assert part["effect"] == pytest.approx(part["mean_utility"] - part["null_mean"])


def test_the_reading_reproduces_the_diffs_prompts_and_target_kls(planted, reading):
    from rlhf_lens.diff.run import load_deltas
    from rlhf_lens.diff.steering import steered_kl

    deltas = load_deltas(planted["root"] / "diff")["delta"]
    assert len(reading.prompts) == planted["diff"]["prompt_sets"]["scoring"]["prompts"]
    steered = [c for c in planted["diff"]["steering"] if c["random"]]
    assert steered and set(reading.target_kl) == {c["layer"] for c in steered}
    for curve in steered:
        layer = curve["layer"]
        kl = float(steered_kl(planted["base"], reading.prompts, layer, curve["alpha"] * deltas[layer][None])[0])
        assert kl == pytest.approx(curve["random"]["target_kl"], rel=1e-5)
        assert reading.kl_at(layer) == curve["random"]["target_kl"]
    # block 0 was not steered: the median of the steered blocks' target KLs
    assert reading.kl_at(0) == pytest.approx(float(np.median([c["random"]["target_kl"] for c in steered])))


def test_same_seed_same_bits(planted, reading):
    from rlhf_lens.interp.reward_effect import reward_effects

    directions = torch.stack([planted["v"], torch.randn(planted["v"].shape[0], generator=torch.Generator().manual_seed(1))])
    first = reward_effects(planted["base"], reading, 2, directions, output_top=4)
    second = reward_effects(planted["base"], reading, 2, directions, output_top=4)
    assert json.dumps(first) == json.dumps(second)


def test_zero_direction_and_bad_input(planted, reading, tmp_path):
    from rlhf_lens.interp.reward_effect import output_reading, reward_effects, token_change

    record = reward_effects(planted["base"], reading, 2, torch.zeros(1, planted["v"].shape[0]), output_top=3)[0]
    assert record["token_change"]["tokens"] == [] and record["reward_effect"]["claim"] is None
    assert record["reward_effect"]["verdict"].startswith("no reward effect")
    from rlhf_lens.errors import UserError

    with pytest.raises(UserError, match="width 7"):
        token_change(planted["base"], reading.prompts, 2, torch.ones(1, 7), 0.1)
    with pytest.raises(UserError, match="out of range"):
        token_change(planted["base"], reading.prompts, 9, planted["v"][None], 0.1)
    with pytest.raises(UserError, match="diff.json"):
        output_reading(tmp_path, planted["base"], planted["tok"], "vader", None)
