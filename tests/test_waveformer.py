"""Waveformer (seed 002 Sec. III-C / VI-B.3, vb000/Waveformer dcc_tf.py): layers against numpy transcriptions of the
PyTorch modules, the whole offline forward against a numpy transcription of Net.forward, chunk-by-chunk streaming
equal to the offline forward (also with the causal M2D through the AIE), and the system interface."""

import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uss_jax.models import interface, m2d
from uss_jax.models import waveformer as wf

RNG = np.random.default_rng(0)


def _randomize(module, seed=0, scale=0.3):
  rng = np.random.default_rng(seed)
  for _, p in nnx.iter_graph(module):
    if isinstance(p, nnx.Param):
      v = np.asarray(p.get_value())
      p.set_value(jnp.asarray(v + rng.normal(0.0, scale, v.shape), jnp.float32))


def A(x):  # noqa: N802
  return np.asarray(x, np.float64)


# ---- numpy transcription of dcc_tf.py (channels-last, float64) ----


def np_ln(x, w, b, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def np_dcc_layer(layer, x):
  """x (T, C) with zero context: Conv1d(C, C, 3, dilation d, groups=C) on cat(zeros(2d), x) -> LN -> ReLU -> 1x1 ->
  LN -> ReLU, residual."""
  d, k = layer.depthwise.dilation, layer.depthwise.kernel_size
  w, b = A(layer.depthwise.kernel[...])[:, 0], A(layer.depthwise.bias[...])  # (k, C)
  u = np.concatenate([np.zeros(((k - 1) * d, x.shape[1])), x])
  h = sum(w[j] * u[j * d:j * d + x.shape[0]] for j in range(k)) + b
  h = np.maximum(np_ln(h, A(layer.norm1.scale[...]), A(layer.norm1.bias[...])), 0)
  h = h @ A(layer.pointwise.kernel[...])[0] + A(layer.pointwise.bias[...])
  return x + np.maximum(np_ln(h, A(layer.norm2.scale[...]), A(layer.norm2.bias[...])), 0)


def np_grouped(g, x):
  """Conv1d(cin, cout, 1, groups) + ReLU."""
  k, b = A(g.kernel[...]), A(g.bias[...])  # (groups, cin/g, cout/g)
  xg = x.reshape(x.shape[0], k.shape[0], k.shape[1])
  return np.maximum(np.einsum("tgi,gio->tgo", xg, k).reshape(x.shape[0], -1) + b, 0)


def np_mha(mha, q_in, kv_in):
  w, b = A(mha.in_proj.kernel[...]), A(mha.in_proj.bias[...])
  d = q_in.shape[-1]
  h = mha.heads
  q, k, v = q_in @ w[:, :d] + b[:d], kv_in @ w[:, d:2 * d] + b[d:2 * d], kv_in @ w[:, 2 * d:] + b[2 * d:]
  out = []
  for i in range(h):
    s = slice(i * d // h, (i + 1) * d // h)
    a = q[:, s] @ k[:, s].T / math.sqrt(d // h)
    a = np.exp(a - a.max(-1, keepdims=True))
    out.append((a / a.sum(-1, keepdims=True)) @ v[:, s])
  return np.concatenate(out, -1) @ A(mha.out_proj.kernel[...]) + A(mha.out_proj.bias[...])


def np_decoder(model, tgt, mem):
  """CausalTransformerDecoder.forward on whole sequences (T a multiple of the chunk), zero context buffers."""
  ch, ctx = model.chunk, model.ctx
  pe = wf.positional_encoding(ctx + ch, tgt.shape[-1]).astype(np.float64)
  mem_full = np.concatenate([np.zeros((ctx, mem.shape[1])), mem])
  wins = lambda z: [z[b * ch:b * ch + ctx + ch] for b in range(tgt.shape[0] // ch)]  # noqa: E731
  mem_w = [w + pe for w in wins(mem_full)]
  for i, layer in enumerate(model.decoder):
    full = np.concatenate([np.zeros((ctx, tgt.shape[1])), tgt])
    out = []
    for b, win in enumerate(wins(full)):
      if i == 0:
        win = win + pe
      x = win[-ch:]
      n = lambda z, nm: np_ln(z, A(getattr(layer, nm).scale[...]), A(getattr(layer, nm).bias[...]))  # noqa: E731
      x = n(x + np_mha(layer.self_attn, x, win), "norm1")
      x = n(x + np_mha(layer.multihead_attn, x, mem_w[b]), "norm2")
      ff = np.maximum(x @ A(layer.linear1.kernel[...]) + A(layer.linear1.bias[...]), 0)
      out.append(n(x + ff @ A(layer.linear2.kernel[...]) + A(layer.linear2.bias[...]), "norm3"))
    tgt = np.concatenate(out)
  return tgt


def np_waveformer(model, x, emb):
  """Net.forward (lookahead padding, in_conv, DCC encoder, label integration, projections, decoder, skip, mask,
  output buffer + ConvTranspose1d(padding = B_o L) + tanh) for one example x (samples,) padded to whole chunks."""
  L = model.stride
  c = model.chunk_samples
  n = len(x)
  xp = np.pad(x, (0, -(-n // c) * c - n))
  p = np.pad(xp, (L, L))
  w = A(model.encoder.kernel[...])[:, 0]  # (3L, E)
  frames = len(xp) // L
  y = np.maximum(np.stack([p[f * L:f * L + 3 * L] @ w for f in range(frames)]), 0)  # (T, E)
  e = y
  for layer in model.dcc:
    e = np_dcc_layer(layer, e)
  l = emb[None] * e
  m = np_decoder(model, np_grouped(model.proj_e2d_l, l), np_grouped(model.proj_e2d_e, e))
  m = l + np_grouped(model.proj_d2e, m)
  z = np.concatenate([np.zeros((model.out_buf_len, y.shape[1])), y * m])  # (B_o + T, E)
  k = A(model.out_conv.kernel[...])[:, :, 0]  # (K, E): ConvTranspose1d(E, 1, K, stride L) weights
  full = np.zeros((z.shape[0] - 1) * L + k.shape[0])
  for f in range(z.shape[0]):
    full[f * L:f * L + k.shape[0]] += k @ z[f]
  pad = model.out_buf_len * L
  return np.tanh(full[pad:len(full) - pad])[:n]


@pytest.fixture(scope="session")
def tiny():
  model = wf.waveformer("tiny", 5, rngs=nnx.Rngs(0))
  _randomize(model)
  return model


def test_offline_forward_matches_numpy_transcription(tiny):
  x = RNG.normal(0, 0.3, (2, 700)).astype(np.float32)
  emb = np.asarray(tiny.class_embedding(jax.nn.one_hot(jnp.array([1, 4]), 5)))
  out = np.asarray(tiny.extract(jnp.asarray(x), jnp.asarray(emb)))
  for i in range(2):
    ref = np_waveformer(tiny, x[i].astype(np.float64), emb[i].astype(np.float64))
    np.testing.assert_allclose(out[i], ref, atol=2e-5)
  # Causal up to the lookahead and the decoder chunk: samples before the chunk that holds sample 400 - 32 - 1 do
  # not change when the input from sample 400 on changes.
  y = x.copy()
  y[:, 400:] = RNG.normal(0, 0.3, (2, 300))
  out2 = np.asarray(tiny.extract(jnp.asarray(y), jnp.asarray(emb)))
  c = tiny.chunk_samples
  safe = (400 - tiny.stride) // c * c
  assert np.abs(out2[:, :safe] - out[:, :safe]).max() == 0 and np.abs(out2 - out).max() > 0


def test_streaming_equals_offline(tiny):
  x = RNG.normal(0, 0.3, (2, 1001)).astype(np.float32)
  emb = tiny.embed_class(jnp.array([0, 3]))
  off = np.asarray(tiny.extract(jnp.asarray(x), emb))
  on, rtf = wf.stream_waveform(tiny, x, np.asarray(emb))
  assert on.shape == off.shape and rtf > 0
  np.testing.assert_allclose(on, off, atol=1e-5)
  state = tiny.stream_init(2)
  with pytest.raises(ValueError, match="chunks of"):
    tiny.stream_chunk(state, jnp.zeros((2, 5)), emb)


def test_streaming_with_causal_m2d_equals_offline():
  encoder = m2d.M2D(img_size=(80, 8), patch_size=(80, 2), embed_dim=16, depth=1, num_heads=2, rngs=nnx.Rngs(1))
  model = wf.waveformer("tiny", 5, rngs=nnx.Rngs(0), mixture_m2d=encoder, dec_chunk_size=10, dec_buf_len=10)
  _randomize(model, seed=2, scale=0.1)
  assert model.chunk_samples == 320
  x = RNG.normal(0, 0.3, (1, 320 * 7 + 5)).astype(np.float32)  # crosses two M2D units of 4 tokens
  emb = model.embed_class(jnp.array([2]))
  off = np.asarray(model.extract(jnp.asarray(x), emb))
  on, _ = wf.stream_waveform(model, x, np.asarray(emb))
  np.testing.assert_allclose(on, off, atol=1e-5)
  # The M2D features matter (the AIE branch is live).
  model.aie.layer_weights.set_value(model.aie.layer_weights[...] + 1.0)
  model.bottleneck.kernel.set_value(model.bottleneck.kernel[...] * 2.0)
  assert np.abs(np.asarray(model.extract(jnp.asarray(x), emb)) - off).max() > 1e-4
  with pytest.raises(ValueError, match="without overlap"):
    wf.waveformer("tiny", 5, rngs=nnx.Rngs(0), mixture_m2d=encoder, aie_kernels=(2, 25), aie_strides=(2, 20))


def test_system_interface_and_parameter_axes(tiny):
  tiny.info = interface.SystemInterface(name="waveformer", sample_rate=16000, segment_samples=8000,
                                        condition_size=tiny.embed_dim, query_kinds=("class", "audio"),
                                        streaming=True, class_names=tuple("abcde"))
  info = interface.check_system(tiny)
  assert info.streaming and info.condition_size == 16
  mix = jnp.asarray(RNG.normal(0, 0.1, (2, 900)), jnp.float32)
  cond = tiny.embed_audio(jnp.asarray(RNG.normal(0, 0.1, (2, 800)), jnp.float32))
  np.testing.assert_allclose(np.asarray(tiny.separate(mix, cond)["waveform"]),
                             np.asarray(tiny.extract(mix, cond)), atol=1e-6)
  both = tiny(mix, class_onehot=jax.nn.one_hot(jnp.array([1, 1, 2, 2]), 5), enrollment=jnp.zeros((4, 800)))
  assert both["class"].shape == both["enrollment"].shape == (4, 900)
  for path, var in nnx.to_flat_state(nnx.state(tiny, nnx.Param)):
    names = var.get_metadata().get("out_sharding") or var.get_metadata().get("sharding_names")
    assert names is not None and len(names) == var.get_value().ndim, path
