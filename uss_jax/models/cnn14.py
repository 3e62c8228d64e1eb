"""PANNs Cnn14 and Cnn14_DecisionLevelMax in Flax NNX (audio tagging, sound event detection, 2048-d embedding).

Source: Kong et al., "PANNs: Large-Scale Pretrained Audio Neural Networks for Audio Pattern Recognition" (IEEE/ACM
TASLP 2020), Sec. III-A/B and Table I; reference implementation qiuqiangkong/audioset_tagging_cnn
``pytorch/models.py`` (``ConvBlock``, ``Cnn14``, ``Cnn14_DecisionLevelMax``) and ``pytorch/pytorch_utils.py``
(``interpolate``, ``pad_framewise_output``), snapshot d2f4b8c.

Layout: log-mel ``(batch, frames, mels)`` -> conv maps channels-last ``(batch, time, freq, channels)``; PyTorch's
NCHW ``(batch, channels, time, freq)`` maps onto it by moving the channel axis last. Attribute names equal the
PyTorch module names (``bn0``, ``conv_block{i}.conv{1,2}``, ``conv_block{i}.bn{1,2}``, ``fc1``, ``fc_audioset``) so
that ``uss_jax.convert.panns`` maps checkpoints one to one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from uss_jax.audio import frontends

HEADS = ("clip", "decision_max")

Frontend = Callable[[jax.Array], jax.Array]
SpecAugment = Callable[..., jax.Array]


def avg_pool_floor(x: jax.Array, pool_size: tuple[int, int]) -> jax.Array:
  """Non-overlapping average pooling over (time, freq) that drops the remainder, like ``F.avg_pool2d(x, k)``.

  Args:
    x: ``(batch, time, freq, channels)``.
    pool_size: ``(pt, pf)``; ``(1, 1)`` is the identity.

  Returns:
    ``(batch, time // pt, freq // pf, channels)``.
  """
  pt, pf = pool_size
  if (pt, pf) == (1, 1):
    return x
  b, t, f, c = x.shape
  t2, f2 = t // pt, f // pf
  x = x[:, :t2 * pt, :f2 * pf]
  return x.reshape(b, t2, pt, f2, pf, c).mean(axis=(2, 4))


def smooth_segments(x: jax.Array) -> jax.Array:
  """``max_pool1d(k=3, s=1, p=1) + avg_pool1d(k=3, s=1, p=1)`` over time (Cnn14_DecisionLevelMax).

  The max pads with -inf; the average counts the zero padding (PyTorch ``count_include_pad=True``), so the edge
  steps are divided by 3 as well.

  Args:
    x: ``(batch, segments, channels)``.

  Returns:
    ``(batch, segments, channels)``.
  """
  neg = jnp.full_like(x[:, :1], -jnp.inf)
  xm = jnp.concatenate([neg, x, neg], axis=1)
  x_max = jnp.maximum(jnp.maximum(xm[:, :-2], xm[:, 1:-1]), xm[:, 2:])
  xz = jnp.pad(x, ((0, 0), (1, 1), (0, 0)))
  x_avg = (xz[:, :-2] + xz[:, 1:-1] + xz[:, 2:]) / 3.0
  return x_max + x_avg


def segments_to_frames(segments: jax.Array, ratio: int, frames: int) -> jax.Array:
  """PANNs ``interpolate`` + ``pad_framewise_output``: repeat each segment ``ratio`` times, pad with the last frame.

  Args:
    segments: ``(batch, segments, classes)``.
    ratio: frames per segment (``2 ** number_of_time_poolings`` = 32 for Cnn14).
    frames: output length in frames (the log-mel length; 1001 for 10 s at 32 kHz, hop 320).

  Returns:
    ``(batch, frames, classes)`` (cropped if ``segments * ratio > frames``, which the floor pooling never gives).
  """
  up = jnp.repeat(segments, ratio, axis=1)
  n = up.shape[1]
  if frames > n:
    last = jnp.broadcast_to(up[:, -1:], (up.shape[0], frames - n, up.shape[2]))
    up = jnp.concatenate([up, last], axis=1)
  return up[:, :frames]


def _batch_norm(num_features: int, *, momentum: float, epsilon: float, axis_name: str | None, dtype: Any,
                rngs: nnx.Rngs) -> nnx.BatchNorm:
  # PyTorch momentum m updates running = (1 - m) running + m batch; flax uses momentum * running + (1 - momentum).
  # use_fast_variance=False: bn0 sees log-mel values around -50 dB, where E[x^2] - E[x]^2 loses float32 digits.
  # flax keeps the biased batch variance in the running average where PyTorch keeps the unbiased one (a factor
  # n / (n - 1) with n = batch * time * freq, i.e. < 1e-4 for any real batch).
  names = (axis_name,)
  return nnx.BatchNorm(
      num_features, momentum=1.0 - momentum, epsilon=epsilon, use_fast_variance=False, dtype=dtype,
      scale_metadata={"out_sharding": names}, bias_metadata={"out_sharding": names}, rngs=rngs)


class ConvBlock(nnx.Module):
  """Two (3x3 conv without bias -> BatchNorm -> ReLU), then floor average pooling.

  Source: PANNs ``pytorch/models.py`` ``ConvBlock`` (pool_type='avg'); weights init as ``init_layer`` (Xavier
  uniform) and ``init_bn`` (scale 1, bias 0).

  Args:
    in_channels, out_channels: channel counts.
    bn_momentum: PyTorch-convention BatchNorm momentum (0.1 in PANNs).
    bn_epsilon: BatchNorm epsilon (1e-5).
    precision: ``jax.lax`` precision of the convolutions (None = default; pass ``'highest'`` for fp32 on GPU/TPU).
    dtype: computation dtype (None = float32 from the float32 parameters).
    rngs: initialisation RNG streams.
  """

  def __init__(self, in_channels: int, out_channels: int, *, bn_momentum: float = 0.1, bn_epsilon: float = 1e-5,
               precision: Any = None, dtype: Any = None, rngs: nnx.Rngs):
    def conv(cin: int) -> nnx.Conv:
      return nnx.Conv(
          cin, out_channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, precision=precision, dtype=dtype,
          kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(), (None, None, "conv_in", "conv_out")),
          rngs=rngs)

    self.conv1 = conv(in_channels)
    self.bn1 = _batch_norm(out_channels, momentum=bn_momentum, epsilon=bn_epsilon, axis_name="conv_out", dtype=dtype,
                           rngs=rngs)
    self.conv2 = conv(out_channels)
    self.bn2 = _batch_norm(out_channels, momentum=bn_momentum, epsilon=bn_epsilon, axis_name="conv_out", dtype=dtype,
                           rngs=rngs)

  def __call__(self, x: jax.Array, pool_size: tuple[int, int] = (2, 2)) -> jax.Array:
    """``(batch, time, freq, in_channels)`` -> ``(batch, time // pt, freq // pf, out_channels)``."""
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    x = jax.nn.relu(self.bn2(self.conv2(x)))
    return avg_pool_floor(x, pool_size)


def _resolve_frontend(frontend: Frontend | str | None, **kwargs: Any) -> Frontend | None:
  if not isinstance(frontend, str):
    return frontend
  return frontends.get_frontend(frontend, **kwargs)


def _augment_key(rngs: nnx.Rngs | None) -> jax.Array:
  if rngs is None:
    raise ValueError("SpecAugment in train mode needs rngs (stream 'augment', else 'default', else 'dropout')")
  for stream in ("augment", "default", "dropout"):
    if stream in rngs:
      return rngs[stream]()
  raise ValueError("SpecAugment in train mode needs an rngs stream 'augment', 'default' or 'dropout'")


def panns_spec_augment(x: jax.Array, *, rngs: nnx.Rngs | None) -> jax.Array:
  """PANNs' SpecAugment: 2 time stripes up to 64 frames and 2 frequency stripes up to 8 bins, set to 0.

  Source: PANNs ``pytorch/models.py`` ``SpecAugmentation(time_drop_width=64, time_stripes_num=2,
  freq_drop_width=8, freq_stripes_num=2)`` (torchlibrosa), applied after ``bn0``; implemented by
  ``uss_jax.audio.frontends.spec_augment``. Widths are capped at the number of frames / bins for short inputs.

  Args:
    x: ``(batch, frames, mels)``.
    rngs: the key comes from stream ``'augment'``, else ``'default'``, else ``'dropout'``.

  Raises:
    ValueError: no usable RNG stream.
  """
  frames, bins = x.shape[-2:]
  return frontends.spec_augment(x, _augment_key(rngs), time_mask_width=min(64, frames), num_time_masks=2,
                                freq_mask_width=min(8, bins), num_freq_masks=2)


class Cnn14(nnx.Module):
  """PANNs Cnn14 (``head='clip'``) or Cnn14_DecisionLevelMax (``head='decision_max'``), log-mel front end inside.

  Forward (``from_logmel``; eval mode = ``model.eval()``):
    1. ``bn0``: BatchNorm over the mel bins of the log-mel ``(batch, frames, mels)`` (dB).
    2. train mode only: ``spec_augment(x, rngs=rngs)`` (default ``panns_spec_augment``, PANNs' 2 x 64-frame time
       and 2 x 8-bin frequency stripes).
    3. ``conv_block1..6`` (channels 64..2048), 2x2 floor average pooling after blocks 1-5, 1x1 after block 6,
       dropout ``dropout`` (0.2) after every block.
    4. mean over frequency -> features ``(batch, segments, channels)``; ``segments = frames // 32`` (31 for 1001).
    5. ``head='clip'`` (Cnn14): max over time + mean over time -> dropout 0.5 -> ``h = relu(fc1(.))``;
       ``embedding = dropout(h)``; ``logits = fc_audioset(h)`` (the reference feeds ``h``, not the dropped-out
       embedding, to the classifier); ``clipwise_output = sigmoid(logits)``.
       ``head='decision_max'`` (Cnn14_DecisionLevelMax): ``smooth_segments`` (kernel-3 max + mean over time,
       zero padding counted) -> dropout 0.5 -> ``relu(fc1)`` -> dropout 0.5 -> ``segmentwise_logits =
       fc_audioset(.)``; ``clipwise_output = max_t sigmoid(segmentwise_logits)``; ``framewise_output`` = each
       segment repeated 32 times and padded with the last one to ``frames``.

  Both heads return the segment-level (SED) outputs. For ``head='clip'`` they are an extension that PANNs' Cnn14
  does not have: the DecisionLevelMax segment path (``smooth_segments`` -> ``fc1`` -> ``fc_audioset`` -> sigmoid,
  repeat x32, pad) applied to the clip model's features with the clip model's ``fc1`` / ``fc_audioset``, without
  dropout. It is what the project mines SED anchors from when only a clip-level checkpoint is at hand; the
  clip-level outputs are computed exactly as in the reference and do not depend on it. With identical weights the
  two heads give identical ``framewise_output`` / ``segmentwise_*``.

  Output dict (all float32):
    ``clipwise_output`` ``(batch, classes)``: probabilities in [0, 1].
    ``logits`` ``(batch, classes)``: pre-sigmoid clip logits (``decision_max``: max over segments of
      ``segmentwise_logits``, so ``sigmoid(logits) == clipwise_output``).
    ``embedding`` ``(batch, embedding_dim)``: ``clip``: the reference's ``embedding`` (fc1 output after ReLU and
      dropout); ``decision_max``: max over segments of the per-segment fc1 output (after ReLU and dropout).
    ``segmentwise_logits`` / ``segmentwise_output`` ``(batch, segments, classes)``: per-segment logits / sigmoid.
    ``framewise_output`` ``(batch, frames, classes)``.
    ``logmel`` ``(batch, frames, mels)`` (dB): only from ``__call__`` (the front end's output, the input to bn0).

  Args:
    num_classes: classifier width (527 for AudioSet).
    channels: widths of the conv blocks (PANNs: 64, 128, 256, 512, 1024, 2048); a 2x2 pooling follows every block
      but the last, so the time/frequency downsampling is ``2 ** (len(channels) - 1)``.
    embedding_dim: ``fc1`` width (None = ``channels[-1]``, 2048).
    head: ``'clip'`` or ``'decision_max'``.
    mel_bins: log-mel bins seen by ``bn0`` (64).
    frontend: callable waveform ``(batch, samples)`` -> log-mel ``(batch, frames, mel_bins)`` in dB; a string is
      resolved with ``uss_jax.audio.frontends.get_frontend(name, sample_rate=..., n_fft=window_size,
      hop_length=hop_size, n_mels=mel_bins, fmin=fmin, fmax=fmax)`` (``'panns'``: the PANNs log-mel); None =
      log-mel input only (``from_logmel``).
    spec_augment: applied after bn0 in train mode only: True = ``panns_spec_augment``; a callable
      ``(logmel (batch, frames, mels), *, rngs) -> same shape``; False / None = off.
    sample_rate, window_size, hop_size, fmin, fmax: front-end settings (Hz, samples) recorded on the model and used
      when ``frontend`` is a string (PANNs: 32000, 1024, 320, 50, 14000).
    dropout: dropout rate after every conv block (0.2).
    head_dropout: dropout rate in the head (0.5).
    bn_momentum: PyTorch-convention BatchNorm momentum (0.1); flax momentum is ``1 - bn_momentum``.
    bn_epsilon: BatchNorm epsilon (1e-5 everywhere in PANNs).
    precision: ``jax.lax`` precision for the convolutions and dense layers.
    dtype: computation dtype (e.g. ``jnp.bfloat16``; None = float32). Parameters stay float32, and the logits are
      cast to float32 before the sigmoid, so every output is float32.
    rngs: initialisation RNG streams (``params``).

  Raises:
    ValueError: unknown ``head`` or empty ``channels``.
    KeyError / TypeError: a string ``frontend`` that ``get_frontend`` does not know / unknown field.
  """

  def __init__(self, num_classes: int = 527, *, channels: Sequence[int] = (64, 128, 256, 512, 1024, 2048),
               embedding_dim: int | None = None, head: str = "clip", mel_bins: int = 64,
               frontend: Frontend | str | None = None, spec_augment: SpecAugment | bool | None = True,
               sample_rate: int = 32000, window_size: int = 1024, hop_size: int = 320, fmin: float = 50.0,
               fmax: float = 14000.0, dropout: float = 0.2, head_dropout: float = 0.5, bn_momentum: float = 0.1,
               bn_epsilon: float = 1e-5, precision: Any = None, dtype: Any = None, rngs: nnx.Rngs):
    if head not in HEADS:
      raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    channels = tuple(int(c) for c in channels)
    if not channels:
      raise ValueError("channels must name at least one conv block")
    self.num_classes = int(num_classes)
    self.channels = channels
    self.embedding_dim = int(embedding_dim or channels[-1])
    self.head = head
    self.mel_bins = int(mel_bins)
    self.sample_rate, self.window_size, self.hop_size = int(sample_rate), int(window_size), int(hop_size)
    self.fmin, self.fmax = float(fmin), float(fmax)
    self.num_pools = len(channels) - 1
    self.deterministic = False  # flipped by model.train() / model.eval(), like nnx.Dropout

    self.frontend = None
    self.set_frontend(frontend)
    self.spec_augment = panns_spec_augment if spec_augment is True else (spec_augment or None)
    self.bn0 = _batch_norm(self.mel_bins, momentum=bn_momentum, epsilon=bn_epsilon, axis_name=None, dtype=dtype,
                           rngs=rngs)
    cin = 1
    for i, cout in enumerate(channels, start=1):
      setattr(self, f"conv_block{i}", ConvBlock(cin, cout, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
                                                precision=precision, dtype=dtype, rngs=rngs))
      cin = cout
    dense_init = nnx.initializers.xavier_uniform()
    self.fc1 = nnx.Linear(
        channels[-1], self.embedding_dim, precision=precision, dtype=dtype,
        kernel_init=nnx.with_partitioning(dense_init, ("mlp", "embed")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)), rngs=rngs)
    self.fc_audioset = nnx.Linear(
        self.embedding_dim, self.num_classes, precision=precision, dtype=dtype,
        kernel_init=nnx.with_partitioning(dense_init, ("embed", "classes")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("classes",)), rngs=rngs)
    self.block_dropout = nnx.Dropout(dropout)
    self.head_dropout = nnx.Dropout(head_dropout)

  def set_frontend(self, frontend: Frontend | str | None) -> None:
    """Replaces the front end (callable, ``uss_jax.audio.frontends`` name resolved with this model's settings, or
    None).

    Raises:
      KeyError: an unknown front-end name.
    """
    self.frontend = _resolve_frontend(frontend, sample_rate=self.sample_rate, n_fft=self.window_size,
                                      hop_length=self.hop_size, n_mels=self.mel_bins, fmin=self.fmin, fmax=self.fmax)

  @property
  def blocks(self) -> list[ConvBlock]:
    """The conv blocks in order (``conv_block1`` ...)."""
    return [getattr(self, f"conv_block{i}") for i in range(1, len(self.channels) + 1)]

  @property
  def frames_per_segment(self) -> int:
    """Log-mel frames per output segment: ``2 ** (len(channels) - 1)`` (32)."""
    return 2 ** self.num_pools

  def __call__(self, waveform: jax.Array, *, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """Waveform -> outputs (see the class docstring), ``logmel`` included.

    Args:
      waveform: ``(batch, samples)`` float32 at ``sample_rate`` Hz.
      rngs: RNG streams for dropout / SpecAugment; required in train mode, unused in eval mode.

    Raises:
      ValueError: the model was built without a front end (use ``from_logmel``).
    """
    if self.frontend is None:
      raise ValueError("Cnn14 was built without a front end: pass frontend=... or call from_logmel(logmel)")
    logmel = self.frontend(waveform)
    out = self.from_logmel(logmel, rngs=rngs)
    out["logmel"] = logmel
    return out

  def from_logmel(self, logmel: jax.Array, *, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """Log-mel -> outputs (see the class docstring; no ``logmel`` key).

    Args:
      logmel: ``(batch, frames, mel_bins)`` in dB (PANNs: ``10 log10(max(power @ melW, 1e-10))``).
      rngs: RNG streams for dropout / SpecAugment; required in train mode, unused in eval mode.

    Raises:
      ValueError: wrong mel count, or fewer frames / mels than one pooled segment (``frames_per_segment``).
    """
    if logmel.ndim != 3 or logmel.shape[-1] != self.mel_bins:
      raise ValueError(f"expected log-mel (batch, frames, {self.mel_bins}), got {logmel.shape}")
    frames = logmel.shape[1]
    if frames < self.frames_per_segment or self.mel_bins < self.frames_per_segment:
      raise ValueError(f"need at least {self.frames_per_segment} frames and mels, got {logmel.shape}")
    x = self.bn0(logmel)
    if not self.deterministic and self.spec_augment is not None:
      x = self.spec_augment(x, rngs=rngs)
    x = x[..., None]  # (batch, frames, mels, 1)
    for i, block in enumerate(self.blocks):
      x = block(x, (2, 2) if i < self.num_pools else (1, 1))
      x = self.block_dropout(x, rngs=rngs)
    feats = jnp.mean(x, axis=2)  # (batch, segments, channels)

    if self.head == "clip":
      pooled = jnp.max(feats, axis=1) + jnp.mean(feats, axis=1)
      pooled = self.head_dropout(pooled, rngs=rngs)
      h = jax.nn.relu(self.fc1(pooled))
      embedding = self.head_dropout(h, rngs=rngs)
      logits = self.fc_audioset(h).astype(jnp.float32)
      clipwise = jax.nn.sigmoid(logits)
      seg_h = jax.nn.relu(self.fc1(smooth_segments(feats)))  # the SED extension: no dropout
      seg_logits = self.fc_audioset(seg_h).astype(jnp.float32)
      seg_out = jax.nn.sigmoid(seg_logits)
    else:
      seg = self.head_dropout(smooth_segments(feats), rngs=rngs)
      seg_h = self.head_dropout(jax.nn.relu(self.fc1(seg)), rngs=rngs)
      seg_logits = self.fc_audioset(seg_h).astype(jnp.float32)
      seg_out = jax.nn.sigmoid(seg_logits)
      clipwise = jnp.max(seg_out, axis=1)
      logits = jnp.max(seg_logits, axis=1)
      embedding = jnp.max(seg_h, axis=1)
    embedding = embedding.astype(jnp.float32)
    return {
        "clipwise_output": clipwise,
        "logits": logits,
        "embedding": embedding,
        "segmentwise_logits": seg_logits,
        "segmentwise_output": seg_out,
        "framewise_output": segments_to_frames(seg_out, self.frames_per_segment, frames),
    }


def count_params(model: nnx.Module) -> int:
  """Number of ``nnx.Param`` scalars (BatchNorm running statistics excluded, as in PyTorch ``parameters()``)."""
  return sum(int(v.size) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
