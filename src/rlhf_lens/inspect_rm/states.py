"""The RM's final states (after the final norm) at every token of a text. Row t of a text is the state the score
head reads of the text's first t + 1 tokens (a causal model read with right padding computes each prefix exactly
so), so the last row is `rm.model.last_token_states` and every row is a text's score state: the rows an SAE on
"the state the RM's head reads" trains on, and the per-token activations its features are explained from."""

from __future__ import annotations

from pathlib import Path

import torch

from ..progress import progress_advance
from ..rm.model import backbone, encode, last_token_index

FINAL = "final"
"""What the stored rows are: the RM's final states (the store's one layer is the model's depth)."""


def prefix_states(model, tokenizer, texts: list[str], max_length: int = 128, batch_size: int = 16,
                  description: str = "") -> tuple[list[torch.Tensor], list[list[int]]]:
    """(per text [n_tokens, d] float32, per text its token ids): the final states of every token up to the last
    one the head reads (padding dropped)."""
    device = next(model.parameters()).device
    states, ids = [], []
    with progress_advance(description, len(texts)) as advance, torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = encode(tokenizer, texts[start:start + batch_size], max_length).to(device)
            hidden = backbone(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     use_cache=False).last_hidden_state
            ends = (last_token_index(batch["input_ids"], model.config.pad_token_id) + 1).tolist()
            states += [hidden[i, :n].float().cpu() for i, n in enumerate(ends)]
            ids += [batch["input_ids"][i, :n].tolist() for i, n in enumerate(ends)]
            advance(len(ends))
    return states, ids


def last_rows(states: list[torch.Tensor]) -> torch.Tensor:
    """[n, d]: each text's last row, the state its score is read from."""
    return torch.stack([s[-1] for s in states]) if states else torch.zeros(0, 0)


def write_state_store(out: Path, states: list[torch.Tensor], ids: list[list[int]], model_name: str, tokenizer_name: str,
                      layer: int, what: str) -> Path:
    """An activation store (store.py's format, one layer numbered `layer`: the model's depth) of `states`, one
    document per text, so the policy's explainers read the RM's features as they read any store's."""
    from ..store import StoreWriter, index_tensors

    writer = StoreWriter(out, {"model": model_name, "tokenizer": tokenizer_name, "corpus": what, "split": "-",
                               "layers": [layer], "d": int(states[0].shape[1]), "dtype": "float32",
                               "n_docs": len(states)})
    shard_docs = 256
    for start in range(0, len(states), shard_docs):
        end = min(start + shard_docs, len(states))
        writer.add_shard({layer: torch.cat(states[start:end])}, index_tensors(ids[start:end], start), start, end)
    return writer.finish().path
