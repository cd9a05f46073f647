"""Model diffing on identical tokens: what did tuning change, read through the reward, checked causally.

- `config`: `DiffConfig`, the settings (torch-free, field docstrings are the `--help` text).
- `paired`: base and tuned run on the same tokens; per-block mean residual difference Δ_L,
  per-position KL and per-token log-probability change, highest-KL contexts.
- `output`: promoted and demoted tokens read through the reward's utility table, with a null of
  random token sets; the logit lens of a direction with a null of random directions.
- `steering`: base + α·Δ_L sampled on held-out prompts, reward per α against random directions of
  the same norm, with a coherence guard.
- `ranking`: causal block ranking (reward gain of the base model with one tuned block patched in, against KL-matched
  random directions).
- `run`: `diff_models(...)`, writing diff.json and deltas.safetensors (docs/diff.md).
- the placebo tune's shuffled utility table (a control) lives with the rewards: `rlhf_lens.rewards.placebo`.
- the decompositions of the change (diff-SAE, shift, crosscoder) are their own package: `rlhf_lens.decompose`.
- the report section lives with the report: `rlhf_lens.report.diff` (`diff_html`, `diff_markdown`).
"""

from .config import DiffConfig

__all__ = ["DiffConfig"]
