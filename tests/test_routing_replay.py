"""What the sampler records for the trainer, against slow references: routing replay (R3;
DeepSeek-V3.2's Keep Routing: each token's experts, routed to again in training) and V3.2's
Keep Sampling Mask (the top-k/top-p truncation, applied to the trainer's logits)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_rl import sampling
from moe_rl.models import moe, transformer
from moe_rl.train import grpo_step, rollout

PAD, EOS = 0, 1


def ref_route_replayed(logits_TE, replay_TK, cfg):
    """Loops: the gates of the recorded experts from the current scores, normalised and
    scaled as DeepSeek-V3 eq. 15 does for its own top-k."""
    scores = 1 / (1 + np.exp(-np.asarray(logits_TE, np.float64)))
    gates = np.zeros(replay_TK.shape)
    for t in range(replay_TK.shape[0]):
        chosen = [scores[t, e] for e in replay_TK[t]]
        for k, s in enumerate(chosen):
            gates[t, k] = s / sum(chosen) if cfg.norm_topk_prob else s
    return gates * cfg.routed_scaling_factor


def random_replay(key, T, E, K):
    """K distinct random experts per token."""
    keys = jax.random.split(key, T)
    return jax.vmap(lambda k: jax.random.permutation(k, E)[:K])(keys).astype(jnp.int32)


def test_route_uses_the_recorded_experts_with_current_gates(tiny):
    cfg = tiny[0]
    T, E, K = 16, cfg.n_routed_experts, cfg.num_experts_per_tok
    logits_TE = jax.random.normal(jax.random.key(0), (T, E))
    bias_E = jax.random.normal(jax.random.key(1), (E,))
    replay_TK = random_replay(jax.random.key(2), T, E, K)
    replay_TK = replay_TK.at[:3].set(-1)  # nothing recorded: the token routes itself
    _, own_TK, own_gates = moe.route(logits_TE, bias_E, cfg)
    _, ids_TK, gates_TK = moe.route(logits_TE, bias_E, cfg, replay_TK)
    chex.assert_trees_all_equal(ids_TK[3:], replay_TK[3:])
    chex.assert_trees_all_equal(ids_TK[:3], own_TK[:3])
    chex.assert_trees_all_close(gates_TK[:3], own_gates[:3], rtol=1e-6)
    want = ref_route_replayed(logits_TE[3:], np.asarray(replay_TK[3:]), cfg)
    chex.assert_trees_all_close(gates_TK[3:], want, rtol=1e-5, atol=1e-7)
    differs = moe.replay_differs(own_TK, replay_TK, jnp.ones(T, bool))
    loop = sum(set(map(int, own_TK[t])) != set(map(int, replay_TK[t])) for t in range(3, T))
    assert float(differs) == loop > 0


def test_replay_overrides_the_router_and_keeps_its_gradient(tiny):
    cfg, params, state = tiny
    B, L, K, M = 2, 12, cfg.num_experts_per_tok, cfg.num_moe_layers
    tokens = jax.random.randint(jax.random.key(3), (B, L), 2, cfg.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(L), (B, L))
    replay = random_replay(jax.random.key(4), M * B * L, cfg.n_routed_experts, K)
    replay = replay.reshape(M, B, L, K)

    def loss(params, replay):
        logits, _, aux = transformer.forward(
            cfg, params, state, tokens, positions, mtp=False, replay=replay
        )
        return jnp.mean(jax.nn.log_softmax(logits)[..., 5]), aux

    (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params, replay)
    chex.assert_trees_all_equal(aux["expert_ids"], replay)
    assert float(jnp.sum(aux["replay_tokens"])) == M * B * L
    router_grads = [
        g
        for path, g in jax.tree_util.tree_leaves_with_path(grads)
        if "router" in str(path) and "mtp" not in str(path)
    ]
    assert router_grads and all(float(jnp.abs(g).max()) > 0 for g in router_grads)
    own, _ = loss(params, None)
    assert abs(float(own) - float(value)) > 1e-6  # other experts, other logits


def test_sampler_routing_replayed_in_the_packed_training_forward(tiny):
    """The sampler's recorded experts are exactly those of the packed training forward with
    replay, and its log-probs equal the sampler's (float32); the bias is random so that the
    selection is not the unbiased top-k."""
    cfg, params, state = tiny
    state = jax.tree.map(lambda b: 0.3 * jax.random.normal(jax.random.key(5), b.shape), state)
    prompts = [[2, 5, 7, 9, 11], [3, 4, 6]]
    G, sp = 3, sampling.SamplingParams(temperature=1.0, max_new_tokens=6)
    out = sampling.generate(
        cfg,
        params,
        state,
        prompts,
        jax.random.key(6),
        sp,
        eos_id=EOS,
        pad_id=PAD,
        num_samples=G,
        record_routing=True,
    )
    Q, N, M = len(prompts), sp.max_new_tokens, cfg.num_moe_layers
    K = cfg.num_experts_per_tok
    assert out.routing.shape == (M, Q * G, N, K)
    (tokens_QL, seg_QL, pos_QL), lengths, P, replay_QMLK = rollout.pack_samples(
        prompts, out, G, PAD
    )
    logp, targets, aux = grpo_step.completion_logits(
        cfg, params, state, tokens_QL, seg_QL, pos_QL, P, G, replay_QMLK
    )
    logp = sampling.token_logprobs(logp, targets, sp.temperature)
    mask = np.arange(N) < lengths[..., None]
    np.testing.assert_allclose(
        np.asarray(logp)[mask], np.asarray(out.logprobs).reshape(Q, G, N)[mask], atol=1e-5
    )
    # Every recorded (token, layer) is used as recorded; the unrecorded ones route themselves.
    replay_MQLK = np.swapaxes(replay_QMLK, 0, 1)
    used = np.asarray(aux["expert_ids"])
    recorded = replay_MQLK[..., 0] >= 0
    np.testing.assert_array_equal(used[recorded], replay_MQLK[recorded])
    # Recorded: every prompt token and every completion token but the last one of a row that
    # ended the decoding (never fed); at float32 the trainer's own routing agrees.
    assert recorded[:, :, P:].sum() >= M * (lengths.sum() - Q * G)
    assert float(grpo_step.routing_mismatch(aux)) == 0.0
    _, _, own = grpo_step.completion_logits(
        cfg, params, state, tokens_QL, seg_QL, pos_QL, P, G, replay_QMLK, False
    )
    assert float(grpo_step.routing_mismatch(own)) == 0.0


def test_record_routing_needs_an_moe(tiny_dense):
    cfg, params, state = tiny_dense
    with pytest.raises(ValueError, match="record_routing needs an MoE"):
        sampling.generate(
            cfg,
            params,
            state,
            [[2, 3]],
            jax.random.key(0),
            sampling.SamplingParams(),
            eos_id=EOS,
            pad_id=PAD,
            record_routing=True,
        )


def test_kept_sampling_mask_is_the_truncation_and_matches_the_sampler(tiny):
    """The recorded mask is exactly what top-k/top-p kept at each fed slot (recomputed here
    from the training forward's logits); applied to the trainer's logits it gives the
    sampler's log-probs of the truncated distribution, which the unmasked ones are not."""
    cfg, params, state = tiny
    prompts = [[2, 5, 7, 9, 11], [3, 4, 6]]
    G, sp = 2, sampling.SamplingParams(temperature=0.7, top_k=12, top_p=0.9, max_new_tokens=6)
    out = sampling.generate(
        cfg,
        params,
        state,
        prompts,
        jax.random.key(7),
        sp,
        eos_id=EOS,
        pad_id=PAD,
        num_samples=G,
        keep_mask=True,
    )
    Q, N, V = len(prompts), sp.max_new_tokens, cfg.vocab_size
    packed, lengths, P, _ = rollout.pack_samples(prompts, out, G, PAD)
    tokens_QGN = np.asarray(out.tokens).reshape(Q, G, N)
    logits, targets, _ = grpo_step.completion_logits(cfg, params, state, *packed, P, G)
    kept = np.asarray(out.kept).reshape(Q, G, N, V)
    fed = np.arange(N) < lengths[..., None]
    want = np.isfinite(np.asarray(sampling.filter_logits(logits.reshape(-1, V), sp)))
    np.testing.assert_array_equal(kept[fed], want.reshape(Q, G, N, V)[fed])
    assert not kept[~fed].any()
    assert np.all(kept[fed].sum(-1) <= sp.top_k) and np.all(
        np.take_along_axis(kept, tokens_QGN[..., None], -1)[..., 0][fed]
    )
    sampler = np.asarray(out.logprobs).reshape(Q, G, N)
    masked = grpo_step.keep_sampling_mask(logits / sp.temperature, kept)
    trainer = np.asarray(sampling.token_logprobs(masked, targets))
    np.testing.assert_allclose(trainer[fed], sampler[fed], atol=1e-5)
    plain = np.asarray(sampling.token_logprobs(logits, targets, sp.temperature))
    assert np.abs(plain[fed] - sampler[fed]).max() > 1e-3  # the mask is what makes them agree
    recomputed = grpo_step.completion_logprobs(
        cfg, params, state, *packed, P, G, sp.temperature, None, kept
    )
    np.testing.assert_allclose(np.asarray(recomputed)[fed], sampler[fed], atol=1e-5)
