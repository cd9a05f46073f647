"""interp end to end: a tiny model tuned to emit a few high-utility words carries more of the reward.

The "tuned" copy of the tiny base model gets a few language-model steps on reviews whose
sentiment words (and some others) are replaced by five high-VADER words. Both models are
harvested on the same corpus, an SAE is trained on each, every feature is explained
offline, and the explainer-independent reward score (docs/interp.md) must be higher for the
tuned model. Also checks the hf explainer on a local model (deterministic, cached).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from conftest import WORDS_NEG, WORDS_POS, make_reviews
from rlhf_lens.interp import ExampleConfig, LLMConfig, explain_features, format_table, get_explainer, utility_scores
from rlhf_lens.rewards import load_utility_table

HIGH_UTILITY = ["great", "wonderful", "excellent", "love", "best"]
LAYER = 2


def tune_towards(model, tokenizer, words: list[str], steps: int = 60, seed: int = 0):
    """A copy of `model` after `steps` LM steps on reviews rewritten to use `words` for every sentiment word."""
    rng = np.random.RandomState(seed)
    texts = []
    for row in make_reviews(100, seed=seed + 1):
        texts.append(" ".join(words[rng.randint(len(words))] if w in WORDS_POS or w in WORDS_NEG or rng.rand() < 0.3
                              else w for w in row["text"].split()))
    ids = tokenizer("\n".join(texts), add_special_tokens=False)["input_ids"]
    data = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)
    tuned = copy.deepcopy(model).train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(tuned.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        rows = data[torch.randint(0, len(data), (8,), generator=gen)]
        loss = tuned(input_ids=rows, labels=rows).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tuned.eval()


def test_tuned_model_features_carry_more_of_the_reward(tiny_model_dir, corpus_file, tmp_path):
    from rlhf_lens.harvest import HarvestConfig, harvest
    from rlhf_lens.models import load_model
    from rlhf_lens.sae import SAEConfig, train_saes

    base, tokenizer = load_model(str(tiny_model_dir))
    table = load_utility_table("vader")
    assert all(table[w] > 2 for w in HIGH_UTILITY)
    tuned = tune_towards(base, tokenizer, HIGH_UTILITY)
    explainer = get_explainer("offline")
    records = {}
    for name, model in (("base", base), ("tuned", tuned)):
        store = harvest(str(tiny_model_dir), HarvestConfig(layers=[LAYER], corpus=str(corpus_file), split="train",
                                                           max_tokens=50), tmp_path / name, model=model,
                        tokenizer=tokenizer)
        sae, = train_saes(store.source(LAYER), [SAEConfig(d_in=32, dict_size=32, epochs=4, batch_size=64)],
                          quiet=True)
        records[name] = explain_features(store, LAYER, {"sae": sae}, {"sae": list(range(32))}, tokenizer, explainer,
                                         ExampleConfig(), model=name, table=table)
    result = utility_scores(records, table)
    base_total, tuned_total = result["total"]["base"], result["total"]["tuned"]
    assert tuned_total["reward_score"] > base_total["reward_score"], format_table(result)
    assert tuned_total["positive_share"] > base_total["positive_share"], format_table(result)
    assert base_total["n_features"] == tuned_total["n_features"] == 32


def test_hf_explainer_on_a_local_model_is_deterministic_and_cached(tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_LENS_CACHE", str(tmp_path / "cache"))
    records = [["The", " good", " film"], ["so", " good"]]
    acts = [[0, 10, 1], [0, 9]]
    short = LLMConfig(max_tokens=24)  # a short answer is enough to check the mechanics
    explainer = get_explainer(f"hf:{tiny_model_dir}", short)
    assert explainer.capabilities.deterministic and not explainer.capabilities.network
    first = explainer.explain_many([("1", records, acts)])
    assert isinstance(first[0], str) and first[0]
    # simulation under the answer's grammar: well formed even from a tiny model, one value 0..10 per token
    scoring = [["a", " good", "\n", " film"], ["bad"]]
    simulated = explainer.simulate_many([(first[0], scoring)])[0]
    assert [len(s) for s in simulated] == [4, 1]
    assert all(v in range(11) for s in simulated for v in s)
    assert explainer.client.requests == 3
    again = get_explainer(f"hf:{tiny_model_dir}", short)
    assert again.explain_many([("1", records, acts)]) == first
    assert again.simulate_many([(first[0], scoring)])[0] == simulated
    assert again.client.requests == 0  # all answered from the disk cache
    assert again.local._loaded is None  # so the model was never even loaded
