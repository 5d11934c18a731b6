"""The sampler against cache-free full forward passes: greedy tokens, log-probs, EOS, compiles."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_rl import sampling
from moe_rl.models import transformer

EOS, PAD = 2, 0
PROMPTS = [[1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49], [1, 60, 61], [1, 70, 71, 72, 73, 74]]
N = 10


@pytest.fixture(params=["tiny", "tiny_dense"])
def model(request):
    """(cfg, params, state) of the MLA MoE (absorbed decode) and of the dense GQA model."""
    return request.getfixturevalue(request.param)


@functools.partial(jax.jit, static_argnums=0)
def _last_logits(cfg, params, state, tokens_BL, lengths_B):
    """Logits after the last real token of each right-padded row, by a cache-free forward."""
    L = tokens_BL.shape[1]
    seg_BL = (jnp.arange(L)[None] < lengths_B[:, None]).astype(jnp.int32)
    positions_BL = jnp.broadcast_to(jnp.arange(L), tokens_BL.shape)
    logits, _, _ = transformer.forward(
        cfg, params, state, tokens_BL, positions_BL, seg_BL, mtp=False
    )
    return logits[jnp.arange(tokens_BL.shape[0]), lengths_B - 1]


def greedy_by_full_forward(cfg, params, state, prompts, steps):
    """The obvious reference: append argmax of a full forward pass, `steps` times, no cache."""
    L = max(map(len, prompts)) + steps
    tokens = np.zeros((len(prompts), L), np.int32)
    lengths = np.array([len(p) for p in prompts])
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    out = []
    for _ in range(steps):
        nxt = np.asarray(jnp.argmax(_last_logits(cfg, params, state, tokens, lengths), -1))
        tokens[np.arange(len(prompts)), lengths] = nxt
        lengths = lengths + 1
        out.append(nxt)
    return np.stack(out, 1)


def run(model, sp, key=0, eos=EOS, prompts=PROMPTS):
    cfg, params, state = model
    return sampling.generate(
        cfg, params, state, prompts, jax.random.key(key), sp, eos_id=eos, pad_id=PAD
    )


def test_greedy_equals_repeated_full_forward(model):
    # eos=263: an id the byte tokenizer never uses, so no row stops early.
    out = run(model, sampling.SamplingParams(temperature=0.0, max_new_tokens=N), eos=263)
    chex.assert_shape([out.tokens, out.logprobs], (len(PROMPTS), N))
    want = greedy_by_full_forward(*model, PROMPTS, N)
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    np.testing.assert_array_equal(np.asarray(out.lengths), N)


@pytest.mark.parametrize(
    "sp",
    [
        sampling.SamplingParams(temperature=1.0, max_new_tokens=N),
        sampling.SamplingParams(temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=N),
    ],
    ids=["t1", "t0.7_topk_topp"],
)
def test_logprobs_equal_full_forward_on_generated_sequence(model, sp):
    cfg, params, state = model
    out = run(model, sp, eos=263)
    P = max(map(len, PROMPTS))
    prompt_BP, lengths_B = sampling.left_pad(PROMPTS, PAD, P, len(PROMPTS))
    seq = np.concatenate([prompt_BP, np.asarray(out.tokens)], axis=1)
    seg = (seq != PAD).astype(np.int32)
    seg[:, P:] = 1
    want = sampling.full_forward_logprobs(cfg, params, state, seq, seg, sp.temperature)[:, P - 1 :]
    chex.assert_trees_all_close(out.logprobs, want, atol=2e-5, rtol=1e-5)
    assert np.all(np.asarray(out.logprobs) < 0)


def test_eos_stops_each_row_and_pads_the_rest(tiny):
    """EOS is chosen as a token greedy decoding emits in row 0 at step 4: every row must then
    stop at its own first occurrence of it, keep what came before, and be PAD afterwards."""
    sp = sampling.SamplingParams(temperature=0.0, max_new_tokens=N)
    free = np.asarray(run(tiny, sp, eos=263).tokens)
    eos = int(free[0, 3])
    out = run(tiny, sp, eos=eos)
    tokens, logprobs = np.asarray(out.tokens), np.asarray(out.logprobs)
    for row, got, lp, n in zip(free, tokens, logprobs, np.asarray(out.lengths), strict=True):
        hits = np.flatnonzero(row == eos)
        want_len = hits[0] + 1 if len(hits) else N
        assert n == want_len
        np.testing.assert_array_equal(got[:n], row[:n])
        assert np.all(got[n:] == PAD) and np.all(lp[n:] == 0) and np.all(lp[:n] < 0)
    assert out.lengths[0] <= 4


def test_samples_of_one_prompt_share_its_prefill(tiny):
    """num_samples=3: greedy rows repeat the single-sample row; sampled rows' log-probs are
    those of a full forward, as for separate prompts."""
    cfg, params, state = tiny
    sp = sampling.SamplingParams(temperature=0.0, max_new_tokens=N)
    one = run(tiny, sp, eos=263)
    three = sampling.generate(
        cfg, params, state, PROMPTS, jax.random.key(0), sp, eos_id=263, pad_id=PAD, num_samples=3
    )
    np.testing.assert_array_equal(np.asarray(three.tokens), np.repeat(np.asarray(one.tokens), 3, 0))
    chex.assert_trees_all_close(three.logprobs, jnp.repeat(one.logprobs, 3, 0), atol=1e-5)


def test_deterministic_by_key(tiny):
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=N)
    a, b, c = run(tiny, sp, key=1), run(tiny, sp, key=1), run(tiny, sp, key=2)
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))


def test_one_compilation_per_bucket(tiny):
    sp = sampling.SamplingParams(temperature=0.9, top_k=7, max_new_tokens=6)
    run(tiny, sp, prompts=[[1, 5, 6], [1, 7]])  # prompt bucket 8, batch bucket 2
    traces = sampling.trace_count()
    run(tiny, sp, key=3, prompts=[[1, 9, 9, 9, 9, 9, 9], [1]])  # same buckets
    run(tiny, sp, key=4, prompts=[[1, 8]])  # batch 1 -> its own bucket
    assert sampling.trace_count() == traces + 1


def test_buckets():
    assert [sampling.bucket(n) for n in (1, 8, 9, 100, 128, 129, 300)] == [
        8,
        8,
        16,
        128,
        128,
        256,
        384,
    ]


def test_filter_logits_top_k_and_top_p():
    probs = jnp.array([[0.05, 0.5, 0.15, 0.3]])
    logits = jnp.log(probs)
    kept = lambda **kw: np.isfinite(
        np.asarray(sampling.filter_logits(logits, sampling.SamplingParams(**kw)))
    )[0]
    np.testing.assert_array_equal(kept(top_k=2), [False, True, False, True])
    np.testing.assert_array_equal(kept(top_p=0.7), [False, True, False, True])  # 0.5 + 0.3
    np.testing.assert_array_equal(kept(top_p=0.5), [False, True, False, False])
    np.testing.assert_array_equal(kept(top_p=0.81), [False, True, True, True])
    np.testing.assert_array_equal(kept(top_k=3, top_p=1.0), [False, True, True, True])


def test_filtered_sampling_never_leaves_the_kept_set(tiny):
    """With top_k=1 sampling at any temperature is greedy."""
    greedy = run(tiny, sampling.SamplingParams(temperature=0.0, max_new_tokens=N), eos=263)
    top1 = run(tiny, sampling.SamplingParams(temperature=5.0, top_k=1, max_new_tokens=N), eos=263)
    np.testing.assert_array_equal(np.asarray(greedy.tokens), np.asarray(top1.tokens))


@pytest.mark.parametrize(
    "kw, key",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_bad_sampling_params_name_the_key(kw, key):
    with pytest.raises(ValueError, match=f"sampling.{key}"):
        sampling.SamplingParams(**kw)


def test_empty_prompt_is_an_error(tiny):
    with pytest.raises(ValueError, match="at least one token"):
        run(tiny, sampling.SamplingParams(max_new_tokens=2), prompts=[[1], []])
