"""Routed-expert dispatch: y_t = sum_k gates[t,k] * expert_{ids[t,k]}(x_t), three ways.

Every expert is a SwiGLU, expert_e(x) = (silu(x @ w_gate[e]) * (x @ w_up[e])) @ w_down[e]. The
matmuls run in x's dtype, the gating and the sum over the K experts of a token in float32. With
`swiglu_limit` (DeepSeek-V4) the gate and up pre-activations are clipped first (see `swiglu`).

- `dense_oracle`: every expert on every token (E/K times the FLOPs); obviously correct, the test
  reference.
- `sparse_dispatch`: dropless sorted dispatch in groups of rows per expert, fast on XLA:CPU; its
  cost follows the routing (the experts' actual loads), not the number of experts.
- `ragged_dispatch`: token copies sorted by expert through `jax.lax.ragged_dot`, the grouped
  matmul of GPUs and TPUs (on CPU it is ~100x slower than a dense matmul of the same FLOPs).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

IMPLS = ("sparse", "dense", "ragged")


def swiglu(g, u, limit: float | None = None):
    """silu(g) * u; with a `limit` (DeepSeek-V4's swiglu_limit, HF `DeepseekV4Experts._apply_gate`)
    g is clipped from above at limit and u to [-limit, limit] first. None or 0: no clipping."""
    if limit:
        g, u = jnp.minimum(g, limit), jnp.clip(u, -limit, limit)
    return jax.nn.silu(g) * u


def dense_oracle(
    x_TD, expert_ids_TK, gates_TK, w_gate_EDF, w_up_EDF, w_down_EFD, *, swiglu_limit=None
):
    """Every expert on every token, weighted by a dense [T,E] gate matrix (zero if not chosen)."""
    E = w_gate_EDF.shape[0]
    onehot_TKE = jax.nn.one_hot(expert_ids_TK, E, dtype=jnp.float32)
    gates_TE = jnp.einsum("tk,tke->te", gates_TK.astype(jnp.float32), onehot_TKE)
    g_TEF = jnp.einsum("td,edf->tef", x_TD, w_gate_EDF)
    u_TEF = jnp.einsum("td,edf->tef", x_TD, w_up_EDF)
    y_TED = jnp.einsum("tef,efd->ted", swiglu(g_TEF, u_TEF, swiglu_limit), w_down_EFD)
    return jnp.einsum("te,ted->td", gates_TE, y_TED.astype(jnp.float32)).astype(x_TD.dtype)


def group_rows(T: int, K: int, E: int, capacity_factor: float, chunk_rows: int) -> int:
    """Rows of one group (one matmul of a batch) in `sparse_dispatch`: `capacity_factor` times the
    balanced load T*K/E, so that most experts fill one group; rounded up to a multiple of 8, at
    most `chunk_rows`."""
    if capacity_factor <= 0:
        raise ValueError(f"capacity_factor={capacity_factor} must be positive")
    return max(8, min(-(-math.ceil(capacity_factor * T * K / E) // 8) * 8, chunk_rows))


class _Sorted(NamedTuple):
    """Token copies m = t*K + k, stably sorted by expert."""

    copy_M: jax.Array  # copy at each sorted position
    rank_M: jax.Array  # rank of copy m among the copies of its expert
    start_E: jax.Array  # first sorted position of each expert
    count_E: jax.Array  # copies routed to each expert


def _sort_copies(expert_ids_TK: jax.Array, E: int) -> _Sorted:
    ids_M = expert_ids_TK.reshape(-1).astype(jnp.int32)
    M = ids_M.shape[0]
    iota_M = jnp.arange(M, dtype=jnp.int32)
    if E * M <= jnp.iinfo(jnp.int32).max:  # one key, expert * M + copy: a much faster sort
        key_M = jnp.sort(ids_M * M + iota_M)
        sorted_ids_M, copy_M = key_M // M, key_M % M
    else:
        sorted_ids_M, copy_M = jax.lax.sort((ids_M, iota_M), num_keys=1, is_stable=True)
    experts_E = jnp.arange(E, dtype=jnp.int32)
    bound = lambda side: jnp.searchsorted(sorted_ids_M, experts_E, side, method="compare_all")
    start_E = bound("left").astype(jnp.int32)
    count_E = bound("right").astype(jnp.int32) - start_E
    position_M = jnp.zeros(M, jnp.int32).at[copy_M].set(iota_M, unique_indices=True)
    return _Sorted(copy_M, position_M - start_E[ids_M], start_E, count_E)


class _Layout(NamedTuple):
    """Token copies in slots: n chunks of G groups of R rows, each group one expert's copies."""

    slot_TK: jax.Array  # slot of copy (t, k)
    copy_nS: jax.Array  # copy held by each slot of each chunk; T*K if the slot is empty
    expert_nG: jax.Array  # expert of each group of each chunk
    used: jax.Array  # chunks holding copies; the rest are empty and skipped


def _layout(
    expert_ids_TK: jax.Array, E: int, R: int, chunk_rows: int, absent: bool = False
) -> _Layout:
    """Each expert's copies, sorted, padded to whole groups of R rows, experts one after another.

    Padding is under R rows per routed expert, so T*K + min(E, T*K)*(R-1) slots hold any routing.
    `absent`: id E marks copies whose expert is not here (expert parallelism: another device's);
    they take no slot and are never computed.
    """
    T, K = expert_ids_TK.shape
    M = T * K
    groups = -(-(M + min(E, M) * (R - 1)) // R)  # enough for any routing
    S_chunk = R * max(1, min(chunk_rows // R, groups))
    n = -(-groups * R // S_chunk)
    s = _sort_copies(expert_ids_TK, E + absent)
    span_E = -(-s.count_E // R) * R
    if absent:  # the absent copies sort last; they get no span, so no slot reaches them
        span_E = span_E.at[E].set(0)
    offset_E = jnp.cumsum(span_E) - span_E
    slot_TK = offset_E[expert_ids_TK] + s.rank_M.reshape(T, K)
    slots_S = jnp.arange(n * S_chunk, dtype=jnp.int32)
    expert_S = (
        jnp.searchsorted(offset_E, slots_S, "right", method="compare_all").astype(jnp.int32) - 1
    )
    rank_S = slots_S - offset_E[expert_S]
    copy_S = s.copy_M.at[s.start_E[expert_S] + rank_S].get(mode="clip")
    copy_S = jnp.where((rank_S < s.count_E[expert_S]) & (expert_S < E), copy_S, M)
    used = -(-jnp.sum(span_E) // S_chunk)
    return _Layout(slot_TK, copy_S.reshape(n, S_chunk), expert_S[::R].reshape(n, -1), used)


def _rows(a_TD: jax.Array, copy_S: jax.Array, K: int) -> jax.Array:
    """Row t of a_TD for each slot holding a copy of token t; zeros for empty slots."""
    return jnp.take(a_TD, copy_S // K, axis=0, mode="fill", fill_value=0)


def _add_rows(acc_TD: jax.Array, copy_S: jax.Array, K: int, a_SD: jax.Array) -> jax.Array:
    """acc_TD[t] += a_SD[s] for each slot s holding a copy of token t (empty slots dropped)."""
    return acc_TD.at[copy_S // K].add(a_SD.astype(acc_TD.dtype), mode="drop")


def _chunks(gates_TK: jax.Array, layout: _Layout):
    """Per-chunk scan inputs: (chunk index, copies, group experts, gates of the slots)."""
    gates_M = gates_TK.reshape(-1).astype(jnp.float32)
    gate_nS = jnp.take(gates_M, layout.copy_nS, mode="fill", fill_value=0)
    n = layout.copy_nS.shape[0]
    return jnp.arange(n), layout.copy_nS, layout.expert_nG, gate_nS


def _swiglu_chunks(
    x_TD, gates_TK, w_gate_EDF, w_up_EDF, w_down_EFD, layout, keep_residuals, limit=None
):
    """y_TD and, if asked, the (unclipped) pre-activations [n,S,2F] of every chunk (zeros if
    unused)."""
    T, D = x_TD.shape
    K, F = gates_TK.shape[1], w_gate_EDF.shape[-1]

    def compute(y_TD, copy_S, expert_G, gate_S):
        xs_GRD = _rows(x_TD, copy_S, K).reshape(expert_G.shape[0], -1, D)
        w_gu_GDF = jnp.concatenate([w_gate_EDF[expert_G], w_up_EDF[expert_G]], axis=-1)
        gu_GRF = jnp.einsum("grd,gdf->grf", xs_GRD, w_gu_GDF)
        h_GRF = swiglu(gu_GRF[..., :F], gu_GRF[..., F:], limit)
        ys_SD = jnp.einsum("grf,gfd->grd", h_GRF, w_down_EFD[expert_G]).reshape(-1, D)
        y_TD = _add_rows(y_TD, copy_S, K, gate_S[:, None] * ys_SD.astype(jnp.float32))
        return y_TD, gu_GRF.reshape(-1, 2 * F) if keep_residuals else None

    def skip(y_TD, copy_S, expert_G, gate_S):
        gu_SF = jnp.zeros((copy_S.shape[0], 2 * F), x_TD.dtype)
        return y_TD, gu_SF if keep_residuals else None

    def step(y_TD, chunk):
        i, *rest = chunk
        return jax.lax.cond(i < layout.used, compute, skip, y_TD, *rest)

    y_TD, gu_nSF = jax.lax.scan(step, jnp.zeros((T, D), jnp.float32), _chunks(gates_TK, layout))
    return y_TD.astype(x_TD.dtype), gu_nSF


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _experts(x_TD, gates_TK, w_gate_EDF, w_up_EDF, w_down_EFD, layout: _Layout, limit=None):
    """Routed SwiGLU experts over the slots of `layout`, one chunk of slots at a time.

    Chunks keep the working set small: on CPU, touching fresh memory (page faults) costs as much
    as the arithmetic. The backward is written by hand to choose its matmuls and reuse gathers.
    `limit`: swiglu_limit (static; None or 0: no clipping).
    """
    return _swiglu_chunks(x_TD, gates_TK, w_gate_EDF, w_up_EDF, w_down_EFD, layout, False, limit)[0]


def _experts_fwd(x_TD, gates_TK, w_gate_EDF, w_up_EDF, w_down_EFD, layout, limit):
    y_TD, gu_nSF = _swiglu_chunks(
        x_TD, gates_TK, w_gate_EDF, w_up_EDF, w_down_EFD, layout, True, limit
    )
    return y_TD, (x_TD, gates_TK, w_gate_EDF, w_up_EDF, w_down_EFD, layout, gu_nSF)


def _experts_bwd(limit, res, dy_TD):
    x_TD, gates_TK, w_gate_EDF, w_up_EDF, w_down_EFD, layout, gu_nSF = res
    T, D = x_TD.shape
    K, F = gates_TK.shape[1], w_gate_EDF.shape[-1]
    dt, f32 = x_TD.dtype, jnp.float32

    def compute(carry, copy_S, expert_G, gate_S, gu_SF):
        dx_TD, dw_gate_EDF, dw_up_EDF, dw_down_EFD = carry
        G = expert_G.shape[0]
        R = copy_S.shape[0] // G
        gu_GRF = gu_SF.reshape(G, R, 2 * F)
        xs_GRD = _rows(x_TD, copy_S, K).reshape(G, R, D)
        dy_GRD = _rows(dy_TD.astype(dt), copy_S, K).reshape(G, R, D)  # not yet gated
        w_gu_GDF = jnp.concatenate([w_gate_EDF[expert_G], w_up_EDF[expert_G]], axis=-1)
        dh_GRF = jnp.einsum("grd,gfd->grf", dy_GRD, w_down_EFD[expert_G]).astype(f32)
        g, u = gu_GRF[..., :F].astype(f32), gu_GRF[..., F:].astype(f32)
        if limit:  # clipped values pass no gradient (torch.clamp's convention at the bounds)
            g_in, u_in = g <= limit, jnp.abs(u) <= limit
            g, u = jnp.minimum(g, limit), jnp.clip(u, -limit, limit)
        sig = jax.nn.sigmoid(g)
        h = g * sig * u
        dgate_S = jnp.sum(dh_GRF * h, axis=-1).reshape(-1)
        gate_GR1 = gate_S.reshape(G, R, 1)
        dh_GRF = dh_GRF * gate_GR1
        dg = dh_GRF * u * sig * (1 + g * (1 - sig))
        du = dh_GRF * g * sig
        if limit:
            dg, du = jnp.where(g_in, dg, 0.0), jnp.where(u_in, du, 0.0)
        dgu_GRF = jnp.concatenate([dg, du], axis=-1).astype(dt)
        dw_down_GFD = jnp.einsum("grf,grd->gfd", (h * gate_GR1).astype(dt), dy_GRD)
        dw_gu_GDF = jnp.einsum("grd,grf->gdf", xs_GRD, dgu_GRF)
        dxs_SD = jnp.einsum("grf,gdf->grd", dgu_GRF, w_gu_GDF).reshape(-1, D)
        carry = (
            _add_rows(dx_TD, copy_S, K, dxs_SD),
            dw_gate_EDF.at[expert_G].add(dw_gu_GDF[..., :F], indices_are_sorted=True),
            dw_up_EDF.at[expert_G].add(dw_gu_GDF[..., F:], indices_are_sorted=True),
            dw_down_EFD.at[expert_G].add(dw_down_GFD, indices_are_sorted=True),
        )
        return carry, dgate_S

    def skip(carry, copy_S, expert_G, gate_S, gu_SF):
        return carry, jnp.zeros(copy_S.shape, f32)

    def step(carry, chunk):
        i, *rest = chunk
        return jax.lax.cond(i < layout.used, compute, skip, carry, *rest)

    zeros = lambda a: jnp.zeros(a.shape, f32)
    init = (jnp.zeros((T, D), f32), zeros(w_gate_EDF), zeros(w_up_EDF), zeros(w_down_EFD))
    chunks = (*_chunks(gates_TK, layout), gu_nSF)
    (dx_TD, dw_gate, dw_up, dw_down), dgate_nS = jax.lax.scan(step, init, chunks)
    dgates_TK = dgate_nS.reshape(-1)[layout.slot_TK].astype(gates_TK.dtype)
    no_grad = jax.tree.map(lambda _: None, layout)
    return (
        dx_TD.astype(dt),
        dgates_TK,
        dw_gate.astype(w_gate_EDF.dtype),
        dw_up.astype(w_up_EDF.dtype),
        dw_down.astype(w_down_EFD.dtype),
        no_grad,
    )


_experts.defvjp(_experts_fwd, _experts_bwd)


def sparse_dispatch(
    x_TD,
    expert_ids_TK,
    gates_TK,
    w_gate_EDF,
    w_up_EDF,
    w_down_EFD,
    *,
    capacity_factor: float = 1.25,
    chunk_rows: int = 1024,
    swiglu_limit: float | None = None,
):
    """Dropless sorted dispatch whose cost follows the routing.

    Token copies are sorted by expert and each expert's copies padded to whole groups of
    R = `group_rows(...)` rows: with balanced routing every expert fills one group, an expert
    with more copies takes more groups, an expert with none takes no slot. A `lax.scan` over
    chunks of about `chunk_rows` slots runs each chunk as one batched matmul over its groups
    [G,R,D] x [G,D,F]; the slots are sized for the worst routing and the chunks past the last
    copy are skipped with `lax.cond`, so nothing is dropped and empty slots cost almost nothing.
    """
    return _sparse(
        x_TD,
        expert_ids_TK,
        gates_TK,
        w_gate_EDF,
        w_up_EDF,
        w_down_EFD,
        capacity_factor,
        chunk_rows,
        absent=False,
        limit=swiglu_limit,
    )


def _sparse(
    x_TD,
    ids_TK,
    gates_TK,
    w_gate_EDF,
    w_up_EDF,
    w_down_EFD,
    capacity_factor,
    chunk_rows,
    absent: bool,
    limit: float | None = None,
):
    """The sorted dispatch over the E experts of the weights given; with `absent`, id E marks
    copies whose expert is elsewhere (see `_layout`)."""
    T, K = ids_TK.shape
    E = w_gate_EDF.shape[0]
    R = group_rows(T, K, E, capacity_factor, chunk_rows)
    layout = _layout(ids_TK, E, R, chunk_rows, absent=absent)
    return _experts(x_TD, gates_TK, w_gate_EDF, w_up_EDF, w_down_EFD, layout, limit or None)


def local_experts(
    impl: str,
    x_TD,
    expert_ids_TK,
    gates_TK,
    w_gate_EDF,
    w_up_EDF,
    w_down_EFD,
    first_expert,
    *,
    capacity_factor: float = 1.25,
    chunk_rows: int = 1024,
    swiglu_limit: float | None = None,
):
    """The contribution of experts first_expert .. first_expert + E_local - 1 (the weights
    given, E_local of them) to every token: the expert-parallel building block. Copies routed
    elsewhere are skipped (sparse: they take no slot; dense: a zero gate); summing this over
    all expert shards gives the routed output. `first_expert` may be traced (axis_index)."""
    E_local = w_gate_EDF.shape[0]
    local_TK = (expert_ids_TK >= first_expert) & (expert_ids_TK < first_expert + E_local)
    ids_TK = jnp.where(local_TK, expert_ids_TK - first_expert, E_local)
    # A zero gate also stops the gradient to the gates of the copies computed elsewhere.
    gates_TK = jnp.where(local_TK, gates_TK, jnp.zeros_like(gates_TK))
    if impl == "dense":  # one_hot of id E_local is all zeros: absent copies weigh nothing
        return dense_oracle(
            x_TD, ids_TK, gates_TK, w_gate_EDF, w_up_EDF, w_down_EFD, swiglu_limit=swiglu_limit
        )
    if impl != "sparse":
        raise ValueError(
            f"model.moe_impl={impl!r} has no expert-parallel form; allowed with "
            "mesh.expert > 1: ('sparse', 'dense')"
        )
    return _sparse(
        x_TD,
        ids_TK,
        gates_TK,
        w_gate_EDF,
        w_up_EDF,
        w_down_EFD,
        capacity_factor,
        chunk_rows,
        absent=True,
        limit=swiglu_limit,
    )


def ragged_dispatch(
    x_TD, expert_ids_TK, gates_TK, w_gate_EDF, w_up_EDF, w_down_EFD, *, swiglu_limit=None
):
    """Copies sorted by expert, each matmul one `jax.lax.ragged_dot` over the expert groups."""
    T, K = expert_ids_TK.shape
    s = _sort_copies(expert_ids_TK, w_gate_EDF.shape[0])
    xs_MD = x_TD[s.copy_M // K]
    g_MF = jax.lax.ragged_dot(xs_MD, w_gate_EDF, s.count_E)
    u_MF = jax.lax.ragged_dot(xs_MD, w_up_EDF, s.count_E)
    ys_MD = jax.lax.ragged_dot(swiglu(g_MF, u_MF, swiglu_limit), w_down_EFD, s.count_E)
    position_TK = s.start_E[expert_ids_TK] + s.rank_M.reshape(T, K)
    ys_TKD = ys_MD[position_TK].astype(jnp.float32)
    return jnp.sum(gates_TK.astype(jnp.float32)[..., None] * ys_TKD, axis=1).astype(x_TD.dtype)


def routed_experts(impl: str, x_TD, expert_ids_TK, gates_TK, w_gate, w_up, w_down, **kw):
    """The routed-expert output [T,D] with the implementation named by `impl` (see IMPLS)."""
    fns = {"sparse": sparse_dispatch, "dense": dense_oracle, "ragged": ragged_dispatch}
    if impl not in fns:
        raise ValueError(f"unknown routed-expert impl {impl!r}; allowed: {IMPLS}")
    return fns[impl](x_TD, expert_ids_TK, gates_TK, w_gate, w_up, w_down, **kw)
