"""A run that trains its own reward model (reward.spec = rm, presets tiny-rm and demo-rm): pairs sampled from the
base and labelled by the gold, a Bradley-Terry RM, PPO against it with the gold watching, the report's section;
the pairs and rm stages off in any other run; bad [preferences]/[rm]/[gold] settings refused before any work."""

from __future__ import annotations

import json

import pytest

from conftest import assert_user_error, run_cli
from rlhf_lens.config import load_config
from rlhf_lens.pipeline import stage_keys
from rlhf_lens.pipeline.runner import stage_off

# tiny-rm, smaller: the machinery end to end, not the science (the tiny model's RM stays near chance)
SMALL = ["tiny.pretrain_steps=20", "preferences.prompts=48", "rlhf.steps=4", "rlhf.eval_every=2", "rlhf.eval_prompts=16", "diff.prompts=4",
         "diff.random_directions=2", "diff.rank_random=2", "diff.max_docs=16", "harvest.max_docs=24",
         "sae.max_tokens=20000", "decompose.diffsae.max_tokens=20000", "decompose.diffsae.seeds=[0]",
         "decompose.steer.random=2", "interp.top_k=2"]


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm-run") / "run"
    args = ["run", "--preset", "tiny-rm", "--out", str(out)]
    for item in SMALL:
        args += ["--set", item]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_a_run_trains_its_reward_model_and_tunes_against_it_with_the_gold_watching(rm_run):
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification

    records = {s: json.loads((rm_run / "stages" / f"{s}.json").read_text()) for s in ("pairs", "rm", "rlhf")}
    assert all(r["status"] == "finished" for r in records.values())
    pairs = load_dataset("json", data_files=str(rm_run / "pairs" / "pairs.jsonl"), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(pairs.column_names) and len(pairs) > 0
    summary = json.loads((rm_run / "pairs" / "pairs.json").read_text())
    assert summary["gold"] == "vader" and summary["n_pairs"] == len(pairs)
    # the RM every later stage reads is the one the rm stage trained, a one-label sequence classifier
    model = AutoModelForSequenceClassification.from_pretrained(rm_run / "rm" / "model")
    assert model.config.num_labels == 1
    ppo = json.loads((rm_run / "rlhf" / "config.json").read_text())
    assert ppo["reward"] == f"rm:{rm_run / 'rm' / 'model'}"
    evals = [json.loads(line) for line in (rm_run / "rlhf" / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 2, 4]
    assert all(e["gold"]["mean"] is not None and e["proxy"]["mean"] is not None for e in evals)
    results = json.loads((rm_run / "results.json").read_text())
    section = results["reward_model"]
    assert section["rm"]["accuracy"]["gold"]["n"] > 0 and section["placebo"] is not None
    assert section["rm"]["cue_preference"]["bias"] == "word:indeed"
    assert results["ppo"]["gold"]["curve"]["has_gold"]
    summary_md = (rm_run / "summary.md").read_text()
    assert "## The learned reward model" in summary_md and "Proxy and gold along the tune" in summary_md
    assert "The learned reward model" in (rm_run / "report.html").read_text()
    # the RM opened: its score split exactly over an SAE, the policy's gain split, a verdict in the report
    inspect = results["inspect_rm"]
    assert inspect["format"] == "rlhf-lens.inspect-rm" and inspect["decomposition"]["max_relative_error"] < 1e-4
    assert inspect["verdict"]["kind"] in ("gold", "flaws", "undistinguishable") and inspect["probe"] is not None
    assert abs(sum(p["mean"] for p in inspect["gain"]["split"].values()) - inspect["gain"]["total"]["mean"]) < 1e-6
    assert "## What the reward model rewards" in summary_md and inspect["verdict"]["text"][:40] in summary_md


def test_rerunning_the_rm_run_skips_every_stage(rm_run):
    args = ["run", "--preset", "tiny-rm", "--out", str(rm_run)]
    for item in SMALL:
        args += ["--set", item]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pairs: done earlier, skipped" in result.stderr and "rm: done earlier, skipped" in result.stderr


def test_the_rm_stages_are_off_unless_the_run_trains_its_rm_and_their_settings_reach_ppo():
    plain = load_config("tiny")
    assert stage_off(plain, "pairs") == "reward.spec = vader, not rm" and stage_off(plain, "rm")
    trains = load_config("tiny-rm")
    assert stage_off(trains, "pairs") is None and stage_off(trains, "rm") is None
    keys = stage_keys(trains)
    # the RM's settings reach PPO and everything after it; the pairs' settings reach the RM too
    for setting, first in (("rm.lr=0.01", "rm"), ("preferences.rate=0.2", "pairs"), ("gold.spec=sentiment", "pairs")):
        changed = stage_keys(load_config("tiny-rm", overrides=[setting]))
        assert changed["base"] == keys["base"] and changed[first] != keys[first], setting
        assert changed["rlhf"] != keys["rlhf"] and changed["report"] != keys["report"], setting


@pytest.mark.parametrize("sets, fragments", [
    (["reward.spec=rm"], ("gold.spec", "preferences.file")),
    (["reward.spec=rm", "gold.spec=nope"], ("gold.spec", "unknown reward spec")),
    (["reward.spec=rm", "preferences.file=/no/such/pairs.jsonl"], ("/no/such/pairs.jsonl",)),
    (["reward.spec=rm", "gold.spec=vader", "preferences.bias=word:indeed"], ("preferences.bias", "preferences.rate")),
    (["reward.spec=rm", "gold.spec=vader", "preferences.completions=1"], ("preferences.completions",)),
    (["reward.spec=rm", "gold.spec=vader", "rm.train=lora"], ("rm.train",)),
    (["preferences.bias=word:indeed", "preferences.rate=0.3"], ("preferences.bias", "reward.spec = rm")),
    (["gold.spec=rm"], ("gold.spec",)),
    (["reward.spec=rm", "gold.spec=vader", "inspect_rm.random_words=1"], ("inspect_rm.random_words",)),
    (["inspect_rm.k=4"], ("inspect_rm.k", "reward.spec = rm")),
    (["reward.spec=rm:/no/such/rm"], ("/no/such/rm",)),
])
def test_bad_rm_settings_fail_before_any_work(tmp_path, sets, fragments):
    out = tmp_path / "run"
    args = ["run", "--preset", "tiny", "--out", str(out)]
    for item in sets:
        args += ["--set", item]
    result = run_cli(*args)
    assert_user_error(result, *fragments)
    assert not out.exists()


def test_a_users_pair_file_with_a_missing_column_is_refused_naming_the_setting(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"question": "a", "good": "b", "bad": "c"}) + "\n")
    out = tmp_path / "run"
    result = run_cli("run", "--preset", "tiny", "--out", str(out), "--set", "reward.spec=rm",
                     "--set", f"preferences.file={pairs}", "--set", "preferences.prompt_key=question")
    assert_user_error(result, "preferences.chosen_key", "chosen")
    assert not out.exists()
