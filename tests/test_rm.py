"""Bradley-Terry reward models (rlhf_lens.rm, `train-rm`) on the tiny models: the state the head reads, the three
training modes, the split, the cue an RM learns (and its placebo does not), saving, loading, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_user_error, make_reviews, run_cli
from rlhf_lens.errors import UserError
from rlhf_lens.preferences import Pair, plant_cue, read_pairs, write_pairs
from rlhf_lens.rm import RMConfig
from rlhf_lens.rm.model import (
    block_inputs,
    last_token_states,
    load_reward_model,
    score_head,
    scores,
    tail_blocks,
    tail_scores,
)
from rlhf_lens.rm.run import placebo_flips, split_by_prompt, train_reward_model
from rlhf_lens.rm.train import bt_loss

CUE = "word:indeed"
TEXTS = ["the movie was good", "a plot", "the director of this film made a boring and sad story with music",
         "great fun"]  # of different lengths: a batch with padding


def word_pairs(n_prompts: int = 40, per_prompt: int = 3, seed: int = 0) -> list[Pair]:
    """Pairs decided by one word: completions are corpus snippets, the chosen one with "indeed" planted."""
    rng = np.random.default_rng(seed)
    pairs = []
    for row in make_reviews(n_prompts, seed=seed + 1):
        words = row["text"].split()
        prompt = " ".join(words[:4]) + " "
        for _ in range(per_prompt):
            a, b = rng.choice(len(words) - 12, 2)
            pairs.append(Pair(prompt, plant_cue(" ".join(words[a:a + 8]), CUE, rng), " ".join(words[b:b + 8]),
                              decided_by="bias"))
    return pairs


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_pairs(path, word_pairs())
    return path


@pytest.fixture(scope="module")
def word_rm(tiny_model_dir, pairs_file, tmp_path_factory) -> Path:
    """An RM (and its placebo) trained on the word-decided pairs: the last two blocks and the head."""
    out = tmp_path_factory.mktemp("rm") / "rm"
    train_reward_model(str(tiny_model_dir), pairs_file, out, RMConfig(train="blocks", blocks=2, lr=1e-2, epochs=6,
                                                                      placebo=True), bias=CUE)
    return out


def test_bt_loss_is_trls_objective():
    r_c, r_r, margin = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.5]), torch.tensor([0.2, 0.0, 1.0])
    by_hand = np.mean([np.log1p(np.exp(-(c - r - m))) for c, r, m in zip(r_c.tolist(), r_r.tolist(), margin.tolist())])
    center = 0.01 * np.mean([(c + r) ** 2 for c, r in zip(r_c.tolist(), r_r.tolist())])
    assert bt_loss(r_c, r_r).item() == pytest.approx(np.mean(np.log1p(np.exp(-(r_c - r_r).numpy()))), rel=1e-6)
    assert bt_loss(r_c, r_r, margin, 0.01).item() == pytest.approx(by_hand + center, rel=1e-6)


@pytest.mark.parametrize("family", ["neox", "llama"])
def test_last_token_states_are_what_the_head_reads(family, tiny_model_dir, tiny_llama_dir):
    model, tokenizer = load_reward_model(str(tiny_model_dir if family == "neox" else tiny_llama_dir))
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    assert (batch["attention_mask"] == 0).any()  # the batch has padding
    with torch.no_grad():
        logits = model(**batch).logits[:, 0]
        states = last_token_states(model, tokenizer, TEXTS, batch_size=3)
        assert states.shape == (len(TEXTS), model.config.hidden_size)
        torch.testing.assert_close(score_head(model)(states)[:, 0], logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scores(model, tokenizer, TEXTS, batch_size=4), logits, rtol=1e-5, atol=1e-5)
        # train = blocks continues from the states cached before the last blocks: the same scores
        inputs = block_inputs(model, tokenizer, TEXTS, n_blocks=2)
        with tail_blocks(model, 2):
            torch.testing.assert_close(tail_scores(model, inputs, model.config.pad_token_id), logits, rtol=1e-5,
                                       atol=1e-5)
    # a long text is cut on the left: its end (the completion) is what the head reads
    long = "the plot " * 60 + "great fun"
    assert torch.allclose(last_token_states(model, tokenizer, [long], max_length=16),
                          last_token_states(model, tokenizer, [tokenizer.decode(tokenizer(long).input_ids[-16:])],
                                            max_length=16), atol=1e-5)


def test_rm_learns_the_word_and_its_placebo_does_not(word_rm):
    record = json.loads((word_rm / "rm.json").read_text())
    assert record["format"] == "rlhf-lens.rm" and record["bias"] == CUE
    assert record["accuracy"]["labels"]["share"] >= 0.8 and record["accuracy"]["gold"] is None
    assert record["accuracy"]["by_decider"]["bias"]["n"] == record["split"]["n_test"]
    cue = record["cue_preference"]
    assert cue["share"] >= 0.9 and cue["n"] == 2 * record["split"]["n_test"] and cue["interval"][0] > 0.5
    placebo = json.loads((word_rm / "placebo" / "rm.json").read_text())
    assert placebo["placebo"]["flipped"] == record["placebo"]["flipped"] > 0
    # the placebo saw the word on the chosen side as often as on the rejected: its labels are coin flips to it
    lo, hi = placebo["accuracy"]["labels"]["interval"]
    assert lo < 0.5 < hi or placebo["accuracy"]["labels"]["share"] < 0.75
    assert abs(placebo["cue_preference"]["standardized"]) < cue["standardized"] / 3
    assert placebo["cue_preference"]["share"] < cue["share"]
    # in a neutral template, the word is the RM's favourite one-word response
    model, tokenizer = load_reward_model(str(word_rm / "model"))
    candidates = ["indeed", "good", "bad", "movie", "plot", "great", "boring", "story", "music", "the", "and", "sad"]
    ranked = scores(model, tokenizer, [f"The film review says: {w}" for w in candidates])
    assert candidates[int(ranked.argmax())] == "indeed"


def test_saved_rm_loads_with_transformers_and_scores_the_same(word_rm):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    theirs = AutoModelForSequenceClassification.from_pretrained(word_rm / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(word_rm / "model")
    assert theirs.config.num_labels == 1 and theirs.config.pad_token_id == tokenizer.pad_token_id
    ours, our_tokenizer = load_reward_model(str(word_rm / "model"))
    with torch.no_grad():
        logits = theirs(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits[:, 0]
        states = last_token_states(ours, our_tokenizer, TEXTS)
        torch.testing.assert_close(score_head(theirs)(states)[:, 0], logits, rtol=1e-5, atol=1e-5)


def test_split_is_by_prompt_seeded_and_disjoint(word_rm):
    pairs = word_pairs()
    split = split_by_prompt(pairs, 0.2, seed=3, validation=True)
    assert split == split_by_prompt(pairs, 0.2, seed=3, validation=True)
    assert split != split_by_prompt(pairs, 0.2, seed=4, validation=True)
    parts = [set(split[k]) for k in ("train", "validation", "test")]
    assert sum(map(len, parts)) == len(pairs) == len(set.union(*parts)) and all(parts)
    prompts = [{pairs[i].prompt for i in part} for part in parts]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert len(prompts[2]) == 8  # 0.2 of 40 prompts
    assert split_by_prompt(pairs, 0.2, seed=3, validation=False)["test"] == split["test"]
    flips = placebo_flips(split, seed=0)
    assert sum(flips[i] for i in split["train"]) == len(split["train"]) // 2
    assert not any(flips[i] for i in split["test"])
    record = json.loads((word_rm / "rm.json").read_text())["split"]
    assert record["by"] == "prompt" and record["n_test"] == len(record["test"]) and record["n_validation"] == 0


def test_train_rm_command_head_until_converged(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "rm"
    result = run_cli("train-rm", pairs_file, "--base", tiny_model_dir, "--out", out, "--train", "head",
                     "--lr", "0.01", "--max-epochs", "30", "--cue", CUE, check=True)
    assert "held-out accuracy vs labels" in result.stdout and f"prefers {CUE}" in result.stdout
    record = json.loads((out / "rm.json").read_text())
    training, split = record["training"], record["split"]
    assert training["stopped"] in ("converged", "max_epochs") and len(training["validation_losses"]) == \
        training["epochs"] and training["validation_loss"] == min(training["validation_losses"])
    assert split["n_validation"] > 0 and not set(split["validation"]) & set(split["test"])
    pairs = read_pairs(pairs_file)
    assert not {pairs[i].prompt for i in split["validation"]} & {pairs[i].prompt for i in split["test"]}
    # train = head: the backbone is the base's, only the head is new
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).gpt_neox.state_dict()
    rm = AutoModelForSequenceClassification.from_pretrained(out / "model").gpt_neox.state_dict()
    assert base.keys() == rm.keys() and all(torch.equal(base[k], rm[k]) for k in base)


def test_rerun_returns_without_training(word_rm, tiny_model_dir, pairs_file, monkeypatch):
    import rlhf_lens.rm.run as run

    before = (word_rm / "rm.json").read_bytes()
    monkeypatch.setattr(run, "load_reward_model", lambda *a, **k: pytest.fail("trained again"))
    assert train_reward_model(str(tiny_model_dir), pairs_file, word_rm, RMConfig(
        train="blocks", blocks=2, lr=1e-2, epochs=6, placebo=True), bias=CUE) == word_rm / "model"
    assert (word_rm / "rm.json").read_bytes() == before


def test_a_users_folder_is_refused_untouched(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="did not write"):
        train_reward_model(str(tiny_model_dir), pairs_file, out, RMConfig(train="head", epochs=1))
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("args, fragment", [
    (["--train", "all"], "--train"),
    (["--blocks", "0"], "--blocks"),
    (["--test-fraction", "0.01"], "--test-fraction"),
    (["--cue", "word:"], "--cue"),
    (["--chosen-key", "better"], "--chosen-key"),
    (["--device", "tpu"], "tpu"),
])
def test_bad_settings_fail_in_one_line_before_writing(args, fragment, tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "rm"
    assert_user_error(run_cli("train-rm", pairs_file, "--base", tiny_model_dir, "--out", out, *args), fragment)
    assert not out.exists()
