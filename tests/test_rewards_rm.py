"""`rm:PATH` (rlhf_lens.rewards.reward_model): a scalar reward model as a reward in `reward`, `serve-reward`,
`trl_reward_func`, PPO and the diff's template reading; one saved by TRL's RewardTrainer loads and scores the same."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
import torch

from conftest import assert_user_error, plant_direction, run_cli
from rlhf_lens.errors import UserError
from rlhf_lens.rewards import RewardModelReward, load_reward, reward_name, trl_reward_func

TEXTS = ["the movie was good", "bad", "the plot and the story of the film was a great fun and the ending was dull",
         "", "the actor", "it was the worst film of the director with the music and the scene"]


def _direct_logits(folder, texts: list[str]) -> list[float]:
    """AutoModelForSequenceClassification's own logit, one text at a time (no padding at all)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    out = []
    for text in texts:
        ids = tok(text)["input_ids"] or [tok.eos_token_id]
        with torch.no_grad():
            out.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    return out


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tiny_model_dir):
    """The tiny GPT-NeoX with a seeded one-label score head, saved WITHOUT a pad id in its config, as train-rm's
    out/model with an rm.json beside it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # a head that reads the state, not near-zero scores
    model.config.pad_token_id = None
    root = tmp_path_factory.mktemp("rm")
    model.save_pretrained(root / "model")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(root / "model")
    (root / "rm.json").write_text(json.dumps({"format": "rlhf-lens.rm", "base": str(tiny_model_dir),
                                              "accuracy": {"labels": 0.75, "gold": 0.7},
                                              "config": {"max_length": 16}}))
    return root / "model"


def test_rm_reward_is_the_logit_and_batches_equal_one_by_one(rm_dir):
    assert json.loads((rm_dir / "config.json").read_text()).get("pad_token_id") is None
    short = [t for t in TEXTS if len(t.split()) < 12]  # within the 16 tokens rm.json says, so nothing is cut
    reward = load_reward(f"rm:{rm_dir},batch_size=3")
    one_by_one = RewardModelReward(str(rm_dir), batch_size=1)
    batched = reward(short)
    assert batched == pytest.approx(one_by_one(short), abs=1e-5)
    assert batched == pytest.approx(_direct_logits(rm_dir, short), abs=1e-5)
    assert len(set(round(s, 4) for s in batched)) == len(short)  # the texts are told apart
    info = reward.info
    assert info["kind"] == "rm" and info["model"] == str(rm_dir) and info["truncation"] == "left"
    assert info["max_length"] == 16 and info["base"].endswith("tiny-neox") and info["accuracy"]["gold"] == 0.7
    # train-rm's out folder names the same model
    assert load_reward(f"rm:{rm_dir.parent}")(short) == pytest.approx(batched, abs=1e-6)


def test_a_model_with_a_pad_id_of_its_own_is_padded_with_it(rm_dir, tmp_path):
    """HF's head pools at the last token that is not config.pad_token_id: padding with another id would move it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    model.config.pad_token_id = 7
    model.save_pretrained(tmp_path / "own-pad")
    AutoTokenizer.from_pretrained(rm_dir).save_pretrained(tmp_path / "own-pad")
    short = [t for t in TEXTS if t and len(t.split()) < 12]
    batched = RewardModelReward(str(tmp_path / "own-pad"), batch_size=4)
    assert batched.scorer.tokenizer.pad_token_id == 7
    assert batched(short) == pytest.approx(_direct_logits(tmp_path / "own-pad", short), abs=1e-5)


def test_long_texts_are_cut_on_the_left(rm_dir):
    """The completion is at the end of prompt + completion: a long text scores as its last max_length tokens."""
    from transformers import AutoTokenizer

    reward = load_reward(f"rm:{rm_dir}")
    tok = AutoTokenizer.from_pretrained(rm_dir)
    long_text = TEXTS[2] + " " + TEXTS[5]
    ids = tok(long_text)["input_ids"]
    assert len(ids) > reward.max_length == 16
    tail = tok.decode(ids[-16:])
    assert tok(tail)["input_ids"] == ids[-16:]
    assert reward([long_text, "good"])[0] == pytest.approx(_direct_logits(rm_dir, [tail])[0], abs=1e-5)
    assert reward([long_text])[0] != pytest.approx(_direct_logits(rm_dir, [tok.decode(ids[:16])])[0], abs=1e-3)


def test_refusals_are_one_line(rm_dir, tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    with pytest.raises(UserError, match=r"rm needs a path: rm:PATH.*reward.spec = rm in a run with \[preferences\]"):
        load_reward("rm")
    with pytest.raises(UserError, match="does not exist"):
        load_reward(f"rm:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no config.json"):
        load_reward(f"rm:{tmp_path / 'empty'}")
    with pytest.raises(UserError, match="batch_size must be at least 1"):
        load_reward(f"rm:{rm_dir},batch_size=0")
    with pytest.raises(UserError, match="no option index"):
        load_reward(f"rm:{rm_dir},index=0")
    two = tmp_path / "two-labels"
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).save_pretrained(two)
    with pytest.raises(UserError, match=f"has 2 labels: a classifier; use classifier:{two}"):
        load_reward(f"rm:{two}")
    with pytest.raises(UserError, match=f"has 1 label: a reward model; use rm:{rm_dir}"):
        load_reward(f"classifier:{rm_dir}")
    assert load_reward(f"classifier:{rm_dir},index=0")(["good"]) == load_reward(f"rm:{rm_dir}")(["good"])
    # a causal LM folder, through the command, as a user meets it
    assert_user_error(run_cli("reward", "--reward", f"rm:{tiny_model_dir}", "good"),
                      "not a sequence classifier", "GPTNeoXForCausalLM")


def test_reward_command_and_trl_reward_func(rm_dir):
    reward = load_reward(f"rm:{rm_dir}")
    printed = json.loads(run_cli("reward", "--reward", f"rm:{rm_dir}", *TEXTS[:3], "--json", check=True).stdout)
    assert printed == pytest.approx(reward(TEXTS[:3]), abs=1e-6)
    func = trl_reward_func(f"rm:{rm_dir}")
    assert func.__name__ == reward_name(f"rm:{rm_dir}") == "rlhf_lens_rm_model"
    prompts, completions = ["the movie was", "the plot"], [" good", " bad and dull"]
    assert func(prompts, completions) == pytest.approx(reward([p + c for p, c in zip(prompts, completions)]))


def test_serve_reward_answers_openrlhf_protocol(rm_dir):
    """A real `serve-reward --reward rm:PATH` on 127.0.0.1: POST /get_reward {"query": [...]} -> {"rewards": [...]}."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_lens", "serve-reward", "--port", str(port), "--reward",
                             f"rm:{rm_dir}", "--batch-size", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        ready = proc.stdout.readline().strip()  # printed once the server answers
        assert ready == f"serving rm:{rm_dir} on http://127.0.0.1:{port}/get_reward", proc.stderr.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as resp:
            health = json.loads(resp.read())
        assert health["info"]["kind"] == "rm" and health["name"] == "rlhf_lens_rm_model"
        body = json.dumps({"query": TEXTS[:5], "prompts": [""] * 5}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/get_reward", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
        expected = load_reward(f"rm:{rm_dir}")(TEXTS[:5])
        assert answer["rewards"] == pytest.approx(expected, abs=1e-5) and answer["scores"] == answer["rewards"]
        assert answer["extra_logs"] == {"rlhf_lens_rm_model": answer["rewards"]}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_ppo_two_steps_against_a_reward_model(rm_dir, tiny_model_dir, corpus_file, tmp_path):
    from rlhf_lens.rlhf import PPOConfig, train_ppo

    config = PPOConfig(steps=2, batch_size=8, mini_batch_size=4, ppo_epochs=1, warmup_steps=1, eval_prompts=8,
                       checkpoint_every=5)
    model = train_ppo(str(tiny_model_dir), f"rm:{rm_dir}", str(corpus_file), tmp_path / "ppo", config)
    assert (model / "config.json").is_file()
    log = [json.loads(line) for line in (tmp_path / "ppo" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(isinstance(row["reward"], float) for row in log)
    evaluation = json.loads((tmp_path / "ppo" / "eval.json").read_text())
    assert evaluation["reward"] == f"rm:{rm_dir}" and evaluation["reward_info"]["kind"] == "rm"
    reward = load_reward(f"rm:{rm_dir}")
    example = evaluation["examples"][0]  # the eval scores prompt + completion with this very reward
    assert example["tuned_reward"] == pytest.approx(reward([example["prompt"] + example["tuned"]])[0], abs=1e-4)


def test_the_diff_reads_words_through_a_reward_model(rm_dir, tiny_model_dir, corpus_file, tmp_path):
    """No table: a promoted word's utility is rm(template with the word) - rm(template with none)."""
    from rlhf_lens.diff.config import DiffConfig
    from rlhf_lens.diff.run import diff_models
    from rlhf_lens.models import load_model, save_model

    model, tok = load_model(str(tiny_model_dir))
    vector, _, _ = plant_direction(model, tok, 2.0)
    with torch.no_grad():
        model.gpt_neox.layers[1].mlp.dense_4h_to_h.bias += vector
    tuned = save_model(model, tok, tmp_path / "tuned")
    config = DiffConfig(max_docs=8, max_tokens=32, prompts=4, new_tokens=4, alphas=[0.0, 1.0], random_directions=1,
                        null_sets=50, top_words=3, rank_spread=0, word_pool=40)
    result = diff_models(str(tiny_model_dir), str(tuned), str(corpus_file), f"rm:{rm_dir}", [1], tmp_path / "diff",
                         config)
    reading, promoted = result["output"]["reading"], result["output"]["promoted"]
    assert reading["kind"] == "template" and reading["source"] == config.word_template and promoted
    reward = load_reward(f"rm:{rm_dir}")
    empty = reward([config.word_template.format(word="")])[0]
    for row in promoted:
        assert row["utility"] == pytest.approx(reward([config.word_template.format(word=row["word"])])[0] - empty,
                                               abs=1e-5)


def test_a_reward_model_trained_by_trl_loads_as_rm(tiny_model_dir, tmp_path):
    """TRL's RewardTrainer (2 steps, CPU) on 16 pairs in its prompt/chosen/rejected format; saved, it loads as
    rm:PATH and scores as AutoModelForSequenceClassification does. TRL appends the eos to each plain-text chosen and
    rejected; with pad = eos (the tiny tokenizer's) the model pools at the last token that is not a pad, so a
    trailing eos does not change the score: the text is scored as given."""
    pytest.importorskip("trl", reason="trl is not installed (pip install -e '.[dev]' pins it)")
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from conftest import WORDS_NEG, WORDS_NEUTRAL, WORDS_POS

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    pairs = {"prompt": [f"the {WORDS_NEUTRAL[i % len(WORDS_NEUTRAL)]} was" for i in range(16)],
             "chosen": [f" {WORDS_POS[i % len(WORDS_POS)]} and {WORDS_POS[(i + 3) % len(WORDS_POS)]}" for i in range(16)],
             "rejected": [f" {WORDS_NEG[i % len(WORDS_NEG)]}" for i in range(16)]}
    args = RewardConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=8, max_steps=2,
                        learning_rate=1e-3, report_to="none", use_cpu=True, save_strategy="no", seed=0,
                        logging_steps=1, dataloader_num_workers=0, dataset_num_proc=None)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_dict(pairs), processing_class=tok)
    trainer.train()
    assert trainer.state.global_step == 2
    saved = tmp_path / "trl-rm"
    trainer.save_model(str(saved))
    assert AutoConfig.from_pretrained(saved).num_labels == 1

    reward = load_reward(f"rm:{saved}")
    texts = [p + c for p, c in zip(pairs["prompt"][:4], pairs["chosen"][:4])] + TEXTS[:3]
    assert reward(texts) == pytest.approx(_direct_logits(saved, texts), abs=1e-5)
    assert reward([t + tok.eos_token for t in texts]) == pytest.approx(reward(texts), abs=1e-5)
    assert reward.info["kind"] == "rm" and reward.info["architecture"] == "GPTNeoXForSequenceClassification"
    assert "accuracy" not in reward.info  # no rm.json beside TRL's folder
