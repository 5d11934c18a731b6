"""Batched autoregressive sampling: one jit holds the prefill and the whole decode loop.

    out = generate(cfg, params, state, prompts, key, SamplingParams(temperature=0.6, top_p=0.95),
                   eos_id=tok.eos_id, pad_id=tok.pad_id)
    out.tokens [B, N], out.logprobs [B, N], out.lengths [B]

Prompts of different lengths are left-padded to a common length (padding has segment id 0, so
no real token attends to it, and positions start at 0 in every row), then prefilled into the
KV cache in one forward pass. Decoding is a `lax.while_loop` of one-token forward passes over
the cache (MLA: absorbed attention over the compressed latent); it stops as soon as every row
has produced EOS. Each row keeps its first EOS; what follows is PAD with log-prob 0.

The prompt length and the batch are rounded up (`bucket`), and `max_new_tokens` is
fixed by the sampling parameters, so a run compiles once per bucket, not once per batch.

Log-probabilities are those of the sampled tokens under the temperature-scaled model
distribution before top-k/top-p filtering: log softmax(logits / T). This is the policy's
log-probability that GRPO's importance ratio uses (as in TRL and verl), and what
`token_logprobs` computes from a full forward pass. Greedy decoding (T = 0) reports T = 1.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig, known_fields

_TRACES: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick each token. temperature 0 is greedy; top_k 0 and top_p 1 disable filtering."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 128

    def __post_init__(self):
        checks = {
            "temperature": self.temperature >= 0,
            "top_k": self.top_k >= 0,
            "top_p": 0.0 < self.top_p <= 1.0,
            "max_new_tokens": self.max_new_tokens >= 1,
        }
        allowed = {
            "temperature": ">= 0 (0 = greedy)",
            "top_k": ">= 0 (0 = off)",
            "top_p": "in (0, 1]",
            "max_new_tokens": ">= 1",
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"sampling.{key}={getattr(self, key)!r} is invalid; allowed: {allowed[key]}"
                )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_config(
        cls, c: ml_collections.ConfigDict | dict, section: str = "sampling"
    ) -> SamplingParams:
        """The block `section` of a config (e.g. 'eval.sampling'); errors name that key."""
        try:
            return cls(**known_fields(cls, c, section))
        except ValueError as e:
            raise ValueError(str(e).replace("sampling.", f"{section}.", 1)) from None


class Samples(NamedTuple):
    """Generated continuations; row b holds `lengths[b]` tokens (its EOS included), then PAD."""

    tokens: jax.Array  # [B, N] int32
    logprobs: jax.Array  # [B, N] float32, 0 after the row's end
    lengths: jax.Array  # [B] int32
    # With record_routing (an MoE): the experts each MoE layer chose for every token the
    # sampler fed through the model, for routing replay in training (moe.route): the
    # completion's tokens [n_moe_layers, B, N, K] (-1 where a token was never fed: the last
    # one of a row when decoding stopped, and after the row's end) and the prompts' from the
    # prefill [n_moe_layers, Q, P, K] (left-padded like the prompts).
    routing: jax.Array | None = None
    prompt_routing: jax.Array | None = None
    # With keep_mask (DeepSeek-V3.2's Keep Sampling Mask): the tokens top-k/top-p kept at each
    # step [B, N, V] (False after the row's end); `logprobs` are then those of the truncated
    # distribution the token was drawn from, log softmax over the kept tokens.
    kept: jax.Array | None = None


def bucket(n: int, minimum: int = 8, step: int = 128) -> int:
    """n rounded up to a power of two (at least `minimum`) up to `step`, beyond it to a
    multiple of `step`: few distinct shapes, little padding for long prompts."""
    if n > step:
        return -(-n // step) * step
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def trace_count() -> int:
    """How many times the generation function has been traced (= compiled) in this process."""
    return sum(_TRACES.values())


def token_logprobs(logits_BLV: jax.Array, tokens_BL: jax.Array, temperature: float = 1.0):
    """log softmax(logits / T) at `tokens`, in float32 (T <= 0 counts as 1)."""
    t = temperature if temperature > 0 else 1.0
    logp_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32) / t, axis=-1)
    return jnp.take_along_axis(logp_BLV, tokens_BL[..., None].astype(jnp.int32), axis=-1)[..., 0]


def filter_logits(logits_BV: jax.Array, sp: SamplingParams) -> jax.Array:
    """Temperature, then top-k, then top-p (nucleus, Holtzman et al. 2020); dropped = -inf."""
    logits = logits_BV.astype(jnp.float32) / sp.temperature
    if sp.top_k and sp.top_k < logits.shape[-1]:
        kth_B1 = jax.lax.top_k(logits, sp.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_B1, -jnp.inf, logits)
    if sp.top_p < 1.0:
        sorted_BV = jnp.sort(logits, axis=-1)[:, ::-1]
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        # Keep the smallest prefix whose mass reaches top_p: tokens whose preceding mass < p.
        kept = jnp.where(mass_before_BV < sp.top_p, sorted_BV, jnp.inf)
        threshold_B1 = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold_B1, -jnp.inf, logits)
    return logits


def _pick(logits_BV: jax.Array, key: jax.Array, sp: SamplingParams, keep_mask: bool = False):
    """(token [B], its log-prob [B], the kept tokens [B, V] or None) for one step. With
    `keep_mask` the log-prob is of the truncated distribution (filtered logits)."""
    if sp.greedy:
        token_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
        kept_BV = jnp.ones(logits_BV.shape, bool) if keep_mask else None
        return token_B, token_logprobs(logits_BV, token_B, sp.temperature), kept_BV
    filtered_BV = filter_logits(logits_BV, sp)
    token_B = jax.random.categorical(key, filtered_BV).astype(jnp.int32)
    if keep_mask:
        return token_B, token_logprobs(filtered_BV, token_B), jnp.isfinite(filtered_BV)
    return token_B, token_logprobs(logits_BV, token_B, sp.temperature), None


def _generate(cfg, sp, eos_id, pad_id, n, record, params, state, prompt_QP, prompt_len_Q, key):
    """Prefill the left-padded prompts once, then decode n samples of each, up to
    sp.max_new_tokens tokens (rows question-major). `record`: what else to keep, a tuple of
    'routing' (the MoE layers' experts) and 'mask' (the sampling mask)."""
    _TRACES[(cfg, sp, n, record, prompt_QP.shape)] += 1
    keep_mask = "mask" in record
    Q, P = prompt_QP.shape
    B, N = Q * n, sp.max_new_tokens
    slots_P = jnp.arange(P, dtype=jnp.int32)
    pad_Q1 = (P - prompt_len_Q)[:, None]
    seg_QP = (slots_P[None] >= pad_Q1).astype(jnp.int32)
    positions_QP = jnp.maximum(slots_P[None] - pad_Q1, 0)
    cache = transformer.init_cache(cfg, Q, P + N)
    logits_QPV, cache, aux = transformer.forward(
        cfg, params, state, prompt_QP, positions_QP, seg_QP, cache, mtp=False
    )
    prompt_routing = aux["expert_ids"] if "routing" in record else None
    if n > 1:
        cache = transformer.repeat_cache(cfg, cache, n)
    logits_BV = jnp.repeat(logits_QPV[:, -1], n, axis=0)
    prompt_len_B = jnp.repeat(prompt_len_Q, n)

    def emit(t, logits_BV, tokens_BN, logprobs_BN, kept_BNV, lengths_B, done_B):
        token_B, logprob_B, kept_BV = _pick(logits_BV, jax.random.fold_in(key, t), sp, keep_mask)
        lengths_B = lengths_B + (~done_B).astype(jnp.int32)
        token_B = jnp.where(done_B, pad_id, token_B)
        logprob_B = jnp.where(done_B, 0.0, logprob_B)
        tokens_BN = jax.lax.dynamic_update_slice(tokens_BN, token_B[:, None], (0, t))
        logprobs_BN = jax.lax.dynamic_update_slice(logprobs_BN, logprob_B[:, None], (0, t))
        if keep_mask:
            kept_BV = kept_BV & ~done_B[:, None]
            kept_BNV = jax.lax.dynamic_update_slice(kept_BNV, kept_BV[:, None], (0, t, 0))
        done_B = done_B | (token_B == eos_id)
        return token_B, tokens_BN, logprobs_BN, kept_BNV, lengths_B, done_B

    tokens_BN = jnp.full((B, N), pad_id, jnp.int32)
    logprobs_BN = jnp.zeros((B, N), jnp.float32)
    kept_BNV = jnp.zeros((B, N, cfg.vocab_size), bool) if keep_mask else None
    lengths_B = jnp.zeros((B,), jnp.int32)
    done_B = prompt_len_B == 0  # batch-padding rows
    state_t = emit(0, logits_BV, tokens_BN, logprobs_BN, kept_BNV, lengths_B, done_B)
    # The routing of completion token t - 1, fed at decode step t; -1 until fed.
    routing = None
    if "routing" in record:
        M, _, _, K = prompt_routing.shape
        routing = jnp.full((M, B, N, K), -1, jnp.int32)

    def cond(carry):
        t, _, _, (*_, done_B) = carry
        return (t < N) & ~jnp.all(done_B)

    def body(carry):
        t, cache, routing, (token_B, *rest) = carry
        positions_B1 = (prompt_len_B + t - 1)[:, None]
        logits_B1V, cache, aux = transformer.forward(
            cfg,
            params,
            state,
            token_B[:, None],
            positions_B1,
            jnp.ones_like(positions_B1),
            cache,
            mtp=False,
        )
        if "routing" in record:
            routing = jax.lax.dynamic_update_slice(routing, aux["expert_ids"], (0, 0, t - 1, 0))
        return t + 1, cache, routing, emit(t, logits_B1V[:, 0], *rest)

    carry = (jnp.int32(1), cache, routing, state_t)
    _, _, routing, (_, tokens_BN, logprobs_BN, kept_BNV, lengths_B, _) = jax.lax.while_loop(
        cond, body, carry
    )
    if "routing" in record:  # after a row's end the sampler fed padding: nothing to replay
        fed_BN = jnp.arange(N)[None] < lengths_B[:, None]
        routing = jnp.where(fed_BN[None, :, :, None], routing, -1)
    return Samples(tokens_BN, logprobs_BN, lengths_B, routing, prompt_routing, kept_BNV)


_generate_jit = jax.jit(_generate, static_argnums=(0, 1, 2, 3, 4, 5))


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, length: int, rows: int):
    """[rows, length] int32 with each prompt right-aligned, and the prompt lengths [rows]."""
    out = np.full((rows, length), pad_id, np.int32)
    lengths = np.zeros(rows, np.int32)
    for i, p in enumerate(prompts):
        if len(p):
            out[i, length - len(p) :] = p
        lengths[i] = len(p)
    return out, lengths


def generate(
    cfg: ModelConfig,
    params,
    state: dict,
    prompts: Sequence[Sequence[int]],
    key: jax.Array,
    sp: SamplingParams,
    *,
    eos_id: int,
    pad_id: int,
    num_samples: int = 1,
    record_routing: bool = False,
    keep_mask: bool = False,
) -> Samples:
    """Samples `num_samples` continuations of each prompt (token ids, each non-empty);
    deterministic in `key`. Each prompt is prefilled once and its cache shared by its samples.

    Returns arrays with num_samples rows per prompt (prompt-major), `max_new_tokens` columns;
    with `record_routing` (an MoE model) also the experts chosen for every token fed
    (`Samples.routing`, `Samples.prompt_routing`); with `keep_mask` the top-k/top-p masks
    (`Samples.kept`) and the truncated distribution's log-probs.
    """
    if not prompts:
        raise ValueError("no prompts")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    if eos_id == pad_id:
        raise ValueError(f"eos_id and pad_id must differ, both are {eos_id}")
    longest = max(len(p) for p in prompts)
    if longest + sp.max_new_tokens > cfg.max_position_embeddings:
        raise ValueError(
            f"longest prompt ({longest} tokens) + sampling.max_new_tokens={sp.max_new_tokens} "
            f"exceeds model.max_position_embeddings={cfg.max_position_embeddings}"
        )
    P = bucket(longest)
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    Q = len(prompts)
    prompt_QP, lengths_Q = left_pad(prompts, pad_id, P, bucket(Q, minimum=1, step=1 << 30))
    if record_routing and not cfg.is_moe:
        raise ValueError("record_routing needs an MoE model (model.n_routed_experts > 0)")
    record = ("routing",) * record_routing + ("mask",) * keep_mask
    out = _generate_jit(
        cfg, sp, eos_id, pad_id, num_samples, record, params, state, prompt_QP, lengths_Q, key
    )
    B = Q * num_samples
    routing = None if out.routing is None else out.routing[:, :B]
    prompt_routing = None if out.prompt_routing is None else out.prompt_routing[:, :Q]
    kept = None if out.kept is None else out.kept[:B]
    return Samples(out.tokens[:B], out.logprobs[:B], out.lengths[:B], routing, prompt_routing, kept)


def sample_texts(
    cfg: ModelConfig, params, state, tokenizer, prompts: Sequence[str], key, sp: SamplingParams
) -> tuple[list[str], Samples]:
    """Encodes text prompts (with BOS if the tokenizer has one), samples, decodes the answers."""
    ids = [tokenizer.encode(p, add_bos=tokenizer.bos_id is not None) for p in prompts]
    out = generate(
        cfg, params, state, ids, key, sp, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id
    )
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    texts = [tokenizer.decode(row[:n]) for row, n in zip(tokens, lengths, strict=True)]
    return texts, out


@functools.partial(jax.jit, static_argnums=(0, 5))
def full_forward_logprobs(cfg, params, state, tokens_BL, segment_ids_BL, temperature=1.0):
    """Log-probs of tokens[:, 1:] given their prefixes, by one cache-free forward pass (the
    training-side computation the sampler must agree with). Positions restart per row at its
    first non-zero segment id (left padding)."""
    pad_B1 = jnp.argmax(segment_ids_BL > 0, axis=1)[:, None]
    positions_BL = jnp.maximum(jnp.arange(tokens_BL.shape[1])[None] - pad_B1, 0)
    logits_BLV, _, _ = transformer.forward(
        cfg, params, state, tokens_BL, positions_BL, segment_ids_BL, mtp=False
    )
    return token_logprobs(logits_BLV[:, :-1], tokens_BL[:, 1:], temperature)
