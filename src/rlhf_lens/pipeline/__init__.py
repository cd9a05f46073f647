"""The whole method in one resumable run (`rlhf-lens run`); the engine and its stages are in `runner`."""

from .runner import (  # noqa: F401  (the stage functions: for tests)
    STAGE_OUTPUTS,
    STAGES,
    _stage_config,
    _stage_harvest,
    _stage_placebo,
    _stage_rlhf,
    check_inputs,
    check_run_dir,
    collect_results,
    run,
)
