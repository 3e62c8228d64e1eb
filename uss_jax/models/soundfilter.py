"""SoundFilter: a FiLM-conditioned waveform U-Net with an "enhanced" and a "suppressed" output, in Flax NNX.

Sources:
  * seed 003, Kilgour et al., "Text-Driven Separation of Arbitrary Sounds", Sec. 3.1 and Fig. 2: a symmetric
    encoder-decoder U-Net in the waveform domain, the decoder mirroring the encoder, skip connections between each
    encoder block and its mirrored decoder block, FiLM (Perez et al. 2018) in some encoder, decoder and bottleneck
    layers, GroupNorm after each Conv1D, ELU for every non-linearity; two outputs of the input's length, the
    "enhanced" (conditioned) sound and the "suppressed" rest.
  * its ref. [11], Gfeller, Roblek, Tagliasacchi, "One-shot conditional audio filtering of arbitrary sounds" (ICASSP
    2021): the generator is SEANet-style (Tagliasacchi et al., Interspeech 2020) and the conditioning encoder, trained
    jointly with it, is "of the same family" over the conditioning waveform, pooled over time to one embedding.
  No reference implementation is public. What is read from SEANet and its descendants (SoundStream, EnCodec
  ``seanet.py``) rather than from seed 003: encoder blocks = three residual units with dilations 1, 3, 9, then a
  strided Conv1D of kernel ``2 * stride`` that doubles the channels; strides (2, 2, 8, 8) from 32 base channels
  (64, 128, 256, 512; total stride 256); a kernel-7 input and output Conv1D. Choices of this file (the papers do not
  fix them, each is a constructor argument): the mixture divided by its RMS and the outputs multiplied by it; residual
  kernel 3; pre-activation ordering (ELU before each conv, GroupNorm
  after it); skip connections by addition; FiLM after the GroupNorm of every strided / transposed conv and of both
  bottleneck convs; GroupNorm with ``gcd(num_groups, channels)`` groups, eps 1e-5.

Layout: waveforms ``(batch, samples)``; feature maps channels-last ``(batch, time, channels)``. Conv kernels are
``(kernel, in, out)`` with logical names ``(None, 'conv_in', 'conv_out')``, channel vectors ``('conv_out',)``, FiLM
generators ``('embed', 'conv_out')``.

Forward of the generator (``SoundFilterUNet``), ``C = channels``, ``s_k`` = strides, ``c_k = C * 2**k``:
  [normalize_input: r = sqrt(mean(mixture^2) + 1e-8) per example, mixture <- mixture / r]
  x = GN(Conv_7(mixture))                                                  (B, T, C)
  encoder block k = 1..K:  skip_k = x;  x = RU_9(RU_3(RU_1(x)))
                           x = FiLM(GN(SConv_{2 s_k, s_k}(ELU(x))))        (B, T / prod(s_1..s_k), c_k)
  bottleneck:              x = FiLM(GN(Conv_7(ELU(x)))) twice              (same shape)
  decoder block k = K..1:  x = FiLM(GN(TConv_{2 s_k, s_k}(ELU(x)))) + skip_k
                           x = RU_9(RU_3(RU_1(x)))
  out = Conv_7(ELU(x)) (bias, no norm)                                     (B, T, 2) -> enhanced, suppressed
  [output_skip: out += 0.5 * mixture for both outputs, the output conv starting at zero]
  [normalize_input: out <- out * r]
with the residual unit ``RU_d(x) = x + GN(Conv_1(ELU(GN(Conv_{k, dilation d}(ELU(x))))))``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from uss_jax.losses import l2_normalize
from uss_jax.models.interface import SystemInterface
from uss_jax.nn.film import FiLM

CONV_AXES = (None, "conv_in", "conv_out")
GROUP_NORM_EPS = 1e-5  # torch.nn.GroupNorm's default (the papers give none)
INPUT_POWER_FLOOR = 1e-8  # added to the mixture's mean square before its RMS divides it (normalize_input)

# Named sizes (``build_soundfilter(size=...)``). 'paper': SEANet widths and strides of ref. [11]; the 64-d embedding is
# the width of the SoundWords space (seed 003 Sec. 3.3.2) that the paper's FiLM layers read, so a later SoundWords
# conditioning plugs into the same generator. 'small': the CPU smoke recipe. 'tiny': unit tests (one residual unit
# per block: XLA:CPU compiles the random initialisers one by one, ~0.15 s each).
SIZES: dict[str, dict[str, Any]] = {
    "paper": {"channels": 32, "strides": (2, 2, 8, 8), "embedding_dim": 64},
    "small": {"channels": 8, "strides": (2, 4, 5, 8), "embedding_dim": 32},
    "tiny": {"channels": 4, "strides": (2, 4), "embedding_dim": 8, "dilations": (1,)},
}


# ---------------------------------------------------------------------------------------------------------- layers


def _conv_init(bias: bool, zero: bool = False):
  init = nnx.initializers.zeros_init() if zero else nnx.initializers.lecun_normal()
  kernel = nnx.with_partitioning(init, CONV_AXES)
  bias_init = nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)) if bias else None
  return kernel, bias_init


def conv1d(in_features: int, out_features: int, kernel: int, *, dilation: int = 1, stride: int = 1,
           use_bias: bool = False, zero_init: bool = False, dtype: Any = None, rngs: nnx.Rngs) -> nnx.Conv:
  """A 1-D ``nnx.Conv`` on ``(batch, time, channels)``.

  Stride 1: "same" length, zero padding ``(d (k - 1)) // 2`` left and the rest right. Stride ``s``: zero padding
  ``(s // 2, s - s // 2)``, so a kernel of ``2 s`` maps ``T`` samples (a multiple of ``s``) to ``T / s`` frames,
  ``y[t] = sum_{j, c} x[t s + j - s // 2, c] w[j, c, o]`` (x = 0 outside ``[0, T)``).
  Kernel ``(kernel, in, out)``, LeCun-normal (zeros with ``zero_init``); bias (zeros) only with ``use_bias``.
  """
  if stride == 1:
    total = dilation * (kernel - 1)
    pad = (total // 2, total - total // 2)
  else:
    pad = (stride // 2, stride - stride // 2)
  k_init, b_init = _conv_init(use_bias, zero_init)
  return nnx.Conv(in_features, out_features, (kernel,), strides=(stride,), padding=(pad,),
                  kernel_dilation=(dilation,), use_bias=use_bias, dtype=dtype, kernel_init=k_init,
                  **({"bias_init": b_init} if use_bias else {}), rngs=rngs)


class ConvTranspose1d(nnx.Module):
  """The transposed (adjoint) of ``conv1d(kernel=2 s, stride=s)``: ``(B, T, in) -> (B, T s, out)``.

  ``y_full[t s + j] += sum_c x[t, c] w[j, c, o]`` for ``t < T``, ``j < 2 s`` (length ``(T + 1) s``, PyTorch
  ``ConvTranspose1d(kernel_size=2 s, stride=s)`` with ``weight[c, o, j] = w[j, c, o]``), then
  ``y = y_full[s // 2 : s // 2 + T s]`` (the strided conv's left padding). With the same ``w`` this is exactly the
  adjoint of the strided conv, so decoder block k mirrors encoder block k. Computed as one matmul
  ``(B T, in) @ (in, 2 s out)`` and an overlap-add of the two halves of each output patch (no dilated convolution).

  Args:
    in_features, out_features: channels.
    stride: upsampling factor ``s`` (kernel ``2 s``).
    use_bias: add a bias (zeros) after the crop.
    dtype: computation dtype (None = float32).
    rngs: initialisation RNG streams (LeCun normal over the ``in`` fan).
  """

  def __init__(self, in_features: int, out_features: int, stride: int, *, use_bias: bool = False, dtype: Any = None,
               rngs: nnx.Rngs):
    self.in_features, self.out_features, self.stride = int(in_features), int(out_features), int(stride)
    self.dtype = dtype
    k_init, b_init = _conv_init(use_bias)
    self.kernel = nnx.Param(k_init(rngs.params(), (2 * self.stride, self.in_features, self.out_features)))
    self.bias = nnx.Param(b_init(rngs.params(), (self.out_features,))) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    """``(batch, T, in_features)`` -> ``(batch, T * stride, out_features)``."""
    s, cout = self.stride, self.out_features
    kernel = self.kernel.get_value()
    if self.dtype is not None:
      x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    b, t, cin = x.shape
    w = kernel.transpose(1, 0, 2).reshape(cin, 2 * s * cout)  # [c, j * out + o]
    patches = jnp.dot(x.reshape(b * t, cin), w).reshape(b, t, 2, s, cout)
    zero = jnp.zeros((b, 1, s, cout), patches.dtype)
    # frame f of y_full = first half of patch f + second half of patch f - 1
    full = (jnp.concatenate([patches[:, :, 0], zero], axis=1) + jnp.concatenate([zero, patches[:, :, 1]], axis=1))
    full = full.reshape(b, (t + 1) * s, cout)
    y = full[:, s // 2:s // 2 + t * s]
    if self.bias is not None:
      y = y + self.bias.get_value().astype(y.dtype)
    return y


def group_norm(channels: int, num_groups: int, *, dtype: Any = None, rngs: nnx.Rngs) -> nnx.GroupNorm:
  """``nnx.GroupNorm`` over (time, channels of a group) per example: ``gcd(num_groups, channels)`` groups, eps 1e-5,
  scale 1 / bias 0, logical names ``('conv_out',)``."""
  names = ("conv_out",)
  return nnx.GroupNorm(channels, num_groups=math.gcd(int(num_groups), int(channels)), epsilon=GROUP_NORM_EPS,
                       use_fast_variance=False, dtype=dtype, scale_metadata={"out_sharding": names},
                       bias_metadata={"out_sharding": names}, rngs=rngs)


def _film(embedding_dim: int, channels: int, dtype: Any, rngs: nnx.Rngs) -> FiLM:
  # Affine FiLM y = (1 + gamma(e)) x + beta(e); gamma starts at zero, so the untrained generator is conditioned by
  # beta only (uss_jax.nn.film.FiLM).
  return FiLM(embedding_dim, channels, use_gamma=True, gamma_offset=1.0, dtype=dtype, rngs=rngs)


class ResidualUnit(nnx.Module):
  """SEANet residual unit with GroupNorm: ``x + GN2(Conv_1(ELU(GN1(Conv_{k, d}(ELU(x))))))`` on ``(B, T, C)``.

  Args:
    channels: ``C`` (input = output).
    dilation: dilation ``d`` of the first conv (1, 3, 9 in a block).
    kernel: its kernel size ``k`` (3).
    num_groups: GroupNorm groups (``gcd(num_groups, C)`` are used).
    dtype: computation dtype.
    rngs: initialisation RNG streams.
  """

  def __init__(self, channels: int, dilation: int, *, kernel: int = 3, num_groups: int = 16, dtype: Any = None,
               rngs: nnx.Rngs):
    self.conv1 = conv1d(channels, channels, kernel, dilation=dilation, dtype=dtype, rngs=rngs)
    self.norm1 = group_norm(channels, num_groups, dtype=dtype, rngs=rngs)
    self.conv2 = conv1d(channels, channels, 1, dtype=dtype, rngs=rngs)
    self.norm2 = group_norm(channels, num_groups, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``(batch, time, C)`` -> same shape."""
    h = self.norm1(self.conv1(jax.nn.elu(x)))
    return x + self.norm2(self.conv2(jax.nn.elu(h)))


class EncoderBlock(nnx.Module):
  """Three residual units (dilations ``dilations``) at ``in_features``, then ``GN(SConv_{2 s, s}(ELU(x)))`` to
  ``out_features``, optionally FiLM-modulated: ``(B, T, in) -> (B, T / s, out)``.

  Args:
    in_features, out_features: channels before / after the strided conv.
    stride: ``s``.
    embedding_dim: FiLM condition size, or None for no FiLM (the conditioning encoder).
    dilations, kernel, num_groups: residual units (``ResidualUnit``).
    dtype, rngs: as usual.
  """

  def __init__(self, in_features: int, out_features: int, stride: int, *, embedding_dim: int | None,
               dilations: Sequence[int] = (1, 3, 9), kernel: int = 3, num_groups: int = 16, dtype: Any = None,
               rngs: nnx.Rngs):
    self.units = nnx.List([ResidualUnit(in_features, d, kernel=kernel, num_groups=num_groups, dtype=dtype, rngs=rngs)
                           for d in dilations])
    self.down = conv1d(in_features, out_features, 2 * stride, stride=stride, dtype=dtype, rngs=rngs)
    self.norm = group_norm(out_features, num_groups, dtype=dtype, rngs=rngs)
    self.film = _film(embedding_dim, out_features, dtype, rngs) if embedding_dim else None

  def __call__(self, x: jax.Array, embedding: jax.Array | None = None) -> jax.Array:
    """``x`` ``(batch, T, in)``, ``embedding`` ``(batch, D)`` or None (FiLM skipped) -> ``(batch, T / s, out)``."""
    for unit in self.units:
      x = unit(x)
    x = self.norm(self.down(jax.nn.elu(x)))
    if self.film is not None and embedding is not None:
      x = self.film(x, embedding)
    return x


class DecoderBlock(nnx.Module):
  """Mirror of ``EncoderBlock``: ``FiLM(GN(TConv_{2 s, s}(ELU(x)))) + skip``, then three residual units.
  ``(B, T, in) -> (B, T s, out)``.

  Args:
    in_features, out_features: channels before / after the transposed conv (= the encoder block's out / in).
    stride, embedding_dim, dilations, kernel, num_groups, dtype, rngs: as ``EncoderBlock``.
  """

  def __init__(self, in_features: int, out_features: int, stride: int, *, embedding_dim: int | None,
               dilations: Sequence[int] = (1, 3, 9), kernel: int = 3, num_groups: int = 16, dtype: Any = None,
               rngs: nnx.Rngs):
    self.up = ConvTranspose1d(in_features, out_features, stride, dtype=dtype, rngs=rngs)
    self.norm = group_norm(out_features, num_groups, dtype=dtype, rngs=rngs)
    self.film = _film(embedding_dim, out_features, dtype, rngs) if embedding_dim else None
    self.units = nnx.List([ResidualUnit(out_features, d, kernel=kernel, num_groups=num_groups, dtype=dtype,
                                        rngs=rngs) for d in dilations])

  def __call__(self, x: jax.Array, skip: jax.Array, embedding: jax.Array | None = None) -> jax.Array:
    """``x`` ``(batch, T, in)``, ``skip`` ``(batch, T s, out)`` (the mirrored encoder block's input) -> ``(batch, T s,
    out)``."""
    x = self.norm(self.up(jax.nn.elu(x)))
    if self.film is not None and embedding is not None:
      x = self.film(x, embedding)
    x = x + skip
    for unit in self.units:
      x = unit(x)
    return x


def _check_sizes(channels: int, strides: Sequence[int], embedding_dim: int) -> tuple[int, ...]:
  strides = tuple(int(s) for s in strides)
  if channels < 1 or embedding_dim < 1 or not strides or min(strides) < 1:
    raise ValueError(f"SoundFilter sizes: channels={channels}, strides={strides}, embedding_dim={embedding_dim} "
                     "(need positive values and at least one stride)")
  return strides


# ---------------------------------------------------------------------------------------------------------- networks


class SoundFilterUNet(nnx.Module):
  """The conditional generator (module docstring): mixture ``(B, T)`` + embedding ``(B, D)`` -> two waveforms.

  Args:
    channels: base channels ``C`` (32 in SEANet); encoder block k has ``C 2**k`` output channels.
    strides: downsampling factor of each encoder block ((2, 2, 8, 8)); ``T`` must be a multiple of their product.
    embedding_dim: ``D``, the conditioning embedding size read by every FiLM layer.
    dilations: dilations of the residual units of a block ((1, 3, 9)).
    residual_kernel: kernel of the dilated residual convs (3).
    io_kernel: kernel of the input / output convs (7).
    bottleneck_kernel: kernel of the two bottleneck convs (7).
    num_groups: GroupNorm groups (``gcd(num_groups, channels)`` per layer).
    normalize_input: divide the mixture by its RMS (per example, power floor ``INPUT_POWER_FLOOR``) and multiply
      both outputs by it (as Demucs), which makes the generator scale-equivariant. A GroupNorm right after the first
      conv removes the input level, so without this the outputs could not follow the mixture's level, which the
      consistency loss asks for. Not stated in the papers; on by default.
    output_skip: add ``0.5 * mixture`` to both outputs and start the output conv at zero, so the untrained model
      returns half the mixture twice (SI-SDRi 0 dB, consistent) and learns a correction. Not in the papers (which
      describe no such path): off by default, on in the small CPU recipe, whose few hundred steps otherwise end
      below the trivial estimate.
    dtype: computation dtype (None = float32; parameters are float32).
    rngs: initialisation RNG streams.
  """

  def __init__(self, *, channels: int = 32, strides: Sequence[int] = (2, 2, 8, 8), embedding_dim: int = 64,
               dilations: Sequence[int] = (1, 3, 9), residual_kernel: int = 3, io_kernel: int = 7,
               bottleneck_kernel: int = 7, num_groups: int = 16, normalize_input: bool = True,
               output_skip: bool = False, dtype: Any = None, rngs: nnx.Rngs):
    self.strides = _check_sizes(channels, strides, embedding_dim)
    self.channels, self.embedding_dim = int(channels), int(embedding_dim)
    self.total_stride = math.prod(self.strides)
    widths = [self.channels * 2**k for k in range(len(self.strides) + 1)]
    common = dict(embedding_dim=self.embedding_dim, dilations=tuple(dilations), kernel=residual_kernel,
                  num_groups=num_groups, dtype=dtype, rngs=rngs)
    self.input_conv = conv1d(1, widths[0], io_kernel, dtype=dtype, rngs=rngs)
    self.input_norm = group_norm(widths[0], num_groups, dtype=dtype, rngs=rngs)
    self.encoder = nnx.List([EncoderBlock(widths[k], widths[k + 1], s, **common)
                             for k, s in enumerate(self.strides)])
    top = widths[-1]
    self.bottleneck_convs = nnx.List([conv1d(top, top, bottleneck_kernel, dtype=dtype, rngs=rngs) for _ in range(2)])
    self.bottleneck_norms = nnx.List([group_norm(top, num_groups, dtype=dtype, rngs=rngs) for _ in range(2)])
    self.bottleneck_films = nnx.List([_film(self.embedding_dim, top, dtype, rngs) for _ in range(2)])
    # decoder[i] mirrors encoder[K - 1 - i]
    self.decoder = nnx.List([DecoderBlock(widths[k + 1], widths[k], s, **common)
                             for k, s in reversed(list(enumerate(self.strides)))])
    self.output_skip = bool(output_skip)
    self.normalize_input = bool(normalize_input)
    self.output_conv = conv1d(widths[0], 2, io_kernel, use_bias=True, zero_init=self.output_skip, dtype=dtype,
                              rngs=rngs)

  def __call__(self, mixture: jax.Array, embedding: jax.Array | None) -> dict[str, jax.Array]:
    """Separates ``mixture`` ``(batch, samples)`` for ``embedding`` ``(batch, embedding_dim)``.

    ``embedding=None`` runs the unconditioned path (every FiLM skipped), which equals FiLM with gamma = 1, beta = 0.

    Returns:
      ``{'enhanced': (batch, samples), 'suppressed': (batch, samples)}`` float32.

    Raises:
      ValueError: ``samples`` is not a multiple of ``total_stride`` (no padding is done: crop or pad the input), or
        an embedding of the wrong shape.
    """
    if mixture.ndim != 2:
      raise ValueError(f"mixture must be (batch, samples), got shape {mixture.shape}")
    if mixture.shape[-1] % self.total_stride:
      raise ValueError(f"SoundFilter input length {mixture.shape[-1]} samples is not a multiple of the total stride "
                       f"{self.total_stride} (= prod{self.strides}); crop or pad the waveform first")
    if embedding is not None and embedding.shape != (mixture.shape[0], self.embedding_dim):
      raise ValueError(f"embedding must be (batch, {self.embedding_dim}) = ({mixture.shape[0]}, "
                       f"{self.embedding_dim}), got {embedding.shape}")
    mixture = mixture.astype(jnp.float32)
    rms = (jnp.sqrt(jnp.mean(jnp.square(mixture), axis=-1, keepdims=True) + INPUT_POWER_FLOOR)
           if self.normalize_input else jnp.ones_like(mixture[:, :1]))
    mixture = mixture / rms
    x = self.input_norm(self.input_conv(mixture[..., None]))
    skips = []
    for block in self.encoder:
      skips.append(x)
      x = block(x, embedding)
    for conv, norm, film in zip(self.bottleneck_convs, self.bottleneck_norms, self.bottleneck_films):
      x = norm(conv(jax.nn.elu(x)))
      if embedding is not None:
        x = film(x, embedding)
    for block, skip in zip(self.decoder, reversed(skips)):
      x = block(x, skip, embedding)
    out = self.output_conv(jax.nn.elu(x)).astype(jnp.float32)
    if self.output_skip:
      out = out + 0.5 * mixture[..., None]
    out = out * rms[..., None]
    return {"enhanced": out[..., 0], "suppressed": out[..., 1]}


class ConditioningEncoder(nnx.Module):
  """Audio conditioning encoder of ref. [11], trained jointly with the generator: the generator's encoder family
  without FiLM, ``Conv_3(ELU(x))`` to ``embedding_dim`` channels, mean over time.

  ``(batch, samples)`` -> ``(batch, embedding_dim)``; any length of at least ``total_stride`` samples (the strided
  convs drop a remainder).

  Args:
    channels, strides, embedding_dim, dilations, residual_kernel, io_kernel, num_groups, dtype, rngs: as
      ``SoundFilterUNet``.
  """

  def __init__(self, *, channels: int = 32, strides: Sequence[int] = (2, 2, 8, 8), embedding_dim: int = 64,
               dilations: Sequence[int] = (1, 3, 9), residual_kernel: int = 3, io_kernel: int = 7,
               num_groups: int = 16, dtype: Any = None, rngs: nnx.Rngs):
    self.strides = _check_sizes(channels, strides, embedding_dim)
    self.embedding_dim = int(embedding_dim)
    widths = [int(channels) * 2**k for k in range(len(self.strides) + 1)]
    self.input_conv = conv1d(1, widths[0], io_kernel, dtype=dtype, rngs=rngs)
    self.input_norm = group_norm(widths[0], num_groups, dtype=dtype, rngs=rngs)
    self.blocks = nnx.List([
        EncoderBlock(widths[k], widths[k + 1], s, embedding_dim=None, dilations=tuple(dilations),
                     kernel=residual_kernel, num_groups=num_groups, dtype=dtype, rngs=rngs)
        for k, s in enumerate(self.strides)])
    self.projection = conv1d(widths[-1], self.embedding_dim, 3, use_bias=True, dtype=dtype, rngs=rngs)

  def __call__(self, audio: jax.Array) -> jax.Array:
    """``audio`` ``(batch, samples)`` -> embedding ``(batch, embedding_dim)`` float32.

    Raises:
      ValueError: not 2-D, or shorter than the total stride.
    """
    if audio.ndim != 2 or audio.shape[-1] < math.prod(self.strides):
      raise ValueError(f"conditioning audio must be (batch, samples >= {math.prod(self.strides)}), got {audio.shape}")
    x = self.input_norm(self.input_conv(audio[..., None]))
    for block in self.blocks:
      x = block(x)
    return jnp.mean(self.projection(jax.nn.elu(x)).astype(jnp.float32), axis=1)


class SoundFilter(nnx.Module):
  """Generator + a conditioning encoder trained jointly with it (ref. [11], ``config.condition.mode='audio'``).

  Args:
    generator: the ``SoundFilterUNet``.
    condition_encoder: any module mapping conditioning audio ``(batch, samples)`` to ``(batch, D)``
      (``ConditioningEncoder``); its output size must equal ``generator.embedding_dim``.
    info: the system interface (``build_soundfilter_system``); None for a bare training model.
  """

  def __init__(self, generator: SoundFilterUNet, condition_encoder: nnx.Module,
               info: SystemInterface | None = None):
    self.generator = generator
    self.condition_encoder = condition_encoder
    self.info = info

  def embed(self, condition: jax.Array) -> jax.Array:
    """Conditioning embedding ``(batch, D)`` of conditioning audio ``(batch, samples)``."""
    return self.condition_encoder(condition)

  def separate(self, mixture: jax.Array, embedding: jax.Array | None) -> dict[str, jax.Array]:
    """``generator(mixture, embedding)``: ``{'enhanced', 'suppressed'}``, each ``(batch, samples)``."""
    return self.generator(mixture, embedding)

  def __call__(self, mixture: jax.Array, condition: jax.Array) -> dict[str, jax.Array]:
    """Separates ``mixture`` ``(batch, samples)`` for conditioning audio ``condition`` ``(batch, samples')``.

    Returns:
      ``{'enhanced', 'suppressed'}`` ``(batch, samples)`` and ``'embedding'`` ``(batch, D)``.
    """
    embedding = self.embed(condition)
    return {**self.separate(mixture, embedding), "embedding": embedding}

  # ---- the system interface (uss_jax.models.interface) ----

  def interface(self) -> SystemInterface:
    """The ``SystemInterface`` given at construction.

    Raises:
      ValueError: built without one (a bare training model).
    """
    if self.info is None:
      raise ValueError("this SoundFilter was built without a system interface (use build_soundfilter_system)")
    return self.info

  def embed_audio(self, audio: jax.Array) -> jax.Array:
    """Audio-query condition ``(batch, D)`` of ``(batch, samples)`` at the system rate (= ``embed``)."""
    return self.embed(audio)


class SoundWordsFilter(nnx.Module):
  """SoundFilter conditioned on a frozen SoundWords co-embedding (seed 003 Sec. 3.1, Fig. 1): text or audio queries.

  The condition is the unit-norm SoundWords embedding ``e`` (``D`` = the SoundWords width, 64): of a sentence
  (``embed_text``, the text tower) or of a waveform (``embed_audio``, the audio tower; the mean of per-window
  embeddings when inference averages several query segments). ``separate`` L2-normalises whatever condition it gets
  (``losses.l2_normalize``: the SoundWords space is a space of directions, its similarities are cosines), so a
  mean of unit vectors and a unit vector of the same direction give the same separation. The generator's FiLM layers
  then read ``condition_scale * e``: with ``condition_scale = sqrt(D)`` the condition has unit mean square per
  component, the input scale their initialisers assume (Xavier / zeros, ``uss_jax.nn.film``); a unit vector (scale
  1) starts every FiLM shift ``sqrt(D)`` times (8x) weaker than that.

  Args:
    generator: the ``SoundFilterUNet`` (``embedding_dim`` must equal ``soundwords.embedding_dim``).
    soundwords: the ``uss_jax.models.soundwords.SoundWords`` model; its weights come from a SoundWords run and stay
      frozen (the task trains only ``generator``); run in eval mode (BatchNorm statistics, no dropout).
    info: the system interface (``build_soundfilter_system``).
    condition_scale: the factor on the unit-norm condition before the FiLM layers (1.0; the 'cpu' recipe
      uses sqrt(D) = 8).

  Raises:
    ValueError: the generator's FiLM width differs from the SoundWords width.
  """

  def __init__(self, generator: SoundFilterUNet, soundwords: nnx.Module, info: SystemInterface | None = None,
               condition_scale: float = 1.0):
    if generator.embedding_dim != soundwords.embedding_dim:
      raise ValueError(f"SoundFilter FiLM width {generator.embedding_dim} differs from the SoundWords embedding width "
                       f"{soundwords.embedding_dim} (config.model.embedding_dim must equal the SoundWords run's)")
    self.generator = generator
    self.soundwords = soundwords
    self.info = info
    self.condition_scale = float(condition_scale)

  def embed_audio(self, audio: jax.Array) -> jax.Array:
    """Unit-norm SoundWords audio embedding ``(batch, D)`` of ``(batch, samples)`` at 16 kHz (gradient stopped)."""
    return jax.lax.stop_gradient(l2_normalize(self.soundwords.embed_audio(audio).astype(jnp.float32)))

  def embed_text(self, token_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Unit-norm SoundWords text embedding ``(batch, D)`` of token ids / mask ``(batch, tokens)`` int32 (the run's
    tokenizer, ``text_tokenizer``; gradient stopped)."""
    return jax.lax.stop_gradient(l2_normalize(self.soundwords.embed_text(token_ids, attention_mask).astype(
        jnp.float32)))

  def separate(self, mixture: jax.Array, condition: jax.Array) -> dict[str, jax.Array]:
    """``{'enhanced', 'suppressed'}`` ``(batch, samples)`` of ``mixture`` ``(batch, samples)`` for a SoundWords
    condition ``(batch, D)`` (L2-normalised here, then times ``condition_scale``)."""
    return self.generator(mixture, self.condition_scale * l2_normalize(condition.astype(jnp.float32)))

  def interface(self) -> SystemInterface:
    """The ``SystemInterface`` given at construction.

    Raises:
      ValueError: built without one.
    """
    if self.info is None:
      raise ValueError("this SoundFilter was built without a system interface (use build_soundfilter_system)")
    return self.info


def build_soundfilter(size: str = "paper", *, overrides: Mapping[str, Any] | None = None, dtype: Any = None,
                      rngs: nnx.Rngs) -> SoundFilter:
  """``SoundFilter(SoundFilterUNet, ConditioningEncoder)`` of a named size (``SIZES``) with keyword overrides
  (``channels``, ``strides``, ``embedding_dim``, ``dilations``, ``residual_kernel``, ``io_kernel``,
  ``bottleneck_kernel``, ``num_groups``, ``normalize_input``, ``output_skip``); the encoder uses the same sizes (not
  the generator-only ``bottleneck_kernel`` / ``normalize_input`` / ``output_skip``).

  Raises:
    ValueError: an unknown size or override.
  """
  if size not in SIZES:
    raise ValueError(f"SoundFilter size {size!r} unknown; expected one of {sorted(SIZES)}")
  options = {**SIZES[size], **{k: v for k, v in dict(overrides or {}).items() if v is not None}}
  known = {"channels", "strides", "embedding_dim", "dilations", "residual_kernel", "io_kernel", "bottleneck_kernel",
           "num_groups", "normalize_input", "output_skip"}
  unknown = set(options) - known
  if unknown:
    raise ValueError(f"SoundFilter: unknown model options {sorted(unknown)}; expected a subset of {sorted(known)}")
  options["strides"] = tuple(options["strides"])
  generator = SoundFilterUNet(**options, dtype=dtype, rngs=rngs)
  encoder_options = {k: v for k, v in options.items()
                     if k not in ("bottleneck_kernel", "normalize_input", "output_skip")}
  return SoundFilter(generator, ConditioningEncoder(**encoder_options, dtype=dtype, rngs=rngs))


# ---------------------------------------------------------------------------------------------- the registered system

MODEL_OPTIONS = ("channels", "strides", "embedding_dim", "dilations", "residual_kernel", "io_kernel",
                 "bottleneck_kernel", "num_groups", "normalize_input", "output_skip")


def model_options(config) -> dict[str, Any]:
  """``config.model`` as ``build_soundfilter`` overrides (the fields of ``MODEL_OPTIONS`` present in it)."""
  m = config.model
  return {k: (tuple(m[k]) if k in ("strides", "dilations") else m[k]) for k in MODEL_OPTIONS if k in m}


def condition_mode(config) -> str:
  """``config.condition.mode``: ``'soundwords'`` (frozen SoundWords, text or audio) or ``'audio'`` (jointly trained
  encoder); ``'audio'`` when the config has no ``condition``."""
  condition = config.get("condition", None) or {}
  return str(condition.get("mode", "audio") or "audio")


def build_soundfilter_system(config, context: Mapping[str, Any], rngs: nnx.Rngs) -> nnx.Module:
  """The registry builder of ``'soundfilter'`` (``uss_jax.models.registry``).

  ``config.condition.mode == 'soundwords'``: ``SoundWordsFilter`` = the generator of ``config.model`` + a SoundWords
  model of ``context['soundwords']`` (the architecture spec of the SoundWords run; its values come from the run or
  the checkpoint), query kinds ``('audio', 'text')``, condition scale ``config.condition.scale`` (1.0 if absent). ``'audio'``: ``SoundFilter`` with the jointly trained
  ``ConditioningEncoder``, query kind ``('audio',)``. Both: outputs ``('enhanced', 'suppressed')``, segment = query
  length = ``config.data.crop_seconds``, condition space ``context['condition_space']`` (the SoundWords weights'
  digest; empty for mode 'audio', whose encoder belongs to the run alone).

  Args:
    config: the SoundFilter run's config (``model``, ``data.sample_rate`` / ``crop_seconds``, ``condition``).
    context: ``soundwords`` (spec), ``condition_space`` (mode 'soundwords'); may be empty in mode 'audio'.
    rngs: initialisation RNG streams (the generator draws first).

  Raises:
    ValueError: mode 'soundwords' without ``context['soundwords']``, unknown mode, size or options.
  """
  mode = condition_mode(config)
  dtype = jnp.dtype(config.get("compute_dtype", "float32"))
  options = model_options(config)
  size = config.model.get("size", "paper")
  sr = int(config.data.sample_rate)
  segment = int(round(float(config.data.crop_seconds) * sr))
  common = dict(name="soundfilter", sample_rate=sr, segment_samples=segment, outputs=("enhanced", "suppressed"),
                query_samples=segment, condition_space=str(context.get("condition_space", "")))
  if mode == "audio":
    model = build_soundfilter(size, overrides=options, dtype=dtype, rngs=rngs)
    model.info = SystemInterface(condition_size=model.generator.embedding_dim, query_kinds=("audio",), **common)
    return model
  if mode != "soundwords":
    raise ValueError(f"config.condition.mode: unknown conditioning mode {mode!r}; expected 'soundwords' or 'audio'")
  if not context.get("soundwords"):
    raise ValueError("config.condition.mode='soundwords' needs the SoundWords architecture in the run context "
                     "(set config.condition.soundwords_workdir to a configs/soundwords.py run), or use "
                     "config.condition.mode='audio'")
  from uss_jax.models import soundwords as soundwords_lib  # pylint: disable=import-outside-toplevel

  if size not in SIZES:
    raise ValueError(f"SoundFilter size {size!r} unknown; expected one of {sorted(SIZES)}")
  gen_options = {**SIZES[size], **{k: v for k, v in options.items() if v is not None}}
  gen_options["strides"] = tuple(gen_options["strides"])
  generator = SoundFilterUNet(**gen_options, dtype=dtype, rngs=rngs)
  words = soundwords_lib.build_soundwords(context["soundwords"], dtype=dtype, rngs=rngs)
  info = SystemInterface(condition_size=int(words.embedding_dim), query_kinds=("audio", "text"), **common)
  scale = float((config.get("condition", None) or {}).get("scale", 1.0) or 1.0)
  return SoundWordsFilter(generator, words, info, condition_scale=scale)


def text_tokenizer(config, context: Mapping[str, Any]):
  """The text tokenizer of a ``'soundwords'`` SoundFilter run (``registry.text_tokenizer``): the SoundWords run's
  ``tokenizers`` JSON at its ``max_tokens`` (``uss_jax.text.TextTokenizer``: ``list[str] -> (ids, mask)`` int32).

  Raises:
    ValueError: a mode-'audio' run (no text tower).
  """
  if condition_mode(config) != "soundwords" or "tokenizer" not in context:
    raise ValueError("this SoundFilter run conditions on audio only (config.condition.mode='audio'): no text queries")
  from uss_jax import text as text_lib  # pylint: disable=import-outside-toplevel

  return text_lib.TextTokenizer(context["tokenizer"], int(context["max_tokens"]))
