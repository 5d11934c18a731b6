"""Recipe 'moe_vs_dense': pretrain an MoE and a dense model on the same tokens and compare.

DeepSeekMoE's claim at laptop scale: at equal *activated* FLOPs per token, an MoE of many
fine-grained routed experts plus shared experts, with several times the total parameters,
learns more per training FLOP. Both models are trained by `lm.run` with identical data, train
and optim blocks (same seed: same initial data order), each into `<workdir>/<moe|dense>`.

What is measured, per model, at every evaluation step (`train.eval_every`):
- training FLOPs: steps x batch_size x seq_len x `counting.flops_per_token` (padding
  positions included: they are computed);
- training seconds: the measured step times of metrics.jsonl, step 1 (compilation) left out
  and a step that follows an evaluation or a checkpoint (whose time holds that work too)
  counted at the median step time;
- `val_loss`: lm.run's next-token loss on every token of the validation documents;
- on a labelled corpus (`moe_rl.data.labelled`: the skills or the facts corpus),
  `val_value_loss`: the loss on the tokens of its measured kinds only (coded letters of held-out
  entries of the same skills; attribute values of held-out renderings of the same people),
  evaluated from the checkpoint of each evaluation step, overall and per kind.
Then: the FLOPs (and seconds) the MoE needs to reach the dense model's final loss, linearly
interpolated between evaluations, and their ratios to the dense model's; and, from the MoE's
final checkpoint, which experts the positions predicting each kind (each skill's coded
letters, each attribute, the rest) are routed to in each MoE layer (`routing_shares`).
Re-running a finished comparison trains nothing and writes the same results.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import resource
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from moe_rl import plots
from moe_rl.checkpoint import Checkpointer
from moe_rl.data import corpus, labelled
from moe_rl.data.tokenizers import ByteTokenizer
from moe_rl.metrics import read_metrics
from moe_rl.models import counting, moe, transformer
from moe_rl.models.config import ModelConfig
from moe_rl.train import lm, loop

NAMES = ("moe", "dense")
EVAL_ROWS = 64  # validation documents per forward pass of the value-loss evaluation


def _invalid(message: str) -> ValueError:
    return ValueError(f"Invalid config: {message}")


def prepare(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with a labelled corpus named by its size (corpus.skills_name, facts_name) and the
    checkpoints the value-loss evaluation reads (one per evaluation, all kept); checks what the
    comparison needs, before anything compiles. Errors name the key."""
    config = ml_collections.ConfigDict(config.to_dict())
    d, t = config.data, config.train
    if t.eval_every <= 0 or t.eval_batches <= 0:
        raise _invalid(
            f"train.eval_every={t.eval_every} and train.eval_batches={t.eval_batches} must be > 0: "
            "the comparison needs validation curves"
        )
    if config.moe_model.n_routed_experts <= 0:
        raise _invalid(
            f"moe_model.n_routed_experts={config.moe_model.n_routed_experts} must be > 0"
        )
    if config.dense_model.n_routed_experts:
        raise _invalid(
            f"dense_model.n_routed_experts={config.dense_model.n_routed_experts} must be 0"
        )
    models = {name: ModelConfig.from_config(config[f"{name}_model"]) for name in NAMES}
    flops = {name: counting.flops_per_token(m, t.seq_len) for name, m in models.items()}
    gap = flops["moe"] / flops["dense"] - 1
    if abs(gap) > config.max_flops_gap:
        raise _invalid(
            f"moe_model activates {flops['moe']:.4g} FLOPs/token and dense_model "
            f"{flops['dense']:.4g} ({100 * gap:+.1f}%), more than max_flops_gap="
            f"{config.max_flops_gap}: size moe_model.moe_intermediate_size x "
            "(n_shared_experts + num_experts_per_tok) like dense_model.intermediate_size"
        )
    if corpus.is_labelled(d.name) and d.tokenizer != "byte":
        raise _invalid(
            f"data.tokenizer={d.tokenizer!r}: the value loss of {d.name} reads byte offsets, "
            "so it needs 'byte'"
        )
    try:
        if d.name == corpus.FACTS:
            d.name = corpus.facts_name(
                d.num_people, d.num_documents, d.num_validation, d.corpus_seed
            )
        elif d.name == corpus.SKILLS:
            d.name = corpus.skills_name(
                d.num_skills, d.zipf, d.num_documents, d.num_validation, d.corpus_seed
            )
    except ValueError as e:
        raise _invalid(f"data: {e}") from None
    t.checkpoint_every = t.eval_every
    t.keep_checkpoints = t.num_steps // t.eval_every + 1
    return config


def model_run_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The 'pretrain' config of one of the two models: everything but the other model."""
    sub = ml_collections.ConfigDict(config.to_dict())
    sub.recipe = "pretrain"
    sub.model = config[f"{name}_model"]
    del sub["moe_model"], sub["dense_model"], sub["max_flops_gap"]
    return sub


def train(sub: ml_collections.ConfigDict, workdir: str) -> dict:
    """lm.run unless this model's run is complete; returns its summary plus the machine load
    (1-minute load average before and after), the process CPU seconds and wall seconds of the
    call, kept in run_info.json. A complete run is not called again (lm.run would train no
    step and write a summary of nothing): its files are read back."""
    info_path = os.path.join(workdir, "run_info.json")
    summary = loop.finished_summary(workdir, sub.train.num_steps)
    if summary is not None:
        info = {}
        if os.path.exists(info_path):
            with open(info_path) as f:
                info = json.load(f)
        return {**summary, **info}
    cpu = lambda: resource.getrusage(resource.RUSAGE_SELF)
    before, start, load = cpu(), time.perf_counter(), os.getloadavg()[0]
    summary = lm.run(sub, workdir)
    after = cpu()
    info = {
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "process_cpu_seconds": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        "call_seconds": time.perf_counter() - start,
    }
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2)
    return {**{k: v for k, v in summary.items() if k != "plots"}, **info}


# ----------------------------------------------------------------------------------------------
# Cost curves.


def training_seconds(rows: list[dict], interrupted: set[int]) -> dict[int, float]:
    """Cumulative training seconds after each step, from the steps' measured `step_seconds`.

    Step 1 (compilation) counts 0. The steps in `interrupted` (those right after an evaluation
    or a checkpoint, whose time includes that work) count the median of the other steps.
    """
    times = {r["step"]: r["step_seconds"] for r in rows if "step_seconds" in r}
    clean = [s for step, s in times.items() if step > 1 and step not in interrupted]
    median = float(np.median(clean)) if clean else 0.0
    total, out = 0.0, {}
    for step in sorted(times):
        if step > 1:
            total += median if step in interrupted else times[step]
        out[step] = total
    return out


def cost_curve(
    rows: list[dict], extra: dict[int, dict], flops_per_step: float, eval_every: int
) -> list[dict]:
    """One point per evaluation step: step, flops, seconds and the validation metrics (those of
    metrics.jsonl and `extra[step]`)."""
    evals = {r["step"]: r for r in rows if "val_loss" in r}
    steps = sorted(set(evals) | set(extra))
    interrupted = {s + 1 for s in steps} | {
        s + 1 for s in range(eval_every, max(steps, default=0), eval_every)
    }
    seconds = training_seconds(rows, interrupted)
    points = []
    for step in steps:
        point = {"step": step, "flops": step * flops_per_step, "seconds": seconds.get(step)}
        point.update({k: v for k, v in evals.get(step, {}).items() if k.startswith("val_")})
        point.update(extra.get(step, {}))
        points.append(point)
    return points


def cost_to_reach(curve: list[dict], key: str, target: float, cost: str) -> float | None:
    """The `cost` ('flops' or 'seconds') at which `curve[key]` first falls to `target`, linearly
    interpolated between the two evaluations around the crossing (the first point's cost if
    it is already there); None if it never does."""
    points = [p for p in curve if p.get(key) is not None and p.get(cost) is not None]
    previous = None
    for p in points:
        if p[key] <= target:
            if previous is None or previous[key] == p[key]:
                return float(p[cost])
            w = (previous[key] - target) / (previous[key] - p[key])
            return float(previous[cost] + w * (p[cost] - previous[cost]))
        previous = p
    return None


# ----------------------------------------------------------------------------------------------
# The value loss and the routing, from checkpoints.


def document_batch(docs: list[labelled.Document], other: int) -> dict[str, np.ndarray]:
    """One document per row (BOS + text + EOS, byte tokens), padded to a multiple of 8: tokens,
    positions, segment_ids and `kinds` (the kind of each token, `other` for BOS and EOS, -1 on
    padding)."""
    tok = ByteTokenizer()
    ids = [tok.encode(d.text, add_bos=True, add_eos=True) for d in docs]
    L = -(-max(len(i) for i in ids) // 8) * 8
    batch = {k: np.zeros((len(docs), L), np.int32) for k in ("tokens", "positions", "segment_ids")}
    batch["kinds"] = np.full((len(docs), L), -1, np.int32)
    for r, (doc, row) in enumerate(zip(docs, ids, strict=True)):
        n = len(row)
        batch["tokens"][r, :n] = row
        batch["positions"][r, :n] = np.arange(n)
        batch["segment_ids"][r, :n] = 1
        batch["kinds"][r, :n] = labelled.token_kinds(doc, n, other)
    return batch


def _chunks(batch: dict[str, np.ndarray]):
    n = batch["tokens"].shape[0]
    for i in range(0, n, EVAL_ROWS):
        chunk = {k: v[i : i + EVAL_ROWS] for k, v in batch.items()}
        pad = EVAL_ROWS - chunk["tokens"].shape[0]  # one shape: one compilation
        if pad:
            chunk = {k: np.pad(v, ((0, pad), (0, 0)), constant_values=-1 if k == "kinds" else 0)
                     for k, v in chunk.items()}  # fmt: skip
        yield chunk


@functools.cache
def _kind_sums(cfg: ModelConfig, num_kinds: int):
    """Jitted (params, model_state, batch) -> (nll summed per kind, tokens per kind)."""

    def sums(params, model_state, b):
        logits, _, _ = transformer.forward(
            cfg, params, model_state, b["tokens"], b["positions"], b["segment_ids"], mtp=False
        )
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, b["tokens"][:, 1:, None], axis=-1)[..., 0]
        kind = b["kinds"][:, 1:]  # the kind of the predicted token
        onehot = jax.nn.one_hot(kind, num_kinds, dtype=jnp.float32)  # -1: all zeros
        return jnp.einsum("blk,bl->k", onehot, nll), onehot.sum((0, 1))

    return jax.jit(sums)


def kind_losses(
    cfg: ModelConfig, params, model_state, batch: dict, kinds: tuple[str, ...], measured: int
) -> dict:
    """Next-token loss (mean nats per token) on the tokens of each kind: 'val_value_loss' on
    those of the measured kinds (attribute values, coded letters), 'val_value_loss/<kind>' on
    each measured kind's, 'val_<kind>_loss' on each other kind's."""
    nll, count = np.zeros(len(kinds)), np.zeros(len(kinds))
    for chunk in _chunks(batch):
        s, c = jax.device_get(_kind_sums(cfg, len(kinds))(params, model_state, chunk))
        nll, count = nll + s, count + c
    out = {"val_value_loss": float(nll[:measured].sum() / max(count[:measured].sum(), 1.0))}
    for k, kind in enumerate(kinds):
        key = f"val_value_loss/{kind}" if k < measured else f"val_{kind}_loss"
        out[key] = float(nll[k] / max(count[k], 1.0))
    return out


def restore_model(cfg: ModelConfig, workdir: str, step: int) -> tuple[dict, dict]:
    """(params, model_state) of the checkpoint of `step` in a pretraining workdir of `cfg`."""
    params, model_state = jax.eval_shape(lambda: transformer.init(cfg, jax.random.key(0)))
    checkpointer = Checkpointer(workdir, read_only=True)
    model = checkpointer.restore_model(step, {"params": params, "model_state": model_state})
    checkpointer.close()
    return model["params"], model["model_state"]


def value_curve(cfg: ModelConfig, workdir: str, batch: dict, kinds, measured: int) -> dict:
    """{step: kind_losses} for every checkpoint of the workdir; cached in value_loss.json
    (only the steps not in it yet are evaluated)."""
    path = os.path.join(workdir, "value_loss.json")
    done = {}
    if os.path.exists(path):
        with open(path) as f:
            done = {int(k): v for k, v in json.load(f).items()}
    checkpointer = Checkpointer(workdir, read_only=True)
    steps = checkpointer.manager.all_steps()
    checkpointer.close()
    for step in sorted(set(steps) - set(done)):
        done[step] = kind_losses(cfg, *restore_model(cfg, workdir, step), batch, kinds, measured)
    with open(path, "w") as f:
        json.dump({str(k): done[k] for k in sorted(done)}, f, indent=2)
    return done


def expert_choices(cfg: ModelConfig, params, model_state, batch: dict) -> np.ndarray:
    """The routed experts chosen for every token by every MoE layer, [layers, B, L, K]: the
    input of each layer's MoE (the output of its post-attention norm, captured) routed again
    with its router and bias by `moe.route`, as the forward pass does."""
    inputs = {k: batch[k] for k in ("tokens", "positions", "segment_ids")}
    return np.asarray(_expert_choices(cfg)(params, model_state, inputs))


@functools.cache
def _expert_choices(cfg: ModelConfig):
    return jax.jit(lambda params, model_state, batch: _route_all(cfg, params, model_state, batch))


def _unscanned(cfg: ModelConfig, tree: dict) -> dict:
    """A params or model-state tree of scanned layers in the per-layer layout."""
    out = dict(tree)
    for kind, n in (("dense_layers", cfg.num_dense_layers), ("moe_layers", cfg.num_moe_layers)):
        if kind in tree:
            layer = tree[kind]["scan"]["layer"]
            out[kind] = {str(i): jax.tree.map(lambda a, i=i: a[i], layer) for i in range(n)}
    return out


def _route_all(cfg: ModelConfig, params, model_state, batch: dict) -> jax.Array:
    if cfg.scan_layers:  # nn.scan does not carry captured intermediates: unstack the layers
        params = _unscanned(cfg, params)
        model_state = {k: _unscanned(cfg, v) for k, v in model_state.items()}
        cfg = dataclasses.replace(cfg, scan_layers=False)
    keep = lambda module, method: module.name == "post_attention_layernorm"
    _, state = transformer.Transformer(cfg).apply(
        {"params": params, **model_state},
        batch["tokens"],
        batch["positions"],
        batch["segment_ids"],
        mtp=False,
        capture_intermediates=keep,
        mutable=["intermediates"],
    )
    layers = state["intermediates"]["moe_layers"]
    bias = model_state[moe.BIAS_COLLECTION]["moe_layers"]
    out = []
    for i in range(cfg.num_moe_layers):
        x_BLD = layers[str(i)]["post_attention_layernorm"]["__call__"][0]
        w_DE, b_E = params["moe_layers"][str(i)]["mlp"]["router"], bias[str(i)]["mlp"]["bias"]
        B, L, D = x_BLD.shape
        logits_TE = x_BLD.reshape(B * L, D).astype(jnp.float32) @ w_DE.astype(jnp.float32)
        _, ids_TK, _ = moe.route(logits_TE, b_E, cfg)
        out.append(ids_TK.reshape(B, L, -1))
    return jnp.stack(out)


def routing_shares(ids_NTK: np.ndarray, kinds_T: np.ndarray, num_kinds: int, num_experts: int):
    """shares[n, c, e]: of the routed copies (K per token) of the tokens of kind c in MoE layer
    n, the fraction that went to expert e (rows sum to 1; uniform routing gives 1/E). Tokens of
    kind < 0 (padding) are left out. Also returns the token count of each kind."""
    valid = kinds_T >= 0
    ids_NTK, kinds_T = ids_NTK[:, valid], kinds_T[valid]
    N, T, K = ids_NTK.shape
    counts_NCE = np.zeros((N, num_kinds, num_experts))
    flat = (kinds_T[None, :, None] * num_experts + ids_NTK).reshape(N, -1)
    for n in range(N):
        counts_NCE[n] = np.bincount(flat[n], minlength=num_kinds * num_experts).reshape(
            num_kinds, num_experts
        )
    tokens_C = np.bincount(kinds_T, minlength=num_kinds)
    return counts_NCE / np.maximum(tokens_C[None, :, None] * K, 1), tokens_C


def mutual_information_bits(shares_CE: np.ndarray, tokens_C: np.ndarray) -> float:
    """I(kind; expert) in bits for one layer, token kinds weighted by their counts: 0 when every
    kind is routed alike; at most log2(number of kinds)."""
    p_C = tokens_C / max(tokens_C.sum(), 1)
    joint = shares_CE * p_C[:, None]
    p_E = joint.sum(0)
    outer = p_C[:, None] * p_E[None, :]
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log2(joint[nz] / outer[nz])))


def specialisation(cfg: ModelConfig, workdir: str, step: int, batch: dict, kinds) -> dict:
    """Routing shares of the MoE's checkpoint at `step` over `batch`, by the kind of the token
    each position predicts (the routing that computes an attribute value or a coded letter)."""
    params, model_state = restore_model(cfg, workdir, step)
    chunks = list(_chunks(batch))
    ids = np.concatenate([expert_choices(cfg, params, model_state, c) for c in chunks], axis=1)
    predicted = np.concatenate([c["kinds"] for c in chunks], axis=0)
    predicted = np.pad(predicted[:, 1:], ((0, 0), (0, 1)), constant_values=-1)
    N, K = ids.shape[0], ids.shape[-1]
    shares, tokens = routing_shares(
        ids.reshape(N, -1, K), predicted.reshape(-1), len(kinds), cfg.n_routed_experts
    )
    return {
        "step": step,
        "kinds": list(kinds),
        "tokens": tokens.tolist(),
        "shares": shares.tolist(),  # [layer][kind][expert]
        "mutual_information_bits": [mutual_information_bits(s, tokens) for s in shares],
    }


# ----------------------------------------------------------------------------------------------
# The recipe.


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains config.moe_model and config.dense_model (same data, train, optim blocks), then
    writes comparison.json, comparison.md, comparison.png (loss vs FLOPs and vs seconds) and
    specialisation.png. Returns the comparison: plain scalars at the top level (a per-seed
    row), the details under 'models', 'curves' and 'specialisation'."""
    config = prepare(config)
    models = {name: ModelConfig.from_config(config[f"{name}_model"]) for name in NAMES}
    t = config.train
    runs = {
        name: train(model_run_config(config, name), os.path.join(workdir, name)) for name in NAMES
    }
    labels = corpus.is_labelled(config.data.name)
    batch = kinds = None
    if labels:
        docs = corpus.load_labelled(config.data.name, "validation", config.data.data_dir or None)
        kinds, measured = docs.kinds, docs.measured
        batch = document_batch(docs.__getitems__(list(range(len(docs)))), len(kinds) - 1)
    curves = {}
    for name, m in models.items():
        folder = os.path.join(workdir, name)
        extra = value_curve(m, folder, batch, kinds, measured) if labels else {}
        per_step = t.batch_size * t.seq_len * counting.flops_per_token(m, t.seq_len)
        curves[name] = cost_curve(read_metrics(folder), extra, per_step, t.eval_every)
    key = "val_value_loss" if labels else "val_loss"
    result = summarize(models, runs, curves, key, t.seq_len)
    result["curves"] = curves
    if labels:
        result["specialisation"] = specialisation(
            models["moe"], os.path.join(workdir, "moe"), curves["moe"][-1]["step"], batch, kinds
        )
    table = comparison_table(result)
    print(table)
    with open(os.path.join(workdir, "comparison.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(workdir, "comparison.md"), "w") as f:
        f.write(table + "\n")
    plots.plot_cost_curves(
        curves,
        [key, "val_loss"] if labels else ["val_loss"],
        os.path.join(workdir, "comparison.png"),
        target={key: result["dense_val_loss"]},
        title="MoE vs dense at equal activated FLOPs per token",
    )
    if labels:
        spec = result["specialisation"]
        plots.plot_expert_shares(
            spec["shares"], spec["kinds"], os.path.join(workdir, "specialisation.png")
        )
    return result


def summarize(models: dict, runs: dict, curves: dict, key: str, seq_len: int) -> dict:
    """The per-seed row (plain scalars) and the per-model details."""
    final = {name: curves[name][-1] if curves[name] else {} for name in NAMES}
    target = final["dense"].get(key)
    row = {"loss_key": key}
    for name in NAMES:
        row[f"{name}_val_loss"] = final[name].get(key)
        row[f"{name}_val_loss_all_tokens"] = final[name].get("val_loss")
        row[f"{name}_flops_per_token"] = counting.flops_per_token(models[name], seq_len)
        row[f"{name}_train_flops"] = final[name].get("flops")
        row[f"{name}_train_seconds"] = final[name].get("seconds")
    for cost in ("flops", "seconds"):
        reach = None if target is None else cost_to_reach(curves["moe"], key, target, cost)
        total = final["dense"].get(cost)
        row[f"moe_{cost}_to_match"] = reach
        ratio = None if reach is None or not total else reach / total
        row[f"{'flops' if cost == 'flops' else 'wall'}_ratio_to_match"] = ratio
    dense_s, moe_s = row["dense_train_seconds"], row["moe_train_seconds"]
    row["seconds_per_flop_ratio"] = (
        None
        if not (dense_s and moe_s)
        else (moe_s / row["moe_train_flops"]) / (dense_s / row["dense_train_flops"])
    )
    row["models"] = {name: {**counting.param_counts(models[name]), **runs[name]} for name in NAMES}
    return row


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def comparison_table(result: dict) -> str:
    """Markdown: a row per model, then the FLOPs and seconds the MoE needs to match."""
    key = result["loss_key"]
    rows = [
        f"| model | params | activated params | FLOPs/token | train FLOPs | train s | tokens/s "
        f"| {key} | val_loss (all tokens) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in NAMES:
        m = result["models"][name]
        rows.append(
            f"| {name} | {m['total']:,} | {m['activated']:,} "
            f"| {result[f'{name}_flops_per_token']:.4g} "
            f"| {_fmt(result[f'{name}_train_flops'], '.3g')} "
            f"| {_fmt(result[f'{name}_train_seconds'], '.0f')} "
            f"| {_fmt(m.get('tokens_per_s'), ',.0f')} "
            f"| {_fmt(result[f'{name}_val_loss'], '.4f')} "
            f"| {_fmt(result[f'{name}_val_loss_all_tokens'], '.4f')} |"
        )
    target = _fmt(result["dense_val_loss"], ".4f")
    rows.append("")
    if result["flops_ratio_to_match"] is None:
        rows.append(f"The MoE does not reach the dense model's final {key} {target}.")
    else:
        rows.append(
            f"The MoE reaches the dense model's final {key} {target} with "
            f"{result['moe_flops_to_match']:.3g} training FLOPs = "
            f"{result['flops_ratio_to_match']:.2f}x the dense model's, in "
            f"{_fmt(result['moe_seconds_to_match'], '.0f')} s = "
            f"{_fmt(result['wall_ratio_to_match'], '.2f')}x its training seconds "
            f"(the MoE's seconds per FLOP: {_fmt(result['seconds_per_flop_ratio'], '.2f')}x "
            "the dense model's)."
        )
    return "\n".join(rows)


def seed_row(result: dict) -> dict[str, float]:
    """A seed's row for `main --seeds`: both models' final losses, the MoE's FLOPs and seconds to
    reach the dense model's final loss as ratios of the dense model's (inf: never reached), and
    the routing's mutual information between token kind and expert (mean over MoE layers)."""
    inf = lambda v: float("inf") if v is None else float(v)
    row = {
        "moe loss": result["moe_val_loss"],
        "dense loss": result["dense_val_loss"],
        "FLOPs ratio": inf(result["flops_ratio_to_match"]),
        "seconds ratio": inf(result["wall_ratio_to_match"]),
        "moe s": result["moe_train_seconds"],
        "dense s": result["dense_train_seconds"],
    }
    spec = result.get("specialisation")
    if spec:
        row["I(kind;expert) bits"] = float(np.mean(spec["mutual_information_bits"]))
    return {k: float(v) for k, v in row.items() if v is not None}


def seed_figure(workdir: str, seeds: list[int]) -> str | None:
    """`main --seeds`' figure: every seed's MoE and dense loss against training FLOPs and
    seconds, read from <workdir>/seed_<n>/comparison.json."""
    curves, styles = {}, {}
    key = None
    for n, seed in enumerate(seeds):
        path = os.path.join(workdir, f"seed_{seed}", "comparison.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            result = json.load(f)
        key = result["loss_key"]
        for i, name in enumerate(NAMES):  # a colour per model, a line style per seed
            curves[f"{name} seed {seed}"] = result["curves"][name]
            styles[f"{name} seed {seed}"] = {"color": f"C{i}", "linestyle": ("-", "--", ":")[n % 3]}
    if not curves:
        return None
    return plots.plot_cost_curves(
        curves, [key], os.path.join(workdir, "seeds.png"), styles=styles,
        title=f"MoE vs dense, {len(seeds)} seeds",
    )  # fmt: skip
