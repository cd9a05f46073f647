"""Crosscoder on paired activations, with Latent Scaling (the ideas of Minder, Dumas et al. 2025, arXiv 2504.02922).

A crosscoder reads both models' activations of one token and writes one shared code, decoded separately for
each model:

    f      = sparsify(ReLU(h_base E_base + h_tuned E_tuned + b_enc))             [m]
    ĥ_base = f D_base + b_base,   ĥ_tuned = f D_tuned + b_tuned
    loss   = mean over tokens of |h_base - ĥ_base|^2 + |h_tuned - ĥ_tuned|^2     (summed over d)
             (+ l1 · sum_j f_j (|D_base,j| + |D_tuned,j|) for arch l1)

sparsify: batchtopk keeps the k·B largest values of f_j (|D_base,j| + |D_tuned,j|) of a batch of B tokens (at
inference: those above a threshold, the mean over training batches of the smallest kept value); topk keeps k per
token; l1 keeps all and relies on the penalty. Trained with autograd and Adam on rows held in memory (small, CPU).

Why not read "tuned-only" off the decoder norms: with the L1 penalty a latent whose concept is weak in base loses
its base decoder entirely (complete shrinkage: the penalty costs more than the little base error it would
remove) and looks tuned-only though base carries the concept. Latent Scaling asks the activations instead: per
latent j, with u_j its unit tuned decoder row (base's where that is longer), the least-squares scale

    β_j^M = argmin_β sum over tokens |β f_j u_j - y^M|^2 = sum f_j <u_j, y^M> / sum f_j^2

for each model M and two targets y: the error target (M's reconstruction error with j's own contribution added
back: h^M - ĥ^M + f_j D^M_j, what of M's activation the other latents leave to j) and the reconstruction target
(f D^M, M's reconstruction without its bias: does the code rebuild the direction in M by other latents). A
latent is tuned-only when β^base < τ β^tuned for both targets (τ = `crosscoding.scaling_threshold`), base-only in
the reverse case, shared otherwise; dead when it never fires on the rows.

Output format: docs/diff.md, section "Crosscoder with Latent Scaling".
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..errors import UserError
from ..sae.archs import batch_topk, jumprelu, topk_codes
from .config import DecomposeConfig, check_decompose_config

ROWS_PER_CHUNK = 4096
HELD_OUT_FRACTION = 0.2
"""Share of the sampled rows held out of training: Latent Scaling's β and the FVU are measured on them."""
CLASSES = ("shared", "tuned-only", "base-only", "dead")
L1_WARMUP = 0.2
"""Arch l1: the penalty grows linearly from 0 over this fraction of the steps (latents find their concepts before
the penalty can kill them, as is usual for L1 dictionaries)."""


class Crosscoder(nn.Module):
    """Two encoders into one code, two decoders out of it (module docstring)."""

    def __init__(self, d: int, m: int, arch: str = "batchtopk", k: int = 16, seed: int = 0):
        super().__init__()
        if arch not in ("batchtopk", "topk", "l1"):
            raise UserError(f"crosscoder arch must be batchtopk, topk or l1 (got {arch!r})")
        self.d, self.m, self.arch, self.k = d, m, arch, min(k, m)
        g = torch.Generator().manual_seed(0xC0C0 + seed)
        dec = torch.randn(2, m, d, generator=g)
        dec = 0.5 * dec / dec.norm(dim=2, keepdim=True)
        self.W_dec = nn.Parameter(dec)
        """[2, m, d]: decoder rows of base (0) and tuned (1)."""
        self.W_enc = nn.Parameter(dec.transpose(1, 2).clone())
        """[2, d, m]: encoders of base (0) and tuned (1)."""
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_dec = nn.Parameter(torch.zeros(2, d))
        self.register_buffer("threshold", torch.tensor(float("nan")))

    def decoder_norms(self) -> torch.Tensor:
        """[2, m]: |D_base,j| and |D_tuned,j|."""
        return self.W_dec.norm(dim=2)

    def pre(self, h_base: torch.Tensor, h_tuned: torch.Tensor) -> torch.Tensor:
        return torch.relu(h_base @ self.W_enc[0] + h_tuned @ self.W_enc[1] + self.b_enc)

    def encode(self, h_base: torch.Tensor, h_tuned: torch.Tensor, training: bool = False) -> torch.Tensor:
        """Codes f [n, m]. batchtopk in training keeps the k·n largest scores of the batch, else those above the
        threshold (per-token top-k while no threshold is set)."""
        pre = self.pre(h_base, h_tuned)
        if self.arch == "l1":
            return pre
        score = pre * self.decoder_norms().sum(0)
        if self.arch == "batchtopk" and training:
            cut = batch_topk(score, self.k).values[-1]
            return pre * (score >= cut) * (score > 0)
        if self.arch == "batchtopk" and not torch.isnan(self.threshold):
            return jumprelu(pre, self.threshold, score)
        return topk_codes(pre, self.k, score)

    def decode(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return f @ self.W_dec[0] + self.b_dec[0], f @ self.W_dec[1] + self.b_dec[1]

    def loss(self, h_base: torch.Tensor, h_tuned: torch.Tensor, l1: float = 0.0) -> torch.Tensor:
        f = self.encode(h_base, h_tuned, training=True)
        rb, rt = self.decode(f)
        loss = (h_base - rb).pow(2).sum(1).mean() + (h_tuned - rt).pow(2).sum(1).mean()
        if self.arch == "l1":
            loss = loss + l1 * (f * self.decoder_norms().sum(0)).sum(1).mean()
        return loss

    @torch.no_grad()
    def set_threshold(self, h_base: torch.Tensor, h_tuned: torch.Tensor, batch_size: int) -> None:
        """batchtopk: the inference threshold, mean over batches of the smallest score a batch keeps."""
        cuts = []
        for lo in range(0, len(h_base), batch_size):
            score = self.pre(h_base[lo:lo + batch_size], h_tuned[lo:lo + batch_size]) * self.decoder_norms().sum(0)
            cuts.append(float(batch_topk(score, self.k).values[-1]))
        self.threshold.fill_(sum(cuts) / len(cuts))


def train_crosscoder(h_base: torch.Tensor, h_tuned: torch.Tensor, config: DecomposeConfig | None = None,
                     arch: str | None = None) -> Crosscoder:
    """A crosscoder (arch: `config.crosscoding.arch` unless given) trained on paired rows [n, d] with Adam."""
    config = config or DecomposeConfig()
    check_decompose_config(config)
    if h_base.shape != h_tuned.shape or h_base.ndim != 2:
        raise UserError(f"paired activations must have the same shape [n, d] (got {list(h_base.shape)} and "
                        f"{list(h_tuned.shape)})")
    h_base, h_tuned = h_base.float(), h_tuned.float()
    n, d = h_base.shape
    arch = arch or config.crosscoding.arch
    cc = Crosscoder(d, max(1, round(config.crosscoding.expansion * d)), arch, config.crosscoding.k, config.seed)
    with torch.no_grad():
        cc.b_dec[0].copy_(h_base.mean(0))
        cc.b_dec[1].copy_(h_tuned.mean(0))
    opt = torch.optim.Adam(cc.parameters(), lr=config.crosscoding.lr)
    g = torch.Generator().manual_seed(config.seed)
    b = min(config.crosscoding.batch_size, n)
    order, at = torch.randperm(n, generator=g), 0
    warmup = max(1, round(L1_WARMUP * config.crosscoding.steps))
    for step in range(config.crosscoding.steps):
        if at + b > n:
            order, at = torch.randperm(n, generator=g), 0
        rows = order[at:at + b]
        at += b
        loss = cc.loss(h_base[rows], h_tuned[rows], config.crosscoding.l1 * min(1.0, (step + 1) / warmup))
        if not torch.isfinite(loss):
            raise UserError("the crosscoder diverged (loss is NaN/inf); lower crosscoding.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if arch == "batchtopk":  # batches of shuffled rows, as in training (store order is document-contiguous)
        shuffled = torch.randperm(n, generator=g)
        cc.set_threshold(h_base[shuffled], h_tuned[shuffled], b)
    return cc.eval()


@torch.no_grad()
def latent_directions(cc: Crosscoder) -> torch.Tensor:
    """[m, d]: the unit direction of each latent read by Latent Scaling: its tuned decoder row (as the reference),
    or its base decoder row where that is the longer one (a base-leaning latent's tuned row can be noise)."""
    dec = cc.W_dec.detach()
    norms = dec.norm(dim=2)  # [2, m]
    rows = torch.where((norms[1] >= norms[0])[:, None], dec[1], dec[0])
    return rows / rows.norm(dim=1, keepdim=True).clamp(min=1e-12)


@torch.no_grad()
def latent_scaling(cc: Crosscoder, h_base: torch.Tensor, h_tuned: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per latent: β for (error, reconstruction) x (base, tuned), Σ f_j², firing counts; plus squared errors and
    variances per model (tensors; module docstring)."""
    dec = cc.W_dec.detach()
    u = latent_directions(cc)  # [m, d]
    along = (dec * u[None]).sum(2)  # [2, m]: <u_j, D^M_j>
    m = cc.m
    fsq = torch.zeros(m, dtype=torch.float64)
    fired = torch.zeros(m, dtype=torch.int64)
    num = {key: torch.zeros(m, dtype=torch.float64) for key in ("eb", "et", "rb", "rt")}
    sq_err, l0 = torch.zeros(2, dtype=torch.float64), 0
    for lo in range(0, len(h_base), ROWS_PER_CHUNK):
        xb, xt = h_base[lo:lo + ROWS_PER_CHUNK].float(), h_tuned[lo:lo + ROWS_PER_CHUNK].float()
        f = cc.encode(xb, xt)
        hb, ht = cc.decode(f)
        fd = f.double()
        fsq += fd.pow(2).sum(0)
        fired += (f > 0).sum(0)
        l0 += int((f > 0).sum())
        for key, target in (("eb", xb - hb), ("et", xt - ht), ("rb", hb - cc.b_dec[0]), ("rt", ht - cc.b_dec[1])):
            num[key] += (fd * (target @ u.t()).double()).sum(0)
        sq_err += torch.stack([(xb - hb).double().pow(2).sum(), (xt - ht).double().pow(2).sum()])
    safe = fsq.clamp(min=1e-30)
    beta = {"error_base": (num["eb"] + fsq * along[0].double()) / safe,
            "error_tuned": (num["et"] + fsq * along[1].double()) / safe,
            "reconstruction_base": num["rb"] / safe, "reconstruction_tuned": num["rt"] / safe}
    var = torch.stack([((h - h.mean(0)).double().pow(2).sum()) for h in (h_base, h_tuned)])
    return {**beta, "fsq": fsq, "fired": fired, "n": torch.tensor(len(h_base)), "l0": torch.tensor(l0),
            "sq_err": sq_err, "var": var}


def classify(scaling: dict[str, torch.Tensor], norms: torch.Tensor, tau: float, norm_threshold: float
             ) -> tuple[list[str], list[str]]:
    """(Latent Scaling class, decoder-norm class) per latent: shared, tuned-only, base-only or dead."""
    eb, et = scaling["error_base"], scaling["error_tuned"]
    rb, rt = scaling["reconstruction_base"], scaling["reconstruction_tuned"]
    rel = norms[1] / (norms[0] + norms[1]).clamp(min=1e-12)
    classes, norm_classes = [], []
    for j in range(len(eb)):
        if int(scaling["fired"][j]) == 0:
            classes.append("dead")
            norm_classes.append("dead")
            continue
        if et[j] > 0 and rt[j] > 0 and eb[j] < tau * et[j] and rb[j] < tau * rt[j]:
            classes.append("tuned-only")
        elif eb[j] > 0 and rb[j] > 0 and et[j] < tau * eb[j] and rt[j] < tau * rb[j]:
            classes.append("base-only")
        else:
            classes.append("shared")
        norm_classes.append("tuned-only" if rel[j] > norm_threshold else
                            "base-only" if rel[j] < 1 - norm_threshold else "shared")
    return classes, norm_classes


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def crosscoder_report(cc: Crosscoder, h_base: torch.Tensor, h_tuned: torch.Tensor,
                      config: DecomposeConfig | None = None) -> dict:
    """Latent Scaling of a trained crosscoder on paired rows: per latent class and the numbers behind it; keys in
    docs/diff.md."""
    config = config or DecomposeConfig()
    s = latent_scaling(cc, h_base, h_tuned)
    norms = cc.decoder_norms().detach()
    classes, norm_classes = classify(s, norms, config.crosscoding.scaling_threshold,
                                     config.crosscoding.norm_threshold)
    n = int(s["n"])
    latents = []
    for j in range(cc.m):
        if classes[j] == "dead":
            continue
        eb, et = float(s["error_base"][j]), float(s["error_tuned"][j])
        rb, rt = float(s["reconstruction_base"][j]), float(s["reconstruction_tuned"][j])
        latents.append({"latent": j, "class": classes[j], "norm_class": norm_classes[j],
                        "beta": {"error": {"base": eb, "tuned": et}, "reconstruction": {"base": rb, "tuned": rt}},
                        "nu_error": _ratio(eb, et), "nu_reconstruction": _ratio(rb, rt),
                        "decoder_norm": {"base": float(norms[0, j]), "tuned": float(norms[1, j])},
                        "relative_norm": float(norms[1, j] / (norms[0, j] + norms[1, j]).clamp(min=1e-12)),
                        "firing_rate": int(s["fired"][j]) / n})
    latents.sort(key=lambda x: (CLASSES.index(x["class"]), -x["firing_rate"]))
    counts = {c: classes.count(c) for c in CLASSES}
    return {"arch": cc.arch, "k": cc.k if cc.arch != "l1" else None,
            "l1": config.crosscoding.l1 if cc.arch == "l1" else None, "dict_size": cc.m, "d": cc.d, "n_rows": n,
            "threshold": None if torch.isnan(cc.threshold) else float(cc.threshold),
            "fvu": {"base": float(s["sq_err"][0] / s["var"][0]), "tuned": float(s["sq_err"][1] / s["var"][1])},
            "mean_l0": int(s["l0"]) / n, "scaling_threshold": config.crosscoding.scaling_threshold,
            "norm_threshold": config.crosscoding.norm_threshold, "counts": counts,
            "norm_counts": {c: norm_classes.count(c) for c in CLASSES},
            "disagree": sum(a != b for a, b in zip(classes, norm_classes)), "latents": latents}


@torch.no_grad()
def match_latents(cc: Crosscoder, directions: torch.Tensor, report: dict | None = None) -> list[dict]:
    """For each direction [k, d]: the live latent whose direction u_j (`latent_directions`) has the largest
    cosine with it: {"latent", "cosine", "class", "norm_class"} (classes from `report` when given)."""
    u = latent_directions(cc)
    live = {x["latent"]: x for x in report["latents"]} if report is not None else None
    cos = (directions / directions.norm(dim=1, keepdim=True)) @ u.t()
    if live is not None:
        mask = torch.full((cc.m,), float("-inf"))
        mask[list(live)] = 0.0
        cos = cos + mask
    out = []
    if live is not None and not live:
        return [{"latent": None, "cosine": None, "class": "dead", "norm_class": "dead"} for _ in directions]
    for row in cos:
        j = int(row.argmax())
        entry = {"latent": j, "cosine": float(row[j])}
        if live is not None:
            entry.update({"class": live[j]["class"], "norm_class": live[j]["norm_class"]})
        out.append(entry)
    return out


def crosscoder_analysis(base_store, tuned_store, layer: int, config: DecomposeConfig | None = None,
                        arch: str | None = None, out: str | os.PathLike | None = None) -> tuple[dict, Crosscoder]:
    """Train a crosscoder on a seeded sample of `config.crosscoding.rows` paired rows of two stores (same tokens,
    checked) less a random fifth held out (`HELD_OUT_FRACTION`), and report its Latent Scaling (β, FVU, classes)
    on the held-out rows; with `out`, save its weights there as safetensors. Returns (report with "layer" and
    "n_train" added, crosscoder)."""
    from ..io import save_safetensors
    from .paired_store import open_store, sample_paired_rows

    config = config or DecomposeConfig()
    check_decompose_config(config)
    base, tuned = open_store(base_store), open_store(tuned_store)
    hb, ht, _ = sample_paired_rows(base, tuned, layer, config.crosscoding.rows, config.seed)
    order = torch.randperm(len(hb), generator=torch.Generator().manual_seed(config.seed + 0x4E1D))
    held = order[:max(1, round(HELD_OUT_FRACTION * len(hb)))]
    train = order[len(held):]
    cc = train_crosscoder(hb[train], ht[train], config, arch)
    report = {"layer": int(layer), "n_train": len(train), **crosscoder_report(cc, hb[held], ht[held], config)}
    if out is not None:
        save_safetensors(out, {k: v.detach().contiguous() for k, v in cc.state_dict().items()},
                         metadata={"rlhf_lens": f'{{"format": "rlhf-lens.crosscoder", "arch": "{cc.arch}"}}'})
    return report, cc
