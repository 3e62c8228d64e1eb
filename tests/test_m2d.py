"""M2D (seed 002 Sec. IV / V): the converter on the released key set against a numpy transcription of the PyTorch
forward (nttcslab/m2d portable_m2d.py + timm blocks), offline and causal; streaming = offline; MHFA and AIE against
numpy transcriptions of their reference equations."""

import math

from flax import nnx
import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
from scipy.special import erf

from uss_jax.convert import common
from uss_jax.convert import m2d as convert_m2d
from uss_jax.models import m2d
from uss_jax.nn import aie, mhfa

EPS32 = float(np.finfo(np.float32).eps)
SMALL = dict(embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0)


def rule_checkpoint(model, extra=None):
  """A state_dict with the released key set of ``model`` filled by the fixtures' weight rule, plus training-only
  keys the converter must drop."""
  sd = common.rule_state_dict(list(convert_m2d.torch_shapes(model).items()))
  sd["norm_stats"] = np.asarray([-6.0, 4.5], np.float32)
  sd.update({"decoder_embed.weight": np.zeros((8, 32), np.float32), "target_blocks.0.norm1.weight": np.ones(32),
             "mask_token": np.zeros((1, 1, 8), np.float32)})
  sd.update(extra or {})
  return sd


# ---- numpy transcription of the PyTorch encoder (layout (B, 1, F, T), tokens (f t)) ----


def np_ln(x, w, b, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def np_cln(x, steps, w, b, eps=1e-6):
  """Conv-TasNet cLN: token i uses all channels of the tokens j with steps[j] <= steps[i]."""
  out = np.empty_like(x)
  for i in range(x.shape[1]):
    sel = x[:, steps <= steps[i]]
    mu = sel.mean(axis=(1, 2), keepdims=True)[:, 0]
    var = ((sel - mu[:, None]) ** 2).mean(axis=(1, 2), keepdims=True)[:, 0]
    out[:, i] = (x[:, i] - mu) / np.sqrt(var + eps) * w + b
  return out


def np_block(sd, i, x, heads, steps=None):
  p = lambda n: sd[f"blocks.{i}.{n}"].astype(np.float64)  # noqa: E731
  norm = (lambda z, n: np_ln(z, p(n + ".weight"), p(n + ".bias"))) if steps is None else \
      (lambda z, n: np_cln(z, steps, p(n + ".weight"), p(n + ".bias")))
  b, n, d = x.shape
  h = norm(x, "norm1")
  qkv = (h @ p("attn.qkv.weight").T + p("attn.qkv.bias")).reshape(b, n, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv
  logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads)
  if steps is not None:
    logits = np.where(steps[None, :] <= steps[:, None], logits, -np.inf)
  a = np.exp(logits - logits.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  o = (a @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
  x = x + o @ p("attn.proj.weight").T + p("attn.proj.bias")
  h = norm(x, "norm2") @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")
  h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
  return x + h @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")


def np_encode_unit(sd, lms, patch, heads, depth, causal):
  """lms (B, F, T) -> list of layer frame features (B, T_p, F_p * D)."""
  pf, pt = patch
  w = sd["patch_embed.proj.weight"].astype(np.float64)  # (D, 1, pf, pt)
  b, f, t = lms.shape
  fp, tp = f // pf, t // pt
  cut = lms.reshape(b, fp, pf, tp, pt)
  tok = np.einsum("bfatc,dac->bftd", cut, w[:, 0]) + sd["patch_embed.proj.bias"]  # (B, F_p, T_p, D)
  d = tok.shape[-1]
  x = tok.reshape(b, fp * tp, d)
  pos = sd["pos_embed"][0].astype(np.float64)
  t0 = (pos.shape[0] - 1) // fp
  pos_p = pos[1:].reshape(fp, t0, d)[:, :tp].reshape(fp * tp, d)
  cls = np.broadcast_to(sd["cls_token"][0] + pos[:1], (b, 1, d))
  h = np.concatenate([cls, x + pos_p], axis=1)
  steps = np.r_[-1, np.tile(np.arange(tp), fp)] if causal else None
  layers = [x]
  for i in range(depth):
    h = np_block(sd, i, h, heads, steps)
    layers.append(h[:, 1:])
  return [z.reshape(b, fp, tp, d).transpose(0, 2, 1, 3).reshape(b, tp, fp * d) for z in layers]


def np_encode(sd, lms, patch, unit, heads, depth, causal=False):
  """portable_m2d encode_lms: pad to whole patches, units of ``unit`` frames, concatenate."""
  pt = patch[1]
  lms = np.pad(lms, ((0, 0), (0, 0), (0, (-lms.shape[2]) % pt)))
  parts = [np_encode_unit(sd, lms[:, :, s:s + unit], patch, heads, depth, causal)
           for s in range(0, lms.shape[2], unit)]
  return np.stack([np.concatenate([p[i] for p in parts], axis=1) for i in range(depth + 1)])


@pytest.fixture(scope="module", params=[(16, 16), (80, 2)], ids=["16x16", "80x2"])
def converted(request):
  patch = request.param
  unit = 32 if patch == (16, 16) else 8
  abstract = nnx.eval_shape(lambda: m2d.M2D(img_size=(80, unit), patch_size=patch, rngs=nnx.Rngs(0), **SMALL))
  sd = rule_checkpoint(abstract)
  report = convert_m2d.convert_m2d({"module." + k: v for k, v in sd.items()}, abstract)
  return patch, unit, sd, abstract, report


def test_converter_matches_numpy_forward_any_length(converted):
  patch, unit, sd, model, report = converted
  assert report["dropped"] == ["decoder_embed.weight", "mask_token", "target_blocks.0.norm1.weight"]
  np.testing.assert_allclose(np.asarray(model.norm_stats[...]), [-6.0, 4.5])
  rng = np.random.default_rng(1)
  for frames in (unit - 3, 2 * unit + 5):  # shorter than a unit; two units and a partial one
    lms = rng.normal(0, 1, (2, frames, 80)).astype(np.float32)
    out = np.asarray(model.encode_lms(jnp.asarray(lms))["layers"])
    ref = np_encode(sd, lms.transpose(0, 2, 1).astype(np.float64), patch, unit, 4, 2)
    assert out.shape == ref.shape == (3, 2, -(-frames // patch[1]), (80 // patch[0]) * 32)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_waveform_front_end_is_the_m2d_log_mel_with_checkpoint_stats(converted):
  _, _, _, model, _ = converted
  x = np.random.default_rng(2).normal(0, 0.1, 3200).astype(np.float32)
  s = librosa.feature.melspectrogram(y=x, sr=16000, n_fft=400, hop_length=160, center=True, pad_mode="reflect",
                                     n_mels=80, fmin=50, fmax=8000)
  ref = (np.log(s + EPS32).T - (-6.0)) / 4.5
  np.testing.assert_allclose(np.asarray(model.log_mel(jnp.asarray(x[None])))[0], ref, atol=2e-3 / 4.5)


def test_converter_is_strict():
  model = nnx.eval_shape(lambda: m2d.M2D(img_size=(80, 8), patch_size=(80, 2), rngs=nnx.Rngs(0), **SMALL))
  sd = rule_checkpoint(model)
  with pytest.raises(ValueError, match="unknown keys.*head.weight"):
    convert_m2d.convert_m2d({**sd, "head.weight": np.zeros((3, 32))}, model)
  bad = dict(sd)
  bad["blocks.1.mlp.fc1.weight"] = np.zeros((64, 31), np.float32)
  with pytest.raises(ValueError, match="blocks.1.mlp.fc1.weight"):
    convert_m2d.convert_m2d(bad, model)
  missing = {k: v for k, v in sd.items() if k != "norm_stats"}
  with pytest.raises(ValueError, match="norm_stats"):
    convert_m2d.convert_m2d(missing, model)
  convert_m2d.convert_m2d(missing, model, norm_stats=(-7.1, 4.2))
  np.testing.assert_allclose(np.asarray(model.norm_stats[...]), [-7.1, 4.2], rtol=1e-6)
  assert convert_m2d.infer_config(sd)["patch_size"] == (80, 2)
  assert convert_m2d.parse_name("m2d_as_vit_base-80x608p16x16-240213") == {"img_size": (80, 608),
                                                                          "patch_size": (16, 16)}


def test_causal_m2d_matches_numpy_and_streams_exactly():
  model = m2d.M2D(img_size=(80, 8), patch_size=(80, 2), causal=True, rngs=nnx.Rngs(0), **SMALL)
  sd = rule_checkpoint(model)
  convert_m2d.convert_m2d(sd, model)
  rng = np.random.default_rng(3)
  lms = rng.normal(0, 1, (2, 21, 80)).astype(np.float32)
  out = np.asarray(model.encode_lms(jnp.asarray(lms))["layers"])
  ref = np_encode(sd, lms.transpose(0, 2, 1).astype(np.float64), (80, 2), 8, 4, 2, causal=True)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  # Causality: changing the future leaves the past unchanged; the front end frames end at their last sample.
  x = rng.normal(0, 0.1, (1, 320 * 10)).astype(np.float32)
  y = x.copy()
  y[:, 320 * 6:] = rng.normal(0, 0.1, (1, 320 * 4))
  a, b = (np.asarray(model(jnp.asarray(v))["layers"]) for v in (x, y))
  assert a.shape[2] == 10 and np.abs(a[:, :, :6] - b[:, :, :6]).max() == 0 and np.abs(a[:, :, 6:] - b[:, :, 6:]).max() > 0
  # Streaming, 320 samples per step over 2.5 units: equal to the offline forward.
  state = model.stream_init(1)
  step = jax.jit(model.stream_step)
  outs = []
  for t in range(10):
    o, state = step(state, jnp.asarray(x[:, 320 * t:320 * (t + 1)]))
    outs.append(np.asarray(o))
  np.testing.assert_allclose(np.stack(outs, axis=2), a, atol=1e-5 * np.abs(a).max())


# ---- MHFA and AIE ----


def test_mhfa_matches_numpy():
  layer = mhfa.MHFA(5, 12, 7, compression_dim=6, heads=3, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(4)
  layer.weights_k.set_value(jnp.asarray(rng.normal(size=5), jnp.float32))
  layer.weights_v.set_value(jnp.asarray(rng.normal(size=5), jnp.float32))
  z = rng.normal(size=(5, 2, 9, 12)).astype(np.float32)
  out = np.asarray(layer(jnp.asarray(z)))
  sm = lambda a, ax: np.exp(a - a.max(ax, keepdims=True)) / np.exp(a - a.max(ax, keepdims=True)).sum(ax, keepdims=True)  # noqa: E731
  p = lambda lin: (np.asarray(lin.kernel[...]), np.asarray(lin.bias[...]))  # noqa: E731
  k = np.tensordot(sm(np.asarray(layer.weights_k[...]), 0), z, 1) @ p(layer.cmp_linear_k)[0] + p(layer.cmp_linear_k)[1]
  v = np.tensordot(sm(np.asarray(layer.weights_v[...]), 0), z, 1) @ p(layer.cmp_linear_v)[0] + p(layer.cmp_linear_v)[1]
  att = sm(k @ p(layer.att_head)[0] + p(layer.att_head)[1], 1)  # (B, T, H), softmax over time
  pooled = np.stack([(att[:, :, h:h + 1] * v).sum(1) for h in range(3)], axis=1).reshape(2, -1)
  ref = pooled @ p(layer.pooling_fc)[0] + p(layer.pooling_fc)[1]
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def np_conv_transpose1d(x, w, b, stride):
  """PyTorch ConvTranspose1d: x (in, n), w (in, out, K): zero-insert by stride, full convolution per (in, out)."""
  cin, n = x.shape
  out = np.zeros((w.shape[1], (n - 1) * stride + w.shape[2]))
  for i in range(cin):
    up = np.zeros((n - 1) * stride + 1)
    up[::stride] = x[i]
    for o in range(w.shape[1]):
      out[o] += np.convolve(up, w[i, o])
  return out + b[:, None]


@pytest.mark.parametrize("kernels,strides", [((2, 25), (2, 20)), ((2, 2, 2, 1), (2, 2, 2, 5))])
def test_aie_matches_numpy(kernels, strides):
  layer = aie.AdaptiveInputEnhancer(4, 6, 5, kernels=kernels, strides=strides, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(5)
  layer.layer_weights.set_value(jnp.asarray(rng.normal(size=4), jnp.float32))
  z = rng.normal(size=(4, 2, 7, 6)).astype(np.float32)
  frames = 7 * 40 - 3
  out = np.asarray(layer(jnp.asarray(z), frames))
  w = np.exp(np.asarray(layer.layer_weights[...]))
  h = np.tensordot(w / w.sum(), z, 1)  # (B, T, D)
  for b in range(2):
    y = h[b].T
    for conv in layer.deconvs:
      # our kernel (K, in, out) is PyTorch's (in, out, K) transposed
      y = np_conv_transpose1d(y, np.asarray(conv.kernel[...]).transpose(1, 2, 0), np.asarray(conv.bias[...]),
                              conv.stride)
    assert layer.upsampling == 40
    y = np.pad(y, ((0, 0), (0, max(frames - y.shape[1], 0))))[:, :frames]  # cut / zero-padded to the frames
    np.testing.assert_allclose(out[b], y.T, rtol=1e-4, atol=1e-5)


def test_m2d_enrollment_output_norm_is_relu_of_layer_norm_of_the_mhfa_output():
  from uss_jax.models import soundbeam  # pylint: disable=import-outside-toplevel
  model = m2d.M2D(img_size=(80, 8), patch_size=(80, 2), rngs=nnx.Rngs(0), **SMALL)
  plain = soundbeam.M2DEnrollmentEncoder(model, 6, compression_dim=4, heads=2, rngs=nnx.Rngs(3))
  normed = soundbeam.M2DEnrollmentEncoder(model, 6, compression_dim=4, heads=2, output_norm="layernorm",
                                          rngs=nnx.Rngs(3))
  normed.output_norm.scale.set_value(jnp.linspace(0.5, 2.0, 6))
  normed.output_norm.bias.set_value(jnp.linspace(-0.3, 0.3, 6))
  wave = jnp.asarray(np.random.default_rng(2).normal(size=(2, 1600)) * 0.1, jnp.float32)
  e = np.asarray(plain(wave), np.float64)
  ln = (e - e.mean(1, keepdims=True)) / np.sqrt(e.var(1, keepdims=True) + 1e-5)
  ref = np.maximum(ln * np.linspace(0.5, 2.0, 6) + np.linspace(-0.3, 0.3, 6), 0)
  np.testing.assert_allclose(np.asarray(normed(wave)), ref, rtol=1e-4, atol=1e-5)
  assert np.abs(e).max() > 0 and (ref > 0).any() and (ref == 0).any()
  with pytest.raises(ValueError, match="output_norm"):
    soundbeam.M2DEnrollmentEncoder(model, 6, output_norm="batchnorm", rngs=nnx.Rngs(3))
