"""SoundBeam (seed 002): layers against numpy transcriptions, the loss against Eq. (2), the TSE task end to end."""

import os
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spine_utils import REPO
from uss_jax.models import soundbeam as sb
from uss_jax.tasks import tse

RNG = np.random.default_rng(0)


def _set(param, value):
  param.set_value(jnp.asarray(value, jnp.float32))


def _randomize(module, seed=0):
  """Random values in every parameter (so that norms / PReLU / biases are not at their trivial init)."""
  rng = np.random.default_rng(seed)
  for _, p in nnx.iter_graph(module):
    if isinstance(p, nnx.Param):
      p.set_value(jnp.asarray(rng.normal(0.0, 0.5, p.get_value().shape), jnp.float32))


# ---- numpy references (PyTorch layout: (channels, time)) ----


def np_conv1d_encoder(x, w, stride):
  """Conv1d(1 -> N, kernel K, stride S, bias=False) of x (samples,) padded on the right to cover every sample;
  w (N, K) PyTorch filters. Returns (frames, N)."""
  k = w.shape[1]
  frames = max(-(-(len(x) - k) // stride), 0) + 1
  xp = np.pad(x, (0, (frames - 1) * stride + k - len(x)))
  return np.stack([np.correlate(xp, w[n], "valid")[::stride] for n in range(w.shape[0])], axis=1)


def np_conv_transpose1d(y, w, stride, length):
  """ConvTranspose1d(N -> 1, kernel K, stride S, bias=False): zero-insert upsampling then full convolution, per
  filter, summed; y (frames, N), w (N, K). Trimmed / padded to ``length``."""
  frames = y.shape[0]
  out = 0
  for n in range(w.shape[0]):
    up = np.zeros((frames - 1) * stride + 1)
    up[::stride] = y[:, n]
    out = out + np.convolve(up, w[n])
  out = np.pad(out, (0, max(length - len(out), 0)))
  return out[:length]


def np_gln(x, gamma, beta, eps):
  """gLN over (C, T) of one example, x (C, T)."""
  mean = x.mean()
  var = ((x - mean) ** 2).mean()
  return gamma[:, None] * (x - mean) / np.sqrt(var + eps) + beta[:, None]


def np_prelu(x, a):
  return np.where(x >= 0, x, a * x)


def np_depthwise(x, w, b, dilation):
  """Conv1d(C, C, P, dilation=d, groups=C, padding=(P-1)d/2) via np.correlate with the dilated kernel; x (C, T),
  w (C, P)."""
  p = w.shape[1]
  pad = (p - 1) * dilation // 2
  out = []
  for c in range(x.shape[0]):
    kd = np.zeros((p - 1) * dilation + 1)
    kd[::dilation] = w[c]
    out.append(np.correlate(np.pad(x[c], (pad, pad)), kd, "valid") + b[c])
  return np.stack(out)


def np_conv1x1(x, w, b):
  """Conv1d(in, out, 1); x (in, T), w (out, in)."""
  return w @ x + b[:, None]


def np_tcn_block(x, p):
  """asteroid Conv1DBlock in PyTorch layout, x (B, T)."""
  z = np_conv1x1(x, p["in_w"], p["in_b"])
  z = np_gln(np_prelu(z, p["a1"]), p["g1"], p["b1"], p["eps"])
  z = np_depthwise(z, p["dw_w"], p["dw_b"], p["d"])
  z = np_gln(np_prelu(z, p["a2"]), p["g2"], p["b2"], p["eps"])
  return np_conv1x1(z, p["res_w"], p["res_b"]), np_conv1x1(z, p["skip_w"], p["skip_b"])


def block_params_torch_layout(block: sb.TCNBlock, eps: float) -> dict:
  """Our channels-last parameters re-expressed in PyTorch layout (the numpy reference's own)."""
  g = lambda v: np.asarray(v.get_value(), np.float64)  # noqa: E731
  return {
      "in_w": g(block.conv_in.kernel)[0].T, "in_b": g(block.conv_in.bias), "a1": g(block.act1.weight)[0],
      "g1": g(block.norm1.scale), "b1": g(block.norm1.bias), "dw_w": g(block.depthwise.kernel)[:, 0, :].T,
      "dw_b": g(block.depthwise.bias), "d": block.dilation, "a2": g(block.act2.weight)[0],
      "g2": g(block.norm2.scale), "b2": g(block.norm2.bias), "res_w": g(block.res_conv.kernel)[0].T,
      "res_b": g(block.res_conv.bias), "skip_w": g(block.skip_conv.kernel)[0].T, "skip_b": g(block.skip_conv.bias),
      "eps": eps}


# ---- layers ----


@pytest.mark.parametrize("kernel,stride,samples", [(16, 8, 203), (40, 20, 400), (16, 8, 10)])
def test_encoder_and_decoder_match_numpy_convolutions(kernel, stride, samples):
  n = 6
  enc = sb.WaveformEncoder(n, kernel, stride, activation="linear", rngs=nnx.Rngs(0))
  dec = sb.WaveformDecoder(n, kernel, stride, rngs=nnx.Rngs(1))
  x = RNG.normal(size=(2, samples)).astype(np.float32)
  y = np.asarray(enc(jnp.asarray(x)))
  w_enc = np.asarray(enc.kernel.get_value())[:, 0, :].T  # (N, K) PyTorch filters
  for i in range(2):
    np.testing.assert_allclose(y[i], np_conv1d_encoder(x[i], w_enc, stride), rtol=1e-5, atol=1e-5)
  assert y.shape[1] == sb.num_frames(samples, kernel, stride)
  # ReLU encoder = relu of the linear one.
  enc_relu = sb.WaveformEncoder(n, kernel, stride, activation="relu", rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.asarray(enc_relu(jnp.asarray(x))), np.maximum(y, 0), rtol=1e-6, atol=1e-6)
  frames = RNG.normal(size=(2, y.shape[1], n)).astype(np.float32)
  out = np.asarray(dec(jnp.asarray(frames), samples))
  w_dec = np.asarray(dec.kernel.get_value())[:, :, 0].T  # (N, K)
  for i in range(2):
    np.testing.assert_allclose(out[i], np_conv_transpose1d(frames[i], w_dec, stride, samples), rtol=1e-5, atol=1e-5)


def test_global_layer_norm_matches_numpy():
  norm = sb.GlobalLayerNorm(5, eps=1e-8, rngs=nnx.Rngs(0))
  gamma, beta = RNG.normal(size=5), RNG.normal(size=5)
  _set(norm.scale, gamma)
  _set(norm.bias, beta)
  x = (3.0 + 2.0 * RNG.normal(size=(3, 11, 5))).astype(np.float32)
  got = np.asarray(norm(jnp.asarray(x)))
  for i in range(3):
    np.testing.assert_allclose(got[i].T, np_gln(x[i].T.astype(np.float64), gamma, beta, 1e-8), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dilation", [1, 4])
def test_tcn_block_matches_numpy_transcription(dilation):
  block = sb.TCNBlock(4, 6, 3, 3, dilation, rngs=nnx.Rngs(0))
  _randomize(block)
  x = RNG.normal(size=(2, 13, 4)).astype(np.float32)
  res, skip = block(jnp.asarray(x))
  p = block_params_torch_layout(block, sb.GLN_EPS)
  for i in range(2):
    r_ref, s_ref = np_tcn_block(x[i].T.astype(np.float64), p)
    np.testing.assert_allclose(np.asarray(res[i]).T, r_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(skip[i]).T, s_ref, rtol=1e-4, atol=1e-4)


def test_multiplicative_adaptation_function():
  res, skip = RNG.normal(size=(2, 5, 3)), RNG.normal(size=(2, 5, 4))
  emb = RNG.normal(size=(2, 7))
  r, s = sb.multiplicative_adaptation(jnp.asarray(res), jnp.asarray(skip), jnp.asarray(emb))
  np.testing.assert_allclose(np.asarray(r), res * emb[:, None, :3], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(s), skip * emb[:, None, 3:], rtol=1e-6)
  with pytest.raises(ValueError, match="B \\+ Sc"):
    sb.multiplicative_adaptation(jnp.asarray(res), jnp.asarray(skip), jnp.asarray(emb[:, :6]))


def _tiny_model(num_classes=5, **kw):
  return sb.soundbeam("tiny", num_classes, rngs=nnx.Rngs(0), **kw)


def test_extraction_adapts_the_last_block_of_the_first_repeat_and_shares_the_prefix():
  model = _tiny_model(blocks=3)
  _randomize(model, seed=3)
  x = jnp.asarray(RNG.normal(size=(2, 1000)).astype(np.float32))
  emb = jnp.asarray(RNG.normal(size=(6, model.embed_dim)).astype(np.float32))  # 3 clues per mixture
  got = np.asarray(nnx.jit(lambda m, x, e: m.extract(x, e))(model, x, emb))
  # Straightforward recomputation: every row on its own, the clue multiplying block X - 1's residual and skip.
  ext, a = model.extractor, 2
  assert model.adapt_layer == a and len(ext.blocks) == 6
  b = ext.bottleneck_channels

  @nnx.jit
  def reference(model, x, emb):
    ext = model.extractor
    y = model.encoder(jnp.repeat(x, 3, axis=0))
    h, s = ext.start(y)
    for i, block in enumerate(ext.blocks):
      res, skip = block(h)
      if i == a:
        res, skip = res * emb[:, None, :b], skip * emb[:, None, b:]
      h, s = h + res, s + skip
    return model.decoder(ext.finish(h, s) * y, 1000)

  want = np.asarray(reference(model, x, emb))
  # float32 sums in another order (batched vs repeated rows) through 6 blocks with random-valued parameters.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
  # An all-ones embedding is the unconditioned Conv-TasNet.
  ones = jnp.ones((2, model.embed_dim))
  plain = nnx.jit(lambda m, x: m.decoder(m.extractor(m.encoder(x)) * m.encoder(x), 1000))
  np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, x, e: m.extract(x, e))(model, x, ones)),
                             np.asarray(plain(model, x)), rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_both_clues_in_one_call_equal_separate_calls_and_clues_matter():
  model = _tiny_model()
  x = jnp.asarray(RNG.normal(size=(2, 800)).astype(np.float32))
  onehot = jax.nn.one_hot(jnp.array([0, 3, 1, 2]), 5)
  enroll = jnp.asarray(RNG.normal(size=(4, 600)).astype(np.float32))
  call = nnx.jit(lambda m, x, c, e: m(x, class_onehot=c, enrollment=e))
  both = call(model, x, onehot, enroll)
  cls, enr = call(model, x, onehot, None)["class"], call(model, x, None, enroll)["enrollment"]
  np.testing.assert_allclose(np.asarray(both["class"]), np.asarray(cls), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(both["enrollment"]), np.asarray(enr), rtol=1e-5, atol=1e-6)
  # Row 2 k + j uses mixture k: equal to extracting from the repeated mixture.
  rep = call(model, jnp.repeat(x, 2, axis=0), onehot, None)["class"]
  np.testing.assert_allclose(np.asarray(rep), np.asarray(cls), rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(cls[0] - cls[1])).max() > 1e-4  # different classes, different outputs
  with pytest.raises(ValueError, match="clue"):
    model(x)


def test_every_parameter_has_logical_axes_and_enrollment_encoder_is_pluggable():
  class MeanDense(nnx.Module):  # stand-in for an M2D + MHFA enrollment encoder
    def __init__(self, embed_dim, rngs):
      self.embed_dim = embed_dim
      self.proj = nnx.Linear(
          1, embed_dim, kernel_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed", "mlp")),
          bias_init=nnx.with_partitioning(nnx.initializers.normal(1.0), ("mlp",)), rngs=rngs)

    def __call__(self, enrollment, *, rngs=None):
      return self.proj(jnp.mean(jnp.abs(enrollment), axis=1, keepdims=True))

  model = _tiny_model(enrollment_encoder=MeanDense(16, nnx.Rngs(1)))
  x = jnp.asarray(RNG.normal(size=(1, 400)).astype(np.float32))
  e = jnp.full((1, 300), 0.5)
  out = model(x, enrollment=e)["enrollment"]
  emb = np.asarray(model.enrollment_embedding(e))
  np.testing.assert_allclose(emb, 0.5 + np.asarray(model.enrollment_encoder.proj.bias.get_value())[None], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(out), np.asarray(model.extract(x, jnp.asarray(emb))), rtol=1e-5, atol=1e-6)
  for m in (_tiny_model(), model):
    for path, var in nnx.to_flat_state(nnx.state(m, nnx.Param)):
      meta = var.get_metadata()
      names = meta.get("out_sharding") or meta.get("sharding_names")
      assert names is not None and len(names) == var.get_value().ndim, path


def test_paper_size_parameter_count():
  model = nnx.eval_shape(lambda: sb.soundbeam("paper", 20, rngs=nnx.Rngs(0)))
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
  # Conv-TasNet by hand (N=512, K=16, B=Sc=128, H=512, P=3, X=8, R=3, one mask): encoder + decoder filterbanks,
  # gLN + bottleneck, 24 blocks (1x1 in, PReLU, gLN, depthwise, PReLU, gLN, residual and skip 1x1), PReLU + mask 1x1.
  n, k, b, h, p = 512, 16, 128, 512, 3
  block = (b * h + h) + 1 + 2 * h + (p * h + h) + 1 + 2 * h + 2 * (h * b + b)
  tasnet = 2 * n * k + 2 * n + (n * b + b) + 24 * block + 1 + (b * n + n)
  assert tasnet == 4_984_497  # Luo & Mesgarani report 5.1 M for this configuration with two masks
  assert count(model.encoder) + count(model.extractor) + count(model.decoder) == tasnet
  # Class clue: 20 -> 512 -> 256 with LayerNorms; enrollment: its own encoder (K = 40) + one repeat + 1x1 to 256.
  assert count(model.class_encoder) == (20 * 512 + 512) + 2 * 512 + (512 * 256 + 256) + 2 * 256
  enroll = 40 * n + 2 * n + (n * b + b) + 8 * block + 1 + (b * 256 + 256)
  assert count(model.enrollment_encoder) == enroll
  assert count(model) == 6_860_098


# ---- the loss: seed 002 Eq. (2) ----


EPS = 1.1920929e-07  # torchmetrics' float32 eps, added to the energy sums and the projection (uss_jax.losses)


def np_snr(est, ref):
  return 10 * np.log10((np.sum(ref**2, -1) + EPS) / (np.sum((ref - est)**2, -1) + EPS))


def np_si_snr(est, ref):
  """Conv-TasNet Eq. (12) with torchmetrics' eps placement (matters for the near-silent outputs of an untrained
  model)."""
  est = est - est.mean(-1, keepdims=True)
  ref = ref - ref.mean(-1, keepdims=True)
  s = ((np.sum(est * ref, -1, keepdims=True) + EPS) / (np.sum(ref**2, -1, keepdims=True) + EPS)) * ref
  return 10 * np.log10((np.sum(s**2, -1) + EPS) / (np.sum((s - est)**2, -1) + EPS))


def test_loss_is_seed002_equation_2():
  ref = RNG.normal(size=(6, 500))
  est = {"class": ref + 0.3 * RNG.normal(size=ref.shape) + 0.1, "enrollment": 0.7 * ref + RNG.normal(size=ref.shape)}
  alpha = 0.3
  total, aux = tse.tse_loss({k: jnp.asarray(v, jnp.float32) for k, v in est.items()}, jnp.asarray(ref, jnp.float32),
                            alpha=alpha)
  lext = {k: np.mean(-0.9 * np_snr(v, ref) - 0.1 * np_si_snr(v, ref)) for k, v in est.items()}
  want = alpha * lext["class"] + (1 - alpha) * lext["enrollment"]
  assert float(total) == pytest.approx(want, abs=1e-3)
  assert float(aux["loss_class"]) == pytest.approx(lext["class"], abs=1e-3)
  assert float(aux["loss_enrollment"]) == pytest.approx(lext["enrollment"], abs=1e-3)
  assert float(aux["snr_class"]) == pytest.approx(np.mean(np_snr(est["class"], ref)), abs=1e-3)
  # With 0/1 weights: the same equation over the weighted extractions only.
  w = np.array([1, 0, 1, 1, 0, 1], np.float32)
  total_w, aux_w = tse.tse_loss({k: jnp.asarray(v, jnp.float32) for k, v in est.items()},
                                jnp.asarray(ref, jnp.float32), alpha=alpha, weight=jnp.asarray(w))
  keep = w > 0
  lext = {k: np.mean(-0.9 * np_snr(v[keep], ref[keep]) - 0.1 * np_si_snr(v[keep], ref[keep])) for k, v in est.items()}
  assert float(total_w) == pytest.approx(alpha * lext["class"] + (1 - alpha) * lext["enrollment"], abs=1e-3)
  assert float(aux_w["audible_fraction"]) == pytest.approx(4 / 6)


def test_audible_targets_threshold():
  mix = RNG.normal(size=(4, 300))
  target = np.stack([mix[0] * 0.5, np.zeros(300), mix[2] * 10 ** (-31 / 20), mix[3] * 10 ** (-29 / 20)])
  want = [1.0, 0.0, 0.0, 1.0]  # -6 dB, silent, -31 dB, -29 dB against a -30 dB threshold
  np.testing.assert_array_equal(tse.audible_targets(target, mix, -30.0), want)
  np.testing.assert_array_equal(np.asarray(tse.audible_targets(jnp.asarray(target), jnp.asarray(mix), -30.0)), want)


# ---- the task end to end ----


def _config(demo_tfds, **kw):
  sys.path.insert(0, str(REPO))
  from configs import soundbeam  # pylint: disable=import-outside-toplevel
  c = soundbeam.get_config("tiny")
  c.data.tfds_dir = demo_tfds
  for k, v in kw.items():
    setattr(c, k, v)
  return c


@pytest.fixture(scope="session")
def tse_run(demo_tfds, tmp_path_factory):
  from uss_jax.train import trainer  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp("tse")
  config = _config(demo_tfds)
  return config, workdir, trainer.train_and_evaluate(config, str(workdir))


def test_task_trains_and_evaluation_matches_numpy(tse_run):
  from uss_jax.train import trainer  # pylint: disable=import-outside-toplevel
  config, workdir, result = tse_run
  assert result["step"] == 2 and np.isfinite(result["history"][-1][1])
  path = workdir / tse.EVAL_SET_FILE
  stamp = (os.path.getmtime(path), path.read_bytes())
  run = trainer.build_run(config, str(workdir))  # a second run on the workdir reads the stored eval set
  metrics_, outputs = trainer.evaluate_state(run, result["state"])
  assert (os.path.getmtime(path), path.read_bytes()) == stamp
  assert metrics_ == pytest.approx(result["eval"], rel=1e-6)
  stored = np.load(path)
  np.testing.assert_array_equal(outputs["mixture"], stored["mixture"])
  np.testing.assert_array_equal(outputs["target"], stored["target"])
  np.testing.assert_array_equal(outputs["class_id"], stored["class_id"])
  n = config.data.eval_mixtures
  assert outputs["est_class"].shape == (n, 2, 8000)
  # Independent recomputation: SNRi per extraction (mixture shared by its two targets), mean, failure rate.
  # Extractions whose target is > 30 dB below the mixture are not scored (config.loss.min_target_db).
  ref = outputs["target"].reshape(2 * n, -1).astype(np.float64)
  mix = np.repeat(outputs["mixture"], 2, axis=0).astype(np.float64)
  keep = 10 * np.log10(np.sum(ref**2, -1) / np.sum(mix**2, -1)) >= -30.0
  ref, mix = ref[keep], mix[keep]
  for clue in ("class", "enrollment"):
    est = outputs[f"est_{clue}"].reshape(2 * n, -1).astype(np.float64)[keep]
    snri = np_snr(est, ref) - np_snr(mix, ref)
    si_snri = np_si_snr(est, ref) - np_si_snr(mix, ref)
    assert metrics_[f"SNRi_{clue}"] == pytest.approx(np.mean(snri), abs=1e-4)
    assert metrics_[f"SI_SNRi_{clue}"] == pytest.approx(np.mean(si_snri), abs=1e-4)
    assert metrics_[f"failure_rate_{clue}"] == pytest.approx(np.mean(snri < 1.0))
  assert metrics_["mixture_SNR"] == pytest.approx(np.mean(np_snr(mix, ref)), abs=1e-4)
  # The trivial outputs on the same extractions: silence (SI-SNR 0 dB by the eps rule) and 0.5 x mixture.
  assert metrics_["baseline_SNRi_silence"] == pytest.approx(-np.mean(np_snr(mix, ref)), abs=1e-4)
  assert metrics_["baseline_SI_SNRi_silence"] == pytest.approx(
      np.mean(np_si_snr(0 * mix, ref) - np_si_snr(mix, ref)), abs=1e-4)
  half = np_snr(0.5 * mix, ref) - np_snr(mix, ref)
  assert metrics_["baseline_SNRi_half_mixture"] == pytest.approx(np.mean(half), abs=1e-4)
  assert metrics_["baseline_failure_rate_half_mixture"] == pytest.approx(np.mean(half < 1.0))
  assert metrics_["num_extractions"] == keep.sum() and metrics_["num_inaudible"] == 2 * n - keep.sum()
  assert (workdir / "eval_step2_per_class.csv").exists()
  assert len(list((workdir / "examples").glob("mix0_*.wav"))) == 7


def test_eval_set_is_deterministic_and_guarded(tse_run, demo_tfds, tmp_path):
  from data_pipelines import extraction  # pylint: disable=import-outside-toplevel
  config, workdir, _ = tse_run
  task = tse.TSETask(config, str(workdir))
  fresh = extraction.tse_eval_set(
      tse.data_source(task.dataset, "test"), num_mixtures=config.data.eval_mixtures, seed=config.data.eval_seed,
      mixture_samples=8000, **task._element_options("test"))  # pylint: disable=protected-access
  for k in fresh:
    np.testing.assert_array_equal(task.eval_set[k], fresh[k])
  # The stored set is used only with the settings it was built with.
  (tmp_path / tse.EVAL_SET_FILE).write_bytes((workdir / tse.EVAL_SET_FILE).read_bytes())
  other = _config(demo_tfds)
  other.data.eval_mixtures = 3
  with pytest.raises(ValueError, match="other settings"):
    _ = tse.TSETask(other, str(tmp_path)).eval_set


def test_recipe_sizes_are_keys_a_command_line_can_override():
  from configs import soundbeam as recipe  # pylint: disable=import-outside-toplevel
  from uss_jax.models import extraction  # pylint: disable=import-outside-toplevel
  c = recipe.get_config("tiny")
  assert {k: c.model[k] for k in sb.SIZES["tiny"]} == sb.SIZES["tiny"]  # the preset, key by key
  assert (recipe.get_config("cpu").model.kernel_size, recipe.get_config("cpu").model.stride) == (64, 32)
  c.model.update(n_filters=24, bottleneck=12, skip=4, embed_dim=16, blocks=3)  # what --config.model.X=... sets
  model = extraction.build_soundbeam(c, 5, nnx.Rngs(0))
  assert model.encoder.kernel.get_value().shape == (16, 1, 24)
  assert model.embed_dim == 16 and len(model.extractor.blocks) == 3 * 2


def _tse_value_and_grad(remat: str, samples: int = 1600):
  """Loss, gradient leaves and the compiled step's XLA temp bytes of a tiny SoundBeam (3 x 2 blocks) with ``remat``."""
  rng = np.random.default_rng(0)
  classes, batch = 5, 2
  x = {"mixture": jnp.asarray(rng.standard_normal((batch, samples)) * 0.1, jnp.float32),
       "target": jnp.asarray(rng.standard_normal((batch * 2, samples)) * 0.05, jnp.float32),
       "onehot": jax.nn.one_hot(jnp.asarray(rng.integers(classes, size=batch * 2)), classes),
       "enrollment": jnp.asarray(rng.standard_normal((batch * 2, samples)) * 0.1, jnp.float32)}
  model = sb.soundbeam("tiny", classes, rngs=nnx.Rngs(0), remat=remat, blocks=3, repeats=2, hidden=64)
  graphdef, state = nnx.split(model)

  def loss(s, batch_):
    m = nnx.merge(graphdef, s)
    return tse.tse_loss(m(batch_["mixture"], batch_["onehot"], batch_["enrollment"]), batch_["target"])[0]

  step = jax.jit(jax.value_and_grad(loss))
  compiled = step.lower(state, x).compile()
  value, grads = step(state, x)
  return float(value), jax.tree.leaves(grads), compiled.memory_analysis().temp_size_in_bytes


def test_scan_remat_gives_the_same_gradients_with_less_temp_memory():
  """remat='scan' (the TCN blocks as one rematerialised lax.scan with a traced dilation) computes the unrolled
  network's loss and gradients, and XLA's temporary memory of the step really falls (per-block nnx.remat does not
  lower it on XLA:CPU: benchmarks/RESULTS.md)."""
  from uss_jax.nn import tasnet  # pylint: disable=import-outside-toplevel
  ref_loss, ref_grads, ref_temp = _tse_value_and_grad("none")
  loss, grads, temp = _tse_value_and_grad("scan")
  assert loss == pytest.approx(ref_loss, rel=1e-6)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-3, atol=1e-4 * float(np.abs(r).max()) + 1e-9)
  assert temp < 0.5 * ref_temp, (temp, ref_temp)
  # The dynamic-dilation depthwise conv equals the module's static form with the same weights.
  conv = tasnet.DepthwiseConv1d(6, 3, 4, rngs=nnx.Rngs(1))
  z = jnp.asarray(np.random.default_rng(2).standard_normal((2, 50, 6)), jnp.float32)
  np.testing.assert_allclose(
      tasnet.depthwise_dynamic_dilation(z, conv.kernel.get_value(), conv.bias.get_value(), jnp.int32(4), 16),
      conv(z), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="remat"):
    tasnet.remat_mode("everything")
