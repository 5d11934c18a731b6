"""grpo_loss (advantages, k3, completion_mask, policy_loss) against slow loop references."""

import dataclasses
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_rl.train import grpo_loss

Q, G, N = 2, 3, 5  # 2 questions x 3 generations, 5 completion tokens
B = Q * G
LENGTHS_B = np.array([5, 2, 3, 1, 4, 5])
EPS_LOW, EPS_HIGH = 0.2, 0.28
SEED = 1  # clips tokens with A > 0 and A < 0, with per-token and per-sequence ratios
VALUE_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)  # float32 jax.grad vs float64 central differences


def f32(x):
    """Rounds to float32 and back, so that references see exactly what the jax code sees."""
    return np.asarray(x, np.float32).astype(np.float64)


def make_inputs(seed=0):
    """Random float64 (already float32-representable) logp/old/ref [B, N], rewards [Q, G]."""
    rng = np.random.default_rng(seed)
    old_BN = f32(-rng.uniform(0.3, 2.5, (B, N)))
    logp_BN = f32(old_BN + rng.normal(0.0, 0.5, (B, N)))  # |log-ratio| ~ 0.5: many tokens clip
    ref_BN = f32(old_BN + rng.normal(0.0, 0.3, (B, N)))
    rewards_QG = f32(rng.normal(0.0, 1.0, (Q, G)))
    return logp_BN, old_BN, ref_BN, rewards_QG


def loop_mask(lengths_B, n):
    """1 up to and including position length-1, 0 after."""
    mask = np.zeros((len(lengths_B), n))
    for b, length in enumerate(lengths_B):
        for t in range(n):
            if t <= length - 1:
                mask[b, t] = 1.0
    return mask


def ref_advantages(rewards_QG, kind, eps=1e-4):
    """Explicit per-question formulas, float64."""
    r = np.asarray(rewards_QG, np.float64)
    out = np.zeros_like(r)
    for q in range(r.shape[0]):
        mean, std = r[q].mean(), r[q].std(ddof=1)
        for i in range(r.shape[1]):
            if kind == "grpo":
                out[q, i] = (r[q, i] - mean) / (std + eps)
            elif kind == "dr_grpo":
                out[q, i] = r[q, i] - mean
            elif kind == "rloo":
                others = [r[q, j] for j in range(r.shape[1]) if j != i]
                out[q, i] = r[q, i] - sum(others) / len(others)
            else:
                raise AssertionError(kind)
    return out


def ref_per_token(logp_BN, old_BN, ref_BN, adv_B, mask_BN, c):
    """Per-token loss, clipped flag and ratio, with loops over sequences and tokens, float64."""
    per_token, clipped_BN, ratio_BN = (np.zeros(logp_BN.shape) for _ in range(3))
    for b in range(logp_BN.shape[0]):
        valid = [t for t in range(logp_BN.shape[1]) if mask_BN[b, t] > 0]
        seq_log_ratio = sum(logp_BN[b, t] - old_BN[b, t] for t in valid) / max(len(valid), 1)
        for t in valid:
            if c.ratio == "sequence":
                ratio = np.exp(seq_log_ratio)
            else:
                ratio = np.exp(logp_BN[b, t] - old_BN[b, t])
            ratio_BN[b, t] = ratio
            a = adv_B[b]
            unclipped = ratio * a
            clipped = min(max(ratio, 1 - c.eps_low), 1 + c.eps_high) * a
            per_token[b, t] = -min(unclipped, clipped)
            clipped_BN[b, t] = float(clipped < unclipped)
            if c.beta > 0 and c.kl == "k3_loss":
                d = ref_BN[b, t] - logp_BN[b, t]
                per_token[b, t] += c.beta * (np.exp(d) - d - 1)
    return per_token, clipped_BN, ratio_BN


def aggregate(values_BN, mask_BN, aggregation):
    """Loop aggregation of masked per-token values to a scalar."""
    total, count, seq_means = 0.0, 0, []
    for b in range(values_BN.shape[0]):
        seq_total, seq_count = 0.0, 0
        for t in range(values_BN.shape[1]):
            if mask_BN[b, t] > 0:
                seq_total += values_BN[b, t]
                seq_count += 1
        seq_means.append(seq_total / max(seq_count, 1))
        total, count = total + seq_total, count + seq_count
    if aggregation == "seq_mean":
        return sum(seq_means) / len(seq_means)
    if aggregation == "token_mean":
        return total / max(count, 1)
    if aggregation == "constant":
        return total / values_BN.size
    raise AssertionError(aggregation)


def ref_loss(logp_BN, old_BN, ref_BN, adv_B, mask_BN, c):
    per_token, *_ = ref_per_token(logp_BN, old_BN, ref_BN, adv_B, mask_BN, c)
    return aggregate(per_token, mask_BN, c.aggregation)


def ref_grad(logp_BN, old_BN, ref_BN, adv_B, mask_BN, c, h=1e-6):
    """Central finite differences of `ref_loss` w.r.t. logp, float64."""
    grad = np.zeros(logp_BN.shape)
    for b, t in itertools.product(range(logp_BN.shape[0]), range(logp_BN.shape[1])):
        up, down = logp_BN.copy(), logp_BN.copy()
        up[b, t] += h
        down[b, t] -= h
        grad[b, t] = (
            ref_loss(up, old_BN, ref_BN, adv_B, mask_BN, c)
            - ref_loss(down, old_BN, ref_BN, adv_B, mask_BN, c)
        ) / (2 * h)
    return grad


def loss_and_grad(logp_BN, old_BN, ref_BN, adv_B, mask_BN, c):
    """(loss, metrics), d loss / d logp of grpo_loss.policy_loss on float32 inputs."""
    as32 = lambda x: None if x is None else jnp.asarray(x, jnp.float32)
    fn = lambda lp: grpo_loss.policy_loss(
        lp, as32(old_BN), as32(ref_BN), as32(adv_B), as32(mask_BN), c
    )
    (loss, metrics), grad_BN = jax.value_and_grad(fn, has_aux=True)(as32(logp_BN))
    return (loss, metrics), grad_BN


def loss_config(**kw):
    return grpo_loss.LossConfig(**{"eps_low": EPS_LOW, "eps_high": EPS_HIGH, **kw})


# -- advantages, k3, completion_mask -------------------------------------------------------------


@pytest.mark.parametrize("kind", grpo_loss.ADVANTAGES)
@pytest.mark.parametrize("seed", [0, 1])
def test_advantages_match_reference(kind, seed):
    """Every advantage estimator equals its per-question loop formula."""
    *_, rewards_QG = make_inputs(seed)
    adv_QG = grpo_loss.advantages(jnp.asarray(rewards_QG, jnp.float32), kind, 1e-4)
    chex.assert_shape(adv_QG, (Q, G))
    chex.assert_trees_all_close(adv_QG, ref_advantages(rewards_QG, kind, 1e-4), **VALUE_TOL)


def test_rloo_is_not_dr_grpo():
    """RLOO's leave-one-out baseline differs from the group mean (guards a swapped branch)."""
    *_, rewards_QG = make_inputs(SEED)
    r = jnp.asarray(rewards_QG, jnp.float32)
    assert not np.allclose(grpo_loss.advantages(r, "rloo"), grpo_loss.advantages(r, "dr_grpo"))


def test_k3_matches_formula_and_is_nonnegative():
    """k3 = exp(ref - logp) - (ref - logp) - 1 >= 0, 0 iff logp == ref."""
    logp_BN, _, ref_BN, _ = make_inputs(2)
    got_BN = grpo_loss.k3(jnp.asarray(logp_BN, jnp.float32), jnp.asarray(ref_BN, jnp.float32))
    chex.assert_shape(got_BN, (B, N))
    d = ref_BN - logp_BN
    chex.assert_trees_all_close(got_BN, np.exp(d) - d - 1, rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(got_BN) >= 0)
    same = grpo_loss.k3(jnp.asarray(logp_BN, jnp.float32), jnp.asarray(logp_BN, jnp.float32))
    chex.assert_trees_all_equal(same, jnp.zeros((B, N)))


def test_completion_mask_matches_loop():
    """1 up to and including the first EOS (position length-1), 0 on padding."""
    mask_BN = grpo_loss.completion_mask(jnp.asarray(LENGTHS_B), N)
    chex.assert_shape(mask_BN, (B, N))
    chex.assert_type(mask_BN, jnp.float32)
    chex.assert_trees_all_equal(mask_BN, jnp.asarray(loop_mask(LENGTHS_B, N), jnp.float32))
    np.testing.assert_array_equal(np.asarray(mask_BN).sum(-1), LENGTHS_B)


# -- policy_loss against the loop reference ------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("ratio", grpo_loss.RATIOS)
@pytest.mark.parametrize("aggregation", grpo_loss.AGGREGATIONS)
def test_policy_loss_and_grad_match_reference(aggregation, ratio, beta):
    """Loss value, metrics and d loss / d logp equal the loop reference (+ finite differences)."""
    c = loss_config(aggregation=aggregation, ratio=ratio, beta=beta, kl="k3_loss")
    logp_BN, old_BN, ref_BN, rewards_QG = make_inputs(SEED)
    adv_B = f32(ref_advantages(rewards_QG, "grpo").reshape(-1))
    assert (adv_B > 0).any() and (adv_B < 0).any()
    mask_BN = loop_mask(LENGTHS_B, N)

    (loss, metrics), grad_BN = loss_and_grad(logp_BN, old_BN, ref_BN, adv_B, mask_BN, c)
    chex.assert_shape(loss, ())
    chex.assert_shape(grad_BN, (B, N))
    chex.assert_trees_all_close(
        loss, ref_loss(logp_BN, old_BN, ref_BN, adv_B, mask_BN, c), **VALUE_TOL
    )
    want_grad_BN = ref_grad(logp_BN, old_BN, ref_BN, adv_B, mask_BN, c)
    chex.assert_trees_all_close(grad_BN, want_grad_BN, **GRAD_TOL)
    chex.assert_trees_all_equal(grad_BN * (1 - mask_BN), jnp.zeros((B, N)))  # padding: no grad

    _, clipped_BN, ratio_BN = ref_per_token(logp_BN, old_BN, ref_BN, adv_B, mask_BN, c)
    chex.assert_trees_all_close(
        metrics["clip_fraction"], aggregate(clipped_BN, mask_BN, "token_mean"), **VALUE_TOL
    )
    chex.assert_trees_all_close(
        metrics["ratio_mean"], aggregate(ratio_BN, mask_BN, "token_mean"), **VALUE_TOL
    )
    if beta > 0:
        d = ref_BN - logp_BN
        want_kl = aggregate(np.exp(d) - d - 1, mask_BN, "token_mean")
        chex.assert_trees_all_close(metrics["kl"], want_kl, **VALUE_TOL)
    else:
        assert "kl" not in metrics


@pytest.mark.parametrize("ratio", grpo_loss.RATIOS)
def test_clip_branch_is_exercised(ratio):
    """The random inputs above clip some tokens, for both signs of the advantage."""
    c = loss_config(ratio=ratio, beta=0.0)
    logp_BN, old_BN, ref_BN, rewards_QG = make_inputs(SEED)
    adv_B = f32(ref_advantages(rewards_QG, "grpo").reshape(-1))
    mask_BN = loop_mask(LENGTHS_B, N)
    (_, metrics), grad_BN = loss_and_grad(logp_BN, old_BN, None, adv_B, mask_BN, c)
    assert float(metrics["clip_fraction"]) > 0
    _, clipped_BN, _ = ref_per_token(logp_BN, old_BN, ref_BN, adv_B, mask_BN, c)
    assert (clipped_BN[adv_B > 0].sum() > 0) and (clipped_BN[adv_B < 0].sum() > 0)
    # A clipped token gets no gradient; an unclipped one does.
    g = np.asarray(grad_BN)
    assert np.all(g[clipped_BN > 0] == 0)
    assert np.all(g[(mask_BN > 0) & (clipped_BN == 0)] != 0)


def test_k1_reward_mode_keeps_kl_out_of_the_loss():
    """kl='k1_reward' (KL in the reward) gives the beta=0 loss and no kl metric."""
    logp_BN, old_BN, ref_BN, rewards_QG = make_inputs(3)
    adv_B = f32(ref_advantages(rewards_QG, "dr_grpo").reshape(-1))
    mask_BN = loop_mask(LENGTHS_B, N)
    c = loss_config(beta=0.04, kl="k1_reward")
    assert not c.kl_in_loss
    (loss, metrics), grad_BN = loss_and_grad(logp_BN, old_BN, ref_BN, adv_B, mask_BN, c)
    c0 = dataclasses.replace(c, beta=0.0)
    (loss0, _), grad0_BN = loss_and_grad(logp_BN, old_BN, None, adv_B, mask_BN, c0)
    assert "kl" not in metrics
    chex.assert_trees_all_equal((loss, grad_BN), (loss0, grad0_BN))


# -- special cases -------------------------------------------------------------------------------


def zero_variance_case(equal_reward):
    """Question 0 has equal rewards, question 1 random ones; grpo advantages in float32."""
    rewards_QG = np.array([[equal_reward] * G, [0.3, -1.2, 0.9]], np.float32)
    return grpo_loss.advantages(jnp.asarray(rewards_QG), "grpo").reshape(-1)


def test_kl_penalized_rewards_match_a_loop():
    """k1 in the reward: r_b - beta * sum over b's real tokens of (old - ref), on random values,
    for NumPy and JAX inputs alike."""
    rng = np.random.default_rng(0)
    B, N, beta = 6, 5, 0.04
    r = rng.random(B).astype(np.float32)
    old, ref = rng.normal(size=(2, B, N)).astype(np.float32)
    mask = (np.arange(N)[None] < rng.integers(1, N + 1, B)[:, None]).astype(np.float32)
    want = [
        r[b] - beta * sum(old[b, t] - ref[b, t] for t in range(N) if mask[b, t]) for b in range(B)
    ]
    np.testing.assert_allclose(
        grpo_loss.kl_penalized_rewards(r, old, ref, mask, beta), want, rtol=1e-5
    )
    got = grpo_loss.kl_penalized_rewards(*map(jnp.asarray, (r, old, ref, mask)), beta)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("aggregation", grpo_loss.AGGREGATIONS)
@pytest.mark.parametrize("ratio", grpo_loss.RATIOS)
def test_zero_variance_group_has_no_advantage_and_no_gradient(ratio, aggregation):
    """A question whose G rewards are equal (here 1.0) gets A = 0 and exactly zero gradient."""
    adv_B = zero_variance_case(1.0)
    chex.assert_trees_all_equal(adv_B[:G], jnp.zeros(G))
    logp_BN, old_BN, *_ = make_inputs(4)
    c = loss_config(ratio=ratio, aggregation=aggregation, beta=0.0)
    mask_BN = loop_mask(LENGTHS_B, N)
    _, grad_BN = loss_and_grad(logp_BN, old_BN, None, adv_B, mask_BN, c)
    chex.assert_trees_all_equal(grad_BN[:G], jnp.zeros((G, N)))
    assert np.any(np.asarray(grad_BN[G:]) != 0)  # the other question does learn


@pytest.mark.parametrize("equal_reward", [0.1, 1.1])
def test_zero_variance_group_with_fractional_reward_has_no_advantage(equal_reward):
    """Equal rewards such as 0.1 (format reward only) should also give A = 0 exactly."""
    adv_B = zero_variance_case(equal_reward)
    chex.assert_trees_all_equal(adv_B[:G], jnp.zeros(G))


@pytest.mark.parametrize("aggregation", grpo_loss.AGGREGATIONS)
def test_kl_vanishes_when_policy_equals_reference(aggregation):
    """logp == ref_logp: kl metric 0, and loss and gradient equal those with beta = 0."""
    logp_BN, old_BN, _, rewards_QG = make_inputs(5)
    adv_B = f32(ref_advantages(rewards_QG, "grpo").reshape(-1))
    mask_BN = loop_mask(LENGTHS_B, N)
    c = loss_config(aggregation=aggregation, beta=0.04, kl="k3_loss")
    (loss, metrics), grad_BN = loss_and_grad(logp_BN, old_BN, logp_BN, adv_B, mask_BN, c)
    c0 = loss_config(aggregation=aggregation, beta=0.0)
    (loss0, _), grad0_BN = loss_and_grad(logp_BN, old_BN, None, adv_B, mask_BN, c0)
    assert float(metrics["kl"]) == 0.0
    chex.assert_trees_all_equal(loss, loss0)
    chex.assert_trees_all_equal(grad_BN, grad0_BN)


@pytest.mark.parametrize("ratio", grpo_loss.RATIOS)
def test_ratios_are_one_on_the_first_inner_iteration(ratio):
    """logp == old_logp: ratio 1, nothing clipped, token_mean loss = -masked mean of A."""
    logp_BN, _, _, rewards_QG = make_inputs(6)
    adv_B = f32(ref_advantages(rewards_QG, "rloo").reshape(-1))
    mask_BN = loop_mask(LENGTHS_B, N)
    c = loss_config(ratio=ratio, aggregation="token_mean", beta=0.0)
    (loss, metrics), grad_BN = loss_and_grad(logp_BN, logp_BN, None, adv_B, mask_BN, c)
    assert float(metrics["ratio_mean"]) == 1.0
    assert float(metrics["clip_fraction"]) == 0.0
    n_tokens = LENGTHS_B.sum()
    want = -sum(adv_B[b] * LENGTHS_B[b] for b in range(B)) / n_tokens
    chex.assert_trees_all_close(loss, want, **VALUE_TOL)
    if ratio == "token":  # d loss / d logp = -A / #tokens on every masked token
        want_grad_BN = -adv_B[:, None] * mask_BN / n_tokens
        chex.assert_trees_all_close(grad_BN, want_grad_BN, **VALUE_TOL)


@pytest.mark.parametrize("ratio", grpo_loss.RATIOS)
@pytest.mark.parametrize("aggregation", grpo_loss.AGGREGATIONS)
def test_padding_values_do_not_matter(aggregation, ratio):
    """Arbitrary (huge, -inf) logp / old / ref at padding change neither loss nor gradient."""
    logp_BN, old_BN, ref_BN, rewards_QG = make_inputs(7)
    adv_B = f32(ref_advantages(rewards_QG, "grpo").reshape(-1))
    mask_BN = loop_mask(LENGTHS_B, N)
    pad = mask_BN == 0
    c = loss_config(aggregation=aggregation, ratio=ratio, beta=0.04, kl="k3_loss")
    (loss, metrics), grad_BN = loss_and_grad(logp_BN, old_BN, ref_BN, adv_B, mask_BN, c)
    rng = np.random.default_rng(8)
    for garbage in (1e4, -1e4, -np.inf):
        junk = lambda x, g=garbage: np.where(pad, g * rng.uniform(0.5, 2.0, x.shape), x)
        (loss2, metrics2), grad2_BN = loss_and_grad(
            junk(logp_BN), junk(old_BN), junk(ref_BN), adv_B, mask_BN, c
        )
        chex.assert_tree_all_finite((loss2, metrics2, grad2_BN))
        chex.assert_trees_all_close(loss2, loss, **VALUE_TOL)
        chex.assert_trees_all_close(metrics2, metrics, **VALUE_TOL)
        chex.assert_trees_all_close(grad2_BN, grad_BN, **VALUE_TOL)


# -- config validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, allowed",
    [
        ("advantage", grpo_loss.ADVANTAGES),
        ("ratio", grpo_loss.RATIOS),
        ("kl", grpo_loss.KL_MODES),
        ("aggregation", grpo_loss.AGGREGATIONS),
    ],
)
def test_unknown_choice_names_key_and_allowed_values(key, allowed):
    """A bad choice raises ValueError naming grpo.<key> and listing every allowed value."""
    with pytest.raises(ValueError, match=rf"grpo\.{key}\b") as info:
        grpo_loss.LossConfig(**{key: "x"})
    for value in allowed:
        assert value in str(info.value)


@pytest.mark.parametrize("key", ["beta", "eps_low", "eps_high", "adv_eps"])
def test_negative_number_names_key(key):
    """A negative beta / clip range / eps raises ValueError naming grpo.<key>."""
    with pytest.raises(ValueError, match=rf"grpo\.{key}\b"):
        grpo_loss.LossConfig(**{key: -0.1})


def test_advantages_rejects_unknown_kind():
    with pytest.raises(ValueError, match=r"grpo\.advantage"):
        grpo_loss.advantages(jnp.ones((Q, G)), "x")


# -- jit -----------------------------------------------------------------------------------------


class PolicyLossJitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree(self):
        """policy_loss (and its gradient) is the same compiled and eager."""
        logp_BN, old_BN, ref_BN, rewards_QG = make_inputs(9)
        adv_B = f32(ref_advantages(rewards_QG, "dr_grpo").reshape(-1))
        mask_BN = loop_mask(LENGTHS_B, N)
        c = loss_config(ratio="sequence", aggregation="seq_mean", beta=0.04)
        args = [jnp.asarray(x, jnp.float32) for x in (logp_BN, old_BN, ref_BN, adv_B, mask_BN)]

        def fn(*a):
            return jax.value_and_grad(grpo_loss.policy_loss, has_aux=True)(*a, c)

        got = self.variant(fn)(*args)
        want = ref_loss(logp_BN, old_BN, ref_BN, adv_B, mask_BN, c)
        chex.assert_trees_all_close(got[0][0], want, **VALUE_TOL)
        chex.assert_trees_all_close(got, fn(*args), **VALUE_TOL)


# -- CISPO, V3.2's unbiased KL and off-policy masking, TIS / MIS ---------------------------------


def ref_extended_loss(x_BN, const_BN, old_BN, ref_BN, sampler_BN, adv_B, mask_BN, c):
    """The loss from each paper's formula with loops, float64. `x` is the log-prob being
    differentiated; `const` the same log-probs where the formulas hold them constant
    (stop_gradient: CISPO's clipped weight, V3.2's masking drift), so that central differences
    in `x` alone give the gradient the papers define."""
    C = c.is_threshold
    per_token, loss_mask = np.zeros(x_BN.shape), np.zeros(x_BN.shape)
    for b in range(x_BN.shape[0]):
        valid = [t for t in range(x_BN.shape[1]) if mask_BN[b, t] > 0]
        a = adv_B[b]
        # V3.2: mean log(pi_old / pi_theta) over the sequence, a constant.
        drift = sum(old_BN[b, t] - const_BN[b, t] for t in valid) / max(len(valid), 1)
        seq_masked = c.off_policy_mask and a < 0 and drift > c.off_policy_delta
        seq_log_w = sum(old_BN[b, t] - sampler_BN[b, t] for t in valid)
        for t in valid:
            r = np.exp(x_BN[b, t] - old_BN[b, t])
            r_const = np.exp(const_BN[b, t] - old_BN[b, t])
            if c.loss == "cispo":  # MiniMax-M1 eq. 4: sg(clipped weight) * A * log pi
                term = -min(max(r_const, 1 - c.eps_low), 1 + c.eps_high) * a * x_BN[b, t]
            else:
                term = -min(r * a, min(max(r, 1 - c.eps_low), 1 + c.eps_high) * a)
            keep = 1.0
            if c.is_correction != "none":
                log_w = seq_log_w if c.is_correction.startswith("sequence") else None
                w = np.exp(old_BN[b, t] - sampler_BN[b, t] if log_w is None else log_w)
                if c.is_correction.endswith("truncate"):
                    term *= min(w, C)
                else:
                    keep = float(1 / C <= w <= C)
            if seq_masked:
                term = 0.0
            kl = 0.0
            if c.beta > 0:
                d = ref_BN[b, t] - x_BN[b, t]
                kl = np.exp(d) - d - 1
                if c.kl_unbiased:  # V3.2: weighted by pi_theta / pi_old, gradient kept
                    kl *= r
            per_token[b, t] = term + c.beta * kl
            loss_mask[b, t] = keep
    return aggregate(per_token, loss_mask, c.aggregation)


def extended_inputs(seed):
    logp_BN, old_BN, ref_BN, rewards_QG = make_inputs(seed)
    rng = np.random.default_rng(seed + 100)
    sampler_BN = f32(old_BN + rng.normal(0.0, 0.4, old_BN.shape))  # weights on both sides of C
    adv_B = f32(ref_advantages(rewards_QG, "grpo").reshape(-1))
    return logp_BN, old_BN, ref_BN, sampler_BN, adv_B, loop_mask(LENGTHS_B, N)


def check_extended(c, seed=SEED):
    logp_BN, old_BN, ref_BN, sampler_BN, adv_B, mask_BN = extended_inputs(seed)
    as32 = lambda x: jnp.asarray(x, jnp.float32)
    fn = lambda lp: grpo_loss.policy_loss(
        lp, as32(old_BN), as32(ref_BN), as32(adv_B), as32(mask_BN), c, as32(sampler_BN)
    )
    (loss, metrics), grad_BN = jax.value_and_grad(fn, has_aux=True)(as32(logp_BN))
    args = (old_BN, ref_BN, sampler_BN, adv_B, mask_BN, c)
    want = ref_extended_loss(logp_BN, logp_BN, *args)
    chex.assert_trees_all_close(loss, want, **VALUE_TOL)
    want_grad, h = np.zeros(logp_BN.shape), 1e-6
    for b, t in itertools.product(range(B), range(N)):
        up, down = logp_BN.copy(), logp_BN.copy()
        up[b, t] += h
        down[b, t] -= h
        want_grad[b, t] = (
            ref_extended_loss(up, logp_BN, *args) - ref_extended_loss(down, logp_BN, *args)
        ) / (2 * h)
    chex.assert_trees_all_close(grad_BN, want_grad, **GRAD_TOL)
    chex.assert_trees_all_equal(grad_BN * (1 - mask_BN), jnp.zeros((B, N)))
    return metrics, np.asarray(grad_BN)


@pytest.mark.parametrize("correction", grpo_loss.IS_CORRECTIONS)
@pytest.mark.parametrize("loss", grpo_loss.LOSSES)
def test_cispo_and_sampler_corrections_match_their_formulas(loss, correction):
    """CISPO and TIS / MIS (token and sequence), value and gradient, against the loops."""
    aggregation = "token_mean" if correction.endswith("mask") else "seq_mean"
    c = loss_config(loss=loss, is_correction=correction, beta=0.0, aggregation=aggregation)
    metrics, _ = check_extended(c)
    if correction != "none":  # the random sampler log-probs leave [1/C, C] on some tokens
        assert 0 < float(metrics["is_corrected_fraction"]) < 1


@pytest.mark.parametrize("aggregation", grpo_loss.AGGREGATIONS)
def test_unbiased_kl_and_off_policy_masking_match_v32(aggregation):
    """V3.2's unbiased KL (k3 x ratio, gradient through the ratio) and off-policy sequence
    masking, with both GRPO and CISPO terms."""
    for loss in grpo_loss.LOSSES:
        c = loss_config(
            loss=loss,
            beta=0.04,
            kl_unbiased=True,
            off_policy_mask=True,
            off_policy_delta=0.1,
            aggregation=aggregation,
        )
        metrics, grad_BN = check_extended(c)
        assert 0 < float(metrics["off_policy_masked"]) < 1  # some sequences masked, not all


def test_off_policy_mask_drops_only_drifted_negative_sequences():
    logp_BN, old_BN, _, sampler_BN, adv_B, mask_BN = extended_inputs(SEED)
    c = loss_config(beta=0.0, off_policy_mask=True, off_policy_delta=0.1)
    grad = lambda c: np.asarray(
        jax.grad(lambda lp: grpo_loss.policy_loss(lp, old_BN, None, adv_B, mask_BN, c)[0])(
            jnp.asarray(logp_BN, jnp.float32)
        )
    )
    drift_B = ((old_BN - logp_BN) * mask_BN).sum(-1) / mask_BN.sum(-1)
    dropped = (adv_B < 0) & (drift_B > 0.1)
    assert dropped.any() and (~dropped & (adv_B < 0)).any()
    g, g_plain = grad(c), grad(dataclasses.replace(c, off_policy_mask=False))
    assert np.all(g[dropped] == 0)
    np.testing.assert_array_equal(g[~dropped], g_plain[~dropped])


def test_cispo_keeps_the_gradient_of_clipped_tokens():
    """Where the GRPO surrogate gives a clipped token no gradient, CISPO gives it the clipped
    weight's: -clip(r) * A per token (token_mean over the tokens)."""
    logp_BN, old_BN, _, _, adv_B, mask_BN = extended_inputs(SEED)
    c = loss_config(loss="cispo", beta=0.0, aggregation="token_mean")
    g = jax.grad(lambda lp: grpo_loss.policy_loss(lp, old_BN, None, adv_B, mask_BN, c)[0])(
        jnp.asarray(logp_BN, jnp.float32)
    )
    r = np.exp(logp_BN - old_BN)
    want = -np.clip(r, 1 - EPS_LOW, 1 + EPS_HIGH) * adv_B[:, None] * mask_BN / mask_BN.sum()
    chex.assert_trees_all_close(g, want, **VALUE_TOL)
    assert np.all(np.asarray(g)[mask_BN > 0] != 0)


def test_corrections_change_nothing_on_policy():
    """With pi_old = sampler = pi_theta (the first update of an on-policy step), TIS/MIS weigh
    1, nothing is masked, and the unbiased KL's value is the plain k3's."""
    logp_BN, _, ref_BN, _, adv_B, mask_BN = extended_inputs(SEED)
    args = [jnp.asarray(x, jnp.float32) for x in (logp_BN, logp_BN, ref_BN, adv_B, mask_BN)]
    plain = loss_config(beta=0.04)
    want, _ = grpo_loss.policy_loss(*args, plain)
    for correction in grpo_loss.IS_CORRECTIONS[1:]:
        c = dataclasses.replace(plain, is_correction=correction, kl_unbiased=True)
        c = dataclasses.replace(c, off_policy_mask=True, off_policy_delta=0.0)
        got, metrics = grpo_loss.policy_loss(*args, c, args[1])
        chex.assert_trees_all_close(got, want, **VALUE_TOL)
        assert float(metrics["is_corrected_fraction"]) == 0
        assert float(metrics["off_policy_masked"]) == 0


def test_new_choices_are_validated():
    with pytest.raises(ValueError, match=r"grpo\.loss\b.*cispo"):
        grpo_loss.LossConfig(loss="x")
    with pytest.raises(ValueError, match=r"grpo\.is_correction\b.*token_truncate"):
        grpo_loss.LossConfig(is_correction="x")
    with pytest.raises(ValueError, match=r"grpo\.is_threshold"):
        grpo_loss.LossConfig(is_threshold=1.0)
    with pytest.raises(ValueError, match=r"grpo\.ratio must be 'token'"):
        grpo_loss.LossConfig(loss="cispo", ratio="sequence")
