"""The MoE-vs-dense comparison: cost curves, the FLOPs to match, routing shares, config checks,
and a toy end-to-end run (twice: the re-run trains nothing and writes the same numbers)."""

import json
import os
import runpy

import jax
import numpy as np
import pytest

from moe_rl.data import corpus, facts, skills
from moe_rl.models import transformer
from moe_rl.recipes import moe_vs_dense
from moe_rl.train import compare, probes
from tests.utils import ROOT, make_config


def test_cost_to_reach_interpolates_between_evaluations():
    curve = [
        {"step": 10, "flops": 100.0, "seconds": 1.0, "loss": 3.0},
        {"step": 20, "flops": 200.0, "seconds": 3.0, "loss": 2.0},
        {"step": 30, "flops": 300.0, "seconds": 4.0, "loss": 1.0},
    ]
    # 1.5 is halfway from 2.0 (200 FLOPs, 3 s) to 1.0 (300 FLOPs, 4 s).
    assert compare.cost_to_reach(curve, "loss", 1.5, "flops") == pytest.approx(250.0)
    assert compare.cost_to_reach(curve, "loss", 1.5, "seconds") == pytest.approx(3.5)
    assert compare.cost_to_reach(curve, "loss", 2.0, "flops") == pytest.approx(200.0)
    assert compare.cost_to_reach(curve, "loss", 5.0, "flops") == 100.0  # already below
    assert compare.cost_to_reach(curve, "loss", 0.5, "flops") is None  # never reached
    assert compare.cost_to_reach(curve, "other", 0.5, "flops") is None


def test_trailing_mean_smooths_both_curves_alike():
    losses = [3.0, 1.0, None, 2.0, 0.0]
    curve = [{"step": s, "flops": 10.0 * s, "loss": v} for s, v in enumerate(losses, start=1)]
    smooth = compare.trailing_mean(curve, "loss", window=2)
    assert [p["loss"] for p in smooth] == [3.0, 2.0, 1.0, 2.0, 1.0]  # a missing value skipped
    assert [p["flops"] for p in smooth] == [p["flops"] for p in curve] and curve[1]["loss"] == 1.0
    assert [p["loss"] for p in compare.trailing_mean(curve, "loss", window=1)] == losses
    # a dense curve whose last evaluation dips: the smoothed target is the recent level
    dense = [{"step": s, "flops": 10.0 * s, "loss": v} for s, v in enumerate([2, 1, 1, 0.4], 1)]
    target = compare.trailing_mean(dense, "loss", 3)[-1]["loss"]
    assert target == pytest.approx(0.8)


def test_training_seconds_skip_compilation_and_count_interrupted_steps_at_the_median():
    times = [10.0, 1.0, 2.0, 9.0, 1.0, 3.0]  # step 1 compiles, step 4 follows an evaluation
    rows = [{"step": s, "step_seconds": t} for s, t in enumerate(times, start=1)]
    rows.append({"step": 3, "val_loss": 1.0})  # evaluation rows carry no step time
    seconds = compare.training_seconds(rows, interrupted={4})
    # median of steps 2, 3, 5, 6 = 1.5
    assert seconds == pytest.approx({1: 0.0, 2: 1.0, 3: 3.0, 4: 4.5, 5: 5.5, 6: 8.5})


def test_cost_curve_points_at_evaluations():
    rows = [{"step": s, "step_seconds": 1.0} for s in range(1, 7)]
    rows += [{"step": 3, "val_loss": 2.0}, {"step": 6, "val_loss": 1.0}]
    curve = compare.cost_curve(rows, {3: {"val_attr_loss": 4.0}}, flops_per_step=10.0, eval_every=3)
    assert [p["step"] for p in curve] == [3, 6]
    assert curve[0] == {
        "step": 3,
        "flops": 30.0,
        "seconds": 2.0,
        "val_loss": 2.0,
        "val_attr_loss": 4.0,
    }
    assert curve[1]["flops"] == 60.0 and curve[1]["seconds"] == 5.0


def _slow_shares(ids_NTK, kinds_T, C, E):
    N, T, K = ids_NTK.shape
    shares = np.zeros((N, C, E))
    for n in range(N):
        for c in range(C):
            tokens = [t for t in range(T) if kinds_T[t] == c]
            for t in tokens:
                for k in range(K):
                    shares[n, c, ids_NTK[n, t, k]] += 1.0 / (K * len(tokens))
    return shares


def test_routing_shares_match_a_loop_over_tokens():
    rng = np.random.default_rng(0)
    N, T, K, C, E = 3, 200, 4, 5, 16
    ids = np.stack([[rng.choice(E, K, replace=False) for _ in range(T)] for _ in range(N)])
    kinds = rng.integers(-1, C - 1, T)  # kind C-1 absent, -1 = padding
    shares, tokens = probes.routing_shares(ids, kinds, C, E)
    np.testing.assert_allclose(shares, _slow_shares(ids, kinds, C, E), atol=1e-12)
    assert tokens.tolist() == [int(np.sum(kinds == c)) for c in range(C)]
    np.testing.assert_allclose(shares[:, : C - 1].sum(-1), 1.0)  # each present kind sums to 1
    assert not shares[:, C - 1].any()


def test_mutual_information_of_routing():
    tokens = np.array([100, 300])
    uniform = np.full((2, 4), 0.25)
    assert probes.mutual_information_bits(uniform, tokens) == pytest.approx(0.0, abs=1e-12)
    apart = np.array([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])  # kinds never share an expert
    p = tokens / tokens.sum()
    assert probes.mutual_information_bits(apart, tokens) == pytest.approx(-np.sum(p * np.log2(p)))


@pytest.mark.parametrize("scan", [False, True])
def test_expert_choices_are_the_forward_passes_routing(scan):
    """Re-routed from the captured MoE inputs, the experts' token counts equal the forward
    pass's own expert_counts (the routing bias is random, so it matters)."""
    cfg = make_config("tiny", scan_layers=scan, num_nextn_predict_layers=0)
    params, state = transformer.init(cfg, jax.random.key(0))
    state = jax.tree.map(lambda b: jax.random.normal(jax.random.key(1), b.shape) * 0.1, state)
    docs = list(facts.documents(6, 10, 0, "train"))
    batch = probes.document_batch(docs, len(facts.KINDS) - 1)
    _, _, aux = transformer.forward(
        cfg, params, state, batch["tokens"], batch["positions"], batch["segment_ids"], mtp=False
    )
    ids = probes.expert_choices(cfg, params, state, batch)
    assert ids.shape == (cfg.num_moe_layers, *batch["tokens"].shape, cfg.num_experts_per_tok)
    valid = batch["segment_ids"] > 0
    counts = np.stack(
        [
            np.bincount(ids[n][valid].ravel(), minlength=cfg.n_routed_experts)
            for n in range(cfg.num_moe_layers)
        ]
    )
    np.testing.assert_array_equal(counts, np.asarray(aux["expert_counts"]))


def test_document_batch_kinds_follow_the_spans():
    docs = list(skills.documents(3, 5, 1.0, 0, "validation"))
    other = len(skills.kinds(5)) - 1
    batch = probes.document_batch(docs, other)
    assert batch["tokens"].shape[1] % 8 == 0
    for r, doc in enumerate(docs):
        n = len(doc.text) + 2
        assert batch["segment_ids"][r, :n].all() and not batch["segment_ids"][r, n:].any()
        kinds = batch["kinds"][r]
        assert (kinds[n:] == -1).all() and kinds[0] == kinds[n - 1] == other
        for kind, start, end in doc.spans:
            assert (kinds[1 + start : 1 + end] == kind).all()


def test_kind_losses_average_the_measured_kinds(tiny):
    """The value loss is the token-weighted mean over the measured kinds, and each kind's loss
    is the mean of the per-token losses of a direct forward pass."""
    cfg, params, state = tiny
    kinds = skills.kinds(3)
    docs = list(skills.documents(4, 3, 0.0, 0, "validation"))
    batch = probes.document_batch(docs, len(kinds) - 1)
    out = probes.kind_losses(cfg, params, state, batch, kinds, measured=3)
    logits, _, _ = transformer.forward(
        cfg, params, state, batch["tokens"], batch["positions"], batch["segment_ids"], mtp=False
    )
    logp = jax.nn.log_softmax(np.asarray(logits[:, :-1], np.float64), axis=-1)
    nll = -np.take_along_axis(np.asarray(logp), batch["tokens"][:, 1:, None], -1)[..., 0]
    target = batch["kinds"][:, 1:]
    for k, kind in enumerate(kinds):
        key = f"val_value_loss/{kind}" if k < 3 else f"val_{kind}_loss"
        assert out[key] == pytest.approx(nll[target == k].mean(), rel=1e-4)
    assert out["val_value_loss"] == pytest.approx(
        nll[(target >= 0) & (target < 3)].mean(), rel=1e-4
    )


def toy_config(corpus_name: str = "skills", **flat):
    path = os.path.join(ROOT, "experiments/moe_vs_dense.py")
    config = runpy.run_path(path)["get_config"](corpus_name)
    small = dict(num_hidden_layers=1, hidden_size=16, num_attention_heads=2)
    data = {
        "skills": {"data.num_skills": 4},
        "facts": {"data.num_people": 8},
        "lookup": {"data.num_keys": 40},
    }[corpus_name]
    config.update_from_flattened_dict(
        {
            "train.num_steps": 4,
            "train.batch_size": 2,
            "train.seq_len": 192,
            "train.eval_every": 2,
            "train.eval_batches": 1,
            "data.num_documents": 32,
            "data.num_validation": 8,
            **data,
            **{f"{m}_model.{k}": v for m in ("moe", "dense") for k, v in small.items()},
            **flat,
        }
    )
    return config


@pytest.mark.parametrize(
    "flat, key",
    [
        ({"train.eval_every": 0}, "train.eval_every"),
        ({"dense_model.n_routed_experts": 4}, "dense_model.n_routed_experts"),
        ({"moe_model.n_routed_experts": 0}, "moe_model.n_routed_experts"),
        ({"moe_model.moe_intermediate_size": 64}, "max_flops_gap"),
        ({"data.tokenizer": "bpe:300"}, "data.tokenizer"),
        ({"data.num_skills": 99}, "num_skills=99"),
        ({"data.zipf": -1.0}, "zipf=-1.0"),
    ],
)
def test_config_errors_name_the_key(flat, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        compare.prepare(toy_config(**flat))


def test_prepare_names_the_corpus_by_its_size_and_keeps_every_checkpoint():
    config = compare.prepare(toy_config())
    assert config.data.name == corpus.skills_name(4, 0.0, 32, 8, 0)  # the experiment's zipf 0
    assert config.train.checkpoint_every == 2 and config.train.keep_checkpoints == 3
    assert compare.prepare(toy_config("facts")).data.name == corpus.facts_name(8, 32, 8, 0)
    assert compare.prepare(toy_config("lookup")).data.name == corpus.lookup_name(40, 32, 8, 0)


def test_toy_comparison_end_to_end_and_rerun(tmp_path):
    config = toy_config(**{"data.data_dir": str(tmp_path / "tfds")})
    workdir = str(tmp_path / "run")
    result = moe_vs_dense.run(config, workdir)
    for key in (
        "moe_val_loss",
        "dense_val_loss",
        "moe_val_loss_all_tokens",
        "moe_flops_per_token",
        "dense_train_flops",
        "dense_train_seconds",
    ):
        assert isinstance(result[key], float) and np.isfinite(result[key]), key
    assert result["moe_train_flops"] == pytest.approx(4 * 2 * 192 * result["moe_flops_per_token"])
    ratio = result["flops_ratio_to_match"]
    assert ratio is None or 0 < ratio <= 1.1
    assert [p["step"] for p in result["curves"]["dense"]] == [2, 4]
    spec = result["specialisation"]
    shares = np.asarray(spec["shares"])
    assert spec["kinds"] == list(skills.kinds(4))
    assert shares.shape == (1, len(spec["kinds"]), config.moe_model.n_routed_experts)
    np.testing.assert_allclose(shares.sum(-1)[:, np.asarray(spec["tokens"]) > 0], 1.0)
    for name in ("comparison.json", "comparison.md", "comparison.png", "specialisation.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, "comparison.json")) as f:
        first = json.load(f)
    again = moe_vs_dense.run(config, workdir)  # finished: nothing is trained, nothing becomes null
    with open(os.path.join(workdir, "comparison.json")) as f:
        assert json.load(f) == first
    assert again["moe_val_loss"] == result["moe_val_loss"]
    # The row and the figure of `main --seeds` (the sweep's seed folders hold comparison.json).
    row = moe_vs_dense.seed_row(result)
    assert row["moe loss"] == result["moe_val_loss"]
    assert row["dense loss"] == result["dense_val_loss"]
    assert row["FLOPs ratio"] == (ratio if ratio is not None else float("inf"))
    assert 0 <= row["I(kind;expert) bits"] <= np.log2(len(spec["kinds"]))
    sweep_dir = tmp_path / "sweep"
    os.makedirs(sweep_dir / "seed_3")
    os.rename(os.path.join(workdir, "comparison.json"), sweep_dir / "seed_3" / "comparison.json")
    assert moe_vs_dense.seed_figure(str(sweep_dir), [3]) == str(sweep_dir / "seeds.png")
    assert os.path.exists(sweep_dir / "seeds.png")
