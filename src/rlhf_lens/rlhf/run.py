"""The RLHF stage's entry points: `train_ppo` (a resumable PPO run into a folder, with held-out evaluations along
the tune), `evaluate_models` (held-out reward of a model tuned elsewhere), `load_gold`, `plot_log`; the held-out
evaluation both share is `evals.evaluate_reward`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, interrupt_point
from ..io import read_json, write_json, write_text
from ..rules import Namer, in_section
from .config import PPOConfig, check_config
from .evals import eval_row, evaluate_reward, read_evals, read_rows, write_evals
from .trainer import _Trainer

FORMAT = "rlhf-lens.ppo"
VERSION = 1
RESUME_IGNORES = ("checkpoint_every",)  # settings that may change between a run and its resume


def _run_record(base: str, reward_spec: str, corpus: str, config: PPOConfig, gold: str = "") -> dict:
    # the gold only when given, so that a folder of an older version (no gold) still resumes
    return {"format": FORMAT, "version": VERSION, "base": base, "reward": reward_spec, "corpus": corpus,
            **({"gold": gold} if gold else {}), "config": dataclasses.asdict(config)}


def load_gold(spec: str, device: str, key: Namer = in_section("gold")):
    """The gold reward a spec names (None for ""), or a UserError naming the setting (`key("spec")`)."""
    from ..rewards import load_reward

    if not spec:
        return None
    try:
        return load_reward(spec, device=device)
    except UserError as e:
        raise UserError(f"{key('spec')}: {e}") from None


def _check_out_dir(out: Path, record: dict) -> bool:
    """True when `out` holds this run (to resume); False when it is new; UserError when it is another."""
    path = out / "config.json"
    if not path.is_file():
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} exists and is not an rlhf-lens PPO folder; use another --out")
        return False
    old = read_json(path)
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise UserError(f"{path} is not an rlhf-lens PPO config; use another --out")
    flat_old = {**{k: v for k, v in old.items() if k != "config"}, **old.get("config", {})}
    flat_new = {**{k: v for k, v in record.items() if k != "config"}, **record["config"]}
    diff = [f"{k}: {flat_old.get(k)!r} -> {v!r}" for k, v in flat_new.items()
            if k not in RESUME_IGNORES and flat_old.get(k) != v]
    if diff:
        raise UserError(f"{out} holds a PPO run with other settings ({'; '.join(diff[:3])}); "
                        "use another --out or delete that folder")
    return True


def heldout_eval_prompts(data, tokenizer, config: PPOConfig) -> list[list[int]]:
    """The held-out prompts both models are evaluated on (seeded, from the test split): the same for PPO's own
    evaluation and for a model tuned elsewhere."""
    from ..data import sample_prompts

    return sample_prompts(data, tokenizer, config.eval_prompts, seed=config.seed, split="test",
                          min_chars=config.prompt_min_chars, min_tokens=config.prompt_min_tokens,
                          max_tokens=config.prompt_max_tokens)


def prompt_notes(data, tokenizer, config: PPOConfig, splits: tuple[str, ...] = ("train", "test")) -> list[str]:
    """What eval.json records of how the prompts were drawn: a note per split whose documents are all shorter than
    rlhf.prompt_min_chars (the prompts then come from its documents of prompt_min_tokens tokens or more); fails,
    naming both settings, when a split has none of either."""
    from ..data import prompt_documents

    notes = [prompt_documents(data, tokenizer, split, config.prompt_min_chars, config.prompt_min_tokens)[1]
             for split in splits]
    return [n for n in notes if n]


def train_ppo(base: str, reward_spec: str, corpus: str, out: str | os.PathLike, config: PPOConfig | None = None,
              gold: str = "", gold_key: Namer = in_section("gold")) -> Path:
    """Fine-tune `base` with PPO against the reward on `corpus`'s prompts; resumable. Returns out/model.

    Writes out/config.json, out/log.jsonl (one JSON object per step), out/checkpoint/ (while
    running), out/model/ (save_pretrained, without the value head), out/eval.json, out/ppo.png; with
    config.eval_every > 0 also out/evals.jsonl (the held-out evaluations along the tune: reward, `gold`'s reward
    when given, KL to the base, repetition), out/gold.json (`gold.gold_curve`) and out/gold.png. `gold_key` names
    the gold's setting in an error (`gold.spec` in a run, `--gold` for the command).
    """
    from ..data import load_corpus
    from ..models import load_model, save_model
    from ..progress import progress_bar
    from ..rewards import load_reward

    config = config or PPOConfig()
    out = Path(out)
    check_config(config)
    record = _run_record(base, reward_spec, corpus, config, gold)
    resuming = _check_out_dir(out, record)
    if resuming and (out / "eval.json").is_file() and (out / "model").is_dir():
        return out / "model"  # finished earlier
    reward = load_reward(reward_spec, device=config.device)
    gold_reward = load_gold(gold, config.device, gold_key)
    data = load_corpus(corpus, text_column=config.text_column)
    policy, tokenizer = load_model(base, device=config.device, dtype=config.dtype)
    notes = prompt_notes(data, tokenizer, config)  # a corpus too short for any prompt fails before writing
    eval_prompts = heldout_eval_prompts(data, tokenizer, config)
    reference = copy.deepcopy(policy).requires_grad_(False).eval()  # frozen copy of the base
    write_json(out / "config.json", record)
    devices = [policy.device] if policy.device.type == "cuda" else []

    def evaluate(model, with_kl: bool = True) -> dict:
        # its own generators, inside a fork: the training's random streams never see an evaluation
        with torch.random.fork_rng(devices=devices):
            started = time.perf_counter()
            result = evaluate_reward(model, tokenizer, reward, eval_prompts, config, gold=gold_reward,
                                     reference=reference if with_kl else None)
        result["seconds"] = time.perf_counter() - started
        return result

    with torch.random.fork_rng(devices=devices):
        trainer = _Trainer(policy, reference, tokenizer, reward, data, config)
        checkpoint = out / "checkpoint"
        if not checkpoint.is_dir() and (out / "checkpoint.old").is_dir():  # a crash mid-swap
            os.replace(out / "checkpoint.old", checkpoint)
        if checkpoint.is_dir():
            trainer.load_checkpoint(checkpoint, read_rows(out / "log.jsonl"))
        evals = read_evals(out / "evals.jsonl", trainer.step) if config.eval_every else []

        def evaluate_if_due() -> None:
            # before the first step and every eval_every steps; the last step's is the tuned evaluation below
            step = trainer.step
            if config.eval_every and step < config.steps and step % config.eval_every == 0 \
                    and all(r["step"] != step for r in evals):
                result = evaluate(policy)
                evals.append(eval_row(step, result, result["seconds"]))
                write_evals(out / "evals.jsonl", evals)

        with progress_bar() as bar:
            task = bar.add_task("ppo", total=config.steps, completed=trainer.step)
            evaluate_if_due()
            while trainer.step < config.steps:
                row = trainer.train_step()
                write_text(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in trainer.log))
                evaluate_if_due()
                if trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps:
                    trainer.save_checkpoint(checkpoint)
                bar.update(task, advance=1, description=f"ppo reward {row['reward']:+.3f} kl {row['kl']:.2f}")
                interrupt_point("rlhf", trainer.step)
        model_dir = save_model(policy.eval(), tokenizer, out / "model")
        base_eval = evaluate(reference, with_kl=False)
        tuned_eval = evaluate(policy, with_kl=bool(config.eval_every))  # the KL only for the last evaluation row
    if config.eval_every:
        if all(r["step"] != config.steps for r in evals):
            evals.append(eval_row(config.steps, tuned_eval, tuned_eval["seconds"]))
        write_evals(out / "evals.jsonl", evals)
        from .gold import write_gold

        write_gold(out, evals, gold, reward_spec)
    plot_log(trainer.log, out / "ppo.png", kl_target=config.kl_target if config.adaptive_kl else None)
    _write_eval(out, reward_spec, reward, base_eval, tuned_eval, config,
                final_kl=trainer.log[-1]["kl"] if trainer.log else None, prompt_notes=notes, gold=gold)
    shutil.rmtree(checkpoint, ignore_errors=True)  # model/ and eval.json now hold the result
    return model_dir


def _write_eval(out: Path, reward_spec: str, reward, base_eval: dict, tuned_eval: dict, config: PPOConfig,
                final_kl: float | None, tuned_by: str = "ppo", prompt_notes: list[str] | None = None,
                gold: str = "") -> None:
    """out/eval.json: held-out reward of base and tuned on the same prompts and random streams; `prompt_notes`:
    how a short corpus's prompts were drawn (`prompt_notes`); with a `gold` spec, the gold's mean and se of both."""
    from .evals import mean_se

    examples = [{"prompt": b["prompt"], "base": b["response"], "base_reward": b["reward"],
                 "tuned": t["response"], "tuned_reward": t["reward"]}
                for b, t in zip(base_eval["completions"][:config.eval_examples],
                                tuned_eval["completions"][:config.eval_examples])]
    gold_record = ({"gold": {"spec": gold, "base": mean_se(base_eval["gold_scores"]),
                             "tuned": mean_se(tuned_eval["gold_scores"])}} if gold else {})
    write_json(out / "eval.json", {
        "reward": reward_spec, "reward_info": getattr(reward, "info", {}), "split": "test", "n": base_eval["n"],
        "base": {k: base_eval[k] for k in ("mean", "se", "positive_frac")},
        "tuned": {k: tuned_eval[k] for k in ("mean", "se", "positive_frac")}, **gold_record,
        "final_kl": final_kl, "steps": config.steps if tuned_by == "ppo" else 0, "tuned_by": tuned_by,
        "prompt_notes": prompt_notes or [], "examples": examples})


def evaluate_models(base: str, tuned: str, reward_spec: str, corpus: str, out: str | os.PathLike,
                    config: PPOConfig | None = None, gold: str = "", gold_key: Namer = in_section("gold")) -> dict:
    """Held-out reward of `base` and a model tuned elsewhere (OpenRLHF, TRL, ...), on the same prompts and random
    streams as after a PPO run of ours; with `gold`, the gold's reward of both too; writes out/eval.json
    (tuned_by: "external") and returns it. No training."""
    from ..rewards import load_reward

    config = config or PPOConfig()
    out = Path(out)
    reward = load_reward(reward_spec, device=config.device)
    gold_reward = load_gold(gold, config.device, gold_key)
    base_eval, tuned_eval, notes = evaluate_both(base, tuned, reward, corpus, config, gold_reward)
    _write_eval(out, reward_spec, reward, base_eval, tuned_eval, config, final_kl=None, tuned_by="external",
                prompt_notes=notes, gold=gold)
    return read_json(out / "eval.json")


def evaluate_both(base: str, tuned: str, reward, corpus: str, config: PPOConfig, gold_reward=None
                  ) -> tuple[dict, dict, list[str]]:
    """(base's, tuned's `evaluate_reward`, prompt notes): both models on the same held-out prompts and random
    streams as eval.json's, every completion kept (what [inspect_rm] reads the policy's gain from)."""
    from ..data import load_corpus
    from ..models import load_model

    data = load_corpus(corpus, text_column=config.text_column)
    base_model, tokenizer = load_model(base, device=config.device, dtype=config.dtype)
    notes = prompt_notes(data, tokenizer, config, splits=("test",))
    prompts = heldout_eval_prompts(data, tokenizer, config)
    with torch.random.fork_rng(devices=[base_model.device] if base_model.device.type == "cuda" else []):
        base_eval = evaluate_reward(base_model.eval(), tokenizer, reward, prompts, config, gold=gold_reward)
        del base_model
        tuned_model, _ = load_model(tuned, device=config.device, dtype=config.dtype)
        tuned_eval = evaluate_reward(tuned_model.eval(), tokenizer, reward, prompts, config, gold=gold_reward)
    return base_eval, tuned_eval, notes


def plot_log(log: list[dict], path: Path, kl_target: float | None = None) -> None:
    """Reward, KL, beta and the losses against the step, as a 2x2 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    steps = [row["step"] for row in log]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    reward = np.array([row["reward"] for row in log])
    spread = np.array([row["reward_std"] for row in log])
    axes[0, 0].plot(steps, reward, color="C0")
    axes[0, 0].fill_between(steps, reward - spread, reward + spread, color="C0", alpha=0.2)
    axes[0, 0].set_title("reward (mean ± std over the batch)")
    axes[0, 1].plot(steps, [row["kl"] for row in log], color="C1")
    if kl_target is not None:
        axes[0, 1].axhline(kl_target, color="grey", linestyle="--", label="target")
        axes[0, 1].legend()
    axes[0, 1].set_title("KL to the reference (nats per response)")
    axes[1, 0].plot(steps, [row["beta"] for row in log], color="C2")
    axes[1, 0].set_title("KL coefficient beta")
    axes[1, 1].plot(steps, [row["policy_loss"] for row in log], label="policy")
    axes[1, 1].plot(steps, [row["value_loss"] for row in log], label="value")
    axes[1, 1].legend()
    axes[1, 1].set_title("losses")
    for ax in axes[1]:
        ax.set_xlabel("PPO step")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
