"""A reward model as Hugging Face builds one: `AutoModelForSequenceClassification` with one label on a causal LM's
backbone, whose linear score head reads the final hidden state (after the final norm) of each text's last
non-padding token. `last_token_states` returns exactly that state, so the score is `head(last_token_states(...))`
to float precision (what [W3 5/6] decomposes over an SAE)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import UserError, first_line
from ..models import SMOLLM2, quiet_transformers, resolve_device, smollm2_path, torch_dtype
from ..progress import progress_advance


def load_reward_model(spec: str, device: str = "cpu", dtype: str = "float32"):
    """(model, tokenizer): `spec` (a save_pretrained folder, a hub id or smollm2) as a one-label
    `AutoModelForSequenceClassification` in eval mode. A causal LM gets a new score head (HF's init); an RM folder
    keeps its own. The pad token is set (eos when the tokenizer has none) in the tokenizer and in
    `model.config.pad_token_id`, which HF's head uses to find each text's last token."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    quiet_transformers()
    source, kwargs = (smollm2_path()[0], {"gguf_file": smollm2_path()[1]}) if spec == SMOLLM2 else (spec, {})
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: score.weight" is the point here, not a warning
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch_dtype(dtype),
                                                                   **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"could not load a reward model from {spec!r} ({first_line(e)})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    model.hf_quantizer = None  # a GGUF-loaded model is plain tensors; without this it refuses save_pretrained
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    score_head(model)  # an architecture without a `score` layer fails here, in one line
    return model.to(resolve_device(device)).eval(), tokenizer


def score_head(model) -> nn.Linear:
    """The RM's linear score head (HF's `score` layer: no bias for Llama and GPT-NeoX)."""
    head = getattr(model, "score", None)
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise UserError(f"{type(model).__name__} has no one-label linear `score` head; give a Llama-, GPT-NeoX- or "
                        "GPT-2-family model")
    return head


def backbone(model) -> nn.Module:
    """The transformer under the score head (`model.model` for Llama, `model.gpt_neox` for GPT-NeoX)."""
    return getattr(model, model.base_model_prefix)


def encode(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """A right-padded batch of `texts`, each cut to its last `max_length` tokens (the completion is at the end).
    Right padding: the positions are then 0.. for every row, as HF's head computes them without position ids."""
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    return tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)


def last_token_index(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Each row's last token that is not padding: HF's rule (the rightmost token != pad_token_id)."""
    keep = (input_ids != pad_token_id).int()
    return (torch.arange(input_ids.shape[1], device=input_ids.device, dtype=torch.int32) * keep).argmax(-1)


def last_token_states(model, tokenizer, texts: list[str], max_length: int = 128, batch_size: int = 16,
                      description: str = "") -> torch.Tensor:
    """[n, d]: the final hidden state (after the final norm) of each text's last non-padding token: exactly what
    HF's score head reads, so `score_head(model)(states)[:, 0]` is `model(...).logits[:, 0]` to float precision.
    `description`: show a progress bar with it."""
    device = next(model.parameters()).device
    rows = []
    with progress_advance(description, len(texts)) as advance, torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = encode(tokenizer, texts[start:start + batch_size], max_length).to(device)
            hidden = backbone(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     use_cache=False).last_hidden_state
            at = last_token_index(batch["input_ids"], model.config.pad_token_id)
            rows.append(hidden[torch.arange(len(at), device=device), at].float().cpu())
            advance(len(at))
    return torch.cat(rows) if rows else torch.zeros(0, model.config.hidden_size)


def scores(model, tokenizer, texts: list[str], max_length: int = 128, batch_size: int = 16,
           description: str = "") -> torch.Tensor:
    """[n]: the RM's score of each text, `model(...).logits[:, 0]` computed as head(last_token_states)."""
    states = last_token_states(model, tokenizer, texts, max_length, batch_size, description)
    head = score_head(model)
    with torch.no_grad():
        return head(states.to(head.weight.device, head.weight.dtype))[:, 0].float().cpu()


# --- the last blocks on cached inputs (train = blocks) ---------------------------------------------------------


def block_list(model) -> nn.ModuleList:
    """The backbone's list of transformer blocks (`layers` in Llama and GPT-NeoX, `h` in GPT-2)."""
    for name in ("layers", "h"):
        found = getattr(backbone(model), name, None)
        if isinstance(found, nn.ModuleList):
            return found
    raise UserError(f"{type(model).__name__}: no list of blocks found; use train = head or full")


def block_inputs(model, tokenizer, texts: list[str], n_blocks: int, max_length: int = 128, batch_size: int = 16,
                 description: str = "") -> list[torch.Tensor]:
    """Per text [length, d]: the hidden states entering the last `n_blocks` blocks, up to the token the head reads
    (`last_token_index`; padding dropped): what
    `tail_blocks` continues from, computed once by the frozen blocks before them."""
    device = next(model.parameters()).device
    first = len(block_list(model)) - n_blocks
    out = []
    with progress_advance(description, len(texts)) as advance, torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = encode(tokenizer, texts[start:start + batch_size], max_length).to(device)
            hidden = backbone(model)(**batch, output_hidden_states=True, use_cache=False).hidden_states[first]
            ends = (last_token_index(batch["input_ids"], model.config.pad_token_id) + 1).tolist()
            out += [hidden[i, :n].float().cpu() for i, n in enumerate(ends)]  # causal: later tokens change nothing
            advance(len(ends))
    return out


@contextlib.contextmanager
def tail_blocks(model, n_blocks: int) -> Iterator[None]:
    """While open, the backbone runs only its last `n_blocks` blocks (then its final norm) on `inputs_embeds`
    (the states `block_inputs` cached): the same computation as the full model from that point on."""
    blocks = block_list(model)
    name = "layers" if getattr(backbone(model), "layers", None) is blocks else "h"
    setattr(backbone(model), name, nn.ModuleList(list(blocks)[len(blocks) - n_blocks:]))
    try:
        yield
    finally:
        setattr(backbone(model), name, blocks)


def tail_scores(model, inputs: list[torch.Tensor], pad_token_id: int) -> torch.Tensor:
    """[n]: the scores of texts from their cached `block_inputs` (inside `tail_blocks`); right-padded with zeros
    (masked out), each read at its last token as HF's head reads it."""
    device = next(model.parameters()).device
    lengths = torch.tensor([len(x) for x in inputs])
    states = nn.utils.rnn.pad_sequence(inputs, batch_first=True).to(device, next(model.parameters()).dtype)
    mask = (torch.arange(states.shape[1])[None] < lengths[:, None]).long().to(device)
    hidden = backbone(model)(inputs_embeds=states, attention_mask=mask, use_cache=False).last_hidden_state
    last = hidden[torch.arange(len(inputs), device=device), (lengths - 1).to(device)]
    return score_head(model)(last)[:, 0].float()
