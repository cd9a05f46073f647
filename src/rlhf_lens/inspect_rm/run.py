"""`inspect_reward_model`: open a learned reward model (docs/inspect_rm.md). The RM's token scan against the gold,
an SAE on the state its head reads, its score split exactly over that SAE's features, each feature's margin, gain
and gold alignment, the policy's gain split over them with its nulls, the feedback probe, and a plain verdict, in
OUT/inspect_rm.json (+ OUT/sae, OUT/store, OUT/features.jsonl)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..nulls import mean_se
from ..rules import Namer, field_name
from .config import InspectRMConfig, check_config

FORMAT, VERSION, RECORD = "rlhf-lens.inspect-rm", 1, "inspect_rm.json"
EXACT_TEXTS = 128
"""Texts whose split is checked against the RM's own forward pass (every text is checked against its head)."""
WORDS_PER_FEATURE = 5
"""Candidate words listed per feature: those its code is largest on in the token scan's states."""


@dataclasses.dataclass
class Policy:
    """The tuned policy and what it is compared with: the base it started from and the corpus its held-out prompts
    come from, sampled with `ppo`'s evaluation settings (eval.json's prompts and random streams)."""

    base: str
    tuned: str
    corpus: str
    ppo: object  # rlhf.PPOConfig
    dictionaries: dict[str, tuple[int, str]] | None = None
    """The feedback probe's dictionaries: name ("tuned..." / "base...") -> (block, SAE folder); None: no probe."""
    promoted: list[str] | None = None
    """The diff's promoted words, read through the RM and the gold."""


def inspect_reward_model(rm: str, pairs: str | Path, out: str | Path, config: InspectRMConfig, policy: Policy, *,
                         gold: str, placebo_rm: str | None = None, keys: tuple[str, str, str] = ("prompt", "chosen",
                                                                                                     "rejected"),
                         interp=None, examples=None, device: str = "cpu", dtype: str = "float32",
                         key: Namer = field_name) -> Path:
    """Open the RM `rm` (an RM folder, train-rm's or another trainer's) trained on `pairs` and judged by `gold`;
    returns OUT/inspect_rm.json. `placebo_rm`: the RM trained on shuffled labels (the nulls' RM)."""
    from ..interp.config import ExampleConfig, InterpConfig
    from ..io import atomic_dir, check_output_dir, write_json
    from ..preferences.pairs import read_pairs
    from ..progress import console
    from ..rewards.reward_model import model_folder, read_record
    from ..rlhf.run import load_gold
    from ..rm.model import load_reward_model, score_head

    check_config(config, key)
    out = Path(out)
    check_output_dir(out)
    folder = model_folder(rm)
    if folder is None:
        raise UserError(f"no reward model folder at {rm}; give train-rm's folder or a save_pretrained RM folder")
    items = read_pairs(pairs, *keys, key=key)
    gold_reward = load_gold(gold, device)
    interp, examples = interp or InterpConfig(), examples or ExampleConfig()
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 2)
        clock = now

    model, tokenizer = load_reward_model(str(folder), device, dtype)
    head = score_head(model)
    test_pairs = held_out_pairs(items, read_record(folder), config.seed)
    placebo = load_reward_model(str(model_folder(placebo_rm)), device, dtype) if placebo_rm else None
    console.print(f"inspect-rm: {len(items)} pairs ({len(test_pairs)} held out), gold {gold}")

    console.print(f"inspect-rm: the base's and the tuned model's completions of {policy.ppo.eval_prompts} held-out "
                  "prompts")
    completions = policy_completions(policy, folder, gold_reward, device, dtype)
    policy_texts = completions["base_texts"] + completions["tuned_texts"]
    lap("policy completions")

    from .token_scan import token_scan

    scan = token_scan(model, tokenizer, gold, items, test_pairs, config, placebo=placebo, promoted=policy.promoted)
    lap("token scan")

    with atomic_dir(out) as staging:
        chosen_pairs = subset(items, config.max_texts // 2, config.seed)
        pair_texts = [t for p in chosen_pairs for t in p.texts()]  # chosen, rejected, chosen, ...
        texts = pair_texts + policy_texts
        from .states import last_rows, prefix_states, write_state_store

        states, ids = prefix_states(model, tokenizer, texts, config.max_length, description="RM states")
        lap("RM states")
        console.print(f"inspect-rm: an SAE on {sum(len(x) for x in states)} RM states of {len(texts)} texts")
        sae = train_rm_sae(states, staging / "sae", config)
        lap("SAE")
        from .decompose import decompose_scores

        parts = decompose_scores(sae, head, last_rows(states))
        # every text against the head on its state (float64), a seeded subset against the RM's own forward pass
        forward_rows = sorted(np.random.default_rng([config.seed, 0xE8]).permutation(len(texts))[:EXACT_TEXTS])
        exactness = check_exact(parts, model, tokenizer, texts, config.max_length, [int(i) for i in forward_rows])
        head_exactness = parts.max_relative_error()
        contributions = parts.contributions.numpy()
        n_pairs = len(chosen_pairs)
        from .features import classify, gold_alignment, margin, shuffled_counts

        chosen_rows, rejected_rows = contributions[0:2 * n_pairs:2], contributions[1:2 * n_pairs:2]
        margins = margin(chosen_rows, rejected_rows)
        gold_values = np.asarray(gold_reward(texts), dtype=np.float64)
        alignment = gold_alignment(contributions, gold_values)
        classes = classify(alignment, margins, config.level)
        null_counts = shuffled_counts(contributions, gold_values, chosen_rows, rejected_rows, config.level,
                                      config.null_shuffles, config.seed)
        from .gain import gain_split, paired

        n_policy = len(completions["base_texts"])
        base_rows = slice(2 * n_pairs, 2 * n_pairs + n_policy)
        tuned_rows = slice(2 * n_pairs + n_policy, len(texts))
        error = parts.error.numpy()
        gain = gain_split(contributions[tuned_rows], contributions[base_rows], error[tuned_rows], error[base_rows],
                          classes, config.seed)
        if placebo is not None:
            from ..rm.model import scores

            placebo_scores = scores(*placebo, policy_texts, config.max_length).numpy().astype(np.float64)
            gain["placebo_total"] = paired(placebo_scores[n_policy:] - placebo_scores[:n_policy], config.seed)
        else:
            gain["placebo_total"] = None
        per_feature = gain.pop("per_feature")
        lap("decomposition")
        top = [int(i) for i in np.argsort(-per_feature, kind="stable")[:config.top_features]]
        words = feature_words(sae, scan.states, scan.vocab.words, top)
        store = write_state_store(staging / "store", states, ids, str(folder), str(folder), model.config.num_hidden_layers,
                                  "pair texts and the policy's held-out completions")
        cards = explain_top(store, model.config.num_hidden_layers, sae, top[:config.explain], tokenizer, interp,
                            examples, gold, staging / "features.jsonl", device)
        lap("explanations")
        features = [feature_row(i, gain=mean_se(contributions[tuned_rows, i] - contributions[base_rows, i]),
                                margins=margins, alignment=alignment, cls=classes[i], words=words.get(i, []),
                                card=cards.get(i)) for i in top]
        probe = None
        if config.probe and policy.dictionaries:
            console.print(f"inspect-rm: the feedback probe on {len(policy.dictionaries)} dictionaries")
            groups = [p.prompt for p in chosen_pairs for _ in (0, 1)] + completions["prompts"] * 2
            probe = run_probe(policy, texts, groups, parts.scores.numpy(), config, device, dtype)
            lap("probe")
        record = {
            "format": FORMAT, "version": VERSION, "rm": str(folder), "placebo_rm": placebo_rm, "gold": gold,
            "level": config.level, "config": dataclasses.asdict(config), "token_scan": scan.record,
            "sae": {"dir": "sae", "dict_size": int(sae.cfg.dict_size), "k": int(sae.cfg.k), "rows": int(sum(len(s) for s in states)),
                    "texts": len(texts), "fvu": (sae.metrics or {}).get("fvu")},
            "decomposition": {"texts": len(texts), "max_relative_error": max(exactness, head_exactness),
                              "forward_checked": len(forward_rows), "bias": head_bias(head),
                              "b_dec_term": parts.constant - head_bias(head)},
            "features": features,
            "error": {"gain": {"mean": gain["split"]["error"]["mean"], "se": gain["split"]["error"]["se"]},
                      "margin": mean_se(error[0:2 * n_pairs:2] - error[1:2 * n_pairs:2])},
            "class_counts": {c: classes.count(c) for c in ("gold", "anti-gold", "cue", "other")},
            "named": {"gold_aligned": int((alignment["q"] <= config.level).sum()),
                      "margin": int(((margins["q"] <= config.level) & (margins["mean"] > 0)).sum()),
                      "on_nulls": null_counts},
            "gain": gain, "probe": probe,
            "verdict": verdict(gain, scan.record, features, config.level),
            "seconds": seconds,
        }
        write_json(staging / RECORD, record)
    return out / RECORD


def held_out_pairs(items: list, record: dict, seed: int) -> list:
    """The RM's held-out pairs: train-rm's test split (rm.json) where known, else a seeded fifth of the pairs
    (another trainer's RM: some of them may be its training pairs, said in docs/inspect_rm.md)."""
    test = ((record or {}).get("split") or {}).get("test")
    if isinstance(test, list) and test and all(isinstance(i, int) and 0 <= i < len(items) for i in test):
        return [items[i] for i in test]
    order = np.random.default_rng([seed, 0x7E57]).permutation(len(items))
    return [items[i] for i in sorted(order[:max(2, len(items) // 5)])]


def subset(items: list, n: int, seed: int) -> list:
    """At most `n` of `items`, a seeded subset in their order."""
    if len(items) <= n:
        return list(items)
    keep = np.random.default_rng([seed, 0x5B5]).choice(len(items), n, replace=False)
    return [items[i] for i in sorted(keep)]


def policy_completions(policy: Policy, rm_folder: Path, gold_reward, device: str, dtype: str) -> dict:
    """The base's and the tuned model's completions of the held-out prompts (eval.json's prompts and random
    streams), as the RM reads them (rlhf.score_query), with the RM's and the gold's scores."""
    from ..rewards import load_reward
    from ..rewards.trainers import scored_texts
    from ..rlhf.run import evaluate_both

    ppo = dataclasses.replace(policy.ppo, device=device, dtype=dtype)
    reward = load_reward(f"rm:{rm_folder}", device=device)
    base_eval, tuned_eval, _ = evaluate_both(policy.base, policy.tuned, reward, policy.corpus, ppo, gold_reward)

    def texts(result: dict) -> list[str]:
        return scored_texts([c["prompt"] for c in result["completions"]],
                            [c["response"] for c in result["completions"]], ppo.score_query)

    return {"prompts": [c["prompt"] for c in base_eval["completions"]], "base_texts": texts(base_eval),
            "tuned_texts": texts(tuned_eval), "base_scores": base_eval["scores"], "tuned_scores": tuned_eval["scores"]}


def train_rm_sae(states: list[torch.Tensor], out: Path, config: InspectRMConfig):
    """A BatchTopK SAE (trained until converged, as the run's other SAEs) on every row of `states`."""
    from ..sae import SAEConfig, TensorSource, train_saes

    rows = torch.cat(states)
    d = int(rows.shape[1])
    holdout = min(4096, max(1, len(rows) // 10))
    cfg = SAEConfig(arch="batchtopk", k=config.k, d_in=d, dict_size=config.dict_ratio * d, epochs=0,
                    holdout=holdout, max_tokens=config.sae_max_tokens, max_seconds=0, eval_every=50,
                    seed=config.seed, data_seed=config.seed)
    return train_saes(TensorSource(rows), [cfg], [out], quiet=True)[0]


def check_exact(parts, model, tokenizer, texts: list[str], max_length: int, rows: list[int] | None = None) -> float:
    """max over texts (`rows` of them, default all) of |features + error + constant - the RM's own score| /
    max(|score|, 1), the score computed by the RM's forward pass (HF's head on its last token), not from the states
    the split was made of."""
    rows = list(range(len(texts))) if rows is None else rows
    if not rows:
        return 0.0
    with torch.no_grad():
        from ..rm.model import scores

        own = scores(model, tokenizer, [texts[i] for i in rows], max_length).double()
    return float(((parts.total()[rows] - own).abs() / own.abs().clamp_min(1.0)).max())


def head_bias(head) -> float:
    return float(head.bias.detach()[0]) if head.bias is not None else 0.0


def feature_words(sae, states: torch.Tensor, words: list[str], features: list[int]) -> dict[int, list[str]]:
    """Per feature: the candidate words whose scan state (the word as a text's last token) it codes most."""
    if not features or states is None or not len(states):
        return {}
    best = {f: [] for f in features}
    with torch.no_grad():
        codes = torch.cat([sae.encode(states[s:s + 4096])[:, features] for s in range(0, len(states), 4096)])
    for j, f in enumerate(features):
        values, order = codes[:, j].sort(descending=True, stable=True)
        seen: list[str] = []
        for value, i in zip(values.tolist(), order.tolist()):
            if value <= 0 or len(seen) == WORDS_PER_FEATURE:
                break
            if words[i] not in seen:
                seen.append(words[i])
        best[f] = seen
    return best


def explain_top(store_path: Path, layer: int, sae, features: list[int], tokenizer, interp, examples, gold: str,
                out: Path, device: str) -> dict[int, dict]:
    """The top gain features explained and scored as the policy's are (interp.explainer, [examples]); their
    records in `out` (JSONL); feature -> record."""
    if not features:
        return {}
    from ..interp.explain import explain_features
    from ..interp.features import latent_scoring, shared_explainer
    from ..io import write_text
    from ..rewards import load_utility_table, parse_spec
    from ..store import ActivationStore

    kind, arg, _ = parse_spec(gold)
    table = load_utility_table("vader" if kind == "vader" else arg) if kind in ("vader", "table") else None
    explainer = shared_explainer(interp.explainer, interp.llm, device)
    records = explain_features(ActivationStore(store_path), layer, {"rm": sae}, {"rm": features}, tokenizer,
                               explainer, examples, model="rm", table=table, **latent_scoring(interp))
    import json

    write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    return {int(r["feature"]): r for r in records}


def feature_row(i: int, *, gain: dict, margins: dict, alignment: dict, cls: str,
                words: list[str], card: dict | None) -> dict:
    """One row of inspect_rm.json's features."""
    return {"feature": i, "gain": gain,
            "margin": {"mean": float(margins["mean"][i]), "se": float(margins["se"][i]), "q": float(margins["q"][i])},
            "gold_alignment": {"r": float(alignment["r"][i]), "p": float(alignment["p"][i]),
                               "q": float(alignment["q"][i])},
            "class": cls, "words": words,
            "explanation": card.get("explanation") if card else None, "score": card.get("score") if card else None,
            "examples": card.get("examples", [])[:3] if card else []}


def run_probe(policy: Policy, texts: list[str], groups: list[str], rewards: np.ndarray, config: InspectRMConfig,
              device: str, dtype: str) -> dict:
    """The feedback probe (`probe.probe_policy`) on a seeded subset of `probe_texts` of the texts, target the
    RM's own score of each."""
    from ..models import load_model
    from .probe import probe_policy

    keep = sorted(np.random.default_rng([config.seed, 0x9B0]).permutation(len(texts))[:config.probe_texts])
    base_model, tokenizer = load_model(policy.base, device=device, dtype=dtype)
    tuned_model, _ = load_model(policy.tuned, device=device, dtype=dtype)
    return probe_policy(base_model, tuned_model, tokenizer, policy.dictionaries, [texts[i] for i in keep],
                        [groups[i] for i in keep], np.asarray(rewards)[keep], config.probe_folds, config.seed,
                        config.max_length)


def verdict(gain: dict, scan: dict, features: list[dict], level: float) -> dict:
    """The policy's gain in plain words, each claim resting on a sign-flip test over the held-out prompts at
    `level`: "gold" (the gold-aligned features carry at least half of it, beyond their null), "flaws" (the insertion
    test named cues, and the features with no gold alignment carry at least half, beyond their null), else
    "undistinguishable", saying where the gain sits. Features with no gold alignment beyond its null are not shown
    to be flaws (a sparse feature's test has little power): without a named cue they make no flaw claim."""
    total, split = gain["total"], gain["split"]
    cues = list(scan.get("cues") or [])
    placebo = gain.get("placebo_total")
    null = f"; the placebo RM's gain on the same completions: {placebo['mean']:+.3f}" if placebo else ""
    head = f"The policy's RM gain is {total['mean']:+.3f} a completion (sign-flip p = {total['p']:.3g}{null})"

    def share(name: str, part: dict) -> str:
        shown = "n/a" if part.get("share") is None else f"{100 * part['share']:.0f}%"
        return f"{shown} on {name} (p = {part['p']:.3g})"

    not_gold = gain.get("not_gold") or {"mean": 0.0, "p": 1.0, "share": None}
    shares = "; ".join([share("gold-aligned features", split["gold"]),
                        share("features with no gold alignment beyond its null", not_gold),
                        share("anti-gold features", split["anti-gold"]), share("the SAE's error term", split["error"])])
    top = [f for f in features if f["class"] in ("cue", "other")][:3]
    where = ", ".join(f"#{f['feature']} ({', '.join(repr(w) for w in f['words'][:3]) or 'no word'})" for f in top)
    if total["p"] > level or total["mean"] <= 0:
        return {"kind": "undistinguishable", "cues": cues,
                "text": f"{head}: not beyond its null, so there is no gain to split ({shares})."}
    gold_part = split["gold"]
    if gold_part["p"] <= level and (gold_part["share"] or 0.0) >= 0.5:
        return {"kind": "gold", "cues": cues, "text": f"{head}: mostly the gold ({shares})."}
    if cues and not_gold["p"] <= level and (not_gold["share"] or 0.0) >= 0.5:
        named = ", ".join(repr(w) for w in cues[:5])
        return {"kind": "flaws", "cues": cues, "text": f"{head}: mostly RM flaws: the RM pays for {named}, which the "
                f"gold does not ({shares}; the largest such features: {where})."}
    no_cue = "; the insertion test named no cue" if not cues else ""
    return {"kind": "undistinguishable", "cues": cues,
            "text": f"{head}: neither shown to be mostly the gold nor mostly RM flaws ({shares}"
                    f"{'; the largest features without gold alignment: ' + where if where else ''}{no_cue})."}
