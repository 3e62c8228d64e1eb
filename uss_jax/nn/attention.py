"""The fused q / k / v projection with a head axis, shared by the ViT, the MAE decoder and the Swin blocks.

PyTorch's fused ``qkv = Linear(D, 3 D)`` (timm ``Attention``, Swin ``WindowAttention``) orders its outputs as
``(3, heads, head_dim)``. A flat ``(D, 3 D)`` kernel sharded over ``tensor`` would cut that axis into contiguous
pieces that do not align with heads (half of q on one device, the rest of q and part of k on the next), and the
``(3, heads, head_dim)`` reshape would move data between devices. Here the kernel is stored as
``(D, 3, heads, head_dim)`` with the logical names ``('embed', 'qkv', 'heads', 'kv')``, so tensor parallelism splits
whole heads and the reshape is free. Its values are PyTorch's ``weight.T`` reshaped (C order), which the converters
(``uss_jax.convert.common.qkv_kernel``) apply; the same seed draws the same numbers as the flat kernel did. The bias
keeps PyTorch's flat ``(3 D,)`` layout (tiny; replicated, and 1-D like every bias for the weight-decay rules).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

QKV_KERNEL_NAMES = ("embed", "qkv", "heads", "kv")


class FusedQKV(nnx.Module):
  """``x (..., D) -> (..., 3, heads, head_dim)``: ``x W + b`` with ``W`` ``(D, 3, heads, head_dim)``, ``b`` ``(3 D,)``.

  Args:
    dim: input width ``D``.
    num_heads, head_dim: output heads and per-head width (q, k and v each ``heads * head_dim`` wide).
    use_bias: add ``b`` (timm / Swin ``qkv_bias=True``).
    kernel_init: initializer of the kernel viewed as ``(D, 3, heads, head_dim)`` (``fan_in = D``, ``fan_out`` the
      three trailing axes); default Xavier-uniform of the flat ``(D, 3 D)`` matrix (MAE ``_init_weights``).
    precision, dtype, param_dtype: matmul precision, compute and parameter dtypes (as ``nnx.Linear``).
    rngs: initialisation RNGs.
  """

  def __init__(self, dim: int, num_heads: int, head_dim: int, *, use_bias: bool = True, kernel_init: Any = None,
               precision: Any = None, dtype: Any = None, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.num_heads = int(num_heads)
    self.head_dim = int(head_dim)
    self.precision = precision
    self.dtype = dtype
    init = kernel_init or nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=0,
                                                            out_axis=(1, 2, 3))
    shape = (int(dim), 3, self.num_heads, self.head_dim)
    self.kernel = nnx.Param(nnx.with_partitioning(init, QKV_KERNEL_NAMES)(rngs.params(), shape, param_dtype))
    if use_bias:
      self.bias = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(), (None,))(
          rngs.params(), (3 * self.num_heads * self.head_dim,), param_dtype))
    else:
      self.bias = nnx.data(None)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``(..., D)`` -> ``(..., 3, heads, head_dim)`` (index 0 = q, 1 = k, 2 = v)."""
    kernel = self.kernel[...]
    bias = self.bias[...] if self.bias is not None else None
    x, kernel, bias = nnx.nn.dtypes.promote_dtype((x, kernel, bias), dtype=self.dtype)
    y = jnp.einsum("...d,dthk->...thk", x, kernel, precision=self.precision)
    if bias is not None:
      y = y + bias.reshape(3, self.num_heads, self.head_dim)
    return y
