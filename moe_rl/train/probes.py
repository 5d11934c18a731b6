"""What a pretraining run's checkpoints know and where they route, on a labelled corpus.

`value_curve`: the next-token loss on the tokens of each kind (`moe_rl.data.labelled`: the
skills' coded letters, the facts' attribute values, the rest) at every checkpoint.
`specialisation`: which routed experts the positions predicting each kind are sent to, in
each MoE layer (`routing_shares`, and I(kind; expert) in bits), re-routing each layer's
captured input with its router and bias exactly as the forward pass does.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from moe_rl.checkpoint import Checkpointer
from moe_rl.data import labelled
from moe_rl.data.tokenizers import ByteTokenizer
from moe_rl.models import moe, transformer
from moe_rl.models.config import ModelConfig

EVAL_ROWS = 64  # validation documents per forward pass


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
            chunk = {
                k: np.pad(v, ((0, pad), (0, 0)), constant_values=-1 if k == "kinds" else 0)
                for k, v in chunk.items()
            }
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
