"""uss_jax.models.cnn14 at test width against an independent numpy forward written in PyTorch layout (NCHW).

The numpy reference follows PANNs pytorch/models.py (ConvBlock, Cnn14, Cnn14_DecisionLevelMax) and
pytorch_utils.py (interpolate, pad_framewise_output) in float64, fed the same rule state_dict as the converter.
Full-size numerics are checked against the saved PyTorch fixtures in test_convert_panns.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from uss_jax.audio import frontends
from uss_jax.convert import common, panns
from uss_jax.models import cnn14
from uss_jax.models.cnn14 import Cnn14

CHANNELS = (4, 6, 8)  # two 2x2 poolings: 4 frames per segment
MELS = 16
FRAMES = 70  # 70 -> 35 -> 17 segments; 70 != 17 * 4, so the last-frame padding is exercised
CLASSES = 5
EMB = 7
EPS = 1e-5
MOMENTUM = 0.1  # PyTorch convention


# ---------------------------------------------------------------------------------------------------------------------
# numpy reference (PyTorch layout and semantics, float64)
# ---------------------------------------------------------------------------------------------------------------------


def _np_bn(x, sd, prefix, train, stats):
  """BatchNorm2d over axis 1 of NCHW; in train mode normalise with batch stats and record the running update."""
  w, b = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
  if train:
    axes = (0, 2, 3)
    mean, var = x.mean(axes), x.var(axes)  # biased, as flax keeps it (PyTorch's running_var uses unbiased)
    stats[f"{prefix}.running_mean"] = (1 - MOMENTUM) * sd[f"{prefix}.running_mean"] + MOMENTUM * mean
    stats[f"{prefix}.running_var"] = (1 - MOMENTUM) * sd[f"{prefix}.running_var"] + MOMENTUM * var
  else:
    mean, var = sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]
  shape = (1, -1, 1, 1)
  return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + EPS) * w.reshape(shape) + b.reshape(shape)


def _np_conv3x3(x, w):
  """nn.Conv2d(kernel 3, padding 1, no bias): cross-correlation, x (N, C, H, W), w (O, C, 3, 3)."""
  _, _, h, wd = x.shape
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  return sum(np.einsum("nchw,oc->nohw", xp[:, :, a:a + h, b:b + wd], w[:, :, a, b]) for a in range(3)
             for b in range(3))


def _np_avg_pool2(x):
  n, c, h, w = x.shape
  x = x[:, :, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def _np_forward(sd, logmel, head, train=False):
  """PANNs forward from log-mel (B, T, M); returns (outputs, running-stat updates)."""
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  stats = {}
  x = logmel.astype(np.float64)[:, None]  # (B, 1, T, M)
  x = _np_bn(x.transpose(0, 3, 2, 1), sd, "bn0", train, stats).transpose(0, 3, 2, 1)  # bn0 over mel bins
  for i in range(1, len(CHANNELS) + 1):
    p = f"conv_block{i}"
    x = np.maximum(_np_bn(_np_conv3x3(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1", train, stats), 0)
    x = np.maximum(_np_bn(_np_conv3x3(x, sd[f"{p}.conv2.weight"]), sd, f"{p}.bn2", train, stats), 0)
    if i < len(CHANNELS):
      x = _np_avg_pool2(x)
  x = x.mean(axis=3)  # (B, C, T')
  fc1 = lambda v: np.maximum(v @ sd["fc1.weight"].T + sd["fc1.bias"], 0)
  fc = lambda v: v @ sd["fc_audioset.weight"].T + sd["fc_audioset.bias"]
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  # F.max_pool1d / F.avg_pool1d(kernel 3, stride 1, padding 1), the average dividing by 3 at the edges too.
  t = x.shape[2]
  xm = np.pad(x, ((0, 0), (0, 0), (1, 1)), constant_values=-np.inf)
  xa = np.pad(x, ((0, 0), (0, 0), (1, 1)))
  smoothed = np.stack([xm[:, :, j:j + 3].max(-1) + xa[:, :, j:j + 3].sum(-1) / 3 for j in range(t)], axis=2)
  seg_h = fc1(smoothed.transpose(0, 2, 1))
  seg_logits = fc(seg_h)
  seg_out = sigmoid(seg_logits)
  ratio = 2**(len(CHANNELS) - 1)
  up = np.repeat(seg_out, ratio, axis=1)  # interpolate
  frames = logmel.shape[1]
  framewise = np.concatenate([up, np.repeat(up[:, -1:], frames - up.shape[1], axis=1)], axis=1)  # pad
  out = {"segmentwise_logits": seg_logits, "segmentwise_output": seg_out, "framewise_output": framewise}
  if head == "clip":
    h = fc1(x.max(axis=2) + x.mean(axis=2))
    out.update(embedding=h, logits=fc(h), clipwise_output=sigmoid(fc(h)))
  else:
    out.update(embedding=seg_h.max(1), logits=seg_logits.max(1), clipwise_output=seg_out.max(1))
  return out, stats


# ---------------------------------------------------------------------------------------------------------------------


def _tiny(head="clip", **kwargs):
  # Built abstractly (no random init); the converter gives every Param / BatchStat its rule value.
  model = nnx.eval_shape(lambda: Cnn14(CLASSES, channels=CHANNELS, embedding_dim=EMB, head=head, mel_bins=MELS,
                                       rngs=nnx.Rngs(0), **kwargs))
  sd = common.rule_state_dict(list(panns.torch_shapes(model).items()))
  panns.convert_cnn14(sd, model)
  return model, sd


@pytest.fixture(scope="session")
def logmel():
  rng = np.random.default_rng(3)
  return (rng.standard_normal((3, FRAMES, MELS)) * 8 - 40).astype(np.float32)  # dB-like values


def _rel(a, b):
  return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("head", ["clip", "decision_max"])
def test_tiny_eval_matches_numpy_pytorch_layout(head, logmel):
  model, sd = _tiny(head)
  model.eval()
  out = model.from_logmel(jnp.asarray(logmel))
  ref, _ = _np_forward(sd, logmel, head)
  assert set(out) == set(ref)
  for k in ref:
    assert out[k].shape == ref[k].shape, k
    assert _rel(out[k], ref[k]) < 2e-5, (k, _rel(out[k], ref[k]))
  # Framewise: segment j covers frames [4j, 4j + 4); frames past 17 * 4 = 68 repeat the last segment.
  fw = np.asarray(out["framewise_output"])
  np.testing.assert_array_equal(fw[:, 68:], np.repeat(fw[:, 67:68], 2, axis=1))


def test_train_mode_batch_norm_statistics_and_outputs_match_numpy(logmel):
  # Dropout off (rate 0) so the train-mode forward is deterministic: outputs use batch statistics and every
  # BatchNorm's running mean / var moves by momentum 0.1 (PyTorch convention) towards the batch statistics.
  model, sd = _tiny("clip", dropout=0.0, head_dropout=0.0, spec_augment=False)
  model.train()
  out = model.from_logmel(jnp.asarray(logmel))
  ref, stats = _np_forward(sd, logmel, "clip", train=True)
  assert _rel(out["logits"], ref["logits"]) < 2e-5
  assert _rel(out["embedding"], ref["embedding"]) < 2e-5
  assert len(stats) == 2 * (1 + 2 * len(CHANNELS))
  flat = {tuple(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))}
  for key, value in stats.items():
    *prefix, name = key.split(".")
    path = tuple(prefix) + ({"running_mean": "mean", "running_var": "var"}[name],)
    np.testing.assert_allclose(flat[path], value, rtol=2e-5, atol=2e-6, err_msg=key)


def test_eval_mode_invariances(logmel):
  model, _ = _tiny("decision_max")
  model.eval()
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  batch = model.from_logmel(jnp.asarray(logmel))
  # Eval mode uses running statistics: an example's output does not depend on the rest of the batch, no rngs are
  # needed, the running statistics stay put, and repeated calls agree exactly.
  for i in range(logmel.shape[0]):
    single = model.from_logmel(jnp.asarray(logmel[i:i + 1]))
    for k in batch:
      np.testing.assert_allclose(np.asarray(single[k])[0], np.asarray(batch[k])[i], rtol=1e-5, atol=1e-6)
  after = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  jax.tree.map(np.testing.assert_array_equal, before, after)
  again = model.from_logmel(jnp.asarray(logmel))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, batch), jax.tree.map(np.asarray, again))
  # sigmoid(logits) == clipwise (max of per-segment sigmoids) and framewise repeats segmentwise.
  np.testing.assert_allclose(jax.nn.sigmoid(batch["logits"]), batch["clipwise_output"], rtol=1e-6)
  np.testing.assert_array_equal(batch["framewise_output"][:, :4], jnp.repeat(batch["segmentwise_output"][:, :1], 4, 1))


def test_train_mode_dropout_needs_rngs_and_is_random(logmel):
  model, _ = _tiny("clip")
  model.train()
  x = jnp.asarray(logmel)
  with pytest.raises(ValueError, match="rngs"):  # nnx.Dropout without an RNG stream in train mode
    model.from_logmel(x)
  a = model.from_logmel(x, rngs=nnx.Rngs(dropout=1))["embedding"]
  b = model.from_logmel(x, rngs=nnx.Rngs(dropout=2))["embedding"]
  c = model.from_logmel(x, rngs=nnx.Rngs(dropout=1))["embedding"]
  assert not np.allclose(a, b)
  # embedding = dropout(relu(fc1)) with rate 0.5: about half the positive units are zeroed, the rest doubled.
  frac_zero = float(np.mean(np.asarray(a) == 0))
  assert 0.4 < frac_zero < 0.95
  assert np.isfinite(np.asarray(c)).all()


def test_spec_augment_hook_runs_in_train_mode_only(logmel):
  calls = []

  def spec_augment(x, *, rngs):
    calls.append((x.shape, rngs))
    return x.at[:, :8].set(0.0)  # a time mask of 8 frames

  model, _ = _tiny("clip", spec_augment=spec_augment, dropout=0.0, head_dropout=0.0)
  x = jnp.asarray(logmel)
  model.eval()
  model.from_logmel(x)
  assert not calls
  model.train()
  rngs = nnx.Rngs(0)
  out = model.from_logmel(x, rngs=rngs)
  assert calls == [((3, FRAMES, MELS), rngs)]
  plain, _ = _tiny("clip", dropout=0.0, head_dropout=0.0, spec_augment=False)
  plain.train()
  assert not np.allclose(out["logits"], plain.from_logmel(x)["logits"])


def test_default_spec_augment_masks_stripes_in_train_mode_only():
  # PANNs SpecAugmentation after bn0: <= 2 time stripes of <= 64 frames and <= 2 mel stripes of <= 8 bins set to 0.
  x = jnp.ones((4, 200, MELS))
  masked = np.asarray(cnn14.panns_spec_augment(x, rngs=nnx.Rngs(augment=0)))
  for m in masked:
    zero_frames = np.flatnonzero((m == 0).all(axis=1))
    zero_bins = np.flatnonzero((m == 0).all(axis=0))
    assert len(zero_frames) <= 128 and len(zero_bins) <= 16
    np.testing.assert_array_equal(m == 0, np.isin(np.arange(200), zero_frames)[:, None]
                                  | np.isin(np.arange(MELS), zero_bins)[None, :])
  assert (masked == 0).any()
  model, _ = _tiny("clip", dropout=0.0, head_dropout=0.0)  # spec_augment=True by default
  model.eval()
  y = jnp.asarray(np.random.default_rng(0).standard_normal((2, FRAMES, MELS)), jnp.float32)
  np.testing.assert_array_equal(model.from_logmel(y)["logits"], model.from_logmel(y)["logits"])
  model.train()
  a = model.from_logmel(y, rngs=nnx.Rngs(augment=1))["logits"]
  b = model.from_logmel(y, rngs=nnx.Rngs(augment=2))["logits"]
  assert not np.allclose(a, b)


def test_frontend_is_called_on_waveforms(logmel):
  model, _ = _tiny("clip")
  model.eval()
  with pytest.raises(ValueError, match="front end"):
    model(jnp.zeros((1, 1000)))
  # By name: the registry's PANNs log-mel with the model's settings.
  model.set_frontend("panns")
  assert model.frontend == frontends.get_frontend("panns", sample_rate=32000, n_fft=1024, hop_length=320,
                                                  n_mels=MELS, fmin=50.0, fmax=14000.0)
  wav = jnp.asarray(np.random.default_rng(1).standard_normal((2, 320 * 40)) * 0.1, jnp.float32)
  out = model(wav)
  np.testing.assert_array_equal(out["logmel"], model.frontend(wav))
  assert out["framewise_output"].shape == (2, 41, CLASSES)
  # Any callable waveform -> log-mel works; here one that reshapes samples into (frames, mels).
  model.set_frontend(lambda wav: wav.reshape(wav.shape[0], FRAMES, MELS))
  wav = jnp.asarray(logmel.reshape(3, -1))
  out = model(wav)
  np.testing.assert_array_equal(out["logmel"], logmel)
  np.testing.assert_array_equal(out["logits"], model.from_logmel(jnp.asarray(logmel))["logits"])
  with pytest.raises(ValueError, match="frames"):
    model.from_logmel(jnp.zeros((1, 3, MELS)))


def test_full_size_layout_and_parameter_count():
  # PANNs Table I: Cnn14 has 80.753615 M parameters (81,837,071 in the fixture's PyTorch model minus the 1,083,456
  # front-end kernels: 2 * 513 * 1024 STFT + 513 * 64 mel). Built abstractly: nothing is allocated.
  model = nnx.eval_shape(lambda: Cnn14(rngs=nnx.Rngs(0)))
  assert cnn14.count_params(model) == 80_753_615 == 81_837_071 - (2 * 513 * 1024 + 513 * 64)
  assert model.conv_block1.conv1.kernel.shape == (3, 3, 1, 64)
  assert model.conv_block6.conv2.kernel.shape == (3, 3, 2048, 2048)
  assert model.fc1.kernel.shape == (2048, 2048) and model.fc_audioset.kernel.shape == (2048, 527)
  assert model.bn0.scale.shape == (64,) and model.frames_per_segment == 32
  assert model.conv_block3.conv1.kernel.get_metadata()["out_sharding"] == (None, None, "conv_in", "conv_out")
  assert model.conv_block3.bn1.scale.get_metadata()["out_sharding"] == ("conv_out",)
  assert model.fc_audioset.kernel.get_metadata()["out_sharding"] == ("embed", "classes")
  # 10 s at 32 kHz -> 1001 frames -> 31 segments, as in the fixtures.
  model.eval()
  out = nnx.eval_shape(lambda m, x: m.from_logmel(x), model, jax.ShapeDtypeStruct((2, 1001, 64), jnp.float32))
  assert out["segmentwise_logits"].shape == (2, 31, 527) and out["framewise_output"].shape == (2, 1001, 527)


def test_helpers_match_pytorch_pooling_semantics():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 3)).astype(np.float32)
  got = np.asarray(cnn14.smooth_segments(jnp.asarray(x)))
  # By hand at the first step: max(-inf, x0, x1) + (0 + x0 + x1) / 3.
  np.testing.assert_allclose(got[:, 0], np.maximum(x[:, 0], x[:, 1]) + (x[:, 0] + x[:, 1]) / 3, rtol=1e-6)
  np.testing.assert_allclose(got[:, 2], x[:, 1:4].max(1) + x[:, 1:4].mean(1), rtol=1e-6)
  y = rng.standard_normal((1, 7, 5, 2)).astype(np.float32)
  pooled = np.asarray(cnn14.avg_pool_floor(jnp.asarray(y), (2, 2)))
  assert pooled.shape == (1, 3, 2, 2)
  np.testing.assert_allclose(pooled[0, 2, 1], y[0, 4:6, 2:4].mean((0, 1)), rtol=1e-6)
