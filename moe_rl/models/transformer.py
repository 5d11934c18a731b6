"""The decoder: dense-then-MoE layers, final norm, output head, multi-token prediction.

`init` makes (params, state) pytrees; `forward` is a pure function of them:

    logits_BLV, new_cache, aux = forward(cfg, params, state, tokens, positions, segment_ids, cache)

`state` holds the non-trained `moe_bias` collection (and DeepSeek-V4 hash layers' frozen
`moe_hash` tables). With `hc_mult` > 0 the residual stream is DeepSeek-V4's mHC streams
(models/hyper_connections.py). The KV cache is a dict made by
`init_cache`; passing it returns the updated cache (nothing is stored in the module).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_rl.models.attention import attention_module, init_layer_cache, write_cache
from moe_rl.models.compressed_attention import V4Attention, init_v4_layer_cache
from moe_rl.models.config import ModelConfig
from moe_rl.models.hyper_connections import HyperHead, expand_streams, hyper_residual
from moe_rl.models.layers import MLP, Embed, RMSNorm, logical_param, normal_init
from moe_rl.models.moe import BIAS_COLLECTION, HASH_COLLECTION, MoE

Params = Any

# The decoder's layer stacks, bottom to top: dense FFN, DeepSeek-V4 hash-routed MoE, learned MoE.
STACK_KINDS = ("dense", "hash", "moe")


def layer_stacks(cfg: ModelConfig) -> tuple[tuple[str, int], ...]:
    """(kind, number of layers) of each non-empty stack, in order (params '{kind}_layers').

    `cfg.mlp_kinds` must be dense layers, then 'hash_moe' ones, then 'moe' ones (as V4's
    leading hash layers): each stack is a run of identical layers (one lax.scan when scanned).
    """
    kinds, ffn = cfg.mlp_kinds, dict(zip(STACK_KINDS, ("dense", "hash_moe", "moe"), strict=True))
    n = {kind: kinds.count(k) for kind, k in ffn.items()}
    if kinds != tuple(k for kind, k in ffn.items() for _ in range(n[kind])):
        raise ValueError(
            f"model.mlp_layer_types gives the layers {kinds}: the decoder needs the dense "
            "layers first, then the 'hash_moe' ones, then the 'moe' ones"
        )
    return tuple((kind, n[kind]) for kind in STACK_KINDS if n[kind])


def layer_attention(
    cfg: ModelConfig, layer: int, dsa: str = "", prefix: tuple[int, int] | None = None
) -> nn.Module:
    """Layer `layer`'s attention: MLA / GQA (attention.attention_module), or DeepSeek-V4's of
    that layer's `cfg.layer_types` kind (compressed_attention.V4Attention)."""
    if cfg.attention == "v4":
        return V4Attention(cfg, cfg.layer_types[layer], prefix, name="attn")
    return attention_module(cfg, "attn", dsa, prefix)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + Attn(norm(x)), then + FFN(norm(.)), FFN dense or DeepSeekMoE.

    With `cfg.hc_mult` > 0 (DeepSeek-V4 mHC) x is the residual streams [B,L,N,D] and each
    sublayer is wrapped in a hyper-connection instead (`hyper_connections.hyper_residual`,
    HF `DeepseekV4DecoderLayer`: 'attn_hc' around attention, 'ffn_hc' around the FFN).
    """

    cfg: ModelConfig
    moe: bool
    replay_apply: bool = True
    dsa: str = ""  # training DSA's indexer (attention.MLA): aux gets its 'dsa_kl' [B, L]
    prefix: tuple[int, int] | None = None  # a shared-prefix row's (P, G): attention by blocks
    hash_routed: bool = False  # a DeepSeek-V4 'hash_moe' layer (moe.MoE's hash_routed)
    layer: int = 0  # the decoder's layer index (DeepSeek-V4: its layer_types entry)

    @nn.compact
    def __call__(self, x, ctx, cache=None, replay_BLK=None):
        positions_BL, mask_BLS, valid_BL, cache_index, tokens_BL = ctx
        cfg = self.cfg
        norm = lambda name: RMSNorm(
            cfg.rms_norm_eps, cfg.compute_dtype, cfg.weight_dtype, name=name
        )
        attn = layer_attention(cfg, self.layer, self.dsa, self.prefix)

        def attention(h_BLD):
            out_BLD, new_cache, *attn_aux = attn(
                norm("input_layernorm")(h_BLD), positions_BL, mask_BLS, cache, cache_index
            )
            return out_BLD, (new_cache, attn_aux)

        def ffn(h_BLD):
            ffn_in = norm("post_attention_layernorm")(h_BLD)
            if self.moe:
                moe = MoE(cfg, self.replay_apply, self.hash_routed, name="mlp")
                return moe(ffn_in, valid_BL, replay_BLK, tokens_BL)
            return MLP(cfg, cfg.intermediate_size, name="mlp")(ffn_in), {}

        if cfg.hc_mult:
            x, (new_cache, attn_aux) = hyper_residual(cfg, "attn_hc", x, attention)
            x, aux = hyper_residual(cfg, "ffn_hc", x, ffn)
        else:
            attn_out, (new_cache, attn_aux) = attention(x)
            h_BLD = x + attn_out
            ffn_out, aux = ffn(h_BLD)
            x = h_BLD + ffn_out
        if attn_aux:
            aux = {**aux, **attn_aux[0]}
        return x, new_cache, aux


class _ScanStep(nn.Module):
    """Adapter to the (carry, xs) -> (carry, ys) signature of nn.scan."""

    cfg: ModelConfig
    moe: bool
    replay_apply: bool = True
    dsa: str = ""
    prefix: tuple[int, int] | None = None
    hash_routed: bool = False

    @nn.compact
    def __call__(self, x_BLD, xs, ctx):
        cache, replay_BLK = xs
        layer = nn.remat(DecoderLayer, prevent_cse=False) if self.cfg.remat else DecoderLayer
        x_BLD, new_cache, aux = layer(
            self.cfg,
            self.moe,
            self.replay_apply,
            self.dsa,
            self.prefix,
            self.hash_routed,
            name="layer",
        )(x_BLD, ctx, cache, replay_BLK)
        return x_BLD, (new_cache, aux)


class LayerStack(nn.Module):
    """`num_layers` identical layers, unrolled or as one lax.scan (params stacked on 'layers');
    `first`: the decoder's index of the first (DeepSeek-V4's layers differ by layer_types, so
    they are never scanned: config validation)."""

    cfg: ModelConfig
    moe: bool
    num_layers: int
    replay_apply: bool = True
    dsa: str = ""
    prefix: tuple[int, int] | None = None
    hash_routed: bool = False  # DeepSeek-V4 'hash_moe' layers
    first: int = 0

    @nn.compact
    def __call__(self, x_BLD, ctx, caches=None, replay=None):
        """`replay`: recorded expert ids [num_layers, B, L, K] (MoE layers; see moe.route)."""
        cfg = self.cfg
        if cfg.scan_layers:
            scanned = nn.scan(
                _ScanStep,
                variable_axes={"params": 0, BIAS_COLLECTION: 0, HASH_COLLECTION: 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast),
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x_BLD, (new_caches, aux) = scanned(
                cfg,
                self.moe,
                self.replay_apply,
                self.dsa,
                self.prefix,
                self.hash_routed,
                name="scan",
            )(x_BLD, (caches, replay), ctx)
            return x_BLD, new_caches, aux
        layer_cls = nn.remat(DecoderLayer) if cfg.remat else DecoderLayer
        new_caches, auxes = [], []
        for i in range(self.num_layers):
            cache = None if caches is None else caches[i]
            replay_BLK = None if replay is None else replay[i]
            x_BLD, new_cache, aux = layer_cls(
                cfg,
                self.moe,
                self.replay_apply,
                self.dsa,
                self.prefix,
                self.hash_routed,
                self.first + i,
                name=str(i),
            )(x_BLD, ctx, cache, replay_BLK)
            new_caches.append(new_cache)
            auxes.append(aux)
        aux = jax.tree.map(lambda *xs: jnp.stack(xs), *auxes) if auxes and auxes[0] else {}
        return x_BLD, (None if caches is None else tuple(new_caches)), aux


class Transformer(nn.Module):
    """DeepSeek-V3-style decoder (or a dense GQA decoder when n_routed_experts == 0)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens_BL,
        positions_BL,
        segment_ids_BL=None,
        cache=None,
        mtp=True,
        shared_prefix=False,
        replay=None,
        replay_apply=True,
        dsa="",
    ):
        cfg = self.cfg
        B, L = tokens_BL.shape
        seg_BL = jnp.ones((B, L), jnp.int32) if segment_ids_BL is None else segment_ids_BL
        seg_BL = seg_BL.astype(jnp.int32)
        if cache is None:
            index, kv_seg_BS = None, seg_BL
            q_slot_L = kv_slot_S = jnp.arange(L)
        else:
            index = cache["index"]
            kv_seg_BS = write_cache(cache["segment_ids"], seg_BL, index)
            q_slot_L, kv_slot_S = index + jnp.arange(L), jnp.arange(kv_seg_BS.shape[1])
        # Causal over cache slots, and only within a document (segment ids; 0 = padding/empty).
        same_BLS = seg_BL[:, :, None] == kv_seg_BS[:, None, :]
        if shared_prefix:  # segment 1 is a prompt that every later segment continues
            same_BLS |= (kv_seg_BS[:, None, :] == 1) & (seg_BL[:, :, None] > 1)
        mask_BLS = (kv_slot_S[None, None, :] <= q_slot_L[None, :, None]) & same_BLS
        ctx = (positions_BL, mask_BLS, seg_BL > 0, index, tokens_BL)

        embed = Embed(cfg, name="embed")
        x_BLD = embed(tokens_BL)
        if cfg.hc_mult:  # mHC: hc_mult residual streams [B, L, N, D]
            x_BLD = expand_streams(x_BLD, cfg.hc_mult)
        new_cache, aux, dsa_kl, first = {}, {}, [], 0
        for kind, n in layer_stacks(cfg):
            caches = None if cache is None else cache[kind]
            # A (P, G) shared prefix is attended by blocks (attention.prefix_attention).
            prefix = shared_prefix if isinstance(shared_prefix, tuple) and cache is None else None
            x_BLD, new_cache[kind], layer_aux = LayerStack(
                cfg,
                kind != "dense",
                n,
                replay_apply,
                dsa,
                prefix,
                kind == "hash",
                first,
                name=f"{kind}_layers",
            )(x_BLD, ctx, caches, replay if kind == "moe" else None)
            first += n
            if dsa:
                dsa_kl.append(layer_aux.pop("dsa_kl"))
            if kind == "hash":  # own keys: the bias update, replay and metrics see 'moe' layers
                layer_aux = {f"hash_{k}": v for k, v in layer_aux.items()}
            aux.update(layer_aux)
        if dsa:
            aux["dsa_kl"] = jnp.concatenate(dsa_kl)  # [num_hidden_layers, B, L]
        if cfg.hc_mult:
            x_BLD = HyperHead(cfg, name="hc_head")(x_BLD)

        norm = lambda name: RMSNorm(
            cfg.rms_norm_eps, cfg.compute_dtype, cfg.weight_dtype, name=name
        )
        if cfg.tie_word_embeddings:
            head = embed.attend
        else:
            w_head = logical_param(
                self,
                "lm_head",
                (cfg.hidden_size, cfg.vocab_size),
                ("embed", "vocab"),
                normal_init(cfg),
                cfg.weight_dtype,
            )
            head = lambda x: jnp.einsum(
                "bld,dv->blv", x.astype(cfg.compute_dtype), w_head.astype(cfg.compute_dtype)
            ).astype(jnp.float32)
        logits_BLV = head(norm("final_norm")(x_BLD))

        # (V4's MTP block is not built: config validation refuses MTP with mHC or V4 attention)
        if mtp and cfg.num_nextn_predict_layers and cache is None:
            aux.update(self._multi_token_prediction(x_BLD, tokens_BL, ctx, embed, head, dsa))
        if cache is not None:
            new_cache.update(index=index + L, segment_ids=kv_seg_BS)
        return logits_BLV, (new_cache if cache is not None else None), aux

    def _multi_token_prediction(self, h_BLD, tokens_BL, ctx, embed, head, dsa=""):
        """Sequential MTP modules (DeepSeek-V3 sec. 2.2, eqs. 21-23).

        Depth k at position i: h' = M_k [RMSNorm(h^{k-1}_i); RMSNorm(Emb(t_{i+k}))], one
        transformer block, then the shared output head; its logits predict t_{i+k+1}. The last
        k positions see padding and are masked by the loss.
        """
        cfg = self.cfg
        dt, pdt = cfg.compute_dtype, cfg.weight_dtype
        D = cfg.hidden_size
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, dt, pdt, name=name)
        logits, counts, dsa_kl = [], [], []
        for k in range(1, cfg.num_nextn_predict_layers + 1):
            shifted_BL = jnp.pad(tokens_BL[:, k:], ((0, 0), (0, k)))
            w_proj = logical_param(
                self, f"mtp_{k}_eh_proj", (2 * D, D), ("mlp", "embed"), normal_init(cfg), pdt
            )
            joined = jnp.concatenate(
                [norm(f"mtp_{k}_hnorm")(h_BLD), norm(f"mtp_{k}_enorm")(embed(shifted_BL))], axis=-1
            )
            h_BLD = joined.astype(dt) @ w_proj.astype(dt)
            h_BLD, _, layer_aux = DecoderLayer(cfg, cfg.is_moe, dsa=dsa, name=f"mtp_{k}_layer")(
                h_BLD, ctx
            )
            logits.append(head(norm(f"mtp_{k}_norm")(h_BLD)))
            if "expert_counts" in layer_aux:
                counts.append(layer_aux["expert_counts"])
            if dsa:
                dsa_kl.append(layer_aux["dsa_kl"])
        out = {"mtp_logits": jnp.stack(logits)}
        if counts:
            out["mtp_expert_counts"] = jnp.stack(counts)
        if dsa_kl:
            out["mtp_dsa_kl"] = jnp.stack(dsa_kl)
        return out


def _split(variables) -> tuple[Params, dict]:
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables


def init_boxed(cfg: ModelConfig, key: jax.Array):
    """Variables with their logical-axis metadata boxes (for sharding); see `init`."""
    tokens = jnp.zeros((1, 4), jnp.int32)
    positions = jnp.arange(4)[None]
    return Transformer(cfg).init(key, tokens, positions)


def init(cfg: ModelConfig, key: jax.Array) -> tuple[Params, dict]:
    """Fresh (params, state); state = {'moe_bias': ...} for MoE models (with 'hash_moe' layers
    also {'moe_hash': ...}, their tid2eid tables), {} for dense ones."""
    return _split(nn.meta.unbox(init_boxed(cfg, key)))


def logical_axes(cfg: ModelConfig) -> tuple[Params, dict]:
    """PartitionSpecs of logical axis names, same structure as `init`'s output."""
    boxed = jax.eval_shape(lambda: init_boxed(cfg, jax.random.key(0)))
    return _split(nn.get_partition_spec(boxed))


def forward(
    cfg: ModelConfig,
    params: Params,
    state: dict,
    tokens_BL: jax.Array,
    positions_BL: jax.Array,
    segment_ids_BL: jax.Array | None = None,
    cache: dict | None = None,
    *,
    mtp: bool = True,
    shared_prefix: bool | tuple[int, int] = False,
    replay: jax.Array | None = None,
    replay_apply: bool = True,
    dsa: str = "",
):
    """Pure forward pass -> (logits [B,L,V] float32, new cache or None, aux dict).

    `shared_prefix`: segment 1 of a row is a prompt shared by the segments after it (2, 3, ...:
    its continuations, positions continuing the prompt's); each continuation attends to the
    prompt and to itself, exactly as if it were its own row [prompt, continuation]. GRPO packs
    a question's G completions this way: the prompt is computed once, not G times. A pair
    (P, G) says more: the prompt fills the row's first P slots and G continuations of equal
    length follow; attention then skips the keys of the other continuations instead of masking
    them (`attention.prefix_attention`, exact; far fewer scores when G is large).

    `replay`: routing replay, the expert ids to use [n_moe_layers, B, L, K] (int32; a token
    whose ids are -1 routes itself), e.g. those the sampler recorded (`moe.route`); with
    `replay_apply` False the model routes itself and only counts where it differs from them.

    aux: 'expert_counts' [n_moe_layers, E] (valid tokens per expert), 'balance_loss'
    [n_moe_layers], 'expert_ids' [n_moe_layers, B, L, K] (the experts used), with `replay`
    'replay_differs' and 'replay_tokens' [n_moe_layers] (valid replayed tokens whose own
    routing would differ; all valid replayed tokens), and with MTP (no cache) 'mtp_logits'
    [D, B, L, V], 'mtp_expert_counts'. 'n_moe_layers' counts the learned-routing ('moe')
    layers only: DeepSeek-V4 'hash_moe' layers report under 'hash_expert_counts',
    'hash_balance_loss', 'hash_expert_ids' and take no replay (their experts are fixed by the
    token ids).

    `dsa` ('warmup' or 'sparse', no cache; see attention.MLA) trains DeepSeek Sparse
    Attention's indexer: aux then holds 'dsa_kl' [num_hidden_layers, B, L], each query's KL
    between its layer's attention and the indexer (with MTP also 'mtp_dsa_kl' [D, B, L]).
    """
    variables = {"params": params, **state}
    return Transformer(cfg).apply(
        variables,
        tokens_BL,
        positions_BL,
        segment_ids_BL,
        cache,
        mtp=mtp,
        shared_prefix=shared_prefix,
        replay=replay,
        replay_apply=replay_apply,
        dsa=dsa,
    )


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> dict:
    """An empty KV cache of `max_len` slots; segment id 0 marks empty slots."""
    cache: dict = {
        "index": jnp.zeros((), jnp.int32),
        "segment_ids": jnp.zeros((batch, max_len), jnp.int32),
    }
    first = 0
    for kind, n in layer_stacks(cfg):
        if cfg.attention == "v4":  # per layer type; V4 layers are never scanned
            types = cfg.layer_types[first : first + n]
            cache[kind] = tuple(init_v4_layer_cache(cfg, t, batch, max_len) for t in types)
            first += n
            continue
        first += n
        layer = init_layer_cache(cfg, batch, max_len)
        if cfg.scan_layers:
            cache[kind] = jax.tree.map(lambda a, n=n: jnp.broadcast_to(a, (n, *a.shape)), layer)
        else:
            cache[kind] = tuple(layer for _ in range(n))
    return cache


def repeat_cache(cfg: ModelConfig, cache: dict, n: int) -> dict:
    """Each row of a cache repeated n times (row-major: r0, r0, ..., r1, ...), e.g. to decode n
    samples of each prefilled prompt."""
    out = {"index": cache["index"], "segment_ids": jnp.repeat(cache["segment_ids"], n, axis=0)}
    axis = 1 if cfg.scan_layers else 0  # scanned layers stack on a leading layer axis
    for kind in STACK_KINDS:
        if kind in cache:
            out[kind] = jax.tree.map(lambda a: jnp.repeat(a, n, axis=axis), cache[kind])
    return out


def counts_like_bias(cfg: ModelConfig, state: dict, aux: dict) -> dict:
    """Aux expert counts ([n_moe_layers, E], MTP [D, E]) in the layout of state['moe_bias']."""
    bias = state[BIAS_COLLECTION]
    out = {}
    for name, sub in bias.items():
        if name == "moe_layers":
            counts = aux["expert_counts"]
            if cfg.scan_layers:
                out[name] = {"scan": {"layer": {"mlp": {"bias": counts}}}}
            else:
                out[name] = {str(i): {"mlp": {"bias": counts[i]}} for i in range(len(sub))}
        else:  # mtp_{k}_layer; without MTP in the forward its counts are 0 (bias unchanged)
            k = int(name.split("_")[1])
            counts = aux.get("mtp_expert_counts")
            bias_E = sub["mlp"]["bias"]
            out[name] = {
                "mlp": {"bias": jnp.zeros_like(bias_E) if counts is None else counts[k - 1]}
            }
    return {BIAS_COLLECTION: out}
