"""How a stage hands its jobs to the run's executor (local processes or a Ray cluster, `executors.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import RunConfig

if TYPE_CHECKING:
    from ..executors import Executor

EXECUTOR = "_executor"  # state[EXECUTOR]: the run's executor (not a stage; stages read it with `executor_of`)


def executor_of(state: dict) -> Executor:
    """The run's executor (`run(executor=...)`); a stage called on its own runs its jobs in this process."""
    from ..executors import LocalExecutor

    return state.get(EXECUTOR) or LocalExecutor()


def job_resources(config: RunConfig, gpu: bool) -> dict:
    """What one job declares to the executor: a CPU, and a GPU when it runs a model on cuda."""
    return {"num_cpus": 1, "num_gpus": 1 if gpu and config.model.device.startswith("cuda") else 0}
