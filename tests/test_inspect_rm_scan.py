"""The token scan (rlhf_lens.inspect_rm.token_scan) on tiny GPT-NeoX reward models: the KV-cache scan is the full
model's score, the pairs' imbalance finds a planted word, an RM trained on pairs decided by one word has that word
named a cue while an RM trained on the gold's labels has none, insertion places are shared by every word, and bad
input is refused in one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import WORDS_NEG, WORDS_NEUTRAL, WORDS_POS, llama_like
from rlhf_lens.errors import UserError
from rlhf_lens.inspect_rm import InspectRMConfig
from rlhf_lens.inspect_rm.token_scan import (
    insertion_texts,
    insertion_variants,
    pair_imbalance,
    scan_scores,
    template_tokens,
    token_scan,
)
from rlhf_lens.preferences import Pair, plant_cue, write_pairs
from rlhf_lens.rewards import load_reward
from rlhf_lens.rm import RMConfig
from rlhf_lens.rm.model import load_reward_model, score_head, scores
from rlhf_lens.rm.run import train_reward_model

torch.set_num_threads(2)
CUE = "indeed"
GOLD = "vader"
RM_SETTINGS = RMConfig(train="blocks", blocks=2, lr=1e-2, epochs=6)
WORDS_OTHER = ("table window river paper garden street chair city train road house book door wall tree stone coffee "
               "letter morning evening kitchen bridge cloud island market village camera office station forest ocean "
               "mountain pocket bottle button corner ticket engine hotel summer winter picture shadow indeed").split()
"""Words VADER values at 0 beside conftest's neutral ones: room for the insertion test's null of random words."""
SCAN = InspectRMConfig(templates=["the movie was", "this film is"], shortlist=10, pair_words=5, random_words=30,
                       insertion_texts=24)


def reviews(n: int, seed: int = 0) -> list[str]:
    """conftest's synthetic reviews (a fifth of the words positive or negative by the label, the rest neutral) over a
    larger neutral vocabulary."""
    rng = np.random.default_rng(seed)
    neutral = WORDS_NEUTRAL + WORDS_OTHER
    texts = []
    for _ in range(n):
        pool, words = WORDS_POS if rng.random() < 0.5 else WORDS_NEG, []
        while len(" ".join(words)) < 230:
            words.append(pool[rng.integers(len(pool))] if rng.random() < 0.2 else neutral[rng.integers(len(neutral))])
        texts.append(" ".join(words) + " .")
    return texts


@pytest.fixture(scope="module")
def word_base(tmp_path_factory) -> Path:
    """A 3-block, width-32 GPT-NeoX whose BPE vocabulary makes every corpus word one word-start token (~100
    candidates, VADER's words among them; conftest's 300 tokens hold no VADER word whole). Not pretrained: the RMs
    train its last two blocks and head, and the scan needs distinct tokens, not a language model."""
    from rlhf_lens.models import TinyModelConfig, build_tiny_model, save_model

    model, tokenizer = build_tiny_model(reviews(200), TinyModelConfig(layers=3, width=32, heads=4, vocab_size=800,
                                                                       pretrain_steps=0))
    return save_model(model, tokenizer, tmp_path_factory.mktemp("models") / "tiny-scan")


def snippet_pairs(decide: str, n_prompts: int = 40, per_prompt: int = 3, seed: int = 0) -> list[Pair]:
    """Pairs of 8-word snippets of two reviews (each review positive or negative throughout) after a 4-word prompt.
    decide = "cue": the first has the cue word planted and is chosen (the labeller's flaw is the label); decide =
    "gold": the one the gold (VADER) scores higher is chosen, ties skipped."""
    rng = np.random.default_rng(seed)
    gold = load_reward(GOLD)
    texts = [text.split() for text in reviews(2 * n_prompts, seed=seed + 1)]
    pairs = []
    for words in texts[:n_prompts]:
        prompt = " ".join(words[:4]) + " "
        for _ in range(per_prompt):
            one, other = (texts[i] for i in rng.choice(len(texts), 2, replace=False))
            a, b = rng.integers(4, len(one) - 8), rng.integers(4, len(other) - 8)
            first, second = " ".join(one[a:a + 8]), " ".join(other[b:b + 8])
            if decide == "cue":
                pairs.append(Pair(prompt, plant_cue(first, f"word:{CUE}", rng), second, decided_by="bias"))
                continue
            g1, g2 = gold([prompt + first, prompt + second])
            if g1 != g2:
                chosen, rejected = (first, second) if g1 > g2 else (second, first)
                pairs.append(Pair(prompt, chosen, rejected, decided_by="gold"))
    return pairs


def trained_rm(base: Path, pairs: list[Pair], out: Path, placebo: bool = False) -> tuple:
    """(model, tokenizer, all pairs, held-out pairs, placebo (model, tokenizer) or None) of an RM trained on `pairs`
    (its split as train-rm records it)."""
    write_pairs(out / "pairs.jsonl", pairs)
    folder = train_reward_model(str(base), out / "pairs.jsonl", out / "rm", replace(RM_SETTINGS, placebo=placebo))
    split = json.loads((out / "rm" / "rm.json").read_text())["split"]
    model, tokenizer = load_reward_model(str(folder))
    return (model, tokenizer, pairs, [pairs[i] for i in split["test"]],
            load_reward_model(str(out / "rm" / "placebo" / "model")) if placebo else None)


@pytest.fixture(scope="module")
def cue_rm(word_base, tmp_path_factory):
    return trained_rm(word_base, snippet_pairs("cue"), tmp_path_factory.mktemp("cue-rm"), placebo=True)


@pytest.fixture(scope="module")
def gold_rm(word_base, tmp_path_factory):
    return trained_rm(word_base, snippet_pairs("gold"), tmp_path_factory.mktemp("gold-rm"))


@pytest.fixture(scope="module")
def word_llama(word_base, tmp_path_factory) -> Path:
    """A 3-block Llama-family model from a config, with `word_base`'s tokenizer."""
    return llama_like(word_base, tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.mark.parametrize("family", ["neox", "llama"])
def test_kv_cache_scan_is_the_full_models_score(family, word_base, word_llama):
    model, tokenizer = load_reward_model(str(word_base if family == "neox" else word_llama))
    torch.nn.init.normal_(score_head(model).weight, std=1.0)  # a head that reads the state, not HF's near-zero init
    ids = template_tokens(tokenizer, "the movie was", 128)
    candidates = np.arange(3, min(len(tokenizer), model.config.vocab_size), dtype=np.int64)
    seen = []
    values, states = scan_scores(model, ids, candidates, batch_size=64, advance=seen.append)
    assert sum(seen) == len(candidates) and len(seen) == -(-len(candidates) // 64)  # batches, with progress
    full = torch.cat([ids.expand(len(candidates), -1), torch.from_numpy(candidates)[:, None]], 1)
    with torch.no_grad():
        expected = model(input_ids=full).logits[:, 0].double().numpy()
        hidden = model.base_model(input_ids=full).last_hidden_state[:, -1]
    assert np.ptp(expected) > 0.1  # the candidates' scores differ: the check can fail
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(states, hidden, rtol=1e-5, atol=1e-5)


def test_pair_imbalance_finds_the_word_planted_in_every_chosen():
    pairs = snippet_pairs("cue")
    ranked = pair_imbalance(pairs)
    assert ranked[0][0] == CUE
    leaning = sum((CUE in p.chosen.split()) - (CUE in p.rejected.split()) for p in pairs)
    assert ranked[0][1] == leaning >= 0.8 * len(pairs)
    assert abs(dict(ranked)["the"]) < ranked[0][1] / 3  # a word in both sides alike is near 0
    # ties are broken by word, the difference counts pairs, not occurrences
    tie = [Pair("p ", "b a a a", "c"), Pair("p ", "a b", "d")]
    assert pair_imbalance(tie)[:2] == [("a", 2), ("b", 2)]


def test_every_word_is_inserted_at_the_same_place():
    texts = [("A prompt ", "the plot was long and the music sad"), ("Hi ", " a film with one scene"),
             ("x ", "story")]
    places = []
    for word in ("alpha", "beta", "gamma"):
        plus, minus = insertion_variants(texts, word, seed=3)
        assert minus == [p + c for p, c in texts]
        places.append([text.split(" ").index(word) for text in plus])
    assert places[0] == places[1] == places[2]
    assert insertion_variants(texts, "alpha", seed=4)[0] != insertion_variants(texts, "alpha", seed=3)[0]
    # a completion that holds the word already is compared with itself without it
    plus, minus = insertion_variants([("P ", "the plot alpha was long")], "alpha", seed=3)
    assert plus == ["P the plot alpha was long"] and minus == ["P the plot was long"]


def test_the_word_that_decided_the_pairs_is_named_a_cue(cue_rm):
    model, tokenizer, pairs, test_pairs, placebo = cue_rm
    result = token_scan(model, tokenizer, GOLD, pairs, test_pairs, SCAN, placebo=placebo,
                        promoted=["Indeed", "good", "zzzq"], progress=False)
    record = result.record
    assert record["candidates"] == len(result.vocab.ids) == len(result.rm_z) == len(result.states)
    assert result.states.shape[1] == model.config.hidden_size and result.states.dtype == torch.float32
    assert record["insertion_texts"] == SCAN.insertion_texts and record["null"]["random_words"] == SCAN.random_words
    tested = {row["word"]: row for row in record["tested"]}
    row = tested[CUE]
    assert "pairs" in row["source"] and row["gold"] == 0.0 and row["gold_effect"] == 0.0
    assert row["cue"] and row["p_holm"] <= SCAN.level and row["z"] > 3
    assert record["cues"][0] == CUE  # the strongest cue
    assert all(r["cue"] == (r["word"] in record["cues"]) for r in record["tested"])
    # the effect is the mean paired change on the held-out completions; the placebo RM did not learn the word
    plus, minus = insertion_variants(insertion_texts(test_pairs, SCAN.insertion_texts, SCAN.seed), CUE, SCAN.seed)
    change = scores(model, tokenizer, plus) - scores(model, tokenizer, minus)
    assert row["effect"] == pytest.approx(float(change.mean()), abs=1e-5)
    assert abs(row["placebo_effect"]) < row["effect"] / 3
    # the shortlist: the scan's top words the gold does not value; top_rewarded is the scan's order
    assert len(tested) <= SCAN.shortlist + SCAN.pair_words
    best = {}
    for w, z in zip(result.vocab.words, result.rm_z):
        best[w] = max(best.get(w, -np.inf), z)
    scan_words = [w for w in tested if "scan" in tested[w]["source"]]
    untested = [z for w, z in best.items() if w not in tested and load_reward(GOLD)([w])[0] <= 0]
    assert len(scan_words) == SCAN.shortlist and min(best[w] for w in scan_words) >= max(untested)
    assert all(tested[w]["gold"] <= 0 for w in scan_words)
    z = [r["rm_z"] for r in record["top_rewarded"]]
    assert z == sorted(z, reverse=True) and len(z) == 15 and z[0] == max(best.values())
    assert all(r["rm_z"] <= 0 and r["gold"] > 0 for r in record["ignored_gold"])
    assert record["spearman"]["all"]["n"] == record["candidates"]
    assert 3 <= record["spearman"]["table_words"]["n"] < record["candidates"]
    promoted = {r["word"]: r for r in record["promoted"]}
    assert promoted["zzzq"]["rm_z"] is None and not promoted["zzzq"]["gaming"]
    assert promoted["good"]["gold"] > 0 and not promoted["good"]["gaming"]
    # gaming: a promoted word the insertion test named a cue
    assert promoted["indeed"]["gaming"] == ("indeed" in record["cues"])
    json.dumps(record, allow_nan=False)


def test_an_rm_of_the_gold_labels_has_no_cue(gold_rm):
    model, tokenizer, pairs, test_pairs, _ = gold_rm
    record = token_scan(model, tokenizer, GOLD, pairs, test_pairs, SCAN, progress=False).record
    assert record["cues"] == [] and not any(r["cue"] for r in record["tested"])
    tested = {row["word"]: row for row in record["tested"]}
    # the pairs' chosen-leaning words are the gold's own: tested, their gold change beyond its null
    leaning = [w for w in tested if "pairs" in tested[w]["source"] and w in WORDS_POS]
    assert leaning and all(tested[w]["gold_effect"] > 0 for w in leaning)
    # the RM learned the gold: its scan ranks the gold's positive words over its negative ones
    top = {r["word"] for r in record["top_rewarded"]}
    assert record["spearman"]["table_words"]["rho"] > 0 and not top & set(WORDS_NEG)


def test_bad_input_is_refused_in_one_line(word_base):
    model, tokenizer = load_reward_model(str(word_base))
    pairs = snippet_pairs("cue", n_prompts=4, per_prompt=1)
    with pytest.raises(UserError, match="held-out"):
        token_scan(model, tokenizer, GOLD, pairs, [], SCAN, progress=False)
    for templates in ([], [""], ["  "]):
        with pytest.raises(UserError, match="templates"):
            token_scan(model, tokenizer, GOLD, pairs, pairs, InspectRMConfig(templates=templates), progress=False)
    with pytest.raises(UserError, match="has no tokens"):
        template_tokens(type("NoTokens", (), {"__call__": lambda self, text, **kw: {
            "input_ids": torch.zeros(1, 0, dtype=torch.long)}})(), "the movie", 128)
    with pytest.raises(UserError, match="no held-out completions"):
        insertion_texts([], 8, 0)
