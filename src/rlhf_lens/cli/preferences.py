"""Commands of preference pairs: sample pairs from a model and label them by a gold reward (`pairs`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..preferences.config import PreferenceConfig, check_config
from ..rlhf.config import PPOConfig
from ..rules import flag
from ..sections import GoldSection
from .common import app
from .options import Options, takes

PAIR_FIELDS = ("prompts", "completions", "label_noise", "bias", "rate", "seed")
"""PreferenceConfig's fields `pairs` takes (the file and its columns are train-rm's and the run's)."""
SAMPLING_FIELDS = ("min_new_tokens", "max_new_tokens", "top_k", "top_p", "score_query", "prompt_min_chars",
                   "prompt_min_tokens", "prompt_max_tokens", "text_column", "batch_size")
"""PPOConfig's fields that say how completions are sampled (its seed is not taken: --seed is the pairs')."""


@app.command("pairs")
@takes(Options(GoldSection, names={"spec": "--gold"}, required=("spec",),
               helps={"spec": "The gold reward that labels the pairs (what the labellers meant): any reward spec, "
                              "e.g. vader, sentiment, table:FILE, classifier:MODEL."}),
       Options(PreferenceConfig, into="config", only=PAIR_FIELDS),
       Options(PPOConfig, into="sampling", only=SAMPLING_FIELDS,
               names={"score_query": "--score-query/--score-response"},
               helps={"batch_size": "Completions sampled at a time (PPO's rlhf.batch_size in a run)."}))
def pairs(
    model: str = typer.Option(..., "--model", help="Model the completions are sampled from: a save_pretrained "
                                                   "folder, a hub id or smollm2."),
    corpus: str = typer.Option(..., "--corpus", help="Prompt corpus: imdb, pang-lee, pang-lee-reviews, "
                                                     "pang-lee-sentences or a file (its train split)."),
    out: Path = typer.Option(..., "--out", help="Output folder (pairs.jsonl, pairs.json); rerun: returns at once."),
    *,
    gold: str,
    config: PreferenceConfig,
    sampling: PPOConfig,
) -> None:
    """Sample preference pairs from a model and label them by a gold reward, with label noise and a planted bias
    (TRL's format: prompt, chosen, rejected; see docs/preferences.md)."""
    from ..errors import UserError
    from ..io import read_json
    from ..preferences import make_pairs
    from ..preferences.run import check_sampling

    check_config(config, flag)
    check_sampling(sampling, flag)
    if not gold.strip():
        raise UserError("--gold is empty; give the gold reward (vader, sentiment, table:FILE, classifier:MODEL)")
    path = make_pairs(model, corpus, gold, out, config, sampling, key=flag)
    s = read_json(path.parent / "pairs.json")
    d = s["decided_by"]
    typer.echo(f"{s['n_pairs']} pairs from {s['n_prompts']} prompts x {s['config']['completions']} completions "
               f"({s['ties_dropped']} gold ties and {s['empty_dropped']} with under two non-empty completions "
               f"dropped) in {s['seconds']:.1f}s")
    typer.echo(f"decided by the gold {d['gold']}, the bias {d['bias']} ({s['planted']} planted), the noise "
               f"{d['noise']}; mean gold chosen {s['gold_mean']['chosen']:+.3f}, rejected "
               f"{s['gold_mean']['rejected']:+.3f}")
    typer.echo(f"pairs: {path}")
