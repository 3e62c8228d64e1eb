"""Multi-head factorized attentive pooling (MHFA) over the layer outputs of a pretrained transformer, in Flax NNX.

Sources: Peng et al., "An attention-based backend allowing efficient fine-tuning of transformer models for speaker
verification" (SLT 2022), Sec. 3 (MHFA); seed 002 Sec. V-A (M2D enrollment clue encoder: "two distinct weighted-sum
of the internal layers ... the first one serves as values and the second as keys ... projected to a lower-dimensional
space using a linear layer"); reference implementations read for facts: JunyiPeng00/SLT22_MultiHead-Factorized-
Attentive-Pooling and wenet-e2e/wespeaker ``wespeaker/models/ssl/...`` ``MHFA`` (layer weights initialised to ones,
``softmax`` over layers; ``cmp_linear_k`` / ``cmp_linear_v`` 768 -> 128; ``att_head`` Linear 128 -> heads; softmax
over time; per-head weighted sum of the compressed values; ``pooling_fc`` Linear heads * 128 -> out).

Equations (layers ``Z_l`` ``(batch, T, D)``, ``l = 0 .. L - 1``)::

    K = (sum_l softmax(w_k)_l Z_l) W_k + b_k          (batch, T, C)     C = compression (128)
    V = (sum_l softmax(w_v)_l Z_l) W_v + b_v          (batch, T, C)
    A = softmax_T(K W_a + b_a)                        (batch, T, H)     H = heads
    P_h = sum_t A[t, h] V[t]                          (batch, H, C)
    e = concat_h(P_h) W_o + b_o                       (batch, out)

Parameter logical axes: layer weights ``(None,)``; ``W_k``, ``W_v`` ``('embed', 'mlp')``; ``W_a`` ``('mlp', None)``;
``W_o`` ``('mlp', 'embed')``. Linear layers use PyTorch's default initialisation (U(+-1/sqrt(fan_in))).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from uss_jax.nn.tasnet import torch_uniform


def torch_linear(din: int, dout: int, names: tuple[str | None, str | None], *, dtype: Any = None,
                 rngs: nnx.Rngs) -> nnx.Linear:
  """``nn.Linear(din, dout)`` with PyTorch's default initialisation and logical axis names ``names``."""
  init = torch_uniform(din)
  return nnx.Linear(din, dout, dtype=dtype, kernel_init=nnx.with_partitioning(init, names),
                    bias_init=nnx.with_partitioning(init, (names[1],)), rngs=rngs)


def layer_softmax_sum(layers: jax.Array, weights: jax.Array) -> jax.Array:
  """``sum_l softmax(weights)_l layers[l]``: layers ``(L, ...)``, weights ``(L,)`` -> ``(...)`` (float32 weights).

  Raises:
    ValueError: the number of layers and of weights differ.
  """
  if layers.shape[0] != weights.shape[0]:
    raise ValueError(f"{layers.shape[0]} layer outputs for {weights.shape[0]} layer weights")
  w = jax.nn.softmax(weights.astype(jnp.float32))
  return jnp.tensordot(w.astype(layers.dtype), layers, axes=(0, 0))


class MultiHeadFactorizedAttentivePooling(nnx.Module):
  """MHFA (module docstring): layer outputs ``(L, batch, T, D)`` -> an utterance embedding ``(batch, out)``.

  Args:
    num_layers: L (13 for M2D ViT-B: the patch embedding + 12 blocks).
    input_dim: D (768; ``F * D`` when a token grid has F frequency patches per frame).
    compression_dim: C (128). heads: H (8 in wespeaker's default; seed 002 does not state it).
    out_dim: embedding width (the clue size, 256 in seed 002).
    dtype: computation dtype. rngs: initialisation (layer weights ones, Linear layers as PyTorch).

  Call: ``layers`` ``(L, batch, T, D)``, optional ``mask`` ``(batch, T)`` (1 = a real frame; padded frames get no
  attention weight) -> ``(batch, out)`` float32.
  """

  def __init__(self, num_layers: int, input_dim: int, out_dim: int, *, compression_dim: int = 128, heads: int = 8,
               dtype: Any = None, rngs: nnx.Rngs):
    self.num_layers, self.heads, self.compression_dim, self.embed_dim = int(num_layers), int(heads), \
        int(compression_dim), int(out_dim)
    self.weights_k = nnx.Param(nnx.with_partitioning(nnx.initializers.ones_init(), (None,))(
        rngs.params(), (num_layers,), jnp.float32))
    self.weights_v = nnx.Param(nnx.with_partitioning(nnx.initializers.ones_init(), (None,))(
        rngs.params(), (num_layers,), jnp.float32))
    self.cmp_linear_k = torch_linear(input_dim, compression_dim, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.cmp_linear_v = torch_linear(input_dim, compression_dim, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.att_head = torch_linear(compression_dim, heads, ("mlp", None), dtype=dtype, rngs=rngs)
    self.pooling_fc = torch_linear(heads * compression_dim, out_dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, layers: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    if layers.ndim != 4:
      raise ValueError(f"MHFA expects layer outputs (layers, batch, frames, dim), got {layers.shape}")
    k = self.cmp_linear_k(layer_softmax_sum(layers, self.weights_k[...]))
    v = self.cmp_linear_v(layer_softmax_sum(layers, self.weights_v[...]))
    logits = self.att_head(k).astype(jnp.float32)  # (batch, T, H)
    if mask is not None:
      logits = jnp.where(mask[:, :, None] > 0, logits, -1e30)
    att = jax.nn.softmax(logits, axis=1)
    pooled = jnp.einsum("bth,btc->bhc", att.astype(v.dtype), v)
    return self.pooling_fc(pooled.reshape(pooled.shape[0], -1)).astype(jnp.float32)


MHFA = MultiHeadFactorizedAttentivePooling
