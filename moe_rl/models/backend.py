"""Run-time choices by backend: `model.dtype`, `model.moe_impl` and `model.attention_impl`.

Each defaults to 'auto', resolved once by `ModelConfig.from_config` (`resolve_impls`), before
anything is traced; the ModelConfig a run builds holds the choices, never 'auto'. What 'auto'
picks:

| field | cpu | gpu | tpu |
| --- | --- | --- | --- |
| dtype | float32 | bfloat16 | bfloat16 |
| moe_impl | sparse | ragged (sparse with mesh.expert > 1) | same as gpu |
| attention_impl | xla | cudnn where it applies, else xla | xla |

- dtype: activations and matmuls; param_dtype (the master weights) stays float32.
- moe_impl: `jax.lax.ragged_dot` is the grouped matmul of GPUs and TPUs; XLA:CPU runs it ~100x
  slower than a dense matmul of the same FLOPs (README, "MoE layer"). Only 'sparse' and 'dense'
  have an expert-parallel form (dispatch.local_experts).
- attention_impl: 'cudnn' is cuDNN's flash attention through `jax.nn.dot_product_attention`,
  with bfloat16/float16 compute and a head (MLA: the wider of qk and v) a multiple of 8 up to
  `cudnn_max_head_dim()`. jax.nn.dot_product_attention has no TPU kernel (implementation=None
  is XLA's masked softmax over the whole [L, S], which 'xla' computes in causal blocks), so TPUs
  keep 'xla'. DeepSeek-V4's attention (sinks, compressed entries) is 'xla' only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import jax
import jax.extend.backend

# models.config.ModelConfig (which imports this module: not imported back here)
ModelConfig = TypeVar("ModelConfig", bound=Any)

AUTO = "auto"
MOE_IMPLS = (AUTO, "sparse", "dense", "ragged")
# 'xla': the einsum attention (attention.py; the reference). 'dot_product_attention':
# jax.nn.dot_product_attention, implementation=None (JAX picks; XLA's today). 'cudnn': its
# cuDNN flash attention (GPU, bfloat16/float16).
ATTENTION_IMPLS = (AUTO, "xla", "dot_product_attention", "cudnn")
ACCELERATORS = ("gpu", "tpu")
CUDNN_DTYPES = ("bfloat16", "float16")


def expert_parallel_size() -> int:
    """Size of the 'expert' axis of the mesh set with `jax.set_mesh` (1 without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else dict(mesh.shape).get("expert", 1)


def cudnn_max_head_dim(backend: str) -> int:
    """The widest head cuDNN's flash attention takes on this machine's GPU (jax's
    check_is_flash_attention): 256 from Hopper (compute capability 9.0), else 128; 0 without
    CUDA (ROCm). 128 when resolving for a GPU this process does not have."""
    if backend != "gpu" or jax.default_backend() != "gpu":
        return 128
    if "cuda" not in jax.extend.backend.get_backend().platform_version.lower():
        return 0
    major, minor = (int(x) for x in jax.devices()[0].compute_capability.split(".")[:2])
    return 256 if (major, minor) >= (9, 0) else 128


def attention_head_dim(m: Any) -> int:
    """The head width jax.nn.dot_product_attention sees: MLA pads the narrower of its qk and
    v heads to the other (attention.fused_attention); 0 where it is not used (V4)."""
    if m.attention == "mla":
        return max(m.qk_head_dim, m.v_head_dim)
    return m.head_dim if m.attention == "gqa" else 0


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"Invalid model config: {message}")


def resolve_impls(
    m: ModelConfig,
    backend: str | None = None,
    expert_parallel: int | None = None,
    cudnn_head_dim: int | None = None,
) -> ModelConfig:
    """`m` with 'auto' dtype / moe_impl / attention_impl resolved for `backend` (default
    jax.default_backend()) and `expert_parallel` (mesh.expert; default the mesh set with
    jax.set_mesh); explicit values that cannot run there are a ValueError naming the field.
    `cudnn_head_dim`: cuDNN's widest head (default `cudnn_max_head_dim(backend)`)."""
    backend = jax.default_backend() if backend is None else backend
    ep = expert_parallel_size() if expert_parallel is None else expert_parallel
    accel = backend in ACCELERATORS
    dtype = m.dtype if m.dtype != AUTO else ("bfloat16" if accel else "float32")

    moe_impl = m.moe_impl
    if moe_impl == AUTO:
        moe_impl = "ragged" if accel and ep == 1 else "sparse"
    _require(
        not (m.is_moe and ep > 1 and moe_impl == "ragged"),
        f"model.moe_impl='ragged' has no expert-parallel form (mesh.expert={ep}); allowed "
        "with mesh.expert > 1: ('auto', 'sparse', 'dense')",
    )

    attn = m.attention_impl
    width = attention_head_dim(m)
    if attn == AUTO:
        limit = cudnn_max_head_dim(backend) if cudnn_head_dim is None else cudnn_head_dim
        fits = dtype in CUDNN_DTYPES and width and width % 8 == 0 and width <= limit
        attn = "cudnn" if backend == "gpu" and fits else "xla"
    _require(
        attn == "xla" or m.attention != "v4",
        f"model.attention_impl={attn!r}: DeepSeek-V4's attention (sinks, compressed entries) "
        "is einsum attention only; allowed with model.attention='v4': ('auto', 'xla')",
    )
    _require(
        attn != "cudnn" or (backend == "gpu" and dtype in CUDNN_DTYPES),
        f"model.attention_impl='cudnn' is cuDNN's flash attention: it needs a GPU (backend "
        f"{backend!r}) and model.dtype in {CUDNN_DTYPES} (it is {dtype!r}); allowed otherwise: "
        "('auto', 'xla', 'dot_product_attention')",
    )
    return dataclasses.replace(m, dtype=dtype, moe_impl=moe_impl, attention_impl=attn)


def describe(m: Any) -> str:
    """The run-time choices of a resolved config, for a run's banner."""
    return (
        f"dtype={m.dtype} (params {m.param_dtype}), moe_impl={m.moe_impl}, "
        f"attention_impl={m.attention_impl}"
    )
