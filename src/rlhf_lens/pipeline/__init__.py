"""The whole method in one resumable run (`rlhf-lens run`, docs/pipeline.md).

Stages, in this order, each recorded in `RUN_DIR/stages/<stage>.json`:

    base -> rlhf -> placebo -> divergence -> diff -> control -> harvest -> saes -> mmcs -> decompose
         -> features -> scores -> report

- `runner`: the run engine: stage order (`STAGES`), what each stage reads (`STAGE_READS`) and writes
  (`STAGE_OUTPUTS`), its settings (`stage_config`) and key (`stage_keys`), the ledger of finished stages, the
  lock, the checks before any work, and `run`.
- `stages`: one thin adapter per stage, (config, run folder, state) -> one call into that stage's package
  (`rlhf`, `diff`, `harvest`, `sae`, `dictionaries`, `decompose`, `interp`, `report`), returning its outputs.
- `results`: `collect_results`, the one writer of results.json (what the report shows).
- `records`: what the stages share: paths recorded relative to the run folder, the analysed models and blocks.

Rerunning the same command skips finished stages (whose key still matches) and resumes the unfinished one (PPO,
harvest and SAE training checkpoint themselves). A stage's key hashes its own settings and the keys of the stages
it reads, so a changed setting reruns its stage and the stages that read from it, and nothing else.

A new stage: its analysis as a public function in its own package; an adapter `stage_NAME` in `stages.py` (and
in `STAGE_FUNCTIONS`); its place in `STAGES`, its reads in `STAGE_READS`, its settings in `stage_config` and its
files in `STAGE_OUTPUTS` (`runner.py`); what the report shows of it in `collect_results`.
"""

from .results import collect_results
from .runner import (
    STAGE_OUTPUTS,
    STAGE_READS,
    STAGES,
    Ledger,
    check_inputs,
    check_run_dir,
    run,
    stage_config,
    stage_keys,
    stage_reads,
)

__all__ = ["STAGES", "STAGE_OUTPUTS", "STAGE_READS", "Ledger", "check_inputs", "check_run_dir", "collect_results",
           "run", "stage_config", "stage_keys", "stage_reads"]
