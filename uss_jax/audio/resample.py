"""Integer-ratio (rational) polyphase resampling inside the jitted graph, as ``scipy.signal.resample_poly``.

Source: ``scipy.signal.resample_poly`` (``upfirdn`` with its default ``window=('kaiser', 5.0)`` low-pass,
``padtype='constant'``): zero-stuff by ``up``, filter with a ``2 L + 1``-tap linear-phase FIR, keep every ``down``-th
sample. Here the stuffing is ``lax.pad`` interior padding and the filter one strided convolution, so shapes are static
and the resampler runs inside a jitted step (e.g. the MAM-CLAP teacher at 48 kHz fed 16 kHz batches,
``uss_jax.tasks.mam``). Waveforms are ``(..., samples)`` float32.
"""

from __future__ import annotations

import fractions
import functools

import jax
import jax.numpy as jnp
import numpy as np


def resample_ratio(from_rate: int, to_rate: int) -> tuple[int, int]:
  """``(up, down)`` in lowest terms with ``to_rate / from_rate = up / down`` (16000 -> 48000: (3, 1))."""
  r = fractions.Fraction(int(to_rate), int(from_rate))
  return r.numerator, r.denominator


@functools.lru_cache(maxsize=16)
def resample_filter(up: int, down: int) -> np.ndarray:
  """``scipy.signal.resample_poly``'s default filter: ``firwin(2 L + 1, 1 / max(up, down), window=('kaiser', 5.0))
  * up`` with ``L = 10 max(up, down)`` (float64, read-only)."""
  from scipy import signal  # pylint: disable=import-outside-toplevel
  max_rate = max(up, down)
  h = signal.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up
  h.flags.writeable = False
  return h


def resample_poly(x: jax.Array, up: int, down: int) -> jax.Array:
  """Rational polyphase resampling by ``up / down`` along the last axis, as ``scipy.signal.resample_poly(x, up,
  down, axis=-1)`` with its defaults (``window=('kaiser', 5.0)``, zero padding).

  ``y[m] = sum_k h[k] x_up[m * down + L - k]`` for the zero-stuffed ``x_up[i] = x[i / up]`` (``i % up == 0``),
  ``h = resample_filter(up, down)`` of ``2 L + 1`` taps (a linear-phase low-pass at ``1 / max(up, down)`` of
  Nyquist, gain ``up``); ``ceil(n * up / down)`` output samples. One strided convolution of the zero-stuffed input
  (``lax.pad`` interior padding) at HIGHEST precision, so it runs inside a jitted step.

  Args:
    x: ``(..., samples)`` float.
    up, down: positive integers (reduced by their gcd).

  Returns:
    ``(..., ceil(samples * up / down))`` float32.

  Raises:
    ValueError: non-positive factors.
  """
  if up < 1 or down < 1:
    raise ValueError(f"up and down must be >= 1, got {up}, {down}")
  g = np.gcd(up, down)
  up, down = up // g, down // g
  x = jnp.asarray(x, jnp.float32)
  if up == down == 1:
    return x
  lead, n = x.shape[:-1], x.shape[-1]
  h = resample_filter(up, down)
  half = (len(h) - 1) // 2
  n_out = -(-n * up // down)
  total = (n_out - 1) * down + 2 * half + 1
  z = jax.lax.pad(x.reshape(-1, n), jnp.float32(0),
                  ((0, 0, 0), (half, total - half - ((n - 1) * up + 1), up - 1)))
  kernel = jnp.asarray(h[::-1].copy(), jnp.float32)[None, None, :]
  y = jax.lax.conv_general_dilated(z[:, None, :], kernel, (down,), "VALID",
                                   precision=jax.lax.Precision.HIGHEST)
  return y[:, 0, :n_out].reshape(*lead, n_out)
