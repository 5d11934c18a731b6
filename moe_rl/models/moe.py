"""DeepSeekMoE layer: fine-grained routed experts + shared experts, auxiliary-loss-free routing.

The router runs in float32. The per-expert correction bias (DeepSeek-V3 sec. 2.1.2) only
changes *which* experts are selected; the gate weights come from the unbiased scores. The bias
is not a parameter: it lives in the `moe_bias` collection, in float32, outside the optimizer,
and the training loop updates it from the expert counts this layer returns.

DeepSeek-V4 (sec. 2.1) adds sqrt(softplus) scores and hash-routed layers, whose experts come
from a frozen token-id -> expert-ids table (`tid2eid`, in the `moe_hash` collection, never
trained); their gates are still the router's normalised scores.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from moe_rl import mesh as mesh_axes
from moe_rl.models import dispatch
from moe_rl.models.backend import expert_parallel_size
from moe_rl.models.config import ModelConfig
from moe_rl.models.layers import MLP, logical_param, normal_init

BIAS_COLLECTION = "moe_bias"
HASH_COLLECTION = "moe_hash"


def routed_output(
    impl: str, x_TD, ids_TK, gates_TK, w_gate_EDF, w_up_EDF, w_down_EFD, swiglu_limit=None
):
    """The routed experts' output [T,D]; with an 'expert' mesh axis of size EP > 1, expert
    parallel: each device holds E/EP experts and computes them for the tokens of its expert
    group, inside `jax.shard_map`.

    Tokens sharded over (data, fsdp, expert): all-gather over 'expert' (the group's tokens),
    local experts, reduce-scatter over 'expert' (each device gets its tokens' sums back). The
    fixed-size collectives run on every backend (XLA:CPU has no ragged all-to-all). If the
    token count does not divide the token shards (e.g. a single decoding row), every device
    sees all tokens and the local outputs are summed (psum). Dropless either way.
    """
    ep = expert_parallel_size()
    if ep == 1:
        return dispatch.routed_experts(
            impl,
            x_TD,
            ids_TK,
            gates_TK,
            w_gate_EDF,
            w_up_EDF,
            w_down_EFD,
            swiglu_limit=swiglu_limit,
        )
    E = w_gate_EDF.shape[0]
    if E % ep:
        raise ValueError(f"model.n_routed_experts={E} is not divisible by mesh.expert={ep}")
    mesh = jax.sharding.get_abstract_mesh()
    sizes = dict(mesh.shape)
    axes = tuple(a for a in mesh_axes.BATCH_AXES if sizes.get(a, 1) > 1)  # the rows' split
    shards = math.prod(sizes[a] for a in axes)
    gather = x_TD.shape[0] % shards == 0
    tok = P(axes, None) if gather else P(None, None)
    w = P("expert", None, None)

    def body(x_TD, ids_TK, gates_TK, w_gate_EDF, w_up_EDF, w_down_EFD):
        if gather:
            gather_rows = lambda a: jax.lax.all_gather(a, "expert", axis=0, tiled=True)
            x_TD, ids_TK, gates_TK = map(gather_rows, (x_TD, ids_TK, gates_TK))
        first = jax.lax.axis_index("expert") * w_gate_EDF.shape[0]
        y_TD = dispatch.local_experts(
            impl,
            x_TD,
            ids_TK,
            gates_TK,
            w_gate_EDF,
            w_up_EDF,
            w_down_EFD,
            first,
            swiglu_limit=swiglu_limit,
        )
        if gather:
            return jax.lax.psum_scatter(y_TD, "expert", scatter_dimension=0, tiled=True)
        return jax.lax.psum(y_TD, "expert")

    # check_vma=False: the dispatch scan's carry starts as an unvarying zeros array.
    return jax.shard_map(
        body, mesh=mesh, in_specs=(tok, tok, tok, w, w, w), out_specs=tok, check_vma=False
    )(x_TD, ids_TK, gates_TK, w_gate_EDF, w_up_EDF, w_down_EFD)


def route(
    logits_TE: jax.Array, bias_E: jax.Array, cfg: ModelConfig, replay_TK: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (scores [T,E], expert ids [T,K], gates [T,K]), all routing math in float32.

    DeepSeek-V3 eqs. 13-16: s = sigmoid(u.e); selection by top-k of s + b within the top
    `topk_group` groups (a group scores the sum of its two best biased scores, sec. 2.1.2 and
    the V3 reference code); gates g = s[top-k] / sum(s[top-k]) * routed_scaling_factor.
    With softmax scores (DeepSeek-V2) a group scores its best expert (group-limited greedy).
    With sqrtsoftplus (DeepSeek-V4 sec. 2.1, HF `DeepseekV4TopKRouter`) s = sqrt(softplus(u.e)),
    selected and weighed exactly as sigmoid scores (V4 has no groups: n_group=1).

    `replay_TK`: routing replay (R3, Ma et al. 2025; DeepSeek-V3.2's Keep Routing): the
    experts recorded for each token (e.g. by the sampler) replace the selection; the gates are
    the current scores at those experts, normalised as above, so the router keeps its
    gradient. A token whose first recorded id is negative (nothing recorded) selects its own.
    """
    scores_TE = router_scores(logits_TE, cfg.scoring_func)
    choice_TE = scores_TE + jax.lax.stop_gradient(bias_E.astype(jnp.float32))
    T, E = choice_TE.shape
    if cfg.n_group > 1:
        G = cfg.n_group
        choice_TGe = choice_TE.reshape(T, G, E // G)
        if cfg.scoring_func != "softmax":
            group_TG = jax.lax.top_k(choice_TGe, 2)[0].sum(-1)
        else:
            group_TG = choice_TGe.max(-1)
        _, top_groups_Tg = jax.lax.top_k(group_TG, cfg.topk_group)
        keep_TG = jax.nn.one_hot(top_groups_Tg, G, dtype=jnp.bool_).any(axis=1)
        choice_TE = jnp.where(keep_TG[:, :, None], choice_TGe, -jnp.inf).reshape(T, E)
    _, expert_ids_TK = jax.lax.top_k(choice_TE, cfg.num_experts_per_tok)
    if replay_TK is not None:
        recorded_T1 = replay_TK[:, :1] >= 0
        expert_ids_TK = jnp.where(recorded_T1, replay_TK.astype(jnp.int32), expert_ids_TK)
    return scores_TE, expert_ids_TK, _gates(scores_TE, expert_ids_TK, cfg)


def router_scores(logits_TE: jax.Array, scoring_func: str) -> jax.Array:
    """Affinity scores s [T,E] in float32: sigmoid (V3), softmax (V2) or sqrt(softplus) (V4)."""
    logits_TE = logits_TE.astype(jnp.float32)
    if scoring_func == "sigmoid":
        return jax.nn.sigmoid(logits_TE)
    if scoring_func == "sqrtsoftplus":
        return jnp.sqrt(jax.nn.softplus(logits_TE))
    return jax.nn.softmax(logits_TE, axis=-1)


def _gates(scores_TE, expert_ids_TK, cfg: ModelConfig) -> jax.Array:
    """The chosen experts' unbiased scores, normalised over the K (norm_topk_prob), scaled."""
    gates_TK = jnp.take_along_axis(scores_TE, expert_ids_TK, axis=-1)
    if cfg.norm_topk_prob:
        gates_TK = gates_TK / (gates_TK.sum(-1, keepdims=True) + 1e-20)
    return gates_TK * cfg.routed_scaling_factor


def hash_route(
    logits_TE: jax.Array, tokens_T: jax.Array, tid2eid_VK: jax.Array, cfg: ModelConfig
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Hash routing (DeepSeek-V4 sec. 2.1, HF `DeepseekV4HashRouter`): (scores [T,E], expert
    ids [T,K], gates [T,K]). The experts of token t are the frozen row tid2eid[tokens[t]]; the
    gates are the router's scores at them, normalised and scaled as in `route` (no bias)."""
    scores_TE = router_scores(logits_TE, cfg.scoring_func)
    expert_ids_TK = jnp.take(tid2eid_VK, tokens_T, axis=0).astype(jnp.int32)
    return scores_TE, expert_ids_TK, _gates(scores_TE, expert_ids_TK, cfg)


def init_tid2eid(key: jax.Array, vocab_size: int, n_experts: int, k: int) -> jax.Array:
    """A fresh hash table [V,K] int32: K distinct experts per token id, uniformly at random.

    HF zero-initialises its `tid2eid` buffer as a placeholder for the checkpoint's table (that
    would send every token to expert 0); a model trained from scratch needs a real hash, so we
    draw one, as hash layers do (Roller et al. 2021, "Hash Layers For Large Sparse Models").
    """
    noise_VE = jax.random.uniform(key, (vocab_size, n_experts))
    return jax.lax.top_k(noise_VE, k)[1].astype(jnp.int32)


def sequence_balance_loss(
    scores_BLE: jax.Array, expert_ids_BLK: jax.Array, valid_BL: jax.Array
) -> jax.Array:
    """Sequence-wise balance loss sum_i f_i P_i (DeepSeek-V3 eqs. 17-20), mean over sequences.

    f_i = E/(K T) * #tokens choosing i;  P_i = mean_t s_i,t / sum_j s_j,t.  The weight alpha is
    applied by the training loss, not here.
    """
    E, K = scores_BLE.shape[-1], expert_ids_BLK.shape[-1]
    valid = valid_BL.astype(jnp.float32)
    n_tokens_B = jnp.maximum(valid.sum(-1), 1.0)
    chosen_BLE = jax.nn.one_hot(expert_ids_BLK, E, dtype=jnp.float32).sum(-2)
    f_BE = E / K * jnp.einsum("ble,bl->be", chosen_BLE, valid) / n_tokens_B[:, None]
    normalised_BLE = scores_BLE / scores_BLE.sum(-1, keepdims=True)
    p_BE = jnp.einsum("ble,bl->be", normalised_BLE, valid) / n_tokens_B[:, None]
    return jnp.mean(jnp.sum(f_BE * p_BE, axis=-1))


def replay_differs(own_TK: jax.Array, replay_TK: jax.Array, valid_T: jax.Array) -> jax.Array:
    """How many valid tokens with a recorded routing would select other experts (as a set)
    than the recorded ones: the sampler/trainer routing mismatch that replay removes."""
    recorded_T = (replay_TK[:, 0] >= 0) & valid_T
    same_T = jnp.all(jnp.sort(own_TK, -1) == jnp.sort(replay_TK, -1), axis=-1)
    return jnp.sum(recorded_T & ~same_T).astype(jnp.float32)


class MoE(nn.Module):
    """Routed + shared experts; returns (output, {'expert_counts' [E], 'balance_loss' [],
    'expert_ids' [B, L, K]}, and with `replay_BLK` 'replay_differs' [] and 'replay_tokens' []).

    `hash_routed` (DeepSeek-V4 'hash_moe' layer): experts from the frozen `tid2eid` table of the
    `moe_hash` collection by `tokens_BL`, no routing bias; a replay is compared, never applied.
    """

    cfg: ModelConfig
    replay_apply: bool = True  # False: only compare the routing with `replay_BLK`
    hash_routed: bool = False

    @nn.compact
    def __call__(self, x_BLD, valid_BL, replay_BLK=None, tokens_BL=None):
        cfg = self.cfg
        dt, pdt, init = cfg.compute_dtype, cfg.weight_dtype, normal_init(cfg)
        B, L, D = x_BLD.shape
        E, F, K = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.num_experts_per_tok
        w_router = logical_param(self, "router", (D, E), ("embed", "expert"), init, pdt)
        if self.hash_routed:
            if tokens_BL is None:
                raise ValueError("a hash-routed MoE layer ('hash_moe') needs the token ids")
            fresh = lambda: init_tid2eid(self.make_rng("params"), cfg.vocab_size, E, K)
            tid2eid = self.variable(
                HASH_COLLECTION, "tid2eid", nn.with_logical_partitioning(fresh, (None, None))
            )
        else:
            bias = self.variable(
                BIAS_COLLECTION,
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros_init(), ("expert",)),
                None,
                (E,),
                jnp.float32,
            )
        w_gate = logical_param(
            self, "experts_gate", (E, D, F), ("expert", "embed", "mlp"), init, pdt
        )
        w_up = logical_param(self, "experts_up", (E, D, F), ("expert", "embed", "mlp"), init, pdt)
        w_down = logical_param(
            self, "experts_down", (E, F, D), ("expert", "mlp", "embed"), init, pdt
        )

        x_TD = x_BLD.reshape(B * L, D).astype(dt)
        logits_TE = x_TD.astype(jnp.float32) @ w_router.astype(jnp.float32)
        replay_TK = None if replay_BLK is None else replay_BLK.reshape(B * L, K)
        if self.hash_routed:
            tokens_T = tokens_BL.reshape(-1)
            scores_TE, ids_TK, gates_TK = hash_route(logits_TE, tokens_T, tid2eid.value, cfg)
        else:
            scores_TE, ids_TK, gates_TK = route(
                logits_TE, bias.value, cfg, replay_TK if self.replay_apply else None
            )
        y_TD = routed_output(
            cfg.moe_impl,
            x_TD,
            ids_TK,
            gates_TK,
            w_gate.astype(dt),
            w_up.astype(dt),
            w_down.astype(dt),
            cfg.swiglu_limit,
        )
        y_BLD = y_TD.reshape(B, L, D)
        if cfg.n_shared_experts:
            shared = MLP(cfg, F * cfg.n_shared_experts, cfg.swiglu_limit, name="shared_experts")
            y_BLD = y_BLD + shared(x_BLD)

        valid = valid_BL.reshape(-1).astype(jnp.float32)
        counts_E = jnp.einsum("tke,t->e", jax.nn.one_hot(ids_TK, E, dtype=jnp.float32), valid)
        balance = sequence_balance_loss(
            scores_TE.reshape(B, L, E), ids_TK.reshape(B, L, K), valid_BL
        )
        aux = {"expert_counts": counts_E, "balance_loss": balance}
        aux["expert_ids"] = ids_TK.reshape(B, L, K)
        if replay_TK is not None:
            applied = self.replay_apply and not self.hash_routed
            own_TK = route(logits_TE, bias.value, cfg)[1] if applied else ids_TK
            aux["replay_differs"] = replay_differs(own_TK, replay_TK, valid > 0)
            aux["replay_tokens"] = jnp.sum((replay_TK[:, 0] >= 0) & (valid > 0)).astype(jnp.float32)
        return y_BLD.astype(dt), aux


def update_bias(bias_E: jax.Array, counts_E: jax.Array, rate: float) -> jax.Array:
    """Auxiliary-loss-free balancing (DeepSeek-V3 sec. 2.1.2): b_i += gamma * sign(mean - load_i).

    `counts_E` are the tokens each expert received over the whole global batch (all
    microbatches, all devices), so every replica applies the same update.
    """
    counts = counts_E.astype(jnp.float32)
    return bias_E + rate * jnp.sign(counts.mean(-1, keepdims=True) - counts)
