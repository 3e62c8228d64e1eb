"""ResUNet30: the query-conditioned separation U-Net of bytedance/uss (universal source separation) in Flax NNX.

Source: Kong et al., "Universal Source Separation with Weakly Labelled Data" (arXiv 2305.07447, 2023), Sec. 3.3
(ResUNet with FiLM conditioning on the query embedding, decoupled magnitude / phase mask); reference implementation
bytedance/uss ``uss/models/resunet.py`` (``ConvBlockRes``, ``EncoderBlockRes1B``, ``DecoderBlockRes1B``,
``ResUNet30_Base``, ``ResUNet30``), ``uss/models/film.py`` (``FiLM``) and ``uss/models/base.py``
(``wav_to_spectrogram_phase``), snapshot c19e2c5; STFT / iSTFT as torchlibrosa 0.1.0 (``uss_jax.audio.stft``).

Layout: conv feature maps are channels-last ``(batch, time, freq, channels)``; the reference's NCHW
``(batch, channels, time, freq)`` maps onto it by moving the channel axis last. Attribute names equal the reference
module names (``bn0``, ``pre_conv``, ``encoder_block{1..6}.conv_block1``, ``conv_block7a.conv_block1``,
``decoder_block{1..6}.{bn1, conv1, conv_block2}``, ``after_conv``), with the FiLM generators inside the block they
modulate: the reference's ``film.<block>->conv_block1->beta1`` is ``<block>.conv_block1.film1.beta`` here (see
``uss_jax.convert.uss``). The reference's dummy ``decoder_block*.bn2`` and its FiLM ``decoder_block*->beta2`` take no
part in the forward pass and are not built (3,281,600 parameters at full size): this model has 38,305,157
parameters at condition size 2048, the reference 41,586,757 ("41.59 M").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uss_jax.audio import stft as stft_lib
from uss_jax.nn.film import FiLM

# Floor of the reference's magnitude: sqrt(max(re^2 + im^2, 1e-10)) (uss/models/base.py wav_to_spectrogram_phase).
MAG_POWER_FLOOR = 1e-10
# Floor of the mask phasor's modulus before it is normalised (torchlibrosa magphase: clamp(|m|, 1e-10)).
MASK_MODULUS_FLOOR = 1e-10
LEAKY_SLOPE = 0.01  # F.leaky_relu_ default negative slope, used everywhere in the reference
NUM_MASK_COMPONENTS = 3  # magnitude, real, imaginary
OUTPUT_INITS = ("reference", "identity")
IDENTITY_PHASE_LOGIT = 1.0  # real-part mask logit of output_init='identity' (tanh(1) = 0.76 > 0: phase angle 0)

_CONV_AXES = (None, None, "conv_in", "conv_out")


def _batch_norm(num_features: int, *, momentum: float, epsilon: float, axis: int = -1, axis_name: str | None,
                dtype: Any, rngs: nnx.Rngs) -> nnx.BatchNorm:
  # PyTorch momentum m (running = (1 - m) running + m batch) is flax momentum 1 - m.
  # use_fast_variance=False: E[x^2] - E[x]^2 loses float32 digits on the spectrogram magnitudes bn0 sees.
  names = (axis_name,)
  return nnx.BatchNorm(
      num_features, axis=axis, momentum=1.0 - momentum, epsilon=epsilon, use_fast_variance=False, dtype=dtype,
      scale_metadata={"out_sharding": names}, bias_metadata={"out_sharding": names}, rngs=rngs)


def _conv(cin: int, cout: int, kernel: tuple[int, int], *, use_bias: bool, precision: Any, dtype: Any,
          rngs: nnx.Rngs) -> nnx.Module:
  # Reference init_layer: Xavier uniform kernel, zero bias; "same" padding (k // 2), stride 1.
  if tuple(kernel) == (1, 1):
    return PointwiseConv(cin, cout, use_bias=use_bias, precision=precision, dtype=dtype, rngs=rngs)
  pad = tuple((k // 2, k // 2) for k in kernel)
  return nnx.Conv(
      cin, cout, kernel, padding=pad, use_bias=use_bias, precision=precision, dtype=dtype,
      kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(), _CONV_AXES),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)), rngs=rngs)


def _matmul(x: jax.Array, w: jax.Array, precision: Any) -> jax.Array:
  """``(P, C) @ (C, O)`` as a plain 2-D ``dot_general``."""
  return jax.lax.dot_general(x, w, (((1,), (0,)), ((), ())), precision=precision)


class PointwiseConv(nnx.Module):
  """1x1 convolution (``nn.Conv2d(kernel_size=1)``) on channels-last maps, computed as one 2-D matmul.

  Same parameters as ``nnx.Conv(cin, cout, (1, 1))`` (``kernel`` ``(1, 1, in, out)``, ``bias`` ``(out,)``), so
  checkpoints convert identically. On the XLA CPU backend (jax 0.10.2, 2-core AMD EPYC) a reshape + ``dot_general``
  ran the full-resolution 64 -> 32 shortcut (224 x 1024 pixels) about 5x faster forward and 6x faster in the kernel
  gradient than the equivalent ``lax.conv_general_dilated``.

  Args:
    in_features, out_features: channels.
    use_bias: add a bias (zero-initialised).
    precision: ``jax.lax`` precision of the matmul.
    dtype: computation dtype (None = float32).
    rngs: initialisation RNG streams (Xavier uniform kernel, as the reference ``init_layer``).
  """

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True, precision: Any = None,
               dtype: Any = None, rngs: nnx.Rngs):
    self.in_features, self.out_features = int(in_features), int(out_features)
    self.precision, self.dtype = precision, dtype
    init = nnx.with_partitioning(nnx.initializers.xavier_uniform(), _CONV_AXES)
    self.kernel = nnx.Param(init(rngs.params(), (1, 1, self.in_features, self.out_features)))
    self.bias = (nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",))(
        rngs.params(), (self.out_features,))) if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``(..., in_features)`` -> ``(..., out_features)``."""
    kernel = self.kernel.get_value().reshape(self.in_features, self.out_features)
    if self.dtype is not None:
      x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    y = _matmul(x.reshape(-1, self.in_features), kernel, self.precision)
    if self.bias is not None:
      y = y + self.bias.get_value().astype(y.dtype)
    return y.reshape(x.shape[:-1] + (self.out_features,))


def leaky_relu(x: jax.Array) -> jax.Array:
  """``F.leaky_relu(x, 0.01)``."""
  return jax.nn.leaky_relu(x, LEAKY_SLOPE)


def avg_pool(x: jax.Array, pool_size: tuple[int, int]) -> jax.Array:
  """``F.avg_pool2d(x, kernel_size=pool_size)`` (stride = kernel, remainder dropped) on ``(batch, time, freq, C)``."""
  pt, pf = pool_size
  if (pt, pf) == (1, 1):
    return x
  b, t, f, c = x.shape
  t2, f2 = t // pt, f // pf
  x = x[:, :t2 * pt, :f2 * pf]
  return x.reshape(b, t2, pt, f2, pf, c).mean(axis=(2, 4))


class PatchConvTranspose(nnx.Module):
  """``nn.ConvTranspose2d(kernel_size=stride, stride=stride, padding=0, bias=False)``: every input pixel becomes one
  ``(st, sf)`` output patch, ``y[n, i*st + a, j*sf + b, o] = sum_c x[n, i, j, c] * kernel[a, b, c, o]``.

  With kernel = stride the patches do not overlap, so the layer is one 2-D matmul ``(pixels, in) @ (in, st*sf*out)``
  and a pixel shuffle (no dilated convolution: ``nnx.ConvTranspose`` was ~20x slower forward + backward on the
  CPU). ``kernel[a, b, c, o]`` is PyTorch's ``weight[c, o, a, b]`` transposed, not flipped.

  Args:
    in_features, out_features: channels.
    strides: ``(st, sf)`` upsampling factors (= kernel size).
    precision: ``jax.lax`` precision of the matmul.
    dtype: computation dtype (None = float32).
    rngs: initialisation RNG streams (Xavier uniform over the PyTorch fans, as the reference ``init_layer``).
  """

  def __init__(self, in_features: int, out_features: int, strides: tuple[int, int], *, precision: Any = None,
               dtype: Any = None, rngs: nnx.Rngs):
    self.in_features, self.out_features = int(in_features), int(out_features)
    self.strides = tuple(int(s) for s in strides)
    self.precision = precision
    self.dtype = dtype
    st, sf = self.strides
    # torch's xavier on weight (in, out, kh, kw) uses fans out*kh*kw and in*kh*kw; their mean is the same here.
    init = nnx.initializers.xavier_uniform()
    self.kernel = nnx.Param(
        nnx.with_partitioning(init, _CONV_AXES)(rngs.params(), (st, sf, self.in_features, self.out_features)))

  def __call__(self, x: jax.Array) -> jax.Array:
    """``(batch, time, freq, in_features)`` -> ``(batch, time * st, freq * sf, out_features)``."""
    st, sf = self.strides
    kernel = self.kernel.get_value()
    if self.dtype is not None:
      x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    b, t, f, _ = x.shape
    w = kernel.transpose(2, 0, 1, 3).reshape(self.in_features, st * sf * self.out_features)
    y = _matmul(x.reshape(-1, self.in_features), w, self.precision)
    y = y.reshape(b, t, f, st, sf, self.out_features).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, t * st, f * sf, self.out_features)


class ConvBlockRes(nnx.Module):
  """Pre-activation residual block with additive FiLM (reference ``ConvBlockRes``):

  ``h = conv1(lrelu(bn1(x) + beta1(c)))``, ``h = conv2(lrelu(bn2(h) + beta2(c)))``, ``y = shortcut(x) + h``, with
  3x3 convolutions without bias, LeakyReLU slope 0.01, and a 1x1 convolution with bias as shortcut when the channel
  count changes (identity otherwise).

  Args:
    in_channels, out_channels: channels.
    condition_size: FiLM condition length.
    bn_momentum: PyTorch-convention BatchNorm momentum (0.01 in the reference).
    bn_epsilon: BatchNorm epsilon (1e-5).
    precision, dtype: of the convolutions and FiLM generators.
    rngs: initialisation RNG streams.
  """

  def __init__(self, in_channels: int, out_channels: int, condition_size: int, *, bn_momentum: float = 0.01,
               bn_epsilon: float = 1e-5, precision: Any = None, dtype: Any = None, rngs: nnx.Rngs):
    bn = dict(momentum=bn_momentum, epsilon=bn_epsilon, axis_name="conv_out", dtype=dtype, rngs=rngs)
    film = dict(precision=precision, dtype=dtype, rngs=rngs)
    conv = dict(precision=precision, dtype=dtype, rngs=rngs)
    self.bn1 = _batch_norm(in_channels, **bn)
    self.film1 = FiLM(condition_size, in_channels, **film)
    self.conv1 = _conv(in_channels, out_channels, (3, 3), use_bias=False, **conv)
    self.bn2 = _batch_norm(out_channels, **bn)
    self.film2 = FiLM(condition_size, out_channels, **film)
    self.conv2 = _conv(out_channels, out_channels, (3, 3), use_bias=False, **conv)
    self.shortcut = (_conv(in_channels, out_channels, (1, 1), use_bias=True, **conv)
                     if in_channels != out_channels else None)

  def __call__(self, x: jax.Array, condition: jax.Array) -> jax.Array:
    """``(batch, time, freq, in_channels)``, condition ``(batch, condition_size)`` -> ``(..., out_channels)``."""
    h = self.conv1(leaky_relu(self.film1(self.bn1(x), condition)))
    h = self.conv2(leaky_relu(self.film2(self.bn2(h), condition)))
    skip = x if self.shortcut is None else self.shortcut(x)
    return skip + h


class EncoderBlockRes1B(nnx.Module):
  """``conv_block1`` (``ConvBlockRes``) then average pooling by ``pool_size``; returns ``(pooled, unpooled)``.

  Source: reference ``EncoderBlockRes1B`` (``downsample`` = ``pool_size``; (1, 1) for the centre block).
  """

  def __init__(self, in_channels: int, out_channels: int, condition_size: int, pool_size: tuple[int, int], *,
               bn_momentum: float = 0.01, bn_epsilon: float = 1e-5, precision: Any = None, dtype: Any = None,
               rngs: nnx.Rngs):
    self.pool_size = tuple(int(p) for p in pool_size)
    self.conv_block1 = ConvBlockRes(in_channels, out_channels, condition_size, bn_momentum=bn_momentum,
                                    bn_epsilon=bn_epsilon, precision=precision, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, condition: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(batch, T, F, in)`` -> ``((batch, T // pt, F // pf, out), (batch, T, F, out))``."""
    encoder = self.conv_block1(x, condition)
    return avg_pool(encoder, self.pool_size), encoder


class DecoderBlockRes1B(nnx.Module):
  """``conv1(lrelu(bn1(x) + beta1(c)))`` (transposed conv, kernel = stride, no bias) -> concat skip -> residual block.

  Source: reference ``DecoderBlockRes1B``: the upsampled map comes first in the channel concatenation, then the
  encoder skip; ``conv_block2`` is a ``ConvBlockRes(2 * out, out)``. The reference also builds a ``bn2`` and a FiLM
  ``beta2`` that its forward pass never uses; they are not built here.
  """

  def __init__(self, in_channels: int, out_channels: int, condition_size: int, upsample: tuple[int, int], *,
               bn_momentum: float = 0.01, bn_epsilon: float = 1e-5, precision: Any = None, dtype: Any = None,
               rngs: nnx.Rngs):
    self.upsample = tuple(int(u) for u in upsample)
    self.bn1 = _batch_norm(in_channels, momentum=bn_momentum, epsilon=bn_epsilon, axis_name="conv_out", dtype=dtype,
                           rngs=rngs)
    self.film1 = FiLM(condition_size, in_channels, precision=precision, dtype=dtype, rngs=rngs)
    self.conv1 = PatchConvTranspose(in_channels, out_channels, self.upsample, precision=precision, dtype=dtype,
                                    rngs=rngs)
    self.conv_block2 = ConvBlockRes(2 * out_channels, out_channels, condition_size, bn_momentum=bn_momentum,
                                    bn_epsilon=bn_epsilon, precision=precision, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, skip: jax.Array, condition: jax.Array) -> jax.Array:
    """``x`` ``(batch, T, F, in)``, ``skip`` ``(batch, T * ut, F * uf, out)`` -> ``(batch, T * ut, F * uf, out)``."""
    h = self.conv1(leaky_relu(self.film1(self.bn1(x), condition)))
    h = jnp.concatenate([h, skip.astype(h.dtype)], axis=-1)
    return self.conv_block2(h, condition)


class ResUNet30(nnx.Module):
  """Query-conditioned separation U-Net of bytedance/uss (``ResUNet30`` with its ``FiLM``), STFT / iSTFT inside.

  Forward (eval mode = ``model.eval()``; train mode uses batch statistics in every BatchNorm):
    1. STFT (``n_fft`` 2048, hop 320, periodic Hann, centred, reflect padding) of each input channel;
       ``mixture_mag = sqrt(max(re^2 + im^2, 1e-10))``, mixture phase ``(re, im) / mixture_mag``.
    2. ``bn0``: BatchNorm over the ``n_fft // 2 + 1`` frequency bins of the magnitude (no log).
    3. zero-pad time at the end to a multiple of ``2 ** (len(channels) - 1)`` (32), drop the top bin (1025 -> 1024).
    4. ``pre_conv`` (1x1, bias) -> ``encoder_block1..n`` (2x2 average pooling, the last 1x2) -> ``conv_block7a``
       (no pooling) -> ``decoder_block1..n`` (transposed-conv upsampling 1x2 then 2x2, concat with the matching
       encoder output) -> ``after_conv`` (1x1, bias) to ``3 * output_channels`` maps. Every BatchNorm inside the
       blocks is followed by an additive FiLM ``+ beta(condition)`` and a LeakyReLU(0.01).
    5. ``mask_logits``: the ``after_conv`` output with one zero bin appended (1024 -> 1025) and time cropped back.
       For output channel ``c``: ``m = mask_logits[..., 3c:3c+3]``, magnitude mask ``sigmoid(m0)``, phase phasor
       ``(tanh(m1), tanh(m2)) / max(|.|, 1e-10)``.
    6. ``|Y| = relu(mixture_mag * sigmoid(m0))``; ``angle(Y) = angle(X) + angle(mask)`` (as cos / sin products);
       iSTFT (windowed overlap-add) trimmed to the input length.

  Output dict:
    ``waveform``: ``(batch, samples)`` if ``output_channels == 1`` else ``(batch, output_channels, samples)``.
    with ``return_intermediates=True`` also (float32):
    ``mask_logits`` ``(batch, frames, bins, 3 * output_channels)``: channel ``3c + k`` is component ``k``
      (0 magnitude, 1 real, 2 imaginary) of output channel ``c``; the top bin is exactly 0.
    ``mixture_mag`` ``(batch, frames, bins, input_channels)``: the STFT magnitude of the mixture.

  Args:
    input_channels: audio channels of the mixture (1: mono).
    output_channels: audio channels separated (must equal ``input_channels`` unless ``input_channels == 1``).
    condition_size: query-embedding length (2048: a Cnn14 embedding; 527: AudioSet class probabilities).
    channels: widths of the encoder blocks (reference: 32, 64, 128, 256, 384, 384); ``pre_conv`` maps to
      ``channels[0]``, the centre block keeps ``channels[-1]``, decoder block ``j`` outputs ``channels[-j]``.
      Frequency bins ``n_fft // 2`` must be divisible by ``2 ** len(channels)``.
    n_fft, hop_length: STFT size and hop in samples (2048, 320 at 32 kHz: 10 ms frames).
    window: ``scipy.signal.get_window`` name of the analysis / synthesis window (``'hann'``, periodic).
    bn_momentum: PyTorch-convention BatchNorm momentum (0.01); flax momentum is ``1 - bn_momentum``.
    bn_epsilon: BatchNorm epsilon (1e-5 everywhere in the reference).
    output_init: initialisation of ``after_conv``. ``'reference'``: Xavier uniform kernel, zero bias (bytedance/uss
      ``init_layer``). ``'identity'``: zero kernel, bias ``(0, IDENTITY_PHASE_LOGIT, 0)`` per output channel, so the
      untrained model outputs exactly ``0.5 * mixture`` (magnitude mask sigmoid(0), phase mask angle 0). This is not
      the reference: with its initialisation the mask logits start with standard deviations of 2-4 (a narrow
      smoke-size U-Net on the demo corpus), i.e. a ~2 % magnitude mask with random phase rotations. That output is
      uncorrelated with the target, so L1 first pulls the magnitude mask to 0 (sigmoid saturates) and training
      stalls at the silent-output loss. The reference escapes this only over its 10k-step x0.001 warm-up.
      Converted checkpoints overwrite either initialisation.
    extra_features: width of per-frame features concatenated with the magnitude on the frequency axis (``unet``;
      0 = none, the reference). MAE-ResUNet passes its A-MAE features here.
    precision: ``jax.lax`` precision of the convolutions and matmuls (None = default; ``'highest'`` for float32 on
      GPU / TPU).
    dtype: computation dtype of the U-Net (e.g. ``jnp.bfloat16``; None = float32). The STFT, the mask and the iSTFT
      always run in float32; parameters stay float32.
    rngs: initialisation RNG streams (``params``).

  Raises:
    ValueError: fewer than two encoder blocks, incompatible channel counts, or bins not divisible by the
      frequency downsampling.
  """

  def __init__(self, input_channels: int = 1, output_channels: int = 1, condition_size: int = 2048, *,
               channels: Sequence[int] = (32, 64, 128, 256, 384, 384), n_fft: int = 2048, hop_length: int = 320,
               window: str = "hann", bn_momentum: float = 0.01, bn_epsilon: float = 1e-5,
               output_init: str = "reference", extra_features: int = 0, precision: Any = None, dtype: Any = None,
               rngs: nnx.Rngs):
    if output_init not in OUTPUT_INITS:
      raise ValueError(f"output_init must be one of {OUTPUT_INITS}, got {output_init!r}")
    channels = tuple(int(c) for c in channels)
    if len(channels) < 2:
      raise ValueError(f"channels must name at least two encoder blocks, got {channels}")
    if input_channels not in (1, output_channels):
      raise ValueError(f"input_channels ({input_channels}) must be 1 or equal output_channels ({output_channels})")
    n = len(channels)
    if (n_fft // 2) % (2 ** n):
      raise ValueError(f"n_fft // 2 = {n_fft // 2} bins are not divisible by the frequency downsampling 2**{n}")
    if extra_features < 0:
      raise ValueError(f"extra_features must be >= 0, got {extra_features}")
    # Extra per-frame features are zero-padded to a multiple of the frequency downsampling.
    self.extra_features = int(extra_features)
    self.extra_width = -(-int(extra_features) // 2 ** n) * 2 ** n
    self.input_channels, self.output_channels = int(input_channels), int(output_channels)
    self.condition_size = int(condition_size)
    self.channels = channels
    self.n_fft, self.hop_length, self.window = int(n_fft), int(hop_length), window
    self.time_downsample = 2 ** (n - 1)
    self.dtype = dtype
    # Encoder pooling: 2x2 for all blocks but the last, which halves frequency only; the decoder mirrors it.
    pools = [(2, 2)] * (n - 1) + [(1, 2)]
    block = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, precision=precision, dtype=dtype, rngs=rngs)

    # bn0 normalises the raw magnitudes (up to ~100): always float32.
    self.bn0 = _batch_norm(self.n_fft // 2 + 1, momentum=bn_momentum, epsilon=bn_epsilon, axis=2, axis_name=None,
                           dtype=None, rngs=rngs)
    self.pre_conv = _conv(self.input_channels, channels[0], (1, 1), use_bias=True, precision=precision, dtype=dtype,
                          rngs=rngs)
    cin = channels[0]
    for i, (cout, pool) in enumerate(zip(channels, pools), start=1):
      setattr(self, f"encoder_block{i}", EncoderBlockRes1B(cin, cout, self.condition_size, pool, **block))
      cin = cout
    self.conv_block7a = EncoderBlockRes1B(cin, cin, self.condition_size, (1, 1), **block)
    for j in range(1, n + 1):
      cout = channels[n - j]
      setattr(self, f"decoder_block{j}",
              DecoderBlockRes1B(cin, cout, self.condition_size, pools[n - j], **block))
      cin = cout
    self.after_conv = _conv(cin, self.output_channels * NUM_MASK_COMPONENTS, (1, 1), use_bias=True,
                            precision=precision, dtype=dtype, rngs=rngs)
    if output_init == "identity":
      kernel, bias = self.after_conv.kernel, self.after_conv.bias
      kernel.set_value(jnp.zeros_like(kernel.get_value()))
      phase = jnp.tile(jnp.array([0.0, IDENTITY_PHASE_LOGIT, 0.0], bias.get_value().dtype), self.output_channels)
      bias.set_value(phase)

  @property
  def num_blocks(self) -> int:
    """Number of encoder (and decoder) blocks."""
    return len(self.channels)

  def spectrogram(self, mixture: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Magnitude and phase of the mixture, channels-last.

    Args:
      mixture: ``(batch, samples)`` or ``(batch, input_channels, samples)``.

    Returns:
      ``(mag, cos, sin)``, each ``(batch, frames, bins, input_channels)`` float32, ``frames = 1 + samples // hop``.

    Raises:
      ValueError: a mixture whose channel count is not ``input_channels``.
    """
    x = jnp.asarray(mixture, jnp.float32)
    if x.ndim == 2:
      x = x[:, None, :]
    if x.ndim != 3 or x.shape[1] != self.input_channels:
      raise ValueError(f"mixture must be (batch, samples) or (batch, {self.input_channels}, samples), got {x.shape}")
    spec = stft_lib.stft(x, self.n_fft, self.hop_length, window=self.window, center=True, pad_mode="reflect")
    mag, cos, sin = stft_lib.magphase(spec, eps=MAG_POWER_FLOOR)  # (batch, channels, frames, bins)
    return tuple(jnp.moveaxis(v, 1, -1) for v in (mag, cos, sin))  # type: ignore[return-value]

  def unet(self, mag: jax.Array, condition: jax.Array, features: jax.Array | None = None) -> jax.Array:
    """Mask logits from the mixture magnitude (steps 2-5 of the forward pass).

    Args:
      mag: ``(batch, frames, bins, input_channels)`` STFT magnitude.
      condition: ``(batch, condition_size)``.
      features: ``(batch, frames, extra_features)`` per-frame features concatenated with the (normalised) magnitude
        on the frequency axis after step 3, zero-padded to ``extra_width`` (MAE-ResUNet, seed 000 Sec. III-B: A-MAE
        features beside the STFT); the decoder output is cropped back to the STFT bins before the mask. Required
        iff ``extra_features > 0``; shared by every input channel.

    Returns:
      ``(batch, frames, bins, 3 * output_channels)`` float32 mask logits (top bin 0).

    Raises:
      ValueError: features missing, unexpected or of the wrong shape.
    """
    frames, bins = mag.shape[1], mag.shape[2]
    x = self.bn0(mag)
    pad = -frames % self.time_downsample
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
    x = x[:, :, :bins - 1]
    if (features is None) != (self.extra_features == 0):
      raise ValueError(f"this ResUNet30 takes {self.extra_features} extra features per frame; got "
                       f"{'none' if features is None else tuple(features.shape)}")
    if features is not None:
      if features.shape != (mag.shape[0], frames, self.extra_features):
        raise ValueError(f"features must be (batch, {frames}, {self.extra_features}), got {tuple(features.shape)}")
      f = jnp.pad(features.astype(x.dtype), ((0, 0), (0, pad), (0, self.extra_width - self.extra_features)))
      x = jnp.concatenate([x, jnp.broadcast_to(f[..., None], f.shape + (x.shape[-1],))], axis=2)
    if self.dtype is not None:
      x, condition = x.astype(self.dtype), condition.astype(self.dtype)
    x = self.pre_conv(x)
    skips = []
    for i in range(1, self.num_blocks + 1):
      x, skip = getattr(self, f"encoder_block{i}")(x, condition)
      skips.append(skip)
    x, _ = self.conv_block7a(x, condition)
    for j in range(1, self.num_blocks + 1):
      x = getattr(self, f"decoder_block{j}")(x, skips[-j], condition)
    x = self.after_conv(x).astype(jnp.float32)[:, :, :bins - 1]
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 0)))
    return x[:, :frames]

  def apply_mask(self, mask_logits: jax.Array, mag: jax.Array, cos: jax.Array, sin: jax.Array,
                 length: int) -> jax.Array:
    """Decoupled magnitude / phase masking and iSTFT (reference ``feature_maps_to_wav``).

    Args:
      mask_logits: ``(batch, frames, bins, 3 * output_channels)``.
      mag, cos, sin: mixture magnitude and phase, ``(batch, frames, bins, input_channels)``.
      length: output length in samples.

    Returns:
      ``(batch, output_channels, length)`` float32.
    """
    b, t, f, _ = mask_logits.shape
    m = mask_logits.astype(jnp.float32).reshape(b, t, f, self.output_channels, NUM_MASK_COMPONENTS)
    mask_mag = jax.nn.sigmoid(m[..., 0])
    mask_real, mask_imag = jnp.tanh(m[..., 1]), jnp.tanh(m[..., 2])
    # real / max(|mask|, 1e-10) == real / sqrt(max(|mask|^2, 1e-20)); this form has a finite gradient at |mask| = 0.
    modulus = jnp.sqrt(jnp.maximum(jnp.square(mask_real) + jnp.square(mask_imag), MASK_MODULUS_FLOOR ** 2))
    mask_cos, mask_sin = mask_real / modulus, mask_imag / modulus
    out_cos = cos * mask_cos - sin * mask_sin
    out_sin = sin * mask_cos + cos * mask_sin
    out_mag = jax.nn.relu(mag * mask_mag)
    spec = stft_lib.polar_to_complex(out_mag, out_cos, out_sin)  # (batch, frames, bins, out_channels)
    spec = jnp.moveaxis(spec, -1, 1)
    return stft_lib.istft(spec, self.n_fft, self.hop_length, window=self.window, center=True, length=length)

  def __call__(self, mixture: jax.Array, condition: jax.Array, *, features: jax.Array | None = None,
               return_intermediates: bool = False, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """Separates the source described by ``condition`` from ``mixture``.

    Args:
      mixture: ``(batch, samples)`` (mono) or ``(batch, input_channels, samples)`` waveform.
      condition: ``(batch, condition_size)`` query embedding.
      features: ``(batch, frames, extra_features)`` extra input features (``unet``); only with ``extra_features``.
      return_intermediates: also return ``mask_logits`` and ``mixture_mag`` (see the class docstring).
      rngs: unused (the model has no dropout); accepted for a uniform model interface.

    Returns:
      dict with ``waveform`` and, if asked, the intermediates.

    Raises:
      ValueError: wrong mixture channel count or condition shape.
    """
    del rngs
    condition = jnp.asarray(condition)
    if condition.ndim != 2 or condition.shape[-1] != self.condition_size:
      raise ValueError(f"condition must be (batch, {self.condition_size}), got {condition.shape}")
    length = mixture.shape[-1]
    mag, cos, sin = self.spectrogram(mixture)
    mask_logits = self.unet(mag, condition, features)
    waveform = self.apply_mask(mask_logits, mag, cos, sin, length)
    if self.output_channels == 1:
      waveform = waveform[:, 0]
    out = {"waveform": waveform}
    if return_intermediates:
      out["mask_logits"] = mask_logits
      out["mixture_mag"] = mag
    return out


def count_params(model: nnx.Module) -> int:
  """Number of ``nnx.Param`` scalars of ``model`` (works on an abstract ``nnx.eval_shape`` model)."""
  return int(sum(np.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param))))
