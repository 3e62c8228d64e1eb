"""`uss-jax separate` / uss_jax.inference: chunked overlap-add separation of files of any length and rate.

References: scipy's periodic Hann window and COLA check; a memoryless stand-in model (through which the overlap-add
must be exact); a plain numpy overlap-add loop calling the model one chunk at a time; soxr.resample directly; the
trained state returned by the trainer; class_embeddings.npz; query-net embeddings of hand-cut query segments.
"""

import glob
import json
import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import soxr

from spine_utils import CLI, REPO, run_cli
from uss_jax import inference
from uss_jax import main as cli_main

# One xdist worker runs every test that needs the session's tagger / separation runs, so they are trained once
# (Makefile: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("spine_runs")

SR = 16000  # the tiny recipes' model rate


# --------------------------------------------------------------------------------------------------------------------
# Fixtures: a tiny trained separation run (as tests/test_separation_task.py), audio files.
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def separator(separation_run):
  return inference.Separator.from_workdir(separation_run[1])


@pytest.fixture(scope="session")
def context_separator(separator):
  """The run's model with a random ``after_conv`` kernel. The tiny recipe's ``output_init='identity'`` leaves the
  2-step model at ~0.5 * mixture, i.e. memoryless, which chunking cannot disturb; this one depends on context."""
  model = separator.model
  kernel = model.separator.after_conv.kernel
  kernel.set_value(0.5 * jax.random.normal(jax.random.key(0), kernel.get_value().shape))
  return inference.Separator(model, sample_rate=separator.sample_rate, segment_seconds=separator.segment_seconds,
                             class_names=separator.class_names, class_embeddings=separator.class_embeddings)


@pytest.fixture(scope="session")
def demo_audio():
  """12 s of real audio at the model rate (demo clips of several classes, concatenated)."""
  files = sorted(glob.glob(str(REPO / "data" / "demo" / "audio" / "*.flac")))[::7][:8]
  parts = []
  for f in files:
    x, sr = sf.read(f, dtype="float32", always_2d=True)
    parts.append(soxr.resample(x.mean(1), sr, SR))
  x = np.concatenate(parts)[:12 * SR].astype(np.float32)
  assert len(x) == 12 * SR
  return x


class Memoryless(nnx.Module):
  """Stand-in separator ``y[n] = c0 * tanh(2 x[n])``: no memory, so chunking with overlap-add must be exact."""

  def __call__(self, mixture, condition):
    return condition[:, :1] * jnp.tanh(2.0 * mixture)

  def embed(self, query):
    return jnp.stack([jnp.mean(query, -1), jnp.std(query, -1)], -1)


def _standin(sample_rate=SR):
  return inference.Separator(Memoryless(), sample_rate=sample_rate, segment_seconds=0.5, class_names=["half", "loud"],
                             class_embeddings=np.array([[0.5, 0.0], [4.0, 0.0]], np.float32))


def _memoryless(x, c0=0.5):
  return c0 * np.tanh(2.0 * np.asarray(x, np.float64))


def _fix_length(x, n):
  return np.pad(x, (0, max(0, n - len(x))))[:n]


def _sdr(ref, est):
  return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref.astype(np.float64) - est) ** 2))


# --------------------------------------------------------------------------------------------------------------------
# Overlap-add and resampling, against exact references (no trained model needed).
# --------------------------------------------------------------------------------------------------------------------


def test_window_is_scipy_periodic_hann_with_constant_overlap_add():
  for length in (2, 64, 1000):
    w = inference.hann_window(length)
    np.testing.assert_allclose(w, scipy.signal.get_window("hann", length, fftbins=True), atol=1e-15)
    hop = length // 2
    np.testing.assert_allclose(w[:hop] + w[hop:], 1.0, atol=1e-14)
    assert scipy.signal.check_COLA("hann", length, hop)
  with pytest.raises(ValueError, match="even"):
    inference.hann_window(63)


@pytest.mark.parametrize("length", [1, 5, 31, 32, 33, 64, 1000, 1023])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_overlap_add_of_a_memoryless_model_is_exact(length, batch_size):
  chunk, hop = 64, 32
  x = np.random.default_rng(length).standard_normal(length).astype(np.float32)
  calls = []

  def process(batch):
    calls.append(batch.shape)
    return _memoryless(batch).astype(np.float32)

  cuts = np.sort(np.random.default_rng(7).integers(0, length + 1, 4))
  blocks = np.split(x, cuts)  # irregular blocks, some empty
  stats = {}
  y = np.concatenate(list(inference.overlap_add(blocks, process, chunk, batch_size, stats)))
  assert y.shape == x.shape
  np.testing.assert_allclose(y, _memoryless(x), atol=1e-7)  # measured 1.5e-8
  # Chunks start every hop from -hop (the leading pad) until the last sample's chunk: each sample lies in two.
  assert stats["chunks"] == (hop + length - 1) // hop + 1
  assert set(calls) == {(batch_size, chunk)}
  assert stats["calls"] == len(calls) == -(-stats["chunks"] // batch_size)


def test_resampling_round_trip_and_file_io_match_soxr(tmp_path):
  """A 44.1 kHz stereo PCM file through the stand-in: mono mean -> soxr to 16 kHz -> model -> soxr back."""
  sep = _standin()
  rng = np.random.default_rng(0)
  n = 44100 * 3 + 17
  stereo = np.clip(0.3 * rng.standard_normal((n, 2)), -1, 1).astype(np.float32)
  path = tmp_path / "mix.wav"
  sf.write(path, stereo, 44100, subtype="PCM_16")
  mono = sf.read(path, dtype="float32")[0].mean(1)  # what the file really holds, mono-mixed
  at_model = soxr.resample(mono, 44100, SR)
  expected = _fix_length(soxr.resample(_memoryless(at_model).astype(np.float32), SR, 44100), n)
  condition = np.array([0.5, 0.0], np.float32)
  # The array API.
  y = sep.separate(mono, 44100, condition, chunk_seconds=0.25, batch_size=3)
  assert y.shape == (n,) and y.dtype == np.float32
  np.testing.assert_allclose(y, expected, atol=1e-6)  # measured 1.3e-7
  # The file API (class "half" = condition (0.5, 0)): same rate and length as the input, float WAV by default.
  inference.separate_file(sep, path, tmp_path / "out" / "est.wav", query_class="half", chunk_seconds=0.25,
                          batch_size=3)
  info = sf.info(tmp_path / "out" / "est.wav")
  assert (info.samplerate, info.frames, info.channels, info.subtype) == (44100, n, 1, "FLOAT")
  np.testing.assert_allclose(sf.read(tmp_path / "out" / "est.wav", dtype="float32")[0], expected, atol=1e-6)
  # PCM_16 output is clipped to full scale, and the clipped samples are counted (class "loud": gain 4).
  out16 = tmp_path / "est16.wav"
  summary = inference.separate_file(sep, path, out16, query_class="loud", subtype="PCM_16", chunk_seconds=0.25)
  expected16 = _fix_length(soxr.resample(_memoryless(at_model, 4.0).astype(np.float32), SR, 44100), n)
  assert summary["clipped_samples"] == int(np.sum(np.abs(expected16) > 1.0)) > 0
  got16 = sf.read(out16, dtype="float32")[0]
  assert sf.info(out16).subtype == "PCM_16"
  np.testing.assert_allclose(got16, np.clip(expected16, -1, 1), atol=1.5 / 32768)


def test_real_time_factor_reports_the_timed_calls():
  r = inference.real_time_factor(_standin(), seconds=3.0, repeats=2, chunk_seconds=0.5, batch_size=4)
  hop = SR // 4
  assert r["chunks"] == (hop + 3 * SR - 1) // hop + 1
  assert len(r["times_s"]) == 2 and r["best_s"] == min(r["times_s"])
  assert r["rtf_best"] == pytest.approx(r["best_s"] / 3.0)


# --------------------------------------------------------------------------------------------------------------------
# The trained model from a workdir.
# --------------------------------------------------------------------------------------------------------------------


def test_from_workdir_restores_the_trained_model(separation_run, separator):
  config, workdir, result = separation_run
  assert (separator.sample_rate, separator.segment_samples, separator.step) == (SR, 2 * SR, 2)
  trained = jax.tree_util.tree_leaves_with_path(jax.tree.map(np.asarray, nnx.to_pure_dict(result["state"]["model"])))
  restored = dict(jax.tree_util.tree_leaves_with_path(
      jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(separator.model)))))
  assert len(trained) == len(restored) > 50
  for path, value in trained:
    np.testing.assert_array_equal(restored[path], value, err_msg=jax.tree_util.keystr(path))
  # A checkpoints/<step> folder names the same run; an absent step is refused with the list of steps.
  assert inference.resolve_checkpoint(os.path.join(workdir, "checkpoints", "2")) == (workdir, 2)
  with pytest.raises(FileNotFoundError, match="step 99.*steps: .*2"):
    inference.resolve_checkpoint(workdir, 99)


def test_class_condition_is_the_npz_row(separation_run, separator):
  with np.load(os.path.join(separation_run[1], "class_embeddings.npz")) as f:
    names, table = list(f["class_names"]), f["embeddings"]
  assert separator.class_names == names
  k = next(i for i in range(len(names)) if np.any(table[i]))
  np.testing.assert_array_equal(separator.class_condition(names[k]), table[k])
  with pytest.raises(ValueError, match=f"unknown class 'no_such_class'; known classes: {names[0]}, {names[1]}"):
    separator.class_condition("no_such_class")


def test_query_embedding_is_the_mean_of_independent_query_net_embeddings(separator, demo_audio, tmp_path):
  """Query A: 44.1 kHz stereo, 2.5 segments (last one partial); query B: a silent segment, then 1.2 s of sound.
  Reference: files read, mono-mixed, resampled and cut by hand; the query net (its restored weights are those of
  training, see test_from_workdir_restores_the_trained_model) called directly on the segments."""
  seg = 2 * SR
  a = soxr.resample(demo_audio[:5 * SR], SR, 44100).astype(np.float32)
  sf.write(tmp_path / "a.wav", np.stack([a, 0.5 * a], 1), 44100, subtype="FLOAT")
  b = np.concatenate([np.zeros(seg, np.float32), demo_audio[6 * SR:6 * SR + int(1.2 * SR)]])
  sf.write(tmp_path / "b.wav", b, SR, subtype="FLOAT")
  got = separator.embed_query_audio([tmp_path / "a.wav", tmp_path / "b.wav"])

  query_net = separator.model.query_net
  embed = nnx.jit(lambda net, x: net(x)["embedding"])
  a_mono = soxr.resample(sf.read(tmp_path / "a.wav", dtype="float32")[0].mean(1), 44100, SR)
  assert 0 < len(a_mono) - 2 * seg < seg  # the third segment is partial
  a_segments = [a_mono[:seg], a_mono[seg:2 * seg], np.tile(a_mono[2 * seg:], 3)[:seg]]
  b_segments = [np.tile(b[seg:], 2)[:seg]]  # the silent first segment is left out
  means = [np.asarray(embed(query_net, jnp.asarray(np.stack(s)))).mean(0) for s in (a_segments, b_segments)]
  expected = np.mean(means, axis=0)
  assert got.shape == (separator.embedding_dim,) and np.any(expected)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)  # measured 4e-9


def test_chunked_overlap_add_equals_a_plain_loop_over_chunks(context_separator, demo_audio):
  """At the model rate, separate() == numpy overlap-add of the model applied one chunk at a time (exact math)."""
  sep = context_separator
  x = demo_audio[:int(5.3 * SR)]
  condition = sep.class_condition(next(n for n, e in zip(sep.class_names, sep.class_embeddings) if np.any(e)))
  chunk = sep.chunk_samples(1.0)
  hop = chunk // 2
  got = sep.separate(x, SR, condition, chunk_seconds=1.0, batch_size=3)

  one = nnx.jit(lambda model, m, c: model(m, c))
  model = sep.model
  starts = list(range(0, hop + len(x), hop))  # the last chunk starts at or before the last sample
  padded = np.zeros(starts[-1] + chunk, np.float32)
  padded[hop:hop + len(x)] = x
  w = scipy.signal.get_window("hann", chunk)
  acc = np.zeros_like(padded, np.float64)
  for s in starts:
    acc[s:s + chunk] += w * np.asarray(one(model, jnp.asarray(padded[None, s:s + chunk]),
                                           jnp.asarray(condition[None])))[0]
  expected = acc[hop:hop + len(x)]
  assert got.shape == x.shape
  np.testing.assert_allclose(got, expected, atol=1e-6)  # measured 3.4e-8 (batch of 3 vs 1 in XLA)


def test_chunked_separation_is_close_to_one_whole_signal_call(context_separator, demo_audio):
  """Not exact (the U-Net's receptive field spans seconds; a chunk sees only itself): the default 4 s chunks agree
  with one call of the model over the whole 12 s to within ~1 % in amplitude, for a model that is far from
  memoryless (a least-squares gain times the mixture explains its output to less than 10 dB)."""
  sep = context_separator
  condition = sep.class_condition(sep.class_names[0])
  whole = np.asarray(nnx.jit(lambda model, m, c: model(m, c))(sep.model, jnp.asarray(demo_audio[None]),
                                                               jnp.asarray(condition[None])))[0]
  gain = np.dot(whole, demo_audio) / np.dot(demo_audio, demo_audio)
  assert _sdr(whole, gain * demo_audio) < 10.0
  chunked = sep.separate(demo_audio, SR, condition)
  sdr = _sdr(whole, chunked)
  print(f"SDR(whole-signal call, 4 s chunks with 50 % overlap-add) = {sdr:.1f} dB")
  assert sdr > 30.0


def test_silent_and_non_finite_queries_are_rejected(separator, demo_audio):
  quiet = 1e-5 * np.random.default_rng(0).standard_normal(3 * SR).astype(np.float32)  # -100 dBFS
  with pytest.raises(ValueError, match="query #0 is silent.*-80 dBFS"):
    separator.embed_query_audio(quiet, SR)
  with pytest.raises(ValueError, match="NaN"):
    separator.embed_query_audio([demo_audio[:SR], np.full(SR, np.nan, np.float32)], SR)
  # One segment above the threshold is enough: the result is that segment's embedding.
  x = np.concatenate([quiet[:2 * SR], demo_audio[:2 * SR]])
  np.testing.assert_allclose(separator.embed_query_audio(x, SR), separator.embed_query_audio(demo_audio[:2 * SR], SR),
                             rtol=1e-5, atol=1e-7)


def test_query_encoder_of_another_run_must_share_the_condition_space(separation_run, separator, demo_audio):
  """A second load of the run shares its query net (same weights digest): its conditions drive this separator and
  equal this run's own; a separator whose condition space is unnamed or differs is refused with both named."""
  other = inference.Separator.from_workdir(separation_run[1])
  assert separator.info.condition_space and separator.compatible_with(other)
  own, _ = separator.condition(audio=demo_audio[:2 * SR])
  cross, _ = separator.condition(audio=demo_audio[:2 * SR], query_separator=other)
  np.testing.assert_array_equal(own, cross)
  bare = inference.Separator(separator.model.separator, sample_rate=SR, segment_seconds=separator.segment_seconds,
                             embedding_dim=separator.embedding_dim)
  assert not bare.compatible_with(separator) and not separator.compatible_with(bare)
  with pytest.raises(ValueError, match="not interchangeable"):
    separator.condition(audio=demo_audio[:2 * SR], query_separator=bare)


# --------------------------------------------------------------------------------------------------------------------
# The command line.
# --------------------------------------------------------------------------------------------------------------------


def _separate(capsys, *args):
  with pytest.raises(SystemExit) as e:
    cli_main.separate_main([str(a) for a in args])
  out = capsys.readouterr()
  return e.value.code, out.out, out.err


def test_cli_separates_with_audio_queries_and_plots(separation_run, separator, demo_audio, tmp_path, capsys):
  workdir = separation_run[1]
  mix = soxr.resample(demo_audio[:int(6.5 * SR)], SR, 22050).astype(np.float32)
  sf.write(tmp_path / "mix.flac", np.stack([mix, mix], 1), 22050, subtype="PCM_24")
  sf.write(tmp_path / "q1.wav", demo_audio[7 * SR:9 * SR], SR)
  sf.write(tmp_path / "q2.ogg", demo_audio[9 * SR:11 * SR], SR)
  code, out, err = _separate(capsys, "--checkpoint", workdir, "--mixture", tmp_path / "mix.flac", "--query-audio",
                             tmp_path / "q1.wav", tmp_path / "q2.ogg", "-o", tmp_path / "est.wav", "--plot",
                             tmp_path / "est.png")
  assert code == 0, err
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary["command"] == "separate" and summary["step"] == 2 and "q1.wav, q2.ogg" in summary["query"]
  est, sr = sf.read(tmp_path / "est.wav", dtype="float32")
  assert sr == 22050 and est.shape == (len(mix),)
  # The same as the library on the file's mono mix.
  mono = sf.read(tmp_path / "mix.flac", dtype="float32")[0].mean(1)
  condition = separator.embed_query_audio([tmp_path / "q1.wav", tmp_path / "q2.ogg"])
  np.testing.assert_allclose(est, separator.separate(mono, 22050, condition), atol=1e-7)  # measured 0
  import matplotlib.image  # pylint: disable=import-outside-toplevel
  image = matplotlib.image.imread(tmp_path / "est.png")
  assert image.ndim == 3 and image.shape[0] > 200 and image[..., :3].std() > 0.05  # a picture, not a blank


def _bad_inputs(tmp_path, workdir, tagger_workdir, demo_audio):
  mix = tmp_path / "mix.wav"
  sf.write(mix, demo_audio[:3 * SR], SR)
  (tmp_path / "notes.wav").write_text("not audio at all")
  sf.write(tmp_path / "silent.wav", np.zeros(3 * SR, np.float32), SR)
  nan = demo_audio[:3 * SR].copy()
  nan[SR + 5] = np.nan
  sf.write(tmp_path / "nan.wav", nan, SR, subtype="FLOAT")
  base = ["--checkpoint", workdir, "-o", tmp_path / "out.wav"]
  return [
      ([*base, "--mixture", tmp_path / "missing.wav", "--query-class", "rain"], ["missing.wav", "not found"]),
      ([*base, "--mixture", tmp_path / "notes.wav", "--query-class", "rain"], ["notes.wav", "not an audio file"]),
      ([*base, "--mixture", tmp_path / "nan.wav", "--query-class", "rain"], ["nan.wav", "NaN", "sample 16005"]),
      ([*base, "--mixture", mix, "--query-class", "no_such_class"], ["'no_such_class'", "known classes: "]),
      ([*base, "--mixture", mix, "--query-audio", tmp_path / "nope.wav"], ["nope.wav", "not found"]),
      ([*base, "--mixture", mix, "--query-audio", mix, tmp_path / "silent.wav"], ["silent.wav", "silent"]),
      ([*base, "--mixture", mix, "--query-audio", tmp_path / "nan.wav"], ["nan.wav", "NaN"]),
      ([*base, "--mixture", mix, "--query-audio", mix, "--query-class", "rain"], ["not allowed with"]),
      ([*base, "--mixture", mix, "--query-class", "rain", "--step", "7"], ["step 7", "steps: "]),
      (["--checkpoint", tmp_path / "no_run", "-o", tmp_path / "out.wav", "--mixture", mix, "--query-class", "rain"],
       ["no_run", "not found"]),
      (["--checkpoint", workdir, "-o", tmp_path / "out.xyz", "--mixture", mix, "--query-class", "rain"],
       ["out.xyz", "unknown audio format"]),
      (["--checkpoint", tagger_workdir, "-o", tmp_path / "out.wav", "--mixture", mix, "--query-class", "rain"],
       [tagger_workdir, "'tagging' run, not a separation run"]),
  ]


def test_cli_bad_input_gives_one_line_and_exit_2(separation_run, tagger_workdir, demo_audio, tmp_path, capsys):
  for args, needles in _bad_inputs(tmp_path, separation_run[1], tagger_workdir, demo_audio):
    code, out, err = _separate(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("uss-jax: error: "), (args, err)
    for needle in needles:
      assert needle in lines[0], (needle, lines[0])
    assert not out.strip()
    assert not (tmp_path / "out.wav").exists() and not glob.glob(str(tmp_path / ".uss-jax-*"))


def test_console_script_bad_input(separation_run, tmp_path):
  """The real entry point (a subprocess): dispatch to ``separate`` and the one-line error."""
  proc = run_cli(*CLI, "separate", "--checkpoint", separation_run[1], "--mixture", str(tmp_path / "absent.flac"),
                 "--query-class", "rain", "-o", str(tmp_path / "o.wav"), timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [f"uss-jax: error: mixture file not found: {tmp_path / 'absent.flac'}"]
  proc = run_cli(*CLI, "separate", "--mixture", "x.wav", timeout=120)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("uss-jax: error: separate: ")
  assert len(proc.stderr.strip().splitlines()) == 1
