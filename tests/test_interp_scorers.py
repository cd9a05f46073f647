"""interp: detection and fuzzing scorers, their activating / silent samples, the shuffled-explanation null and the
pooled test, on a planted feature in a hand-made activation store (an identity SAE reads its columns)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from rlhf_lens.errors import UserError
from rlhf_lens.interp import ExampleConfig, collect_examples, explain_features
from rlhf_lens.interp.explainers import Capabilities, Explainer, simulate_offline
from rlhf_lens.interp.fuzzing import mark
from rlhf_lens.interp.samples import AFTER_PEAK
from rlhf_lens.interp.scorers import BEATS, NO_BETTER, TOO_FEW, auroc, choose_null_explanations, scorer_summary
from rlhf_lens.nulls import binomial_interval
from rlhf_lens.sae import SAEConfig, SparseAutoencoder
from rlhf_lens.store import ActivationStore, StoreWriter

# Features (activation columns): 0 fires on "film" (strength varies by document), 1 on "scene", 2 on "music";
# "plot" is a distractor that appears as often, where no feature fires. (Words of one token of the tiny tokenizer.)
PLANTED = ["film", "scene", "music"]
FILLER = ["was", "is", "a", "and", "with", "to", "ending"]
N_DOCS, LENGTH, SHARD = 160, 16, 40
CONFIG = ExampleConfig(n_top=3, n_holdout=2, n_random=2, max_tokens=LENGTH, seed=0, n_activating=20, n_silent=20,
                       context_tokens=10)
RIGHT = {0: 'Fires on "film".', 1: 'Fires on "scene".', 2: 'Fires on "music".'}


def identity_sae(d: int) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=d, dict_size=d))
    with torch.no_grad():
        sae.decoder.copy_(torch.eye(d))
    return sae.eval()


def single_token_ids(tokenizer) -> dict[str, int]:
    ids = {}
    for word in PLANTED + FILLER + ["plot"]:
        got = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        assert len(got) == 1, f"{word!r} is not one token of the tiny tokenizer"
        ids[word] = got[0]
    return ids


def build_docs(seed: int = 0) -> list[tuple[list[str], list[list[float]]]]:
    """Documents of words; each planted word appears in about half of them, with a per-document strength."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(N_DOCS):
        words = list(rng.choice(FILLER, size=LENGTH))
        strength = float(rng.integers(1, 11))
        for word in PLANTED + ["plot"]:
            if rng.random() < 0.5:
                words[int(rng.integers(LENGTH))] = word
        rows = [[strength if w == "film" else 0.0, 2.0 if w == "scene" else 0.0, 3.0 if w == "music" else 0.0]
                for w in words]
        docs.append((words, rows))
    return docs


def write_store(folder, docs, ids) -> ActivationStore:
    """The documents as a complete activation store (layer 1, shards of SHARD documents), by `store.StoreWriter`."""
    writer = StoreWriter(folder, {"model": "hand", "tokenizer": "hand", "corpus": "hand", "split": "test",
                                  "layers": [1], "d": 3, "dtype": "float32", "n_docs": len(docs)})
    for start in range(0, len(docs), SHARD):
        rows = [(doc, pos) for doc in range(start, min(start + SHARD, len(docs))) for pos in range(LENGTH)]
        writer.add_shard({1: torch.tensor([docs[d][1][p] for d, p in rows], dtype=torch.float32)},
                         {"token_ids": torch.tensor([ids[docs[d][0][p]] for d, p in rows]),
                          "doc": torch.tensor([d for d, _ in rows]), "pos": torch.tensor([p for _, p in rows])},
                         start, min(start + SHARD, len(docs)))
    return writer.finish()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from rlhf_lens.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tokenizer):
    docs = build_docs()
    return write_store(tmp_path_factory.mktemp("planted-store"), docs, single_token_ids(tokenizer)), docs


class Given(Explainer):
    """Explanations given by hand (feature -> sentence); the offline simulator reads them."""

    name = "given"
    capabilities = Capabilities(deterministic=True, uses_llm=False, network=False, corpus_statistics=False,
                                parallel=False)

    def __init__(self, explanations: dict[int, str]):
        self.explanations = explanations

    def explain_many(self, features, corpus=None):
        return [self.explanations[int(label)] for label, _, _ in features]

    def simulate_many(self, jobs):
        return [[simulate_offline(text, tokens) for tokens in records] for text, records in jobs]


class KnownAnswers:
    """A scorer whose answers are known: P(yes) = 0.9 when a word the explanation quotes is in the text
    (detection) or among the marked tokens (fuzzing), else 0.1. `fail_every` k: every k-th answer is None."""

    model_id = "known"

    def __init__(self, fail_every: int = 0, ignore_explanation: bool = False):
        self.requests, self.seconds, self.calls = 0, 0.0, 0
        self.fail_every, self.ignore_explanation = fail_every, ignore_explanation

    def answer(self, prompt: list[dict]) -> float:
        user = prompt[-1]["content"]
        explanation = user.split("\n")[0]
        text = user.split("\nText: ")[1].rsplit("\n", 1)[0]
        if self.ignore_explanation:  # a scorer that reads only the text: a coin flip seeded by it
            return float(np.random.default_rng(list(text.encode())).random())
        quoted = set(re.findall(r'"([^"]+)"', explanation))
        shown = re.findall(r"<<([^>]*)>>", text) if "marked" in user else re.findall(r"\w+", text)
        return 0.9 if quoted & {w.strip().lower() for s in shown for w in s.split()} else 0.1

    def p_yes(self, prompts, advance=None):
        self.calls += 1
        out = []
        for prompt in prompts:
            self.requests += 1
            out.append(None if self.fail_every and self.requests % self.fail_every == 0 else self.answer(prompt))
        if advance is not None:
            advance(len(prompts))
        return out


def run(planted, tokenizer, explanations, scorer=None, **kwargs):
    store, _ = planted
    return explain_features(store, 1, {"id": identity_sae(3)}, {"id": [0, 1, 2]}, tokenizer, Given(explanations),
                            CONFIG, scorers=kwargs.pop("scorers", ("simulation", "detection", "fuzzing")),
                            yes_no=scorer or KnownAnswers(), **kwargs)


def test_a_correct_explanation_scores_near_one_and_a_wrong_one_near_half(planted, tokenizer):
    scorer = KnownAnswers()
    right = {r["feature"]: r for r in run(planted, tokenizer, RIGHT, scorer)}
    # one p_yes call per scorer, every feature x (real + null explanation) x case in it
    assert scorer.calls == 2
    wrong = {r["feature"]: r for r in run(planted, tokenizer, {**RIGHT, 0: 'Fires on "plot".'})}
    for name in ("detection", "fuzzing"):
        entry = right[0][name]
        assert entry["auroc"] > 0.95, (name, entry)
        assert entry["n_activating"] == CONFIG.n_activating and entry["failures"] == 0
        # the null (another feature's explanation, about a word placed independently of "film") is near chance
        assert len(entry["null"]) == 1 and abs(entry["null"][0] - 0.5) < 0.2, (name, entry)
        assert abs(wrong[0][name]["auroc"] - 0.5) < 0.2, (name, wrong[0][name])
    assert right[0]["detection"]["n_silent"] == CONFIG.n_silent
    assert right[0]["fuzzing"]["n_wrong"] == CONFIG.n_activating
    assert right[0]["score"] > 0.9 and len(right[0]["simulation_null"]) == 1
    assert right[0]["simulation_null"][0] < 0.3


def test_the_null_is_other_features_explanations_never_the_own(planted, tokenizer):
    texts = ["a", "b", "a", "c", "d"]
    nulls = choose_null_explanations(texts, 3, seed=0)
    for i, picked in enumerate(nulls):
        assert len(picked) == len(set(picked)) == 3 and i not in picked
        assert all(texts[k] != texts[i] for k in picked)
    assert nulls == choose_null_explanations(texts, 3, seed=0)
    assert choose_null_explanations(["same", "same"], 1) == [[], []]  # no other text: no null, never its own
    records = run(planted, tokenizer, RIGHT, null_explanations=2)
    for record in records:
        labels = record["detection"]["null_explanations"]
        assert len(labels) == 2 == len(record["detection"]["null"]) == len(record["simulation_null"])
        assert {"sae": "id", "feature": record["feature"]} not in labels
        assert labels == record["fuzzing"]["null_explanations"]


def test_a_feature_riding_along_leaves_the_others_records_as_they_were(planted, tokenizer):
    """The features stage explains the tuned model's most novel features in the same pass as its top-k; with
    null_from = the top-k, the top-k records (their nulls included) equal those of explaining them alone."""
    store, _ = planted
    alone = explain_features(store, 1, {"id": identity_sae(3)}, {"id": [0, 1]}, tokenizer, Given(RIGHT), CONFIG,
                             scorers=("simulation", "detection"), yes_no=KnownAnswers())
    along = explain_features(store, 1, {"id": identity_sae(3)}, {"id": [0, 1, 2]}, tokenizer, Given(RIGHT), CONFIG,
                             scorers=("simulation", "detection"), yes_no=KnownAnswers(), null_from={"id": [0, 1]})
    assert along[:2] == alone
    assert along[2]["detection"]["null_explanations"][0]["feature"] in (0, 1)


def test_the_activating_sample_spans_the_bins_and_skips_the_top_documents(planted, tokenizer):
    store, docs = planted
    item = collect_examples(store, 1, {"id": identity_sae(3)}, {"id": [0]}, tokenizer, CONFIG).features[("id", 0)]
    doc_max = {d: max(row[0] for row in rows) for d, (_, rows) in enumerate(docs)}
    firing = sorted(d for d, m in doc_max.items() if m > 0)
    assert item.n_firing == len(firing)
    top = {r.doc for r in item.top}
    chosen = [r.doc for r in item.activating]
    assert len(chosen) == len(set(chosen)) == CONFIG.n_activating and not top & set(chosen)
    assert all(doc_max[d] > 0 for d in chosen)
    maxima = [r.max_activation for r in item.activating]
    assert maxima == sorted(maxima, reverse=True)  # strongest bin first
    strengths = sorted(doc_max[d] for d in firing)
    assert maxima[0] >= np.quantile(strengths, 0.8) and maxima[-1] <= np.quantile(strengths, 0.2)
    for record in item.activating:  # a window of context_tokens ending AFTER_PEAK tokens after the peak
        values = [row[0] for row in docs[record.doc][1]]
        peak = int(np.argmax(values))
        assert record.kind == "activating" and len(record.values) == CONFIG.context_tokens
        assert record.values == values[record.start:record.start + CONFIG.context_tokens]
        assert record.start <= peak < record.start + CONFIG.context_tokens
        assert record.start + CONFIG.context_tokens == min(LENGTH, max(CONFIG.context_tokens, peak + 1 + AFTER_PEAK))
    # silent: the first documents of the random records' permutation where the feature's max is 0
    order = np.random.default_rng(CONFIG.seed).permutation(N_DOCS).tolist()
    assert [r.doc for r in item.silent] == [d for d in order if doc_max[d] <= 0][: CONFIG.n_silent]
    assert all(r.start == 0 and len(r.tokens) == CONFIG.context_tokens for r in item.silent)


def test_a_dense_feature_records_fewer_silent_documents(planted, tokenizer):
    store, docs = planted
    config = ExampleConfig(**{**CONFIG.__dict__, "n_silent": N_DOCS})
    item = collect_examples(store, 1, {"id": identity_sae(3)}, {"id": [0]}, tokenizer, config).features[("id", 0)]
    assert len(item.silent) == N_DOCS - item.n_firing < N_DOCS


def test_same_seed_same_bits(planted, tokenizer):
    first = run(planted, tokenizer, RIGHT)
    assert first == run(planted, tokenizer, RIGHT)
    store, _ = planted
    a, b = (collect_examples(store, 1, {"id": identity_sae(3)}, {"id": [0]}, tokenizer,
                             ExampleConfig(**{**CONFIG.__dict__, "seed": seed})).features[("id", 0)]
            for seed in (0, 1))
    assert [r.doc for r in a.activating] != [r.doc for r in b.activating]


def test_failed_answers_are_counted_not_fatal(planted, tokenizer):
    records = run(planted, tokenizer, RIGHT, KnownAnswers(fail_every=7))
    assert sum(r["detection"]["failures"] + r["fuzzing"]["failures"] for r in records) > 0
    assert records[0]["detection"]["auroc"] > 0.9
    assert auroc([None, None], [0.1]) is None and auroc([0.9], []) is None
    with pytest.raises(UserError, match="interp.scorer_model"):
        explain_features(planted[0], 1, {"id": identity_sae(3)}, {"id": [0]}, tokenizer, Given(RIGHT), CONFIG,
                         scorers=("detection",), yes_no=None)


def test_score_features_and_the_records_of_simulation_only(planted, tokenizer):
    records = run(planted, tokenizer, RIGHT, score_features=1)
    assert "detection" in records[0] and "fuzzing" in records[0]
    assert all("detection" not in r and "fuzzing" not in r for r in records[1:])
    assert all("detection" not in r for r in run(planted, tokenizer, RIGHT, scored_saes=["other"]))
    plain = run(planted, tokenizer, RIGHT, scorers=("simulation",), null_explanations=0)
    assert all("simulation_null" not in r and "detection" not in r for r in plain)
    assert [r["score"] for r in plain] == [r["score"] for r in records]
    only = run(planted, tokenizer, RIGHT, scorers=("detection",))
    assert all(r["score"] is None and "simulation_null" not in r for r in only)


def test_auroc_is_mann_whitney_with_ties_half():
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auroc([0.1], [0.9]) == 0.0
    assert auroc([0.5, 0.5], [0.5]) == 0.5
    assert auroc([0.9, 0.5, None], [0.5, 0.1]) == pytest.approx((2 + 1.5) / 4)


def test_mark_wraps_the_marked_tokens_outside_their_spaces():
    assert mark([" the", " wonder", "ful", " film"], {1, 2}) == " the <<wonderful>> film"
    assert mark([" a", " b"], {0, 1}) == " <<a>> <<b>>"
    assert mark([" a", "\n"], {1}) == " a<<\n>>"  # a whitespace-only token is marked whole


def test_a_scorer_that_ignores_the_explanation_gives_no_claim(planted, tokenizer):
    records = run(planted, tokenizer, RIGHT, KnownAnswers(ignore_explanation=True), null_explanations=2)
    for name in ("detection", "fuzzing"):
        summary = scorer_summary(records, name)
        assert summary["n_features"] == 3 and not summary["beats_null"], summary
        assert summary["difference"]["mean"] == 0.0  # the same answers whatever the explanation
    assert scorer_summary(records, "simulation")["n_features"] == 3
    # three features cannot reach p < 0.05 by sign flips (at best 1/8), however good the explanations
    assert scorer_summary(run(planted, tokenizer, RIGHT), "detection")["verdict"] == TOO_FEW


def null_replicate(rng: np.random.Generator, n_features: int = 20, n_cases: int = 10) -> list[dict]:
    """Feature records from a scorer whose P(yes) ignores the explanation: real and null AUROC exchangeable."""
    records = []
    for _ in range(n_features):
        real, null = (auroc(rng.random(n_cases), rng.random(n_cases)) for _ in range(2))
        records.append({"detection": {"auroc": real, "null": [null]}})
    return records


def test_the_pooled_test_false_positive_rate_on_null_replicates():
    """200 seeded replicates of 20 features each under the null: the rate of claims is at the level."""
    rng = np.random.default_rng(27)
    summaries = [scorer_summary(null_replicate(rng), "detection") for _ in range(200)]
    claims = sum(s["beats_null"] for s in summaries)
    low, high = binomial_interval(claims, 200)
    assert low <= 0.05, (claims, low, high)  # measured: 8 of 200 (0.04)
    assert {s["verdict"] for s in summaries} == {BEATS, NO_BETTER}
    good = [{"detection": {"auroc": 0.9, "null": [float(v)]}} for v in rng.uniform(0.4, 0.6, 20)]
    assert scorer_summary(good, "detection")["verdict"] == BEATS


@pytest.fixture(scope="module")
def yes_no_llama(tmp_path_factory):
    """A tiny (untrained) Llama whose tokenizer writes yes and no as one token each (reading P(yes) needs it)."""
    from conftest import llama_like
    from rlhf_lens.models import train_tokenizer

    tok = train_tokenizer(["Explanation: Fires on film. Text: was a scene with music. Answer yes or no . Yes No"]
                          * 20, 300)
    folder = tmp_path_factory.mktemp("yes-no-tok")
    tok.save_pretrained(folder)
    return llama_like(folder, tmp_path_factory.mktemp("models") / "yes-no-llama")


def test_through_a_real_tiny_model(planted, tokenizer, yes_no_llama):
    """Detection and fuzzing through a real (untrained) tiny Llama read by answers.yes_no_model: every prompt
    answered or counted as failed, one batch per scorer, the AUROCs in [0, 1]; a rerun answers from the cache."""
    answers = pytest.importorskip("rlhf_lens.interp.answers")  # Helper A's module (issue 27)
    tiny_llama_dir = yes_no_llama
    store, _ = planted
    config = ExampleConfig(**{**CONFIG.__dict__, "n_activating": 3, "n_silent": 3})

    def score():
        yes_no = answers.yes_no_model(f"hf:{tiny_llama_dir}")
        records = explain_features(store, 1, {"id": identity_sae(3)}, {"id": [0, 1]}, tokenizer, Given(RIGHT),
                                   config, scorers=("detection", "fuzzing"), yes_no=yes_no)
        return yes_no, records

    yes_no, records = score()
    # per feature and scorer: (1 + 1 null explanation) x (3 activating + 3 silent or wrongly marked) prompts
    assert yes_no.requests == 2 * 2 * 2 * 6
    for record in records:
        for name in ("detection", "fuzzing"):
            entry = record[name]
            assert all(v is None or 0.0 <= v <= 1.0 for v in [entry["auroc"], *entry["null"]])
            assert 0 <= entry["failures"] <= 12
    again, rerun = score()
    assert again.requests == 0 and again.cached == 2 * 2 * 2 * 6 and rerun == records
