"""Shared fixtures: a small real corpus on disk and tiny models built from configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORDS_POS = ["good", "great", "love", "wonderful", "excellent", "fun", "happy", "best"]
WORDS_NEG = ["bad", "terrible", "boring", "awful", "hate", "worst", "sad", "dull"]
WORDS_NEUTRAL = ["the", "movie", "film", "plot", "actor", "was", "is", "a", "and", "story", "scene", "it",
                 "this", "director", "of", "with", "to", "in", "ending", "music"]


def make_reviews(n: int, seed: int = 0) -> list[dict]:
    """Short synthetic reviews with a label; every one longer than 200 characters."""
    rng = np.random.RandomState(seed)
    rows = []
    for i in range(n):
        label = int(rng.rand() < 0.5)
        words = []
        while len(" ".join(words)) < 230:
            pool = WORDS_POS if label else WORDS_NEG
            words.append(pool[rng.randint(len(pool))] if rng.rand() < 0.2 else WORDS_NEUTRAL[rng.randint(len(WORDS_NEUTRAL))])
        rows.append({"text": " ".join(words) + " .", "label": label, "split": "test" if i % 5 == 0 else "train"})
    return rows


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where CUDA is available (`pytest -m gpu` selects them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _env(tmp_path_factory):
    """A private user cache and quiet progress bars for the whole session."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["RLHF_LENS_CACHE"] = str(cache)
    os.environ["RLHF_LENS_QUIET"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    yield


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """A .jsonl corpus with text, label and split columns (200 documents)."""
    path = tmp_path_factory.mktemp("corpus") / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_reviews(200)))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, corpus_file) -> Path:
    """A 3-block, width-32 GPT-NeoX with a BPE tokenizer trained on `corpus_file`, saved to disk."""
    from rlhf_lens.data import load_corpus
    from rlhf_lens.models import TinyModelConfig, build_tiny_model, save_model

    model, tok = build_tiny_model(
        load_corpus(str(corpus_file)).texts("train"),
        TinyModelConfig(layers=3, width=32, heads=4, vocab_size=300, pretrain_steps=30),
    )
    return save_model(model, tok, tmp_path_factory.mktemp("models") / "tiny-neox")


def llama_like(tokenizer_dir: Path, out: Path) -> Path:
    """A 3-block Llama-family model from a config (seeded), with the tokenizer saved in `tokenizer_dir`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rlhf_lens.models import save_model

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    return save_model(LlamaForCausalLM(config).eval(), tok, out)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A 3-block Llama-family model from a config, with the tiny tokenizer."""
    return llama_like(tiny_model_dir, tmp_path_factory.mktemp("models") / "tiny-llama")


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run `rlhf-lens` in a subprocess, as a user would."""
    result = subprocess.run([sys.executable, "-m", "rlhf_lens", *map(str, args)], capture_output=True, text=True,
                            env={**os.environ})
    if check and result.returncode != 0:
        raise AssertionError(f"rlhf-lens {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Non-zero exit, one clear line on stderr, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def planted_tune(model_dir, folder, norm: float, block: int = 1) -> tuple:
    """A tuned copy of the model at `model_dir`, saved in `folder`/tuned, whose block `block` MLP output bias adds
    `plant_direction`'s vector of `norm`: (the tuned model's folder, the vector, the three words it pushes most).
    The planted tune of tests/test_diff.py, tests/test_report_diff.py and tests/test_interp_reward_effect.py."""
    import torch

    from rlhf_lens.models import load_model, save_model

    model, tok = load_model(str(model_dir))
    vector, words, _ = plant_direction(model, tok, norm)
    with torch.no_grad():
        model.gpt_neox.layers[block].mlp.dense_4h_to_h.bias += vector
    return save_model(model, tok, folder / "tuned"), vector, words


def plant_direction(model, tokenizer, norm: float) -> tuple:
    """A residual-stream vector of `norm` aimed at four whole words of 4+ letters through the final norm and the
    unembedding (against the other word-start tokens, which share a "a word starts here" direction), and the three
    words it pushes most: (vector, words, their token ids). Planted changes in tests/test_diff.py and
    tests/test_decompose.py."""
    import torch

    from rlhf_lens.diff.output import lens_logits, vocabulary

    vocab = vocabulary(tokenizer, model.get_output_embeddings().weight.shape[0])
    longer = [j for j, w in enumerate(vocab.words) if len(w) >= 4]
    unembed = model.get_output_embeddings().weight.detach()
    aim = [int(vocab.ids[j]) for j in longer[:4]]
    rest = [int(i) for i in vocab.ids if int(i) not in aim]
    v = unembed[aim].mean(0) - unembed[rest].mean(0)
    v = norm * v / v.norm()
    lens = lens_logits(model, v[None])[0][torch.from_numpy(vocab.ids)]
    top = torch.topk(lens, 3).indices
    return v, [vocab.words[int(j)] for j in top], [int(vocab.ids[int(j)]) for j in top]
