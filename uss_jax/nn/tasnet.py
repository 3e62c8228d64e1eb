"""Conv-TasNet building blocks in Flax NNX: learned waveform encoder / decoder, gLN, PReLU, 1x1 and depthwise 1-D
convolutions, the temporal convolutional network (TCN) with residual and skip paths.

Used by SoundBeam (``uss_jax.models.soundbeam``); sources, layout and initialisation as described there:
Conv-TasNet (Luo & Mesgarani, TASLP 2019) Sec. II-B / Fig. 1 and gLN Eq. (13); asteroid
``asteroid/masknn/convolutional.py`` and ESPnet ``espnet2/enh/layers/tcn.py`` read for facts. Channels-last:
encoded signals ``(batch, frames, channels)``, waveforms ``(batch, samples)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from uss_jax.nn import partitioning

CONV_AXES = (None, "conv_in", "conv_out")
GLN_EPS = 1e-8  # asteroid GlobLN EPS
PRELU_INIT = 0.25  # torch.nn.PReLU default
MASK_ACTIVATIONS = ("relu", "sigmoid", "linear")
ENCODER_ACTIVATIONS = ("relu", "linear")


# --------------------------------------------------------------------------------------------------------------------
# Initialisers and small layers.
# --------------------------------------------------------------------------------------------------------------------


def torch_uniform(fan_in: int):
  """PyTorch's default Conv / Linear initialiser (kaiming_uniform(a=sqrt(5)) and its bias): U(+-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(max(int(fan_in), 1))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _param(init, names: Sequence[str | None], rngs: nnx.Rngs, shape: Sequence[int]) -> nnx.Param:
  return nnx.Param(nnx.with_partitioning(init, tuple(names))(rngs.params(), tuple(shape), jnp.float32))


def _cast(x: jax.Array, dtype: Any) -> jax.Array:
  return x if dtype is None else x.astype(dtype)


class PReLU(nnx.Module):
  """``torch.nn.PReLU()``: one learned slope ``a`` (shape (1,), init 0.25); ``max(x, 0) + a * min(x, 0)``."""

  def __init__(self, *, init: float = PRELU_INIT, rngs: nnx.Rngs):
    self.weight = _param(nnx.initializers.constant(init), (None,), rngs, (1,))

  def __call__(self, x: jax.Array) -> jax.Array:
    a = self.weight.get_value().astype(x.dtype)
    return jnp.where(x >= 0, x, a * x)


class GlobalLayerNorm(nnx.Module):
  """Global layer normalisation (gLN, Conv-TasNet Eq. (13); asteroid ``GlobLN``).

  ``gLN(y) = gamma * (y - mean) / sqrt(var + eps) + beta`` with mean and (biased) variance over frames AND channels of
  each example; ``gamma`` / ``beta`` are per channel.

  Args:
    channels: channel count C.
    eps: variance floor (asteroid: 1e-8).
    rngs: initialisation streams (scale 1, bias 0).

  Call: ``y`` ``(batch, frames, C)`` -> same shape (statistics in float32).
  """

  def __init__(self, channels: int, *, eps: float = GLN_EPS, rngs: nnx.Rngs):
    self.eps = float(eps)
    self.scale = _param(nnx.initializers.ones_init(), ("conv_out",), rngs, (channels,))
    self.bias = _param(nnx.initializers.zeros_init(), ("conv_out",), rngs, (channels,))

  def __call__(self, y: jax.Array) -> jax.Array:
    dtype = y.dtype
    y = y.astype(jnp.float32)
    mean = jnp.mean(y, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(y - mean), axis=(1, 2), keepdims=True)
    out = (y - mean) * jax.lax.rsqrt(var + self.eps) * self.scale.get_value() + self.bias.get_value()
    return out.astype(dtype)


class PointwiseConv1d(nnx.Module):
  """``nn.Conv1d(in, out, 1)`` on channels-last ``(batch, frames, in)`` as one matmul.

  Kernel ``(1, in, out)`` (the ``nnx.Conv`` 1-D layout), bias ``(out,)``; PyTorch default initialisation.
  """

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True, dtype: Any = None,
               rngs: nnx.Rngs):
    self.in_features, self.out_features, self.dtype = int(in_features), int(out_features), dtype
    init = torch_uniform(in_features)
    self.kernel = _param(init, CONV_AXES, rngs, (1, in_features, out_features))
    self.bias = _param(init, ("conv_out",), rngs, (out_features,)) if use_bias else nnx.data(None)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``(..., in)`` -> ``(..., out)``."""
    w = self.kernel.get_value()[0]
    y = jnp.einsum("...i,io->...o", _cast(x, self.dtype), _cast(w, self.dtype))
    if self.bias is not None:
      y = y + self.bias.get_value().astype(y.dtype)
    return y


class DepthwiseConv1d(nnx.Module):
  """Depthwise dilated 1-D convolution with "same" output length (``nn.Conv1d(C, C, P, dilation=d, groups=C,
  padding=(P - 1) d / 2)``).

  ``y[t, c] = b[c] + sum_k w[k, 0, c] * x[t + k d - left, c]``, zero outside ``[0, frames)``, ``left = (P-1) d // 2``
  (for even P the extra padding sample goes to the right so the length is kept). Computed as P shifted
  multiply-adds (no XLA convolution).

  Args:
    channels: C. kernel_size: P. dilation: d. dtype: computation dtype. rngs: PyTorch default init (fan_in = P).
  """

  def __init__(self, channels: int, kernel_size: int, dilation: int, *, dtype: Any = None, rngs: nnx.Rngs):
    self.kernel_size, self.dilation, self.dtype = int(kernel_size), int(dilation), dtype
    init = torch_uniform(kernel_size)
    self.kernel = _param(init, CONV_AXES, rngs, (kernel_size, 1, channels))
    self.bias = _param(init, ("conv_out",), rngs, (channels,))

  def __call__(self, x: jax.Array) -> jax.Array:
    """``(batch, frames, C)`` -> ``(batch, frames, C)``."""
    x = _cast(x, self.dtype)
    frames = x.shape[1]
    total = (self.kernel_size - 1) * self.dilation
    left = total // 2
    xp = jnp.pad(x, ((0, 0), (left, total - left), (0, 0)))
    w = _cast(self.kernel.get_value()[:, 0, :], self.dtype)
    y = sum(xp[:, k * self.dilation:k * self.dilation + frames] * w[k] for k in range(self.kernel_size))
    return y + self.bias.get_value().astype(y.dtype)

  def dynamic(self, x: jax.Array, dilation: jax.Array, max_dilation: int) -> jax.Array:
    """``__call__`` with a traced dilation instead of ``self.dilation`` (``depthwise_dynamic_dilation``)."""
    return depthwise_dynamic_dilation(_cast(x, self.dtype), self.kernel.get_value(), self.bias.get_value(), dilation,
                                      max_dilation)

  @property
  def context_frames(self) -> int:
    """Past frames the causal form needs: ``(P - 1) d``."""
    return (self.kernel_size - 1) * self.dilation

  def causal(self, x: jax.Array, context: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Causal form (Waveformer ``DilatedCausalConvEncoder``: ``Conv1d(padding=0)`` over ``cat(context, x)``).

    ``y[t, c] = b[c] + sum_k w[k, 0, c] u[t + k d, c]`` with ``u = cat(context, x)`` along frames.

    Args:
      x: ``(batch, frames, C)``. context: the ``(P - 1) d`` frames before ``x`` ``(batch, (P - 1) d, C)``; None =
        zeros (the start of a signal).

    Returns:
      ``(y (batch, frames, C), the last (P - 1) d frames of u)`` (the next call's context).
    """
    x = _cast(x, self.dtype)
    frames, total = x.shape[1], self.context_frames
    if context is None:
      context = jnp.zeros((x.shape[0], total, x.shape[2]), x.dtype)
    u = jnp.concatenate([context.astype(x.dtype), x], axis=1)
    w = _cast(self.kernel.get_value()[:, 0, :], self.dtype)
    y = sum(u[:, k * self.dilation:k * self.dilation + frames] * w[k] for k in range(self.kernel_size))
    return y + self.bias.get_value().astype(y.dtype), u[:, u.shape[1] - total:]


# --------------------------------------------------------------------------------------------------------------------
# Encoder / decoder (learned filterbanks).
# --------------------------------------------------------------------------------------------------------------------


def num_frames(samples: int, kernel_size: int, stride: int) -> int:
  """Frames of the encoder over ``samples`` samples, the signal zero-padded on the right to cover every sample:
  ``max(ceil((samples - kernel) / stride), 0) + 1``."""
  return max(-(-(int(samples) - int(kernel_size)) // int(stride)), 0) + 1


class WaveformEncoder(nnx.Module):
  """1-D convolution ``Conv1d(1 -> N, kernel K, stride S, bias=False)`` + activation, kernel a multiple of the stride.

  Frame ``f`` = ``x[f S : f S + K]`` of the right-zero-padded waveform (``num_frames``), times the kernel ``(K, 1, N)``
  (the ``nnx.Conv`` layout of the PyTorch ``(N, 1, K)`` filters transposed): computed as framing + one matmul.

  Args:
    n_filters: N. kernel_size: K (samples). stride: S (samples); K must be a multiple of S.
    activation: ``'relu'`` (Conv-TasNet) or ``'linear'``.
    dtype: computation dtype. rngs: Xavier normal kernel (asteroid ``FreeFB``).

  Call: waveform ``(batch, samples)`` -> ``(batch, frames, N)``.

  Raises:
    ValueError: K not a positive multiple of S, or an unknown activation.
  """

  def __init__(self, n_filters: int, kernel_size: int, stride: int, *, activation: str = "relu", dtype: Any = None,
               rngs: nnx.Rngs):
    if stride <= 0 or kernel_size <= 0 or kernel_size % stride:
      raise ValueError(f"WaveformEncoder: kernel_size={kernel_size} must be a positive multiple of stride={stride}")
    if activation not in ENCODER_ACTIVATIONS:
      raise ValueError(f"WaveformEncoder: activation {activation!r} not in {ENCODER_ACTIVATIONS}")
    self.n_filters, self.kernel_size, self.stride = int(n_filters), int(kernel_size), int(stride)
    self.activation, self.dtype = activation, dtype
    self.kernel = _param(nnx.initializers.xavier_normal(), CONV_AXES, rngs, (kernel_size, 1, n_filters))

  def frames(self, waveform: jax.Array) -> jax.Array:
    """``(batch, samples)`` -> ``(batch, frames, K)``: the zero-padded waveform cut into overlapping frames."""
    batch, samples = waveform.shape
    m = self.kernel_size // self.stride
    n = num_frames(samples, self.kernel_size, self.stride)
    padded = (n + m - 1) * self.stride
    x = jnp.pad(waveform, ((0, 0), (0, padded - samples)))
    blocks = x.reshape(batch, n + m - 1, self.stride)
    return jnp.concatenate([blocks[:, j:j + n] for j in range(m)], axis=-1)

  def __call__(self, waveform: jax.Array) -> jax.Array:
    w = self.kernel.get_value()[:, 0, :]
    y = jnp.einsum("bfk,kn->bfn", _cast(self.frames(waveform), self.dtype), _cast(w, self.dtype))
    return jax.nn.relu(y) if self.activation == "relu" else y


class WaveformDecoder(nnx.Module):
  """Transposed 1-D convolution ``ConvTranspose1d(N -> 1, kernel K, stride S, bias=False)`` = matmul + overlap-add.

  ``out[f S + k] += sum_n Y[f, n] w[k, n, 0]`` (kernel ``(K, N, 1)``), then trimmed to ``length`` samples (the
  encoder's input length; zero-padded if longer than the overlap-add).

  Args:
    n_filters: N. kernel_size: K. stride: S (K a multiple of S). dtype: computation dtype. rngs: Xavier normal kernel.

  Call: ``(batch, frames, N)``, ``length`` -> waveform ``(batch, length)`` float32.

  Raises:
    ValueError: K not a positive multiple of S.
  """

  def __init__(self, n_filters: int, kernel_size: int, stride: int, *, dtype: Any = None, rngs: nnx.Rngs):
    if stride <= 0 or kernel_size <= 0 or kernel_size % stride:
      raise ValueError(f"WaveformDecoder: kernel_size={kernel_size} must be a positive multiple of stride={stride}")
    self.n_filters, self.kernel_size, self.stride, self.dtype = int(n_filters), int(kernel_size), int(stride), dtype
    self.kernel = _param(nnx.initializers.xavier_normal(), CONV_AXES, rngs, (kernel_size, n_filters, 1))

  def __call__(self, y: jax.Array, length: int) -> jax.Array:
    batch, n, _ = y.shape
    m = self.kernel_size // self.stride
    w = self.kernel.get_value()[:, :, 0]
    seg = jnp.einsum("bfn,kn->bfk", _cast(y, self.dtype), _cast(w, self.dtype)).astype(jnp.float32)
    seg = seg.reshape(batch, n, m, self.stride)
    out = sum(jnp.pad(seg[:, :, j], ((0, 0), (j, m - 1 - j), (0, 0))) for j in range(m))
    out = out.reshape(batch, (n + m - 1) * self.stride)
    if out.shape[1] >= length:
      return out[:, :length]
    return jnp.pad(out, ((0, 0), (0, length - out.shape[1])))


# --------------------------------------------------------------------------------------------------------------------
# Conv-TasNet temporal convolutional network.
# --------------------------------------------------------------------------------------------------------------------


class TCNBlock(nnx.Module):
  """Conv-TasNet 1-D conv block (asteroid ``Conv1DBlock``).

  ``z = gLN(PReLU(dwconv_d(gLN(PReLU(1x1_{B->H}(x))))))``; returns ``(res, skip) = (1x1_{H->B}(z), 1x1_{H->Sc}(z))``
  (``skip`` None when ``skip == 0``); the caller adds ``res`` to ``x`` and sums the skips.

  Args:
    channels: B (block input / residual). hidden: H. skip: Sc (0 = no skip path). kernel_size: P. dilation: d.
    norm_eps: gLN eps. dtype: computation dtype. rngs: initialisation.

  Call: ``x`` ``(batch, frames, B)`` -> ``(res (batch, frames, B), skip (batch, frames, Sc) | None)``; with
  ``dilation`` (a traced int32) and ``max_dilation`` the depthwise conv uses that dilation instead of its own (the
  blocks of a ``lax.scan``, ``TemporalConvNet(remat='scan')``).
  """

  def __init__(self, channels: int, hidden: int, skip: int, kernel_size: int, dilation: int, *,
               norm_eps: float = GLN_EPS, dtype: Any = None, rngs: nnx.Rngs):
    self.dilation = int(dilation)
    self.conv_in = PointwiseConv1d(channels, hidden, dtype=dtype, rngs=rngs)
    self.act1 = PReLU(rngs=rngs)
    self.norm1 = GlobalLayerNorm(hidden, eps=norm_eps, rngs=rngs)
    self.depthwise = DepthwiseConv1d(hidden, kernel_size, dilation, dtype=dtype, rngs=rngs)
    self.act2 = PReLU(rngs=rngs)
    self.norm2 = GlobalLayerNorm(hidden, eps=norm_eps, rngs=rngs)
    self.res_conv = PointwiseConv1d(hidden, channels, dtype=dtype, rngs=rngs)
    self.skip_conv = PointwiseConv1d(hidden, skip, dtype=dtype, rngs=rngs) if skip else nnx.data(None)

  def __call__(self, x: jax.Array, dilation: jax.Array | None = None,
               max_dilation: int | None = None) -> tuple[jax.Array, jax.Array | None]:
    z = self.norm1(self.act1(self.conv_in(x)))
    z = self.depthwise(z) if dilation is None else self.depthwise.dynamic(z, dilation, max_dilation)
    z = self.norm2(self.act2(z))
    return self.res_conv(z), (self.skip_conv(z) if self.skip_conv is not None else None)


REMAT_MODES = ("none", "block", "scan")


def remat_mode(remat: bool | str) -> str:
  """``TemporalConvNet``'s ``remat`` argument as one of ``REMAT_MODES`` (False -> 'none', True -> 'block').

  Raises:
    ValueError: an unknown mode.
  """
  if isinstance(remat, bool) or remat is None:
    return "block" if remat else "none"
  if remat not in REMAT_MODES:
    raise ValueError(f"remat={remat!r}: expected True / False or one of {REMAT_MODES}")
  return str(remat)


def depthwise_dynamic_dilation(x: jax.Array, kernel: jax.Array, bias: jax.Array, dilation: jax.Array,
                               max_dilation: int) -> jax.Array:
  """``DepthwiseConv1d`` with the dilation a traced integer (so blocks of different dilations can share one
  ``lax.scan`` body): the input is zero-padded for ``max_dilation`` and each of the P taps is a ``dynamic_slice``.

  Args:
    x: ``(batch, frames, C)``. kernel: ``(P, 1, C)``. bias: ``(C,)``. dilation: int32 scalar ``d <= max_dilation``.
    max_dilation: the largest dilation of the scanned blocks (static).

  Returns:
    ``(batch, frames, C)``, equal to ``DepthwiseConv1d(C, P, d)`` with the same weights.
  """
  p, frames = kernel.shape[0], x.shape[1]
  total_max = (p - 1) * int(max_dilation)
  left_max = total_max // 2
  xp = jnp.pad(x, ((0, 0), (left_max, total_max - left_max), (0, 0)))
  offset = left_max - ((p - 1) * dilation) // 2
  w = kernel[:, 0, :].astype(x.dtype)
  y = sum(jax.lax.dynamic_slice_in_dim(xp, offset + k * dilation, frames, axis=1) * w[k] for k in range(p))
  return y + bias.astype(y.dtype)


def call_block(block: nnx.Module, x: jax.Array, remat: bool | str) -> Any:
  """``block(x)``, rematerialised in the backward pass when ``remat`` (``nnx.remat`` with ``prevent_cse=True`` and
  the ``nothing_saveable`` policy: only the block input is kept) or when the trainer's ``config.remat`` is on
  (``uss_jax.nn.partitioning.remat``, its policy)."""
  if remat:
    return nnx.remat(lambda b, h: b(h), prevent_cse=True, policy=jax.checkpoint_policies.nothing_saveable)(block, x)
  return partitioning.remat(lambda b, h: b(h))(block, x)


def multiplicative_adaptation(res: jax.Array, skip: jax.Array | None,
                              embedding: jax.Array) -> tuple[jax.Array, jax.Array | None]:
  """Multiplicative clue adaptation (TD-SpeakerBeam ``mul`` layer, BUT speakerbeam ``adapt_layers.py``).

  ``res * e[:, :B]`` and ``skip * e[:, B:]`` broadcast over frames (with no skip path: ``res * e``).

  Args:
    res: residual output of the adaptation block, ``(batch, frames, B)``.
    skip: its skip output ``(batch, frames, Sc)`` or None.
    embedding: clue embedding ``(batch, D)`` with D = B + Sc (D = B without skip).

  Returns:
    ``(res, skip)`` adapted.

  Raises:
    ValueError: D does not match.
  """
  b = res.shape[-1]
  want = b + (skip.shape[-1] if skip is not None else 0)
  if embedding.shape[-1] != want:
    raise ValueError(f"clue embedding has {embedding.shape[-1]} dims; the adaptation needs B + Sc = {want}")
  e = embedding.astype(res.dtype)[:, None, :]
  res = res * e[..., :b]
  if skip is not None:
    skip = skip * e[..., b:].astype(skip.dtype)
  return res, skip


class TemporalConvNet(nnx.Module):
  """Conv-TasNet separator (asteroid ``TDConvNet``, one source): gLN -> 1x1 N->B -> R x X blocks (dilation 2^x) ->
  PReLU -> 1x1 (Sc or B) -> out -> mask activation; optional multiplicative adaptation after block ``adapt_layer``.

  Args:
    n_filters: N (input channels). bottleneck: B. hidden: H. skip: Sc (0 = the mask is computed from the residual
      stream). kernel_size: P. blocks: X. repeats: R.
    out_channels: output channels (default N).
    mask_activation: ``'relu'`` | ``'sigmoid'`` | ``'linear'``.
    norm_eps: gLN eps. remat: memory for compute in the backward pass (``REMAT_MODES``): ``'none'`` / False stores
      every activation; ``'block'`` / True wraps each block in ``nnx.remat`` (nothing saved inside a block), which
      XLA:CPU schedules so that no memory is saved (benchmarks/RESULTS.md); ``'scan'`` runs consecutive blocks as
      one ``lax.scan`` over their stacked weights with a rematerialised body (the dilation a scanned integer,
      ``depthwise_dynamic_dilation``): the loop makes every backend recompute one block at a time, so the
      activation memory is the block boundaries plus one block's activations. Same parameters and results.
    dtype: computation dtype. rngs: initialisation.

  Raises:
    ValueError: unknown mask activation.
  """

  def __init__(self, n_filters: int, bottleneck: int, hidden: int, skip: int, kernel_size: int, blocks: int,
               repeats: int, *, out_channels: int | None = None, mask_activation: str = "relu",
               norm_eps: float = GLN_EPS, remat: bool = False, dtype: Any = None, rngs: nnx.Rngs):
    if mask_activation not in MASK_ACTIVATIONS:
      raise ValueError(f"mask activation {mask_activation!r} not in {MASK_ACTIVATIONS}")
    self.bottleneck_channels, self.skip_channels = int(bottleneck), int(skip)
    self.mask_activation, self.remat = mask_activation, remat_mode(remat)
    self.norm = GlobalLayerNorm(n_filters, eps=norm_eps, rngs=rngs)
    self.bottleneck = PointwiseConv1d(n_filters, bottleneck, dtype=dtype, rngs=rngs)
    self.blocks = nnx.List([
        TCNBlock(bottleneck, hidden, skip, kernel_size, 2**x, norm_eps=norm_eps, dtype=dtype, rngs=rngs)
        for _ in range(repeats) for x in range(blocks)])
    self.mask_prelu = PReLU(rngs=rngs)
    self.mask_conv = PointwiseConv1d(skip or bottleneck, out_channels or n_filters, dtype=dtype, rngs=rngs)

  def start(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encoded input ``(batch, frames, N)`` -> (residual stream ``(batch, frames, B)``, zero skip sum)."""
    h = self.bottleneck(self.norm(y))
    width = self.skip_channels or self.bottleneck_channels
    return h, jnp.zeros(h.shape[:-1] + (width,), h.dtype)

  def run(self, h: jax.Array, skip_sum: jax.Array, first: int, last: int) -> tuple[jax.Array, jax.Array]:
    """Blocks ``first .. last - 1``: ``h += res``, ``skip_sum += skip``."""
    if self.remat == "scan" and last - first >= 2:
      return self._scan(h, skip_sum, first, last)
    for block in self.blocks[first:last]:
      res, skip = call_block(block, h, self.remat)
      h, skip_sum = self.add_block_output(h, skip_sum, res, skip)
    return h, skip_sum

  def _scan(self, h: jax.Array, skip_sum: jax.Array, first: int, last: int) -> tuple[jax.Array, jax.Array]:
    """``run`` as a ``lax.scan`` over blocks ``first .. last - 1`` (``remat='scan'``)."""
    blocks = list(self.blocks[first:last])
    graphdef, _ = nnx.split(blocks[0])
    stacked = jax.tree.map(lambda *v: jnp.stack(v), *[nnx.split(b)[1] for b in blocks])
    dilations = jnp.asarray([b.dilation for b in blocks], jnp.int32)
    max_dilation = max(b.dilation for b in blocks)

    @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
    def body(carry, xs):
      state, dilation = xs
      res, skip = nnx.merge(graphdef, state)(carry[0], dilation, max_dilation)
      return self.add_block_output(carry[0], carry[1], res, skip), None

    (h, skip_sum), _ = jax.lax.scan(body, (h, skip_sum), (stacked, dilations))
    return h, skip_sum

  def add_block_output(self, h, skip_sum, res, skip):
    """``(h + res, skip_sum + skip)`` (skip_sum unchanged without skip path)."""
    h = h + res
    return h, (skip_sum + skip if skip is not None else skip_sum)

  def finish(self, h: jax.Array, skip_sum: jax.Array) -> jax.Array:
    """Mask ``(batch, frames, out)`` (float32) from the skip sum (or the residual stream without skip path)."""
    score = self.mask_conv(self.mask_prelu(skip_sum if self.skip_channels else h)).astype(jnp.float32)
    if self.mask_activation == "relu":
      return jax.nn.relu(score)
    if self.mask_activation == "sigmoid":
      return jax.nn.sigmoid(score)
    return score

  def __call__(self, y: jax.Array) -> jax.Array:
    """Unconditioned: ``(batch, frames, N)`` -> ``(batch, frames, out)``."""
    h, s = self.start(y)
    return self.finish(*self.run(h, s, 0, len(self.blocks)))
