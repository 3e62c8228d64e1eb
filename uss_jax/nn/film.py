"""Feature-wise linear modulation (FiLM) of channels-last feature maps by a condition vector.

``y = gamma(c) * x + beta(c)`` with ``gamma`` and ``beta`` affine functions of the condition ``c``, one value per
channel, broadcast over every other axis of ``x`` (time, frequency, ...).

Source: Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer" (AAAI 2018), Eq. (1)-(3)
(``FiLM(F | gamma, beta) = gamma * F + beta``). Two forms are used in this project:

* additive (``use_gamma=False``): ``y = x + beta(c)``, as bytedance/uss ``uss/models/film.py`` (one
  ``Linear(condition_size -> C)`` per BatchNorm, added after the BatchNorm and before the activation in
  ``uss/models/resunet.py``) and the CaRE-SEP decoder (query embedding -> Linear -> added to every block's features);
* affine (``use_gamma=True``): ``y = (gamma_offset + gamma(c)) * x + beta(c)`` (SoundFilter-style FiLM; with
  ``gamma_offset=1`` and a zero-initialised ``gamma`` the layer starts as the identity plus a shift).

Layout: ``x`` is channels-last ``(batch, ..., channels)`` (``(batch, time, freq, channels)`` for 2-D maps,
``(batch, time, channels)`` for 1-D), the condition is ``(batch, condition_size)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

Initializer = nnx.initializers.Initializer


def broadcast_channels(v: jax.Array, ndim: int) -> jax.Array:
  """Reshapes per-example channel values ``(batch, channels)`` to ``(batch, 1, ..., 1, channels)`` of rank ``ndim``.

  Raises:
    ValueError: if ``v`` is not 2-D or ``ndim < 2``.
  """
  if v.ndim != 2 or ndim < 2:
    raise ValueError(f"expected (batch, channels) values for a rank >= 2 map, got shape {v.shape} for rank {ndim}")
  return v.reshape((v.shape[0],) + (1,) * (ndim - 2) + (v.shape[1],))


def film_modulate(x: jax.Array, gamma: jax.Array | None, beta: jax.Array | None) -> jax.Array:
  """``gamma * x + beta`` with per-example, per-channel ``gamma`` / ``beta`` (either may be None: 1 / 0).

  Args:
    x: ``(batch, ..., channels)`` channels-last feature map.
    gamma: ``(batch, channels)`` scale, or None.
    beta: ``(batch, channels)`` shift, or None.

  Returns:
    ``(batch, ..., channels)``, in the promoted dtype of ``x`` and the modulation.

  Raises:
    ValueError: a modulation whose batch or channel size does not match ``x``.
  """
  for name, v in (("gamma", gamma), ("beta", beta)):
    if v is not None and (v.ndim != 2 or v.shape[0] != x.shape[0] or v.shape[1] != x.shape[-1]):
      raise ValueError(f"{name} of shape {v.shape} does not modulate a map of shape {x.shape} "
                       "(expected (batch, channels))")
  if gamma is not None:
    x = x * broadcast_channels(gamma, x.ndim)
  if beta is not None:
    x = x + broadcast_channels(beta, x.ndim)
  return x


class FiLM(nnx.Module):
  """FiLM generator and modulation for one feature map: ``y = [gamma_offset + gamma(c)] * x + beta(c)``.

  ``beta`` (and ``gamma`` when ``use_gamma``) are ``nnx.Linear(condition_size -> num_features)`` layers (attributes
  ``beta`` / ``gamma``, so a PyTorch ``Linear(cond, C)`` maps onto ``beta.kernel`` = ``weight.T`` and ``beta.bias``).
  With ``use_gamma=False`` this is the additive conditioning of bytedance/uss ``uss/models/film.py``.

  Args:
    condition_size: length of the condition vector (USS: 2048 for a Cnn14 embedding, 527 for AudioSet
      probabilities).
    num_features: channels of the modulated map.
    use_gamma: also learn a multiplicative ``gamma`` (affine FiLM); False = additive only.
    gamma_offset: constant added to ``gamma(c)`` (1.0 makes a zero ``gamma`` the identity; 0.0 is the plain FiLM of
      Perez et al.).
    use_bias: whether the generator Linears have biases (USS: yes).
    kernel_init, bias_init: initialisers of the ``beta`` Linear (USS ``init_layer``: Xavier uniform, zero bias).
    gamma_kernel_init, gamma_bias_init: initialisers of the ``gamma`` Linear (default zeros, so the layer starts as
      ``gamma_offset * x + beta(c)``).
    axis_names: logical axis names of the generator kernels ``(condition, channels)``; the biases get
      ``(axis_names[1],)``. The default ties the output channels to the modulated conv map's ``conv_out``.
    precision: ``jax.lax`` precision of the generator matmuls.
    dtype: computation dtype (None = the parameters' float32).
    rngs: initialisation RNG streams (``params``).
  """

  def __init__(self, condition_size: int, num_features: int, *, use_gamma: bool = False, gamma_offset: float = 1.0,
               use_bias: bool = True, kernel_init: Initializer = nnx.initializers.xavier_uniform(),
               bias_init: Initializer = nnx.initializers.zeros_init(),
               gamma_kernel_init: Initializer = nnx.initializers.zeros_init(),
               gamma_bias_init: Initializer = nnx.initializers.zeros_init(),
               axis_names: Sequence[str | None] = ("embed", "conv_out"), precision: Any = None, dtype: Any = None,
               rngs: nnx.Rngs):
    self.condition_size = int(condition_size)
    self.num_features = int(num_features)
    self.use_gamma = bool(use_gamma)
    self.gamma_offset = float(gamma_offset)
    names = tuple(axis_names)
    if len(names) != 2:
      raise ValueError(f"axis_names must name (condition, channels), got {names}")

    def linear(k_init: Initializer, b_init: Initializer) -> nnx.Linear:
      return nnx.Linear(
          self.condition_size, self.num_features, use_bias=use_bias, precision=precision, dtype=dtype,
          kernel_init=nnx.with_partitioning(k_init, names), bias_init=nnx.with_partitioning(b_init, names[1:]),
          rngs=rngs)

    self.beta = linear(kernel_init, bias_init)
    self.gamma = linear(gamma_kernel_init, gamma_bias_init) if self.use_gamma else None

  def modulation(self, condition: jax.Array) -> tuple[jax.Array | None, jax.Array]:
    """The per-channel modulation for a batch of conditions.

    Args:
      condition: ``(batch, condition_size)``.

    Returns:
      ``(gamma, beta)``, each ``(batch, num_features)``; ``gamma`` is None for the additive form and includes
      ``gamma_offset`` otherwise.

    Raises:
      ValueError: a condition of the wrong shape.
    """
    if condition.ndim != 2 or condition.shape[-1] != self.condition_size:
      raise ValueError(f"condition must be (batch, {self.condition_size}), got {condition.shape}")
    beta = self.beta(condition)
    if self.gamma is None:
      return None, beta
    return self.gamma_offset + self.gamma(condition), beta

  def __call__(self, x: jax.Array, condition: jax.Array) -> jax.Array:
    """Modulates ``x`` ``(batch, ..., num_features)`` by ``condition`` ``(batch, condition_size)``; same shape out."""
    gamma, beta = self.modulation(condition)
    return film_modulate(x, gamma, beta)
