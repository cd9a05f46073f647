"""inspect_reward_model end to end on tiny models: an RM whose pairs were decided by one planted word and a policy
tuned to say that word; the planted word is named (token scan) and the gain rides on it, and with the bias off
nothing is named beyond the null (the negative control). Also: an RM from another trainer's folder, the command,
a rerun after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_user_error, run_cli
from rlhf_lens.inspect_rm import InspectRMConfig, inspect_reward_model
from rlhf_lens.inspect_rm.run import Policy
from rlhf_lens.preferences.pairs import write_pairs
from rlhf_lens.rlhf.config import PPOConfig
from rlhf_lens.rm.config import RMConfig
from rlhf_lens.rm.run import train_reward_model
from test_inspect_rm_scan import CUE as WORD
from test_inspect_rm_scan import reviews, snippet_pairs

SMALL = InspectRMConfig(templates=["the movie was", "this film is"], shortlist=8, pair_words=4, random_words=24,
                        insertion_texts=24, max_texts=160, k=4, sae_max_tokens=60_000, explain=2, top_features=5,
                        null_shuffles=5, probe=False)
PPO = PPOConfig(eval_prompts=32, min_new_tokens=8, max_new_tokens=12, batch_size=16)


@pytest.fixture(scope="module")
def word_base(tmp_path_factory) -> Path:
    """test_inspect_rm_scan's tiny GPT-NeoX (every corpus word one token), pretrained a little here: a policy."""
    from rlhf_lens.models import TinyModelConfig, build_tiny_model, save_model

    model, tokenizer = build_tiny_model(reviews(200), TinyModelConfig(layers=3, width=32, heads=4, vocab_size=800,
                                                                       pretrain_steps=30))
    return save_model(model, tokenizer, tmp_path_factory.mktemp("models") / "tiny-policy")


@pytest.fixture(scope="module")
def policy(word_base, tmp_path_factory):
    """The base, and a 'tuned' copy taught by a few LM steps to say the planted word often (what a policy gaming
    it would do); prompts from a corpus of the same reviews."""
    from rlhf_lens.models import load_model, save_model

    folder = tmp_path_factory.mktemp("policy")
    corpus = folder / "reviews.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "split": "test" if i % 4 == 0 else "train"}) + "\n"
                              for i, t in enumerate(reviews(120, seed=5))))
    torch.manual_seed(0)
    model, tokenizer = load_model(str(word_base))
    rng = np.random.default_rng(0)
    texts = []
    for text in reviews(60, seed=7):
        words = text.split()
        for i in sorted(rng.choice(len(words), 8, replace=False), reverse=True):
            words.insert(int(i), WORD)
        texts.append(" ".join(words))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(40):
        batch = tokenizer(texts[step % 6 * 10:(step % 6 + 1) * 10], return_tensors="pt", padding=True,
                          truncation=True, max_length=48)
        loss = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    tuned = save_model(model.eval(), tokenizer, folder / "tuned")
    return Policy(base=str(word_base), tuned=str(tuned), corpus=str(corpus), ppo=PPO)


def _rm(base, tmp_path_factory, biased: bool):
    folder = tmp_path_factory.mktemp("rm-biased" if biased else "rm-gold")
    pairs = folder / "pairs.jsonl"
    write_pairs(pairs, snippet_pairs("cue" if biased else "gold"))
    train_reward_model(str(base), pairs, folder / "rm", RMConfig(train="blocks", blocks=2, lr=1e-2, epochs=6,
                                                                 placebo=True), bias=f"word:{WORD}" if biased else "")
    return folder / "rm", pairs


def _inspected(word_base, tmp_path_factory, policy, biased: bool) -> tuple[dict, Path]:
    """(inspect_rm.json, its folder) of the RM trained on pairs decided by the planted word (`biased`) or the gold."""
    rm, pairs = _rm(word_base, tmp_path_factory, biased=biased)
    out = tmp_path_factory.mktemp("inspect-biased" if biased else "inspect-gold") / "out"
    path = inspect_reward_model(str(rm), pairs, out, SMALL, policy, gold="vader", placebo_rm=str(rm / "placebo"))
    return json.loads(path.read_text()), out


@pytest.fixture(scope="module")
def biased(word_base, tmp_path_factory, policy):
    return _inspected(word_base, tmp_path_factory, policy, biased=True)


@pytest.fixture(scope="module")
def unbiased(word_base, tmp_path_factory, policy):
    return _inspected(word_base, tmp_path_factory, policy, biased=False)


def test_the_planted_word_is_named_and_the_gain_rides_on_it(biased):
    record, out = biased
    assert record["format"] == "rlhf-lens.inspect-rm"
    assert record["decomposition"]["max_relative_error"] < 1e-4
    scan = record["token_scan"]
    assert scan["cues"] and scan["cues"][0] == WORD, scan["tested"][:3]
    tested = {t["word"]: t for t in scan["tested"]}
    assert tested[WORD]["gold"] == 0 and abs(tested[WORD]["gold_effect"]) < 1e-9
    gain = record["gain"]
    assert gain["total"]["mean"] > 0 and gain["total"]["p"] <= 0.05
    assert abs(sum(p["mean"] for p in gain["split"].values()) - gain["total"]["mean"]) < 1e-6
    assert record["verdict"]["kind"] == "flaws" and repr(WORD) in record["verdict"]["text"]
    assert (out / "sae" / "cfg.json").is_file() and (out / "store" / "manifest.json").is_file()
    assert any(f["explanation"] for f in record["features"])


def test_with_the_bias_off_nothing_is_named(unbiased):
    record, _ = unbiased
    assert record["token_scan"]["cues"] == []
    assert record["verdict"]["kind"] != "flaws" and record["verdict"]["cues"] == []
    assert record["decomposition"]["max_relative_error"] < 1e-4


def test_the_command_resumes_after_a_kill_and_refuses_bad_input(word_base, policy, tmp_path_factory, tmp_path):
    """inspect-rm killed mid-way leaves the output folder as it was (the work is staged beside it); run again, it
    finishes. An RM folder without a score head, or a bad setting, fails in one line before any work."""
    import signal
    import subprocess
    import sys
    import time

    rm, pairs = _rm(word_base, tmp_path_factory, biased=True)
    out = tmp_path / "out"
    args = [str(rm), "--pairs", str(pairs), "--gold", "vader", "--base", policy.base, "--tuned", policy.tuned,
            "--corpus", policy.corpus, "--out", str(out), "--templates", "the film was", "--shortlist", "4",
            "--pair-words", "2", "--random-words", "6", "--insertion-texts", "8", "--max-texts", "64", "--k", "4",
            "--sae-max-tokens", "20000", "--explain", "1", "--null-shuffles", "2", "--no-probe"]
    process = subprocess.Popen([sys.executable, "-m", "rlhf_lens", "inspect-rm", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    time.sleep(4)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "inspect_rm.json").exists()
    result = run_cli("inspect-rm", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / "inspect_rm.json").read_text())
    assert record["verdict"]["text"] in result.stdout and record["decomposition"]["max_relative_error"] < 1e-4
    assert_user_error(run_cli("inspect-rm", *args[:-1], "--random-words", "1"), "--random-words")
    # a folder the tool did not write is refused before any work, its file untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    at = args.index("--out") + 1
    assert_user_error(run_cli("inspect-rm", *args[:at], str(mine), *args[at + 1:]), str(mine))
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep"
    assert_user_error(run_cli("inspect-rm", str(tmp_path / "nothing"), *args[1:]), "reward model")


def test_an_rm_saved_by_another_trainer_is_opened(biased, policy, tmp_path):
    """A bare one-label AutoModelForSequenceClassification folder (as TRL's RewardTrainer saves one: no rm.json,
    so no recorded split): its held-out pairs are a seeded fifth, and the split is as exact."""
    import shutil

    record, _ = biased
    foreign = tmp_path / "trl-rm"
    shutil.copytree(record["rm"], foreign)
    assert not (foreign / "rm.json").exists() and not (foreign.parent / "rm.json").exists()
    pairs = Path(record["rm"]).parent.parent / "pairs.jsonl"
    path = inspect_reward_model(str(foreign), pairs, tmp_path / "out", SMALL, policy, gold="vader")
    again = json.loads(path.read_text())
    assert again["decomposition"]["max_relative_error"] < 1e-4 and again["placebo_rm"] is None
    assert again["gain"]["placebo_total"] is None and WORD in again["token_scan"]["cues"]
