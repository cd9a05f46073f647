"""Commands of explanations and utility scores: explain an SAE's features and score the explanations
(`explain`), and the utility score of base against tuned (`utility-score`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UserError
from ..harvest.config import HarvestConfig
from ..interp.config import ExampleConfig, InterpConfig, LLMConfig, check_aggregate
from ..rules import flag
from ..sections import RewardSection
from .common import app, print_json
from .options import Options, parse_ints, takes

UTILITY = Options(RewardSection, only=("table", "aggregate"))
"""`--table` and `--aggregate`: how explanations are read against a utility table."""

EXPLAINER = (Options(InterpConfig, only=("explainer",)),
             Options(LLMConfig, into="llm", names={"model": "--llm-model", "max_tokens": "--llm-max-tokens",
                                                   "cache": "--llm-cache/--no-llm-cache"}))
"""`--explainer` and the LLM it may use (`--llm-model`, `--base-url`, ...): the command's `explainer` and `llm`."""


SCORING = Options(InterpConfig, only=("scorer", "scorer_model", "score_features", "null_explanations", "reward_effect",
                                     "effect_match_kl", "output_top"))
"""How the explanations are scored (`--scorer`, `--scorer-model`, ...) and whether the reward effect is read."""


@app.command()
@takes(*EXPLAINER, SCORING,
       Options(ExampleConfig, into="examples"),
       Options(HarvestConfig, only=("split",), helps={"split": "Corpus split (with --corpus)."}),
       UTILITY)
def explain(
    sae_dir: Path = typer.Argument(..., help="SAE folder (cfg.json + sae_weights.safetensors) whose features to explain."),
    model: str = typer.Option(..., "--model", help="Model the SAE was trained on: a save_pretrained folder, a hub id or smollm2."),
    layer: int = typer.Option(..., "--layer", help="Block whose MLP output the SAE encodes."),
    out: Path = typer.Option(..., "--out", help="Feature records (JSON list, docs/interp.md)."),
    corpus: str = typer.Option(None, "--corpus", help="Corpus to run the model over (harvested into the user cache once)."),
    acts: Path = typer.Option(None, "--acts", help="Reuse this activation store (from `rlhf-lens harvest`) instead of --corpus."),
    max_docs: int = typer.Option(None, "--max-docs", help="A seeded random subset of N documents of the split (with --corpus; default all)."),
    features: str = typer.Option(None, "--features", help="Feature indices to explain, e.g. 3,17,40."),
    top_k: int = typer.Option(None, "--top-k", help="Explain the SAE's top-k features by max cosine against --mmcs-with."),
    mmcs_with: Path = typer.Option(None, "--mmcs-with", help="The larger SAE of the same model and layer (with --top-k)."),
    label: str = typer.Option(None, help="Model label written into the records (default: the model folder's name)."),
    device: str = typer.Option("cpu", help="Device for the model and SAE: cpu or cuda."),
    diff: Path = typer.Option(None, "--diff", help="A diff folder of this model (`rlhf-lens diff`, or a run's diff/): "
                              "with it each feature's reward effect is read (VocabProj and TokenChange through the "
                              "diff's utility, against its frequency-matched null, at its coherent strength)."),
    *,
    explainer: str,
    llm: LLMConfig,
    scorer: list[str],
    scorer_model: str,
    score_features: int,
    null_explanations: int,
    reward_effect: bool,
    effect_match_kl: bool,
    output_top: int,
    examples: ExampleConfig,
    split: str,
    table: str,
    aggregate: str,
) -> None:
    """Explain SAE features from their top-activating texts; score each explanation (simulation, detection, fuzzing)
    against other features' explanations, and with --diff read what each feature does to the output through the
    reward."""
    from ..interp import get_explainer
    from ..interp.explain import explain_sae
    from ..interp.features import shared_yes_no
    from ..io import write_json
    from ..rewards import load_utility_table

    check_aggregate(aggregate, flag)
    examples.check(flag)
    interp = InterpConfig(explainer=explainer, llm=llm, scorer=scorer, scorer_model=scorer_model,
                          score_features=score_features, null_explanations=null_explanations,
                          reward_effect=reward_effect, effect_match_kl=effect_match_kl, output_top=output_top)
    interp.check(flag)
    if diff is not None and not (diff / "diff.json").is_file():
        raise UserError(f"--diff {diff}: no diff.json there; give a folder written by `rlhf-lens diff`")
    chosen_explainer = get_explainer(explainer, llm, device=device)
    utility_table = load_utility_table(table)
    records = explain_sae(
        sae_dir, model, layer, chosen_explainer, features=parse_ints(features, "features") if features else None,
        top_k=top_k, mmcs_with=mmcs_with, corpus=corpus, acts=acts, split=split, max_docs=max_docs, config=examples,
        label=label, table=utility_table, aggregate=aggregate, device=device, scorers=scorer,
        yes_no=shared_yes_no(interp, device), null_explanations=null_explanations, score_features=score_features)
    if diff is not None and reward_effect:
        _add_reward_effects(records, sae_dir, model, layer, diff, interp, device)
    write_json(out, records)
    for r in records:
        scored = [f"score {r['score']:+.2f}"] if r.get("score") is not None else []
        scored += [f"{s} {r[s]['auroc']:.2f}" for s in ("detection", "fuzzing")
                   if isinstance(r.get(s), dict) and r[s].get("auroc") is not None]
        if isinstance(r.get("reward_effect"), dict) and r["reward_effect"].get("effect") is not None:
            scored.append(f"reward effect {r['reward_effect']['effect']:+.2f}")
        typer.echo(f"feature {r['feature']:>5}  {'  '.join(scored)}  utility {r['utility']:.2f}  {r['explanation']}")
    typer.echo(f"{len(records)} features explained ({chosen_explainer.name}) -> {out}")


def _add_reward_effects(records: list[dict], sae_dir: Path, model: str, layer: int, diff: Path, interp: InterpConfig,
                        device: str) -> None:
    """The explain command's reward effect: the model loaded, the diff's reading, each record's decoder row."""
    from ..interp.reward_effect import add_reward_effects, output_reading
    from ..io import read_json
    from ..models import load_model
    from ..sae import SparseAutoencoder

    loaded, tokenizer = load_model(model, device=device)
    recorded = read_json(diff / "diff.json")
    reading = output_reading(diff, loaded, tokenizer, recorded["reward"], recorded["config"].get("table"),
                             match_kl=interp.effect_match_kl)
    add_reward_effects(records, {str(sae_dir): SparseAutoencoder.load(sae_dir)}, loaded, reading, layer,
                       interp.output_top)


@app.command("utility-score")
@takes(UTILITY)
def utility_score(
    features_base: Path = typer.Argument(..., help="Feature records of the base model (from `rlhf-lens explain`)."),
    features_tuned: Path = typer.Argument(..., help="Feature records of the tuned model."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
    out: Path = typer.Option(None, "--out", help="Also write the full result as JSON to this file."),
    *,
    table: str,
    aggregate: str,
) -> None:
    """Utility of the explained features, base vs tuned, per block and in total (paper Table 3)."""
    from ..interp.utility import format_table, load_feature_records, utility_scores
    from ..io import write_json
    from ..rewards import load_utility_table

    check_aggregate(aggregate, flag)
    records = {"base": load_feature_records(features_base), "tuned": load_feature_records(features_tuned)}
    result = utility_scores(records, load_utility_table(table), aggregate)
    result["table"] = table
    if out is not None:
        write_json(out, result)
    if as_json:
        print_json(result)
    else:
        typer.echo(format_table(result))
