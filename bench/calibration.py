"""Calibration bench: the measured false-positive rate and power of every verdict (docs/calibration.md).

Each verdict of the tool (promoted words, steering by Δ, the logit lens, the causal ranking, the shared-dictionary
shift, diff-SAE latent steering, the utility of the change against placebo tunes) runs, through the project's
public functions and with the tool's own tests at the level 0.05, on
- null changes: tuned models whose change knows nothing of the reward (a random direction in one block's MLP
  bias, a reward-free fine-tune, Gaussian weight noise), each seeded; the false-positive rate is the share of
  them on which the verdict claims a change beyond its null, with its Clopper-Pearson interval;
- planted changes: a direction aimed at a seeded handful of VADER-positive words added at one block, of the
  same KL to base as the nulls (the demo's tune: reward +0.43 at KL ~0.38 nats per token); the power is the
  share on which the verdict says the change carries the reward.
All on a tiny GPT-NeoX pretrained on the Pang & Lee reviews (bench/calibration_cases.py); the adapters are in
bench/calibration_verdicts.py. The shared-dictionary shift's null cases are the null changes with base and tuned
rows exchanged per document at random (its test is about any change, not the reward's: see docs/calibration.md).
The placebo verdict is calibrated on its test alone (simulated utilities: `placebo_rates`).

Usage: python bench/calibration.py [--quick] [--null N] [--planted M] [--seed S] [--json FILE]
       [--shard I/N --json FILE ...; then --merge FILES]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RLHF_LENS_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import calibration_cases as cases  # noqa: E402
import calibration_verdicts as verdicts  # noqa: E402

VERDICTS = ("promoted words", "steering by Δ", "logit lens of Δ", "causal ranking", "shared-dictionary shift",
            "diff-SAE latent steering", "utility vs placebo")


def run_case(world, case, settings, sae, out: Path, prompts) -> dict[str, dict]:
    """Every model-based verdict on one case."""
    diff = verdicts.run_diff(world, case, settings, out / "diff")
    found = {"promoted words": verdicts.output_verdict(diff), "steering by Δ": verdicts.steering_verdict(diff),
             "logit lens of Δ": verdicts.lens_verdict(diff), "causal ranking": verdicts.ranking_verdict(diff)}
    acts = {k: out / "diff" / v for k, v in diff["files"]["activations"].items()}
    stores = acts if not case.null else verdicts.swapped_stores(acts["base"], acts["tuned"], settings.shift_layer,
                                                                out / "swapped", case.seed)
    found["shared-dictionary shift"] = verdicts.shift_verdict(sae, stores["base"], stores["tuned"], settings,
                                                              case.seed)
    found["diff-SAE latent steering"] = verdicts.diffsae_verdict(world, acts["base"], acts["tuned"], settings,
                                                                 case.seed, out / "decompose", prompts)
    ref = diff["reference"]
    found["_reference"] = {"gain": ref["tuned"]["gain"], "kl": ref["tuned"]["kl"]}
    return found


def placebo_rates(n: int, seed: int, n_placebo: int | None = None, n_seeds: int = 2, shift: float = 3.0) -> dict:
    """The placebo verdict on simulated utilities. Each tune's utility per diff-SAE seed = tune effect (sd 1) +
    seed noise (sd 1): seed noise alone does not say how much two tunes of the same law differ. Null: the real
    tune drawn from the placebos' law; planted: its tune effect shifted by `shift` sd. `n_placebo` placebo tunes
    (default: `verdicts.placebo_seeds_default`), `n_seeds` diff-SAE seeds each."""
    rng = np.random.default_rng([seed, 0x91A])
    n_placebo = n_placebo or verdicts.placebo_seeds_default()
    out = {"n_placebo": n_placebo, "shift": shift}
    for name, mean in (("null", 0.0), ("planted", shift)):
        claims = []
        for _ in range(n):
            real = list(mean + rng.normal() + rng.normal(size=n_seeds))
            placebos = [list(rng.normal() + rng.normal(size=n_seeds)) for _ in range(n_placebo)]
            claims.append(verdicts.placebo_verdict(real, placebos))
        out[name] = claims
    return out


def rate_line(name: str, null: list[dict], planted: list[dict]) -> tuple[str, dict]:
    from rlhf_lens.nulls import binomial_interval

    k = sum(r["claimed"] for r in null)
    lo, hi = binomial_interval(k, len(null))
    power = sum(r["positive"] for r in planted)
    fpr = k / len(null) if null else 0.0
    line = (f"{name}: false-positive rate {100 * fpr:.0f}% [{100 * lo:.0f}%, {100 * hi:.0f}%] over {len(null)} "
            f"null changes; power {100 * power / max(1, len(planted)):.0f}% over {len(planted)} planted changes")
    return line, {"false_positive_rate": fpr, "interval": [lo, hi], "n_null": len(null), "false_positives": k,
                  "power": power / max(1, len(planted)), "n_planted": len(planted), "detected": power}


def run_cases(args, plan: list[tuple[int, str, int]], started: float) -> list[dict]:
    """Every model-based verdict on the cases of `plan` ((index, kind, seed)), in one process."""
    import torch

    from rlhf_lens.data import load_corpus
    from rlhf_lens.diff.steering import heldout_prompts

    torch.set_num_threads(args.threads)
    settings = verdicts.Settings()
    records = []
    with tempfile.TemporaryDirectory(prefix="calibration-") as tmp:
        tmp = Path(tmp)
        base_dir = Path(args.keep) / f"base-seed{args.seed}" if args.keep else tmp / "base"
        world = cases.build_world(args.corpus, base_dir, seed=args.seed)
        print(f"[{time.perf_counter() - started:5.0f}s] base model ready ({len(world.positive_ids)} whole-word tokens "
              f"of VADER utility >= {cases.STRONG})", flush=True)
        sae = verdicts.train_base_sae(world, settings, tmp / "base-sae")
        prompts = heldout_prompts(load_corpus(args.corpus), world.tokenizer, settings.prompts, "test", [], args.seed)
        for i, kind, seed in plan:
            t0 = time.perf_counter()
            case = cases.make_case(world, kind, seed)
            found = run_case(world, case, settings, sae, tmp / f"case{i}", prompts)
            records.append({"index": i, "kind": kind, "seed": seed, "layer": case.layer, "kl": case.kl,
                            "scale": case.scale, "seconds": time.perf_counter() - t0, **found})
            case.model = None
            if args.log:  # a line per case as it ends: a run stopped early keeps what it measured
                with open(args.log, "a") as f:
                    f.write(json.dumps(records[-1], default=str) + "\n")
            claims = ", ".join(name for name in VERDICTS if found.get(name, {}).get("claimed"))
            print(f"[{time.perf_counter() - started:5.0f}s] case {i + 1} {kind} (seed {seed}, KL {case.kl:.2f}, "
                  f"{time.perf_counter() - t0:.0f}s): claims: {claims or 'none'}", flush=True)
    return records


def summarise(records: list[dict], placebo: dict, seconds: float) -> dict:
    """The table: one line per verdict, and the planted and null changes' size."""
    rates, lines = {}, []
    for name in VERDICTS:
        if name == "utility vs placebo":
            null, planted = placebo["null"], placebo["planted"]
        else:
            null = [r[name] for r in records if r["kind"] not in cases.PLANTED_KINDS]
            planted = [r[name] for r in records if r["kind"] in cases.PLANTED_KINDS]
        line, rates[name] = rate_line(name, null, planted)
        if name != "utility vs placebo":
            rates[name]["by_kind"] = {kind: sum(r[name]["claimed"] for r in records if r["kind"] == kind)
                                      for kind in cases.NULL_KINDS}
        lines.append(line)
    lines.append(f"utility vs placebo: simulated, {placebo['n_placebo']} placebo tune(s) of 2 diff-SAE seeds each, "
                 f"tune and seed noise of equal sd; planted: the real tune shifted by {placebo['shift']:g} sd")
    planted_ref = [r["_reference"] for r in records if r["kind"] in cases.PLANTED_KINDS]
    null_ref = [r["_reference"] for r in records if r["kind"] not in cases.PLANTED_KINDS]
    if planted_ref:
        lines.append(f"planted changes: reward gain {np.mean([r['gain'] for r in planted_ref]):+.2f} at KL "
                     f"{np.mean([r['kl'] for r in planted_ref]):.2f} nats/token on their own samples (mean; the "
                     f"demo's tune: +0.43 at 0.38)")
    if null_ref:
        lines.append(f"null changes: reward gain {np.mean([r['gain'] for r in null_ref]):+.2f} at KL "
                     f"{np.mean([r['kl'] for r in null_ref]):.2f} nats/token on their own samples (mean)")
    case_seconds = sum(r.get("seconds", 0.0) for r in records)
    lines.append(f"{len(records)} cases in {case_seconds:.0f} s of case time ({seconds:.0f} s wall) on "
                 f"{os.cpu_count()} cores")
    return {"rates": rates, "lines": lines}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 6 null and 3 planted changes")
    parser.add_argument("--null", type=int, default=42, help="null changes (the three kinds in turn)")
    parser.add_argument("--planted", type=int, default=21, help="planted changes")
    parser.add_argument("--placebo", type=int, default=400, help="simulated cases of the placebo verdict, each way")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", default="pang-lee-reviews")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--shard", default="0/1", metavar="I/N", help="run only the cases i with i %% N == I "
                        "(several processes; --merge their --json files)")
    parser.add_argument("--merge", nargs="+", metavar="FILE",
                        help="no cases: the table of these shards' --json files (or --log files: .jsonl)")
    parser.add_argument("--log", metavar="FILE", help="append each case's verdicts here (JSON lines) as it ends")
    parser.add_argument("--keep", metavar="DIR", help="keep the base model here and reuse it when built before "
                        "(for reruns; the default builds it in a temporary folder)")
    parser.add_argument("--json", metavar="FILE", help="also write every case's verdicts and the rates here")
    args = parser.parse_args(argv)
    n_null, n_planted = (6, 3) if args.quick else (args.null, args.planted)
    started = time.perf_counter()
    if args.merge:
        records, wall = [], 0.0
        for f in args.merge:
            text = Path(f).read_text()
            if f.endswith(".jsonl"):
                part = [json.loads(line) for line in text.splitlines() if line.strip()]
                wall = max(wall, sum(r.get("seconds", 0.0) for r in part))
            else:
                part = json.loads(text)["cases"]
                wall = max(wall, json.loads(text)["seconds"])
            records += part
        records.sort(key=lambda r: r["index"])
    else:
        index, count = (int(x) for x in args.shard.split("/"))
        plan = [(i, kind, seed) for i, (kind, seed) in enumerate(cases.case_plan(n_null, n_planted, args.seed))
                if i % count == index]
        records = run_cases(args, plan, started)
        wall = time.perf_counter() - started
    placebo = placebo_rates(args.placebo if not args.quick else 40, args.seed)
    table = summarise(records, placebo, wall)
    print()
    print("\n".join(table["lines"]))
    result = {**table, "seconds": wall, "cases": records, "settings": vars(verdicts.Settings()), "seed": args.seed,
              "cpu_count": os.cpu_count(), "placebo_simulated": args.placebo, "threads": args.threads}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
