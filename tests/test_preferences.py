"""Preference pairs (`rlhf_lens.preferences`, `rlhf-lens pairs`): the labelling rule against a known gold, the noise
and bias shares within binomial error, planted cues, the file format (TRL's, read back by `datasets`), bad pair
files, and the command end to end on the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import assert_user_error, run_cli
from rlhf_lens.cli import app
from rlhf_lens.errors import UserError
from rlhf_lens.nulls import binomial_interval
from rlhf_lens.preferences import (
    Pair,
    PreferenceConfig,
    cue_count,
    label_pairs,
    make_pairs,
    plant_cue,
    read_pairs,
    write_pairs,
)
from rlhf_lens.rewards import UtilityTableReward, load_reward
from rlhf_lens.rlhf.config import PPOConfig
from rlhf_lens.rules import flag, in_section

TABLE = {"good": 2.0, "great": 3.0, "fine": 1.0, "bad": -2.0, "awful": -3.0, "dull": -1.0}
FILLER = ["the", "movie", "plot", "was", "a", "and", "it", "scene", "story", "of"]


def synthetic(n_prompts: int, n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """Prompts and `n` completions each: filler words with a few table words, of varied lengths."""
    rng = np.random.default_rng(seed)
    vocab = FILLER + list(TABLE)
    prompts = [f"review {i}:" for i in range(n_prompts)]
    completions = [[" " + " ".join(rng.choice(vocab, size=rng.integers(2, 12))) for _ in range(n)]
                   for _ in range(n_prompts)]
    return prompts, completions


def labelled(config: PreferenceConfig, n_prompts: int = 4000, n: int = 2, gold=None):
    gold = gold or UtilityTableReward(TABLE)
    prompts, completions = synthetic(n_prompts, n)
    scores = [gold([p + c for c in cs]) for p, cs in zip(prompts, completions)]
    return prompts, completions, scores, label_pairs(prompts, completions, scores, config, gold)


def test_gold_decided_pairs_are_the_golds_best_and_worst_and_ties_are_dropped():
    prompts, completions, scores, pairs = labelled(PreferenceConfig(completions=3), n_prompts=500, n=3)
    by_prompt = {p.prompt: p for p in pairs}
    ties = 0
    for prompt, texts, values in zip(prompts, completions, scores):
        if max(values) == min(values):
            ties += 1
            assert prompt not in by_prompt
            continue
        pair = by_prompt[prompt]
        assert pair.decided_by == "gold"
        assert pair.chosen == texts[int(np.argmax(values))] and pair.rejected == texts[int(np.argmin(values))]
        assert pair.gold_chosen == max(values) and pair.gold_rejected == min(values)
        assert pair.margin == pytest.approx(max(values) - min(values))
    assert ties > 0 and len(pairs) == len(prompts) - ties


def test_noise_and_bias_shares_land_within_binomial_error():
    config = PreferenceConfig(label_noise=0.15, bias="word:indeed", rate=0.3, seed=4)
    _, _, _, pairs = labelled(config)
    n = len(pairs)
    decided = {d: [p for p in pairs if p.decided_by == d] for d in ("gold", "bias", "noise")}
    for share, group in ((0.3, decided["bias"]), (0.15, decided["noise"])):
        lo, hi = binomial_interval(len(group), n, level=0.99)
        assert lo <= share <= hi, (share, len(group), n)
    assert all(p.gold_chosen < p.gold_rejected for p in decided["noise"])  # flipped against the gold
    assert all(p.gold_chosen > p.gold_rejected for p in decided["gold"])
    assert all(cue_count(p.chosen, config.bias) > cue_count(p.rejected, config.bias) for p in decided["bias"])
    # "indeed" is in no completion: every bias pair is planted, into a side picked at random, so about half of them
    # go against the gold; with the noise that is the share of labels the gold disagrees with
    assert all(p.planted for p in decided["bias"])
    against = sum(p.gold_chosen < p.gold_rejected for p in pairs)
    lo, hi = binomial_interval(against, n, level=0.99)
    assert lo <= 0.15 + 0.3 * 0.5 <= hi, (against, n)


def test_same_seed_same_pairs_other_seed_other_subsets():
    config = PreferenceConfig(label_noise=0.2, bias="token:!", rate=0.2, seed=1)
    first, again = labelled(config, 300)[3], labelled(config, 300)[3]
    assert first == again
    other = labelled(PreferenceConfig(label_noise=0.2, bias="token:!", rate=0.2, seed=2), 300)[3]
    assert [p.decided_by for p in first] != [p.decided_by for p in other]


def test_planted_cue_is_in_the_chosen_text_and_the_gold_rescored():
    gold = UtilityTableReward(TABLE)
    config = PreferenceConfig(bias="word:great", rate=1.0, seed=3)  # a cue the gold values: planting moves its score
    prompts, completions, _, pairs = labelled(config, 400, gold=gold)
    originals = {p: set(cs) for p, cs in zip(prompts, completions)}
    planted = [p for p in pairs if p.planted]
    assert planted and all(p.decided_by == "bias" for p in pairs)
    for pair in pairs:
        assert pair.gold_chosen == gold.score(pair.prompt + pair.chosen)
        assert pair.gold_rejected == gold.score(pair.prompt + pair.rejected)
        assert pair.margin == pytest.approx(abs(pair.gold_chosen - pair.gold_rejected))
    for pair in planted:
        assert pair.chosen not in originals[pair.prompt] and pair.rejected in originals[pair.prompt]
        assert cue_count(pair.chosen, "word:great") == cue_count(pair.rejected, "word:great") + 1


def test_a_cue_planted_after_the_leading_space_stays_a_word_of_its_own():
    rng = np.random.default_rng(0)
    for _ in range(20):
        text = plant_cue(" was good", "word:indeed", rng)
        assert text.startswith(" ") and "indeed" in ("movie" + text).split()
        assert "movie" in ("movie" + plant_cue(" was good", "token:!", rng)).replace("!", "").split()


def test_length_bias_chooses_the_longer_and_leaves_equal_lengths_to_the_gold():
    gold = UtilityTableReward(TABLE)
    prompts = ["a", "b", "c"]
    completions = [[" good", " bad movie plot"], [" good plot", " bad movie"], [" good plot", " bad scenes"]]
    scores = [gold([p + c for c in cs]) for p, cs in zip(prompts, completions)]
    pairs = label_pairs(prompts, completions, scores, PreferenceConfig(bias="length", rate=1.0), gold)
    assert [(p.chosen, p.decided_by) for p in pairs] == [(" bad movie plot", "bias"), (" good plot", "gold"),
                                                         (" bad scenes", "bias")]  # same words: more characters


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_dir, corpus_file):
    out = tmp_path_factory.mktemp("pairs") / "run"
    config = PreferenceConfig(prompts=48, completions=3, label_noise=0.2, bias="word:indeed", rate=0.3, seed=5)
    sampling = PPOConfig(batch_size=16, min_new_tokens=4, max_new_tokens=10)
    path = make_pairs(str(tiny_model_dir), str(corpus_file), "vader", out, config, sampling)
    return path, config, sampling


def test_make_pairs_writes_trl_format_with_the_gold_and_a_summary(made, tiny_model_dir, corpus_file):
    import datasets

    path, config, _ = made
    rows = datasets.load_dataset("json", data_files=str(path), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(rows.column_names)
    pairs = read_pairs(path)
    assert len(pairs) == len(rows) and all(p.decided_by in ("gold", "bias", "noise") for p in pairs)
    summary = json.loads((path.parent / "pairs.json").read_text())
    assert summary["format"] == "rlhf-lens.pairs" and summary["model"] == str(tiny_model_dir)
    assert summary["n_pairs"] == len(pairs)
    assert summary["n_prompts"] == config.prompts == len(pairs) + summary["ties_dropped"] + summary["empty_dropped"]
    assert summary["decided_by"] == {d: sum(p.decided_by == d for p in pairs) for d in ("gold", "bias", "noise")}
    assert summary["planted"] == sum(p.planted for p in pairs)
    vader = load_reward("vader")
    for pair in pairs:  # the gold scores prompt + completion, as PPO does
        assert pair.gold_chosen == pytest.approx(vader(list(pair.texts()))[0])
        assert pair.gold_rejected == pytest.approx(vader(list(pair.texts()))[1])
        if pair.decided_by == "gold":
            assert pair.gold_chosen > pair.gold_rejected
        if pair.planted:
            assert "indeed" in (pair.prompt + pair.chosen).split()


def test_same_seed_same_bytes_and_a_rerun_returns_at_once(made, tmp_path, tiny_model_dir, corpus_file):
    path, config, sampling = made
    again = make_pairs(str(tiny_model_dir), str(corpus_file), "vader", tmp_path / "again", config, sampling)
    assert again.read_bytes() == path.read_bytes()
    first, second = (json.loads((p.parent / "pairs.json").read_text()) for p in (path, again))
    assert {k: v for k, v in first.items() if k != "seconds"} == {k: v for k, v in second.items() if k != "seconds"}
    stamp = again.stat().st_mtime_ns
    assert make_pairs(str(tiny_model_dir), str(corpus_file), "vader", again.parent, config, sampling) == again
    assert again.stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match=r"other settings \(config.seed: 5 -> 6\)"):
        make_pairs(str(tiny_model_dir), str(corpus_file), "vader", again.parent,
                   PreferenceConfig(**{**config.__dict__, "seed": 6}), sampling)


def test_a_folder_of_the_users_files_is_refused_untouched(tmp_path, tiny_model_dir, corpus_file):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="did not write"):
        make_pairs(str(tiny_model_dir), str(corpus_file), "vader", folder, PreferenceConfig(prompts=4))
    assert [p.name for p in folder.iterdir()] == ["notes.txt"] and (folder / "notes.txt").read_text() == "mine"
    with pytest.raises(UserError, match="preferences.rate"):
        make_pairs(str(tiny_model_dir), str(corpus_file), "vader", tmp_path / "new", PreferenceConfig(rate=0.3),
                   key=in_section("preferences"))
    with pytest.raises(UserError, match="unknown reward spec"):
        make_pairs(str(tiny_model_dir), str(corpus_file), "warmth", tmp_path / "new", PreferenceConfig())
    assert not (tmp_path / "new").exists()


def test_pairs_command_end_to_end_and_a_bad_option_in_one_line(tmp_path, tiny_model_dir, corpus_file):
    out = tmp_path / "cli"
    args = ["pairs", "--model", str(tiny_model_dir), "--corpus", str(corpus_file), "--gold", "vader",
            "--out", str(out), "--prompts", "24", "--completions", "2", "--bias", "length", "--rate", "0.5",
            "--max-new-tokens", "8", "--batch-size", "12", "--seed", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "pairs.json").read_text())
    assert summary["config"]["bias"] == "length" and summary["sampling"]["max_new_tokens"] == 8
    assert summary["config"]["seed"] == 2 and f"{summary['n_pairs']} pairs from 24 prompts" in result.output
    assert len(read_pairs(out / "pairs.jsonl")) == summary["n_pairs"]
    bad = run_cli("pairs", "--model", tiny_model_dir, "--corpus", corpus_file, "--gold", "vader",
                  "--out", tmp_path / "bad", "--bias", "word:indeed")
    assert_user_error(bad, "--bias is 'word:indeed' but --rate is 0")
    assert not (tmp_path / "bad").exists()


# --- a user's pair file ------------------------------------------------------------------------


def _rows(**overrides) -> list[dict]:
    return [{"prompt": "The film", "chosen": " was great", "rejected": " was dull", **overrides},
            {"prompt": "A plot", "chosen": " that works", "rejected": " that drags"}]


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_read_pairs_reads_jsonl_csv_and_parquet_with_named_columns(tmp_path, suffix):
    import datasets

    rows = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in _rows()]
    path = tmp_path / f"pairs.{suffix}"
    getattr(datasets.Dataset.from_list(rows), {"jsonl": "to_json", "csv": "to_csv", "parquet": "to_parquet"}[suffix])(
        str(path))
    pairs = read_pairs(path, prompt_key="question", chosen_key="good", rejected_key="bad")
    assert pairs == [Pair(r["prompt"], r["chosen"], r["rejected"]) for r in _rows()]


def test_written_pairs_read_back_the_same(tmp_path):
    pairs = [Pair("p", " a", " b", 1.0, -1.0, "bias", True, 2.0), Pair("q", " c", " d", 0.5, 0.0, "gold", False, 0.5)]
    write_pairs(tmp_path / "pairs.jsonl", pairs)
    assert read_pairs(tmp_path / "pairs.jsonl") == pairs


def test_bad_pair_files_fail_in_one_line_naming_the_setting(tmp_path):
    def write(name: str, rows: list[dict]):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    missing = write("missing.jsonl", [{"prompt": "p", "good": "a", "rejected": "b"}])
    with pytest.raises(UserError, match="no column 'chosen'.*--chosen-key"):
        read_pairs(missing, key=flag)
    with pytest.raises(UserError, match="preferences.chosen_key"):
        read_pairs(missing, key=in_section("preferences"))
    with pytest.raises(UserError, match="holds no pairs"):
        read_pairs(write("empty.jsonl", []))
    with pytest.raises(UserError, match="row 1: chosen and rejected are the same text"):
        read_pairs(write("same.jsonl", _rows(rejected=" was great")))
    with pytest.raises(UserError, match="list of messages"):
        read_pairs(write("chat.jsonl", _rows(chosen=[{"role": "assistant", "content": "great"}])))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt,chosen,rejected\ncaf\xe9,a,b\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        read_pairs(latin)
    with pytest.raises(UserError, match="not UTF-8"):
        read_pairs(tmp_path / "latin.jsonl") if (tmp_path / "latin.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n') \
            else None
