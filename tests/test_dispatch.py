"""Routed-expert dispatch: sparse and ragged against the dense oracle, outputs and gradients."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_rl.models import dispatch

T, D, F, E, K = 24, 16, 8, 8, 3
ROUTINGS = ("random", "skewed", "idle_experts")


@jax.jit
def random_arrays():
    """x, router scores, expert weights and an output cotangent: one draw, one compilation."""
    shapes = [(T, D), (T, E), (E, D, F), (E, D, F), (E, F, D), (T, D)]
    sizes = [math.prod(s) for s in shapes]
    flat = jax.random.normal(jax.random.key(0), (sum(sizes),))
    parts = jnp.split(flat, np.cumsum(sizes)[:-1])
    x, logits, w_gate, w_up, w_down, dy = (p.reshape(s) for p, s in zip(parts, shapes, strict=True))
    weights = (w_gate / D**0.5, w_up / D**0.5, w_down / F**0.5)
    return x, jax.nn.sigmoid(logits), weights, dy


def make_inputs(routing: str):
    """x, expert ids, gates (normalised top-k scores), weights and an output cotangent."""
    x, scores, weights, dy = random_arrays()
    scores = np.array(scores)
    if routing == "idle_experts":  # experts E/2.. get no token
        scores[:, E // 2 :] = -1.0
    ids = np.argsort(-scores, axis=1)[:, :K]
    gates = np.take_along_axis(scores, ids, axis=1)
    if routing == "skewed":  # every token picks experts 0..K-1: each gets all T tokens
        ids = np.broadcast_to(np.arange(K), (T, K))
    gates = gates / gates.sum(-1, keepdims=True)
    return x, jnp.asarray(ids, jnp.int32), jnp.asarray(gates), weights, dy


def output_and_grads(impl, x, ids, gates, weights, dy, **kw):
    """y and the gradients of <y, dy> w.r.t. x, the gates and the three weights."""
    fn = lambda x, g, *w: dispatch.routed_experts(impl, x, ids, g, *w, **kw)
    y, vjp = jax.vjp(fn, x, gates, *weights)
    return y, vjp(dy)


# One compilation per implementation (and per sparse tuning), shared by all routings.
output_and_grads_jit = jax.jit(
    output_and_grads, static_argnums=0, static_argnames=("capacity_factor", "chunk_rows")
)


def assert_matches_oracle(got, inputs):
    want = output_and_grads_jit("dense", *inputs)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)


class SparseVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_sparse_matches_dense_oracle(self):
        inputs = make_inputs("random")
        assert_matches_oracle(
            self.variant(output_and_grads, static_argnums=0)("sparse", *inputs), inputs
        )


@pytest.mark.parametrize("impl", ["sparse", "ragged"])
@pytest.mark.parametrize("routing", ROUTINGS)
def test_matches_dense_oracle(impl, routing):
    inputs = make_inputs(routing)
    assert_matches_oracle(output_and_grads_jit(impl, *inputs), inputs)


@pytest.mark.parametrize("routing", ROUTINGS)
def test_sparse_many_chunks_matches_oracle(routing):
    """Groups of 8 rows, chunks of 2 groups: many chunks, experts over several groups, and
    (skewed, idle experts) chunks past the last copy that are skipped."""
    inputs = make_inputs(routing)
    got = output_and_grads_jit("sparse", *inputs, capacity_factor=0.5, chunk_rows=16)
    assert_matches_oracle(got, inputs)


def test_skewed_routing_takes_several_groups_and_skips_chunks():
    """The skewed case exercises the dropless path: an expert with more copies than a group's
    rows takes several groups, and the chunks past the last copy are skipped."""
    _, ids, *_ = make_inputs("skewed")
    assert T > dispatch.group_rows(T, K, E, capacity_factor=1.25, chunk_rows=1024)
    R = dispatch.group_rows(T, K, E, capacity_factor=0.5, chunk_rows=16)
    layout = dispatch._layout(ids, E, R, chunk_rows=16)
    assert T > R and int(layout.used) < layout.copy_nS.shape[0]


def test_keeps_dtype():
    x, ids, gates, weights, _ = make_inputs("random")
    bf16 = lambda a: a.astype(jnp.bfloat16)
    y = jax.jit(dispatch.sparse_dispatch)(bf16(x), ids, gates, *map(bf16, weights))
    assert y.dtype == jnp.bfloat16
    want = dispatch.dense_oracle(x, ids, gates, *weights)
    chex.assert_trees_all_close(y.astype(jnp.float32), want, atol=5e-2)


def test_unknown_impl_is_an_error():
    x, ids, gates, weights, _ = make_inputs("random")
    with pytest.raises(ValueError, match="'sparse', 'dense', 'ragged'"):
        dispatch.routed_experts("magic", x, ids, gates, *weights)
