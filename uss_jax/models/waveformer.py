"""Waveformer: online target sound extraction (causal dilated convolutions + chunked causal transformer decoder),
with class-label and enrollment clues and an optional causal-M2D mixture encoder, offline and streaming, in Flax NNX.

Sources:
  * Veluri et al., "Real-time target sound extraction" (ICASSP 2023); reference implementation vb000/Waveformer
    ``src/training/dcc_tf.py`` (read for facts): ``in_conv`` = ``Conv1d(1, E, 3L, stride L, bias=False)`` + ReLU on
    the input padded by L zeros on each side (lookahead L samples); ``label_embedding`` Linear(C, 512) -> LN -> ReLU ->
    Linear(512, E) -> LN -> ReLU; ``DilatedCausalConvEncoder``: layers ``i = 0 .. 9`` of ``x + DSConv_i(cat(ctx_i,
    x))`` with ``DSConv`` = depthwise ``Conv1d(k=3, dilation 2^i)`` -> LN -> ReLU -> 1x1 -> LN -> ReLU and a context
    of ``2 * 2^i`` past frames; ``l = label * e``; ``proj_e2d_e`` / ``proj_e2d_l`` = ``Conv1d(E, D, 1, groups=D)`` +
    ReLU; ``CausalTransformerDecoder``: the frames cut into chunks of ``dec_chunk_size`` (13), each prepended with the
    ``dec_buf_len`` (13) frames before it (zeros before the start), sinusoidal positions (speechbrain
    ``PositionalEncoding``) added to the memory windows and to the first layer's target windows, post-norm
    ``TransformerDecoderLayer`` s (self-attention of the chunk's frames over the whole window, no mask inside it;
    cross-attention to the memory window; FF 2D with ReLU) whose per-layer inputs are buffered for the next chunk;
    ``proj_d2e`` = ``Conv1d(D, E, 1, groups=D)`` + ReLU; mask ``m = l + proj_d2e(...)``; output ``tanh(
    ConvTranspose1d(E, 1, (B_o + 1) L, stride L, padding B_o L)(cat(out_buf, y * m)))`` with ``B_o`` = 4 frames of
    output buffer; loss -0.9 SNR - 0.1 SI-SNR; Adam 5e-4.
  * seed 002 Sec. III-C / VI-B.3-4: stride L = 32, kernel 3L = 96, 10 DCC layers (k = 3, dilations 2^0..2^9), one
    MHA layer of 8 heads; class-label and enrollment clues as SoundBeam (the same clue networks: 2 FC + LN, and the
    TasNet enrollment encoder or M2D + MHFA); the M2D variant feeds the causal M2D's layer outputs through the AIE
    (``uss_jax.nn.aie``) and a 1x1 bottleneck over the encoded mixture concatenated with them.

Choices (configurable): E = 256 / D = 128 (the reference's ``dcc_tf_ckpt_E256_10_D128_1``; seed 002 does not state
them); no dropout (PyTorch's ``TransformerDecoderLayer`` default 0.1 is left out); the mask multiplies the encoded
mixture ``y`` also in the M2D variant (the bottleneck output only feeds the mask network); offline the input is
zero-padded to a whole number of decoder chunks (``chunk_samples`` = 13 x 32 = 416 samples) so that streaming and
offline see the same frames (the reference pads the last chunk with zero *frames*); the AIE of the M2D variant
upsamples x10 (kernels = strides = (2, 5): 320-sample tokens to 32-sample frames, each token to its own frames so
that streaming is exact; seed 002 prints {2, 2, 2, 1} / {2, 2, 2, 5}, i.e. x40, which fits an 8-sample hop).

Streaming (``stream_init`` / ``stream_chunk``): fixed chunks of ``chunk_samples`` (a multiple of the decoder chunk,
and of the M2D token when an M2D is used); state = input tail, DCC contexts, decoder buffers, output buffer (and
the causal M2D's state). The lookahead of L samples and the decoder's chunk-level attention make the output lag one
chunk: call ``k`` returns the offline output of samples ``[(k - 1) C, k C)`` (zeros for ``k = 0``);
``stream_waveform`` feeds a whole signal (plus one chunk of zeros) and returns exactly the offline output and the
real-time factor.

Layout channels-last ``(batch, frames, channels)``, waveforms ``(batch, samples)``. Logical axes: conv kernels
``(None, 'conv_in', 'conv_out')``, attention ``('embed', 'heads')`` / ``('heads', 'embed')``, FF ``('embed', 'mlp')``
/ ``('mlp', 'embed')``, norms ``('embed',)`` or ``('conv_out',)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uss_jax.nn import aie as aie_lib
from uss_jax.nn import partitioning
from uss_jax.nn.mhfa import torch_linear
from uss_jax.nn.tasnet import (CONV_AXES, DepthwiseConv1d, PointwiseConv1d, WaveformDecoder, WaveformEncoder,
                               _param, torch_uniform)
from uss_jax.models import soundbeam as sb

LN_EPS = 1e-5  # torch.nn.LayerNorm default

SIZES: dict[str, dict[str, Any]] = {
    "paper": dict(stride=32, enc_dim=256, dec_dim=128, num_enc_layers=10, num_dec_layers=1, dec_chunk_size=13,
                  dec_buf_len=13, out_buf_len=4, heads=8, class_hidden=512,
                  enrollment=dict(n_filters=512, kernel_size=40, stride=20, bottleneck=128, hidden=512, skip=128,
                                  conv_kernel=3, blocks=8)),
    "smoke": dict(stride=32, enc_dim=64, dec_dim=32, num_enc_layers=10, num_dec_layers=1, dec_chunk_size=13,
                  dec_buf_len=13, out_buf_len=4, heads=8, class_hidden=64,
                  enrollment=dict(n_filters=64, kernel_size=40, stride=20, bottleneck=32, hidden=64, skip=32,
                                  conv_kernel=3, blocks=3)),
    "tiny": dict(stride=32, enc_dim=16, dec_dim=8, num_enc_layers=4, num_dec_layers=1, dec_chunk_size=3,
                 dec_buf_len=3, out_buf_len=4, heads=2, class_hidden=16,
                 enrollment=dict(n_filters=16, kernel_size=40, stride=20, bottleneck=8, hidden=16, skip=8,
                                 conv_kernel=3, blocks=1)),
}


def _layer_norm(dim: int, names: str, rngs: nnx.Rngs, dtype: Any = None) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, epsilon=LN_EPS, use_fast_variance=False, dtype=dtype,
                       scale_metadata={"out_sharding": (names,)}, bias_metadata={"out_sharding": (names,)},
                       rngs=rngs)


def positional_encoding(length: int, dim: int) -> np.ndarray:
  """speechbrain ``PositionalEncoding``: ``pe[p, 2i] = sin(p w_i)``, ``pe[p, 2i + 1] = cos(p w_i)``, ``w_i =
  10000^(-2i / dim)``; ``(length, dim)`` float32."""
  pos = np.arange(length, dtype=np.float64)[:, None]
  div = np.exp(np.arange(0, dim, 2, dtype=np.float64) * -(math.log(10000.0) / dim))
  pe = np.zeros((length, dim))
  pe[:, 0::2] = np.sin(pos * div)
  pe[:, 1::2] = np.cos(pos * div)
  return pe.astype(np.float32)


class GroupedPointwise(nnx.Module):
  """``Conv1d(cin, cout, 1, groups=g)`` + ReLU (Waveformer's ``proj_e2d_*`` / ``proj_d2e``): kernel ``(g, cin/g,
  cout/g)``, bias ``(cout,)``, PyTorch default init (fan_in = cin / g)."""

  def __init__(self, cin: int, cout: int, groups: int, *, rngs: nnx.Rngs):
    if cin % groups or cout % groups:
      raise ValueError(f"grouped 1x1 conv: {cin} -> {cout} channels not divisible by {groups} groups")
    self.groups = int(groups)
    init = torch_uniform(cin // groups)
    self.kernel = _param(init, (None, "conv_in", "conv_out"), rngs, (groups, cin // groups, cout // groups))
    self.bias = _param(init, ("conv_out",), rngs, (cout,))

  def __call__(self, x: jax.Array) -> jax.Array:
    g = self.groups
    xg = x.reshape(x.shape[:-1] + (g, x.shape[-1] // g))
    y = jnp.einsum("...gi,gio->...go", xg, self.kernel[...].astype(x.dtype))
    return jax.nn.relu(y.reshape(x.shape[:-1] + (-1,)) + self.bias[...].astype(x.dtype))


class MultiheadAttention(nnx.Module):
  """``torch.nn.MultiheadAttention(D, heads, batch_first=True)``: fused ``in_proj`` (D -> 3D) and ``out_proj``."""

  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
    if dim % heads:
      raise ValueError(f"MultiheadAttention: {dim} channels not divisible by {heads} heads")
    self.heads = int(heads)
    self.in_proj = nnx.Linear(dim, 3 * dim, kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(),
                                                                             ("embed", "heads")),
                              bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("heads",)), rngs=rngs)
    self.out_proj = torch_linear(dim, dim, ("heads", "embed"), rngs=rngs)

  def __call__(self, query: jax.Array, key: jax.Array) -> jax.Array:
    d = query.shape[-1]
    w, b = self.in_proj.kernel[...], self.in_proj.bias[...]
    q = query @ w[:, :d] + b[:d]
    k = key @ w[:, d:2 * d] + b[d:2 * d]
    v = key @ w[:, 2 * d:] + b[2 * d:]
    h, hd = self.heads, d // self.heads
    split = lambda z: z.reshape(z.shape[:-1] + (h, hd))  # noqa: E731
    logits = jnp.einsum("...qhd,...khd->...hqk", split(q), split(k)) / math.sqrt(hd)
    att = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("...hqk,...khd->...qhd", att, split(v))
    return self.out_proj(out.reshape(out.shape[:-2] + (d,)))


class DecoderLayer(nnx.Module):
  """Waveformer ``CausalTransformerDecoderLayer`` (post-norm): the last ``chunk`` frames of the target window attend
  to the whole window, then to the memory window, then FF (ReLU); LayerNorm after each residual."""

  def __init__(self, dim: int, heads: int, ff_dim: int, *, rngs: nnx.Rngs):
    self.self_attn = MultiheadAttention(dim, heads, rngs=rngs)
    self.multihead_attn = MultiheadAttention(dim, heads, rngs=rngs)
    self.norm1, self.norm2, self.norm3 = (_layer_norm(dim, "embed", rngs) for _ in range(3))
    self.linear1 = torch_linear(dim, ff_dim, ("embed", "mlp"), rngs=rngs)
    self.linear2 = torch_linear(ff_dim, dim, ("mlp", "embed"), rngs=rngs)

  def __call__(self, tgt_window: jax.Array, mem_window: jax.Array, chunk: int) -> jax.Array:
    x = tgt_window[..., -chunk:, :]
    x = self.norm1(x + self.self_attn(x, tgt_window))
    x = self.norm2(x + self.multihead_attn(x, mem_window))
    return self.norm3(x + self.linear2(jax.nn.relu(self.linear1(x))))


class DCCLayer(nnx.Module):
  """One dilated causal conv layer: ``x + ReLU(LN(1x1(ReLU(LN(dwconv_causal(x))))))`` (kernel 3, dilation d)."""

  def __init__(self, channels: int, dilation: int, *, kernel_size: int = 3, rngs: nnx.Rngs):
    self.depthwise = DepthwiseConv1d(channels, kernel_size, dilation, rngs=rngs)
    self.norm1 = _layer_norm(channels, "conv_out", rngs)
    self.pointwise = PointwiseConv1d(channels, channels, rngs=rngs)
    self.norm2 = _layer_norm(channels, "conv_out", rngs)

  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    h, ctx = self.depthwise.causal(x, context)
    h = jax.nn.relu(self.norm1(h))
    return x + jax.nn.relu(self.norm2(self.pointwise(h))), ctx


class Waveformer(sb.ClueSystem, nnx.Module):
  """Waveformer TSE (module docstring) with class and enrollment clues.

  Args:
    num_classes: class-clue width.
    stride: L (32). enc_dim, dec_dim: E, D (256, 128; E a multiple of D). num_enc_layers: DCC layers (10).
    num_dec_layers: decoder layers (1). dec_chunk_size, dec_buf_len: decoder chunk / context frames (13, 13).
    out_buf_len: output buffer frames (4). heads: attention heads (8). class_hidden: label embedding width (512).
    enrollment: ``TasNetEnrollmentEncoder`` arguments (SoundBeam's) or None with ``enrollment_encoder`` given.
    enrollment_encoder: a module ``(batch, samples) -> (batch, E)`` (e.g. ``soundbeam.M2DEnrollmentEncoder``).
    mixture_m2d: an ``M2D`` run causally (frozen: its outputs are not differentiated) for the AIE, or None; it may
      be the same module as the enrollment encoder's (one set of weights, non-causal there).
    aie_kernels, aie_strides: the AIE cascade (must map one M2D token to whole frames without overlap).
    remat: rematerialise each DCC layer in the backward pass (``nnx.remat``).
    rngs: initialisation.

  Raises:
    ValueError: inconsistent sizes.
  """

  def __init__(self, num_classes: int, *, stride: int = 32, enc_dim: int = 256, dec_dim: int = 128,
               num_enc_layers: int = 10, num_dec_layers: int = 1, dec_chunk_size: int = 13, dec_buf_len: int = 13,
               out_buf_len: int = 4, heads: int = 8, class_hidden: int = 512,
               enrollment: Mapping[str, Any] | None = None, enrollment_encoder: nnx.Module | None = None,
               mixture_m2d: nnx.Module | None = None, aie_kernels: tuple[int, ...] = (2, 5),
               aie_strides: tuple[int, ...] = (2, 5), remat: bool = False, rngs: nnx.Rngs):
    if enc_dim % dec_dim:
      raise ValueError(f"Waveformer: enc_dim={enc_dim} must be a multiple of dec_dim={dec_dim}")
    self.num_classes, self.embed_dim, self.stride = int(num_classes), int(enc_dim), int(stride)
    self.chunk, self.ctx, self.out_buf_len, self.remat = int(dec_chunk_size), int(dec_buf_len), int(out_buf_len), \
        bool(remat)
    self.encoder = WaveformEncoder(enc_dim, 3 * stride, stride, activation="relu", rngs=rngs)
    self.class_encoder = sb.ClassClueEncoder(num_classes, class_hidden, enc_dim, rngs=rngs)
    if enrollment_encoder is None:
      enrollment_encoder = sb.TasNetEnrollmentEncoder(enc_dim, **dict(enrollment or SIZES["paper"]["enrollment"]),
                                                      rngs=rngs)
    self.enrollment_encoder = enrollment_encoder
    self.m2d = mixture_m2d
    if mixture_m2d is not None:
      up = int(np.prod(aie_strides))
      if mixture_m2d.token_samples != up * stride or any(k > s for k, s in zip(aie_kernels, aie_strides)):
        raise ValueError(f"Waveformer AIE: strides {aie_strides} (x{up}) with kernels {aie_kernels} must map one "
                         f"M2D token ({mixture_m2d.token_samples} samples) onto {mixture_m2d.token_samples // stride}"
                         " frames without overlap")
      self.aie = aie_lib.AdaptiveInputEnhancer(mixture_m2d.num_layers, mixture_m2d.feature_dim, enc_dim,
                                               kernels=aie_kernels, strides=aie_strides, rngs=rngs)
      self.bottleneck = PointwiseConv1d(2 * enc_dim, enc_dim, rngs=rngs)
    else:
      self.aie, self.bottleneck = nnx.data(None), nnx.data(None)
    self.dcc = nnx.List([DCCLayer(enc_dim, 2**i, rngs=rngs) for i in range(num_enc_layers)])
    self.proj_e2d_e = GroupedPointwise(enc_dim, dec_dim, dec_dim, rngs=rngs)
    self.proj_e2d_l = GroupedPointwise(enc_dim, dec_dim, dec_dim, rngs=rngs)
    self.decoder = nnx.List([DecoderLayer(dec_dim, heads, 2 * dec_dim, rngs=rngs) for _ in range(num_dec_layers)])
    self.proj_d2e = GroupedPointwise(dec_dim, enc_dim, dec_dim, rngs=rngs)
    self.out_conv = WaveformDecoder(enc_dim, (out_buf_len + 1) * stride, stride, rngs=rngs)

  # ---- sizes ----

  @property
  def chunk_samples(self) -> int:
    """The streaming chunk: one decoder chunk of frames (13 x 32 = 416 samples), or the least multiple of it that is
    also whole M2D tokens."""
    c = self.chunk * self.stride
    if self.m2d is not None:
      c = c * self.m2d.token_samples // math.gcd(c, self.m2d.token_samples)
    return c

  # ---- pieces shared by the offline and the streaming forward ----

  def _mask_input(self, y: jax.Array, m2d_layers: jax.Array | None) -> jax.Array:
    if self.m2d is None:
      return y
    a = self.aie(jax.lax.stop_gradient(m2d_layers), y.shape[1])
    return self.bottleneck(jnp.concatenate([y, a.astype(y.dtype)], axis=-1))

  def _dcc(self, x: jax.Array, contexts: list[jax.Array] | None) -> tuple[jax.Array, list[jax.Array]]:
    new = []
    for i, layer in enumerate(self.dcc):
      ctx = None if contexts is None else contexts[i]
      fn = lambda lyr, h, cc: lyr(h, cc)  # noqa: E731
      if self.remat:
        fn = nnx.remat(fn, prevent_cse=True, policy=jax.checkpoint_policies.nothing_saveable)
      else:
        fn = partitioning.remat(fn)  # the trainer's config.remat
      x, c = fn(layer, x, ctx)
      new.append(c)
    return x, new

  def _windows(self, x: jax.Array, buf: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """``(N, n, D)`` frames (n a multiple of the chunk) -> windows ``(N, n / chunk, ctx + chunk, D)`` and the new
    buffer (the last ``ctx`` frames of ``cat(buf, x)``)."""
    n, blocks = x.shape[1], x.shape[1] // self.chunk
    if buf is None:
      buf = jnp.zeros((x.shape[0], self.ctx, x.shape[2]), x.dtype)
    full = jnp.concatenate([buf.astype(x.dtype), x], axis=1)
    idx = np.arange(blocks)[:, None] * self.chunk + np.arange(self.ctx + self.chunk)[None, :]
    del n
    return full[:, idx], full[:, full.shape[1] - self.ctx:]

  def _decode(self, tgt: jax.Array, mem: jax.Array, bufs: list[jax.Array] | None) -> tuple[jax.Array, list]:
    pe = jnp.asarray(positional_encoding(self.ctx + self.chunk, tgt.shape[-1]))
    n, d = tgt.shape[1], tgt.shape[2]
    mem_win, mem_buf = self._windows(mem, None if bufs is None else bufs[0])
    mem_win = mem_win + pe
    new = [mem_buf]
    for i, layer in enumerate(self.decoder):
      win, buf = self._windows(tgt, None if bufs is None else bufs[i + 1])
      new.append(buf)
      if i == 0:
        win = win + pe
      tgt = layer(win, mem_win, self.chunk).reshape(tgt.shape[0], n, d)
    return tgt, new

  def _out(self, masked: jax.Array, out_buf: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    b, n, e = masked.shape
    if out_buf is None:
      out_buf = jnp.zeros((b, self.out_buf_len, e), masked.dtype)
    full = jnp.concatenate([out_buf.astype(masked.dtype), masked], axis=1)
    start = self.out_buf_len * self.stride
    wave = self.out_conv(full, start + n * self.stride + self.stride)[:, start:start + n * self.stride]
    return jnp.tanh(wave), full[:, full.shape[1] - self.out_buf_len:]

  def _mask(self, e: jax.Array, embedding: jax.Array, bufs) -> tuple[jax.Array, list]:
    l = embedding[:, None, :].astype(e.dtype) * e
    m, bufs = self._decode(self.proj_e2d_l(l), self.proj_e2d_e(e), bufs)
    return l + self.proj_d2e(m), bufs

  # ---- offline ----

  def extract(self, mixture: jax.Array, embedding: jax.Array) -> jax.Array:
    """Offline extraction: ``mixture`` ``(batch, samples)``, clue embeddings ``(batch * r, E)`` (rows ``i r .. i r +
    r - 1`` for mixture ``i``) -> ``(batch * r, samples)`` float32.

    Raises:
      ValueError: embedding rows not a multiple of the mixture batch.
    """
    batch, samples = mixture.shape
    if embedding.shape[0] % batch:
      raise ValueError(f"{embedding.shape[0]} clue embeddings for {batch} mixtures: need a multiple")
    r = embedding.shape[0] // batch
    c = self.chunk_samples
    padded = -(-samples // c) * c
    x = jnp.pad(mixture.astype(jnp.float32), ((0, 0), (0, padded - samples)))
    y = self.encoder(jnp.pad(x, ((0, 0), (self.stride, self.stride))))  # (batch, padded / L, E)
    layers = self.m2d(x, causal=True)["layers"] if self.m2d is not None else None
    e, _ = self._dcc(self._mask_input(y, layers), None)
    if r > 1:
      y, e = jnp.repeat(y, r, axis=0), jnp.repeat(e, r, axis=0)
    m, _ = self._mask(e, embedding, None)
    return self._out(y * m, None)[0][:, :samples].astype(jnp.float32)

  # ---- streaming ----

  def stream_init(self, batch: int) -> dict[str, Any]:
    """Zero state before the first chunk (module docstring)."""
    e, d = self.embed_dim, self.proj_e2d_e.kernel.shape[0]
    state = {
        "tail": jnp.zeros((batch, self.chunk_samples + self.stride), jnp.float32),
        "dcc": [jnp.zeros((batch, layer.depthwise.context_frames, e), jnp.float32) for layer in self.dcc],
        "decoder": [jnp.zeros((batch, self.ctx, d), jnp.float32) for _ in range(len(self.decoder) + 1)],
        "out": jnp.zeros((batch, self.out_buf_len, e), jnp.float32),
        "calls": jnp.zeros((), jnp.int32),
    }
    if self.m2d is not None:
      state["m2d"] = self.m2d.stream_init(batch)
    return state

  def stream_chunk(self, state: Mapping[str, Any], chunk: jax.Array,
                   embedding: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """One streaming call: ``chunk`` ``(batch, chunk_samples)`` (the next input samples), clue ``embedding``
    ``(batch, E)`` -> (output ``(batch, chunk_samples)``: the offline output one chunk earlier, new state).

    Raises:
      ValueError: a chunk of the wrong length.
    """
    c, L = self.chunk_samples, self.stride
    if chunk.shape[1] != c:
      raise ValueError(f"Waveformer stream_chunk: chunks of {c} samples, got {chunk.shape[1]}")
    chunk = chunk.astype(jnp.float32)
    tail = state["tail"]
    y = self.encoder(jnp.concatenate([tail, chunk[:, :L]], axis=1))  # the previous chunk's frames
    new: dict[str, Any] = {}
    layers = None
    if self.m2d is not None:
      m2d_state, steps = state["m2d"], []
      prev = tail[:, L:]  # the previous chunk's samples
      ts = self.m2d.token_samples
      for j in range(c // ts):
        out, m2d_state = self.m2d.stream_step(m2d_state, prev[:, j * ts:(j + 1) * ts])
        steps.append(out)
      layers = jnp.stack(steps, axis=2)
      new["m2d"] = m2d_state
    e, new["dcc"] = self._dcc(self._mask_input(y, layers), state["dcc"])
    m, new["decoder"] = self._mask(e, embedding, state["decoder"])
    out, new["out"] = self._out(y * m, state["out"])
    valid = state["calls"] > 0  # the first call has no previous chunk
    keep = lambda a, b: jnp.where(valid, a, b)  # noqa: E731
    new = jax.tree.map(keep, new, {k: state[k] for k in new})
    new["tail"] = jnp.concatenate([tail[:, tail.shape[1] - L:], chunk], axis=1)
    new["calls"] = state["calls"] + 1
    return jnp.where(valid, out, 0.0).astype(jnp.float32), new


def stream_step_fn(model: Waveformer):
  """A jitted ``(state, chunk, embedding) -> (output, state)`` of ``model.stream_chunk`` (``nnx.jit``: the weights are
  arguments, not compiled-in constants)."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def step(params, state, chunk, embedding):
    return nnx.merge(graphdef, params).stream_chunk(state, chunk, embedding)

  return lambda state, chunk, embedding: step(params, state, chunk, embedding)


def stream_waveform(model: Waveformer, mixture: np.ndarray, embedding: np.ndarray, *, sample_rate: int = 16000,
                    step_fn=None) -> tuple[np.ndarray, float]:
  """Streams ``mixture`` ``(batch, samples)`` through ``model`` chunk by chunk with carried state.

  The signal is zero-padded to whole chunks plus one more chunk (the one-chunk lag), the first chunk of output
  dropped and the rest cut to ``samples``: the result equals ``model.extract(mixture, embedding)``.

  Args:
    model: the Waveformer. mixture: ``(batch, samples)`` float at ``sample_rate`` Hz. embedding: ``(batch, E)`` clue
      embeddings (``embed_class`` / ``embed_audio``).
    sample_rate: Hz, for the real-time factor.
    step_fn: a ``stream_step_fn(model)`` to reuse across calls (default: a new one).

  Returns:
    ``(output (batch, samples) float32, real-time factor)``: wall time of the chunk calls after a compiling warm-up
    call, divided by the signal's duration ``samples / sample_rate`` (below 1 = faster than real time).
  """
  mixture = np.asarray(mixture, np.float32)
  batch, samples = mixture.shape
  c = model.chunk_samples
  total = (-(-samples // c) + 1) * c
  x = np.pad(mixture, ((0, 0), (0, total - samples)))
  step = step_fn or stream_step_fn(model)
  emb = jnp.asarray(embedding, jnp.float32)
  state = model.stream_init(batch)
  jax.block_until_ready(step(state, jnp.zeros((batch, c), jnp.float32), emb))  # compile outside the timing
  outs = []
  t0 = time.perf_counter()
  for k in range(total // c):
    out, state = step(state, jnp.asarray(x[:, k * c:(k + 1) * c]), emb)
    outs.append(out)
  jax.block_until_ready(outs[-1])
  wall = time.perf_counter() - t0
  y = np.concatenate([np.asarray(o) for o in outs], axis=1)[:, c:c + samples]
  return y, wall / (samples / float(sample_rate))


def waveformer(size: str, num_classes: int, *, rngs: nnx.Rngs, **overrides: Any) -> Waveformer:
  """A ``Waveformer`` of a named size (``SIZES``) with keyword overrides.

  Raises:
    ValueError: unknown size.
  """
  if size not in SIZES:
    raise ValueError(f"unknown Waveformer size {size!r}; expected one of {sorted(SIZES)}")
  return Waveformer(num_classes, **{**SIZES[size], **overrides}, rngs=rngs)


__all__ = ["Waveformer", "waveformer", "stream_waveform", "stream_step_fn", "positional_encoding", "SIZES", "CONV_AXES"]
