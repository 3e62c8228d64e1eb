"""SoundFilter (seed 003): layers vs numpy, FiLM, the loss vs the paper's equations, the task end to end (tiny)."""

import json
import os
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spine_utils import REPO, apply_overrides
from uss_jax.models import soundfilter as sf
from uss_jax.tasks import soundfilter as task_lib
from uss_jax.train import trainer

sys.path.insert(0, str(REPO))
from configs import soundfilter as soundfilter_config  # noqa: E402  pylint: disable=wrong-import-position


# ---------------------------------------------------------------------------------------------- numpy references


def np_elu(x):
  return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def np_conv_same(x, w, dilation=1):
  """Centred ("same") dilated conv, odd kernel: y[t] = sum_j x[t + (j - (k-1)/2) d] w[j] (zero outside)."""
  b, t_len, _ = x.shape
  k = w.shape[0]
  y = np.zeros((b, t_len, w.shape[2]))
  for t in range(t_len):
    for j in range(k):
      i = t + (j - (k - 1) // 2) * dilation
      if 0 <= i < t_len:
        y[:, t] += x[:, i] @ w[j]
  return y


def np_strided_conv(x, w, s):
  """y[t] = sum_j x[t s + j - s // 2] w[j], kernel 2 s (the documented strided conv)."""
  b, t_len, _ = x.shape
  y = np.zeros((b, t_len // s, w.shape[2]))
  for t in range(t_len // s):
    for j in range(2 * s):
      i = t * s + j - s // 2
      if 0 <= i < t_len:
        y[:, t] += x[:, i] @ w[j]
  return y


def np_transposed_conv(x, w, s):
  """PyTorch ConvTranspose1d(kernel 2 s, stride s) scatter, cropped to [s // 2, s // 2 + T s)."""
  b, t_len, _ = x.shape
  full = np.zeros((b, (t_len + 1) * s, w.shape[2]))
  for t in range(t_len):
    for j in range(2 * s):
      full[:, t * s + j] += x[:, t] @ w[j]
  return full[:, s // 2:s // 2 + t_len * s]


def np_group_norm(x, groups, scale, bias, eps=1e-5):
  b, t_len, c = x.shape
  g = x.reshape(b, t_len, groups, c // groups)
  mean = g.mean(axis=(1, 3), keepdims=True)
  var = g.var(axis=(1, 3), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(b, t_len, c) * scale + bias


def np_si_sdr(est, ref):
  """Le Roux et al. 2019, Eqs. (3)-(4), no epsilon."""
  alpha = np.sum(est * ref, -1, keepdims=True) / np.sum(ref * ref, -1, keepdims=True)
  s = alpha * ref
  return 10 * np.log10(np.sum(s * s, -1) / np.sum((s - est)**2, -1))


def np_snr(est, ref):
  return 10 * np.log10(np.sum(ref * ref, -1) / np.sum((ref - est)**2, -1))


def np_softplus(x):
  return np.logaddexp(0.0, x)


def _randomize(module, seed):
  """Every parameter of ``module`` set to N(0, 0.5^2) (GroupNorm scales around 1)."""
  rng = np.random.default_rng(seed)
  for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
    value = rng.normal(0, 0.5, var.get_value().shape)
    if path[-1] == "scale":
      value += 1.0
    var.set_value(jnp.asarray(value, jnp.float32))


def _w(var):
  return np.asarray(var.get_value(), np.float64)


# ---------------------------------------------------------------------------------------------------- layers


def test_residual_unit_matches_numpy():
  unit = sf.ResidualUnit(4, dilation=3, kernel=3, num_groups=2, rngs=nnx.Rngs(0))
  _randomize(unit, 1)
  x = np.random.default_rng(2).normal(size=(2, 40, 4))
  got = np.asarray(unit(jnp.asarray(x, jnp.float32)))
  h = np_conv_same(np_elu(x), _w(unit.conv1.kernel), dilation=3)
  h = np_group_norm(h, 2, _w(unit.norm1.scale), _w(unit.norm1.bias))
  h = np_conv_same(np_elu(h), _w(unit.conv2.kernel))
  want = x + np_group_norm(h, 2, _w(unit.norm2.scale), _w(unit.norm2.bias))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride", [2, 5])
def test_strided_and_transposed_conv_match_numpy_and_are_adjoint(stride):
  rng = np.random.default_rng(stride)
  down = sf.conv1d(3, 5, 2 * stride, stride=stride, rngs=nnx.Rngs(0))
  up = sf.ConvTranspose1d(5, 3, stride, rngs=nnx.Rngs(1))
  x = rng.normal(size=(2, 6 * stride, 3))
  y = rng.normal(size=(2, 6, 5))
  np.testing.assert_allclose(np.asarray(down(jnp.asarray(x, jnp.float32))),
                             np_strided_conv(x, _w(down.kernel), stride), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(up(jnp.asarray(y, jnp.float32))),
                             np_transposed_conv(y, _w(up.kernel), stride), rtol=1e-4, atol=1e-4)
  # With the strided conv's kernel (in/out swapped), the transposed conv is its adjoint: <Dx, y> = <x, D^T y>.
  up.kernel.set_value(jnp.swapaxes(down.kernel.get_value(), 1, 2))
  lhs = np.sum(np.asarray(down(jnp.asarray(x, jnp.float32)), np.float64) * y)
  rhs = np.sum(x * np.asarray(up(jnp.asarray(y, jnp.float32)), np.float64))
  assert lhs == pytest.approx(rhs, rel=1e-5)


def test_group_norm_matches_numpy():
  norm = sf.group_norm(12, 16, rngs=nnx.Rngs(0))  # gcd(16, 12) = 4 groups
  _randomize(norm, 3)
  x = np.random.default_rng(4).normal(3.0, 2.0, size=(3, 25, 12))
  np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x, jnp.float32))),
                             np_group_norm(x, 4, _w(norm.scale), _w(norm.bias)), rtol=1e-4, atol=1e-4)


def test_every_parameter_has_logical_names_and_sizes():
  model = nnx.eval_shape(lambda: sf.build_soundfilter("tiny", rngs=nnx.Rngs(0)))
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  for path, var in flat:
    names = var.get_metadata().get("out_sharding")
    assert names and len(names) == var.get_value().ndim, path
  assert model.generator.encoder[0].down.kernel.get_metadata()["out_sharding"] == (None, "conv_in", "conv_out")
  assert model.generator.decoder[0].film.gamma.kernel.get_metadata()["out_sharding"] == ("embed", "conv_out")
  assert model.generator.input_norm.scale.get_metadata()["out_sharding"] == ("conv_out",)
  # tiny: C = 4, strides (2, 4) -> widths 4, 8, 16; the decoder mirrors the encoder.
  assert model.generator.total_stride == 8
  assert model.generator.decoder[0].up.kernel.get_value().shape == (8, 16, 8)
  assert model.generator.decoder[1].up.kernel.get_value().shape == (4, 8, 4)
  # The paper size: SEANet widths 32..512, strides (2, 2, 8, 8), 64-d embedding.
  paper = nnx.eval_shape(lambda: sf.build_soundfilter("paper", rngs=nnx.Rngs(0)))
  assert paper.generator.total_stride == 256
  assert paper.generator.bottleneck_convs[0].kernel.get_value().shape == (7, 512, 512)
  assert paper.condition_encoder.projection.kernel.get_value().shape == (3, 512, 64)


def test_input_length_must_be_a_multiple_of_the_total_stride():
  model = nnx.eval_shape(lambda: sf.build_soundfilter("tiny", rngs=nnx.Rngs(0)))  # the check precedes any compute
  x = jnp.ones((1, 60))
  with pytest.raises(ValueError, match="multiple of the total stride 8"):
    model.separate(x, jnp.ones((1, 8)))


# ------------------------------------------------------------------------------------------------------ FiLM


def test_film_modulates_the_generator():
  gen = sf.SoundFilterUNet(channels=4, strides=(2, 4), embedding_dim=8, dilations=(1,), num_groups=2,
                           rngs=nnx.Rngs(0))
  _randomize(gen, 5)
  rng = np.random.default_rng(6)
  mix = jnp.asarray(rng.normal(size=(2, 64)), jnp.float32)
  e1, e2 = (jnp.asarray(rng.normal(size=(2, 8)), jnp.float32) for _ in range(2))
  out1, out2, plain = gen(mix, e1), gen(mix, e2), gen(mix, None)
  for k in ("enhanced", "suppressed"):
    assert np.max(np.abs(np.asarray(out1[k] - out2[k]))) > 1e-2  # another condition, another output
    assert np.max(np.abs(np.asarray(out1[k] - plain[k]))) > 1e-2
  # An encoder block's output is (1 + gamma(e)) * x + beta(e) of its unconditioned output (FiLM after GroupNorm).
  block = gen.encoder[1]
  x = jnp.asarray(rng.normal(size=(2, 32, 8)), jnp.float32)
  base = np.asarray(block(x, None), np.float64)
  e = np.asarray(e1, np.float64)
  gamma = 1.0 + e @ _w(block.film.gamma.kernel) + _w(block.film.gamma.bias)
  beta = e @ _w(block.film.beta.kernel) + _w(block.film.beta.bias)
  np.testing.assert_allclose(np.asarray(block(x, e1)), gamma[:, None] * base + beta[:, None], rtol=1e-4, atol=1e-4)
  # gamma = 1, beta = 0 everywhere: the conditioned generator is the unconditioned one.
  for path, var in nnx.to_flat_state(nnx.state(gen, nnx.Param)):
    if "film" in path or "bottleneck_films" in path:
      var.set_value(jnp.zeros_like(var.get_value()))
  ident = gen(mix, e1)
  for k in ("enhanced", "suppressed"):
    np.testing.assert_allclose(np.asarray(ident[k]), np.asarray(plain[k]), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ loss


def _signals(rng, b=4, n=400):
  target, background = rng.normal(size=(b, n)), rng.normal(size=(b, n)) * 0.7
  mixture = target + background
  enhanced = target + 0.3 * rng.normal(size=(b, n))
  suppressed = background + 0.5 * rng.normal(size=(b, n))
  return mixture, target, background, enhanced, suppressed


def test_loss_matches_the_paper():
  rng = np.random.default_rng(7)
  mixture, target, background, enhanced, suppressed = _signals(rng)
  # Make one example separate better than 30 dB (the soft clip) on the enhanced output.
  enhanced[0] = 2.0 * target[0] + 1e-3 * rng.normal(size=400)
  loss, aux = task_lib.soundfilter_loss(*(jnp.asarray(a, jnp.float32) for a in
                                          (mixture, target, background, enhanced, suppressed)))
  # Seed 003 Eq. (1), sign erratum corrected: softplus(30 - SI-SDR) per output, softplus(30 - SNR) consistency.
  enh = np_softplus(30 - np_si_sdr(enhanced, target)).mean()
  sup = np_softplus(30 - np_si_sdr(suppressed, background)).mean()
  con = np_softplus(30 - np_snr(enhanced + suppressed, mixture)).mean()
  assert float(aux["loss_enhanced"]) == pytest.approx(enh, rel=1e-5)
  assert float(aux["loss_suppressed"]) == pytest.approx(sup, rel=1e-5)
  assert float(aux["loss_consistency"]) == pytest.approx(con, rel=1e-5)
  assert float(loss) == pytest.approx(enh + sup + con, rel=1e-5)
  # The soft clip: an example above 30 dB adds almost nothing and its gradient fades.
  assert np_si_sdr(enhanced, target)[0] > 45 and np_softplus(30 - np_si_sdr(enhanced, target))[0] < 1e-6


def test_silent_examples_change_neither_loss_nor_gradient():
  # One U-Net level is enough: an all-zero input meets nine GroupNorms in the generator, five in the encoder.
  graphdef, params = nnx.split(sf.build_soundfilter("tiny", overrides={"strides": (2,)}, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(8)
  mixture, target, background, _, _ = _signals(rng, b=3, n=64)
  condition = rng.normal(size=(3, 64))
  target[1] = 0.0  # silent target: its enhanced term is undefined

  @jax.jit
  def loss_and_grad(params, batch):
    def loss_fn(params):
      out = nnx.merge(graphdef, params)(batch["mixture"], batch["condition"])
      loss, aux = task_lib.soundfilter_loss(batch["mixture"], batch["target"], batch["background"],
                                            out["enhanced"], out["suppressed"], condition=batch["condition"])
      return loss, (aux, out["enhanced"])
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  base = dict(mixture=mixture, target=target, background=background, condition=condition)
  # Two more examples: all-zero mixture and condition; a real mixture with an all-zero condition.
  padded = {k: np.concatenate([v, np.zeros((2, 64))]) for k, v in base.items()}
  padded["mixture"][-1] = rng.normal(size=64)
  padded["target"][-1] = padded["mixture"][-1]
  (l1, (aux, enhanced)), g1 = loss_and_grad(params, {k: jnp.asarray(v, jnp.float32) for k, v in base.items()})
  (l2, _), g2 = loss_and_grad(params, {k: jnp.asarray(v, jnp.float32) for k, v in padded.items()})
  assert float(l1) == pytest.approx(float(l2), rel=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    assert np.all(np.isfinite(np.asarray(b)))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  # The silent target leaves example 1 out of the enhanced term only.
  enh = np_softplus(30 - np_si_sdr(np.asarray(enhanced, np.float64)[[0, 2]], target[[0, 2]]))
  assert float(aux["loss_enhanced"]) == pytest.approx(enh.mean(), rel=1e-4)
  assert float(aux["scored_fraction"]) == 1.0


# ------------------------------------------------------------------------------------------------ config errors


def test_soundwords_mode_without_a_soundwords_context_is_a_clear_error():
  config = soundfilter_config.get_config("tiny")
  config.condition.mode = "soundwords"
  with pytest.raises(ValueError, match="soundwords_workdir"):
    sf.build_soundfilter_system(config, {"sample_rate": 16000}, nnx.Rngs(0))


def test_condition_mode_and_text_rate_errors(tmp_path):
  c = soundfilter_config.get_config("tiny")  # mode 'audio'
  c.data.text_rate = 0.3
  with pytest.raises(ValueError, match=r"config\.data\.text_rate.*SoundWords text tower"):
    task_lib.SoundFilterTask(c, str(tmp_path))
  c = soundfilter_config.get_config("tiny")
  c.condition.mode = "soundwords"
  with pytest.raises(ValueError, match=r"config\.condition\.soundwords_workdir"):
    task_lib.SoundFilterTask(c, str(tmp_path))
  c.condition.soundwords_workdir = str(tmp_path / "missing")
  c.data.text_rate = 1.5
  with pytest.raises(ValueError, match=r"text_rate=1\.5 must lie in \[0, 1\]"):
    task_lib.SoundFilterTask(c, str(tmp_path))
  c = soundfilter_config.get_config("tiny")
  c.condition.mode = "text"
  with pytest.raises(ValueError, match=r"config\.condition\.mode"):
    task_lib.SoundFilterTask(c, str(tmp_path))
  c = soundfilter_config.get_config("tiny")
  c.data.crop_seconds = 0.5003  # 8005 samples, not a multiple of 8
  with pytest.raises(ValueError, match=r"config\.data\.crop_seconds"):
    task_lib.SoundFilterTask(c, str(tmp_path))
  # The paper's default training text rate with the frozen SoundWords (smoke, paper); the test variant: audio only.
  for variant in ("", "smoke"):
    c = soundfilter_config.get_config(variant)
    assert c.data.text_rate == 0.3 and c.condition.mode == "soundwords"
  assert soundfilter_config.get_config("tiny").data.text_rate == 0.0


# ------------------------------------------------------------------------------------------------- end to end


def _config(demo_tfds, **overrides):
  c = soundfilter_config.get_config("tiny")
  c.data.tfds_dir = demo_tfds
  return apply_overrides(c, **overrides)


@pytest.fixture(scope="session")
def soundfilter_run(demo_tfds, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("soundfilter"))
  config = _config(demo_tfds)
  return config, workdir, trainer.train_and_evaluate(config, workdir)


def test_end_to_end_summary_matches_numpy(soundfilter_run):
  config, workdir, result = soundfilter_run
  assert result["step"] == 2 and np.isfinite(result["history"][-1][1])
  stored = dict(np.load(os.path.join(workdir, task_lib.EVAL_SET_FILE)))
  run = trainer.build_run(config, workdir)
  summary, outputs = trainer.evaluate_state(run, result["state"])
  assert summary == pytest.approx(result["eval"], rel=1e-6, nan_ok=True)
  # The evaluation scored the stored set, in order.
  np.testing.assert_array_equal(outputs["mixture"], stored["mixture"])
  np.testing.assert_array_equal(outputs["target"], stored["target"])
  np.testing.assert_allclose(outputs["mixture"], stored["target"] + stored["background"], atol=1e-6)
  # Independent recomputation: numpy SI-SDR / SNR over the two-sound mixtures (no silent waveform).
  mix = stored["mixture"].astype(np.float64)
  loud = lambda a: np.mean(np.square(a.astype(np.float64)), -1) >= 1e-8  # noqa: E731
  ok = loud(mix) & loud(stored["condition"]) & loud(stored["target"]) & loud(stored["background"])
  assert summary["num_scored"] == ok.sum() > len(mix) // 2
  for kind, ref in (("enhanced", "target"), ("suppressed", "background")):
    r, est = stored[ref].astype(np.float64)[ok], outputs[kind].astype(np.float64)[ok]
    assert summary[f"si_sdr_{kind}"] == pytest.approx(np.mean(np_si_sdr(est, r)), abs=1e-3)
    assert summary[f"si_sdri_{kind}"] == pytest.approx(np.mean(np_si_sdr(est, r) - np_si_sdr(mix[ok], r)), abs=1e-3)
  total = (outputs["enhanced"] + outputs["suppressed"]).astype(np.float64)[ok]
  assert summary["snr_consistency"] == pytest.approx(np.mean(np_snr(total, mix[ok])), abs=1e-3)
  # Trivial baselines on the same examples: the mixture itself, and silence (SI-SDR 0 dB by the eps convention, so
  # its SI-SDRi is minus the mixture's SI-SDR).
  mix_sdr = np_si_sdr(mix[ok], stored["target"].astype(np.float64)[ok])
  assert summary["si_sdr_mixture"] == pytest.approx(np.mean(mix_sdr), abs=1e-3)
  assert summary["baseline_si_sdri_silence"] == pytest.approx(-np.mean(mix_sdr), abs=1e-3)
  assert summary["num_examples"] == len(mix)
  assert os.path.exists(os.path.join(workdir, "eval_step2_examples.csv"))
  assert os.path.exists(os.path.join(workdir, "examples", "0_enhanced.wav"))


def test_every_run_scores_the_same_stored_eval_set(soundfilter_run, demo_tfds, tmp_path, monkeypatch):
  config, workdir, result = soundfilter_run
  first = dict(np.load(os.path.join(workdir, task_lib.EVAL_SET_FILE)))
  # A second run in another workdir builds the identical set.
  other = task_lib.SoundFilterTask(_config(demo_tfds), str(tmp_path))
  other.prepare()
  second = dict(np.load(os.path.join(str(tmp_path), task_lib.EVAL_SET_FILE)))
  assert sorted(first) == sorted(second)
  for k in first:
    np.testing.assert_array_equal(first[k], second[k], err_msg=k)
  # Re-evaluating the run reads the stored set (building one is made impossible) and scores identically.
  def no_build(*args, **kwargs):
    raise AssertionError("the stored eval set should have been read")
  monkeypatch.setattr(task_lib.extraction, "soundfilter_eval_set", no_build)
  again = trainer.evaluate(config, workdir)
  assert again["step"] == 2
  assert {k: v for k, v in again.items() if k != "step"} == pytest.approx(result["eval"], rel=1e-6, nan_ok=True)
  # A stored set built for other settings is refused, not silently mixed with new ones.
  with pytest.raises(ValueError, match="seed: stored 1234 vs config 99"):
    task_lib.SoundFilterTask(_config(demo_tfds, **{"data.eval_seed": 99}), workdir).prepare()
  assert config.data.crop_rule == "audible"  # stored as its index in mixing.CROP_RULES ('random', 'audible')
  with pytest.raises(ValueError, match="crop_rule: stored 1 vs config 0"):
    task_lib.SoundFilterTask(_config(demo_tfds, **{"data.crop_rule": "random"}), workdir).prepare()


# ------------------------------------------------------------------------ conditioned on a frozen SoundWords run


@pytest.fixture(scope="session")
def soundwords_workdir(demo_tfds, tmp_path_factory):
  """configs/soundwords.py:tiny (random 2-layer BERT, 64-d space) trained 2 steps on the demo corpus."""
  from configs import soundwords  # pylint: disable=import-outside-toplevel
  from uss_jax.train import sharding  # pylint: disable=import-outside-toplevel
  config = apply_overrides(soundwords.get_config("tiny"), **{"data.tfds_dir": demo_tfds, "eval_every": 0})
  workdir = str(tmp_path_factory.mktemp("soundwords"))
  trainer.train_and_evaluate(config, workdir, mesh=sharding.create_mesh(config.mesh, jax.devices()[:1]))
  return workdir


@pytest.fixture(scope="session")
def soundwords_filter_run(demo_tfds, soundwords_workdir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("soundfilter_sw"))
  config = _config(demo_tfds, **{"condition.mode": "soundwords", "condition.soundwords_workdir": soundwords_workdir,
                                 "data.text_rate": 0.5, "model.embedding_dim": 64, "condition.scale": 8.0})
  return config, workdir, trainer.train_and_evaluate(config, workdir)


def _words(soundwords_workdir):
  from uss_jax import retrieval  # pylint: disable=import-outside-toplevel
  return retrieval.load_soundwords(soundwords_workdir)


def test_soundwords_stays_frozen_and_conditions_are_its_embeddings(soundwords_filter_run, soundwords_workdir):
  """The SoundWords weights of the trained SoundFilter equal the SoundWords run's (2 steps changed none of them); the
  training condition is the SoundWords run's own text embedding of the caption where ``use_text`` and its audio
  embedding of the conditioning crop elsewhere (uss_jax.retrieval on the SoundWords run, an independent path)."""
  from uss_jax import retrieval, runs  # pylint: disable=import-outside-toplevel
  from data_pipelines import extraction  # pylint: disable=import-outside-toplevel
  config, workdir, result = soundwords_filter_run
  assert result["step"] == 2
  words = _words(soundwords_workdir)
  run = runs.load_system(workdir)
  assert isinstance(run.model, sf.SoundWordsFilter)
  assert run.info.query_kinds == ("audio", "text") and run.info.outputs == ("enhanced", "suppressed")
  assert run.info.condition_space.startswith("soundwords:") and run.info.condition_size == 64
  norms = [m for _, m in nnx.iter_modules(run.model) if isinstance(m, nnx.BatchNorm)]
  assert norms and all(m.use_running_average for m in norms)  # load_system returns the model in eval mode
  got = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(run.model.soundwords)))
  want = dict(jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(words.state)))
  assert len(got) == len(want) > 10
  for path, value in got:
    np.testing.assert_array_equal(np.asarray(value), np.asarray(want[path]), err_msg=str(path))

  task = task_lib.SoundFilterTask(config, workdir)
  task.prepare()
  ev = task.eval_set
  n = 6
  batch = {k: jnp.asarray(ev[k][:n]) for k in ("condition", "text_embedding")}
  use_text = jnp.asarray([1, 0, 1, 0, 0, 1], jnp.float32)
  cond = np.asarray(nnx.jit(lambda m, b, u: task.condition_embedding(m, b, u))(run.model, batch, use_text))
  captions = [extraction.decode_caption(c) for c in ev["caption"][:n]]
  text_ref = retrieval.embed_texts(words, captions)
  audio_ref = retrieval.embed_waveforms(words, list(ev["condition"][:n]))  # one 0.5 s window each
  ref = np.where(np.asarray(use_text)[:, None] > 0, text_ref, audio_ref)
  np.testing.assert_allclose(cond, ref, atol=2e-5)
  np.testing.assert_allclose(np.linalg.norm(cond, axis=1), 1.0, atol=1e-5)


def test_text_queried_evaluation_matches_numpy(soundwords_filter_run, soundwords_workdir):
  """``si_sdr(i)_*_text`` = numpy SI-SDR of the generator run on the SoundWords text embedding of each caption."""
  from uss_jax import retrieval, runs  # pylint: disable=import-outside-toplevel
  from data_pipelines import extraction  # pylint: disable=import-outside-toplevel
  config, workdir, result = soundwords_filter_run
  stored = dict(np.load(os.path.join(workdir, task_lib.EVAL_SET_FILE)))
  model = runs.load_system(workdir).model
  emb = retrieval.embed_texts(_words(soundwords_workdir), [extraction.decode_caption(c) for c in stored["caption"]])
  scale = float(config.condition.scale)
  out = nnx.jit(lambda m, x, e: m.generator(x, e))(model, jnp.asarray(stored["mixture"]), jnp.asarray(scale * emb))
  mix = stored["mixture"].astype(np.float64)
  loud = lambda a: np.mean(np.square(a.astype(np.float64)), -1) >= 1e-8  # noqa: E731
  ok = loud(mix) & loud(stored["condition"]) & loud(stored["target"]) & loud(stored["background"])
  ev = result["eval"]
  # float32 outputs of two batchings (the eval's batches, this one call): at the untrained model's -24 dB SI-SDR the
  # estimate is nearly orthogonal to the reference and its dB value moves by ~1e-4 relative between them.
  for kind, ref in (("enhanced", "target"), ("suppressed", "background")):
    r, est = stored[ref].astype(np.float64)[ok], np.asarray(out[kind], np.float64)[ok]
    assert ev[f"si_sdr_{kind}_text"] == pytest.approx(np.mean(np_si_sdr(est, r)), rel=3e-4, abs=2e-3)
    assert ev[f"si_sdri_{kind}_text"] == pytest.approx(np.mean(np_si_sdr(est, r) - np_si_sdr(mix[ok], r)),
                                                       rel=3e-4, abs=2e-3)
  assert np.isfinite(ev["si_sdri_enhanced"]) and ev["num_scored"] == ok.sum()


def _overlap_add_reference(model, x, condition, chunk, scale):
  """A plain numpy loop of the documented chunking (uss_jax.inference): zeros of half a chunk in front, chunks every
  half chunk, each through the generator, periodic Hann, overlap-add; both outputs."""
  import scipy.signal  # pylint: disable=import-outside-toplevel
  hop = chunk // 2
  starts = list(range(0, hop + len(x), hop))
  padded = np.zeros(starts[-1] + chunk, np.float32)
  padded[hop:hop + len(x)] = x
  w = scipy.signal.get_window("hann", chunk)
  acc = {k: np.zeros(len(padded)) for k in ("enhanced", "suppressed")}
  one = nnx.jit(lambda m, c, e: m.generator(c, e))
  e = scale * condition / np.linalg.norm(condition)
  for s in starts:
    out = one(model, jnp.asarray(padded[None, s:s + chunk]), jnp.asarray(e[None], jnp.float32))
    for k in acc:
      acc[k][s:s + chunk] += w * np.asarray(out[k])[0]
  return {k: v[hop:hop + len(x)] for k, v in acc.items()}


def _separate_cli(capsys, *args):
  from uss_jax import main as cli_main  # pylint: disable=import-outside-toplevel
  with pytest.raises(SystemExit) as e:
    cli_main.separate_main([str(a) for a in args])
  out = capsys.readouterr()
  return e.value.code, out.out, out.err


def test_cli_separates_by_text_and_audio_with_the_suppressed_output(soundwords_filter_run, soundwords_workdir,
                                                                    tmp_path, capsys):
  """``uss-jax separate --query-text / --query-audio ... --suppressed`` on a SoundFilter run = the numpy overlap-add
  of the generator over the documented chunks, conditioned on the SoundWords run's own embedding of the sentence
  (or the mean of its embeddings of the query's segments)."""
  import soundfile  # pylint: disable=import-outside-toplevel
  from uss_jax import retrieval, runs  # pylint: disable=import-outside-toplevel
  config, workdir, _ = soundwords_filter_run
  scale = float(config.condition.scale)
  words = _words(soundwords_workdir)
  model = runs.load_system(workdir).model
  demo = sorted((REPO / "data" / "demo" / "audio").glob("*.flac"))
  x = np.concatenate([soundfile.read(f, dtype="float32")[0] for f in demo[:2]])[:int(1.3 * 16000)]
  q = soundfile.read(demo[5], dtype="float32")[0][:int(0.7 * 16000)]
  assert np.mean(q[:8000] ** 2) > 1e-6 and np.mean(q[8000:] ** 2) > 1e-6
  soundfile.write(tmp_path / "mix.wav", x, 16000, subtype="FLOAT")
  soundfile.write(tmp_path / "q.wav", q, 16000, subtype="FLOAT")
  chunk = 2 * 8000  # default chunk: twice the 0.5 s training crop
  text = "a dog barking"
  code, out, err = _separate_cli(capsys, "--checkpoint", workdir, "--mixture", tmp_path / "mix.wav", "--query-text",
                                 text, "-o", tmp_path / "dog.wav", "--suppressed", tmp_path / "rest.wav")
  assert code == 0, err
  assert json.loads(out.strip().splitlines()[-1])["command"] == "separate"
  ref = _overlap_add_reference(model, x, retrieval.embed_texts(words, [text])[0], chunk, scale)
  for name, path in (("enhanced", "dog.wav"), ("suppressed", "rest.wav")):
    got, sr = soundfile.read(tmp_path / path, dtype="float32")
    assert sr == 16000 and got.shape == x.shape
    np.testing.assert_allclose(got, ref[name], atol=2e-5, err_msg=name)
  # Audio query of 0.7 s: two 0.5 s segments (the second repeated to length), each embedded, averaged.
  code, _, err = _separate_cli(capsys, "--checkpoint", workdir, "--mixture", tmp_path / "mix.wav", "--query-audio",
                               tmp_path / "q.wav", "-o", tmp_path / "a.wav")
  assert code == 0, err
  segments = [q[:8000], np.resize(q[8000:], 8000)]
  cond = retrieval.embed_waveforms(words, segments).mean(axis=0)
  got, _ = soundfile.read(tmp_path / "a.wav", dtype="float32")
  np.testing.assert_allclose(got, _overlap_add_reference(model, x, cond, chunk, scale)["enhanced"], atol=2e-5)
  # A blank text query: one line, exit status 2.
  code, _, err = _separate_cli(capsys, "--checkpoint", workdir, "--mixture", tmp_path / "mix.wav", "--query-text",
                               " ", "-o", tmp_path / "b.wav")
  assert code == 2 and "error" in err and len(err.strip().splitlines()) == 1


def test_cli_audio_mode_run_takes_no_text_query(soundfilter_run, tmp_path, capsys):
  import soundfile  # pylint: disable=import-outside-toplevel
  _, workdir, _ = soundfilter_run
  soundfile.write(tmp_path / "mix.wav", np.random.default_rng(0).normal(0, 0.1, 12000).astype(np.float32), 16000)
  code, _, err = _separate_cli(capsys, "--checkpoint", workdir, "--mixture", tmp_path / "mix.wav", "--query-text",
                               "a dog barking", "-o", tmp_path / "o.wav")
  assert code == 2 and "takes no text queries" in err and len(err.strip().splitlines()) == 1
