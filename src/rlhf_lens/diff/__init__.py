"""Model diffing on identical tokens: what did tuning change, read through the reward, checked causally.

- `config`: `DiffConfig`, the settings (torch-free, field docstrings are the `--help` text).
- `paired`: base and tuned run on the same tokens; per-block mean residual difference Δ_L,
  per-position KL and per-token log-probability change, highest-KL contexts.
- `output`: promoted and demoted tokens read through the reward's utility table, with a null of
  random token sets; the logit lens of a direction with a null of random directions.
- `steering`: base + α·Δ_L sampled on held-out prompts, reward per α against random directions of
  the same norm, with a coherence guard.
- `ranking`: causal block ranking (reward gain of steering each block by its own contribution).
- `run`: `diff_models(...)`, writing diff.json and deltas.safetensors (docs/diff.md).
- decompositions of the change (library only; settings: `decompose_config.DecomposeConfig`):
  `paired_store` (paired-store checks, `delta_store`: Δ = tuned - base as a store), `diffsae` (SAEs on Δ,
  latents ranked by share of |Δ|², seed agreement, steering by a latent), `shift` (a base SAE encodes both
  models: per-latent change of mean activation and firing rate against a document-halving null), `crosscoder`
  (BatchTopK/L1 crosscoder with Latent Scaling classes), `placebo` (shuffled utility table for a placebo tune).
- the report section lives with the report: `rlhf_lens.report.diff` (`diff_html`, `diff_markdown`).
"""

from .config import DiffConfig

__all__ = ["DiffConfig"]
