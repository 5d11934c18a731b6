"""GRPO advantages and loss against slow, obvious loop references on random arrays."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_rl.train import grpo_loss

Q, G, N = 2, 3, 5
LENGTHS = np.array([5, 2, 3, 1, 4, 5])


def random_inputs(seed=0):
    rng = np.random.default_rng(seed)
    old = -rng.uniform(0.5, 3.0, (Q * G, N))
    logp = old + rng.normal(0, 0.4, (Q * G, N))  # far enough from old that some tokens clip
    ref = old + rng.normal(0, 0.3, (Q * G, N))
    rewards = rng.integers(0, 2, (Q, G)).astype(np.float64) + rng.normal(0, 0.1, (Q, G))
    mask = (np.arange(N)[None] < LENGTHS[:, None]).astype(np.float64)
    return logp, old, ref, rewards, mask


def reference_advantages(r, kind, eps=1e-4):
    out = np.zeros_like(r)
    for q in range(r.shape[0]):
        for i in range(r.shape[1]):
            others = [r[q, j] for j in range(r.shape[1]) if j != i]
            if kind == "grpo":
                out[q, i] = (r[q, i] - r[q].mean()) / (np.std(r[q], ddof=1) + eps)
            elif kind == "dr_grpo":
                out[q, i] = r[q, i] - r[q].mean()
            else:
                out[q, i] = r[q, i] - np.mean(others)
    return out


def reference_loss(logp, old, ref, adv, mask, c: grpo_loss.LossConfig):
    """Per-token loops, float64."""
    B, L = logp.shape
    per_token = np.zeros((B, L))
    for b in range(B):
        n = mask[b].sum()
        seq_log_ratio = sum((logp[b, t] - old[b, t]) * mask[b, t] for t in range(L)) / max(n, 1)
        for t in range(L):
            lr = seq_log_ratio if c.ratio == "sequence" else logp[b, t] - old[b, t]
            ratio = np.exp(lr)
            clipped = min(max(ratio, 1 - c.eps_low), 1 + c.eps_high)
            value = -min(ratio * adv[b], clipped * adv[b])
            if c.beta > 0:
                d = ref[b, t] - logp[b, t]
                value += c.beta * (np.exp(d) - d - 1)
            per_token[b, t] = value
    masked = per_token * mask
    if c.aggregation == "seq_mean":
        return np.mean([masked[b].sum() / max(mask[b].sum(), 1) for b in range(B)])
    if c.aggregation == "token_mean":
        return masked.sum() / mask.sum()
    return masked.sum() / (B * L)


@pytest.mark.parametrize("kind", grpo_loss.ADVANTAGES)
def test_advantages_match_reference(kind):
    *_, rewards, _ = random_inputs()
    got = grpo_loss.advantages(jnp.asarray(rewards, jnp.float32), kind)
    chex.assert_shape(got, (Q, G))
    np.testing.assert_allclose(got, reference_advantages(rewards, kind), rtol=1e-5, atol=1e-5)


CASES = list(itertools.product(grpo_loss.AGGREGATIONS, grpo_loss.RATIOS, [0.0, 0.04], ["k3_loss"]))


@pytest.mark.parametrize("aggregation, ratio, beta, kl", CASES)
def test_loss_and_gradient_match_reference(aggregation, ratio, beta, kl):
    logp, old, ref, rewards, mask = random_inputs()
    c = grpo_loss.LossConfig(
        aggregation=aggregation, ratio=ratio, beta=beta, kl=kl, eps_low=0.2, eps_high=0.28
    )
    adv = reference_advantages(rewards, "grpo").reshape(-1)
    f32 = lambda a: jnp.asarray(a, jnp.float32)

    def loss(lp):
        return grpo_loss.policy_loss(lp, f32(old), f32(ref), f32(adv), f32(mask), c)

    (value, metrics), grad = jax.value_and_grad(loss, has_aux=True)(f32(logp))
    want = reference_loss(logp, old, ref, adv, mask, c)
    np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6)
    # Central differences of the float64 reference, token by token.
    h, want_grad = 1e-6, np.zeros_like(logp)
    for b, t in np.ndindex(logp.shape):
        up, down = logp.copy(), logp.copy()
        up[b, t] += h
        down[b, t] -= h
        want_grad[b, t] = (
            reference_loss(up, old, ref, adv, mask, c)
            - reference_loss(down, old, ref, adv, mask, c)
        ) / (2 * h)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-3, atol=1e-5)
    if ratio == "token":
        assert metrics["clip_fraction"] > 0  # the clipped branch is exercised


def test_zero_variance_group_gives_no_gradient():
    logp, old, ref, rewards, mask = random_inputs()
    rewards[0] = 1.0  # question 0: all G completions equally right
    adv = grpo_loss.advantages(jnp.asarray(rewards, jnp.float32)).reshape(-1)
    np.testing.assert_array_equal(adv[:G], 0.0)
    c = grpo_loss.LossConfig(beta=0.0)
    grad = jax.grad(lambda lp: grpo_loss.policy_loss(lp, old, ref, adv, mask, c)[0])(
        jnp.asarray(logp, jnp.float32)
    )
    np.testing.assert_array_equal(grad[:G], 0.0)
    assert np.abs(np.asarray(grad[G:])).sum() > 0


def test_kl_is_zero_when_policy_equals_reference_and_ratios_start_at_one():
    logp, _, _, rewards, mask = random_inputs()
    adv = reference_advantages(rewards, "grpo").reshape(-1)
    with_kl = grpo_loss.LossConfig(beta=0.04, aggregation="token_mean")
    no_kl = grpo_loss.LossConfig(beta=0.0, aggregation="token_mean")
    a, m = grpo_loss.policy_loss(logp, logp, logp, adv, mask, with_kl)  # old = ref = policy
    b, _ = grpo_loss.policy_loss(logp, logp, None, adv, mask, no_kl)
    assert float(m["kl"]) == 0.0 and float(m["ratio_mean"]) == pytest.approx(1.0)
    assert float(m["clip_fraction"]) == 0.0
    np.testing.assert_allclose(a, b, rtol=1e-6)
    want = -(adv[:, None] * mask).sum() / mask.sum()
    np.testing.assert_allclose(b, want, rtol=1e-5)


def test_padding_does_not_matter():
    logp, old, ref, rewards, mask = random_inputs()
    adv = reference_advantages(rewards, "grpo").reshape(-1)
    c = grpo_loss.LossConfig(beta=0.04)
    garbage = np.where(mask > 0, logp, 50.0), np.where(mask > 0, old, -80.0)

    def value_and_grad(lp, o):
        fn = lambda x: grpo_loss.policy_loss(x, o, ref, adv, mask, c)[0]
        return jax.value_and_grad(fn)(jnp.asarray(lp, jnp.float32))

    v1, g1 = value_and_grad(logp, old)
    v2, g2 = value_and_grad(*garbage)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    np.testing.assert_allclose(g1 * mask, g2 * mask, rtol=1e-6)
    np.testing.assert_array_equal(
        grpo_loss.completion_mask(jnp.asarray([3, 0, 5]), 5),
        [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]],
    )


class JitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_no_jit_agree(self):
        logp, old, ref, rewards, mask = random_inputs(1)
        adv = reference_advantages(rewards, "rloo").reshape(-1)
        c = grpo_loss.LossConfig(ratio="sequence", aggregation="constant")
        fn = self.variant(lambda *a: grpo_loss.policy_loss(*a, c))
        got = fn(*(jnp.asarray(x, jnp.float32) for x in (logp, old, ref, adv, mask)))
        want = reference_loss(logp, old, ref, adv, mask, c)
        np.testing.assert_allclose(got[0], want, rtol=1e-5)


@pytest.mark.parametrize(
    "kw, key", [(dict(advantage="x"), "grpo.advantage"), (dict(beta=-1.0), "grpo.beta")]
)
def test_bad_loss_config_names_the_key(kw, key):
    with pytest.raises(ValueError, match=key):
        grpo_loss.LossConfig(**kw)
