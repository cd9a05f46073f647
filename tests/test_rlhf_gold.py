"""The gold watching every tune: held-out evaluations along PPO (evals.jsonl), the proxy-and-gold curve against
sqrt(KL) (`gold_curve`, gold.json), and its place in the report."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_user_error, run_cli
from rlhf_lens.errors import UserError
from rlhf_lens.rlhf import PPOConfig, train_ppo
from rlhf_lens.rlhf.evals import repetition
from rlhf_lens.rlhf.gold import fit_rl_form, gold_curve

PROXY = "film,1\nmovie,1\nstory,1\nplot,1\n"  # frequent words of the synthetic reviews: PPO raises it fast
GOLD = "good,1\ngreat,1\nbad,-1\nterrible,-1\n"  # another judge: the sentiment words
FAST = dict(steps=6, batch_size=32, mini_batch_size=16, ppo_epochs=4, lr=3e-3, warmup_steps=1, init_kl_coef=0.05,
            eval_prompts=24, checkpoint_every=3)


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("tables")
    (folder / "proxy.csv").write_text(PROXY)
    (folder / "gold.csv").write_text(GOLD)
    return f"table:{folder / 'proxy.csv'},scale=1", f"table:{folder / 'gold.csv'},scale=1"


@pytest.fixture(scope="module")
def watched(tmp_path_factory, tiny_model_dir, corpus_file, specs):
    out = tmp_path_factory.mktemp("ppo") / "watched"
    train_ppo(str(tiny_model_dir), specs[0], str(corpus_file), out, PPOConfig(eval_every=2, **FAST), gold=specs[1])
    return out


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]


def test_evaluations_along_the_tune_hold_proxy_gold_kl_and_repetition(watched, specs):
    from rlhf_lens.rewards import load_reward

    evals = _rows(watched / "evals.jsonl")
    assert [r["step"] for r in evals] == [0, 2, 4, 6]
    for row in evals:
        per = row["per_prompt"]
        assert row["n"] == 24 and all(len(per[k]) == 24 for k in ("proxy", "gold", "kl"))
        assert row["proxy"]["mean"] == pytest.approx(np.mean(per["proxy"]))
        assert row["gold"]["se"] == pytest.approx(np.std(per["gold"], ddof=1) / math.sqrt(24))
        assert row["sqrt_kl"] == pytest.approx(math.sqrt(max(np.mean(per["kl"]), 0.0)))
        assert 0 < row["distinct_2"] <= 1 and 0 < row["top_word_share"] <= 1 and row["top_word"]
    assert abs(evals[0]["kl"]["mean"]) < 1e-4  # before the first step the policy is the base
    assert evals[-1]["kl"]["mean"] > 0.05 and evals[-1]["proxy"]["mean"] > evals[0]["proxy"]["mean"] + 0.5
    # the last evaluation is the tuned model's held-out evaluation, the first the base's
    result = json.loads((watched / "eval.json").read_text())
    assert result["tuned"]["mean"] == evals[-1]["proxy"]["mean"] and result["base"]["mean"] == evals[0]["proxy"]["mean"]
    assert result["gold"] == {"spec": specs[1], "base": evals[0]["gold"], "tuned": evals[-1]["gold"]}
    # the gold is the gold table's score of the prompt + response
    gold = load_reward(specs[1])
    completion = result["examples"][0]
    assert evals[-1]["per_prompt"]["gold"][0] == pytest.approx(gold([completion["prompt"] + completion["tuned"]])[0])
    curve = json.loads((watched / "gold.json").read_text())
    assert curve["n_evals"] == 4 and curve["gold"] == specs[1] and curve["verdict"]
    assert curve["fit"]["proxy"] is not None and curve["proxy_rise"]["z"] > 4
    assert (watched / "gold.png").stat().st_size > 1000


def test_evaluations_leave_the_training_bits_alone(tmp_path, watched, tiny_model_dir, corpus_file, specs):
    plain = tmp_path / "plain"
    train_ppo(str(tiny_model_dir), specs[0], str(corpus_file), plain, PPOConfig(eval_every=0, **FAST))
    a, b = load_file(str(watched / "model" / "model.safetensors")), load_file(str(plain / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _without_timings(_rows(plain / "log.jsonl")) == _without_timings(_rows(watched / "log.jsonl"))
    assert not (plain / "evals.jsonl").exists() and not (plain / "gold.json").exists()
    assert "gold" not in json.loads((plain / "eval.json").read_text())


def test_a_killed_run_resumes_with_its_evaluations(tmp_path, monkeypatch, watched, tiny_model_dir, corpus_file, specs):
    out = tmp_path / "resumed"
    config = PPOConfig(eval_every=2, **FAST)
    monkeypatch.setenv("RLHF_LENS_INTERRUPT_AFTER", "rlhf:5")
    with pytest.raises(KeyboardInterrupt):
        train_ppo(str(tiny_model_dir), specs[0], str(corpus_file), out, config, gold=specs[1])
    assert [r["step"] for r in _rows(out / "evals.jsonl")] == [0, 2, 4]  # the checkpoint is at step 3
    monkeypatch.delenv("RLHF_LENS_INTERRUPT_AFTER")
    train_ppo(str(tiny_model_dir), specs[0], str(corpus_file), out, config, gold=specs[1])
    assert _without_timings(_rows(out / "evals.jsonl")) == _without_timings(_rows(watched / "evals.jsonl"))
    assert json.loads((out / "gold.json").read_text()) == json.loads((watched / "gold.json").read_text())


def test_a_bad_gold_fails_before_any_write(tmp_path, tiny_model_dir, corpus_file, specs):
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"^gold\.spec: unknown reward spec"):
        train_ppo(str(tiny_model_dir), specs[0], str(corpus_file), out, PPOConfig(**FAST), gold="warmth")
    assert not out.exists()
    result = run_cli("rlhf", "--base", tiny_model_dir, "--corpus", corpus_file, "--reward", specs[0],
                     "--gold", f"table:{tmp_path / 'missing.csv'}", "--out", out)
    assert_user_error(result, "--gold")
    assert not out.exists()


def test_a_model_tuned_elsewhere_gets_the_gold_too(tmp_path, watched, tiny_model_dir, corpus_file, specs):
    from rlhf_lens.rlhf import evaluate_models

    result = evaluate_models(str(tiny_model_dir), str(watched / "model"), specs[0], str(corpus_file), tmp_path,
                             PPOConfig(**FAST), gold=specs[1])
    ours = json.loads((watched / "eval.json").read_text())
    assert result["gold"] == ours["gold"] and result["tuned"] == ours["tuned"]  # the same prompts and streams
    with pytest.raises(UserError, match=r"^--gold: unknown reward spec"):
        evaluate_models(str(tiny_model_dir), str(watched / "model"), specs[0], str(corpus_file), tmp_path / "x",
                        PPOConfig(**FAST), gold="warmth", gold_key=lambda name: "--gold")


def test_repetition_counts_word_bigrams_and_the_top_word():
    stats = repetition(["good good good", "a good film"])
    assert stats["distinct_2"] == pytest.approx(3 / 4)  # (good good) twice, (a good), (good film)
    assert stats["top_word"] == "good" and stats["top_word_share"] == pytest.approx(4 / 6)
    assert repetition([""])["distinct_2"] is None


# --- the curve on synthetic evaluations --------------------------------------------------------


def _rl_form(d: float, alpha: float, beta: float) -> float:
    return d * (alpha - beta * math.log(d)) if d > 0 else 0.0


def _synthetic(gold_ab: tuple[float, float], proxy_ab=(1.0, 0.0), n=64, evals=8, noise=0.05, seed=0) -> list[dict]:
    """Evaluations whose mean rewards follow d(alpha - beta log d) at d = 0, 0.5, 1, ... (per-prompt noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(evals):
        d = 0.5 * i
        per = {"kl": np.full(n, d * d) + rng.normal(0, 0.01, n),
               "proxy": _rl_form(d, *proxy_ab) + rng.normal(0, noise, n),
               "gold": _rl_form(d, *gold_ab) + rng.normal(0, noise, n)}
        rows.append({"step": 10 * i, **{k: {"mean": float(v.mean()), "se": float(v.std(ddof=1) / math.sqrt(n))}
                                        for k, v in per.items()},
                     "per_prompt": {k: v.tolist() for k, v in per.items()}})
    return rows


def test_the_rl_form_is_recovered_exactly_without_noise():
    d = np.linspace(0, 4, 9)
    change = np.where(d > 0, d * (1.5 - 0.6 * np.log(np.where(d > 0, d, 1))), 0)
    fit = fit_rl_form(d, change)
    assert fit["alpha"] == pytest.approx(1.5) and fit["beta"] == pytest.approx(0.6)
    assert fit["peak"] == pytest.approx(math.exp(1.5 / 0.6 - 1))
    assert fit_rl_form(np.zeros(4), np.zeros(4)) is None


def test_a_gold_that_peaks_gives_a_point_with_an_interval():
    curve = gold_curve(_synthetic((1.0, 0.8)))
    assert curve["fit"]["gold"]["beta"] == pytest.approx(0.8, abs=0.05)
    point, true_peak = curve["point"], math.exp(1 / 0.8 - 1)
    assert point["confident"] and point["share_inside"] > 0.95
    assert point["low"] <= true_peak <= point["high"] and point["sqrt_kl"] == pytest.approx(true_peak, rel=0.05)
    assert 20 <= point["step"] <= 30  # d = 0.5 per 10 steps
    assert curve["verdict"].startswith(f"the gold peaked at sqrt(KL) = {point['sqrt_kl']:.3g}")
    assert "overoptimised the proxy" in curve["verdict"]


def test_a_rising_or_flat_gold_gives_no_point():
    rising = gold_curve(_synthetic((1.0, -0.2)))
    assert rising["point"] is None and rising["gold_trend"] == "rising"
    assert rising["verdict"].startswith("no overoptimisation point within this run: the gold was rising")
    assert "sqrt(KL) = 3.5" in rising["verdict"]
    flat = gold_curve(_synthetic((0.0, 0.0)))
    assert flat["gold_trend"] == "flat" and "the gold was flat" in flat["verdict"]
    assert flat["point"] is None or not flat["point"]["confident"]


def test_too_few_evaluations_or_no_gold_say_so():
    assert gold_curve(_synthetic((1.0, 0.8), evals=2))["verdict"].startswith("too few evaluations to fit")
    no_gold = [{**r, "gold": None, "per_prompt": {**r["per_prompt"], "gold": None}} for r in _synthetic((1.0, 0.8))]
    curve = gold_curve(no_gold)
    assert curve["verdict"].startswith("no gold given") and curve["fit"]["gold"] is None
    assert curve["fit"]["proxy"]["alpha"] == pytest.approx(1.0, abs=0.05)
    assert gold_curve([])["verdict"] == "no gold given"


# --- the report --------------------------------------------------------------------------------


def test_the_report_shows_the_curve_and_renders_as_before_without_one(tmp_path, watched):
    from report_results import make_results
    from report_results import section as html_section
    from rlhf_lens.pipeline.results import gold_for_report
    from rlhf_lens.report import write_report

    plain = tmp_path / "plain"
    plain.mkdir()
    results = make_results()
    (plain / "results.json").write_text(json.dumps(results))
    page, summary = (p.read_text() for p in write_report(plain))
    assert "along the tune" not in page and "along the tune" not in summary and "gold" not in html_section(page, "ppo")

    results["ppo"]["gold"] = gold_for_report(watched)
    results["ppo"]["eval"] = json.loads((watched / "eval.json").read_text())
    assert all("per_prompt" not in row for row in results["ppo"]["gold"]["evals"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results))
    page, summary = (p.read_text() for p in write_report(run))
    ppo = html_section(page, "ppo")
    verdict = results["ppo"]["gold"]["curve"]["verdict"]
    assert "Proxy and gold along the tune" in ppo and ppo.count("<img") == html_section(
        (plain / "report.html").read_text(), "ppo").count("<img") + 1
    assert verdict.split(":")[0] in ppo and "gold \u00b1 se" in ppo and "distinct-2" in ppo
    assert "gold (table:" in ppo  # the held-out table's gold column
    assert "## " in summary and "Proxy and gold along the tune" in summary and "| step | \u221aKL |" in summary
    assert summary.count("\n| 6 |") == 1  # one row per evaluation: steps 0, 2, 4, 6
