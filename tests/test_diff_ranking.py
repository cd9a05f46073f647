"""The causal block ranking (rlhf_lens.diff.ranking): parameter patching credits the changed block only, each block
is tested against KL-matched random directions with Holm across blocks, the verdict reads every row, and with
divergence.rank = "causal" the blocks are chosen on prompts disjoint from those that score them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import plant_direction

PLANTED_BLOCK = 1
NOISE_BLOCK = 0
N_RANDOM = 39  # two tested blocks: Holm's smallest adjusted p is 2 / (39 + 1) = 0.05, the level


def _load(path):
    from rlhf_lens.models import load_model

    return load_model(str(path))


def _rank(base, tuned, tok, table, corpus_file, layers=(0, 1, 2), n_random=N_RANDOM, seed=0):
    from rlhf_lens.data import load_corpus
    from rlhf_lens.diff.ranking import causal_ranking
    from rlhf_lens.diff.steering import heldout_prompts, run_groups
    from rlhf_lens.rewards import load_reward

    reward = load_reward(f"table:{table}")
    prompts = heldout_prompts(load_corpus(str(corpus_file)), tok, 24, "test", [], seed)
    base_result = run_groups(base, base, tok, reward, prompts, [{}], 12, seed)[0]
    return causal_ranking(base, tuned, tok, reward, prompts, list(layers), base_result, 12, seed, n_random,
                          coherence_kl=1.0, level=0.05)


def _random_mlp_change(model, block: int, scale: float, seed: int) -> None:
    """A rank-one change of block `block`'s MLP output weights along a random direction: context-dependent (it
    scales with the MLP's hidden activations) and unrelated to any reward."""
    gen = torch.Generator().manual_seed(seed)
    weight = model.gpt_neox.layers[block].mlp.dense_4h_to_h.weight
    out_dir = torch.randn(weight.shape[0], generator=gen)
    in_dir = torch.randn(weight.shape[1], generator=gen)
    with torch.no_grad():
        weight += scale * torch.outer(out_dir / out_dir.norm(), in_dir / in_dir.norm())


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_model_dir):
    """Tuned = base with a planted reward direction in block 1's MLP bias and a reward-free random change of block
    0's MLP; the table scores the planted words."""
    base, tok = _load(tiny_model_dir)
    tuned, _ = _load(tiny_model_dir)
    v, words, _ = plant_direction(tuned, tok, 2.0)
    with torch.no_grad():
        tuned.gpt_neox.layers[PLANTED_BLOCK].mlp.dense_4h_to_h.bias += v
    _random_mlp_change(tuned, NOISE_BLOCK, 2.0, seed=3)
    root = tmp_path_factory.mktemp("ranking")
    table = root / "table.tsv"
    table.write_text("".join(f"{w}\t3\n" for w in words))
    return {"base": base, "tuned": tuned, "tok": tok, "table": table, "root": root}


@pytest.fixture(scope="module")
def planted_ranking(planted, corpus_file):
    return _rank(planted["base"], planted["tuned"], planted["tok"], planted["table"], corpus_file)


def test_the_planted_block_is_beyond_its_null_and_the_next_is_not_credited(planted_ranking):
    rows = {r["layer"]: r for r in planted_ranking["rows"]}
    hit = rows[PLANTED_BLOCK]
    assert hit["beyond"] and hit["p_adjusted"] <= 0.05 and hit["gain"] > 0 and hit["rank"] == 1
    assert len(hit["null_gains"]) == N_RANDOM and max(hit["null_gains"]) < hit["gain"]
    # the random directions cause the patch's KL (teacher-forced on the prompts) within a few percent
    assert np.allclose(hit["null_kl"], hit["matched_kl"], rtol=0.05) and hit["matched_kl"] > 0
    # block 2 carries block 1's change along the residual stream, but its own parameters did not change: the patch
    # credits it with nothing (the diff's own-difference reading Δ_2 - Δ_1 is not 0 there: the next test)
    after = rows[PLANTED_BLOCK + 1]
    assert not after["changed"] and after["gain"] == 0 and not after["beyond"] and after["p_adjusted"] is None
    # the reward-free change of block 0 is tested, and not singled out
    noise = rows[NOISE_BLOCK]
    assert noise["changed"] and noise["p_adjusted"] is not None and not noise["beyond"]
    assert planted_ranking["tested"] == 2
    verdict = planted_ranking["verdict"]
    assert verdict.startswith(f"block {PLANTED_BLOCK} raises the reward beyond KL-matched random directions")
    assert "Holm across 2 blocks" in verdict and "the other 1 tested block does not" in verdict


def test_the_patch_is_undone_whatever_happens(planted):
    from rlhf_lens.diff.ranking import patched_block
    from rlhf_lens.models import blocks

    base, tuned = planted["base"], planted["tuned"]
    own = blocks(base)[PLANTED_BLOCK]
    with pytest.raises(RuntimeError):
        with patched_block(base, tuned, PLANTED_BLOCK):
            assert blocks(base)[PLANTED_BLOCK] is blocks(tuned)[PLANTED_BLOCK]
            raise RuntimeError("inside")
    assert blocks(base)[PLANTED_BLOCK] is own


def test_a_change_unrelated_to_the_reward_singles_out_no_block(planted, corpus_file):
    """Negative control: tuned differs from base only by a random rank-one change of block 1's MLP."""
    base, tok = planted["base"], planted["tok"]
    tuned, _ = _load(_saved_base(planted))
    _random_mlp_change(tuned, PLANTED_BLOCK, 2.0, seed=11)
    result = _rank(base, tuned, tok, planted["table"], corpus_file, n_random=19)
    assert result["tested"] == 1
    row = next(r for r in result["rows"] if r["layer"] == PLANTED_BLOCK)
    assert row["matched_kl"] > 0 and not row["beyond"]
    assert result["verdict"].startswith("no block singled out")


def _saved_base(planted):
    from rlhf_lens.models import save_model

    path = planted["root"] / "base"
    if not path.exists():
        save_model(planted["base"], planted["tok"], path)
    return path


def _row(layer, gain, p_adjusted, beyond, coherent=True):
    return {"layer": layer, "gain": gain, "gain_se": 0.05, "p_adjusted": p_adjusted, "beyond": beyond,
            "coherent": coherent}


def test_the_verdict_reads_every_row_not_the_first():
    from rlhf_lens.diff.ranking import choose_blocks, ranking_verdict

    rows = [_row(29, 0.44, 0.30, False), _row(21, 0.20, 0.01, True), _row(3, 0.01, 1.0, False)]
    verdict = ranking_verdict(rows, 0.05, 99)
    assert verdict.startswith("block 21 raises the reward beyond KL-matched random directions")
    assert "adjusted p 0.01" in verdict and "the other 2 tested blocks do not" in verdict
    assert ranking_verdict([_row(29, 0.44, 0.30, False), _row(21, 0.2, 0.5, False)], 0.05, 99).startswith(
        "no block singled out")
    two = ranking_verdict([_row(4, 0.1, 0.02, True), _row(9, 0.3, 0.04, True)], 0.05, 99)
    assert two.startswith("blocks 9 and 4 raise the reward")
    # too few random directions for Holm across 5 blocks: said, with what a claim needs
    few = ranking_verdict([_row(k, 0.1, 0.25, False) for k in range(5)], 0.05, 19)
    assert "smallest possible adjusted p is 0.25" in few and "diff.rank_random >= 99" in few
    # choosing blocks: the one beyond its null first, then the next best by gain, and saying which
    chosen = choose_blocks({"rows": rows}, 2)
    assert chosen["layers"] == [21, 29] and chosen["beyond"] == [21]
    assert "21 beyond their null" in chosen["note"] and "29 the next best by gain" in chosen["note"]
    assert choose_blocks({"rows": rows[:1]}, 2)["note"].endswith("(no block beyond its null)")


def test_held_out_sets_are_disjoint_and_unread(corpus_file):
    from rlhf_lens.data import load_corpus
    from rlhf_lens.diff.ranking import held_out_sets

    corpus = load_corpus(str(corpus_file))
    read = corpus.texts("test", 16)
    selection, scoring = held_out_sets(corpus, "test", read, 0, 24)
    a = {d.text for d in selection.documents("test")}
    b = {d.text for d in scoring.documents("test")}
    assert a and b and not a & b and not (a | b) & set(read)
    assert len(a) + len(b) == len(corpus.documents("test")) - len(set(read))


def test_rank_causal_chooses_from_the_ranking_on_disjoint_prompts(planted, corpus_file, tmp_path):
    from rlhf_lens.diff.config import DiffConfig
    from rlhf_lens.diff.run import diff_models
    from rlhf_lens.models import save_model

    tuned_dir = save_model(planted["tuned"], planted["tok"], tmp_path / "tuned")
    config = DiffConfig(max_docs=16, max_tokens=32, prompts=24, new_tokens=12, alphas=[0.0, 0.5, 1.0],
                        random_directions=2, null_sets=100, top_words=3, rank_spread=3, rank_random=N_RANDOM,
                        coherence_kl=1.0)
    result = diff_models(str(_saved_base(planted)), str(tuned_dir), str(corpus_file), f"table:{planted['table']}",
                         None, tmp_path / "diff", config, choose_blocks=1)
    chosen = result["ranking"]["chosen"]
    assert chosen["layers"] == [PLANTED_BLOCK] == chosen["beyond"] == result["layers"]
    assert [c["layer"] for c in result["steering"]] == [PLANTED_BLOCK]
    sets = result["prompt_sets"]
    assert sets["selection"]["prompts"] == sets["scoring"]["prompts"] == 24
    assert sets["selection"]["documents"] + sets["scoring"]["documents"] == 40 - 16
    assert result["ranking"]["n_prompts"] == 24 and result["verdicts"]["ranking"] == result["ranking"]["verdict"]
    # the reaction of the block after the planted one: in Δ_L - Δ_{L-1}, not in its patch
    after = next(r for r in result["ranking"]["rows"] if r["layer"] == PLANTED_BLOCK + 1)
    assert after["own_norm"] > 0 and after["gain"] == 0 and not after["beyond"]


def test_stage_diff_with_rank_causal_analyses_the_blocks_its_ranking_chose(planted, corpus_file, tmp_path):
    """The run's diff stage under divergence.rank = "causal": the ranking first, its choice as the analysed blocks
    (top_layers, read by every later stage), the steering curves there; not the parameter-ranked block."""
    from rlhf_lens.config import load_config
    from rlhf_lens.models import save_model
    from rlhf_lens.pipeline.stages import stage_diff

    tuned_dir = save_model(planted["tuned"], planted["tok"], tmp_path / "tuned")
    config = load_config(preset="tiny", overrides=[
        "divergence.rank=causal", "divergence.top_n=1", f"data.corpus={corpus_file}", "data.test_split=test",
        f"reward.spec=table:{planted['table']}", "diff.max_docs=16", "diff.prompts=24", "diff.new_tokens=12",
        "diff.rank_spread=3", f"diff.rank_random={N_RANDOM}", "diff.alphas=[0.0, 1.0]", "diff.random_directions=2",
        "diff.null_sets=100", "diff.coherence_kl=1.0"])
    state = {"base": {"spec": str(_saved_base(planted))}, "rlhf": {"spec": str(tuned_dir)},
             "placebo": {"spec": None}, "divergence": {"top_layers": [2]}}
    outputs = stage_diff(config, tmp_path, state)
    assert outputs["top_layers"] == [PLANTED_BLOCK] and outputs["rank"] == "causal"
    from rlhf_lens.io import read_json

    diff = read_json(tmp_path / outputs["dir"] / "diff.json")
    assert diff["layers"] == [PLANTED_BLOCK] and diff["ranking"]["chosen"]["beyond"] == [PLANTED_BLOCK]
    assert sorted(r["layer"] for r in diff["ranking"]["rows"]) == [0, 1, 2]  # spread blocks plus the parameters' 2
