"""`decompose_models`: what tuning changed, feature by feature, per block (docs/diff.md, "Decomposing the change"):
a diff-SAE on the tuned - base MLP outputs of the same tokens (top latents by share of |Δ|², explained, scored,
steered into the base model against random directions), the shift of a base SAE's latents between the two
models, optionally a crosscoder; and the utility of the change. Writes out_dir/decompose.json."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..diff.config import DiffConfig
from ..errors import UserError
from ..interp.config import ExampleConfig, InterpConfig
from ..io import write_json
from .config import DecomposeConfig, check_decompose_config

DECOMPOSE_JSON = "decompose.json"


def decompose_models(base_model: str, base_store: str | os.PathLike, tuned_store: str | os.PathLike,
                     base_saes: dict[int, str | os.PathLike], layers: list[int], out_dir: str | os.PathLike, corpus: str,
                     reward_spec: str, config: DecomposeConfig | None = None, *, interp: InterpConfig | None = None,
                     examples: ExampleConfig | None = None, table: str = "vader", aggregate: str = "mean",
                     prompts: int = DiffConfig.prompts, new_tokens: int = DiffConfig.new_tokens, split: str = "test",
                     text_column: str = "text", sae_seed: int = 0, top_features: dict[int, list[int]] | None = None,
                     placebo_store: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
                     device: str = "cpu", dtype: str = "float32", prompt_min_chars: int | None = None,
                     diff_dir: str | os.PathLike | None = None, diff_table: str | None = None) -> dict:
    """Decompose the change from the base model to the tuned one at each of `layers`; write out_dir/decompose.json.

    The tuned model is read through its activation store alone: `base_store` and `tuned_store` hold the MLP
    outputs of both models on the same tokens (each harvested with the same corpus, split and settings).
    - `base_saes`: block -> the folder of an SAE trained on the base model's activations there; the shift is read
      through it. Recorded as given, read against `root` when given; its feature records name it `s{sae_seed}`.
    - Steering samples from `base_model` on `prompts` held-out prompts of `corpus`'s `split` (`text_column`),
      `new_tokens` each, scored by `reward_spec`.
    - Explanations come from `interp`'s explainer on `examples`, scored against the utility table `table`
      (`aggregate`).
    - `top_features`: block -> the base SAE's features the interpretation stage explained (a run's top-k by
      MMCS); the shift then counts how many of its shifted latents are among them (`among_top_mmcs`).
    - `placebo_store`: a placebo tune's store, decomposed the same way into out_dir/placebo.
    - `diff_dir`: a diff folder of these models; with it (and interp.reward_effect) every explained latent also gets
      its reward effect (`interp.reward_effect`: its decoder row steering the base model at the diff's coherent
      strength, the promoted words read through the diff's utility, `diff_table`, against its frequency-matched null).

    Returns what decompose.json holds: {"site", "blocks", "utility_of_change", "placebo"} (placebo: the same, or
    None); a block's "shift" is None where no base SAE is given for it (decompose.site = residual in a run).
    """
    from ..data import load_corpus
    from ..diff.steering import heldout_prompts
    from ..interp.features import latent_scoring, shared_explainer
    from ..models import load_model
    from ..rewards import load_reward, load_utility_table
    from ..store import ActivationStore

    dc = config or DecomposeConfig()
    check_decompose_config(dc)
    interp = interp or InterpConfig()
    examples = examples or ExampleConfig()
    if not layers:
        raise UserError("no layers given; name at least one block to decompose, e.g. --layers 1,2")
    missing = [layer for layer in layers if layer not in base_saes]
    if missing and dc.site == "mlp":
        raise UserError(f"no base SAE given for block {', '.join(map(str, missing))}; give one SAE folder per block")
    stores = {"base": ActivationStore(Path(base_store)), "tuned": ActivationStore(Path(tuned_store))}
    if placebo_store is not None:
        stores["placebo"] = ActivationStore(Path(placebo_store))
    check_site(stores, dc.site)
    explainer = shared_explainer(interp.explainer, interp.llm, device)
    utility_table = load_utility_table(table)
    reward = load_reward(reward_spec, device=device)
    base, tokenizer = load_model(base_model, device=device, dtype=dtype)
    documents = load_corpus(corpus, text_column=text_column)
    # prompts from documents the diff-SAEs did not train on: the stores' own documents are left out
    steering_prompts = heldout_prompts(documents, tokenizer, prompts, split, store_texts(documents, stores["base"], split),
                                       dc.seed, prompt_min_chars)
    out = Path(out_dir)
    reading = None
    if diff_dir is not None and interp.reward_effect:
        from ..interp.reward_effect import output_reading

        reading = output_reading(diff_dir, base, tokenizer, reward_spec, diff_table, reward=reward,
                                 prompt_min_chars=prompt_min_chars, match_kl=interp.effect_match_kl)
    loaded = _Loaded(dc, examples, explainer, utility_table, aggregate, reward, base, tokenizer, steering_prompts,
                     new_tokens, latent_scoring(interp), reading, interp.output_top)
    results = {}
    for name in [m for m in ("tuned", "placebo") if m in stores]:
        results[name] = _decompose_model(loaded, stores["base"], stores[name], name, base_saes, sae_seed, layers,
                                         out if name == "tuned" else out / name, top_features, root)
    result = {"site": dc.site, **results["tuned"], "placebo": results.get("placebo")}
    write_json(out / DECOMPOSE_JSON, result)
    return result


def check_site(stores: dict, site: str) -> None:
    """Every store holds activations of `site` (decompose.site); UserError naming the key when one does not."""
    for name, store in stores.items():
        held = store.manifest.get("site", "mlp")
        if held != site:
            raise UserError(f"decompose.site is {site} but the {name} store {store.path} holds {held} activations; "
                            f"set decompose.site = {held} or give {site} stores")


def store_texts(corpus, store, split: str) -> list[str]:
    """The texts of the documents `store` holds (as harvest and the diff draw them: its split and max_docs), when
    it holds documents of `split`; else []."""
    if store.manifest.get("split") != split:
        return []
    return corpus.texts(split, store.manifest.get("max_docs") or None)


@dataclass
class _Loaded:
    """What the decomposition of every tuned model shares, loaded once."""

    config: DecomposeConfig
    examples: ExampleConfig
    explainer: object
    table: dict
    aggregate: str
    reward: object
    base: object
    tokenizer: object
    prompts: list[list[int]]
    new_tokens: int
    scoring: dict = field(default_factory=dict)
    """How its latents' explanations are scored (`interp.features.latent_scoring`)."""
    reading: object = None
    """The reward effect's reading of the diff (`interp.reward_effect.OutputReading`), or None: not measured."""
    output_top: int = 20

    def add_reward_effects(self, records: list[dict], saes: dict, layer: int) -> None:
        """Each latent record's vocab_proj, token_change and reward_effect: its decoder row steering the base
        model (Benjamini-Hochberg over these records); nothing without a reading."""
        if self.reading is not None:
            from ..interp.reward_effect import add_reward_effects

            add_reward_effects(records, saes, self.base, self.reading, layer, self.output_top)


def _decompose_model(loaded: _Loaded, base_store, tuned_store, name: str, base_saes: dict, sae_seed: int,
                     layers: list[int], out: Path, top_features: dict[int, list[int]] | None,
                     root: str | os.PathLike | None) -> dict:
    """The measures of one tuned model (`name`: tuned, or the placebo tune) against the base, every block."""
    from ..interp.explain import explain_features
    from ..interp.features import without_scoring_examples
    from .crosscoder import crosscoder_analysis
    from .diffsae import diff_sae, steer_top_latents
    from .paired_store import delta_store

    dc, tokenizer, explainer, examples = loaded.config, loaded.tokenizer, loaded.explainer, loaded.examples
    table, aggregate = loaded.table, loaded.aggregate
    blocks = []
    for layer in layers:
        folder = out / f"layer{layer}"
        delta = delta_store(base_store, tuned_store, layer, folder / "delta")
        result, saes = diff_sae(delta, layer, dc, out_dir=folder / "diffsae")
        result["steering"] = steer_top_latents(result, saes, loaded.base, tokenizer, loaded.reward, loaded.prompts, dc,
                                               new_tokens=loaded.new_tokens)
        # Each seed's top latents explained, so the utility of the change comes with a seed spread.
        # A seed whose latents never fire (Δ constant: the decoder bias takes all of it) has nothing to explain.
        wanted = {f"s{s.cfg.seed}": [t["latent"] for t in entry["top"][:dc.explain_top]]
                  for s, entry in zip(saes, result["saes"]) if entry["top"]}
        named = {f"s{s.cfg.seed}": s for s in saes if f"s{s.cfg.seed}" in wanted}
        records = explain_features(delta, layer, named, wanted, tokenizer, explainer, examples, model="diff-sae",
                                   table=table, aggregate=aggregate, **loaded.scoring) if wanted else []
        loaded.add_reward_effects(records, named, layer)
        result["features"] = [without_scoring_examples(r) for r in records]
        block = {"layer": layer, "diff_sae": result, "shift": _shift(loaded, base_store, tuned_store, name, layer,
                                                                      base_saes.get(layer), sae_seed, top_features,
                                                                      root)}
        if dc.crosscoder:
            block["crosscoder"], _ = crosscoder_analysis(base_store, tuned_store, layer, dc,
                                                          out=folder / "crosscoder.safetensors")
        blocks.append(block)
    return {"blocks": blocks, "utility_of_change": change_utility(blocks)}


def _shift(loaded: _Loaded, base_store, tuned_store, name: str, layer: int, sae_dir, seed: int,
           top_features: dict[int, list[int]] | None, root: str | os.PathLike | None) -> dict | None:
    """The shared-dictionary shift at `layer`, its top shifted latents explained; None without a base SAE there
    (decompose.site = residual in a run: the run's base SAEs are of the MLP outputs)."""
    from ..interp.explain import explain_features
    from ..interp.features import without_scoring_examples
    from ..sae import SparseAutoencoder
    from .shift import count_among, shared_dictionary_shift

    if sae_dir is None:
        return None
    dc, tokenizer, explainer, examples = loaded.config, loaded.tokenizer, loaded.explainer, loaded.examples
    table, aggregate = loaded.table, loaded.aggregate
    sae = SparseAutoencoder.load(Path(root) / sae_dir if root is not None else Path(sae_dir))
    shift = shared_dictionary_shift(sae, base_store, tuned_store, layer, dc)
    if top_features is not None:
        shift["among_top_mmcs"] = count_among(shift, top_features.get(layer, []))
    shifted = [row["latent"] for row in shift["top"][:dc.explain_top]]
    records = explain_features(tuned_store, layer, {f"s{seed}": sae}, {f"s{seed}": shifted}, tokenizer, explainer,
                               examples, model=f"base-sae on {name}", table=table, aggregate=aggregate,
                               **loaded.scoring) if shifted else []
    loaded.add_reward_effects(records, {f"s{seed}": sae}, layer)
    shift["features"] = [without_scoring_examples(r) for r in records]
    shift["sae"] = str(sae_dir)
    return shift


def change_utility(blocks: list[dict]) -> dict:
    """The paper's utility score applied to the explanations of the top diff-SAE latents: per diff-SAE seed, the sum
    over blocks and explained latents of each explanation's utility; mean and spread over seeds."""
    from ..interp.utility import mean_std

    per_seed: dict[str, float] = {}
    for block in blocks:
        for record in block["diff_sae"]["features"]:
            per_seed[record["sae"]] = per_seed.get(record["sae"], 0.0) + float(record.get("utility") or 0.0)
    return {**mean_std(list(per_seed.values())), "seeds": list(per_seed)}


def add_signed_utility(result: dict, table_spec: str, aggregate: str = "mean") -> dict:
    """Add `utility_of_change.signed` to a decomposition (`decompose_models`' result, in place): the same sum over
    blocks and explained top diff-SAE latents per seed, of each explanation's signed utility (the mean or sum of its
    words' table values, not its magnitude), so a change that pushes words of either sign shows which way it went."""
    from ..interp.utility import mean_std, signed_explanation_utility
    from ..rewards import load_utility_table

    table = load_utility_table(table_spec)
    per_seed: dict[str, float] = {}
    for block in result["blocks"]:
        for record in block["diff_sae"]["features"]:
            value, _ = signed_explanation_utility(record.get("explanation", ""), table, aggregate)
            per_seed[record["sae"]] = per_seed.get(record["sae"], 0.0) + value
    result["utility_of_change"]["signed"] = {**mean_std(list(per_seed.values())), "seeds": list(per_seed)}
    return result


def placebo_comparison(real: float | None, placebo: list[float], level: float = 0.05) -> dict:
    """The real tune's utility of the change against the placebo tunes' (one value per placebo seed): a
    prediction-interval t test, assuming the placebo values are normal. t = (x - mean) / (s * sqrt(1 + 1/n)) follows
    t(n - 1) when x is one more draw from the placebo's distribution; p is one-sided ("beyond the placebo", above).

    Needs n >= 2 placebo seeds and a spread: with one seed, or all seeds equal, there is no test (and no claim
    either way). Returns {n, mean, std, t, df, p, level, beyond, verdict}."""
    import numpy as np

    from ..nulls import prediction_p_value

    values = np.asarray([v for v in placebo if v is not None], dtype=np.float64)
    n = int(values.size)
    out = {"n": n, "mean": float(values.mean()) if n else None, "std": float(values.std(ddof=1)) if n > 1 else None,
           "t": None, "df": None, "p": None, "level": level, "beyond": None, "test": None}
    if real is None:
        return {**out, "verdict": "no utility of the change to test (no explained diff-SAE latent)"}
    if n < 2:
        return {**out, "verdict": "one placebo: no spread to test against" if n == 1 else "no placebo tune to test against"}
    if out["std"] == 0.0:
        return {**out, "verdict": f"the {n} placebo seeds give the same value: no spread to test against"}
    t = (float(real) - out["mean"]) / (out["std"] * np.sqrt(1.0 + 1.0 / n))
    p = prediction_p_value(float(real), values, "greater")  # the same t, one-sided
    beyond = p <= level
    test = f"prediction-interval t test over {n} placebo seeds, normal assumed: t = {t:.2f}, df {n - 1}, one-sided p = {p:.3g}"
    verdict = (f"beyond the placebo tunes ({test} <= {level:g})" if beyond
               else f"not beyond the placebo tunes ({test} > {level:g}): no evidence the change carries more of the "
                    "reward than a tune against a shuffled table")
    return {**out, "t": float(t), "df": n - 1, "p": p, "beyond": bool(beyond), "test": test, "verdict": verdict}
