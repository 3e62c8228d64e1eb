"""ST-SED-SEP: the ZS-ASP ResUNet separator conditioned on an HTS-AT query embedding (the CaRE-SEP baseline).

Sources: Chen et al., "Zero-shot Audio Source Separation through Query-based Learning from Weakly-labeled Data"
(AAAI 2022; seed 001's ref. [4], "2048-d ST-SED-SEP"), reference RetroCirce/Zero_Shot_Audio_Source_Separation
``models/asp_model.py`` (``ConvBlock``, ``EncoderBlock``, ``DecoderBlock``, ``ZeroShotASP``; read, not copied):

  * STFT n_fft 2048 (``window_size``), hop ``config.hop_samples`` (320), Hann, centred, reflect; magnitude ->
    ``bn0`` (BatchNorm over the 1025 bins); frames zero-padded to a multiple of 2^6; the last bin dropped
    (1025 -> 1024).
  * ``ConvBlock(c)``: ``x = relu(bn1(conv1(x))) + emb1(c)``; ``x = relu(bn2(conv2(x))) + emb2(c)`` (3x3 convs
    without bias, ``emb`` = ``Linear(latent_dim -> C)``: the query added after every ReLU).
  * Encoder: six ``ConvBlock`` + 2x2 average pool, 32, 64, 128, 256, 512, 1024 channels; centre ``ConvBlock``
    1024 -> 2048; six decoders ``DecoderBlock``: ``ConvTranspose2d(3x3, stride 2, no padding, no bias)`` -> BN ->
    ReLU -> ``+ emb1(c)`` -> prune the last row and column -> concatenate the skip -> ``ConvBlock(2C -> C)``;
    ``after_conv_block1`` ``ConvBlock(32 -> 32)``, ``after_conv2`` 1x1 conv 32 -> 1 (bias).
  * Output: the dropped bin re-padded with logit 0, frames cropped, ``sigmoid`` magnitude mask times the mixture
    magnitude, mixture phase, iSTFT to the input length.
  * Initialisation as the reference: ``init_layer`` (Xavier uniform, zero bias) on the ``ConvBlock`` convs and
    ``after_conv2``, ``init_emb`` (uniform +-0.1, zero bias) on the ``ConvBlock`` embeddings; the decoders'
    ``conv1`` / ``emb1`` keep PyTorch's default init (their ``init_weights`` is never called).

The query net is an HTS-AT (``uss_jax.models.htsat``; ``htsat_dim`` 256 -> 2048-d ``latent_output`` in the reference,
D = 96 -> 768-d at tiny size), whose ``embedding`` of the query audio conditions every block. Table 2 "Grad" decides
whether it trains (``query_grad``); "Init" whether it starts from a tagging run (the task's job).

Layout: channels-last ``(batch, time, freq, channels)`` maps; waveforms ``(batch, samples)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from uss_jax.audio import stft as stft_lib
from uss_jax.models import htsat as htsat_lib
from uss_jax.models.interface import SystemInterface
from uss_jax.nn import swin
from uss_jax.nn.film import FiLM

_CONV_AXES = (None, None, "conv_in", "conv_out")


def transposed_conv3x3_stride2_pruned(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
  """PyTorch ``ConvTranspose2d(k=3, stride=2, padding=0)`` followed by ZS-ASP's ``prune`` (drop the last row and
  column): ``y[2i + a, 2j + b] += x[i, j] @ kernel[a, b]`` for ``a, b in 0..2``, output ``(2 t, 2 f)``.

  Computed as one matmul to the 9 taps and interleaving (no dilated convolution, no scatter).

  Args:
    x: ``(batch, t, f, in)``; kernel: ``(3, 3, in, out)`` = PyTorch's ``weight (in, out, 3, 3)`` transposed.

  Returns:
    ``(batch, 2 t, 2 f, out)``.
  """
  b, t, f, _ = x.shape
  z = jnp.einsum("ntfc,abco->ntfabo", x, kernel.astype(x.dtype), precision=precision)

  # Rows: output row 2i takes tap a=0 of row i and tap a=2 of row i-1; row 2i+1 takes tap a=1 of row i.
  shift = lambda v, ax: jnp.pad(v, [(1, 0) if k == ax else (0, 0) for k in range(v.ndim)])[  # noqa: E731
      tuple(slice(0, v.shape[ax]) if k == ax else slice(None) for k in range(v.ndim))]
  even = z[:, :, :, 0] + shift(z[:, :, :, 2], 1)  # (b, t, f, 3, o)
  odd = z[:, :, :, 1]
  z = jnp.stack([even, odd], axis=2).reshape(b, 2 * t, f, 3, -1)
  even = z[:, :, :, 0] + shift(z[:, :, :, 2], 2)
  odd = z[:, :, :, 1]
  return jnp.stack([even, odd], axis=3).reshape(b, 2 * t, 2 * f, -1)


def _uniform(bound: float) -> Any:
  """``U(-bound, bound)`` initialiser."""
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _bn(features: int, momentum: float, dtype: Any, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(features, momentum=1.0 - momentum, epsilon=1e-5, use_fast_variance=False, dtype=dtype,
                       scale_metadata={"out_sharding": ("conv_out",)}, bias_metadata={"out_sharding": ("conv_out",)},
                       rngs=rngs)


def _emb(cond: int, ch: int, init: Any, dtype: Any, rngs: nnx.Rngs) -> FiLM:
  return FiLM(cond, ch, kernel_init=init, dtype=dtype, rngs=rngs)


class ConvBlock(nnx.Module):
  """Reference ``ConvBlock``: two (3x3 conv, BN, ReLU, ``+ Linear(cond -> C)``) stages; ``(b, t, f, in)`` + ``(b,
  cond)`` -> ``(b, t, f, out)``."""

  def __init__(self, cin: int, cout: int, cond: int, *, momentum: float = 0.01, precision: Any = None,
               dtype: Any = None, rngs: nnx.Rngs):
    conv = lambda i: nnx.Conv(  # noqa: E731
        i, cout, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, precision=precision, dtype=dtype,
        kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(), _CONV_AXES), rngs=rngs)
    self.conv1, self.conv2 = conv(cin), conv(cout)
    self.bn1, self.bn2 = _bn(cout, momentum, dtype, rngs), _bn(cout, momentum, dtype, rngs)
    self.emb1 = _emb(cond, cout, _uniform(0.1), dtype, rngs)  # reference init_emb: U(-0.1, 0.1), zero bias
    self.emb2 = _emb(cond, cout, _uniform(0.1), dtype, rngs)

  def __call__(self, x: jax.Array, condition: jax.Array) -> jax.Array:
    """``(b, t, f, in)`` + ``(b, cond)`` -> ``(b, t, f, out)``."""
    x = self.emb1(jax.nn.relu(self.bn1(self.conv1(x))), condition)
    return self.emb2(jax.nn.relu(self.bn2(self.conv2(x))), condition)


class DecoderBlock(nnx.Module):
  """Reference ``DecoderBlock``: transposed 3x3 stride-2 conv (pruned), BN, ReLU, ``+ emb1(c)``, concatenate the
  skip, ``ConvBlock(2C -> C)``; ``(b, t, f, in)`` + skip ``(b, 2t, 2f, out)`` -> ``(b, 2t, 2f, out)``."""

  def __init__(self, cin: int, cout: int, cond: int, *, momentum: float = 0.01, precision: Any = None,
               dtype: Any = None, rngs: nnx.Rngs):
    self.precision, self.dtype = precision, dtype
    # PyTorch default ConvTranspose2d init: kaiming_uniform(a=sqrt(5)) over fan_in = weight.size(1) * 9 = out * 9.
    bound = 1.0 / np.sqrt(cout * 9)
    self.conv1 = nnx.Param(nnx.with_partitioning(_uniform(bound), _CONV_AXES)(rngs.params(), (3, 3, cin, cout)))
    self.bn1 = _bn(cout, momentum, dtype, rngs)
    self.emb1 = _emb(cond, cout, swin.torch_default_init(), dtype, rngs)
    self.conv_block2 = ConvBlock(2 * cout, cout, cond, momentum=momentum, precision=precision, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, skip: jax.Array, condition: jax.Array) -> jax.Array:
    """``(b, t, f, in)`` + skip ``(b, 2t, 2f, out)`` + ``(b, cond)`` -> ``(b, 2t, 2f, out)``."""
    if self.dtype is not None:
      x = x.astype(self.dtype)
    x = transposed_conv3x3_stride2_pruned(x, self.conv1[...], self.precision)
    x = self.emb1(jax.nn.relu(self.bn1(x)), condition)
    return self.conv_block2(jnp.concatenate([x, skip.astype(x.dtype)], axis=-1), condition)


class ZeroShotASP(nnx.Module):
  """The ZS-ASP separator (module docstring): ``(mixture (batch, samples), condition (batch, cond)) ->
  {'waveform': (batch, samples)}``; ``return_intermediates`` adds ``mask_logits`` ``(batch, frames, bins)``.

  Args:
    condition_size: the query embedding width (2048 in the reference).
    channels: encoder widths (32, 64, 128, 256, 512, 1024); the centre block has twice the last.
    n_fft, hop_length: STFT (2048, 320).
    bn_momentum: PyTorch-convention momentum of every BatchNorm (0.01).
    precision, dtype, rngs: as elsewhere.

  Raises:
    ValueError: ``n_fft // 2`` not divisible by ``2 ** len(channels)``.
  """

  def __init__(self, condition_size: int, *, channels: Sequence[int] = (32, 64, 128, 256, 512, 1024),
               n_fft: int = 2048, hop_length: int = 320, bn_momentum: float = 0.01, precision: Any = None,
               dtype: Any = None, rngs: nnx.Rngs):
    channels = tuple(int(c) for c in channels)
    self.condition_size, self.n_fft, self.hop_length = int(condition_size), int(n_fft), int(hop_length)
    self.downsample_ratio = 2 ** len(channels)
    if (n_fft // 2) % self.downsample_ratio:
      raise ValueError(f"n_fft // 2 = {n_fft // 2} is not divisible by 2^{len(channels)}")
    kw = dict(momentum=bn_momentum, precision=precision, dtype=dtype, rngs=rngs)
    cond = self.condition_size
    self.bn0 = _bn(n_fft // 2 + 1, bn_momentum, dtype, rngs)
    ins = (1,) + channels[:-1]
    self.encoder_blocks = nnx.List([ConvBlock(i, o, cond, **kw) for i, o in zip(ins, channels)])
    self.conv_block7 = ConvBlock(channels[-1], 2 * channels[-1], cond, **kw)
    outs = channels[::-1]
    dec_in = (2 * channels[-1],) + outs[:-1]
    self.decoder_blocks = nnx.List([DecoderBlock(i, o, cond, **kw) for i, o in zip(dec_in, outs)])
    self.after_conv_block1 = ConvBlock(channels[0], channels[0], cond, **kw)
    self.after_conv2 = nnx.Conv(channels[0], 1, (1, 1), precision=precision, dtype=dtype,
                                kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(), _CONV_AXES),
                                rngs=rngs)

  def __call__(self, mixture: jax.Array, condition: jax.Array,
               return_intermediates: bool = False) -> dict[str, jax.Array]:
    """See the class docstring; any length (frames are padded to a multiple of ``2 ** len(channels)``)."""
    spec = stft_lib.stft(mixture, self.n_fft, self.hop_length)  # (b, t, bins)
    mag = jnp.abs(spec)
    x = self.bn0(mag)
    t = x.shape[1]
    pad = -(-t // self.downsample_ratio) * self.downsample_ratio - t
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))[..., :-1, None]  # (b, T, 1024, 1)
    skips = []
    for block in self.encoder_blocks:
      x = block(x, condition)
      skips.append(x)
      b, tt, ff, c = x.shape
      x = x.reshape(b, tt // 2, 2, ff // 2, 2, c).mean(axis=(2, 4))
    x = self.conv_block7(x, condition)
    for block, skip in zip(self.decoder_blocks, skips[::-1]):
      x = block(x, skip, condition)
    x = self.after_conv2(self.after_conv_block1(x, condition))[..., 0].astype(jnp.float32)
    logits = jnp.pad(x, ((0, 0), (0, 0), (0, 1)))[:, :t]
    est = jax.nn.sigmoid(logits) * spec  # sigmoid(m) |X| with the mixture phase
    out = {"waveform": stft_lib.istft(est, self.n_fft, self.hop_length, length=mixture.shape[-1])}
    if return_intermediates:
      out["mask_logits"] = logits
    return out


class StSedSep(nnx.Module):
  """ST-SED-SEP system: ``separator`` (``ZeroShotASP``) + ``query_net`` (HTS-AT, eval mode; its ``embedding``
  conditions the separator; stop-gradient unless ``query_grad``)."""

  def __init__(self, separator: ZeroShotASP, query_net: htsat_lib.HTSAT, *, query_grad: bool = False,
               info: SystemInterface | None = None):
    self.separator, self.query_net = separator, query_net
    self.query_grad, self.info = bool(query_grad), info

  def query(self, audio: jax.Array, *, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """``{'embedding' (batch, D), 'logits' (batch, classes)}`` of the query audio ``(batch, samples)``."""
    del rngs
    self.query_net.eval()
    out = self.query_net(audio)
    emb = out["embedding"].astype(jnp.float32)
    return {"embedding": emb if self.query_grad else jax.lax.stop_gradient(emb), "logits": out["logits"]}

  def embed(self, audio: jax.Array) -> jax.Array:
    """``query(audio)['embedding']`` ``(batch, D)``."""
    return self.query(audio)["embedding"]

  def __call__(self, mixture: jax.Array, condition: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Mixture ``(batch, samples)`` + condition ``(batch, D)`` -> the estimate ``(batch, samples)``."""
    del rngs
    return self.separator(mixture, condition)["waveform"]

  def interface(self) -> SystemInterface:
    if self.info is None:
      raise ValueError("this StSedSep was built without a SystemInterface (use build_st_sed_sep_system)")
    return self.info

  def separate(self, mixture: jax.Array, condition: jax.Array) -> dict[str, jax.Array]:
    """``{'waveform': (batch, samples)}``."""
    return {"waveform": self(mixture, condition)}

  def embed_audio(self, audio: jax.Array) -> jax.Array:
    """The HTS-AT ``embedding`` ``(batch, D)`` of query segments ``(batch, query_samples)``."""
    return self.embed(audio)


def htsat_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The ``build_htsat`` config of the query net: ``config.query_model`` (``frontend``, ``model``) with the run's
  ``compute_dtype``."""
  q = config.query_model
  return ml_collections.ConfigDict({"frontend": q.frontend.to_dict(), "model": q.model.to_dict(),
                                    "compute_dtype": config.get("compute_dtype", "float32")})


def build_st_sed_sep_system(config: ml_collections.ConfigDict, context: Mapping[str, Any],
                            rngs: nnx.Rngs) -> StSedSep:
  """Registry builder of ``'st_sed_sep'``: ``config.model`` (``channels``, ``n_fft``, ``hop_length``,
  ``bn_momentum``, ``query_grad``), ``config.query_model`` (the HTS-AT), ``context['num_classes']`` (its head)."""
  m = config.model
  dtype = jnp.dtype(config.get("compute_dtype", "float32"))
  query_net = htsat_lib.build_htsat(htsat_config(config), int(context["num_classes"]), rngs)
  separator = ZeroShotASP(query_net.num_features, channels=tuple(m.channels), n_fft=m.n_fft,
                          hop_length=m.hop_length, bn_momentum=m.get("bn_momentum", 0.01), dtype=dtype, rngs=rngs)
  sr = int(config.data.sample_rate)
  segment = int(round(config.data.segment_seconds * sr))
  info = SystemInterface(name="st_sed_sep", sample_rate=sr, segment_samples=segment,
                         condition_size=query_net.num_features, query_kinds=("audio",), outputs=("waveform",),
                         condition_space=str(context.get("condition_space", "")), query_samples=segment)
  return StSedSep(separator, query_net, query_grad=bool(m.get("query_grad", False)), info=info)
