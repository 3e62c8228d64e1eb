"""Masked Modeling Duo (M2D) ViT encoder in Flax NNX, offline and causal (streaming), with per-layer outputs.

Sources:
  * Niizumi et al., "Masked Modeling Duo: Towards a Universal Audio Pre-training Framework" (TASLP 2024); reference
    implementation nttcslab/m2d ``examples/portable_m2d.py`` (``LocalViT.forward_encoder``, ``encode_lms``,
    ``to_feature``), ``m2d/runtime_audio.py`` (``drop_non_encoder_weights``): timm ViT-B (768, 12 blocks, 12 heads,
    mlp 4, qkv bias, LayerNorm eps 1e-6), a ``Conv2d(1, D, patch, stride=patch)`` over the log-mel ``(B, 1, F, T)``,
    tokens flattened (f t) (frequency-major, ``proj(x).flatten(2).transpose(1, 2)``), ``pos_embed`` (1, 1 + N, D) with
    the cls row first, shortened for short inputs by ``reshape(F, T0)[:, :T]``, cls = ``cls_token + pos_embed[0]``,
    final ``norm``; inputs longer than the nominal ``input_size`` are cut into nominal-length units encoded one by
    one and concatenated in time; features ``'b (f t) d -> b t (f d)'`` (768 x 5 = 3840 for 16x16 patches, 768 for
    80x2). Front end: ``uss_jax.audio.frontends.M2DLogMel`` with ``(x - mean) / std`` from the checkpoint's
    ``norm_stats`` (here a non-trainable variable, ``NormStats``, filled by ``uss_jax.convert.m2d``).
  * seed 002 Sec. IV (M2D-AS, 80x2 patches: 50 tokens/s) and Sec. V-C (causal M2D: "replacing attention and layer
    normalization of the ViT encoder blocks with causal alternatives, i.e., masked attention and cumulative layer
    normalization [Conv-TasNet]", keeping the non-causal weights).

Per-layer outputs (``layers``, seed 002 Sec. V-A / V-B: "the first CNN block and each ViT encoder block"): the patch
projection (before position embeddings) and the output of every block (before the final ``norm``), each as frame
features ``(batch, tokens_t, F_p * D)`` with the cls token left out (MHFA pools and the AIE upsamples the patch
tokens only, so the zero pad of the CNN output for the cls slot of Sec. V-B is not needed).

Causal mode (``causal=True``), the choices seed 002 leaves open:
  * front end: frames end at their last sample (``center=False`` on the waveform left-padded with ``n_fft - hop`` =
    240 zeros), so token ``t`` (mel frames ``2t, 2t + 1`` for 80x2 patches) depends on samples ``< 320 (t + 1)``;
  * attention: a token of time step ``t`` attends to the cls token and the tokens of time steps ``<= t``;
  * cumulative layer norm (Conv-TasNet Sec. II-C, cLN): mean / variance over the channels of all tokens up to its
    time step (cls included), then the LayerNorm's own scale and bias;
  * any length: nominal-length units as offline, each unit causal from its start (position embeddings, attention
    and cLN statistics restart), so the streaming state is of fixed size (``stream_init`` / ``stream_step``).

Layout: the model takes waveforms ``(batch, samples)``; internally features are ``(batch, frames, mel)``
(channels-last, time before frequency) and the patch projection is ``vit.PatchEmbed`` with a ``(time, freq)``
kernel (the converter transposes PyTorch's ``(D, 1, F, T)``), whose time-major tokens are reordered to (f t).
Logical axes as ``uss_jax.models.vit``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uss_jax.audio import mel as mel_lib
from uss_jax.models import vit

M2D_PRESETS: dict[str, dict[str, Any]] = {
    # ViT-B of the released checkpoints, e.g. m2d_as_vit_base-80x608p16x16-... / ...-80x200p80x2-...
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
}
LN_EPS = 1e-6
DEFAULT_NORM_STATS = (-7.1, 4.2)  # portable_m2d's fallback when a checkpoint has no norm_stats


class NormStats(nnx.Variable):
  """The log-mel normalisation statistics ``(mean, std)`` of a checkpoint (not trained)."""


def sincos_table(embed_dim: int, grid: Sequence[int]) -> np.ndarray:
  """``(1 + F T, D)`` 2-D sin-cos table for a ``(F, T)`` grid in (f t) order, cls row zero (MAE
  ``get_2d_sincos_pos_embed`` on ``(F, T)``: first half of the channels encodes the time index, second half the
  frequency index). Only the initial value: checkpoints overwrite it."""
  f, t = int(grid[0]), int(grid[1])
  ff, tt = np.meshgrid(np.arange(f), np.arange(t), indexing="ij")
  half = embed_dim // 2
  emb = np.concatenate([vit.sincos_1d(half, tt.reshape(-1).astype(np.float64)),
                        vit.sincos_1d(half, ff.reshape(-1).astype(np.float64))], axis=1)
  return np.concatenate([np.zeros((1, embed_dim)), emb], axis=0).astype(np.float32)


def cumulative_layer_norm(x: jax.Array, step: jax.Array, scale: jax.Array, bias: jax.Array, eps: float,
                          prefix: tuple[jax.Array, jax.Array, jax.Array] | None = None) -> jax.Array:
  """Cumulative layer norm over a token sequence grouped in time steps (Conv-TasNet cLN).

  Token ``i`` is normalised with the mean and (biased) variance of all channels of the tokens ``j`` with
  ``step[j] <= step[i]``; ``prefix`` = ``(sum, sum of squares, count)`` of earlier tokens (streaming).

  Args:
    x: ``(batch, n, D)``. step: ``(n,)`` int time step of each token, non-decreasing. scale, bias: ``(D,)``.
    eps: variance floor. prefix: ``((batch,), (batch,), ())`` running sums or None.

  Returns:
    ``(batch, n, D)`` in the dtype of ``x`` (statistics in float32).
  """
  dtype = x.dtype
  x32 = x.astype(jnp.float32)
  d = x.shape[-1]
  s1, s2 = jnp.sum(x32, axis=-1), jnp.sum(jnp.square(x32), axis=-1)  # (batch, n)
  same = step[None, :] <= step[:, None]  # (n_i, n_j): token j counts for token i
  same = same.astype(jnp.float32)
  c1, c2 = s1 @ same.T, s2 @ same.T
  count = jnp.sum(same, axis=1) * d
  if prefix is not None:
    c1, c2, count = c1 + prefix[0][:, None], c2 + prefix[1][:, None], count[None, :] + prefix[2][:, None]
  mean = c1 / count
  var = jnp.maximum(c2 / count - jnp.square(mean), 0.0)
  out = (x32 - mean[..., None]) * jax.lax.rsqrt(var[..., None] + eps) * scale + bias
  return out.astype(dtype)


def _attend(attn: vit.Attention, x: jax.Array, keys: jax.Array | None = None, values: jax.Array | None = None,
            mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``attn`` (a ``vit.Attention``) with an optional boolean mask ``(n_q, n_k)`` and optional extra cached keys /
  values ``(batch, m, heads, head_dim)`` placed before the new ones. Returns ``(out, k, v)`` (k, v of ``x``)."""
  b, n, d = x.shape
  qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  kk = k if keys is None else jnp.concatenate([keys, k], axis=1)
  vv = v if values is None else jnp.concatenate([values, v], axis=1)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, kk, precision=attn.precision) * attn.head_dim ** -0.5
  logits = logits.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, -1e30)
  weights = jax.nn.softmax(logits, axis=-1).astype(vv.dtype)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, vv, precision=attn.precision)
  return attn.proj(out.reshape(b, n, d)), k, v


class M2D(nnx.Module):
  """The M2D ViT encoder (module docstring) over waveforms.

  Args:
    img_size: nominal ``(mel bins, frames)`` of one unit (``input_size`` of the checkpoint folder name: 80 x 608
      for ``...-80x608p16x16-...``, 80 x 200 for ``...-80x200p80x2-...``).
    patch_size: ``(freq, time)`` (16 x 16 or 80 x 2).
    embed_dim, depth, num_heads, mlp_ratio: ViT-B 768 / 12 / 12 / 4 (``M2D_PRESETS``).
    norm_stats: initial ``(mean, std)`` of the log-mel (the converter sets the checkpoint's).
    causal: the default mode: causal attention + cumulative layer norm + causal front end (module docstring);
      ``__call__(..., causal=...)`` overrides it per call; streaming is always causal.
    sample_rate, n_fft, hop_length, fmin, fmax: the front end (16 kHz M2D: 400 / 160, 50-8000 Hz).
    norm_epsilon: LayerNorm eps (1e-6). dtype / param_dtype: compute / parameter dtypes. rngs: initialisation.

  Raises:
    ValueError: a patch that does not tile ``img_size`` or a bad head count.
  """

  def __init__(self, *, img_size: Sequence[int] = (80, 608), patch_size: Sequence[int] = (16, 16),
               embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
               norm_stats: Sequence[float] = DEFAULT_NORM_STATS, causal: bool = False, sample_rate: int = 16000,
               n_fft: int = 400, hop_length: int = 160, fmin: float = 50.0, fmax: float = 8000.0,
               norm_epsilon: float = LN_EPS, dtype: Any = None, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    bins, frames = int(img_size[0]), int(img_size[1])
    pf, pt = int(patch_size[0]), int(patch_size[1])
    if bins % pf or frames % pt:
      raise ValueError(f"M2D: patch {pf}x{pt} does not tile the input size {bins}x{frames}")
    self.bins, self.unit_frames, self.patch_f, self.patch_t = bins, frames, pf, pt
    self.grid = (bins // pf, frames // pt)  # (F_p, T_p) of one unit
    self.embed_dim, self.depth, self.causal, self.eps = int(embed_dim), int(depth), bool(causal), float(norm_epsilon)
    self.sample_rate, self.n_fft, self.hop_length = int(sample_rate), int(n_fft), int(hop_length)
    self.fmin, self.fmax = float(fmin), float(fmax)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.patch_embed = vit.PatchEmbed((pt, pf), in_channels=1, embed_dim=embed_dim, **kw)
    self.cls_token = nnx.Param(nnx.with_partitioning(nnx.initializers.normal(0.02), (None, None, "embed"))(
        rngs.params(), (1, 1, embed_dim), param_dtype))
    self.pos_embed = vit.PosEmbedTable(jnp.asarray(sincos_table(embed_dim, self.grid)[None], param_dtype),
                                       out_sharding=(None, None, "embed"))
    self.blocks = nnx.List([vit.Block(embed_dim, num_heads, mlp_ratio, norm_epsilon=norm_epsilon, **kw)
                            for _ in range(depth)])
    self.norm = vit._layer_norm(embed_dim, epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm_stats = NormStats(jnp.asarray(norm_stats, jnp.float32))

  # ---- sizes ----

  @property
  def num_layers(self) -> int:
    """Entries of ``layers``: the patch projection + every block."""
    return self.depth + 1

  @property
  def feature_dim(self) -> int:
    """Width of a frame feature: ``F_p * D``."""
    return self.grid[0] * self.embed_dim

  @property
  def token_samples(self) -> int:
    """Samples per token time step (``patch_t * hop``: 320 for 80x2 patches at 16 kHz)."""
    return self.patch_t * self.hop_length

  def _causal(self, causal: bool | None) -> bool:
    return self.causal if causal is None else bool(causal)

  def num_frames(self, samples: int, causal: bool | None = None) -> int:
    """Log-mel frames of ``samples`` samples (centre padding offline, left-aligned frames when causal)."""
    if self._causal(causal):
      return max(int(samples) + self.n_fft - self.hop_length - self.n_fft, 0) // self.hop_length + 1
    return 1 + int(samples) // self.hop_length

  def num_tokens(self, samples: int, causal: bool | None = None) -> int:
    """Token time steps ``ceil(frames / patch_t)`` (frames are zero-padded to whole patches)."""
    return -(-self.num_frames(samples, causal) // self.patch_t)

  # ---- front end ----

  def log_mel(self, waveform: jax.Array, causal: bool | None = None) -> jax.Array:
    """Normalised log-mel ``(batch, frames, bins)`` of ``(batch, samples)``: ``(log(mel + eps) - mean) / std``."""
    x = jnp.asarray(waveform, jnp.float32)
    causal = self._causal(causal)
    if causal:
      x = jnp.pad(x, ((0, 0), (self.n_fft - self.hop_length, 0)))
    mel = mel_lib.mel_spectrogram(x, self.sample_rate, self.n_fft, self.hop_length, self.bins, self.fmin, self.fmax,
                                  self.n_fft, "hann", not causal, "reflect", 2.0)
    stats = self.norm_stats[...]
    return (jnp.log(mel + mel_lib.FLOAT32_EPS) - stats[0]) / stats[1]

  # ---- encoder ----

  def _tokens(self, lms: jax.Array) -> tuple[jax.Array, int]:
    """Patch projection of ``(batch, frames, bins)`` -> ``((batch, F_p * T, D) in (f t) order, T)``."""
    x = self.patch_embed(lms)  # (batch, T * F_p, D) time-major
    t = x.shape[1] // self.grid[0]
    x = x.reshape(x.shape[0], t, self.grid[0], -1).transpose(0, 2, 1, 3)
    return x.reshape(x.shape[0], self.grid[0] * t, -1), t

  def _pos(self, t: int) -> tuple[jax.Array, jax.Array]:
    """(cls position ``(1, 1, D)``, patch positions ``(1, F_p * t, D)``) for ``t <= T_p`` time steps."""
    table = self.pos_embed[...]
    f, t0 = self.grid
    patches = table[:, 1:].reshape(1, f, t0, -1)[:, :, :t].reshape(1, f * t, -1)
    return table[:, :1], patches

  def _steps(self, t: int) -> jax.Array:
    """Time step of every token of a unit of ``t`` steps (cls = -1, then (f t) order)."""
    return jnp.asarray(np.r_[-1, np.tile(np.arange(t), self.grid[0])], jnp.int32)

  def _block(self, block: vit.Block, x: jax.Array, steps: jax.Array | None) -> jax.Array:
    if steps is None:
      return block(x)
    mask = steps[None, :] <= steps[:, None]
    h = cumulative_layer_norm(x, steps, block.norm1.scale[...], block.norm1.bias[...], self.eps)
    x = x + _attend(block.attn, h, mask=mask)[0]
    h = cumulative_layer_norm(x, steps, block.norm2.scale[...], block.norm2.bias[...], self.eps)
    return x + block.mlp(h)

  def _encode_unit(self, lms: jax.Array, causal: bool) -> tuple[list[jax.Array], jax.Array]:
    """One unit ``(batch, frames <= unit, bins)`` -> (layers, each ``(batch, T, F_p * D)``; final normed ``(batch,
    T, F_p * D)``)."""
    patches, t = self._tokens(lms)
    cls_pos, pos = self._pos(t)
    x = patches + pos.astype(patches.dtype)
    cls = jnp.broadcast_to((self.cls_token[...] + cls_pos).astype(x.dtype), (x.shape[0], 1, x.shape[2]))
    x = jnp.concatenate([cls, x], axis=1)
    steps = self._steps(t) if causal else None
    outs = [patches]
    for block in self.blocks:
      x = self._block(block, x, steps)
      outs.append(x[:, 1:])
    if causal:
      final = cumulative_layer_norm(x, steps, self.norm.scale[...], self.norm.bias[...], self.eps)
    else:
      final = self.norm(x)

    def frames(z):  # (batch, F_p * T, D) (f t) -> (batch, T, F_p * D)
      return z.reshape(z.shape[0], self.grid[0], t, -1).transpose(0, 2, 1, 3).reshape(z.shape[0], t, -1)

    return [frames(z) for z in outs], frames(final[:, 1:])

  def encode_lms(self, lms: jax.Array, causal: bool | None = None) -> dict[str, jax.Array]:
    """Normalised log-mel ``(batch, frames, bins)`` -> ``{'layers': (L + 1, batch, T, F_p D), 'features': (batch, T,
    F_p D)}`` with ``T = ceil(frames / patch_t)``: frames zero-padded to whole patches, cut into nominal units
    (portable_m2d ``encode_lms``), each encoded (the last may be shorter), concatenated in time.

    Raises:
      ValueError: a mel-bin count other than the model's.
    """
    if lms.ndim != 3 or lms.shape[2] != self.bins:
      raise ValueError(f"M2D expects a log-mel (batch, frames, {self.bins}), got {lms.shape}")
    causal = self._causal(causal)
    b, frames, _ = lms.shape
    pad = (-frames) % self.patch_t
    lms = jnp.pad(lms, ((0, 0), (0, pad), (0, 0)))
    frames += pad
    units, rest = divmod(frames, self.unit_frames)
    parts = []
    if units:
      full = lms[:, :units * self.unit_frames].reshape(b * units, self.unit_frames, self.bins)
      layers, final = self._encode_unit(full, causal)
      parts.append(([z.reshape(b, units * z.shape[1], -1) for z in layers],
                    final.reshape(b, units * final.shape[1], -1)))
    if rest:
      parts.append(self._encode_unit(lms[:, units * self.unit_frames:], causal))
    layers = [jnp.concatenate([p[0][i] for p in parts], axis=1) for i in range(self.num_layers)]
    return {"layers": jnp.stack(layers), "features": jnp.concatenate([p[1] for p in parts], axis=1)}

  def __call__(self, waveform: jax.Array, *, causal: bool | None = None) -> dict[str, jax.Array]:
    """Waveform ``(batch, samples)`` at ``sample_rate`` -> ``encode_lms`` outputs (``T = num_tokens(samples)``).

    ``causal`` overrides the model's mode for this call (one set of weights serves both: seed 002's Waveformer uses
    the non-causal M2D for enrollments and the causal one for the mixture)."""
    causal = self._causal(causal)
    return self.encode_lms(self.log_mel(waveform, causal), causal)

  # ---- streaming (causal only) ----

  def stream_init(self, batch: int) -> dict[str, jax.Array]:
    """The state of the causal forward before the first sample: an input tail of ``n_fft - hop`` zeros, empty key /
    value caches of one unit per block (cls keys / values inserted at the first step of each unit), cLN running
    sums, the step index."""
    n = 1 + self.grid[0] * self.grid[1]
    heads = self.blocks[0].attn.num_heads if self.depth else 1
    hd = self.embed_dim // heads
    return {"tail": jnp.zeros((batch, self.n_fft - self.hop_length), jnp.float32),
            "keys": jnp.zeros((self.depth, batch, n, heads, hd), jnp.float32),
            "values": jnp.zeros((self.depth, batch, n, heads, hd), jnp.float32),
            "norm_sums": jnp.zeros((self.depth, 2, 3, batch), jnp.float32),
            "step": jnp.zeros((), jnp.int32)}

  def stream_step(self, state: Mapping[str, jax.Array], samples: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One token time step: ``samples`` ``(batch, token_samples)`` (the next 320 samples) -> (``layers`` ``(L + 1,
    batch, F_p D)`` of that step, new state). Concatenating the steps' layers equals ``__call__`` on the whole
    waveform (for lengths that are whole token steps)."""
    b = samples.shape[0]
    f, t0 = self.grid
    x = jnp.concatenate([state["tail"], samples.astype(jnp.float32)], axis=1)
    mel = mel_lib.mel_spectrogram(x, self.sample_rate, self.n_fft, self.hop_length, self.bins, self.fmin, self.fmax,
                                  self.n_fft, "hann", False, "reflect", 2.0)
    stats = self.norm_stats[...]
    lms = (jnp.log(mel + mel_lib.FLOAT32_EPS) - stats[0]) / stats[1]  # (batch, patch_t, bins)
    patches, _ = self._tokens(lms)  # (batch, F_p, D)
    pos_in_unit = state["step"] % t0
    start = pos_in_unit == 0
    table = self.pos_embed[...]
    pos = jax.lax.dynamic_slice_in_dim(table[:, 1:].reshape(1, f, t0, -1), pos_in_unit, 1, axis=2)
    h = patches + pos.reshape(1, f, -1).astype(patches.dtype)
    cls = jnp.broadcast_to((self.cls_token[...] + table[:, :1]).astype(h.dtype), (b, 1, self.embed_dim))
    keys, values, sums = state["keys"], state["values"], state["norm_sums"]
    slot = 1 + pos_in_unit * f  # cache slots: cls at 0, then this unit's tokens in time order
    valid = jnp.arange(keys.shape[2]) < slot + f  # cls + every token so far (this step included)
    zero = jnp.zeros((1,), jnp.int32)
    same_step = jnp.zeros((f,), jnp.int32)
    new_keys, new_values, new_sums, outs = [], [], [], [patches.reshape(b, -1)]
    for i, block in enumerate(self.blocks):
      n1, n2 = block.norm1, block.norm2
      # The cls token (input-independent) through the block: its keys / values and cLN sums open every unit.
      c_att, ck, cv = _attend(block.attn, cumulative_layer_norm(cls, zero, n1.scale[...], n1.bias[...], self.eps))
      c_mid = cls + c_att
      c_out = c_mid + block.mlp(cumulative_layer_norm(c_mid, zero, n2.scale[...], n2.bias[...], self.eps))
      blk = jnp.where(start, jnp.stack([_sums(cls), _sums(c_mid)]), sums[i])  # (2 norms, 3, batch)
      k_i = jnp.where(start, keys[i].at[:, 0].set(ck[:, 0]), keys[i])
      v_i = jnp.where(start, values[i].at[:, 0].set(cv[:, 0]), values[i])
      hn = cumulative_layer_norm(h, same_step, n1.scale[...], n1.bias[...], self.eps, tuple(blk[0]))
      qkv = block.attn.qkv(hn).reshape(b, f, 3, block.attn.num_heads, block.attn.head_dim)
      k_i = jax.lax.dynamic_update_slice_in_dim(k_i, qkv[:, :, 1].astype(k_i.dtype), slot, axis=1)
      v_i = jax.lax.dynamic_update_slice_in_dim(v_i, qkv[:, :, 2].astype(v_i.dtype), slot, axis=1)
      logits = jnp.einsum("bqhd,bkhd->bhqk", qkv[:, :, 0], k_i) * block.attn.head_dim ** -0.5
      logits = jnp.where(valid[None, None, None, :], logits.astype(jnp.float32), -1e30)
      att = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1).astype(v_i.dtype), v_i)
      mid = h + block.attn.proj(att.reshape(b, f, -1))
      new_sums.append(jnp.stack([blk[0] + _sums(h), blk[1] + _sums(mid)]))
      h = mid + block.mlp(cumulative_layer_norm(mid, same_step, n2.scale[...], n2.bias[...], self.eps,
                                                tuple(blk[1])))
      new_keys.append(k_i)
      new_values.append(v_i)
      outs.append(h.reshape(b, -1))
      cls = c_out
    new_state = {"tail": x[:, -(self.n_fft - self.hop_length):], "keys": jnp.stack(new_keys),
                 "values": jnp.stack(new_values), "norm_sums": jnp.stack(new_sums), "step": state["step"] + 1}
    return jnp.stack(outs), new_state


def _sums(z: jax.Array) -> jax.Array:
  """``(3, batch)``: sum, sum of squares and count of the entries of ``z`` ``(batch, n, D)`` (cLN running sums)."""
  z = z.astype(jnp.float32)
  count = jnp.full((z.shape[0],), z.shape[1] * z.shape[2], jnp.float32)
  return jnp.stack([jnp.sum(z, axis=(1, 2)), jnp.sum(jnp.square(z), axis=(1, 2)), count])


def build_m2d(size: str = "base", **kwargs: Any) -> M2D:
  """An ``M2D`` of a preset (``M2D_PRESETS``) with other arguments passed on.

  Raises:
    ValueError: an unknown preset.
  """
  if size not in M2D_PRESETS:
    raise ValueError(f"unknown M2D size {size!r}; expected one of {sorted(M2D_PRESETS)}")
  return M2D(**{**M2D_PRESETS[size], **kwargs})
