"""SED anchor mining (data_pipelines.anchors) against hand-computed curves and a plain numpy loop.

The numpy loop follows bytedance/uss uss/data/anchor_segment_detectors.py (AnchorSegmentScorer: replicate padding,
box filter of segment_frames // 2 * 2 + 1 frames; get_segment_bgn_end_samples: clamp, frames x hop), extended as
documented in anchors.anchor_starts: only the clip's valid frames are read, and clips shorter than the box start at 0
with the mean probability over the clip as score.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines import anchors
from uss_jax.train import sharding

HALF = 100  # 2 s at 100 frames/s
HOP = 320


def np_anchor(p: np.ndarray, half: int, hop: int) -> tuple[int, float]:
  """The reference rule on one curve ``p`` (valid frames only), float64, one window at a time."""
  p = np.asarray(p, np.float64)
  n, width = len(p), 2 * half + 1
  if n < width:
    return 0, float(p.mean())
  q = np.concatenate([np.full(half, p[0]), p, np.full(half, p[-1])])
  box = np.array([q[t:t + width].mean() for t in range(n)])
  best = int(np.argmax(box))
  centre = min(max(best, half), n - 1 - half)
  return (centre - half) * hop, float(box[centre])


def run_rule(curve: np.ndarray, num_frames=None, half=HALF, hop=HOP):
  start, score = anchors.anchor_starts(jnp.asarray(curve[None, :, None], jnp.float32), 2 * half, hop,
                                       None if num_frames is None else jnp.asarray([num_frames]))
  return int(start[0, 0]), float(score[0, 0])


# ---------------------------------------------------------------------------------------------------------------------
# The rule
# ---------------------------------------------------------------------------------------------------------------------


def test_plateau_takes_first_full_window():
  p = np.zeros(1001)
  p[300:700] = 0.7  # windows [t - 100, t + 100] inside the plateau: t in [400, 599]; the first wins
  start, score = run_rule(p)
  assert start == (400 - HALF) * HOP == 96000
  np.testing.assert_allclose(score, 0.7, rtol=1e-6)


def test_wide_low_peak_beats_narrow_high_peak():
  p = np.zeros(1001)
  p[200:220] = 1.0  # area 20
  p[600:700] = 0.5  # area 50, fully covered for centres t in [599, 700]
  start, score = run_rule(p)
  assert start == (599 - HALF) * HOP
  np.testing.assert_allclose(score, 50 / 201, rtol=1e-6)


@pytest.mark.parametrize("side", ["left", "right"])
def test_edge_peak_is_clamped(side):
  p = np.zeros(1001)
  if side == "left":
    p[:10] = 1.0  # replicate padding makes t = 0 the argmax; clamped to 100 -> start 0, window frames 0..200
    expected_start, expected_score = 0, 10 / 201
  else:
    p[995:] = 1.0  # argmax t = 1000, clamped to 900 -> frames 800..1000, the last 64,000 samples of 10 s
    expected_start, expected_score = (900 - HALF) * HOP, 6 / 201
  start, score = run_rule(p)
  assert start == expected_start
  assert start + 2 * HALF * HOP <= 320000
  np.testing.assert_allclose(score, expected_score, rtol=1e-6)


def test_short_clip_starts_at_zero_and_padding_never_wins():
  p = np.full(1001, 1.0)  # padding after frame 150 is all ones: it must not be read
  p[:150] = np.linspace(0.0, 0.3, 150)
  start, score = run_rule(p, num_frames=150)
  assert start == 0
  np.testing.assert_allclose(score, p[:150].mean(), rtol=1e-6)


def test_padded_frames_are_masked():
  rng = np.random.default_rng(1)
  p = rng.random(600)
  padded = np.concatenate([p, np.ones(401)])
  assert run_rule(padded, num_frames=600)[0] == run_rule(p)[0] == np_anchor(p, HALF, HOP)[0]
  np.testing.assert_allclose(run_rule(padded, num_frames=600)[1], np_anchor(p, HALF, HOP)[1], rtol=1e-6)


def _smooth_curves(rng, batch, frames, classes):
  """Random probability curves with structure at the scale of the box (sums of random sinusoids)."""
  t = np.arange(frames)[None, :, None]
  shape = (batch, 1, classes)
  x = sum(rng.standard_normal(shape) * np.sin(2 * np.pi * t * rng.uniform(0.001, 0.02, shape) + rng.uniform(0, 6.3, shape))
          for _ in range(4))
  return 1 / (1 + np.exp(-x - 0.1 * rng.standard_normal((batch, frames, classes))))


@pytest.mark.parametrize("half,hop", [(100, 320), (37, 160)])
def test_rule_matches_numpy_loop_on_random_curves(half, hop):
  rng = np.random.default_rng(half)
  batch, frames, classes = 6, 523, 5
  p = _smooth_curves(rng, batch, frames, classes).astype(np.float32)
  num_frames = np.array([523, 400, 2 * half + 1, 2 * half, 90, 317])  # full, padded, exactly one box, short
  start, score = anchors.anchor_starts(jnp.asarray(p), 2 * half, hop, jnp.asarray(num_frames))
  worst = 0.0
  for b in range(batch):
    for c in range(classes):
      want_start, want_score = np_anchor(p[b, :num_frames[b], c], half, hop)
      assert int(start[b, c]) == want_start, (b, c)
      worst = max(worst, abs(float(score[b, c]) - want_score))
  assert worst < 2e-6, worst


def test_online_segments_equal_offline_slices():
  rng = np.random.default_rng(3)
  batch, frames, classes, hop, seg = 4, 301, 6, 10, 2000  # 3 s at 1 kHz, 100 frames/s, 2 s segments
  p = _smooth_curves(rng, batch, frames, classes).astype(np.float32)
  wave = rng.standard_normal((batch, 3000)).astype(np.float32)
  class_ids = np.array([0, 5, 2, 2])
  num_frames = np.array([301, 250, 150, 301])  # row 2: 1.5 s clip, shorter than the segment
  segments = anchors.online_anchor_segments(jnp.asarray(p), jnp.asarray(wave), jnp.asarray(class_ids), seg, hop,
                                            jnp.asarray(num_frames))
  starts, _ = anchors.anchor_starts(jnp.asarray(p), seg // hop, hop, jnp.asarray(num_frames))
  for b in range(batch):
    s = int(starts[b, class_ids[b]])
    assert s == np_anchor(p[b, :num_frames[b], class_ids[b]], seg // hop // 2, hop)[0]
    want = np.zeros(seg, np.float32)
    piece = wave[b, s:s + seg]
    want[:piece.shape[0]] = piece
    np.testing.assert_array_equal(np.asarray(segments[b]), want)


def test_check_anchor_mode():
  assert anchors.check_anchor_mode("online") == "online"
  with pytest.raises(ValueError, match="offline"):
    anchors.check_anchor_mode("both")


# ---------------------------------------------------------------------------------------------------------------------
# Offline mining with a fake detector whose framewise output is a known function of the waveform
# ---------------------------------------------------------------------------------------------------------------------

SR, FAKE_HOP, CLASSES = 1000, 10, 4  # 100 frames/s; 2 s segments = 2000 samples = 200 frames


def _fake_probs(v):
  """Framewise probabilities (..., frames, 4) from the per-frame values v in [0, 1] (works on numpy and jnp)."""
  xp = jnp if isinstance(v, jax.Array) else np
  return xp.stack([v, 1.0 - v, v * v, xp.abs(xp.sin(5.0 * v))], axis=-1)


def fake_detector(waveform):
  """(batch, samples) -> framewise (batch, samples // 10 + 1, 4): frame t reads sample 10 t (zero past the end)."""
  frames = waveform.shape[1] // FAKE_HOP + 1
  v = jnp.pad(waveform, ((0, 0), (0, FAKE_HOP)))[:, ::FAKE_HOP][:, :frames]
  return {"framewise_output": _fake_probs(v)}


class CountingSource:
  """In-memory random-access source counting element reads; reading an index in ``fail`` raises."""

  def __init__(self, elements, fail=()):
    self.elements, self.fail, self.reads = elements, set(fail), []

  def __len__(self):
    return len(self.elements)

  def __getitem__(self, i):
    if i in self.fail:
      raise RuntimeError(f"injected failure at clip {i}")
    self.reads.append(i)
    return self.elements[i]


def make_clips(num, seed=0):
  rng = np.random.default_rng(seed)
  elements = []
  for i in range(num):
    samples = 1200 if i == 4 else int(rng.integers(2000, 5001))  # clip 4: 1.2 s, shorter than the segment
    frames = samples // FAKE_HOP + 1
    v = _smooth_curves(rng, 1, frames, 1)[0, :, 0]
    wave = np.repeat(v, FAKE_HOP)[:samples].astype(np.float32)
    if i % 3 == 0:
      wave = np.round(wave * 32767).astype(np.int16)
    labels = np.zeros(CLASSES, np.uint8)
    labels[rng.choice(CLASSES, size=int(rng.integers(1, 4)), replace=False)] = 1
    elements.append({"waveform": wave, "labels": labels})
  return elements


def reference_rows(elements):
  rows = []
  for i, e in enumerate(elements):
    w = e["waveform"]
    w = w.astype(np.float32) / 32768.0 if w.dtype == np.int16 else w
    frames = w.shape[0] // FAKE_HOP + 1
    v = np.pad(w, (0, FAKE_HOP))[::FAKE_HOP][:frames].astype(np.float32)
    p = _fake_probs(v)
    for c in np.flatnonzero(e["labels"]):
      start, score = np_anchor(p[:, c], HALF, FAKE_HOP)
      rows.append((i, c, start, score))
  return [np.array(col) for col in zip(*rows)]


def mine(source, out_dir, **kw):
  args = dict(sample_rate=SR, segment_seconds=2.0, batch_size=4, chunk_size=4, out_dir=str(out_dir))
  args.update(kw)
  return anchors.mine_anchors(fake_detector, source, **args)


def assert_same_index(a, b, score_tol=0.0):
  for name in ("clip", "label", "start"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
  np.testing.assert_allclose(a.score, b.score, rtol=0, atol=score_tol)
  assert (a.segment_samples, a.sample_rate) == (b.segment_samples, b.sample_rate)


@pytest.fixture(scope="session")
def clips():
  return make_clips(13)


@pytest.fixture(scope="session")
def one_device(clips, tmp_path_factory):
  return mine(CountingSource(clips), tmp_path_factory.mktemp("one"))


def test_mine_matches_numpy_reference(clips, one_device, tmp_path):
  clip, label, start, score = reference_rows(clips)
  np.testing.assert_array_equal(one_device.clip, clip)
  np.testing.assert_array_equal(one_device.label, label)
  np.testing.assert_array_equal(one_device.start, start)
  np.testing.assert_allclose(one_device.score, score, atol=2e-6)
  assert one_device.start[one_device.clip == 4].tolist() == [0] * int(np.sum(one_device.clip == 4))
  assert (one_device.segment_samples, one_device.sample_rate) == (2000, SR)
  assert one_device.clip.dtype == np.int64 and one_device.score.dtype == np.float32
  # one row per positive label
  assert len(one_device) == sum(int(e["labels"].sum()) for e in clips)


def test_metadata_and_chunk_files(one_device, tmp_path):
  source = CountingSource(make_clips(13))
  mine(source, tmp_path)
  meta = anchors.read_anchor_metadata(str(tmp_path))
  assert meta["hop_samples"] == FAKE_HOP and meta["frame_offset"] == 1 and meta["frames_per_second"] == 100
  assert meta["num_clips"] == 13 and meta["num_chunks"] == 4 and meta["segment_samples"] == 2000
  assert meta["detector"] == "fake_detector"
  names = sorted(f for f in os.listdir(tmp_path) if f.startswith("chunk_"))
  assert names == [os.path.basename(anchors.chunk_path(str(tmp_path), k, 4)) for k in range(4)]
  assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


@pytest.mark.parametrize("data,batch", [(8, 8), (4, 4)])
def test_mesh_gives_identical_results(clips, one_device, tmp_path, data, batch):
  mesh = sharding.create_mesh({"data": data}, jax.devices()[:data])
  index = mine(CountingSource(clips), tmp_path, mesh=mesh, batch_size=batch, chunk_size=8)
  assert_same_index(index, one_device)


def test_resume_after_failure_recomputes_only_missing_chunks(clips, one_device, tmp_path):
  with pytest.raises(RuntimeError, match="injected failure at clip 9"):
    mine(CountingSource(clips, fail={9}), tmp_path)  # chunk 2 = clips 8..11
  with pytest.raises(anchors.MissingChunksError, match="2 of 4 anchor chunks missing \\(2-3\\)") as err:
    anchors.load_anchor_index(str(tmp_path))
  assert err.value.missing == [2, 3]
  source = CountingSource(clips)
  index = mine(source, tmp_path)
  assert sorted(source.reads) == list(range(8, 13))  # chunks 0 and 1 were not read again
  assert_same_index(index, one_device)
  again = CountingSource(clips)
  mine(again, tmp_path)
  assert again.reads == []


def test_per_host_split_is_disjoint_and_union_loads(clips, one_device, tmp_path):
  shares = []
  for p in (0, 1):
    before = set(os.listdir(tmp_path))
    source = CountingSource(clips)
    index = mine(source, tmp_path, process_index=p, process_count=2)
    written = {f for f in set(os.listdir(tmp_path)) - before if f.startswith("chunk_")}
    chunks = {int(f.split("_")[1].split("-")[0]) for f in written}
    assert chunks == {k for k in range(4) if k % 2 == p}
    assert set(source.reads) == {i for k in chunks for i in range(4 * k, min(4 * k + 4, 13))}
    assert set(index.clip.tolist()) <= set(source.reads)
    shares.append(set(source.reads))
    if p == 0:
      with pytest.raises(anchors.MissingChunksError, match=r"\(1, 3\)"):
        anchors.load_anchor_index(str(tmp_path))
  assert not shares[0] & shares[1] and shares[0] | shares[1] == set(range(13))
  assert_same_index(anchors.load_anchor_index(str(tmp_path)), one_device)


def test_resume_with_other_settings_is_refused(clips, tmp_path):
  mine(CountingSource(clips[:5]), tmp_path)
  with pytest.raises(ValueError, match="segment_samples: on disk 2000, now 1500"):
    mine(CountingSource(clips[:5]), tmp_path, segment_seconds=1.5)
  with pytest.raises(ValueError, match="chunk_size"):
    mine(CountingSource(clips[:5]), tmp_path, chunk_size=2)


class ScaledFake(nnx.Module):
  """``fake_detector`` on ``scale * waveform`` as an nnx module (weights travel as a jit argument)."""

  def __init__(self, scale: float):
    self.scale = nnx.Param(jnp.asarray(scale, jnp.float32))

  def __call__(self, waveform):
    return fake_detector(waveform * self.scale[...])


def test_nnx_detector_and_weight_check(clips, one_device, tmp_path):
  index = anchors.mine_anchors(ScaledFake(1.0), CountingSource(clips), sample_rate=SR, batch_size=4, chunk_size=4,
                               out_dir=str(tmp_path))
  assert_same_index(index, one_device)
  assert anchors.read_anchor_metadata(str(tmp_path))["detector"] == "ScaledFake"
  with pytest.raises(ValueError, match="detector_sha256"):
    anchors.mine_anchors(ScaledFake(0.5), CountingSource(clips), sample_rate=SR, batch_size=4, chunk_size=4,
                         out_dir=str(tmp_path))


def test_bad_arguments(clips, tmp_path):
  mesh = sharding.create_mesh({"data": 4}, jax.devices()[:4])
  with pytest.raises(ValueError, match="multiple of the mesh's 4 batch shards"):
    mine(CountingSource(clips), tmp_path / "a", mesh=mesh, batch_size=6)
  bad = [dict(clips[0], labels=np.ones(7, np.uint8))]
  with pytest.raises(ValueError, match=r"multi-hot \(4,\)"):
    mine(CountingSource(bad), tmp_path / "b")
  with pytest.raises(ValueError, match="empty"):
    mine(CountingSource([]), tmp_path / "c")


# ---------------------------------------------------------------------------------------------------------------------
# Real audio: a tiny Cnn14 over a TFDS build of the corpus (consistency only: random weights)
# ---------------------------------------------------------------------------------------------------------------------


def test_tiny_cnn14_on_corpus(corpus_dir, tmp_path):
  from data_pipelines.builders import labeled_audio  # pylint: disable=import-outside-toplevel
  from uss_jax.models.cnn14 import Cnn14  # pylint: disable=import-outside-toplevel

  sr = 16000
  builder = labeled_audio.build_labeled_audio(audio_dir=corpus_dir / "wav16k", csv_path=corpus_dir / "metadata.csv",
                                              data_dir=tmp_path / "tfds", sample_rate=sr, holdout_fraction=0.25)
  source = builder.as_data_source("test")
  num_classes = len(builder.class_names)
  model = Cnn14(num_classes, channels=(4, 8, 16), head="decision_max", mel_bins=32, frontend="panns",
                sample_rate=sr, window_size=512, hop_size=160, fmax=8000, rngs=nnx.Rngs(0))
  index = anchors.mine_anchors(model, source, sample_rate=sr, batch_size=8, chunk_size=16, pad_multiple=sr * 5 // 2,
                               out_dir=str(tmp_path / "anchors"))
  meta = json.loads((tmp_path / "anchors" / anchors.METADATA_FILENAME).read_text())
  assert (meta["hop_samples"], meta["frame_offset"], meta["frames_per_second"]) == (160, 1, 100.0)
  assert meta["detector"] == "Cnn14" and meta["num_classes"] == num_classes and meta["num_clips"] == len(source)

  segment = 2 * sr
  assert index.segment_samples == segment
  expected = [(i, c) for i in range(len(source)) for c in np.flatnonzero(source[i]["labels"])]
  assert list(zip(index.clip.tolist(), index.label.tolist())) == expected
  lengths = np.array([source[int(i)]["waveform"].shape[0] for i in index.clip])
  assert np.all(index.start % 160 == 0)
  assert np.all((index.start >= 0) & (index.start <= np.maximum(lengths - segment, 0)))
  assert np.all((index.score >= 0) & (index.score <= 1))
  assert len(np.unique(index.start)) > 1  # not all at 0: clips of 2-5 s give the rule room
