import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_user_error, run_cli
from rlhf_lens.errors import UserError
from rlhf_lens.rlhf import (
    KLController,
    PPOConfig,
    filter_logits,
    gae,
    kl_rewards,
    lr_factor,
    masked_mean,
    ppo_loss,
    sample,
    train_ppo,
    whiten,
)

# --- the math on hand-made tensors -------------------------------------------------------------

LENGTHS = [4, 2, 5]  # three responses in a batch padded to 5 tokens


def _mask() -> torch.Tensor:
    return torch.tensor([[1.0 if t < n else 0.0 for t in range(5)] for n in LENGTHS])


def test_gae_matches_a_direct_sum():
    gen = torch.Generator().manual_seed(0)
    values, rewards = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(values, rewards, _mask(), gamma, lam)
    for i, n in enumerate(LENGTHS):
        v, r = values[i].tolist(), rewards[i].tolist()
        delta = [r[t] + gamma * (v[t + 1] if t + 1 < n else 0.0) - v[t] for t in range(n)]
        for t in range(n):  # A_t = sum_l (gamma lam)^l delta_{t+l}, the episode ending at its last token
            expected = sum((gamma * lam) ** k * delta[t + k] for k in range(n - t))
            assert float(advantages[i, t]) == pytest.approx(expected, abs=1e-5)
            assert float(returns[i, t]) == pytest.approx(expected + v[t], abs=1e-5)


def test_whitening_uses_the_masked_entries_of_the_batch():
    x = torch.arange(15.0).view(3, 5) ** 1.5
    mask = _mask()
    white = whiten(x, mask)
    kept = white[mask.bool()].double().numpy()
    assert kept.mean() == pytest.approx(0.0, abs=1e-6) and kept.std(ddof=1) == pytest.approx(1.0, abs=1e-4)
    raw = x[mask.bool()].double().numpy()
    assert float(white[2, 4]) == pytest.approx((float(x[2, 4]) - raw.mean()) / raw.std(ddof=1), rel=1e-4)
    assert float(masked_mean(x, mask)) == pytest.approx(raw.mean(), rel=1e-6)


def test_kl_penalty_and_score_at_the_last_token():
    logprobs = torch.full((3, 5), -1.0)
    ref = torch.full((3, 5), -1.5)
    scores = torch.tensor([2.0, -1.0, 0.5])
    rewards, kl = kl_rewards(scores, logprobs, ref, _mask(), beta=0.2)
    for i, n in enumerate(LENGTHS):
        for t in range(5):
            expected = (-0.2 * 0.5 if t < n else 0.0) + (float(scores[i]) if t == n - 1 else 0.0)
            assert float(rewards[i, t]) == pytest.approx(expected)
            assert float(kl[i, t]) == pytest.approx(0.5 if t < n else 0.0)


def test_full_kl_is_the_exact_kl_and_the_mean_of_the_sampled_one():
    from rlhf_lens.rlhf import full_kl

    torch.manual_seed(0)
    logits, ref_logits = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    exact = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=logits),
                                              torch.distributions.Categorical(logits=ref_logits))
    assert torch.allclose(full_kl(logits, ref_logits), exact, atol=1e-6)
    assert torch.all(full_kl(logits, ref_logits) >= 0) and full_kl(logits, logits).abs().max() < 1e-6
    # policy = reference over a large vocabulary: the float sum rounds either way, the KL never below 0
    wide = torch.randn(8, 16, 50_000) * 4
    assert torch.all(full_kl(wide, wide.clone()) >= 0)
    # k1 on sampled tokens is an unbiased estimate of it: its mean over many draws lands close
    tokens = torch.distributions.Categorical(logits=logits[0, 0]).sample((200_000,))
    k1 = torch.log_softmax(logits[0, 0], -1)[tokens] - torch.log_softmax(ref_logits[0, 0], -1)[tokens]
    assert float(k1.mean()) == pytest.approx(float(exact[0, 0]), abs=0.02)
    # kl_rewards penalises the estimate it is given
    rewards, kl = kl_rewards(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), beta=0.5,
                             kl=exact)
    assert torch.allclose(kl, exact) and torch.allclose(rewards, -0.5 * exact)


def test_adaptive_kl_controller():
    ctl = KLController(0.5, target=6, horizon=10000)
    ctl.update(12.0, 64)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.5 * (1 + 0.2 * 64 / 10000))
    before = ctl.value
    ctl.update(6.6, 64)  # error 0.1
    assert ctl.value == pytest.approx(before * (1 + 0.1 * 64 / 10000))
    before = ctl.value
    ctl.update(0.0, 64)  # clipped to -0.2
    assert ctl.value == pytest.approx(before * (1 - 0.2 * 64 / 10000))
    fixed = KLController(0.5, 6, 10000, adaptive=False)
    fixed.update(100.0, 64)
    assert fixed.value == 0.5


def test_clipped_losses_by_hand():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    old_logprobs = torch.zeros(1, 4)
    logprobs = torch.log(torch.tensor([[1.5, 0.7, 1.1, 9.0]]))  # ratios 1.5, 0.7, 1.1 (and a masked one)
    advantages = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    old_values = torch.tensor([[0.0, 1.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 1.1, 1.0, 5.0]])
    returns = torch.tensor([[1.0, 0.0, 2.5, 0.0]])
    loss, stats = ppo_loss(logprobs, values, old_logprobs, old_values, advantages, returns, mask, 0.2, 0.2, 0.1)
    # policy: max(-A r, -A clip(r, 0.8, 1.2)) per token
    policy = [max(-1.0 * 1.5, -1.0 * 1.2), max(2.0 * 0.7, 2.0 * 0.8), max(-0.5 * 1.1, -0.5 * 1.1)]
    # value: 0.5 * max((v - R)^2, (clip(v, old - 0.2, old + 0.2) - R)^2)
    clipped = [0.2, 1.1, 1.8]
    value = [max((v - r) ** 2, (c - r) ** 2) for v, c, r in zip([0.5, 1.1, 1.0], clipped, [1.0, 0.0, 2.5])]
    assert float(stats["policy_loss"]) == pytest.approx(sum(policy) / 3, rel=1e-5)
    assert float(stats["value_loss"]) == pytest.approx(0.5 * sum(value) / 3, rel=1e-5)
    assert float(loss) == pytest.approx(sum(policy) / 3 + 0.1 * 0.5 * sum(value) / 3, rel=1e-5)
    assert float(stats["clipfrac"]) == pytest.approx(2 / 3)  # tokens 1 and 2 took the clipped branch; 3 is inside


def test_learning_rate_schedule():
    factors = [lr_factor(s, warmup=3, total=10) for s in range(10)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[-1] == pytest.approx(1 / 7) and all(a > b for a, b in zip(factors[3:], factors[4:]))
    constant = [lr_factor(s, warmup=3, total=10, schedule="constant") for s in range(10)]
    assert constant[:3] == factors[:3] and constant[3:] == [1.0] * 7


def test_zero_initialised_value_head_leaves_only_the_reward_in_the_first_advantages(tiny_model_dir, corpus_file):
    from rlhf_lens.data import load_corpus
    from rlhf_lens.models import load_model
    from rlhf_lens.rlhf import _Trainer

    model, tokenizer = load_model(str(tiny_model_dir))
    trainer = _Trainer(model, model, tokenizer, lambda texts: [1.0] * len(texts), load_corpus(str(corpus_file)),
                       PPOConfig(value_init="zero", batch_size=4, mini_batch_size=4))
    hidden = torch.randn(3, 7, model.config.hidden_size)
    assert torch.equal(trainer.value_head(hidden), torch.zeros(3, 7))
    # values 0 and no KL: GAE gives each token lam**(tokens after it) times the score, nothing else
    rewards, _ = kl_rewards(torch.ones(3), torch.zeros(3, 5), torch.zeros(3, 5), _mask(), beta=0.1)
    advantages, _ = gae(torch.zeros(3, 5), rewards, _mask(), gamma=1.0, lam=0.5)
    assert advantages[1, :2].tolist() == [0.5, 1.0] and advantages[1, 2:].abs().sum() == 0
    with pytest.raises(UserError, match="kl_penalty"):
        train_ppo(str(tiny_model_dir), "vader", str(corpus_file), "unused", PPOConfig(kl_penalty="abs"))
    with pytest.raises(UserError, match="value_init"):
        train_ppo(str(tiny_model_dir), "vader", str(corpus_file), "unused", PPOConfig(value_init="ones"))


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([[0.1, 0.4, 0.2, 0.3]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[False, True, False, True]]
    assert torch.isfinite(filter_logits(logits, top_p=0.6)).tolist() == [[False, True, False, True]]
    assert torch.isfinite(filter_logits(logits, top_p=0.75)).tolist() == [[False, True, True, True]]
    assert torch.equal(filter_logits(logits), logits)


# --- sampling ----------------------------------------------------------------------------------


def test_sampling_with_left_padding_matches_unpadded_forward(tiny_model_dir):
    from rlhf_lens.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    prompts = [tok.encode("the movie was"), tok.encode("a"), tok.encode("this film is a great story and")]
    lengths = [6, 3, 8]
    rollouts = sample(model, prompts, lengths, eos_id=None, generator=torch.Generator().manual_seed(0))
    assert rollouts.mask.sum(1).tolist() == lengths
    again = sample(model, prompts, lengths, eos_id=None, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rollouts.input_ids, again.input_ids)  # seeded
    with torch.no_grad():
        for i, (prompt, n) in enumerate(zip(prompts, lengths)):
            response = rollouts.responses[i, :n].tolist()
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1]
            direct = torch.log_softmax(logits, -1).gather(1, torch.tensor(response)[:, None])[:, 0]
            assert torch.allclose(rollouts.logprobs[i, :n], direct, atol=1e-4)
    # a response ends at its first EOS, which it keeps
    eos = int(rollouts.responses[2, 1])
    cut = sample(model, prompts, lengths, eos_id=eos, generator=torch.Generator().manual_seed(0))
    first = [next((t + 1 for t in range(n) if int(cut.responses[i, t]) == eos), n) for i, n in enumerate(lengths)]
    assert cut.mask.sum(1).tolist() == first and first[2] <= 2


# --- PPO end to end ----------------------------------------------------------------------------

# A table that values a few frequent words of the synthetic reviews; scale 1 makes the signal strong.
TABLE = "film,1\nmovie,1\nstory,1\nplot,1\n"
FAST = dict(batch_size=32, mini_batch_size=16, ppo_epochs=4, lr=3e-3, warmup_steps=1, init_kl_coef=0.05,
            eval_prompts=64, checkpoint_every=5)


@pytest.fixture(scope="module")
def table_spec(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("table") / "frequent.csv"
    path.write_text(TABLE)
    return f"table:{path},scale=1"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, corpus_file, table_spec):
    out = tmp_path_factory.mktemp("ppo") / "run"
    train_ppo(str(tiny_model_dir), table_spec, str(corpus_file), out, PPOConfig(steps=12, **FAST))
    return out


def test_ppo_raises_the_reward_on_held_out_prompts(trained):
    result = json.loads((trained / "eval.json").read_text())
    base, tuned = result["base"], result["tuned"]
    assert result["n"] == 64 and result["split"] == "test"
    assert tuned["mean"] > base["mean"] + 1.0
    assert tuned["mean"] - base["mean"] > 4 * math.hypot(base["se"], tuned["se"])
    assert tuned["positive_frac"] >= base["positive_frac"]
    log = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, 13))
    assert all(math.isfinite(row[k]) for row in log for k in ("reward", "kl", "beta", "policy_loss", "value_loss"))
    assert np.mean([r["reward"] for r in log[-3:]]) > np.mean([r["reward"] for r in log[:3]])
    ex = result["examples"][0]
    assert set(ex) == {"prompt", "base", "base_reward", "tuned", "tuned_reward"}


def test_full_kl_penalty_trains_and_logs_a_nonnegative_kl(tmp_path, tiny_model_dir, corpus_file, table_spec):
    out = tmp_path / "full"
    train_ppo(str(tiny_model_dir), table_spec, str(corpus_file), out,
              PPOConfig(steps=12, kl_penalty="full", value_init="zero", **FAST))
    result = json.loads((out / "eval.json").read_text())
    assert result["tuned"]["mean"] > result["base"]["mean"] + 1.0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(row["kl"] >= 0 for row in log) and log[-1]["kl"] > 0  # exact KL; k1 sums can dip below 0


def test_outputs_saved_model_without_value_head(trained, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (trained / "ppo.png").stat().st_size > 1000 and not (trained / "checkpoint").exists()
    tuned = load_file(str(trained / "model" / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert set(tuned) == set(base)  # the value head is not part of the saved model
    assert any(not torch.equal(tuned[k], base[k]) for k in base)
    AutoModelForCausalLM.from_pretrained(trained / "model")
    AutoTokenizer.from_pretrained(trained / "model")


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch, tiny_model_dir, corpus_file, table_spec,
                                                    trained):
    config = PPOConfig(steps=12, **FAST)
    out = tmp_path / "resumed"
    monkeypatch.setenv("RLHF_LENS_INTERRUPT_AFTER", "rlhf:7")
    with pytest.raises(KeyboardInterrupt):
        train_ppo(str(tiny_model_dir), table_spec, str(corpus_file), out, config)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 5
    assert len((out / "log.jsonl").read_text().splitlines()) == 7
    monkeypatch.delenv("RLHF_LENS_INTERRUPT_AFTER")
    train_ppo(str(tiny_model_dir), table_spec, str(corpus_file), out, config)
    a, b = load_file(str(trained / "model" / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in json.loads(line).items() if not k.endswith("_s")}
             for line in (out / "log.jsonl").read_text().splitlines()]
    assert strip == [{k: v for k, v in json.loads(line).items() if not k.endswith("_s")}
                     for line in (trained / "log.jsonl").read_text().splitlines()]
    # a finished run is not redone; other settings in the same folder are refused, nothing touched
    stamp = (out / "eval.json").stat().st_mtime_ns
    train_ppo(str(tiny_model_dir), table_spec, str(corpus_file), out, config)
    with pytest.raises(UserError, match="other settings.*lr"):
        train_ppo(str(tiny_model_dir), table_spec, str(corpus_file), out, PPOConfig(steps=12, **{**FAST, "lr": 1e-3}))
    assert (out / "eval.json").stat().st_mtime_ns == stamp


def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, tiny_model_dir, corpus_file, malformed_table):
    base = ["rlhf", "--base", tiny_model_dir, "--corpus", corpus_file]
    out = tmp_path / "out"
    for extra, fragments in [
        (["--reward", "vader", "--steps", "0"], ["steps must be at least 1"]),
        (["--reward", "warmth"], ["unknown reward spec"]),
        (["--reward", f"table:{malformed_table}"], ["not a number"]),
        (["--reward", f"classifier:{tiny_model_dir}"], ["not a sequence classifier"]),
    ]:
        assert_user_error(run_cli(*base, *extra, "--out", out), *fragments)
        assert not out.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an rlhf-lens PPO folder"):
        train_ppo(str(tiny_model_dir), "vader", str(corpus_file), foreign, PPOConfig(steps=1))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    with pytest.raises(UserError, match="mini_batch_size"):
        train_ppo(str(tiny_model_dir), "vader", str(corpus_file), out, PPOConfig(batch_size=4, mini_batch_size=8))
    assert not out.exists()


@pytest.fixture
def malformed_table(tmp_path) -> str:
    """A malformed table: a non-numeric value on line 2."""
    path = tmp_path / "bad.csv"
    path.write_text("good,1\nbad,minus one\n")
    return str(path)
