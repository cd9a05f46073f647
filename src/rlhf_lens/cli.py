"""The `rlhf-lens` command line: one command per stage, plus `run` for all of them.

Commands only parse options and compose stage functions; stages never import this module.
Stage modules are imported inside each command so `--help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from . import __version__
from .config import doc
from .errors import UserError
from .models_config import TinyModelConfig

app = typer.Typer(
    help="What did RLHF teach this model, and did it learn the reward it was given?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rlhf-lens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """rlhf-lens: PPO, layer divergence, sparse autoencoders, MMCS, explanations, utility scores."""


def parse_ints(text: str, what: str = "layers") -> list[int]:
    """'3,4,5' -> [3, 4, 5], with a clear error."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--{what} must be comma-separated integers, e.g. 3,4,5 (got {text!r})") from None


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2))


# --- foundation: data and models ------------------------------------------------------------


@app.command()
def fetch(name: str = typer.Argument(..., help="What to fetch: pang-lee (movie reviews) or smollm2 (check it).")) -> None:
    """Fetch an offline source into the user cache (~/.cache/rlhf-lens, or $RLHF_LENS_CACHE)."""
    if name == "pang-lee":
        from .data import fetch_pang_lee, load_corpus

        folder = fetch_pang_lee()
        corpus = load_corpus("pang-lee")
        typer.echo(f"pang-lee in {folder}: " + ", ".join(f"{s} {len(d)}" for s, d in corpus.splits.items()))
    elif name == "smollm2":
        from .models import smollm2_path

        folder, gguf = smollm2_path()
        typer.echo(f"smollm2: {folder / gguf}")
    else:
        raise UserError(f"unknown source {name!r}; use pang-lee or smollm2")


@app.command("tiny-model")
def tiny_model(
    out: Path = typer.Option(..., "--out", help="Folder to save the model and tokenizer in (save_pretrained layout)."),
    corpus: str = typer.Option("pang-lee", help="Corpus name or file to train the BPE tokenizer (and pretrain) on."),
    layers: int = typer.Option(TinyModelConfig.layers, help=doc(TinyModelConfig, "layers")),
    width: int = typer.Option(TinyModelConfig.width, help=doc(TinyModelConfig, "width")),
    heads: int = typer.Option(TinyModelConfig.heads, help=doc(TinyModelConfig, "heads")),
    vocab_size: int = typer.Option(TinyModelConfig.vocab_size, help=doc(TinyModelConfig, "vocab_size")),
    pretrain_steps: int = typer.Option(TinyModelConfig.pretrain_steps, help=doc(TinyModelConfig, "pretrain_steps")),
    seed: int = typer.Option(TinyModelConfig.seed, help=doc(TinyModelConfig, "seed")),
) -> None:
    """Build a tiny GPT-NeoX (Pythia architecture) with a BPE tokenizer trained on a corpus."""
    from .data import load_corpus
    from .io import check_output_dir, check_writable
    from .models import build_tiny_model, save_model

    check_output_dir(out)  # a folder of the user's files, a link or `--out .` fails now, not after training
    check_writable(out.absolute().parent)
    config = TinyModelConfig(layers=layers, width=width, heads=heads, vocab_size=vocab_size,
                             pretrain_steps=pretrain_steps, seed=seed)
    model, tokenizer = build_tiny_model(load_corpus(corpus).texts("train"), config)
    save_model(model, tokenizer, out)
    typer.echo(f"tiny GPT-NeoX ({layers} blocks, width {width}) saved to {out}")


# --- rewards and RLHF (rewards.py, rlhf.py) ----------------------------------------------------
# [section: rlhf]
from .rlhf.config import PPOConfig as _PPO  # noqa: E402  (field docstrings are the --help text)

_REWARD_HELP = ("Reward: vader, table:FILE (CSV/TSV/JSON word, value), classifier:MODEL (a sequence classifier), "
                "sentiment or sentiment:CORPUS (offline logistic regression); options as ,key=value "
                "(e.g. vader,scale=5,clip=10 or classifier:MODEL,index=1). See docs/rewards.md.")


@app.command()
def rlhf(
    base: str = typer.Option(..., "--base", help="Base model: a save_pretrained folder, a hub id or smollm2."),
    reward: str = typer.Option(..., "--reward", help=_REWARD_HELP),
    corpus: str = typer.Option(..., "--corpus", help="Prompt corpus: imdb, pang-lee, pang-lee-reviews, "
                                                      "pang-lee-sentences or a file (train split: prompts; test: eval)."),
    out: Path = typer.Option(..., "--out", help="Output folder (model/, log.jsonl, ppo.png, eval.json). Rerun to resume."),
    steps: int = typer.Option(_PPO.steps, help=doc(_PPO, "steps")),
    batch_size: int = typer.Option(_PPO.batch_size, "--batch-size", help=doc(_PPO, "batch_size")),
    mini_batch_size: int = typer.Option(_PPO.mini_batch_size, "--mini-batch-size", help=doc(_PPO, "mini_batch_size")),
    ppo_epochs: int = typer.Option(_PPO.ppo_epochs, "--ppo-epochs", help=doc(_PPO, "ppo_epochs")),
    lr: float = typer.Option(_PPO.lr, help=doc(_PPO, "lr")),
    warmup_steps: int = typer.Option(_PPO.warmup_steps, "--warmup-steps", help=doc(_PPO, "warmup_steps")),
    lr_schedule: str = typer.Option(_PPO.lr_schedule, "--lr-schedule", help=doc(_PPO, "lr_schedule")),
    weight_decay: float = typer.Option(_PPO.weight_decay, "--weight-decay", help=doc(_PPO, "weight_decay")),
    max_grad_norm: float = typer.Option(_PPO.max_grad_norm, "--max-grad-norm", help=doc(_PPO, "max_grad_norm")),
    gamma: float = typer.Option(_PPO.gamma, help=doc(_PPO, "gamma")),
    lam: float = typer.Option(_PPO.lam, help=doc(_PPO, "lam")),
    cliprange: float = typer.Option(_PPO.cliprange, help=doc(_PPO, "cliprange")),
    cliprange_value: float = typer.Option(_PPO.cliprange_value, "--cliprange-value", help=doc(_PPO, "cliprange_value")),
    vf_coef: float = typer.Option(_PPO.vf_coef, "--vf-coef", help=doc(_PPO, "vf_coef")),
    ratio_threshold: float = typer.Option(_PPO.ratio_threshold, "--ratio-threshold", help=doc(_PPO, "ratio_threshold")),
    value_dropout: float = typer.Option(_PPO.value_dropout, "--value-dropout", help=doc(_PPO, "value_dropout")),
    value_init: str = typer.Option(_PPO.value_init, "--value-init", help=doc(_PPO, "value_init")),
    adaptive_kl: bool = typer.Option(_PPO.adaptive_kl, "--adaptive-kl/--fixed-kl", help=doc(_PPO, "adaptive_kl")),
    init_kl_coef: float = typer.Option(_PPO.init_kl_coef, "--init-kl-coef", help=doc(_PPO, "init_kl_coef")),
    kl_penalty: str = typer.Option(_PPO.kl_penalty, "--kl-penalty", help=doc(_PPO, "kl_penalty")),
    kl_target: float = typer.Option(_PPO.kl_target, "--kl-target", help=doc(_PPO, "kl_target")),
    kl_horizon: int = typer.Option(_PPO.kl_horizon, "--kl-horizon", help=doc(_PPO, "kl_horizon")),
    min_new_tokens: int = typer.Option(_PPO.min_new_tokens, "--min-new-tokens", help=doc(_PPO, "min_new_tokens")),
    max_new_tokens: int = typer.Option(_PPO.max_new_tokens, "--max-new-tokens", help=doc(_PPO, "max_new_tokens")),
    top_k: int = typer.Option(_PPO.top_k, "--top-k", help=doc(_PPO, "top_k")),
    top_p: float = typer.Option(_PPO.top_p, "--top-p", help=doc(_PPO, "top_p")),
    score_query: bool = typer.Option(_PPO.score_query, "--score-query/--score-response", help=doc(_PPO, "score_query")),
    prompt_min_chars: int = typer.Option(_PPO.prompt_min_chars, "--prompt-min-chars", help=doc(_PPO, "prompt_min_chars")),
    prompt_min_tokens: int = typer.Option(_PPO.prompt_min_tokens, "--prompt-min-tokens", help=doc(_PPO, "prompt_min_tokens")),
    prompt_max_tokens: int = typer.Option(_PPO.prompt_max_tokens, "--prompt-max-tokens", help=doc(_PPO, "prompt_max_tokens")),
    text_column: str = typer.Option(_PPO.text_column, "--text-column", help=doc(_PPO, "text_column")),
    eval_prompts: int = typer.Option(_PPO.eval_prompts, "--eval-prompts", help=doc(_PPO, "eval_prompts")),
    eval_examples: int = typer.Option(_PPO.eval_examples, "--eval-examples", help=doc(_PPO, "eval_examples")),
    checkpoint_every: int = typer.Option(_PPO.checkpoint_every, "--checkpoint-every", help=doc(_PPO, "checkpoint_every")),
    seed: int = typer.Option(_PPO.seed, help=doc(_PPO, "seed")),
    device: str = typer.Option(_PPO.device, help=doc(_PPO, "device")),
    dtype: str = typer.Option(_PPO.dtype, help=doc(_PPO, "dtype")),
) -> None:
    """Fine-tune a causal LM with PPO against a reward (TRL 0.7 semantics, see docs/rlhf.md)."""
    from .io import read_json
    from .rlhf import PPOConfig, train_ppo

    settings = dict(locals())
    config = PPOConfig(**{k: settings[k] for k in PPOConfig.__dataclass_fields__})
    model_dir = train_ppo(base, reward, corpus, out, config)
    result = read_json(out / "eval.json")
    b, t = result["base"], result["tuned"]
    typer.echo(f"mean reward on {result['n']} held-out prompts: base {b['mean']:+.3f} (se {b['se']:.3f}, "
               f"{100 * b['positive_frac']:.0f}% positive) -> tuned {t['mean']:+.3f} (se {t['se']:.3f}, "
               f"{100 * t['positive_frac']:.0f}% positive); final KL {result['final_kl']:.3g}")
    typer.echo(f"tuned model: {model_dir}")


@app.command("reward")
def reward_command(
    texts: list[str] = typer.Argument(None, help="Texts to score (or use --file)."),
    reward: str = typer.Option(..., "--reward", help=_REWARD_HELP),
    file: Path = typer.Option(None, "--file", help="Score each non-empty line of this UTF-8 file ('-': stdin)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of numbers, in input order."),
    device: str = typer.Option("cpu", help="Device for a classifier reward: cpu or cuda."),
) -> None:
    """Score texts with a reward: one number per text, in input order."""
    from .rewards import load_reward

    items = list(texts or [])
    if file is not None:
        if str(file) == "-":
            lines = sys.stdin.read().splitlines()
        elif not file.is_file():
            raise UserError(f"--file {file} does not exist; give a text file with one text per line")
        else:
            try:
                lines = file.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError:
                raise UserError(f"--file {file} is not UTF-8 text") from None
        items += [line for line in lines if line.strip()]
    if not items:
        raise UserError("no text to score; give texts as arguments or --file FILE")
    scorer = load_reward(reward, device=device)
    info = getattr(scorer, "info", {})
    if "test_accuracy" in info:
        typer.echo(f"sentiment classifier: held-out accuracy {info['test_accuracy']:.3f} on {info['n_test']} "
                   f"documents of {info['corpus']}", err=True)
    scores = scorer(items)
    if as_json:
        typer.echo(json.dumps(scores))
    else:
        for score in scores:
            typer.echo(f"{score:.6g}")


# --- divergence and harvest (divergence.py, harvest.py, store.py) -------------------------------
# [section: harvest]
from .harvest.config import HarvestConfig as _HarvestConfig  # noqa: E402  (field docstrings are the --help text)


@app.command()
def divergence(
    base: str = typer.Argument(..., help="Base model: a save_pretrained folder, a hub id or smollm2."),
    tuned: str = typer.Argument(..., help="Tuned model of the same architecture."),
    top_n: int = typer.Option(5, "--top-n", help="How many of the most divergent blocks to select (the paper: 5)."),
    as_json: bool = typer.Option(False, "--json", help='Print the top-n as JSON: [{"layer": i, "divergence": x}], descending.'),
    plot: Path = typer.Option(None, "--plot", help="Write a bar chart (PNG) of the divergence of every block."),
    detail: bool = typer.Option(False, "--detail", help="Add per-tensor divergences to each block (with --json)."),
    dtype: str = typer.Option("float32", help="Dtype both models are loaded in (the same for both)."),
    device: str = typer.Option("cpu", help="Device to load the models on: cpu or cuda."),
) -> None:
    """Rank blocks by how far tuning moved their parameters (sum of Frobenius norms of base - tuned)."""
    from .divergence import divergence_from_specs, divergence_spread, plot_divergence, top_layers

    if top_n < 1:  # checked before loading two models
        raise UserError(f"--top-n must be at least 1 (got {top_n})")
    rows = divergence_from_specs(base, tuned, dtype=dtype, device=device, detail=detail)
    chosen = top_layers(rows, top_n)
    if plot is not None:
        plot_divergence(rows, plot, top_n=top_n)
    if as_json:
        print_json(rows[:len(chosen)])
        return
    spread = divergence_spread(rows)
    for row in rows:
        mark = "*" if row["layer"] in chosen else " "
        typer.echo(f"{mark} block {row['layer']:>3}  {row['divergence']:.6g}")
    typer.echo(f"top {len(chosen)}: {','.join(map(str, chosen))}   spread: min {spread['min']:.4g}, "
               f"max {spread['max']:.4g}, std/mean {100 * spread['cv']:.2g}%")


@app.command("harvest")
def harvest_command(
    model: str = typer.Argument(..., help="Model to harvest: a save_pretrained folder, a hub id or smollm2."),
    layers: str = typer.Option(..., "--layers", help=doc(_HarvestConfig, "layers")),
    corpus: str = typer.Option(..., "--corpus", help=doc(_HarvestConfig, "corpus")),
    out: Path = typer.Option(..., "--out", help="Folder of the activation store (created; a rerun resumes it)."),
    split: str = typer.Option("test", help=doc(_HarvestConfig, "split")),
    max_docs: int = typer.Option(0, "--max-docs", help=doc(_HarvestConfig, "max_docs")),
    max_tokens: int = typer.Option(_HarvestConfig.max_tokens, "--max-tokens", help=doc(_HarvestConfig, "max_tokens")),
    batch_size: int = typer.Option(_HarvestConfig.batch_size, "--batch-size", help=doc(_HarvestConfig, "batch_size")),
    dtype: str = typer.Option(_HarvestConfig.dtype, help=doc(_HarvestConfig, "dtype")),
    shard_tokens: int = typer.Option(_HarvestConfig.shard_tokens, "--shard-tokens",
                                     help=doc(_HarvestConfig, "shard_tokens")),
    device: str = typer.Option(_HarvestConfig.device, help=doc(_HarvestConfig, "device")),
    text_column: str = typer.Option(_HarvestConfig.text_column, "--text-column",
                                    help=doc(_HarvestConfig, "text_column")),
    model_dtype: str = typer.Option(_HarvestConfig.model_dtype, "--model-dtype",
                                    help=doc(_HarvestConfig, "model_dtype")),
) -> None:
    """Collect MLP activations of chosen blocks over a corpus split into a sharded activation store."""
    from .harvest import HarvestConfig, harvest

    config = HarvestConfig(layers=parse_ints(layers), corpus=corpus, split=split, max_docs=max_docs,
                           max_tokens=max_tokens, batch_size=batch_size, dtype=dtype, shard_tokens=shard_tokens,
                           device=device, text_column=text_column, model_dtype=model_dtype)
    store = harvest(model, config, out)
    typer.echo(f"{store.n_tokens} tokens from {store.n_docs} documents, layers {','.join(map(str, store.layers))} "
               f"(d={store.d}, {store.dtype}), {len(store.manifest['shards'])} shards in {out}")

# --- sparse autoencoders and dictionaries (sae.py, dictionaries.py, synthetic.py) ---------------
# [section: sae]
from .sae.config import SAEConfig as _SAEConfig  # noqa: E402  (field docstrings are the --help text)
from .synthetic import SyntheticConfig as _SyntheticConfig  # noqa: E402


@app.command("train-sae")
def train_sae_command(
    acts: Path = typer.Argument(..., help="Activations: a safetensors file with key 'activations' [n, d], or an activation store folder (with --layer)."),
    dict_size: str = typer.Option(..., "--dict-size", help=doc(_SAEConfig, "dict_size") + " Comma-separated sizes (e.g. 512,1024) train together in one pass."),
    out: Path = typer.Option(..., "--out", help="SAE folder (cfg.json, sae_weights.safetensors, metrics.json); with several sizes or seeds, the parent of OUT/m{size}-s{seed}. A rerun resumes."),
    layer: int = typer.Option(None, "--layer", help="Layer to read from an activation store folder."),
    arch: str = typer.Option(_SAEConfig.arch, "--arch", help=doc(_SAEConfig, "arch")),
    k: int = typer.Option(None, "--k", help=doc(_SAEConfig, "k")),
    l1: float = typer.Option(_SAEConfig.l1, "--l1", help=doc(_SAEConfig, "l1")),
    target_l0: float = typer.Option(None, "--target-l0", help=doc(_SAEConfig, "target_l0")),
    lr: float = typer.Option(_SAEConfig.lr, "--lr", help=doc(_SAEConfig, "lr")),
    epochs: int = typer.Option(_SAEConfig.epochs, "--epochs", help=doc(_SAEConfig, "epochs")),
    holdout: int = typer.Option(_SAEConfig.holdout, "--holdout", help=doc(_SAEConfig, "holdout")),
    eval_every: int = typer.Option(_SAEConfig.eval_every, "--eval-every", help=doc(_SAEConfig, "eval_every")),
    window: int = typer.Option(_SAEConfig.window, "--window", help=doc(_SAEConfig, "window")),
    tolerance: float = typer.Option(_SAEConfig.tolerance, "--tolerance", help=doc(_SAEConfig, "tolerance")),
    max_tokens: int = typer.Option(_SAEConfig.max_tokens, "--max-tokens", help=doc(_SAEConfig, "max_tokens")),
    max_seconds: float = typer.Option(_SAEConfig.max_seconds, "--max-seconds", help=doc(_SAEConfig, "max_seconds")),
    dead_steps: int = typer.Option(_SAEConfig.dead_steps, "--dead-steps", help=doc(_SAEConfig, "dead_steps")),
    b_dec_init: str = typer.Option(_SAEConfig.b_dec_init, "--b-dec-init", help=doc(_SAEConfig, "b_dec_init")),
    lr_warmup: int = typer.Option(_SAEConfig.lr_warmup, "--lr-warmup", help=doc(_SAEConfig, "lr_warmup")),
    l1_warmup: int = typer.Option(_SAEConfig.l1_warmup, "--l1-warmup", help=doc(_SAEConfig, "l1_warmup")),
    lr_decay: int = typer.Option(_SAEConfig.lr_decay, "--lr-decay", help=doc(_SAEConfig, "lr_decay")),
    batch_size: int = typer.Option(_SAEConfig.batch_size, "--batch-size", help=doc(_SAEConfig, "batch_size")),
    seed: str = typer.Option("0", "--seed", help=doc(_SAEConfig, "seed") + " Comma-separated seeds train together."),
    data_seed: int = typer.Option(_SAEConfig.data_seed, "--data-seed", help=doc(_SAEConfig, "data_seed")),
    device: str = typer.Option(_SAEConfig.device, "--device", help=doc(_SAEConfig, "device")),
    dtype: str = typer.Option(_SAEConfig.dtype, "--dtype", help=doc(_SAEConfig, "dtype")),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics of each SAE as JSON."),
) -> None:
    """Train sparse autoencoders (default: the paper's tied ReLU SAE) on stored activations."""
    from .sae import SAEConfig, open_source, train_saes

    sizes, seeds = parse_ints(dict_size, "dict-size"), parse_ints(seed, "seed")
    if not sizes or not seeds:
        raise UserError("--dict-size and --seed need at least one integer each")
    if any(size < 1 for size in sizes):
        raise UserError(f"--dict-size must be >= 1 (got {dict_size})")
    source = open_source(acts, layer)
    configs = [SAEConfig(d_in=source.d, dict_size=size, arch=arch, k=k, l1=l1, target_l0=target_l0, lr=lr,
                         epochs=epochs, holdout=holdout, eval_every=eval_every, window=window, tolerance=tolerance,
                         max_tokens=max_tokens, max_seconds=max_seconds, dead_steps=dead_steps, b_dec_init=b_dec_init,
                         lr_warmup=lr_warmup, l1_warmup=l1_warmup, lr_decay=lr_decay, batch_size=batch_size, seed=s, data_seed=data_seed,
                         device=device, dtype=dtype)
               for size in sizes for s in seeds]
    single = len(configs) == 1
    out_dirs = [out] if single else [out / f"m{c.dict_size}-s{c.seed}" for c in configs]
    saes = train_saes(source, configs, out_dirs, metadata={"source": str(acts), "layer": layer})
    rows = [{"sae": str(path), **sae.metrics} for path, sae in zip(out_dirs, saes)]
    if as_json:
        print_json(rows if not single else rows[0])
        return
    for row in rows:
        m = row
        typer.echo(f"{m['sae']}: mse {m['mse']:.4g}  fvu {m['fvu']:.3f}  L0 {m['mean_l0']:.1f}  dead {100 * m['dead_fraction']:.0f}%"
                   + (f"  l1 {m['l1']:.3g}" if m.get("l1") is not None else "")
                   + (f"  {m['tokens_per_s']:.0f} tokens/s" if m.get("tokens_per_s") else "")
                   + f"  {m['steps']} steps, stopped: {m['stop_reason']}"
                   + ("" if m.get("converged") else " (not converged)"))


@app.command("mmcs")
def mmcs_command(
    sae_a: Path = typer.Argument(..., help="SAE folder whose features are scored (paper: the small dictionary; across models: the tuned one)."),
    sae_b: Path = typer.Argument(..., help="SAE folder searched for each feature's best match (the large dictionary, or the base model's)."),
    top_k: int = typer.Option(10, "--top-k", help="How many features of SAE_A with the highest max cosine to list (the paper: 10)."),
    as_json: bool = typer.Option(False, "--json", help='Print {"mmcs": x, "top_features": [{"feature": i, "max_cosine": c, "match": j}, ...]}.'),
    hungarian: bool = typer.Option(False, "--hungarian", help="Add a one-to-one (Hungarian) matching of the two dictionaries."),
    new_below: float = typer.Option(None, "--new-below", help="List features of SAE_A whose max cosine is below this (no close counterpart in SAE_B), e.g. 0.7."),
) -> None:
    """Mean max cosine similarity of SAE_A's features against SAE_B, and the best-matched features."""
    from .dictionaries import compare

    result = compare(sae_a, sae_b, top_k=top_k, hungarian=hungarian, new_below=new_below)
    if as_json:
        print_json(result)
        return
    typer.echo(f"MMCS {result['mmcs']:.4f}  ({result['size_a']} features of {sae_a} vs {result['size_b']} of {sae_b}, d={result['d']})")
    for row in result["top_features"]:
        typer.echo(f"  feature {row['feature']:>6}  max cosine {row['max_cosine']:.4f}  match {row['match']}")
    if hungarian:
        typer.echo(f"one-to-one matching: mean cosine {result['hungarian']['mean_cosine']:.4f} over {len(result['hungarian']['pairs'])} pairs")
    if new_below is not None:
        new = result["new_features"]
        typer.echo(f"{len(new)} features of {sae_a} with max cosine < {new_below:g}"
                   + (": " + ", ".join(str(r["feature"]) for r in new[:50]) + (" ..." if len(new) > 50 else "") if new else ""))


@app.command("synthetic")
def synthetic_command(
    out: Path = typer.Option(..., "--out", help="safetensors file to write: activations [n, d] and ground_truth [F, d]."),
    d: int = typer.Option(_SyntheticConfig.d, "--d", help=doc(_SyntheticConfig, "d")),
    features: int = typer.Option(_SyntheticConfig.features, "--features", help=doc(_SyntheticConfig, "features")),
    sparsity: float = typer.Option(_SyntheticConfig.sparsity, "--sparsity", help=doc(_SyntheticConfig, "sparsity")),
    n: int = typer.Option(_SyntheticConfig.n, "--n", help=doc(_SyntheticConfig, "n")),
    seed: int = typer.Option(_SyntheticConfig.seed, "--seed", help=doc(_SyntheticConfig, "seed")),
) -> None:
    """Write activations made from known sparse feature directions in superposition (a ground-truth check for SAEs)."""
    from .synthetic import SyntheticConfig, write_synthetic

    cfg = SyntheticConfig(d=d, features=features, sparsity=sparsity, n=n, seed=seed)
    write_synthetic(cfg, out)
    typer.echo(f"{n} rows of width {d} from {features} features (true mean L0 {features * sparsity:.2f}) in {out}")


@app.command("recovery")
def recovery_command(
    sae_dir: Path = typer.Argument(..., help="SAE folder (the small dictionary when --with is given)."),
    ground_truth: Path = typer.Argument(..., help="File written by `rlhf-lens synthetic` (key ground_truth [F, d])."),
    with_: Path = typer.Option(None, "--with", help="Second SAE folder (the large dictionary): also report how many top-MMCS features are true directions."),
    threshold: float = typer.Option(0.9, "--threshold", help="Cosine at which a true direction counts as recovered."),
    top_k: int = typer.Option(10, "--top-k", help="Top-MMCS features to check (with --with)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
) -> None:
    """How many known feature directions an SAE recovers, and how real its top-MMCS features are."""
    from .synthetic import recovery

    report = recovery(sae_dir, ground_truth, pair=with_, threshold=threshold, top_k=top_k)
    if as_json:
        print_json(report)
        return
    for key in ("dictionary", "pair"):
        if key in report:
            r = report[key]
            typer.echo(f"{r['sae']}: recovers {r['recovered']}/{report['ground_truth_features']} true directions "
                       f"(cos >= {threshold:g}), mean best cosine {r['gt_mmcs']:.3f}")
    if "top_features" in report:
        real = sum(row["real"] for row in report["top_features"])
        typer.echo(f"MMCS {report['mmcs']:.4f}; top-{len(report['top_features'])} features: {real} are true directions")


# --- explanations and utility scores (interp/) ------------------------------------------------
# [section: interp]
from .interp.config import ExampleConfig as _ExampleConfig  # noqa: E402  (field docstrings are the --help text)
from .interp.llm import LLMConfig as _LLMConfig  # noqa: E402


@app.command()
def explain(
    sae_dir: Path = typer.Argument(..., help="SAE folder (cfg.json + sae_weights.safetensors) whose features to explain."),
    model: str = typer.Option(..., "--model", help="Model the SAE was trained on: a save_pretrained folder, a hub id or smollm2."),
    layer: int = typer.Option(..., "--layer", help="Block whose MLP output the SAE encodes."),
    out: Path = typer.Option(..., "--out", help="Feature records (JSON list, docs/interp.md)."),
    corpus: str = typer.Option(None, "--corpus", help="Corpus to run the model over (harvested into the user cache once)."),
    acts: Path = typer.Option(None, "--acts", help="Reuse this activation store (from `rlhf-lens harvest`) instead of --corpus."),
    split: str = typer.Option("test", help="Corpus split (with --corpus)."),
    max_docs: int = typer.Option(None, "--max-docs", help="A seeded random subset of N documents of the split (with --corpus; default all)."),
    features: str = typer.Option(None, "--features", help="Feature indices to explain, e.g. 3,17,40."),
    top_k: int = typer.Option(None, "--top-k", help="Explain the SAE's top-k features by max cosine against --mmcs-with."),
    mmcs_with: Path = typer.Option(None, "--mmcs-with", help="The larger SAE of the same model and layer (with --top-k)."),
    explainer: str = typer.Option("offline", help="offline (no LLM), openai (OpenAI-compatible API) or hf:MODEL (local LM)."),
    llm_model: str = typer.Option(_LLMConfig.model, "--llm-model", help=doc(_LLMConfig, "model")),
    base_url: str = typer.Option(_LLMConfig.base_url, "--base-url", help=doc(_LLMConfig, "base_url")),
    api_key_env: str = typer.Option(_LLMConfig.api_key_env, "--api-key-env", help=doc(_LLMConfig, "api_key_env")),
    concurrency: int = typer.Option(_LLMConfig.concurrency, help=doc(_LLMConfig, "concurrency")),
    timeout: float = typer.Option(_LLMConfig.timeout, help=doc(_LLMConfig, "timeout")),
    retries: int = typer.Option(_LLMConfig.retries, help=doc(_LLMConfig, "retries")),
    n_top: int = typer.Option(_ExampleConfig.n_top, "--n-top", help=doc(_ExampleConfig, "n_top")),
    n_holdout: int = typer.Option(_ExampleConfig.n_holdout, "--n-holdout", help=doc(_ExampleConfig, "n_holdout")),
    n_random: int = typer.Option(_ExampleConfig.n_random, "--n-random", help=doc(_ExampleConfig, "n_random")),
    max_tokens: int = typer.Option(_ExampleConfig.max_tokens, "--max-tokens", help=doc(_ExampleConfig, "max_tokens")),
    seed: int = typer.Option(_ExampleConfig.seed, help=doc(_ExampleConfig, "seed")),
    table: str = typer.Option("vader", help="Utility table for the utility fields: vader or a CSV/TSV/JSON file."),
    aggregate: str = typer.Option("mean", help="Per-explanation aggregate of table values: mean (the authors') or sum."),
    label: str = typer.Option(None, help="Model label written into the records (default: the model folder's name)."),
    device: str = typer.Option("cpu", help="Device for the model and SAE: cpu or cuda."),
) -> None:
    """Explain SAE features from their top-activating texts, score each explanation by simulation."""
    from .interp import ExampleConfig, LLMConfig, get_explainer
    from .interp.explain import explain_sae
    from .interp.utility import AGGREGATES
    from .io import write_json
    from .rewards import load_utility_table

    if aggregate not in AGGREGATES:
        raise UserError(f"unknown --aggregate {aggregate!r}; use mean or sum")
    llm = LLMConfig(model=llm_model, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                    timeout=timeout, retries=retries)
    chosen_explainer = get_explainer(explainer, llm, device=device)
    utility_table = load_utility_table(table)
    config = ExampleConfig(n_top=n_top, n_holdout=n_holdout, n_random=n_random, max_tokens=max_tokens, seed=seed)
    records = explain_sae(
        sae_dir, model, layer, chosen_explainer, features=parse_ints(features, "features") if features else None,
        top_k=top_k, mmcs_with=mmcs_with, corpus=corpus, acts=acts, split=split, max_docs=max_docs, config=config,
        label=label, table=utility_table, aggregate=aggregate, device=device)
    write_json(out, records)
    for r in records:
        typer.echo(f"feature {r['feature']:>5}  score {r['score']:+.2f}  utility {r['utility']:.2f}  {r['explanation']}")
    mean = sum(r["score"] for r in records) / len(records)
    typer.echo(f"{len(records)} features explained ({chosen_explainer.name}), mean score {mean:+.3f} -> {out}")


@app.command("utility-score")
def utility_score(
    features_base: Path = typer.Argument(..., help="Feature records of the base model (from `rlhf-lens explain`)."),
    features_tuned: Path = typer.Argument(..., help="Feature records of the tuned model."),
    table: str = typer.Option("vader", help="Utility table: vader or a CSV/TSV/JSON word -> value file."),
    aggregate: str = typer.Option("mean", help="Per-explanation aggregate of table values: mean (the authors' notebook) or sum."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
    out: Path = typer.Option(None, "--out", help="Also write the full result as JSON to this file."),
) -> None:
    """Utility of the explained features, base vs tuned, per block and in total (paper Table 3)."""
    from .interp.utility import AGGREGATES, format_table, load_feature_records, utility_scores
    from .io import write_json
    from .rewards import load_utility_table

    if aggregate not in AGGREGATES:
        raise UserError(f"unknown --aggregate {aggregate!r}; use mean or sum")
    records = {"base": load_feature_records(features_base), "tuned": load_feature_records(features_tuned)}
    result = utility_scores(records, load_utility_table(table), aggregate)
    result["table"] = table
    if out is not None:
        write_json(out, result)
    if as_json:
        print_json(result)
    else:
        typer.echo(format_table(result))

# --- the whole pipeline (pipeline.py, report.py) ------------------------------------------------
# [section: pipeline]


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(..., help="Run folder holding results.json (the --out of `rlhf-lens run`)."),
) -> None:
    """Render RUN_DIR/results.json into a self-contained report.html and a summary.md."""
    from .report import write_report

    html_path, md_path = write_report(run_dir)
    typer.echo(f"report: {html_path}\nsummary: {md_path}")


@app.command()
def presets() -> None:
    """List the presets `run --preset` takes (TOML files inside the package)."""
    from .config import preset_description, preset_names

    for name in preset_names():
        typer.echo(f"{name:24s} {preset_description(name)}")


@app.command()
def run(
    out: Path = typer.Option(None, "--out", help="Run folder: config, artifacts, report. Rerun to resume."),
    preset: str = typer.Option(None, "--preset", help="A preset name (see `rlhf-lens presets`)."),
    config: Path = typer.Option(None, "--config", help="A TOML config file (sections as in the presets)."),
    set_: list[str] = typer.Option([], "--set", help="Override one setting: section.key=value (repeatable; "
                                   "--keys lists them)."),
    show_config: bool = typer.Option(False, "--show-config", help="Print the resolved config and exit."),
    keys: bool = typer.Option(False, "--keys", help="List every section.key with its default and meaning, and exit."),
    executor: str = typer.Option("local", "--executor", help="Where the harvest, SAE and features jobs run: local "
                                 "(in this process, one after another) or ray (Ray tasks; needs "
                                 "pip install 'rlhf-lens\\[ray]'). Results are the same; see docs/scale.md."),
    ray_address: str = typer.Option(None, "--ray-address", help="With --executor ray: join the cluster at HOST:PORT "
                                    "(or 'auto') instead of starting a local one for this run."),
) -> None:
    """Run the whole method: PPO, divergence, harvest, SAEs, MMCS, explanations, scores, report."""
    from .config import config_keys, config_toml, load_config
    from .executors import check_executor
    from .pipeline import run as run_pipeline

    check_executor(executor)
    if ray_address and executor != "ray":
        raise UserError("--ray-address needs --executor ray")
    if keys:
        for key, default, text in config_keys():
            typer.echo(f"{key} = {default}\n    {text}")
        return
    resolved = load_config(preset, config, set_)
    if show_config:
        typer.echo(config_toml(resolved))
        return
    if out is None:
        raise UserError("give the run folder with --out DIR")
    try:
        report = run_pipeline(resolved, out, executor=executor, ray_address=ray_address)
    except KeyboardInterrupt:
        # Typer turns KeyboardInterrupt into a silent exit; say how to go on.
        typer.echo(f"interrupted: rerun the same command to resume the run in {out}", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"report: {report}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 2, without a traceback.

    An OSError that escapes a command (a full disk, a read-only folder, a missing permission)
    or a file that is not UTF-8 is also one line naming the path (exit 1); other exceptions
    are bugs and keep their traceback.
    """
    try:
        app(args=argv, prog_name="rlhf-lens")
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume", err=True)
        sys.exit(130)
    except OSError as e:
        typer.echo(f"error: {_os_error_line(e)}", err=True)
        sys.exit(1)
    except UnicodeDecodeError as e:
        typer.echo(f"error: a file is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8", err=True)
        sys.exit(1)


def _os_error_line(e: OSError) -> str:
    """`[Errno 28] No space left on device: 'x'` -> `x: no space left on device (ENOSPC)`, on one line."""
    import errno as errno_names

    reason = (e.strerror or str(e) or type(e).__name__).strip().splitlines()[0]
    name = errno_names.errorcode.get(e.errno) if e.errno is not None else None
    reason = f"{reason[:1].lower()}{reason[1:]}" + (f" ({name})" if name else "")
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


# --- model diffing on the same tokens (rlhf_lens.diff) -------------------------------------------
# [section: diff]
from .diff.config import DiffConfig as _Diff  # noqa: E402  (torch-free; field docstrings are the --help text)


def _parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--{what} must be comma-separated numbers, e.g. 0,1,2,4 (got {text!r})") from None


@app.command("diff")
def diff_command(
    base: str = typer.Argument(..., help="Base model: a save_pretrained folder, a hub id or smollm2."),
    tuned: str = typer.Argument(..., help="Tuned model of the same architecture and tokenizer."),
    corpus: str = typer.Option(..., "--corpus", help="Corpus name or file the models are compared on."),
    reward: str = typer.Option(..., "--reward", help=_REWARD_HELP),
    out: Path = typer.Option(..., "--out", help="Folder for diff.json and deltas.safetensors (docs/diff.md)."),
    layers: str = typer.Option("", "--layers", help="Blocks to analyse (steering curve, logit lens), e.g. 1,2 "
                                                    "(default: the last block)."),
    split: str = typer.Option(_Diff.split, help=doc(_Diff, "split")),
    max_docs: int = typer.Option(_Diff.max_docs, "--max-docs", help=doc(_Diff, "max_docs")),
    max_tokens: int = typer.Option(_Diff.max_tokens, "--max-tokens", help=doc(_Diff, "max_tokens")),
    batch_size: int = typer.Option(_Diff.batch_size, "--batch-size", help=doc(_Diff, "batch_size")),
    text_column: str = typer.Option(_Diff.text_column, "--text-column", help=doc(_Diff, "text_column")),
    top_words: int = typer.Option(_Diff.top_words, "--top-words", help=doc(_Diff, "top_words")),
    whole_words: bool = typer.Option(_Diff.whole_words, "--whole-words/--any-tokens", help=doc(_Diff, "whole_words")),
    rank_by: str = typer.Option(_Diff.rank_by, "--rank-by", help=doc(_Diff, "rank_by")),
    min_change: float = typer.Option(_Diff.min_change, "--min-change", help=doc(_Diff, "min_change")),
    null_sets: int = typer.Option(_Diff.null_sets, "--null-sets", help=doc(_Diff, "null_sets")),
    verdict_z: float = typer.Option(_Diff.verdict_z, "--verdict-z", help=doc(_Diff, "verdict_z")),
    table: str = typer.Option(None, "--table", help=doc(_Diff, "table")),
    word_template: str = typer.Option(_Diff.word_template, "--word-template", help=doc(_Diff, "word_template")),
    word_pool: int = typer.Option(_Diff.word_pool, "--word-pool", help=doc(_Diff, "word_pool")),
    contexts: int = typer.Option(_Diff.contexts, "--contexts", help=doc(_Diff, "contexts")),
    context_tokens: int = typer.Option(_Diff.context_tokens, "--context-tokens", help=doc(_Diff, "context_tokens")),
    prompts: int = typer.Option(_Diff.prompts, "--prompts", help=doc(_Diff, "prompts")),
    new_tokens: int = typer.Option(_Diff.new_tokens, "--new-tokens", help=doc(_Diff, "new_tokens")),
    alphas: str = typer.Option("0,1,2,4,8", "--alphas", help=doc(_Diff, "alphas") + " Comma-separated."),
    random_directions: int = typer.Option(_Diff.random_directions, "--random-directions",
                                          help=doc(_Diff, "random_directions")),
    coherence_kl: float = typer.Option(_Diff.coherence_kl, "--coherence-kl", help=doc(_Diff, "coherence_kl")),
    rank_layers: str = typer.Option(None, "--rank-layers", help=doc(_Diff, "rank_layers") + " Comma-separated."),
    rank_spread: int = typer.Option(_Diff.rank_spread, "--rank-spread", help=doc(_Diff, "rank_spread")),
    rank_alpha: float = typer.Option(_Diff.rank_alpha, "--rank-alpha", help=doc(_Diff, "rank_alpha")),
    rank_random: int = typer.Option(_Diff.rank_random, "--rank-random", help=doc(_Diff, "rank_random")),
    save_activations: bool = typer.Option(_Diff.save_activations, "--save-activations/--no-save-activations",
                                          help=doc(_Diff, "save_activations")),
    seed: int = typer.Option(_Diff.seed, help=doc(_Diff, "seed")),
    device: str = typer.Option("cpu", help="Device for both models: cpu or cuda."),
    dtype: str = typer.Option("float32", help="Dtype both models are loaded in (the same for both)."),
) -> None:
    """Compare base and tuned on the same tokens: what tuning promotes, read through the reward, checked by steering."""
    from .diff.config import DiffConfig, check_config
    from .diff.run import DIFF_JSON, diff_models

    settings = dict(locals())
    settings["alphas"] = _parse_floats(alphas, "alphas")
    settings["rank_layers"] = parse_ints(rank_layers, "rank-layers") if rank_layers else None
    config = DiffConfig(**{k: settings[k] for k in DiffConfig.__dataclass_fields__})
    check_config(config)
    chosen = parse_ints(layers) if layers.strip() else None
    result = diff_models(base, tuned, corpus, reward, chosen, out, config, device=device, dtype=dtype)
    for name, verdict in result["verdicts"].items():
        typer.echo(f"{name}: {verdict}")
    words = ", ".join(t["word"] for t in result["output"]["promoted"][:10]) or "none"
    typer.echo(f"promoted: {words}")
    typer.echo(f"written: {Path(out) / DIFF_JSON} ({result['seconds']['total']:.1f} s)")


# --- serving rewards to other trainers (serve.py) ----------------------------------------------
# [section: serve]


@app.command("serve-reward")
def serve_reward(
    reward: str = typer.Option(..., "--reward", help=_REWARD_HELP),
    port: int = typer.Option(5000, "--port", help="Port to listen on (0: any free port; the ready line names it)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. 127.0.0.1: this machine only; "
                             "0.0.0.0 exposes an unauthenticated server to the network."),
    batch_size: int = typer.Option(64, "--batch-size", help="Score a request's texts in batches of this many."),
    max_texts: int = typer.Option(8192, "--max-texts", help="Most texts per request (413 beyond)."),
    max_body_bytes: int = typer.Option(16 * 1024 * 1024, "--max-body-bytes", help="Largest request body (413 beyond)."),
    device: str = typer.Option("cpu", help="Device for a classifier reward: cpu or cuda."),
) -> None:
    """Serve a reward over HTTP for other trainers (OpenRLHF's POST /get_reward; GET /health). See docs/scale.md."""
    from .serve import ServeConfig, serve

    config = ServeConfig(host=host, port=port, batch_size=batch_size, max_texts=max_texts,
                         max_body_bytes=max_body_bytes)

    def ready(server) -> None:
        info = getattr(server.reward, "info", {})
        if "test_accuracy" in info:
            typer.echo(f"sentiment classifier: held-out accuracy {info['test_accuracy']:.3f}", err=True)
        # One line, flushed, so a script (or a test) can wait for it.
        print(f"serving {reward} on {server.url}", flush=True)

    serve(reward, config, device=device, ready=ready)
    typer.echo("stopped serving", err=True)
