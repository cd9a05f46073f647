"""The learned reward model's section: the preference pairs it was trained on (how many, what decided their
labels), its held-out accuracy against the labels and against the gold, and whether it learned a planted cue, each
beside its placebo RM (results.json's `reward_model`: pairs/pairs.json, rm/rm.json, rm/placebo/rm.json). Written
once as parts for the page and summary.md."""

from __future__ import annotations

from .format import _float, _num, _pct
from .tables import Heading, Para, Part, Table, not_run_html, parts_html, parts_markdown

CHANCE = 0.5
"""A pair's label by a coin flip: an RM that learned nothing."""


def _rate(value: dict | None) -> str:
    """`share [low, high] (k/n)` of a rate with its Clopper-Pearson interval ("-" for none)."""
    if not value or _float(value.get("share")) is None:
        return "-"
    low, high = (value.get("interval") or [None, None])[:2]
    return f"{_pct(value['share'])} [{_pct(low)}, {_pct(high)}] ({value.get('k')}/{value.get('n')})"


def beyond_chance(value: dict | None) -> bool | None:
    """Whether a rate's 95% Clopper-Pearson interval lies above chance (an exact test at 5%, conservative); None
    when there is no rate."""
    if not value or not value.get("interval"):
        return None
    return _float(value["interval"][0]) is not None and value["interval"][0] > CHANCE


def accuracy_sentence(rm: dict, placebo: dict | None) -> str:
    """The RM against the gold, in plain words, with chance and the placebo RM beside it."""
    gold = (rm.get("accuracy") or {}).get("gold")
    if not gold:
        return ("No gold for the held-out pairs (a pair file without gold scores): the RM's accuracy is against its "
                "labels only.")
    placebo_gold = ((placebo or {}).get("accuracy") or {}).get("gold")
    null = f"; the placebo RM (shuffled labels): {_rate(placebo_gold)}" if placebo_gold else ""
    if beyond_chance(gold):
        return f"The RM agrees with the gold on {_rate(gold)} of the held-out pairs the gold decides, beyond chance " \
               f"(50%: its 95% interval lies above){null}."
    return f"The RM does not agree with the gold beyond chance: {_rate(gold)} of the held-out pairs the gold " \
           f"decides (chance 50% lies in its 95% interval){null}."


def cue_sentence(rm: dict, placebo: dict | None) -> str | None:
    """Whether the RM learned the planted cue, in plain words; None without a planted cue."""
    cue = rm.get("cue_preference")
    if not cue:
        return None
    bias = cue.get("bias") or rm.get("bias")
    placebo_cue = (placebo or {}).get("cue_preference")
    null = f" (placebo RM: {_rate(placebo_cue)})" if placebo_cue else ""
    what = f"adding the planted cue {bias!r} to a held-out completion raises its score in {_rate(cue)}{null}"
    if beyond_chance(cue):
        return f"The RM learned the planted labeller flaw: {what}, beyond chance (50%)."
    return f"The RM did not learn the planted cue beyond chance: {what}."


def reward_model_parts(results: dict) -> list[Part]:
    section = results.get("reward_model")
    if not section:
        return []
    rm, placebo, pairs = section.get("rm") or {}, section.get("placebo"), section.get("pairs") or {}
    parts: list[Part] = [Para(accuracy_sentence(rm, placebo))]
    cue = cue_sentence(rm, placebo)
    if cue:
        parts.append(Para(cue))
    parts.append(Heading("Preference pairs"))
    if pairs.get("n_pairs") is not None:
        decided = pairs.get("decided_by") or {}
        config = pairs.get("config") or {}
        parts.append(Para(
            f"{pairs['n_pairs']} pairs from {pairs.get('n_prompts')} prompts ({config.get('completions')} completions "
            f"each, the gold's best against its worst), labelled by the gold {pairs.get('gold')!r}; "
            f"{pairs.get('ties_dropped', 0)} prompts dropped on a gold tie. Labels decided by the gold: "
            f"{decided.get('gold', 0)}, by the planted bias {config.get('bias') or '(none)'!r}: {decided.get('bias', 0)} "
            f"({pairs.get('planted', 0)} with the cue planted), flipped as label noise: {decided.get('noise', 0)}."))
    else:
        parts.append(Para(f"Pairs read from {section.get('file')} (no gold known for them)."))
    parts.append(Heading("Held-out accuracy"))
    split = rm.get("split") or {}
    rows = []
    for name, record in (("RM", rm), ("placebo RM (shuffled labels)", placebo)):
        if not record:
            continue
        accuracy = record.get("accuracy") or {}
        by = accuracy.get("by_decider") or {}
        rows.append([name, _rate(accuracy.get("labels")), _rate(accuracy.get("gold")),
                     *[_rate(by.get(d)) for d in ("gold", "bias", "noise")],
                     _rate(record.get("cue_preference"))])
    parts.append(Table(["model", "vs labels", "vs gold", "gold-decided", "bias-decided", "noise-decided",
                        "prefers the cue"], rows))
    training = rm.get("training") or {}
    config = rm.get("config") or {}
    parts.append(Para(
        f"Bradley-Terry on {config.get('train')!r} ({'the score head on the frozen backbone' if config.get('train') == 'head' else 'trained parameters: ' + str(config.get('train'))}); "
        f"split by prompt (seed {split.get('seed')}): {split.get('n_train')} training, {split.get('n_validation')} "
        f"validation (early stopping), {split.get('n_test')} held-out pairs; {training.get('epochs')} epochs "
        f"({training.get('stopped')}), {_num(_float(training.get('seconds')))} s. Intervals: 95% Clopper-Pearson; "
        "\"beyond chance\" when the interval lies above 50%. \"Prefers the cue\": the share of held-out completions "
        "whose score rises when the cue is added (or falls when it is removed).", note=True))
    return parts


def reward_model_html(results: dict) -> str:
    parts = reward_model_parts(results)
    return parts_html(parts) if parts else not_run_html("the run's reward was not a reward model it trained "
                                                        "(reward.spec = rm)")


def reward_model_markdown(results: dict) -> str | None:
    parts = reward_model_parts(results)
    return parts_markdown(parts) if parts else None
