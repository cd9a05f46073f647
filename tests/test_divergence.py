import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_user_error, run_cli
from rlhf_lens.divergence import layer_divergence, plot_divergence, top_layers
from rlhf_lens.errors import UserError
from rlhf_lens.models import load_model, save_model

# Block 2 of the tuned copy: constant shifts of known size on two of its tensors.
SHIFTS = {"gpt_neox.layers.2.mlp.dense_4h_to_h.weight": 1e-3, "gpt_neox.layers.2.attention.dense.bias": 0.5}


@pytest.fixture(scope="module")
def tuned_dir(tmp_path_factory, tiny_model_dir):
    """The tiny GPT-NeoX with only block 2 perturbed, saved to disk."""
    model, tok = load_model(str(tiny_model_dir))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, shift in SHIFTS.items():
            params[name].add_(shift)
    return save_model(model, tok, tmp_path_factory.mktemp("tuned") / "tuned")


def _independent(base_dir, tuned_dir, layer: int) -> float:
    """Sum of Frobenius norms over block `layer`, straight from the saved weight files."""
    base = load_file(str(base_dir / "model.safetensors"))
    tuned = load_file(str(tuned_dir / "model.safetensors"))
    prefix = f"gpt_neox.layers.{layer}."
    return sum(math.sqrt(float(((base[k].double() - tuned[k].double()) ** 2).sum())) for k in base
               if k.startswith(prefix) and k in tuned)


def test_perturbed_block_ranks_first(tiny_model_dir, tuned_dir):
    base, _ = load_model(str(tiny_model_dir), tokenizer=False)
    tuned, _ = load_model(str(tuned_dir), tokenizer=False)
    rows = layer_divergence(base, tuned)
    assert [r["layer"] for r in rows][0] == 2 and top_layers(rows, 1) == [2]
    assert rows[0]["divergence"] == pytest.approx(_independent(tiny_model_dir, tuned_dir, 2), rel=1e-6)
    # The known amount: a constant shift c on a tensor of n elements has Frobenius norm |c| sqrt(n).
    params = dict(base.named_parameters())
    known = sum(abs(c) * math.sqrt(params[name].numel()) for name, c in SHIFTS.items())
    assert rows[0]["divergence"] == pytest.approx(known, rel=1e-4)
    assert all(r["divergence"] == 0.0 for r in rows[1:])


def test_detail_lists_block_tensors(tiny_model_dir, tuned_dir):
    base, _ = load_model(str(tiny_model_dir), tokenizer=False)
    tuned, _ = load_model(str(tuned_dir), tokenizer=False)
    rows = layer_divergence(base, tuned, detail=True)
    top = rows[0]
    names = {t["name"] for t in top["tensors"]}
    assert {"mlp.dense_4h_to_h.weight", "attention.dense.bias", "input_layernorm.weight"} <= names
    assert math.fsum(t["divergence"] for t in top["tensors"]) == pytest.approx(top["divergence"])
    moved = {t["name"] for t in top["tensors"] if t["divergence"] > 0}
    assert moved == {name.removeprefix("gpt_neox.layers.2.") for name in SHIFTS}
    assert not any("embed" in t["name"] or "final" in t["name"] for r in rows for t in r["tensors"])


def test_cli_json_and_plot(tiny_model_dir, tuned_dir, tmp_path):
    png = tmp_path / "div.png"
    result = run_cli("divergence", tiny_model_dir, tuned_dir, "--json", "--top-n", "2", "--plot", png, check=True)
    rows = json.loads(result.stdout)
    assert len(rows) == 2 and rows[0]["layer"] == 2 and set(rows[0]) == {"layer", "divergence"}
    assert rows[0]["divergence"] >= rows[1]["divergence"]
    assert rows[0]["divergence"] == pytest.approx(_independent(tiny_model_dir, tuned_dir, 2), rel=1e-6)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = run_cli("divergence", tiny_model_dir, tuned_dir, "--top-n", "1", check=True).stdout
    assert "top 1: 2" in text and "spread" in text


def test_llama_and_gpt2(tiny_llama_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    llama, _ = load_model(str(tiny_llama_dir), tokenizer=False)
    llama_tuned, _ = load_model(str(tiny_llama_dir), tokenizer=False)
    with torch.no_grad():
        llama_tuned.model.layers[1].mlp.up_proj.weight.add_(0.01)
        llama_tuned.model.norm.weight.add_(5.0)  # the final norm is no block: it must not count
        llama_tuned.model.embed_tokens.weight.add_(5.0)
    rows = layer_divergence(llama, llama_tuned)
    assert rows[0]["layer"] == 1 and rows[1]["divergence"] == 0.0
    assert rows[0]["divergence"] == pytest.approx(0.01 * math.sqrt(llama.model.layers[1].mlp.up_proj.weight.numel()),
                                                  rel=1e-4)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50))
    gpt2_tuned = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50))
    gpt2_tuned.load_state_dict(gpt2.state_dict())
    with torch.no_grad():
        gpt2_tuned.transformer.h[0].ln_2.bias.add_(1.0)
    assert top_layers(layer_divergence(gpt2, gpt2_tuned), 1) == [0]


def test_mismatched_models_are_refused(tiny_model_dir, tiny_llama_dir, tmp_path, corpus_file):
    png = tmp_path / "div.png"
    png.write_bytes(b"old plot")
    assert_user_error(run_cli("divergence", tiny_model_dir, tiny_llama_dir, "--plot", png), "architecture")
    from rlhf_lens.data import load_corpus
    from rlhf_lens.models import TinyModelConfig, build_tiny_model

    narrow = build_tiny_model(load_corpus(str(corpus_file)).texts("train"),
                              TinyModelConfig(layers=3, width=16, heads=4, vocab_size=300))
    other = save_model(*narrow, tmp_path / "narrow")
    assert_user_error(run_cli("divergence", tiny_model_dir, other, "--plot", png), "shape", "fine-tuned version")
    assert png.read_bytes() == b"old plot"
    assert_user_error(run_cli("divergence", tiny_model_dir, tmp_path / "absent"), "does not exist")
    assert_user_error(run_cli("divergence", tiny_model_dir, tiny_model_dir, "--top-n", "0"), "--top-n")


def test_dtype_mismatch_in_memory(tiny_model_dir):
    base, _ = load_model(str(tiny_model_dir), tokenizer=False)
    tuned, _ = load_model(str(tiny_model_dir), dtype="bfloat16", tokenizer=False)
    with pytest.raises(UserError, match="same dtype"):
        layer_divergence(base, tuned)


def test_plot_shows_nearly_equal_blocks(tmp_path):
    # Adam-like: every block moved almost equally; the plot must still be written, and replace an old one.
    rows = [{"layer": i, "divergence": 2.05 + 0.004 * ((i * 7) % 5)} for i in range(12)]
    path = tmp_path / "plots" / "div.png"
    plot_divergence(rows, path, top_n=5)
    first = path.read_bytes()
    assert first[:4] == b"\x89PNG"
    plot_divergence(rows[:6], path, top_n=2)
    assert path.read_bytes() != first and not list(path.parent.glob(".*.tmp"))
    with pytest.raises(UserError):
        plot_divergence([], tmp_path / "empty.png")
