"""ResNet-ish audio tower of SoundWords: a ResNet-50-style CNN on the VGGish log-mel, in Flax NNX.

Sources: seed 003 Sec. 3.1 (Kilgour et al.: "the commonly-used Resnetish-50 architecture [27], trained on top of
64-channel log mel spectrograms ... a fully-connected final layer with the number of units defining the ultimate
embedding dimension ... average pooling on the frame-level outputs to produce a single clip-level embedding"); its
ref. [27] (Hershey et al., "CNN architectures for large-scale audio classification", ICASSP 2017: ResNet-50 of He et
al. 2016 on log-mel patches); the bottleneck block layout of torchvision ``resnet.py`` (v1.5: the stride on the 3x3
conv). The VGGish front end (16 kHz, 25 ms / 10 ms frames, 64 mel bands 125-7500 Hz, ``log(mel + 0.01)``) is
``uss_jax.audio.frontends.VGGishLogMel``, computed inside the graph.

Forward, ``w`` = base width, stages ``(n_1 .. n_4)`` (ResNet-50: (3, 4, 6, 3), w = 64), channels-last:
  x = vggish(waveform)[..., None]                                           (B, T, 64, 1)   time x mel x 1
  x = maxpool_{3x3, s2}(ReLU(BN(Conv_{7x7, s2}(x))))                        (B, T/4, 16, w)
  stage k (k = 1..4), first block stride 2 for k > 1:
     block(x) = ReLU(x' + BN(Conv_1x1(ReLU(BN(Conv_3x3,s(ReLU(BN(Conv_1x1(x)))))))))   width w 2^(k-1), out 4 w 2^(k-1)
     x' = x, or BN(Conv_1x1,s(x)) when the shape changes
  h = mean over frequency -> frame-level features (B, T', 32 w); clip = mean over frames
  embedding = Dense(clip)                                                    (B, embedding_dim)
BatchNorm (momentum 0.9 in Flax terms, eps 1e-5); the last BN of each block starts at scale 0 (Goyal et al. 2017),
so every block starts as the identity. Logical names: conv kernels ``(None, None, 'conv_in', 'conv_out')``, channel
vectors ``('conv_out',)``, the FC ``('embed', None)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from uss_jax.audio import frontends

CONV_AXES = (None, None, "conv_in", "conv_out")
BN_MOMENTUM = 0.9
BN_EPS = 1e-5
EXPANSION = 4

SIZES: dict[str, dict[str, Any]] = {
    "resnet50": {"width": 64, "stages": (3, 4, 6, 3)},
    "small": {"width": 16, "stages": (1, 1, 1, 1)},
    "tiny": {"width": 4, "stages": (1, 1)},
}


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs, dtype: Any) -> nnx.Conv:
  init = nnx.with_partitioning(nnx.initializers.variance_scaling(2.0, "fan_out", "normal"), CONV_AXES)  # He
  return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=((k // 2, k // 2),) * 2, use_bias=False,
                  kernel_init=init, dtype=dtype, rngs=rngs)


def _bn(channels: int, rngs: nnx.Rngs, dtype: Any, zero: bool = False) -> nnx.BatchNorm:
  names = ("conv_out",)
  scale_init = nnx.initializers.zeros_init() if zero else nnx.initializers.ones_init()
  return nnx.BatchNorm(channels, momentum=BN_MOMENTUM, epsilon=BN_EPS, use_fast_variance=False, dtype=dtype,
                       scale_init=scale_init, scale_metadata={"out_sharding": names},
                       bias_metadata={"out_sharding": names}, rngs=rngs)


class Bottleneck(nnx.Module):
  """ResNet v1.5 bottleneck ``(B, H, W, cin) -> (B, H / s, W / s, 4 width)`` (module docstring)."""

  def __init__(self, cin: int, width: int, stride: int, *, dtype: Any = None, rngs: nnx.Rngs):
    cout = EXPANSION * width
    self.conv1, self.bn1 = _conv(cin, width, 1, 1, rngs, dtype), _bn(width, rngs, dtype)
    self.conv2, self.bn2 = _conv(width, width, 3, stride, rngs, dtype), _bn(width, rngs, dtype)
    self.conv3, self.bn3 = _conv(width, cout, 1, 1, rngs, dtype), _bn(cout, rngs, dtype, zero=True)
    project = stride != 1 or cin != cout
    self.shortcut = nnx.data(_conv(cin, cout, 1, stride, rngs, dtype) if project else None)
    self.shortcut_bn = nnx.data(_bn(cout, rngs, dtype) if project else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jax.nn.relu(self.bn1(self.conv1(x)))
    h = jax.nn.relu(self.bn2(self.conv2(h)))
    h = self.bn3(self.conv3(h))
    skip = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))
    return jax.nn.relu(h + skip)


class ResNetish(nnx.Module):
  """Waveform ``(batch, samples)`` at 16 kHz -> clip embedding ``(batch, embedding_dim)``.

  Args:
    embedding_dim: FC output width (64 in seed 003).
    width: base width ``w`` (64 = ResNet-50).
    stages: blocks per stage ((3, 4, 6, 3) = ResNet-50).
    frontend: the log-mel front end (VGGish by default).
    dtype: computation dtype (None = float32).
    rngs: initialisation RNG streams.
  """

  def __init__(self, embedding_dim: int = 64, *, width: int = 64, stages: Sequence[int] = (3, 4, 6, 3),
               frontend: Any = None, dtype: Any = None, rngs: nnx.Rngs):
    if width < 1 or not stages or min(stages) < 1:
      raise ValueError(f"ResNetish: width={width}, stages={tuple(stages)} (need positive values)")
    self.frontend = frontend or frontends.VGGishLogMel()
    self.embedding_dim = int(embedding_dim)
    self.stem = _conv(1, width, 7, 2, rngs, dtype)
    self.stem_bn = _bn(width, rngs, dtype)
    blocks, cin = [], width
    for k, n in enumerate(stages):
      for j in range(n):
        blocks.append(Bottleneck(cin, width * 2**k, 2 if (j == 0 and k > 0) else 1, dtype=dtype, rngs=rngs))
        cin = EXPANSION * width * 2**k
    self.blocks = nnx.List(blocks)
    self.features = cin
    self.projection = nnx.Linear(cin, self.embedding_dim, kernel_init=nnx.with_partitioning(
        nnx.initializers.lecun_normal(), ("embed", None)), bias_init=nnx.with_partitioning(
            nnx.initializers.zeros_init(), (None,)), rngs=rngs)

  def frame_features(self, waveform: jax.Array) -> jax.Array:
    """Frame-level features ``(batch, frames', features)`` (mean over frequency of the last stage)."""
    x = self.frontend(waveform.astype(jnp.float32))[..., None]
    x = jax.nn.relu(self.stem_bn(self.stem(x)))
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x)
    return jnp.mean(x.astype(jnp.float32), axis=2)

  def __call__(self, waveform: jax.Array) -> jax.Array:
    """``(batch, samples)`` (at least one 400-sample frame) -> ``(batch, embedding_dim)`` float32.

    Raises:
      ValueError: not 2-D or shorter than one front-end frame.
    """
    if waveform.ndim != 2 or waveform.shape[-1] < self.frontend.win_length:
      raise ValueError(f"audio must be (batch, samples >= {self.frontend.win_length}), got {waveform.shape}")
    clip = jnp.mean(self.frame_features(waveform), axis=1)
    return self.projection(clip).astype(jnp.float32)


def build_resnetish(size: str = "resnet50", embedding_dim: int = 64, *, dtype: Any = None, rngs: nnx.Rngs,
                    **overrides) -> ResNetish:
  """A ``ResNetish`` of a named size (``SIZES``) with ``width`` / ``stages`` overrides.

  Raises:
    ValueError: unknown size or override.
  """
  if size not in SIZES:
    raise ValueError(f"ResNetish size {size!r} unknown; expected one of {sorted(SIZES)}")
  unknown = set(overrides) - {"width", "stages"}
  if unknown:
    raise ValueError(f"ResNetish: unknown options {sorted(unknown)} (width, stages)")
  opts = {**SIZES[size], **{k: v for k, v in overrides.items() if v is not None}}
  return ResNetish(embedding_dim, width=int(opts["width"]), stages=tuple(opts["stages"]), dtype=dtype, rngs=rngs)
