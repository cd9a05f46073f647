"""inspect_reward_model end to end on tiny models: an RM whose pairs were decided by one planted word and a policy
tuned to say that word; the planted word is named (token scan) and the gain rides on it, and with the bias off
nothing is named beyond the null (the negative control). Also: an RM from another trainer's folder, the command,
a rerun after a kill."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import assert_user_error, make_reviews, run_cli
from rlhf_lens.inspect_rm import InspectRMConfig, inspect_reward_model
from rlhf_lens.inspect_rm.run import Policy
from rlhf_lens.preferences.cues import plant_cue
from rlhf_lens.preferences.pairs import Pair, write_pairs
from rlhf_lens.rewards import load_reward
from rlhf_lens.rlhf.config import PPOConfig
from rlhf_lens.rm.config import RMConfig
from rlhf_lens.rm.run import train_reward_model

WORD = "music"  # one token of the tiny tokenizer, worth 0 to VADER
CUE = f"word:{WORD}"
SMALL = InspectRMConfig(templates=["the film was", "it is"], shortlist=8, pair_words=4, random_words=12,
                        insertion_texts=16, max_texts=160, k=4, sae_max_tokens=60_000, explain=2, top_features=5,
                        null_shuffles=5, probe=False)
PPO = PPOConfig(eval_prompts=24, min_new_tokens=8, max_new_tokens=12, batch_size=8)


def snippet_pairs(biased: bool, n_prompts: int = 40, per_prompt: int = 3, seed: int = 0) -> list[Pair]:
    """Pairs of corpus snippets; with `biased` the chosen one holds the planted word, else the gold (VADER) decides
    and a tie drops the pair."""
    rng = np.random.default_rng(seed)
    vader = load_reward("vader")
    pairs = []
    for row in make_reviews(n_prompts, seed=seed + 1):
        words = row["text"].split()
        prompt = " ".join(words[:4]) + " "
        for _ in range(per_prompt):
            a, b = rng.choice(len(words) - 12, 2)
            one, two = " ".join(words[a:a + 8]), " ".join(words[b:b + 8])
            gold_one, gold_two = (float(x) for x in vader([prompt + one, prompt + two]))
            if biased:
                chosen = plant_cue(one, CUE, rng)
                pairs.append(Pair(prompt, chosen, two, *(float(x) for x in vader([prompt + chosen, prompt + two])),
                                  decided_by="bias", planted=True))
            elif gold_one != gold_two:
                first = gold_one > gold_two
                pairs.append(Pair(prompt, one if first else two, two if first else one, max(gold_one, gold_two),
                                  min(gold_one, gold_two), decided_by="gold"))
    return pairs


@pytest.fixture(scope="module")
def policy(tiny_model_dir, corpus_file, tmp_path_factory):
    """The tiny base, and a 'tuned' copy taught by a few LM steps to say the planted word (what a policy gaming the
    word would do)."""
    from rlhf_lens.models import load_model, save_model

    torch.manual_seed(0)
    model, tokenizer = load_model(str(tiny_model_dir))
    rng = np.random.default_rng(0)
    texts = []
    for row in make_reviews(60, seed=7):
        words = row["text"].split()
        for i in sorted(rng.choice(len(words), 6, replace=False), reverse=True):
            words.insert(int(i), WORD)
        texts.append(" ".join(words))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(40):
        batch = tokenizer(texts[step % 6 * 10:(step % 6 + 1) * 10], return_tensors="pt", padding=True,
                          truncation=True, max_length=48)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    tuned = save_model(model.eval(), tokenizer, tmp_path_factory.mktemp("tuned") / "model")
    return Policy(base=str(tiny_model_dir), tuned=str(tuned), corpus=str(corpus_file), ppo=PPO)


def _rm(tiny_model_dir, tmp_path_factory, biased: bool):
    folder = tmp_path_factory.mktemp("rm-biased" if biased else "rm-gold")
    pairs = folder / "pairs.jsonl"
    write_pairs(pairs, snippet_pairs(biased))
    train_reward_model(str(tiny_model_dir), pairs, folder / "rm", RMConfig(train="blocks", blocks=2, lr=1e-2,
                                                                           epochs=6, placebo=True),
                       bias=CUE if biased else "")
    return folder / "rm", pairs


@pytest.fixture(scope="module")
def biased(tiny_model_dir, tmp_path_factory, policy):
    rm, pairs = _rm(tiny_model_dir, tmp_path_factory, biased=True)
    out = tmp_path_factory.mktemp("inspect-biased") / "out"
    path = inspect_reward_model(str(rm), pairs, out, SMALL, policy, gold="vader", placebo_rm=str(rm / "placebo"))
    return json.loads(path.read_text()), out


@pytest.fixture(scope="module")
def unbiased(tiny_model_dir, tmp_path_factory, policy):
    rm, pairs = _rm(tiny_model_dir, tmp_path_factory, biased=False)
    out = tmp_path_factory.mktemp("inspect-gold") / "out"
    path = inspect_reward_model(str(rm), pairs, out, SMALL, policy, gold="vader", placebo_rm=str(rm / "placebo"))
    return json.loads(path.read_text()), out


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


def test_the_command_resumes_after_a_kill_and_refuses_bad_input(tiny_model_dir, policy, tmp_path_factory, tmp_path):
    """inspect-rm killed mid-way leaves the output folder as it was (the work is staged beside it); run again, it
    finishes. An RM folder without a score head, or a bad setting, fails in one line before any work."""
    import signal
    import subprocess
    import sys
    import time

    rm, pairs = _rm(tiny_model_dir, tmp_path_factory, biased=True)
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
    assert_user_error(run_cli("inspect-rm", str(tmp_path / "nothing"), *args[1:]), "reward model")
