"""DeepSeek-V4 hybrid attention: a sliding window plus compressed KV entries (DeepSeek-V4
report sec. 2.3; transformers `models/deepseek_v4/modeling_deepseek_v4.py`, the oracle of
tests/test_v4_attention.py).

Every layer is multi-query attention with one key=value head: `num_attention_heads` query
heads of `head_dim` read one normalised, partly rotated KV vector per token, which serves as
key and as value (`DeepseekV4Attention`). Each head also has a learnt sink logit (a softmax
entry with no value, as in gpt-oss), and the rotated slice of the output is rotated back by
the query position, so each value enters at its offset from the query. The heads leave through
the grouped low-rank projection (sec. 2.3.1, "Grouped Output Projection";
`DeepseekV4GroupedLinear`): `o_groups` groups of heads, each projected to `o_lora_rank`
features, then one mix to hidden_size.

What a query sees depends on the layer's `layer_types` entry:

* `sliding_attention`: the last `sliding_window` tokens (itself included).
* `heavily_compressed_attention` (HCA, sec. 2.3.2, eqs. 20-23; `DeepseekV4HCACompressor`): the
  window, plus every complete block of m' = compress_rates.heavily_compressed_attention tokens
  pooled into one entry: C_w = RMSNorm(sum_j softmax_j(Z_j + B_j) * C_j) over the block's
  tokens j, per feature, with C = x W_kv, Z = x W_z and a learnt bias B per slot of the block.
* `compressed_sparse_attention` (CSA, sec. 2.3.1, eqs. 9-17; `DeepseekV4CSACompressor`): as
  HCA with m = compress_rates.compressed_sparse_attention, but each token projects two series
  (Ca, Cb): entry w pools block w-1's Ca and block w's Cb, 2m tokens at stride m. A lightning
  indexer (eqs. 13-17; `DeepseekV4Indexer`), with its own compressor of index_head_dim,
  scores I[t, w] = sum_j w[t, j] ReLU(q[t, j] . K_w) and the query attends to its
  `index_topk` best entries only (plus the window).

Entry w is visible to query t once its last token is (t >= (w + 1) m - 1); it is rotated (with
`compress_rope_theta`, and YaRN if `rope_scaling` is set, at cos/sin scale 1 as in HF) at the
position of its block's first token; compressed layers rotate queries and window keys with
the same frequencies, sliding layers with `rope_theta`.

Blocks are aligned to cache slots (slot 0 starts block 0), as HF aligns them to the start of
its cache. Packed documents (`mask_BLS`): an entry pools only the tokens that the token closing
its block sees, and a query sees the entry iff it sees that closing token, so nothing leaks
across documents; a document that starts on a block boundary is compressed as if alone.

Cached decode (`cache`, from `init_v4_layer_cache`) keeps, per layer: the last
`sliding_window` keys (a shift register), the raw projections (C, Z) of the last m (HCA) or 2m
(CSA) tokens, and the entries emitted so far (one per m cache slots); CSA also keeps the same
two for the indexer's keys. Any number of new tokens per call; each one that closes a block
emits its entry. Decoding reads each CSA query's top-k entries only (gathered), O(k); the full
forward masks them (O(L^2 / m) scores), and its window part costs O(L^2 / 4) (at most 4 query
blocks, each against its keys only): fine at training lengths, not at V4's 1M tokens.

The indexer's inputs are detached (as DSA's, attention.Indexer): its scores
only select, so the language-model loss gives it no gradient either way; its KL training loss
is not implemented here.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moe_rl.models.attention import NEG_INF, causal_blocks, index_scores, top_k_keys
from moe_rl.models.config import V4_LAYER_TYPES, ModelConfig
from moe_rl.models.layers import RMSNorm, apply_rope, logical_param, normal_init, rope_frequencies

QUERY_BLOCK = 64  # query rows per block of the full forward (at least; see causal_blocks)
CSA, HCA = "compressed_sparse_attention", "heavily_compressed_attention"


def v4_rope(cfg: ModelConfig, compressed: bool) -> jax.Array:
    """Inverse frequencies [v4_rope_dim / 2]: `compress_rope_theta` (with YaRN's frequencies if
    `rope_scaling`) for compressed layers, `rope_theta` for sliding ones. HF forces YaRN's
    attention factor to 1 on V4, so the cos/sin scale is always 1."""
    theta = cfg.compress_rope_theta if compressed else cfg.rope_theta
    yarn = cfg.rope_scaling if compressed else None
    return rope_frequencies(cfg.v4_rope_dim, theta, yarn)[0]


def rope_tail(x_BLHd: jax.Array, positions_BL: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotates the trailing 2 * len(inv_freq) features by interleaved pairs (V4 lays each head
    out as [not rotated | rotated]); negative positions rotate back."""
    rd = 2 * inv_freq.shape[0]
    rotated = apply_rope(x_BLHd[..., -rd:], positions_BL, inv_freq, 1.0, interleaved=True)
    return jnp.concatenate([x_BLHd[..., :-rd], rotated], axis=-1)


def entry_visibility(mask_BLS: jax.Array, n: int, rate: int) -> jax.Array:
    """[B, L, n]: query l sees entry w iff it sees the token that closes block w (slot
    (w + 1) rate - 1); `mask_BLS` is causal by slot, so never before that token."""
    return mask_BLS[:, :, rate - 1 : n * rate : rate]


def pooled_slots_visible(mask_row_BNS: jax.Array, last_slot_N: jax.Array, span: int):
    """[B, N, span]: which of the `span` slots ending at `last_slot` the token there sees
    (its mask row [B, N, S]); slots before 0 are not."""
    slots_NT = last_slot_N[:, None] - span + 1 + jnp.arange(span)
    S = mask_row_BNS.shape[2]
    seen = jnp.take_along_axis(mask_row_BNS, jnp.clip(slots_NT, 0, S - 1)[None], axis=2)
    return seen & (slots_NT >= 0)


class Compressor(nn.Module):
    """Pools blocks of `rate` tokens into KV entries of `dim` (HCA sec. 2.3.2; with `overlap`,
    CSA's two series sec. 2.3.1). `kv_proj` / `gate_proj` give C and Z ([D, dim], or [D, 2 dim]
    = [Ca | Cb] with overlap), `position_bias` [rate, .] is B (float32)."""

    cfg: ModelConfig
    rate: int
    dim: int
    overlap: bool

    def setup(self):
        cfg = self.cfg
        width = self.dim * (2 if self.overlap else 1)
        init, pdt = normal_init(cfg), cfg.weight_dtype
        D = cfg.hidden_size
        self.kv_proj = logical_param(self, "kv_proj", (D, width), ("embed", "kv"), init, pdt)
        self.gate_proj = logical_param(self, "gate_proj", (D, width), ("embed", "kv"), init, pdt)
        self.position_bias = logical_param(
            self,
            "position_bias",
            (self.rate, width),
            ("kv", "kv"),
            nn.initializers.zeros,
            jnp.float32,
        )
        self.kv_norm = RMSNorm(cfg.rms_norm_eps, cfg.compute_dtype, pdt, "kv")

    @property
    def span(self) -> int:
        """Tokens pooled into one entry: m, or 2m with overlap."""
        return self.rate * (2 if self.overlap else 1)

    def project(self, x_BLD):
        """(C [B, L, width] in the compute dtype, Z [B, L, width] in float32)."""
        dt = self.cfg.compute_dtype
        kv = x_BLD @ self.kv_proj.astype(dt)
        return kv, (x_BLD @ self.gate_proj.astype(dt)).astype(jnp.float32)

    def _pool(self, kv_BNTk, gate_BNTk, valid_BNT, positions_BN):
        """Entries [B, N, dim] from N groups of `span` slots in block order (with overlap: the
        previous block's Ca then this block's Cb); invalid slots get no weight."""
        d, m = self.dim, self.rate
        logits = gate_BNTk + jnp.tile(self.position_bias, (self.span // m, 1))
        if self.overlap:  # the first m slots give their Ca, the last m their Cb
            kv_BNTd = jnp.concatenate([kv_BNTk[:, :, :m, :d], kv_BNTk[:, :, m:, d:]], axis=2)
            logits = jnp.concatenate([logits[:, :, :m, :d], logits[:, :, m:, d:]], axis=2)
        else:
            kv_BNTd = kv_BNTk
        logits = jnp.where(valid_BNT[..., None], logits, NEG_INF)
        weights = jax.nn.softmax(logits, axis=2)
        entries_BNd = self.kv_norm(jnp.sum(weights * kv_BNTd.astype(jnp.float32), axis=2))
        inv_freq = v4_rope(self.cfg, compressed=True)
        return rope_tail(entries_BNd[:, :, None], positions_BN, inv_freq)[:, :, 0]

    def blocks(self, kv_BLk, gate_BLk, positions_BL, mask_BLS):
        """Entries [B, L // rate, dim] of the complete blocks of a sequence starting at slot 0."""
        B, L, k = kv_BLk.shape
        m, n = self.rate, L // self.rate
        if n == 0:  # no complete block: no entries (pooled anyway, so init makes every param)
            empty = jnp.zeros((B, 0, self.span, k), jnp.float32)
            no_slot = jnp.zeros((B, 0, self.span), bool)
            return self._pool(empty.astype(kv_BLk.dtype), empty, no_slot, positions_BL[:, :0])
        kv_BNmk = kv_BLk[:, : n * m].reshape(B, n, m, k)
        gate_BNmk = gate_BLk[:, : n * m].reshape(B, n, m, k)
        if self.overlap:  # prepend each block's predecessor (block 0's is masked below)
            prev = lambda a: jnp.pad(a[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))
            kv_BNmk = jnp.concatenate([prev(kv_BNmk), kv_BNmk], axis=2)
            gate_BNmk = jnp.concatenate([prev(gate_BNmk), gate_BNmk], axis=2)
        last_N = jnp.arange(n) * m + m - 1
        valid = pooled_slots_visible(mask_BLS[:, m - 1 : n * m : m], last_N, self.span)
        first_BN = positions_BL[:, m - 1 : n * m : m] - (m - 1)  # each block's first position
        return self._pool(kv_BNmk, gate_BNmk, valid, first_BN)

    def closing(self, kv_BRk, gate_BRk, slot_L, positions_BL, mask_BLS):
        """For each of the L new tokens (at cache slots `slot_L`; (C, Z) given for the span + L
        slots ending at the last one), the entry of the `span` slots that end at it: the entry
        it emits if it closes a block. [B, L, dim]."""
        L, T = positions_BL.shape[1], self.span
        idx_LT = jnp.arange(L)[:, None] + 1 + jnp.arange(T)[None, :]
        valid = pooled_slots_visible(mask_BLS, slot_L, T)
        first_BL = positions_BL - (self.rate - 1)
        return self._pool(kv_BRk[:, idx_LT], gate_BRk[:, idx_LT], valid, first_BL)


class LightningIndexer(Compressor):
    """DeepSeek-V4's lightning indexer (sec. 2.3.1, eqs. 13-17): keys are its own CSA-style
    compressed entries of `index_head_dim` (the Compressor params); queries [B, L, J, i] come
    from the query latent (`q_b_proj`), head weights [B, L, J] (1/sqrt(J) folded in) from the
    token (`weights_proj`). Queries and keys rotate their last v4_rope_dim features."""

    def setup(self):
        super().setup()
        cfg = self.cfg
        init, pdt = normal_init(cfg), cfg.weight_dtype
        r, J = cfg.q_lora_rank, cfg.index_n_heads
        self.q_b_proj = logical_param(
            self, "q_b_proj", (r, J, self.dim), ("q_lora", "heads", "kv"), init, pdt
        )
        self.weights_proj = logical_param(
            self, "weights_proj", (cfg.hidden_size, J), ("embed", "heads"), init, pdt
        )

    def queries(self, x_BLD, q_BLr, positions_BL):
        dt, J = self.cfg.compute_dtype, self.cfg.index_n_heads
        q_BLJi = jnp.einsum("blr,rji->blji", q_BLr, self.q_b_proj.astype(dt))
        q_BLJi = rope_tail(q_BLJi, positions_BL, v4_rope(self.cfg, compressed=True))
        w_BLJ = (x_BLD @ self.weights_proj.astype(dt)).astype(jnp.float32) * J**-0.5
        return q_BLJi, w_BLJ


def attend(q_BHLd, k_BSd, vis_BLS, e_BTd, vis_BLT, sinks_H):
    """Softmax attention with one key=value head over window keys k [B, S, d] and entries e
    ([B, T, d] shared, or [B, L, T, d] per query), plus each head's sink logit (weight without
    a value), in float32. [B, H, L, d]."""
    dt, d = q_BHLd.dtype, q_BHLd.shape[-1]
    q = q_BHLd * d**-0.5
    s_win = jnp.einsum("bhld,bsd->bhls", q, k_BSd)
    per_query = e_BTd.ndim == 4
    s_ent = jnp.einsum("bhld,bltd->bhlt" if per_query else "bhld,btd->bhlt", q, e_BTd)
    logits = jnp.concatenate(
        [
            jnp.where(vis_BLS[:, None], s_win.astype(jnp.float32), NEG_INF),
            jnp.where(vis_BLT[:, None], s_ent.astype(jnp.float32), NEG_INF),
        ],
        axis=-1,
    )
    B, H, L, _ = logits.shape
    sink = jnp.broadcast_to(sinks_H.astype(jnp.float32)[None, :, None, None], (B, H, L, 1))
    probs = jax.nn.softmax(jnp.concatenate([logits, sink], axis=-1), axis=-1).astype(dt)
    S = k_BSd.shape[1]
    p_win, p_ent = probs[..., :S], probs[..., S:-1]
    out = jnp.einsum("bhls,bsd->bhld", p_win, k_BSd)
    return out + jnp.einsum("bhlt,bltd->bhld" if per_query else "bhlt,btd->bhld", p_ent, e_BTd)


def prefix_rows(x_BLD, positions_BL, mask_BLS, prefix: tuple[int, int]):
    """A shared-prefix row (a prompt of P slots, then G continuations of N; transformer.forward's
    `shared_prefix`) as G rows [prompt, continuation g] of P + N slots: (x [B G, P+N, D],
    positions, mask [B G, P+N, P+N] (the packed mask restricted to those slots), and `pack`,
    which maps the rows' outputs [B G, P+N, D] back to the packed row [B, L, D]). Exact: each
    continuation sees what it saw packed, at the cache slots it has when sampled alone (blocks
    and the sliding window are counted in slots, so V4 cannot attend the packed row as it is)."""
    P, G = prefix
    B, L, D = x_BLD.shape
    N = (L - P) // G
    if P + G * N != L or N < 1:
        raise ValueError(f"prefix (P={P}, G={G}) does not lay out a row of {L} slots")
    idx_GT = np.concatenate(
        [np.broadcast_to(np.arange(P), (G, P)), P + np.arange(G * N).reshape(G, N)], axis=1
    )
    rows = lambda a: a[:, idx_GT].reshape(B * G, P + N, *a.shape[2:])
    mask_BGTT = mask_BLS[:, idx_GT[:, :, None], idx_GT[:, None, :]]

    def pack(out_rows):
        out = out_rows.reshape(B, G, P + N, *out_rows.shape[2:])
        completions = out[:, :, P:].reshape(B, G * N, *out.shape[3:])
        return jnp.concatenate([out[:, 0, :P], completions], axis=1)  # every row's prompt alike

    return rows(x_BLD), rows(positions_BL), mask_BGTT.reshape(B * G, P + N, P + N), pack


def init_v4_layer_cache(cfg: ModelConfig, layer_type: str, batch: int, max_len: int) -> dict:
    """Zeroed cache of one V4 layer for `max_len` slots: 'kv' (last sliding_window keys) and,
    for compressed layers, 'raw_kv' / 'raw_gate' (the last m or 2m tokens' C, Z) and 'entries'
    [B, max_len // m, head_dim]; CSA adds the same three ('index_*') for the indexer's keys."""
    dt, d = cfg.compute_dtype, cfg.head_dim
    cache = {"kv": jnp.zeros((batch, cfg.sliding_window, d), dt)}
    if layer_type == "sliding_attention":
        return cache
    m = getattr(cfg.compress_rates, layer_type)
    overlap = layer_type == CSA
    span, k = (2 * m, 2) if overlap else (m, 1)
    dims = {"": d, "index_": cfg.index_head_dim} if overlap else {"": d}
    for prefix, dim in dims.items():
        cache[f"{prefix}raw_kv"] = jnp.zeros((batch, span, k * dim), dt)
        cache[f"{prefix}raw_gate"] = jnp.zeros((batch, span, k * dim), jnp.float32)
        cache[f"{prefix}entries"] = jnp.zeros((batch, max_len // m, dim), dt)
    return cache


class V4Attention(nn.Module):
    """DeepSeek-V4 attention of one layer (`layer_type`, one of V4_LAYER_TYPES), called as MLA
    is: (x [B, L, D], positions [B, L], mask [B, L, S] causal by slot and same segment, cache,
    cache_index) -> (out [B, L, D], new cache or None). Without a cache S = L; with one, the
    cache's slots (S = max_len) and `cache_index` the slot of the first new token."""

    cfg: ModelConfig
    layer_type: str
    prefix: tuple[int, int] | None = None  # a shared-prefix row's (P, G): by rows (prefix_rows)

    @nn.compact
    def __call__(self, x_BLD, positions_BL, mask_BLS, cache=None, cache_index=None):
        cfg, kind = self.cfg, self.layer_type
        if kind not in V4_LAYER_TYPES:
            raise ValueError(f"V4Attention.layer_type={kind!r}; allowed: {V4_LAYER_TYPES}")
        pack = None
        if self.prefix is not None and cache is None:
            x_BLD, positions_BL, mask_BLS, pack = prefix_rows(
                x_BLD, positions_BL, mask_BLS, self.prefix
            )
        dt, pdt, init = cfg.compute_dtype, cfg.weight_dtype, normal_init(cfg)
        D, H, d, r = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.q_lora_rank
        g, W = cfg.o_groups, cfg.sliding_window
        norm = lambda name, axis: RMSNorm(cfg.rms_norm_eps, dt, pdt, axis, name=name)
        inv_freq = v4_rope(cfg, compressed=kind != "sliding_attention")
        x = x_BLD.astype(dt)
        B, L, _ = x.shape

        w_qa = logical_param(self, "q_a_proj", (D, r), ("embed", "q_lora"), init, pdt)
        w_qb = logical_param(self, "q_b_proj", (r, H, d), ("q_lora", "heads", "kv"), init, pdt)
        q_BLr = norm("q_a_norm", "q_lora")(x @ w_qa.astype(dt))
        q_BLHd = jnp.einsum("blr,rhd->blhd", q_BLr, w_qb.astype(dt)).astype(jnp.float32)
        q_BLHd = q_BLHd * jax.lax.rsqrt(jnp.mean(q_BLHd**2, -1, keepdims=True) + cfg.rms_norm_eps)
        q_BHLd = rope_tail(q_BLHd.astype(dt), positions_BL, inv_freq).transpose(0, 2, 1, 3)
        w_kv = logical_param(self, "kv_proj", (D, d), ("embed", "kv"), init, pdt)
        kv_BLd = norm("kv_norm", "kv")(x @ w_kv.astype(dt))
        kv_BLd = rope_tail(kv_BLd[:, :, None], positions_BL, inv_freq)[:, :, 0]
        sinks_H = logical_param(self, "sinks", (H,), ("heads",), nn.initializers.zeros, jnp.float32)

        compressor = indexer = iq_BLJi = iw_BLJ = x_ng = m = None
        if kind != "sliding_attention":
            m = getattr(cfg.compress_rates, kind)
            compressor = Compressor(cfg, m, d, kind == CSA, name="compressor")
        if kind == CSA:
            indexer = LightningIndexer(cfg, m, cfg.index_head_dim, True, name="indexer")
            x_ng, q_ng = jax.lax.stop_gradient((x, q_BLr))
            iq_BLJi, iw_BLJ = indexer.queries(x_ng, q_ng, positions_BL)

        if cache is None:
            o_BHLd = self._full(
                q_BHLd,
                kv_BLd,
                x,
                positions_BL,
                mask_BLS,
                sinks_H,
                compressor,
                indexer,
                iq_BLJi,
                iw_BLJ,
            )
            new_cache = None
        else:
            c = cache_index
            S = mask_BLS.shape[2]
            q_slot_L = c + jnp.arange(L)
            k_BSd = jnp.concatenate([cache["kv"], kv_BLd.astype(cache["kv"].dtype)], axis=1)
            slots = c - W + jnp.arange(W + L)  # the slots of k_BSd
            vis_BLS = mask_BLS[:, :, jnp.clip(slots, 0, S - 1)]
            vis_BLS &= (slots >= 0) & (slots[None, :] > q_slot_L[:, None] - W)
            new_cache = {"kv": k_BSd[:, L:]}
            e_BTd = jnp.zeros((B, 0, d), dt)
            evis_BLT = jnp.zeros((B, L, 0), bool)
            if compressor is not None:
                emit = lambda comp, x_in, prefix: self._emit(
                    comp, x_in, positions_BL, mask_BLS, cache, new_cache, c, prefix
                )
                e_BTd = emit(compressor, x, "")
                evis_BLT = entry_visibility(mask_BLS, e_BTd.shape[1], m)
            if indexer is not None:
                ik_BTi = emit(indexer, x_ng, "index_")
                index_BLT = index_scores(cfg, iq_BLJi, iw_BLJ, ik_BTi)
                evis_BLT, top_BLK = top_k_keys(index_BLT, evis_BLT, cfg.index_topk)
                if top_BLK is not None:  # gather each query's k entries: O(k) per query
                    e_BTd = jnp.take_along_axis(e_BTd[:, None], top_BLK[..., None], axis=2)
                    evis_BLT = jnp.take_along_axis(evis_BLT, top_BLK, axis=2)
            o_BHLd = attend(q_BHLd, k_BSd, vis_BLS, e_BTd, evis_BLT, sinks_H)

        # Keys are values: undo the rotation of the output's rotated slice at the query position.
        o_BLHd = rope_tail(o_BHLd.transpose(0, 2, 1, 3), -positions_BL, inv_freq)
        w_oa = logical_param(
            self,
            "o_a_proj",
            (g, H // g * d, cfg.o_lora_rank),
            ("heads", "kv", "kv_lora"),
            init,
            pdt,
        )
        w_ob = logical_param(
            self, "o_b_proj", (g, cfg.o_lora_rank, D), ("heads", "kv_lora", "embed"), init, pdt
        )
        o_BLGk = o_BLHd.reshape(B, L, g, H // g * d)
        o_BLGr = jnp.einsum("blgk,gkr->blgr", o_BLGk, w_oa.astype(dt))
        out_BLD = jnp.einsum("blgr,grd->bld", o_BLGr, w_ob.astype(dt))
        return (out_BLD if pack is None else pack(out_BLD)), new_cache

    def _full(
        self,
        q_BHLd,
        kv_BLd,
        x,
        positions_BL,
        mask_BLS,
        sinks_H,
        compressor,
        indexer,
        iq_BLJi,
        iw_BLJ,
    ):
        """The forward without a cache, by causal blocks of queries: block [lo, hi) reads the
        window keys [lo - W + 1, hi) and the entries of the blocks closed before hi."""
        cfg, W = self.cfg, self.cfg.sliding_window
        B, L, d = kv_BLd.shape
        slots = jnp.arange(L)
        window_BLS = mask_BLS & (slots[None, :] > slots[:, None] - W)
        m, n = 1, 0
        e_BTd, evis_BLT = jnp.zeros((B, 0, d), kv_BLd.dtype), jnp.zeros((B, L, 0), bool)
        if compressor is not None:
            m, n = compressor.rate, L // compressor.rate
            e_BTd = compressor.blocks(*compressor.project(x), positions_BL, mask_BLS)
            evis_BLT = entry_visibility(mask_BLS, n, m)
        if indexer is not None:
            x_ng = jax.lax.stop_gradient(x)
            ik_BTi = indexer.blocks(*indexer.project(x_ng), positions_BL, mask_BLS)
        outs = []
        for lo, hi in causal_blocks(L, QUERY_BLOCK):
            k_lo, t_hi = max(0, lo - W + 1), min(n, hi // m)
            evis = evis_BLT[:, lo:hi, :t_hi]
            if indexer is not None:
                index = index_scores(cfg, iq_BLJi[:, lo:hi], iw_BLJ[:, lo:hi], ik_BTi[:, :t_hi])
                evis = top_k_keys(index, evis, cfg.index_topk)[0]
            outs.append(
                attend(
                    q_BHLd[:, :, lo:hi],
                    kv_BLd[:, k_lo:hi],
                    window_BLS[:, lo:hi, k_lo:hi],
                    e_BTd[:, :t_hi],
                    evis,
                    sinks_H,
                )
            )
        return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)

    @staticmethod
    def _emit(comp: Compressor, x, positions_BL, mask_BLS, cache, new_cache, c, prefix):
        """Cached path of one compressor: shifts the new tokens' (C, Z) into the raw buffers,
        writes the entry of every new token that closes a block, returns all entries."""
        kv_BLk, gate_BLk = comp.project(x)
        L = x.shape[1]
        kv_BRk = jnp.concatenate([cache[f"{prefix}raw_kv"], kv_BLk], axis=1)
        gate_BRk = jnp.concatenate([cache[f"{prefix}raw_gate"], gate_BLk], axis=1)
        closing_BLd = comp.closing(kv_BRk, gate_BRk, c + jnp.arange(L), positions_BL, mask_BLS)
        entries = cache[f"{prefix}entries"]
        end_L = c + jnp.arange(L) + 1  # slots after each new token
        closes = end_L % comp.rate == 0
        index_L = jnp.where(closes, end_L // comp.rate - 1, entries.shape[1])  # else dropped
        entries = entries.at[:, index_L].set(closing_BLd.astype(entries.dtype), mode="drop")
        new_cache[f"{prefix}raw_kv"], new_cache[f"{prefix}raw_gate"] = (
            kv_BRk[:, L:],
            gate_BRk[:, L:],
        )
        new_cache[f"{prefix}entries"] = entries
        return entries
