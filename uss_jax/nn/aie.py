"""Adaptive input enhancer (AIE, seed 002 Sec. V-B, Eq. (3)) and the transposed 1-D convolution it upsamples with.

``Y_M2D = DeConv(sum_i w_i Z_i)``: a softmax-weighted sum of the outputs ``Z_i`` of all processing blocks of the
foundation model (the patch-embedding CNN and each ViT block; weights constrained to sum to one, here by a softmax
over learnable logits initialised equal), upsampled from the model's token rate to the frame rate of the TSE encoder
by a cascade of ``ConvTranspose1d`` layers, then concatenated with the encoded mixture along channels (the caller
concatenates). SoundBeam (encoder stride 8 samples, M2D 80x2 tokens every 320 samples: x40): kernels {2, 25},
strides {2, 20}; Waveformer: kernels {2, 2, 2, 1}, strides {2, 2, 2, 5} (x40 as printed in seed 002 Sec. VI-B.4) and
a 1x1 bottleneck after the concatenation (``uss_jax.models.waveformer``). The upsampled sequence is cut (or
zero-padded) to the encoder's frame count.

Choices: every transposed convolution has ``channels`` outputs and a bias (PyTorch's default), no activation between
them (Eq. (3) is linear); the upsampling factor is the product of the strides and must map one token to a whole
number of encoder frames (checked by the models that use it).

Layout channels-last: ``(batch, frames, channels)``; kernel ``(K, in, out)`` (``uss_jax.convert.common.
conv_transpose1d_kernel`` maps PyTorch's ``(in, out, K)``). Logical axes ``(None, 'conv_in', 'conv_out')``, bias
``('conv_out',)``, layer logits ``(None,)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from uss_jax.nn.mhfa import layer_softmax_sum
from uss_jax.nn.tasnet import CONV_AXES, _cast, _param, torch_uniform


def conv_transpose1d(x: jax.Array, kernel: jax.Array, stride: int, bias: jax.Array | None = None) -> jax.Array:
  """``nn.ConvTranspose1d(in, out, K, stride, padding=0)`` on channels-last input.

  ``y[f S + k, o] += sum_i x[f, i] w[k, i, o]`` for frames ``f < n`` and taps ``k < K``; output length
  ``(n - 1) S + K``. Computed as one matmul and ``ceil(K / S)`` shifted overlap-adds (no XLA convolution).

  Args:
    x: ``(batch, n, in)``. kernel: ``(K, in, out)``. stride: S >= 1. bias: ``(out,)`` or None.

  Returns:
    ``(batch, (n - 1) S + K, out)`` in the dtype of ``x @ kernel``.
  """
  batch, n, _ = x.shape
  k, _, cout = kernel.shape
  seg = jnp.einsum("bfi,kio->bfko", x, kernel)  # (batch, n, K, out)
  pieces = -(-k // stride)
  seg = jnp.pad(seg, ((0, 0), (0, 0), (0, pieces * stride - k), (0, 0)))
  total = (n + pieces - 1) * stride
  out = 0
  for m in range(pieces):
    part = seg[:, :, m * stride:(m + 1) * stride].reshape(batch, n * stride, cout)
    out = out + jnp.pad(part, ((0, 0), (m * stride, total - n * stride - m * stride), (0, 0)))
  out = out[:, :(n - 1) * stride + k]
  return out if bias is None else out + bias.astype(out.dtype)


class ConvTranspose1d(nnx.Module):
  """``nn.ConvTranspose1d(in, out, K, stride)`` (padding 0, bias) with PyTorch's default initialisation
  (U(+-1/sqrt(out * K)): PyTorch's fan-in of a transposed kernel ``(in, out, K)`` is ``out * K``).

  Call: ``(batch, n, in)`` -> ``(batch, (n - 1) stride + K, out)``.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int, stride: int, *, use_bias: bool = True,
               dtype: Any = None, rngs: nnx.Rngs):
    if kernel_size < 1 or stride < 1:
      raise ValueError(f"ConvTranspose1d: kernel_size={kernel_size} and stride={stride} must be >= 1")
    self.kernel_size, self.stride, self.dtype = int(kernel_size), int(stride), dtype
    init = torch_uniform(out_features * kernel_size)
    self.kernel = _param(init, CONV_AXES, rngs, (kernel_size, in_features, out_features))
    self.bias = _param(init, ("conv_out",), rngs, (out_features,)) if use_bias else nnx.data(None)

  def __call__(self, x: jax.Array) -> jax.Array:
    bias = None if self.bias is None else self.bias[...]
    return conv_transpose1d(_cast(x, self.dtype), _cast(self.kernel[...], self.dtype), self.stride, bias)


class AdaptiveInputEnhancer(nnx.Module):
  """AIE (module docstring): layer outputs ``(L, batch, tokens, D)`` -> ``(batch, frames, channels)``.

  Args:
    num_layers: L (every block of the foundation model: 13 for M2D ViT-B).
    input_dim: D (per-frame feature width of the layers).
    channels: output channels of every transposed convolution.
    kernels, strides: the cascade (SoundBeam (2, 25) / (2, 20)).
    dtype: computation dtype. rngs: initialisation (layer logits zeros = equal weights).

  Call: ``layers``, ``frames`` (the encoder's frame count) -> ``(batch, frames, channels)`` float32.

  Raises:
    ValueError: kernels / strides of different lengths or empty.
  """

  def __init__(self, num_layers: int, input_dim: int, channels: int, *, kernels: Sequence[int] = (2, 25),
               strides: Sequence[int] = (2, 20), dtype: Any = None, rngs: nnx.Rngs):
    if len(kernels) != len(strides) or not kernels:
      raise ValueError(f"AIE: kernels {tuple(kernels)} and strides {tuple(strides)} must be non-empty and of equal "
                       "length")
    self.channels = int(channels)
    self.upsampling = 1
    for s in strides:
      self.upsampling *= int(s)
    self.layer_weights = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(), (None,))(
        rngs.params(), (num_layers,), jnp.float32))
    widths = [input_dim] + [channels] * len(kernels)
    self.deconvs = nnx.List([ConvTranspose1d(widths[i], widths[i + 1], int(k), int(s), dtype=dtype, rngs=rngs)
                             for i, (k, s) in enumerate(zip(kernels, strides))])

  def __call__(self, layers: jax.Array, frames: int) -> jax.Array:
    x = layer_softmax_sum(layers, self.layer_weights[...])
    for deconv in self.deconvs:
      x = deconv(x)
    x = x.astype(jnp.float32)
    if x.shape[1] >= frames:
      return x[:, :frames]
    return jnp.pad(x, ((0, 0), (0, frames - x.shape[1]), (0, 0)))
