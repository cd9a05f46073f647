"""bench/calibration.py: its case generators and its adapters, on the tests' tiny corpus (a smoke test; the measured
table is in docs/calibration.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import calibration_cases as cases  # noqa: E402
import calibration_verdicts as verdicts  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory, corpus_file):
    return cases.build_world(str(corpus_file), tmp_path_factory.mktemp("calib") / "base", layers=3, width=32,
                             vocab=600, steps=30)


def test_world_has_the_rewards_words(world):
    words = {world.tokenizer.decode([i]).strip() for i in world.positive_ids}
    assert {"great", "love", "best"} <= words  # VADER >= 2 (good, 1.9, is not aimed at)
    assert not words & {"good", "bad", "terrible", "the"}


@pytest.mark.parametrize("kind", [*cases.NULL_KINDS, *cases.PLANTED_KINDS])
def test_cases_are_sized_seeded_and_leave_the_base_alone(world, kind, monkeypatch):
    monkeypatch.setattr(cases, "FINETUNE_MAX_STEPS", 12)  # the bench's 200 take minutes on this tiny corpus
    before = {k: v.clone() for k, v in world.base.state_dict().items()}
    a, b, c = cases.make_case(world, kind, 5), cases.make_case(world, kind, 5), cases.make_case(world, kind, 6)
    assert all(torch.equal(v, world.base.state_dict()[k]) for k, v in before.items())
    lo, hi = cases.KL_RANGE
    capped = kind in ("finetune", "planted_finetune")  # 12 steps here may stop short of the target
    assert 0.5 * lo <= a.kl <= 1.5 * hi if not capped else 0 < a.kl <= 1.5 * hi, (kind, a.kl)
    assert abs(cases.kl_per_token(world.base, a.model, world.kl_docs) - a.kl) < 1e-9
    same = all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    other = all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), c.model.state_dict().values()))
    assert same and not other
    assert a.null == (kind not in cases.PLANTED_KINDS)


def test_planted_direction_raises_the_chosen_words(world):
    case = cases.make_case(world, "planted", 1)
    rows = world.kl_docs[:4]
    with torch.no_grad():
        base, tuned = (torch.log_softmax(m(input_ids=rows).logits, -1) for m in (world.base, case.model))
    def share_gain(ids: list[int]) -> float:  # change of log P(one of `ids`), mean over positions
        return float((torch.logsumexp(tuned[..., ids], -1) - torch.logsumexp(base[..., ids], -1)).mean())

    rest = sorted(set(world.candidate_ids) - set(case.words))
    assert share_gain(case.words) > 0.2 and share_gain(case.words) > share_gain(rest) + 0.2


def test_plan_mixes_kinds_with_distinct_seeds():
    plan = cases.case_plan(42, 21, 0)
    kinds = [k for k, _ in plan]
    planted = [k in cases.PLANTED_KINDS for k in kinds]
    assert sum(planted) == 21 and {k for k in kinds if k not in cases.PLANTED_KINDS} == set(cases.NULL_KINDS)
    assert {k for k in kinds if k in cases.PLANTED_KINDS} == set(cases.PLANTED_KINDS)
    assert all(sum(planted[i:i + 9]) == 3 for i in range(0, 63, 9))  # spread: a partial run holds both
    assert len({s for _, s in plan}) == len(plan)


def test_output_verdict_on_a_planted_and_a_null_change(world, tmp_path):
    settings = verdicts.Settings(layers=[2], rank_layers=[1], rank_random=2, docs=12, prompts=8, new_tokens=6,
                                 random=4)
    planted = cases.make_case(world, "planted", 2)
    diff = verdicts.run_diff(world, planted, settings, tmp_path / "planted")
    promoted = [t["token_id"] for t in diff["output"]["promoted"][:5]]
    assert set(promoted) & set(planted.words), promoted  # the diff sees what was planted
    found = verdicts.output_verdict(diff)
    assert found["text"] == diff["output"]["verdict"] and 0 < found["p"] <= 1
    assert found["claimed"] == ("promotes reward-laden" in found["text"] or "demotes words" in found["text"])
    null = cases.make_case(world, "noise", 3)
    diff = verdicts.run_diff(world, null, settings, tmp_path / "null")
    assert not verdicts.output_verdict(diff)["positive"], diff["output"]["verdict"]
    assert set(diff["files"]["activations"]) == {"base", "tuned"}


def test_swapped_stores_exchange_whole_documents(world, tmp_path):
    from rlhf_lens.store import ActivationStore

    settings = verdicts.Settings(layers=[2], docs=8, prompts=4, new_tokens=2, random=1)
    case = cases.make_case(world, "direction", 4)
    diff = verdicts.run_diff(world, case, settings, tmp_path / "diff")
    acts = {k: tmp_path / "diff" / v for k, v in diff["files"]["activations"].items()}
    swapped = verdicts.swapped_stores(acts["base"], acts["tuned"], 2, tmp_path / "swapped", seed=0)
    original = {k: ActivationStore(v).read_shard(0, 2) for k, v in acts.items()}
    new = {k: ActivationStore(v).read_shard(0, 2) for k, v in swapped.items()}
    moved = (new["base"].acts != original["base"].acts).any(1)
    assert torch.equal(new["base"].acts + new["tuned"].acts, original["base"].acts + original["tuned"].acts)
    for doc in new["base"].doc.unique():
        rows = moved[new["base"].doc == doc]
        assert rows.all() or not rows.any()  # a document is swapped whole or not at all
    assert 0 < int(moved.sum()) < len(moved)


def test_placebo_verdict_claims_a_large_shift_and_rates_are_counted():
    from calibration import placebo_rates, rate_line

    rates = placebo_rates(20, seed=0, shift=50.0)
    assert sum(r["positive"] for r in rates["planted"]) == 20
    line, row = rate_line("utility vs placebo", rates["null"], rates["planted"])
    assert line.startswith("utility vs placebo: false-positive rate ") and "over 20 null changes" in line
    assert row["power"] == 1.0 and 0 <= row["interval"][0] <= row["false_positive_rate"] <= row["interval"][1]
