"""Decompositions of what tuning changed (rlhf_lens.diff.{paired_store,diffsae,shift,crosscoder,placebo}):
planted changes are found, the Δ store is a store, the placebo table is a permutation."""

from __future__ import annotations

import pytest
import torch

from conftest import plant_direction
from rlhf_lens.errors import UserError

D = 32
DOCS, PER_DOC = 120, 32


def _index(docs: int = DOCS, per: int = PER_DOC, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = docs * per
    return (torch.randint(0, 300, (n,), generator=g), torch.arange(docs).repeat_interleave(per),
            torch.arange(per).repeat(docs))


def _write_store(path, acts: torch.Tensor, index, layer: int = 1, shards: int = 2):
    """A store of `acts` (rows ordered by document) cut into `shards` shards of whole documents."""
    from rlhf_lens.store import StoreWriter

    tok, doc, pos = index
    n_docs = int(doc.max()) + 1
    writer = StoreWriter(path, {"model": str(path), "tokenizer": "tiny", "corpus": "c", "split": "test",
                                "layers": [layer], "d": acts.shape[1], "dtype": "float32", "n_docs": n_docs})
    bounds = [round(i * n_docs / shards) for i in range(shards + 1)]
    for lo, hi in zip(bounds, bounds[1:]):
        rows = (doc >= lo) & (doc < hi)
        writer.add_shard({layer: acts[rows]}, {"token_ids": tok[rows], "doc": doc[rows], "pos": pos[rows]}, lo, hi)
    return writer.finish()


def _unit(g, d=D):
    v = torch.randn(d, generator=g)
    return v / v.norm()


@pytest.fixture(scope="module")
def planted_pair(tmp_path_factory):
    """Paired stores: tuned = base + 2·v on the tokens with id < 90 (~30%), + 1·w on ids 90..149, + small noise."""
    root = tmp_path_factory.mktemp("pair")
    g = torch.Generator().manual_seed(1)
    index = _index()
    tok = index[0]
    base = torch.randn(len(tok), D, generator=g)
    v, w = _unit(g), _unit(g)
    tuned = base + 2.0 * (tok < 90)[:, None] * v + 1.0 * ((tok >= 90) & (tok < 150))[:, None] * w \
        + 0.05 * torch.randn(len(tok), D, generator=g)
    return {"root": root, "base": _write_store(root / "base", base, index),
            "tuned": _write_store(root / "tuned", tuned, index), "v": v, "w": w, "index": index,
            "base_acts": base, "tuned_acts": tuned}


# --- Δ store ---------------------------------------------------------------------------------------------


def test_delta_store_is_a_store_of_the_differences(planted_pair):
    from rlhf_lens.decompose.paired_store import delta_store

    delta = delta_store(planted_pair["base"], planted_pair["tuned"], 1, planted_pair["root"] / "delta")
    assert delta.layers == [1] and delta.n_tokens == planted_pair["base"].n_tokens and delta.d == D
    rows = torch.cat([s.acts for s in delta.iter_shards(1)])
    assert torch.allclose(rows, planted_pair["tuned_acts"] - planted_pair["base_acts"], atol=1e-6)
    shard = delta.read_shard(1, 1)
    assert torch.equal(shard.token_ids, planted_pair["base"].read_shard(1, 1).token_ids)
    assert delta.manifest["delta"]["layer"] == 1 and delta.manifest["tokenizer"] == "tiny"
    assert torch.equal(delta.document_tokens(5), planted_pair["base"].document_tokens(5))
    # reopened, not rewritten; a different store there is refused
    again = delta_store(planted_pair["base"], planted_pair["tuned"], 1, planted_pair["root"] / "delta")
    assert again.manifest == delta.manifest
    with pytest.raises(UserError, match="another activation store"):
        delta_store(planted_pair["tuned"], planted_pair["base"], 1, planted_pair["root"] / "delta")


def test_unpaired_stores_fail_in_one_line(planted_pair, tmp_path):
    from rlhf_lens.decompose.paired_store import delta_store

    tok, doc, pos = planted_pair["index"]
    other = _write_store(tmp_path / "other", planted_pair["base_acts"], ((tok + 1) % 300, doc, pos))
    with pytest.raises(UserError, match="different tokens") as e:
        delta_store(planted_pair["base"], other, 1, tmp_path / "delta")
    assert "\n" not in str(e.value) and not (tmp_path / "delta" / "manifest.json").exists()
    fewer = _write_store(tmp_path / "fewer", planted_pair["base_acts"][: 100 * PER_DOC], _index(100))
    with pytest.raises(UserError, match="different rows"):
        delta_store(planted_pair["base"], fewer, 1, tmp_path / "delta2")
    with pytest.raises(UserError, match="layer 3"):
        delta_store(planted_pair["base"], planted_pair["tuned"], 3, tmp_path / "delta3")


# --- diff-SAE --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffsae_result(planted_pair):
    from rlhf_lens.decompose.config import DecomposeConfig, DiffSAESettings
    from rlhf_lens.decompose.diffsae import diff_sae
    from rlhf_lens.decompose.paired_store import delta_store

    delta = delta_store(planted_pair["base"], planted_pair["tuned"], 1, planted_pair["root"] / "delta-sae")
    config = DecomposeConfig(diffsae=DiffSAESettings(arch="topk", k=1, expansion=1.0, epochs=20, batch_size=64,
                                                     lr=3e-3, seeds=[0, 1], top=4))
    result, saes = diff_sae(delta, 1, config, out_dir=planted_pair["root"] / "diffsae")
    return {"result": result, "saes": saes, "delta": delta, "config": config}


def test_diffsae_top_latent_is_the_planted_direction(planted_pair, diffsae_result):
    from rlhf_lens.decompose.diffsae import decoder_rows

    result, saes = diffsae_result["result"], diffsae_result["saes"]
    top = result["top"]
    assert [t["share"] for t in top] == sorted((t["share"] for t in top), reverse=True)
    for sae, entry in zip(saes, result["saes"]):
        rows = decoder_rows(sae)
        first, second = entry["top"][0]["latent"], entry["top"][1]["latent"]
        assert torch.cosine_similarity(rows[first], planted_pair["v"], dim=0) > 0.9
        assert torch.cosine_similarity(rows[second], planted_pair["w"], dim=0) > 0.8
    # per row, E|Δ|^2 ≈ 0.3·4 (v) + 0.15·1 (w) + 32·0.05² (noise): v holds ~0.8 of it and fires on ~30% of rows
    assert top[0]["share"] > 0.4 and 0.2 < top[0]["firing_rate"] < 0.45
    assert top[0]["agreement"] > 0.9 and result["agreement"]["above_0.9"] >= 2
    assert result["n_rows"] == DOCS * PER_DOC and result["arch"] == "topk" and result["dict_size"] == D
    assert result["saes"][0]["explained"] > 0.9


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_diffsae_configs_follow_the_arch_parameter(arch):
    from rlhf_lens.decompose.config import DecomposeConfig, DiffSAESettings
    from rlhf_lens.decompose.diffsae import diffsae_configs

    configs = diffsae_configs(64, DecomposeConfig(diffsae=DiffSAESettings(arch=arch, expansion=1.5, seeds=[3, 4])))
    assert [c.arch for c in configs] == [arch, arch] and [c.seed for c in configs] == [3, 4]
    assert configs[0].dict_size == 96 and configs[0].k == 16
    assert diffsae_configs(64, DecomposeConfig())[0].arch == "batchtopk"


def test_diffsae_configs_give_each_seed_its_own_data_order_and_train_until_converged():
    from rlhf_lens.decompose.config import DecomposeConfig, DiffSAESettings
    from rlhf_lens.decompose.diffsae import diffsae_configs

    configs = diffsae_configs(16, DecomposeConfig(diffsae=DiffSAESettings(seeds=[0, 1, 2])))
    assert len({c.data_seed for c in configs}) == 3 and [c.seed for c in configs] == [0, 1, 2]
    assert all(c.epochs == 0 and c.max_tokens == DiffSAESettings().max_tokens and c.max_seconds == 0 for c in configs)
    capped = diffsae_configs(16, DecomposeConfig(diffsae=DiffSAESettings(epochs=3)))
    assert all(c.epochs == 3 for c in capped)


def test_diffsae_explained_is_centred(tmp_path):
    """Δ = a constant vector of norm 8 + isotropic noise: the decoder bias alone takes the constant, which the
    uncentred share counts as explained (> 0.9); one TopK latent can explain little of isotropic noise in 32
    dimensions, and the centred `explained` (1 - FVU) says so."""
    from rlhf_lens.decompose.config import DecomposeConfig, DiffSAESettings
    from rlhf_lens.decompose.diffsae import diff_sae

    g = torch.Generator().manual_seed(4)
    index = _index(60)
    n = len(index[0])
    base = torch.randn(n, D, generator=g)
    tuned = base + 8.0 * _unit(g) + 0.3 * torch.randn(n, D, generator=g)
    delta = _write_store(tmp_path / "delta", tuned - base, index)
    config = DecomposeConfig(diffsae=DiffSAESettings(arch="topk", k=1, expansion=1.0, seeds=[0], max_tokens=200_000))
    result, saes = diff_sae(delta, 1, config)
    entry = result["saes"][0]
    assert entry["explained_uncentred"] > 0.9 and entry["explained"] < 0.3
    x = tuned - base
    x_hat = saes[0](x)[0].detach()
    fvu = float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert entry["explained"] == pytest.approx(1 - fvu, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("seed", [6, 8])
def test_default_batchtopk_diffsae_recovers_a_context_dependent_sparse_change(tmp_path, seed):
    """Three directions added on some tokens only, each where its token set meets a context condition (the base
    activation's sign along a probe), with a magnitude that depends on that activation (no constant bias), over a
    dense background change (every token moves a little, as tuning moves everything: per dimension 0.3, norm
    ~2.4). The default diff-SAE (BatchTopK, expansion 2, k 16, until converged) has, among its top latents by
    share of |Δ|², a decoder row within cosine 0.9 of each planted direction. (Without the background, at k far
    above the change's own L0 of <= 1, BatchTopK spends its budget splitting the directions: cosines ~0.6.)"""
    from rlhf_lens.decompose.config import DecomposeConfig, DiffSAESettings
    from rlhf_lens.decompose.diffsae import decoder_rows, diff_sae

    d = 64  # k 16 of 64 dimensions; k 16 of 32 would be no sparse code at all
    g = torch.Generator().manual_seed(seed)
    index = _index()
    tok, n = index[0], len(index[0])
    base = torch.randn(n, d, generator=g)
    planted = torch.linalg.qr(torch.randn(d, 3, generator=g))[0].t()  # [3, d]
    probes = torch.randn(3, d, generator=g)
    tuned = base + 0.3 * torch.randn(n, d, generator=g)
    for j in range(3):
        along = base @ probes[j] / probes[j].norm()
        fires = (tok % 3 == j) & (along > 0)  # a token set and a context condition
        tuned += (fires * (1.0 + along))[:, None] * planted[j]
    delta = _write_store(tmp_path / "delta", tuned - base, index)
    result, saes = diff_sae(delta, 1, DecomposeConfig(diffsae=DiffSAESettings(seeds=[0], top=6)))
    assert result["arch"] == "batchtopk" and result["dict_size"] == 2 * d and result["k"] == 16
    assert result["saes"][0]["stop_reason"] == "converged"
    rows = decoder_rows(saes[0])[[t["latent"] for t in result["top"]]]
    cos = torch.nn.functional.normalize(rows, dim=1) @ planted.t()  # [top, 3]
    assert (cos.max(0).values > 0.9).all(), cos


# --- shared-dictionary shift ------------------------------------------------------------------------------


def _orthonormal_sae(m: int, seed: int):
    """A tied SAE whose dictionary is m orthonormal rows in D dimensions (codes read back exactly)."""
    from rlhf_lens.sae import SAEConfig, SparseAutoencoder

    g = torch.Generator().manual_seed(seed)
    dictionary = torch.linalg.qr(torch.randn(D, m, generator=g))[0].t()  # [m, D] orthonormal rows
    sae = SparseAutoencoder(SAEConfig(d_in=D, dict_size=m, arch="tied"))
    with torch.no_grad():
        sae.decoder.copy_(dictionary)
        sae.b_enc.fill_(-0.05)
    return sae, dictionary


def _sparse_codes(g, n: int, m: int, scale: torch.Tensor) -> torch.Tensor:
    return torch.rand(n, m, generator=g) * (torch.rand(n, m, generator=g) < 0.15) * scale


def _old_pooled_threshold(codes: torch.Tensor, doc: torch.Tensor, splits: int = 16, quantile: float = 0.99) -> float:
    """The rule this test replaces: the 0.99 quantile, over latents and halvings of the documents, of
    |mean code of half A - mean code of half B| of the base rows."""
    g = torch.Generator().manual_seed(0)
    diffs = []
    for _ in range(splits):
        half = (torch.randperm(int(doc.max()) + 1, generator=g) < (int(doc.max()) + 2) // 2)[doc]
        diffs.append((codes[half].mean(0) - codes[~half].mean(0)).abs())
    return float(torch.quantile(torch.cat(diffs), quantile))


def test_shift_flags_a_small_latent_raised_beside_large_unchanged_ones(tmp_path):
    """Latent 7 (codes 0..0.4) rises by 50% where it fires; latents 0-3 fire at up to 20 and do not change. The
    document-level sign-flip test with Benjamini-Hochberg flags 7 and only 7; the old pooled-quantile rule (whose
    threshold the large latents set) would not have."""
    from rlhf_lens.decompose.config import DecomposeConfig, ShiftSettings
    from rlhf_lens.decompose.shift import count_among, shared_dictionary_shift

    m, planted = 24, 7
    sae, dictionary = _orthonormal_sae(m, 2)
    g = torch.Generator().manual_seed(2)
    index = _index(seed=3)
    n = len(index[0])
    scale = torch.full((m,), 2.0)
    scale[:4], scale[planted] = 20.0, 0.4
    codes = _sparse_codes(g, n, m, scale)
    raised = codes.clone()
    raised[:, planted] *= 1.5
    base = codes @ dictionary + 0.01 * torch.randn(n, D, generator=g)
    tuned = raised @ dictionary + 0.01 * torch.randn(n, D, generator=g)
    base_store, tuned_store = _write_store(tmp_path / "b", base, index), _write_store(tmp_path / "t", tuned, index)
    result = shared_dictionary_shift(sae, base_store, tuned_store, 1, DecomposeConfig(shift=ShiftSettings(top=5)))
    flagged = [t for t in result["top"] if t["shifted"]]
    assert [t["latent"] for t in flagged] == [planted] and result["n_shifted"] == 1 and result["n_rising"] == 1
    row = flagged[0]
    assert row["mean_change"] > 0 and row["z"] > 5 and row["q"] <= 0.05 and row["p"] <= row["q"]
    # codes of 0.034..0.05 now pass the encoder's 0.05 threshold: its firing rate rose a little too, truly
    assert 0 < row["rate_change"] < 0.02
    assert result["level"] == 0.05 and "sign-flip" in result["test"] and "Benjamini-Hochberg" in result["test"]
    # by |mean change| the large latents' noise ranks first; by z the planted latent does
    by_z = shared_dictionary_shift(sae, base_store, tuned_store, 1, DecomposeConfig(shift=ShiftSettings(rank_by="z")))
    assert by_z["top"][0]["latent"] == planted
    assert count_among(result, [planted, 3]) == {"count": 1, "of": 1, "latents": [planted], "features": 2}
    # the old rule: the planted change is far below the pooled quantile the large latents set
    base_codes = sae.encode(base).detach()
    assert row["mean_change"] < 0.5 * _old_pooled_threshold(base_codes, index[1])
    same = shared_dictionary_shift(sae, base_store, base_store, 1, DecomposeConfig())
    assert same["n_shifted"] == 0 and same["top"] == []


def _null_draw(g, signal: torch.Tensor, doc: torch.Tensor, dictionary: torch.Tensor) -> torch.Tensor:
    """signal + a document-wide offset of each latent + token noise, all through the dictionary."""
    m = signal.shape[1]
    per_doc = torch.rand(int(doc.max()) + 1, m, generator=g)[doc] * 0.5
    return (signal + per_doc + _sparse_codes(g, len(doc), m, torch.ones(m))) @ dictionary


def test_shift_under_the_global_null_flags_about_its_nominal_share(tmp_path):
    """tuned and base are two draws of the same law per token around a shared signal, with a per-document offset
    drawn separately for each (tokens of a document are correlated, documents are not): swapping base and tuned
    inside a document changes nothing in law. Over 8 seeds x 24 latents the share of p <= 0.05 is about 5% (its
    95% interval holds 5%), and at the false-discovery level 0.05 at most one seed flags any latent."""
    from rlhf_lens.decompose.config import DecomposeConfig, ShiftSettings
    from rlhf_lens.decompose.shift import shared_dictionary_shift
    from rlhf_lens.nulls import binomial_interval

    m = 24
    sae, dictionary = _orthonormal_sae(m, 5)
    p_values, seeds_flagging = [], 0
    for seed in range(8):
        g = torch.Generator().manual_seed(100 + seed)
        index = _index(seed=seed)
        doc, n = index[1], len(index[0])
        scale = torch.full((m,), 2.0)
        scale[:4] = 20.0
        signal = _sparse_codes(g, n, m, scale)

        base, tuned = (_null_draw(g, signal, doc, dictionary) for _ in range(2))
        folder = tmp_path / f"s{seed}"
        result = shared_dictionary_shift(sae, _write_store(folder / "b", base, index),
                                         _write_store(folder / "t", tuned, index), 1,
                                         DecomposeConfig(shift=ShiftSettings(top=m)))
        p_values += [t["p"] for t in result["top"]]
        seeds_flagging += result["n_shifted"] > 0
    hits = sum(p <= 0.05 for p in p_values)
    lo, hi = binomial_interval(hits, len(p_values))
    assert len(p_values) >= 8 * (m - 1) and lo <= 0.05 <= hi, (hits, len(p_values))
    assert seeds_flagging <= 1


# --- placebo table ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".json"])
def test_placebo_table_is_a_seeded_permutation(tmp_path, suffix):
    from rlhf_lens.rewards import load_utility_table, shuffled_table, write_table

    table = {"good": 1.9, "bad": -2.5, "great": 3.1, "awful": -3.0, "fine": 0.8, "meh": -0.3, "can't stand": -2.0,
             "a,b": 0.1}
    placebo = shuffled_table(table, seed=4)
    assert list(placebo) == list(table) and sorted(placebo.values()) == sorted(table.values())
    assert placebo != table
    assert shuffled_table(table, seed=4) == placebo and shuffled_table(table, seed=5) != placebo
    path = write_table(placebo, tmp_path / f"placebo{suffix}")
    assert load_utility_table(f"table:{path}") == placebo
    assert shuffled_table({"a": 1.0, "b": 1.0}, 0) == {"a": 1.0, "b": 1.0}
    assert sorted(shuffled_table({"a": 1.0, "b": 2.0}, 0).items()) == [("a", 2.0), ("b", 1.0)]
    with pytest.raises(UserError):
        write_table({"Good": 1.0}, tmp_path / "x.tsv")


def test_decompose_config_checks():
    """Each method's settings are checked in their own section; the message names the key as the caller spells it."""
    from rlhf_lens.decompose.config import (
        CrosscodingSettings,
        DecomposeConfig,
        DiffSAESettings,
        ShiftSettings,
        SteerSettings,
        check_decompose_config,
    )
    from rlhf_lens.rules import flag, in_section

    check_decompose_config(DecomposeConfig())
    for bad, named in ((dict(diffsae=DiffSAESettings(seeds=[])), "diffsae.seeds"),
                       (dict(steer=SteerSettings(norm="x")), "steer.norm"),
                       (dict(shift=ShiftSettings(rank_by="x")), "shift.rank_by"),
                       (dict(site="x"), "site"),
                       (dict(diffsae=DiffSAESettings(epochs=-1)), "diffsae.epochs"),
                       (dict(crosscoding=CrosscodingSettings(arch="x")), "crosscoding.arch"),
                       (dict(crosscoding=CrosscodingSettings(scaling_threshold=0.0)), "crosscoding.scaling_threshold")):
        with pytest.raises(UserError, match=named.replace(".", r"\.")):
            check_decompose_config(DecomposeConfig(**bad))
    with pytest.raises(UserError, match=r"^decompose.diffsae.k must be >= 1 \(got 0\)$"):
        check_decompose_config(DecomposeConfig(diffsae=DiffSAESettings(k=0)), in_section("decompose"))
    with pytest.raises(UserError, match=r"^--steer-random must be >= 1 \(got 0\)$"):
        check_decompose_config(DecomposeConfig(steer=SteerSettings(random=0)), flag)


# --- steering by a diff-SAE latent (tiny model) -----------------------------------------------------------


@pytest.fixture(scope="module")
def word_direction(tiny_model_dir, tmp_path_factory):
    """As in tests/test_diff.py: a vector of norm 2 aimed at four whole words through the final norm and
    unembedding of the tiny model, the three words it pushes most, and a table listing them."""
    from rlhf_lens.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    v, words, ids = plant_direction(model, tok, 2.0)
    root = tmp_path_factory.mktemp("words")
    table = root / "table.tsv"
    table.write_text("".join(f"{w}\t3\n" for w in words))
    return {"model": model, "tokenizer": tok, "v": v, "words": words, "ids": ids,
            "table": table, "root": root}


def test_steering_by_the_top_latent_beats_random_directions(word_direction, corpus_file):
    """Δ = the word vector on ~30% of tokens (a random vector of norm 1 on others): the diff-SAE's top latent is
    that vector, and steering base by it raises the planted words and the reward of a table of them beyond
    random directions of the same norm."""
    from rlhf_lens.data import load_corpus
    from rlhf_lens.decompose.config import DecomposeConfig, DiffSAESettings, SteerSettings
    from rlhf_lens.decompose.diffsae import decoder_rows, diff_sae, steer_top_latents
    from rlhf_lens.decompose.paired_store import delta_store
    from rlhf_lens.diff import steering
    from rlhf_lens.rewards import load_reward

    root, v = word_direction["root"], word_direction["v"]
    g = torch.Generator().manual_seed(5)
    index = _index(seed=6)
    tok = index[0]
    base = torch.randn(len(tok), D, generator=g)
    other = _unit(g)
    tuned = base + (tok < 90)[:, None] * v + ((tok >= 90) & (tok < 150))[:, None] * other \
        + 0.05 * torch.randn(len(tok), D, generator=g)
    delta = delta_store(_write_store(root / "b", base, index), _write_store(root / "t", tuned, index), 1, root / "d")
    config = DecomposeConfig(diffsae=DiffSAESettings(arch="topk", k=1, expansion=1.0, epochs=20, batch_size=64,
                                                     lr=3e-3, seeds=[0], top=3),
                             steer=SteerSettings(latents=2, alpha=1.2, random=4))
    result, saes = diff_sae(delta, 1, config)
    top = result["top"][0]["latent"]
    assert torch.cosine_similarity(decoder_rows(saes[0])[top], v, dim=0) > 0.9
    assert result["agreement"] is None and result["top"][0]["agreement"] is None  # one seed: no agreement

    model, tokenizer = word_direction["model"], word_direction["tokenizer"]
    prompts = steering.heldout_prompts(load_corpus(str(corpus_file)), tokenizer, 24, "test", [], 0)
    reward = load_reward(f"table:{word_direction['table']}")
    steered = steer_top_latents(result, saes, model, tokenizer, reward, prompts, config, new_tokens=8,
                                watch_ids=word_direction["ids"])
    first, second = steered["latents"]
    assert first["latent"] == top and steered["steer_norm"] == "contribution" and steered["alpha"] == 1.2
    assert abs(first["norm"] - 1.2 * result["top"][0]["mean_contribution"]) < 1e-4
    # the planted words' log-probability rises, where every random direction of the same norm lowers it
    assert first["watched"]["change"] > 0 > max(first["watched"]["null"])
    assert set(word_direction["ids"]) & set(first["top_token_ids"][:5])
    # the reward of a table of those words: above every random direction (24 prompts x 8 tokens are too few
    # for the paired gain over base to reach 2 standard errors, so `beats_null` is not asserted)
    assert first["gain"] > 0 and first["reward"] > max(first["null"]["rewards"])
    assert first["watched"]["change"] > second["watched"]["change"] and not second["beats_null"]
    assert len(first["null"]["rewards"]) == 4 and steered["n_prompts"] == 24


# --- crosscoder with Latent Scaling -----------------------------------------------------------------------


def test_crosscoder_latent_scaling_classes_planted_directions_and_l1_shrinks():
    """Seven orthonormal concepts firing on ~20% of tokens each: S1-S3 shared, W shared but half as strong in base
    (and weak in absolute terms), T1/T2 tuned-only, B1 base-only. The BatchTopK crosscoder + Latent Scaling class
    each concept's latent correctly. The L1 crosscoder trained the same way shows complete shrinkage: W's base
    decoder is (almost) gone, so its decoder norms call it tuned-only, while Latent Scaling, which asks base's
    error for W's direction, still calls it shared."""
    from rlhf_lens.decompose.config import CrosscodingSettings, DecomposeConfig
    from rlhf_lens.decompose.crosscoder import crosscoder_report, match_latents, train_crosscoder

    g = torch.Generator().manual_seed(0)
    d, n = 24, 8192
    truth = ["shared"] * 4 + ["tuned-only"] * 2 + ["base-only"]
    base_scale = torch.tensor([1, 1, 1, 0.5, 0, 0, 1.0])
    tuned_scale = torch.tensor([1, 1, 1, 1.0, 1, 1, 0])
    dirs = torch.linalg.qr(torch.randn(d, 7, generator=g))[0].t()
    mag = (torch.rand(n, 7, generator=g) < 0.2) * (3 + 2 * torch.rand(n, 7, generator=g))
    mag[:, 3] *= 0.5  # W: 1.5-2.5 in tuned, 0.75-1.25 in base
    h_base = (mag * base_scale) @ dirs + 0.02 * torch.randn(n, d, generator=g)
    h_tuned = (mag * tuned_scale) @ dirs + 0.02 * torch.randn(n, d, generator=g)
    common = dict(expansion=1.0, k=2, steps=1500, lr=3e-3)

    config = DecomposeConfig(crosscoding=CrosscodingSettings(arch="batchtopk", **common))
    cc = train_crosscoder(h_base, h_tuned, config)
    report = crosscoder_report(cc, h_base, h_tuned, config)
    matched = match_latents(cc, dirs, report)
    # one shared concept is partly merged with another: its tuned decoder row is at cosine ~0.84 (the sum of both
    # models' rows, the direction read before, at ~0.86)
    assert all(m["cosine"] > 0.8 for m in matched), matched
    assert [m["class"] for m in matched] == truth
    w = next(x for x in report["latents"] if x["latent"] == matched[3]["latent"])
    assert abs(w["nu_error"] - 0.5) < 0.05 and abs(w["nu_reconstruction"] - 0.5) < 0.05
    assert report["fvu"]["base"] < 0.01 and report["threshold"] > 0 and abs(report["mean_l0"] - 2) < 0.3
    assert sum(report["counts"].values()) == cc.m

    l1 = DecomposeConfig(crosscoding=CrosscodingSettings(arch="l1", l1=1.5, **common))
    cc1 = train_crosscoder(h_base, h_tuned, l1)
    report1 = crosscoder_report(cc1, h_base, h_tuned, l1)
    matched1 = match_latents(cc1, dirs, report1)
    assert matched1[3]["cosine"] > 0.95
    w1 = next(x for x in report1["latents"] if x["latent"] == matched1[3]["latent"])
    assert w1["norm_class"] == "tuned-only" and w1["relative_norm"] > 0.9  # complete shrinkage of base's decoder
    assert w1["class"] == "shared" and w1["nu_error"] > 0.35  # base's error still holds W
    assert [m["norm_class"] for m in matched1] != truth
    assert report1["k"] is None and report1["l1"] == 1.5


def test_crosscoder_on_paired_stores(planted_pair, tmp_path):
    from rlhf_lens.decompose.config import CrosscodingSettings, DecomposeConfig
    from rlhf_lens.decompose.crosscoder import crosscoder_analysis

    config = DecomposeConfig(crosscoding=CrosscodingSettings(k=4, steps=50, rows=1000))
    report, cc = crosscoder_analysis(planted_pair["base"], planted_pair["tuned"], 1, config, out=tmp_path / "cc.st")
    # a random fifth of the sampled rows is held out of training; Latent Scaling and the FVU are measured on it
    assert report["n_rows"] == 200 and report["n_train"] == 800 and report["layer"] == 1
    assert report["arch"] == "batchtopk"
    assert (tmp_path / "cc.st").is_file() and cc.m == 2 * D


def test_crosscoder_threshold_comes_from_shuffled_rows():
    """Rows in store order (document-contiguous: here the first half fires weakly, the second strongly) give the
    same BatchTopK inference threshold as the same rows shuffled: batches are drawn from shuffled rows."""
    from rlhf_lens.decompose.config import CrosscodingSettings, DecomposeConfig
    from rlhf_lens.decompose.crosscoder import train_crosscoder

    g = torch.Generator().manual_seed(3)
    n, d = 2048, 16
    h = torch.randn(n, d, generator=g) * torch.cat([torch.full((n // 2, 1), 0.2), torch.full((n // 2, 1), 2.0)])
    config = DecomposeConfig(crosscoding=CrosscodingSettings(k=2, steps=20, batch_size=64))
    cc = train_crosscoder(h, h, config)
    trained = float(cc.threshold)

    def threshold(rows: torch.Tensor) -> float:
        cc.set_threshold(h[rows], h[rows], 64)
        return float(cc.threshold)

    shuffled, in_store_order = threshold(torch.randperm(n, generator=g)), threshold(torch.arange(n))
    assert trained == pytest.approx(shuffled, rel=0.1)
    assert abs(in_store_order - trained) > 0.2 * trained  # store order would have set another threshold


def test_store_texts_and_site_checks(tmp_path, planted_pair):
    """Steering prompts leave out the documents the stores hold (their split and max_docs); a store of another
    site than decompose.site is refused in one line naming the key."""
    from rlhf_lens.data import Corpus, Document
    from rlhf_lens.decompose.run import check_site, store_texts
    from rlhf_lens.store import ActivationStore

    docs = [Document(text=f"document number {i} " * 20) for i in range(10)]
    corpus = Corpus("c", {"test": docs, "train": docs})
    store = ActivationStore(planted_pair["root"] / "base")
    store.manifest.update(split="test", max_docs=4)
    held = store_texts(corpus, store, "test")
    assert len(held) == 4 and set(held) <= {d.text for d in docs} and held == corpus.texts("test", 4)
    assert store_texts(corpus, store, "train") == []
    check_site({"base": store}, "mlp")
    with pytest.raises(UserError, match=r"^decompose\.site is residual but the base store .* holds mlp activations"):
        check_site({"base": store}, "residual")


def test_old_shift_keys_are_read_with_a_note_and_site_residual_needs_saved_activations(capsys):
    from rlhf_lens.config import config_from_dict, load_config, validate

    old = config_from_dict({"decompose": {"shift_splits": 8, "shift": {"quantile": 0.9, "top": 3}}})
    assert old.decompose.shift.top == 3
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 2 and all("sign-flip test with Benjamini-Hochberg at decompose.level" in x for x in notes)
    assert notes[0].startswith("note: decompose.shift_splits is no longer read")
    with pytest.raises(UserError, match=r"^decompose.site = residual .* set diff.save_activations = true"):
        validate(load_config(overrides=["decompose.site=\"residual\""]))
    validate(load_config(overrides=["decompose.site=\"residual\"", "diff.save_activations=true"]))


def test_run_reads_the_residual_stores_the_diff_saved(tmp_path, planted_pair):
    """decompose.site = residual in a run: the diff folder's acts/base and acts/tuned (diff.json's
    files.activations); a diff that saved none, or not the analysed block, is refused naming the key to set."""
    from rlhf_lens.io import write_json
    from rlhf_lens.pipeline.stages import _residual_stores

    diff = tmp_path / "diff"
    index = _index(8, 4)
    for side in ("base", "tuned"):
        _write_store(diff / "acts" / side, torch.randn(32, D), index)
    write_json(diff / "diff.json", {"files": {"activations": {"base": "acts/base", "tuned": "acts/tuned"}}})
    stores = _residual_stores(tmp_path, {"diff": {"dir": "diff"}}, [1])
    assert stores == {"base": diff / "acts" / "base", "tuned": diff / "acts" / "tuned"}
    with pytest.raises(UserError, match=r"saved blocks \[1\], not block\(s\) 2 .* divergence.rank = parameters"):
        _residual_stores(tmp_path, {"diff": {"dir": "diff"}}, [1, 2])
    write_json(diff / "diff.json", {"files": {}})
    with pytest.raises(UserError, match=r"set diff.save_activations = true"):
        _residual_stores(tmp_path, {"diff": {"dir": "diff"}}, [1])
