"""Online (streaming) inference through the shared file path: ``uss_jax.audio.streaming.online_chunks`` against a
numpy delay line, and ``uss-jax extract --stream`` on a saved tiny Waveformer run against the Waveformer's offline
forward of the whole signal (at the model rate, and through soxr when the file has another rate); an offline run
given ``--stream`` gets one line naming its model."""

import glob
import json

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
import soxr

from configs import soundbeam as soundbeam_config
from configs import waveformer as waveformer_config
from uss_jax import commands, inference
from uss_jax.audio.streaming import online_chunks
from uss_jax.convert.runs import write_run
from uss_jax.models import registry

SR = 16000
CLASSES = ["dog", "rain", "siren"]


# ---- the chunk driver ----


@pytest.mark.parametrize("length,lag,blocks", [(1000, 1, [1000]), (1000, 1, [7, 300, 1, 692]), (960, 2, [480, 480]),
                                               (5, 1, [5]), (1000, 0, [333, 667])])
def test_online_chunks_undo_the_lag_of_a_stateful_delay_line(length, lag, blocks):
  """A process that carries its last ``lag`` chunks and returns ``2 x`` the input of ``lag`` chunks earlier: the
  driver must give exactly ``2 x`` back, whatever the block sizes."""
  chunk = 96
  x = np.random.default_rng(length).standard_normal(length).astype(np.float32)
  assert sum(blocks) == length
  parts = np.split(x, np.cumsum(blocks)[:-1])
  line = [np.zeros(chunk, np.float32)] * lag

  def process(c):
    assert c.shape == (chunk,)
    line.append(np.array(c))
    return 2.0 * line.pop(0)

  stats = {}
  y = np.concatenate(list(online_chunks(iter(parts), process, chunk, lag, stats)))
  np.testing.assert_array_equal(y, 2.0 * x)
  assert stats["chunks"] == -(-length // chunk) + lag
  with pytest.raises(ValueError, match="returned 3 samples"):
    list(online_chunks([x], lambda c: c[:3], chunk, lag))


# ---- a saved tiny Waveformer run (and a SoundBeam one, offline) ----


def _context(config, name):
  return {"num_classes": len(CLASSES), "class_names": CLASSES, "m2d": None, "sample_rate": SR,
          "segment_samples": int(round(config.data.mixture_seconds * SR)),
          "query_samples": int(round(config.data.enrollment_seconds * SR)), "condition_space": f"{name}:test"}


def _save_run(path, config, name, perturb):
  ctx = _context(config, name)
  model = registry.build_system(config, ctx, nnx.Rngs(0))
  if perturb:  # away from the init, so that every layer shapes the output
    rng = np.random.default_rng(1)
    for _, p in nnx.iter_graph(model):
      if isinstance(p, nnx.Param):
        v = np.asarray(p.get_value())
        p.set_value(jnp.asarray(v + rng.normal(0.0, 0.1, v.shape), jnp.float32))
  return write_run(str(path), config, model, context=ctx)


@pytest.fixture(scope="session")
def waveformer_run(tmp_path_factory):
  return _save_run(tmp_path_factory.mktemp("waveformer_run"), waveformer_config.get_config("tiny"), "waveformer",
                   perturb=True)


@pytest.fixture(scope="session")
def waveformer(waveformer_run):
  """The run's model as restored by inference (the checkpoint round trip is part of what the CLI does)."""
  return inference.Separator.from_workdir(waveformer_run).model


def _offline(model, x, condition):
  """The Waveformer's offline forward of the whole signal (no chunking): ``(samples,)``."""
  return np.asarray(model.extract(jnp.asarray(x, jnp.float32)[None], jnp.asarray(condition)[None]))[0]


def _extract(capsys, *args):
  with pytest.raises(SystemExit) as e:
    commands.main("extract", [str(a) for a in args])
  out = capsys.readouterr()
  return e.value.code, out.out, out.err


def test_extract_stream_with_a_class_query_equals_the_offline_forward(waveformer_run, waveformer, tmp_path, capsys):
  x = (0.3 * np.random.default_rng(0).standard_normal(int(1.3 * SR))).astype(np.float32)
  sf.write(tmp_path / "mix.wav", x, SR, subtype="FLOAT")
  code, out, err = _extract(capsys, "--checkpoint", waveformer_run, "--mixture", tmp_path / "mix.wav",
                            "--query-class", "rain", "-o", tmp_path / "out.wav", "--stream")
  assert code == 0, err
  summary = json.loads(out.strip().splitlines()[-1])
  y, sr = sf.read(tmp_path / "out.wav", dtype="float32")
  # The class clue: the class encoder on the one-hot of 'rain' (id 1), computed here, not through inference.
  clue = np.asarray(waveformer.class_encoder(jax.nn.one_hot(jnp.array([1]), len(CLASSES))))[0]
  ref = _offline(waveformer, x, clue)
  assert sr == SR and y.shape == x.shape
  assert np.sqrt(np.mean(ref ** 2)) > 0.05  # a real signal, not silence
  err_max = float(np.max(np.abs(y - ref)))
  print(f"streaming vs offline forward, class query: max |diff| {err_max:.2e}")
  assert err_max <= 1e-5
  chunk = waveformer.chunk_samples
  assert summary["stream"] is True and summary["chunk_samples"] == chunk
  assert summary["chunks"] == -(-len(x) // chunk) + 1  # one chunk of lag
  assert summary["chunk_ms"] == pytest.approx(1e3 * chunk / SR)
  assert summary["real_time_factor"] == pytest.approx(
      (summary["separate_s"] - summary["compile_s"]) / summary["seconds"], abs=1e-3)
  assert 0 < summary["step_ms"] and summary["stream_s"] <= summary["separate_s"]


def test_extract_stream_over_a_mixture_list_equals_the_offline_forward_per_file(waveformer_run, waveformer, tmp_path,
                                                                               capsys):
  """``--stream --mixture-list``: each file of the list streamed with fresh state (the carried buffers of one file
  must not leak into the next) equals the offline forward of that file alone."""
  rng = np.random.default_rng(3)
  xs = [(0.3 * rng.standard_normal(int(s * SR))).astype(np.float32) for s in (0.7, 1.1)]
  paths = []
  for i, x in enumerate(xs):
    paths.append(tmp_path / f"m{i}.wav")
    sf.write(paths[-1], x, SR, subtype="FLOAT")
  (tmp_path / "list.txt").write_text("".join(f"{p}\n" for p in paths))
  code, out, err = _extract(capsys, "--checkpoint", waveformer_run, "--mixture-list", tmp_path / "list.txt",
                            "--query-class", "siren", "--out-dir", tmp_path / "out", "--stream", "--no-progress")
  assert code == 0, err
  clue = np.asarray(waveformer.class_encoder(jax.nn.one_hot(jnp.array([2]), len(CLASSES))))[0]
  for i, x in enumerate(xs):
    y, sr = sf.read(tmp_path / "out" / f"m{i}.wav", dtype="float32")
    ref = _offline(waveformer, x, clue)
    assert sr == SR and y.shape == x.shape and np.sqrt(np.mean(ref ** 2)) > 0.05
    assert float(np.max(np.abs(y - ref))) <= 1e-5, f"file {i}"

def test_extract_stream_with_an_enrollment_at_another_rate_resamples_like_soxr(waveformer_run, waveformer, tmp_path,
                                                                               capsys):
  rate = 22050
  rng = np.random.default_rng(2)
  x = (0.3 * rng.standard_normal(int(0.9 * rate))).astype(np.float32)
  enrollment = (0.3 * rng.standard_normal(int(0.7 * SR))).astype(np.float32)
  sf.write(tmp_path / "mix.wav", x, rate, subtype="FLOAT")
  sf.write(tmp_path / "enroll.wav", enrollment, SR, subtype="FLOAT")
  code, out, err = _extract(capsys, "--checkpoint", waveformer_run, "--mixture", tmp_path / "mix.wav",
                            "--enrollment", tmp_path / "enroll.wav", "-o", tmp_path / "out.wav", "--stream")
  assert code == 0, err
  y, sr = sf.read(tmp_path / "out.wav", dtype="float32")
  # The enrollment clue through the (offline) query path; what is checked here is the streaming separation.
  clue = inference.Separator.from_workdir(waveformer_run).embed_query_audio([str(tmp_path / "enroll.wav")])
  at_model = soxr.resample(x, rate, SR, quality="HQ").astype(np.float32)
  ref = soxr.resample(_offline(waveformer, at_model, clue), SR, rate, quality="HQ").astype(np.float32)
  ref = np.pad(ref, (0, max(0, len(x) - len(ref))))[:len(x)]
  assert sr == rate and y.shape == x.shape
  err_max = float(np.max(np.abs(y - ref)))
  print(f"streaming vs offline forward at {rate} Hz, enrollment query: max |diff| {err_max:.2e}")
  assert err_max <= 1e-5


def test_stream_is_refused_for_an_offline_run_naming_its_model(tmp_path, capsys):
  config = soundbeam_config.get_config("tiny")
  run = _save_run(tmp_path / "soundbeam_run", config, "soundbeam", perturb=False)
  sf.write(tmp_path / "mix.wav", np.zeros(SR // 2, np.float32), SR)
  args = ["--checkpoint", run, "--mixture", tmp_path / "mix.wav", "--query-class", "dog", "-o", tmp_path / "o.wav"]
  code, out, err = _extract(capsys, *args, "--stream")
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1 and not out.strip(), err
  assert lines[0].startswith("uss-jax: error: extract: --stream: ") and "'soundbeam' run" in lines[0]
  assert "offline system" in lines[0] and run in lines[0]
  assert not (tmp_path / "o.wav").exists() and not glob.glob(str(tmp_path / ".uss-jax-*"))
  sep = inference.Separator.from_workdir(run)
  with pytest.raises(ValueError, match="'soundbeam' run, an offline system"):
    sep.separate(np.zeros(100, np.float32), SR, sep.class_condition("dog"), online=True)


def test_stream_with_chunk_seconds_is_a_usage_error(waveformer_run, tmp_path, capsys):
  sf.write(tmp_path / "mix.wav", np.zeros(SR // 4, np.float32), SR)
  code, _, err = _extract(capsys, "--checkpoint", waveformer_run, "--mixture", tmp_path / "mix.wav", "--query-class",
                          "dog", "-o", tmp_path / "o.wav", "--stream", "--chunk-seconds", "1")
  assert code == 2 and err.strip() == ("uss-jax: error: extract: --chunk-seconds does not apply with --stream (the "
                                       "system's own chunk is used)")
