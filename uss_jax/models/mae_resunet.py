"""MAE-ResUNet (seed 000, Zhao et al., Sec. III-B): A-MAE encoder features concatenated with the STFT magnitude.

The separator of seed 000's proposal. The A-MAE ViT encoder (``uss_jax.models.vit``, AudioMAE ViT-B/16 at full size)
runs on the Kaldi fbank of the mixture (``audio.frontends.AudioMAEFbank``, 16 kHz, 10 ms frames, 128 bins; the
mixture is resampled in the graph when the separator runs at another rate). Its token grid ``(T_tok, F_tok)`` of
``D``-wide features is pooled to one feature vector per STFT frame and concatenated with the mixture's STFT
magnitude on the frequency axis of ResUNet30's input (``ResUNet30(extra_features=D)``); the U-Net then predicts the
mask of the STFT bins as the baseline does.

Feature modes (seed 000 Table I):
  * ``'frozen'``: the encoder is fixed (not trained, no gradient, eval mode); features = its last block's output
    after the final LayerNorm (the pretraining encoder's ``normed_tokens``).
  * ``'updated'``: features = ``sum_l softmax(w)_l * layer_l``, a learnable softmax-weighted sum of all transformer
    layer outputs (``w`` initialised to 0: the plain average); the encoder is trained (its learning rate set by
    ``config.optimizer.lr_multipliers``, e.g. ``[('encoder', 0.1)]``).

Pooling to STFT frames:
  * ``'aligned'`` (default, any segment length): avg-max pooling over the ``F_tok`` frequency tokens (mean + max,
    PANNs' "average-max pooling"), giving ``(T_tok, D)``; each STFT frame ``j`` takes the features of the token
    covering its time, ``min(floor(j * hop_stft / sr / (patch * 10 ms)), T_tok - 1)``: with 10 ms hops on both sides
    (the recipes), a 16-frame patch covers 16 STFT frames. The fbank is zero-padded to a whole number of patches
    (2 s at 16 kHz: 198 frames -> 208, 13 time tokens, so the 201 STFT frames see 13 feature vectors, each repeated 16
    times).
  * ``'paper'`` (seed 000 Sec. IV-A literally): the fbank is padded to 1024 frames (10 s, the pretraining length;
    512 tokens of a 16 x 16 patch grid), the token sequence is avg-max pooled with a window of 16 tokens to
    ``(32, D)`` and repeated x7 along time to 224 frames, then cropped to the STFT frames. Only meaningful for the
    paper's 2 s / 10 ms set-up (its feature frames do not line up with the STFT's in time); kept for comparison.

Feature normalisation: a BatchNorm over the ``D`` feature channels (``feature_bn``) before the concatenation (ResUNet30
normalises the magnitude bins with its own ``bn0``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections

from uss_jax.audio import frontends, resample
from uss_jax.models import resunet, vit

FEATURE_MODES = ("frozen", "updated")
POOLINGS = ("aligned", "paper")
FBANK_HOP_SECONDS = 0.01  # AudioMAE's Kaldi fbank frame shift
PAPER_FRAMES, PAPER_POOL, PAPER_REPEAT = 1024, 16, 7


def avg_max_pool(x: jax.Array, axis: int) -> jax.Array:
  """``mean(x, axis) + max(x, axis)`` (PANNs' average-max pooling)."""
  return jnp.mean(x, axis=axis) + jnp.max(x, axis=axis)


def frame_token_index(stft_frames: int, time_tokens: int, hop_seconds: float, patch_frames: int) -> jax.Array:
  """``(stft_frames,)`` int32: the time token covering each STFT frame (``'aligned'`` pooling, module docstring)."""
  per_token = patch_frames * FBANK_HOP_SECONDS
  idx = jnp.floor(jnp.arange(stft_frames) * hop_seconds / per_token + 1e-6).astype(jnp.int32)
  return jnp.minimum(idx, time_tokens - 1)


class MAEResUNet(nnx.Module):
  """ResUNet30 fed with A-MAE encoder features beside the STFT magnitude (module docstring).

  Args:
    unet: a ``ResUNet30`` with ``extra_features == encoder.embed_dim``.
    encoder: the A-MAE ``VisionTransformer`` (pretraining encoder: ``global_pool=False``, no head).
    fbank: the ``AudioMAEFbank`` front end (``target_frames=None``: the length is set here).
    sample_rate: the separator's rate in Hz (the fbank runs at ``fbank.sample_rate``; resampled in the graph).
    mode: ``'frozen'`` | ``'updated'``. pooling: ``'aligned'`` | ``'paper'``.
    rngs: initialisation RNGs.

  Call: ``(mixture (batch, samples), condition (batch, condition_size)) -> {'waveform': (batch, samples)}``.

  Raises:
    ValueError: unknown mode / pooling, or a U-Net whose extra width is not the encoder's.
  """

  def __init__(self, unet: resunet.ResUNet30, encoder: vit.VisionTransformer, fbank: frontends.AudioMAEFbank, *,
               sample_rate: int, mode: str = "frozen", pooling: str = "aligned", rngs: nnx.Rngs):
    if mode not in FEATURE_MODES:
      raise ValueError(f"config.model.mae.mode must be one of {FEATURE_MODES}, got {mode!r}")
    if pooling not in POOLINGS:
      raise ValueError(f"config.model.mae.pooling must be one of {POOLINGS}, got {pooling!r}")
    if unet.extra_features != encoder.embed_dim:
      raise ValueError(f"ResUNet30 extra_features={unet.extra_features} != encoder width {encoder.embed_dim}")
    self.unet = unet
    self.encoder = encoder
    self.fbank = fbank
    self.sample_rate = int(sample_rate)
    self.mode, self.pooling = mode, pooling
    self.condition_size = unet.condition_size
    self.patch_frames = int(encoder.patch_embed.patch_size[0])
    d = encoder.embed_dim
    self.feature_bn = nnx.BatchNorm(d, momentum=1.0 - 0.1, epsilon=1e-5, rngs=rngs)
    self.layer_logits = (nnx.Param(jnp.zeros((encoder.depth,), jnp.float32)) if mode == "updated"
                         else nnx.data(None))

  def _encoder_input(self, mixture: jax.Array) -> jax.Array:
    x = mixture.astype(jnp.float32)
    if self.sample_rate != self.fbank.sample_rate:
      x = resample.resample_poly(x, *resample.resample_ratio(self.sample_rate, self.fbank.sample_rate))
    fb = self.fbank(x)
    frames = fb.shape[1]
    target = PAPER_FRAMES if self.pooling == "paper" else -(-frames // self.patch_frames) * self.patch_frames
    if frames > target:
      raise ValueError(f"pooling='paper' takes at most {PAPER_FRAMES} fbank frames (10 s), got {frames}")
    # Padding frames are fbank 0 before normalisation, as AudioMAEFbank pads.
    stats = self.fbank.stats
    pad_value = 0.0 if stats is None else -stats[0] / (2.0 * stats[1])
    return jnp.pad(fb, ((0, 0), (0, target - frames), (0, 0)), constant_values=pad_value)

  def token_features(self, mixture: jax.Array) -> tuple[jax.Array, tuple[int, int]]:
    """A-MAE features of the patch tokens ``(batch, T_tok * F_tok, D)`` (time-major) and the grid ``(T_tok, F_tok)``.

    ``'frozen'``: the encoder's last ``normed_tokens`` without gradient; ``'updated'``: the softmax-weighted sum of
    all block outputs.
    """
    fb = self._encoder_input(mixture)
    grid = self.encoder.grid_size(fb.shape[1], fb.shape[2])
    if self.mode == "frozen":
      self.encoder.eval()
      out = self.encoder(fb)
      tokens = jax.lax.stop_gradient(out["normed_tokens"] if "normed_tokens" in out else out["tokens"])
    else:
      layers = self.encoder(fb, return_layers=True)["layers"]  # (depth, batch, 1 + N, D)
      w = jax.nn.softmax(self.layer_logits[...].astype(jnp.float32))
      tokens = jnp.einsum("l,lbnd->bnd", w.astype(layers.dtype), layers)
    return tokens[:, 1:].astype(jnp.float32), grid

  def frame_features(self, mixture: jax.Array, stft_frames: int, hop_seconds: float) -> jax.Array:
    """``(batch, stft_frames, D)`` features per STFT frame (pooling of the module docstring), before ``feature_bn``."""
    tokens, (t_tok, f_tok) = self.token_features(mixture)
    b, _, d = tokens.shape
    if self.pooling == "paper":
      pooled = avg_max_pool(tokens.reshape(b, -1, PAPER_POOL, d), axis=2)  # (batch, 32, D)
      per_frame = jnp.repeat(pooled, PAPER_REPEAT, axis=1)
      if per_frame.shape[1] < stft_frames:
        per_frame = jnp.pad(per_frame, ((0, 0), (0, stft_frames - per_frame.shape[1]), (0, 0)), mode="edge")
      return per_frame[:, :stft_frames]
    pooled = avg_max_pool(tokens.reshape(b, t_tok, f_tok, d), axis=2)  # (batch, T_tok, D)
    return pooled[:, frame_token_index(stft_frames, t_tok, hop_seconds, self.patch_frames)]

  def __call__(self, mixture: jax.Array, condition: jax.Array, *,
               rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """Separates ``mixture`` ``(batch, samples)`` for ``condition`` ``(batch, condition_size)``: ``{'waveform'}``."""
    del rngs
    frames = 1 + mixture.shape[-1] // self.unet.hop_length  # the centred STFT's frame count
    feats = self.frame_features(mixture, frames, self.unet.hop_length / self.sample_rate)
    feats = self.feature_bn(feats)
    return self.unet(mixture, condition, features=feats)


def build_mae_resunet(config: ml_collections.ConfigDict, unet_kw: Mapping[str, Any], context: Mapping[str, Any],
                      rngs: nnx.Rngs) -> MAEResUNet:
  """The ``MAEResUNet`` of a separation config (``config.model.mae``: ``mode``, ``pooling``) and context
  (``mae_encoder``: ``size`` (a ``vit.VIT_PRESETS`` key) and the encoder's other ``VisionTransformer`` arguments,
  as the masked-pretraining run built it; ``mae_fbank``: the ``AudioMAEFbank`` fields), the U-Net from ``unet_kw``
  (``uss.build_separator``).

  Raises:
    KeyError: the context has no ``mae_encoder``.
  """
  mae_cfg = config.model.get("mae", ml_collections.ConfigDict())
  enc_kw = dict(context["mae_encoder"])
  size = enc_kw.pop("size", "base")
  enc_kw.update(global_pool=False, num_classes=0, drop_path=0.0)
  if "img_size" in enc_kw:
    enc_kw["img_size"] = tuple(enc_kw["img_size"])
  dtype = jnp.dtype(config.get("compute_dtype", "float32"))
  encoder = vit.build_vit(size, dtype=dtype, rngs=rngs, **enc_kw)
  fbank_kw = dict(context.get("mae_fbank", {}))
  fbank_kw.pop("name", None)
  fbank_kw["target_frames"] = None
  fbank = frontends.get_frontend("audiomae", **fbank_kw)
  unet = resunet.ResUNet30(**unet_kw, extra_features=encoder.embed_dim, rngs=rngs)
  return MAEResUNet(unet, encoder, fbank, sample_rate=int(config.data.sample_rate),
                    mode=mae_cfg.get("mode", "frozen"), pooling=mae_cfg.get("pooling", "aligned"), rngs=rngs)
