"""Base and tuned on identical tokens: residual-stream differences, next-token KL, log-prob changes.

One forward pass per model and batch gives every block's residual output (forward hooks on the
blocks: `output_hidden_states[-1]` is taken after the final norm in Hugging Face models, so it
would not be block n-1's raw output) and the logits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError


def tokenize_pair(base_tokenizer, tuned_tokenizer, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each document, truncated; UserError unless both tokenizers give the same ids."""
    ids = base_tokenizer(texts, truncation=True, max_length=max_tokens)["input_ids"]
    if tuned_tokenizer is not base_tokenizer:
        other = tuned_tokenizer(texts, truncation=True, max_length=max_tokens)["input_ids"]
        for k, (a, b) in enumerate(zip(ids, other)):
            if list(a) != list(b):
                raise UserError(f"base and tuned tokenizers give different tokens (document {k}: {len(a)} vs "
                                f"{len(b)} tokens, first difference at position "
                                f"{next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))}); "
                                "a diff needs the same tokenizer for both models")
    return [list(x) for x in ids]


def check_pair(base: nn.Module, tuned: nn.Module) -> None:
    """Same architecture, depth, width and vocabulary, or one UserError line."""
    from ..models import num_blocks

    pairs = [("architecture", base.config.model_type, tuned.config.model_type),
             ("blocks", num_blocks(base), num_blocks(tuned)),
             ("hidden size", base.config.hidden_size, tuned.config.hidden_size),
             ("vocabulary", base.get_output_embeddings().weight.shape[0],
              tuned.get_output_embeddings().weight.shape[0])]
    for what, a, b in pairs:
        if a != b:
            raise UserError(f"base and tuned models differ in {what} ({a} vs {b}); diff a model with its own tuned version")


def block_output(output) -> torch.Tensor:
    """A decoder block's residual output (blocks return a tensor or a tuple starting with it)."""
    return output[0] if isinstance(output, tuple) else output


class BlockCapture:
    """Forward hooks that keep every block's residual output of the last forward pass."""

    def __init__(self, model: nn.Module):
        from ..models import blocks

        self.outputs: dict[int, torch.Tensor] = {}
        self.handles = [block.register_forward_hook(self._hook(i)) for i, block in enumerate(blocks(model))]

    def _hook(self, i: int):
        def hook(module, inputs, output):
            self.outputs[i] = block_output(output)

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass
class Paired:
    """What the paired pass measured (float64 sums turned into means)."""

    delta: torch.Tensor
    """[n_blocks, d]: mean over tokens of h_tuned - h_base, residual after each block."""
    embed_delta: torch.Tensor
    """[d]: the same for the embedding output (the residual before block 0)."""
    base_norm: torch.Tensor
    """[n_blocks]: mean over tokens of |h_base|."""
    tuned_norm: torch.Tensor
    """[n_blocks]: mean over tokens of |h_tuned|."""
    token_diff_norm: torch.Tensor
    """[n_blocks]: mean over tokens of |h_tuned - h_base| (per-token change, not only its mean)."""
    logprob_change: torch.Tensor
    """[V]: mean over positions of log p_tuned(v) - log p_base(v)."""
    promote_share: torch.Tensor
    """[V]: mean over positions of p_tuned(v) (log p_tuned(v) - log p_base(v)): token v's share of KL(tuned || base)."""
    demote_share: torch.Tensor
    """[V]: mean over positions of p_base(v) (log p_base(v) - log p_tuned(v)): token v's share of KL(base || tuned)."""
    base_prob: torch.Tensor
    """[V]: mean over positions of p_base(v): how likely the base model makes each token (the output null's
    frequency strata)."""
    kl: list[torch.Tensor]
    """Per document, [len]: KL(tuned || base) of the next-token distribution at each position."""
    docs: list[list[int]]
    n_tokens: int
    acts: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """Block -> (base rows, tuned rows), [n_tokens, d] each, ordered by (document, position); only when saved."""


def _forward(model: nn.Module, capture: BlockCapture, ids: torch.Tensor, mask: torch.Tensor):
    out = model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
    return out.logits, out.hidden_states[0], dict(capture.outputs)


@torch.inference_mode()
def paired_pass(base: nn.Module, tuned: nn.Module, docs: list[list[int]], pad_id: int, batch_size: int,
                save_layers: list[int] | None = None, bar=None, task=None) -> Paired:
    """Run both models over `docs` (right-padded batches) and accumulate the differences."""
    from ..models import num_blocks

    device = next(base.parameters()).device
    n_blocks, d = num_blocks(base), int(base.config.hidden_size)
    vocab = base.get_output_embeddings().weight.shape[0]
    sums = {"delta": torch.zeros(n_blocks, d, dtype=torch.float64), "embed": torch.zeros(d, dtype=torch.float64),
            "base_norm": torch.zeros(n_blocks, dtype=torch.float64),
            "tuned_norm": torch.zeros(n_blocks, dtype=torch.float64),
            "diff_norm": torch.zeros(n_blocks, dtype=torch.float64),
            "logprob": torch.zeros(vocab, dtype=torch.float64), "promote": torch.zeros(vocab, dtype=torch.float64),
            "demote": torch.zeros(vocab, dtype=torch.float64), "base_prob": torch.zeros(vocab, dtype=torch.float64)}
    kl: list[torch.Tensor] = [torch.zeros(0) for _ in docs]
    saved: dict[int, tuple[list, list]] = {layer: ([], []) for layer in save_layers or []}
    same = tuned is base  # a model diffed against itself: one pass, exact zeros
    captures = [BlockCapture(base)] + ([] if same else [BlockCapture(tuned)])
    n_tokens = 0
    try:
        for start in range(0, len(docs), batch_size):
            batch = [i for i in range(start, min(start + batch_size, len(docs))) if docs[i]]
            if not batch:
                continue
            width = max(len(docs[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.bool)
            for row, i in enumerate(batch):
                ids[row, :len(docs[i])] = torch.tensor(docs[i])
                mask[row, :len(docs[i])] = True
            ids, mask_dev = ids.to(device), mask.to(device)
            b_logits, b_embed, b_blocks = _forward(base, captures[0], ids, mask_dev.long())
            if same:
                t_logits, t_embed, t_blocks = b_logits, b_embed, b_blocks
            else:
                t_logits, t_embed, t_blocks = _forward(tuned, captures[1], ids, mask_dev.long())
            n_tokens += int(mask.sum())
            sums["embed"] += (t_embed[mask_dev].double() - b_embed[mask_dev].double()).sum(0).cpu()
            for layer in range(n_blocks):
                hb, ht = b_blocks[layer][mask_dev].double(), t_blocks[layer][mask_dev].double()
                diff = ht - hb
                sums["delta"][layer] += diff.sum(0).cpu()
                sums["base_norm"][layer] += hb.norm(dim=1).sum().cpu()
                sums["tuned_norm"][layer] += ht.norm(dim=1).sum().cpu()
                sums["diff_norm"][layer] += diff.norm(dim=1).sum().cpu()
                if layer in saved:
                    saved[layer][0].append(hb.float().cpu())
                    saved[layer][1].append(ht.float().cpu())
            lp_b = torch.log_softmax(b_logits[mask_dev].float(), -1)
            lp_t = lp_b if same else torch.log_softmax(t_logits[mask_dev].float(), -1)
            change = lp_t - lp_b
            sums["logprob"] += change.double().sum(0).cpu()
            p_b = lp_b.exp()
            sums["base_prob"] += p_b.double().sum(0).cpu()
            share = lp_t.exp() * change
            sums["promote"] += share.double().sum(0).cpu()
            sums["demote"] -= (p_b * change).double().sum(0).cpu()
            per_position = share.sum(-1).clamp(min=0).cpu()  # KL(tuned || base); clamp float residue
            offset = 0
            for i in batch:
                kl[i] = per_position[offset:offset + len(docs[i])]
                offset += len(docs[i])
            if bar is not None:
                bar.update(task, advance=len(batch))
    finally:
        for capture in captures:
            capture.remove()
    if n_tokens == 0:
        raise UserError("the documents hold no tokens; give a corpus with text")
    mean = {k: (v / n_tokens) for k, v in sums.items()}
    acts = {}
    if saved:
        # Rows were kept batch by batch in document order (batches are consecutive documents).
        acts = {layer: (torch.cat(b), torch.cat(t)) for layer, (b, t) in saved.items()}
    return Paired(delta=mean["delta"].float(), embed_delta=mean["embed"].float(), base_norm=mean["base_norm"].float(),
                  tuned_norm=mean["tuned_norm"].float(), token_diff_norm=mean["diff_norm"].float(),
                  logprob_change=mean["logprob"].float(), promote_share=mean["promote"].float(),
                  demote_share=mean["demote"].float(), base_prob=mean["base_prob"].float(), kl=kl, docs=docs, n_tokens=n_tokens, acts=acts)


def block_rows(paired: Paired) -> list[dict]:
    """Per block: |Δ_L|, the mean activation norm, their ratio, the block's own contribution and the per-token change."""
    rows = []
    previous = paired.embed_delta
    for layer in range(paired.delta.shape[0]):
        norm = float(paired.delta[layer].norm())
        base_norm = float(paired.base_norm[layer])
        rows.append({"layer": layer, "delta_norm": norm, "base_norm": base_norm,
                     "relative": norm / base_norm if base_norm > 0 else 0.0,
                     # Δ accumulates along the residual stream; what this block itself added to it:
                     "own_norm": float((paired.delta[layer] - previous).norm()),
                     "token_diff_norm": float(paired.token_diff_norm[layer])})
        previous = paired.delta[layer]
    return rows


def own_contributions(paired: Paired) -> torch.Tensor:
    """[n_blocks, d]: Δ_L - Δ_{L-1} (Δ_{-1}: the embedding output's difference)."""
    previous = torch.cat([paired.embed_delta[None], paired.delta[:-1]])
    return paired.delta - previous


def highest_kl_contexts(paired: Paired, decoder, n: int, width: int) -> list[dict]:
    """The n positions of highest KL (at most one per document), with the tokens before them and their KL."""
    best = sorted(((float(k.max()), doc, int(k.argmax())) for doc, k in enumerate(paired.kl) if len(k)),
                  key=lambda x: -x[0])[:n]
    out = []
    for value, doc, pos in best:
        start = max(0, pos + 2 - width)
        end = min(len(paired.docs[doc]), pos + 2)  # the high-KL position predicts token pos + 1: show it
        out.append({"doc": doc, "pos": pos, "kl": value, "start": start,
                    "tokens": decoder.pieces(paired.docs[doc][start:end]),
                    "kl_per_token": [float(x) for x in paired.kl[doc][start:end]]})
    return out


def kl_summary(paired: Paired) -> dict:
    values = torch.cat([k for k in paired.kl if len(k)]).double()
    return {"mean": float(values.mean()), "median": float(values.median()), "max": float(values.max()),
            "p90": float(torch.quantile(values, 0.9)), "n_positions": int(len(values))}


def write_pair_stores(out: str | os.PathLike, paired: Paired, specs: dict[str, str], meta: dict) -> dict[str, str]:
    """Save the kept residual rows as two activation stores (docs/store.md), one shard each.

    `specs`: {"base": model spec, "tuned": model spec}; `meta`: the manifest fields harvest would record
    (tokenizer, corpus, corpus_fingerprint, split, text_column, max_docs, max_tokens, model_dtype).
    Returns {"base": folder, "tuned": folder}.
    """
    from ..store import StoreWriter, index_tensors

    layers = sorted(paired.acts)
    index = index_tensors(paired.docs)
    n = len(index["doc"])
    folders = {}
    for which, side in (("base", 0), ("tuned", 1)):
        acts = {layer: paired.acts[layer][side] for layer in layers}
        d = int(acts[layers[0]].shape[1]) if layers else 0
        writer = StoreWriter(Path(out) / which, {
            "model": specs[which], **meta, "layers": layers, "site": "residual", "dtype": "float32",
            "shard_tokens": n, "n_docs": len(paired.docs), "d": d})
        writer.add_shard(acts, index, 0, len(paired.docs))
        folders[which] = str(writer.finish().path)  # opening it validates what was written
    return folders
