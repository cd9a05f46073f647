"""Opening a reward model ([W3 5/6], docs/inspect_rm.md): what it rewards word by word (`token_scan`), its score
split exactly over an SAE on the state its head reads (`states`, `decompose`), each feature's share of the chosen
-minus-rejected margin and of the policy's gain and its alignment with the gold (`features`, `gain`), the policy's
own features predicting its reward (`probe`), and one verdict (`run.inspect_reward_model`)."""

from .config import InspectRMConfig, check_config

__all__ = ["InspectRMConfig", "check_config", "inspect_reward_model"]


def __getattr__(name: str):
    if name == "inspect_reward_model":
        from .run import inspect_reward_model

        return inspect_reward_model
    raise AttributeError(f"module 'rlhf_lens.inspect_rm' has no attribute {name!r}")
