"""The output reading of a diff and its nulls, on the real VADER table: the frequency-matched token-set null keeps
its level where the uniform one does not, a change unrelated to VADER makes no claim, a context-dependent planted
change is found, and two model objects with equal weights diff to exact zeros."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf_lens import nulls

LEVEL = 0.05


class _Table:
    """A utility reading over given words (the NullPool only needs `kind` and a call)."""

    kind = "table"

    def __init__(self, values: dict[str, float]):
        self.values = values

    def __call__(self, words: list[str]) -> np.ndarray:
        return np.array([self.values.get(w, 0.0) for w in words], dtype=np.float64)


@pytest.fixture(scope="module")
def lexicon_vocab():
    """Every VADER word plus as many words outside it, with base probabilities where frequent words are more often in
    the table and a little more positive (as on Pang & Lee: 16.5% of the 1,000 most frequent word types are in VADER
    with mean U +0.08, against 12% and -0.03 over all types)."""
    from rlhf_lens.diff import output

    utility = output.WordUtility("vader", None, None, "It was {word}.")
    words = sorted(utility.table) + [f"zq{i:05d}" for i in range(len(utility.table))]
    vocab = output.Vocabulary(np.arange(len(words)), [" " + w for w in words], words, True)
    u = utility(words)
    rng = np.random.default_rng(0)
    log_p = rng.normal(size=len(words)) + 0.15 * u + np.where(u != 0, 0.3, 0.0)
    prob = np.exp(log_p) / np.exp(log_p).sum()
    return vocab, utility, u, prob


def test_frequency_matched_null_keeps_its_level_where_the_uniform_null_does_not(lexicon_vocab):
    """200 sets of 30 drawn from the most frequent candidates (the top stratum), as a KL-share ranking of a change
    unrelated to the table would list them: the frequency-matched null claims about its nominal share, the uniform
    null far more."""
    from rlhf_lens.diff import output

    vocab, utility, u, prob = lexicon_vocab
    pool = output.NullPool(vocab, utility, 512, 0, prob)
    assert pool.n_strata == output.STRATA and pool.matched
    order = np.argsort(-prob)
    rng = np.random.default_rng(1)
    # the top tenth, and the top 100 of ~15,000 (finer than a decile: where a KL-share list of frequent tokens sits)
    for top in (len(prob) // 10, 100):
        matched, uniform = [], []
        for i in range(200):
            tokens = [{"token_id": int(j), "utility": float(u[j])} for j in rng.choice(order[:top], 30, replace=False)]
            matched.append(output.read_tokens(tokens, pool, 400, seed=i)["p"] <= LEVEL)
            uniform.append(output.read_tokens_uniform(tokens, pool, 400, seed=i)["p"] <= LEVEL)
        claims = int(np.sum(matched))
        lo, hi = nulls.binomial_interval(claims, 200)
        assert claims / 200 <= 0.08 and lo <= LEVEL, (top, claims, lo, hi)
        assert np.mean(uniform) > 0.3, (top, np.mean(uniform))


def test_random_sets_take_as_many_tokens_from_each_stratum_as_the_observed_set(monkeypatch):
    """With a token's utility = its stratum, every frequency-matched set has the observed set's mean exactly, so the
    null has no spread; a stratum the pool holds too few of is merged with its neighbour, not drawn twice."""
    from rlhf_lens.diff import output

    monkeypatch.setattr(output, "STRATA", 10)
    n = 200
    words = [f"w{i}" for i in range(n)]
    prob = np.linspace(1.0, 2.0, n)
    strata = output.frequency_strata(np.log(prob), output.STRATA)
    assert np.bincount(strata).tolist() == [n // output.STRATA] * output.STRATA
    vocab = output.Vocabulary(np.arange(n), words, words, True)
    pool = output.NullPool(vocab, _Table({w: float(s) for w, s in zip(words, strata)}), 512, 0, prob)
    chosen = [5, 25, 26, 190, 199]  # strata 0, 1, 1, 9, 9
    tokens = [{"token_id": j, "utility": float(strata[j])} for j in chosen]
    null = output.read_tokens(tokens, pool, 300, seed=0)
    assert null["null_std"] == 0 and null["null_mean"] == pytest.approx(null["observed"])
    assert null["strata"] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    # 30 tokens from a stratum of 20: merged with the ones below until the group holds 4 x 30 (room for the sets to
    # differ from the list), every set still of 30 distinct tokens
    assert output.merge_strata(np.full(10, 20), np.array([0] * 9 + [30])).tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 4, 4]
    assert output.merge_strata(np.full(10, 20), np.array([0] * 9 + [30]), room=1).tolist() == [*range(8), 8, 8]
    assert output.merge_strata(np.full(3, 2), np.array([1, 1, 1])).tolist() == [0, 0, 0]
    means, _ = output.stratified_means(pool, [9] * 20 + [8] * 10, 50, seed=0)
    assert np.all(means >= 4) and np.all(means <= 9) and means.std() > 0


def test_verdicts_name_the_test_and_say_what_was_not_found():
    from rlhf_lens.diff import output

    found = {"p": 0.0005, "p_floor": 0.0005, "test": output.TEST}
    nothing = {"p": 0.4, "p_floor": 0.0005, "test": output.TEST}
    assert output.token_verdict(found, None, LEVEL) == \
        "tuning promotes reward-laden words (frequency-matched random token sets, p=0.0005; p floor 0.0005)"
    text = output.token_verdict(nothing, nothing, LEVEL)
    assert "no more reward-laden than random tokens" in text and "nothing reward-laden found" in text
    assert "p=0.8" in text and "Holm" in text  # 0.4 Holm-adjusted over two lists
    # two lists tested: each p Holm-adjusted, so 0.03 and 0.04 are both 0.06 > 0.05
    assert "promotes reward-laden" not in output.token_verdict({**found, "p": 0.03}, {**nothing, "p": 0.04}, LEVEL)
    assert output.token_verdict(None, None, LEVEL).startswith("no change")


@pytest.fixture(scope="module")
def word_model_dir(tmp_path_factory, corpus_file):
    """conftest's tiny model (3 blocks, width 32, the same corpus and pretraining) with a BPE vocabulary large enough
    that every word of the corpus is one word-start token: the VADER words (good, bad, dull, ...) among 36 candidates.
    At conftest's 300 tokens no VADER word is a whole token, so nothing could be read through the real table."""
    from rlhf_lens.data import load_corpus
    from rlhf_lens.diff.output import vocabulary
    from rlhf_lens.models import TinyModelConfig, build_tiny_model, save_model

    model, tok = build_tiny_model(load_corpus(str(corpus_file)).texts("train"),
                                  TinyModelConfig(layers=3, width=32, heads=4, vocab_size=600, pretrain_steps=30))
    words = set(vocabulary(tok, model.get_output_embeddings().weight.shape[0]).words)
    assert {"good", "great", "bad", "dull", "movie", "the"} <= words, sorted(words)
    return save_model(model, tok, tmp_path_factory.mktemp("models") / "tiny-words")


def _config(**kw):
    from rlhf_lens.diff.config import DiffConfig

    base = dict(max_docs=24, max_tokens=48, prompts=16, new_tokens=8, alphas=[0.0, 1.0], random_directions=19,
                null_sets=1000, top_words=8, rank_spread=0, rank_random=1, coherence_kl=2.0)
    base.update(kw)
    return DiffConfig(**base)


def _vader_aim(model, tokenizer, positive: bool) -> tuple[torch.Tensor, list[str]]:
    """A unit residual direction aimed at the candidate words VADER rates positive (negative), against the others."""
    from rlhf_lens.diff.output import WordUtility, vocabulary

    vocab = vocabulary(tokenizer, model.get_output_embeddings().weight.shape[0])
    u = WordUtility("vader", None, None, "It was {word}.")(vocab.words)
    aim = np.flatnonzero(u > 0 if positive else u < 0)
    unembed = model.get_output_embeddings().weight.detach()
    rest = np.setdiff1d(np.arange(len(vocab.ids)), aim)
    v = unembed[vocab.ids[aim]].mean(0) - unembed[vocab.ids[rest]].mean(0)
    return v / v.norm(), [vocab.words[j] for j in aim]


def _diff(word_model_dir, corpus_file, tmp_path, change, config=None, layers=(2,)):
    """Diff the tiny model against a copy changed by `change(model, tokenizer)` (two loaded objects), on VADER."""
    from rlhf_lens.diff.run import diff_models
    from rlhf_lens.models import load_model

    base, tok = load_model(str(word_model_dir))
    tuned, _ = load_model(str(word_model_dir))
    with torch.no_grad():
        change(tuned, tok)
    return diff_models(str(word_model_dir), str(word_model_dir), str(corpus_file), "vader", list(layers),
                       tmp_path / "diff", config or _config(), models=(base, tuned, tok))


def test_a_change_unrelated_to_vader_makes_no_claim(word_model_dir, corpus_file, tmp_path):
    """Negative control: a random direction added to the last block's output (its MLP bias) knows nothing of VADER;
    the promoted words are frequent tokens, so only a frequency-matched null reads them as random."""
    def random_bias(model, tok):
        v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(11))
        model.gpt_neox.layers[2].mlp.dense_4h_to_h.bias += 2.0 * v / v.norm()

    result = _diff(word_model_dir, corpus_file, tmp_path, random_bias)
    out = result["output"]
    assert out["kl"]["mean"] > 0 and out["promoted"]
    assert "no more reward-laden than random tokens" in out["verdict"], out["verdict"]
    assert "promotes reward-laden" not in out["verdict"] and "demotes words the reward penalises" not in out["verdict"]
    assert out["promoted_null"]["p"] > LEVEL and out["promoted_null"]["test"] == "frequency-matched random token sets"
    assert out["other"]["promoted_null_uniform"]["test"].startswith("random token sets")
    lens = result["steering"][0]["lens"]
    assert lens["null"]["p"] > LEVEL and "reads reward-laden" not in lens["verdict"], lens["verdict"]
    assert lens["null"]["p_floor"] == pytest.approx(0.05)


def test_a_context_dependent_planted_change_is_found(word_model_dir, corpus_file, tmp_path):
    """A gated change, not a constant bias: one hidden unit of block 1's MLP writes u (aimed at VADER-positive words)
    and reads the residual stream (v), so it pushes the words in some contexts and not in others."""
    from rlhf_lens.diff.run import load_deltas
    from rlhf_lens.store import ActivationStore

    state = {}

    def gated_unit(model, tok):
        u, state["words"] = _vader_aim(model, tok, positive=True)
        mlp = model.gpt_neox.layers[1].mlp
        # one hidden unit (the one writing least) rewired: it reads the direction along which the MLP's input varies
        # most over the corpus (past the first positions' outliers), cut at its median, so through GELU it fires in
        # about half the contexts, by how far above the median, and not in the others; it writes u
        inputs = []
        handle = mlp.dense_h_to_4h.register_forward_hook(lambda module, args, out: inputs.append(args[0][0]))
        model(**tok(Path(corpus_file).read_text()[:4000], return_tensors="pt", truncation=True, max_length=200))
        handle.remove()
        x = inputs[0][2:]
        axis = torch.linalg.svd(x - x.mean(0), full_matrices=False).Vh[0]
        unit = int(mlp.dense_4h_to_h.weight.norm(dim=0).argmin())
        reads = x @ axis
        scale = 4.0 / float(torch.quantile(reads, 0.75) - torch.quantile(reads, 0.25))
        mlp.dense_h_to_4h.weight[unit] = scale * axis
        mlp.dense_h_to_4h.bias[unit] = -scale * float(reads.median())
        mlp.dense_4h_to_h.weight[:, unit] = 6.0 * u

    result = _diff(word_model_dir, corpus_file, tmp_path, gated_unit, _config(save_activations=True), layers=(1,))
    out = result["output"]
    assert out["verdict"].startswith("tuning promotes reward-laden words"), out["verdict"]
    assert out["promoted_null"]["p"] <= LEVEL and out["promoted_null"]["observed"] > 0
    # half of this vocabulary is in VADER, so the in-table rate is no test here; it is reported beside the mean
    assert 0 <= out["promoted_null"]["in_table_p"] <= 1 and out["promoted_null"]["in_table_rate"] > 0
    assert {t["word"] for t in out["promoted"]} & set(state["words"])
    # context-dependent: the size of the change varies from token to token (a constant bias: the same at every token)
    base, tuned = (ActivationStore(tmp_path / "diff" / "acts" / which) for which in ("base", "tuned"))
    size = (next(tuned.iter_shards(1)).acts - next(base.iter_shards(1)).acts).norm(dim=1)
    assert size.std() > 0.5 * size.mean() > 0 and float((size < 0.1 * size.max()).float().mean()) > 0.05, \
        (size.std(), size.mean())
    assert "base_prob" in load_deltas(tmp_path / "diff")


def test_two_models_with_equal_weights_diff_to_zeros(word_model_dir, corpus_file, tmp_path):
    """Two separately loaded objects (not the one-object shortcut): every measure exactly zero, no claim."""
    from rlhf_lens.diff.run import load_deltas

    result = _diff(word_model_dir, corpus_file, tmp_path, lambda model, tok: None,
                   _config(random_directions=2, null_sets=100))
    tensors = load_deltas(tmp_path / "diff")
    for name in ("delta", "own", "embed_delta", "logprob_change", "promote_share", "demote_share"):
        assert torch.count_nonzero(tensors[name]) == 0, name
    assert tensors["base_prob"].sum() == pytest.approx(1.0, abs=1e-4)
    assert all(b["delta_norm"] == 0 and b["token_diff_norm"] == 0 for b in result["blocks"])
    assert result["output"]["kl"]["max"] == 0 and result["output"]["promoted"] == []
    assert result["output"]["verdict"].startswith("no change")
    assert result["steering"][0]["lens"]["verdict"].startswith("no change")
