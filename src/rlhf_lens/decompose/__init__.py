"""Decompositions of what tuning changed, feature by feature (docs/diff.md, "Decomposing the change").

- `config`: `DecomposeConfig`, the settings (torch-free: the CLI reads it for `--help`).
- `paired_store`: checks that two activation stores hold the same tokens; `delta_store` (Δ = tuned - base as a
  store), paired iteration and row samples.
- `diffsae`: SAEs trained on Δ, latents ranked by their share of |Δ|², seed agreement, steering by a latent.
- `shift`: a base SAE encodes both models on the same tokens; per-latent change of mean activation and firing
  rate, each by a document-level sign-flip test with Benjamini-Hochberg across latents.
- `crosscoder`: a crosscoder over both models with Latent Scaling classes (tuned-only, base-only, shared).
- `run`: `decompose_models(...)`, every method above per block for a tuned model (and a placebo tune) against
  the base, the explanations of their top latents and the utility of the change; writes decompose.json.

A new decomposition is one module here taking the paired stores and its own settings, plus its settings in
`config`, its call in `run` and its row in the report (`rlhf_lens.report.decompose`).
"""
