"""The task pipelines of data_pipelines.pipelines: numbers against numpy, determinism, per-host rows, eval sets.

A small synthetic labeled source (int16 clips, some shorter than a segment) and a hand-built AnchorIndex stand in
for a dataset and for anchor mining; one test reads a real array_record build (the embedded demo corpus).
"""

import glob
import os

import numpy as np
import pytest

from data_pipelines import extraction, mixing, pipelines, pretraining
from data_pipelines.anchors import AnchorIndex

SEG = 800
NUM_CLIPS, NUM_CLASSES = 30, 6


def _make_source(seed=0):
  rng = np.random.default_rng(seed)
  classes = rng.permutation(np.arange(NUM_CLIPS) % NUM_CLASSES)
  source = []
  for i, c in enumerate(classes):
    n = int(rng.integers(500, 2600))
    wav = np.round(rng.standard_normal(n) * rng.uniform(500, 8000)).clip(-32768, 32767).astype(np.int16)
    source.append({"waveform": wav, "label": int(c), "labels": np.eye(NUM_CLASSES, dtype=np.uint8)[c],
                   "caption": f"clip {i} of class {c}".encode()})
  return source


SOURCE = _make_source()


def _make_index(source, seed=1):
  rng = np.random.default_rng(seed)
  clips, labels, starts = [], [], []
  for i, e in enumerate(source):
    n = e["waveform"].size
    for _ in range(2):  # two anchors per clip, one of them possibly running past the clip's end
      clips.append(i)
      labels.append(e["label"])
      starts.append(int(rng.integers(0, max(n - SEG // 2, 1))))
  return AnchorIndex(clip=np.array(clips), label=np.array(labels), start=np.array(starts),
                     score=np.ones(len(clips), np.float32), segment_samples=SEG, sample_rate=8000)


INDEX = _make_index(SOURCE)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _separation(process_index=0, process_count=1, seed=3, workers=0, **kw):
  return pipelines.separation_train_iterator(SOURCE, INDEX, segment_samples=SEG, global_batch=8, seed=seed,
                                             process_index=process_index, process_count=process_count,
                                             num_workers=workers, **kw)


def _numpy_segment(clip, start):
  wav = SOURCE[clip]["waveform"].astype(np.float64) / 32768
  out = np.zeros(SEG)
  piece = wav[start:start + SEG]
  out[:piece.size] = piece
  return out


def test_separation_batches_are_energy_matched_balanced_pairs():
  batches = _take(_separation(with_interferer=True), 6)
  sampler = mixing.BalancedSampler(INDEX.label, seed=3)
  for b, batch in enumerate(batches):
    for j in range(8):
      n = b * 8 + j
      t_slot, i_slot = sampler.pair_slots(n)
      (tc, tr), (ic, ir) = sampler.slot(t_slot), sampler.slot(i_slot)
      t = _numpy_segment(INDEX.clip[tr], INDEX.start[tr])
      i = _numpy_segment(INDEX.clip[ir], INDEX.start[ir])
      r = np.clip(np.sqrt(np.mean(t**2) / max(np.mean(i**2), 1e-10)), 0.02, 50)
      mix = t + r * i
      np.testing.assert_allclose(batch["mixture"][j], mix / np.abs(mix).max(), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(batch["target"][j], t / np.abs(t).max(), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(batch["interferer"][j], r * i / np.abs(mix).max(), rtol=1e-5, atol=1e-6)
      assert batch["ratio"][j] == pytest.approx(r, rel=1e-5)
      assert batch["class_id"][j] == tc != batch["interferer_class_id"][j] == ic
      assert batch["target_clip"][j] == INDEX.clip[tr]
  classes = np.concatenate([b["class_id"] for b in batches])
  np.testing.assert_array_equal(np.bincount(classes, minlength=NUM_CLASSES), np.full(NUM_CLASSES, 8))  # 48 = 8 K


def test_separation_is_deterministic_and_two_hosts_concatenate_to_one():
  one = _take(_separation(), 4)
  again = _take(_separation(), 4)
  h0, h1 = _take(_separation(0, 2), 4), _take(_separation(1, 2), 4)
  other_seed = _take(_separation(seed=4), 1)
  for b, a, x0, x1 in zip(one, again, h0, h1):
    for key in b:
      np.testing.assert_array_equal(b[key], a[key])
      np.testing.assert_array_equal(b[key], np.concatenate([x0[key], x1[key]]))
  assert not np.array_equal(one[0]["mixture"], other_seed[0]["mixture"])


@pytest.mark.parametrize("workers", [0, 1])
def test_separation_state_restore_mid_stream(workers):
  reference = _take(_separation(), 5)
  it = _separation(workers=workers)
  _take(it, 2)
  state = it.get_state()
  restored = _separation(workers=workers)
  restored.set_state(state)
  for e, g in zip(reference[2:], _take(restored, 3)):
    for key in e:
      np.testing.assert_array_equal(e[key], g[key])


def test_separation_eval_set_reference_way_and_npz_round_trip(tmp_path):
  ev = pipelines.separation_eval_set(SOURCE, INDEX, pairs_per_class=3, seed=9, segment_samples=SEG)
  n = 3 * NUM_CLASSES
  np.testing.assert_array_equal(ev["class_id"], np.repeat(np.arange(NUM_CLASSES), 3))  # 3 per class, by class
  assert (ev["class_id"] != ev["interferer_class_id"]).all()
  for k in range(n):  # not normalised: mixture = target + r * interferer, segments from the source
    t = _numpy_segment(ev["target_clip"][k], ev["target_start"][k])
    i = _numpy_segment(ev["interferer_clip"][k], ev["interferer_start"][k])
    r = np.clip(np.sqrt(np.mean(t**2) / max(np.mean(i**2), 1e-10)), 0.02, 50)
    np.testing.assert_allclose(ev["target"][k], t, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ev["mixture"][k], t + r * i, rtol=1e-5, atol=1e-6)
  path = str(tmp_path / "eval.npz")
  pipelines.save_eval_set(path, ev)
  loaded = pipelines.load_eval_set(path)
  assert loaded.keys() == ev.keys()
  for key in ev:
    assert loaded[key].dtype == np.asarray(ev[key]).dtype
    np.testing.assert_array_equal(loaded[key], ev[key])
  # A recipe-only set rebuilds the same audio from the source, batch by batch, on two hosts.
  recipe = pipelines.separation_eval_set(SOURCE, INDEX, pairs_per_class=3, seed=9, segment_samples=SEG,
                                         with_audio=False)
  assert "mixture" not in recipe
  got = {0: [], 1: []}
  for p in (0, 1):
    for batch in pipelines.eval_set_batches(recipe, global_batch=8, process_index=p, process_count=2,
                                            source=SOURCE):
      got[p].append(batch)
  rows = [np.concatenate([b0[key], b1[key]]) for b0, b1 in zip(got[0], got[1]) for key in ("mixture", "mask")]
  mixtures = np.concatenate(rows[0::2])[np.concatenate(rows[1::2]).astype(bool)]
  np.testing.assert_array_equal(mixtures, ev["mixture"])


def _soundfilter(process_index=0, process_count=1):
  return extraction.soundfilter_train_iterator(SOURCE, crop_samples=500, global_batch=8, seed=2,
                                              process_index=process_index, process_count=process_count)


def test_soundfilter_batches():
  batches = _take(_soundfilter(), 8)
  gains, clips = [], []
  for batch in batches:
    for j in range(8):
      clip, bg = int(batch["clip"][j]), int(batch["background_clip"][j])
      wav = SOURCE[clip]["waveform"].astype(np.float64) / 32768
      a, b = int(batch["target_start"][j]), int(batch["condition_start"][j])
      window = 500 if wav.size >= 1000 else wav.size // 2
      assert not set(range(a, a + window)) & set(range(b, b + window))
      np.testing.assert_allclose(batch["target"][j][:window], wav[a:a + window], rtol=1e-6)
      np.testing.assert_allclose(batch["condition"][j][:window], wav[b:b + window], rtol=1e-6)
      g = float(batch["background_gain_db"][j])
      s = int(batch["background_start"][j])
      bwav = SOURCE[bg]["waveform"].astype(np.float64) / 32768
      expect = np.zeros(500)
      expect[:bwav[s:s + 500].size] = bwav[s:s + 500]
      np.testing.assert_allclose(batch["background"][j], expect * float(batch["background_scale"][j]), rtol=1e-5,
                                 atol=1e-8)
      pt, pb = np.mean(batch["target"][j].astype(np.float64) ** 2), np.mean(expect ** 2)
      if pt >= 1e-8 and pb >= 1e-8:  # at g dB re the target crop (mixing.soundfilter_example, 'target')
        np.testing.assert_allclose(10 * np.log10(np.mean(batch["background"][j].astype(np.float64) ** 2) / pt), g,
                                   atol=1e-3)
      np.testing.assert_allclose(batch["mixture"][j], batch["target"][j] + batch["background"][j], rtol=1e-6)
      assert extraction.decode_caption(batch["caption"][j]) == SOURCE[clip]["caption"].decode() and bg != clip
      gains.append(g)
      clips.append(clip)
  assert -4 <= min(gains) and max(gains) <= 4
  assert sorted(clips[:NUM_CLIPS]) == list(range(NUM_CLIPS))  # one epoch: every clip once as the target
  h0, h1 = _take(_soundfilter(0, 2), 2), _take(_soundfilter(1, 2), 2)
  for b, x0, x1 in zip(batches, h0, h1):
    np.testing.assert_array_equal(b["mixture"], np.concatenate([x0["mixture"], x1["mixture"]]))
  ev = extraction.soundfilter_eval_set(SOURCE, crop_samples=500, seed=1)
  assert ev["mixture"].shape == (NUM_CLIPS, 500) and "use_text" not in ev
  # the 'audible' rule reaches the crops: each is the clip's window at its recorded start (zeros off the clip)
  aud = extraction.soundfilter_eval_set(SOURCE, crop_samples=500, seed=1, crop_rule="audible")
  for j in range(NUM_CLIPS):
    wav = np.pad(SOURCE[j]["waveform"].astype(np.float64) / 32768, 500)
    for key, start in (("target", "target_start"), ("condition", "condition_start")):
      a = int(aud[start][j]) + 500
      np.testing.assert_allclose(aud[key][j], wav[a:a + 500], rtol=1e-6, err_msg=key)
    assert abs(int(aud["target_start"][j]) - int(aud["condition_start"][j])) >= 500
  np.testing.assert_array_equal(ev["clip"], np.arange(NUM_CLIPS))
  np.testing.assert_allclose(ev["mixture"], ev["target"] + ev["background"], rtol=1e-6)


def test_tse_batches_and_eval_set(tmp_path):
  kw = dict(mixture_samples=1200, enrollment_samples=600, snr_db=(5.0, 15.0), event_samples=(400, 900))
  it = extraction.tse_train_iterator(SOURCE, global_batch=4, seed=0, process_index=0, process_count=1, **kw)
  labels = np.stack([e["labels"] for e in SOURCE])
  for batch in _take(it, 5):
    for j in range(4):
      cls = batch["class_id"][j]
      assert cls[0] != cls[1]
      assert np.abs(batch["mixture"][j]).max() == pytest.approx(1.0)  # peak-normalised, targets by the same factor
      k = int(batch["num_events"][j])
      snr = batch["snr_db"][j]
      assert k in (3, 4) and np.isnan(snr[k:]).all() and ((snr[:k] >= 5) & (snr[:k] <= 15)).all()
      for t in range(2):  # each target: one contiguous event of 400-900 samples
        support = np.flatnonzero(batch["target"][j, t])
        assert 300 <= support[-1] - support[0] + 1 <= 900
        enroll = batch["enrollment"][j, t]
        owners = [c for c, e in enumerate(SOURCE) if _is_window(enroll, e["waveform"])]
        assert owners and all(labels[c, cls[t]] for c in owners)  # a crop of a clip of the target class
  # The generator of element n depends on (seed, n) only: two hosts concatenate to one, a restored state resumes.
  def tse(p=0, count=1):
    return extraction.tse_train_iterator(SOURCE, global_batch=4, seed=0, process_index=p, process_count=count, **kw)
  one, h0, h1 = _take(tse(), 3), _take(tse(0, 2), 3), _take(tse(1, 2), 3)
  resumed = tse()
  _take(resumed, 1)
  state = resumed.get_state()
  resumed = tse()
  resumed.set_state(state)
  for b, x0, x1, r in zip(one[1:], h0[1:], h1[1:], _take(resumed, 2)):
    for key in b:
      np.testing.assert_array_equal(b[key], np.concatenate([x0[key], x1[key]]))
      np.testing.assert_array_equal(b[key], r[key])
  ev = extraction.tse_eval_set(SOURCE, num_mixtures=6, seed=5, **kw)
  again = extraction.tse_eval_set(SOURCE, num_mixtures=6, seed=5, **kw)
  path = str(tmp_path / "tse.npz")
  pipelines.save_eval_set(path, ev)
  loaded = pipelines.load_eval_set(path)
  for key in ev:
    np.testing.assert_array_equal(ev[key], again[key])
    np.testing.assert_array_equal(ev[key], loaded[key])
  assert ev["target"].shape == (6, 2, 1200) and ev["enrollment"].shape == (6, 2, 600)


def _is_window(crop, wav):
  """Whether ``crop`` (float32) is a window of the int16 clip ``wav``, zero-padded past its end."""
  x = wav.astype(np.float32) / 32768
  nz = np.flatnonzero(crop)
  if not nz.size:
    return False
  length = nz[-1] + 1
  if length > x.size:
    return False
  windows = np.lib.stride_tricks.sliding_window_view(x, length)
  return bool((windows == crop[:length]).all(axis=1).any())


def test_pretraining_crops_and_mixup():
  plain = _take(pretraining.pretraining_train_iterator(SOURCE, clip_samples=1000, global_batch=10, seed=0,
                                                     process_index=0, process_count=1), 3)
  for batch in plain:
    assert (batch["mixup_lambda"] == 1).all()
    for j in range(10):
      owners = [c for c, e in enumerate(SOURCE) if _is_window(batch["waveform"][j], e["waveform"])]
      assert owners and all(SOURCE[c]["label"] == batch["label"][j] for c in owners)
      np.testing.assert_array_equal(batch["labels"][j], np.eye(NUM_CLASSES)[batch["label"][j]])
  mixed = _take(pretraining.pretraining_train_iterator(SOURCE, clip_samples=1000, global_batch=10, seed=0,
                                                     process_index=0, process_count=1, mixup_alpha=10.0,
                                                     mixup_prob=0.5), 20)
  lam = np.concatenate([b["mixup_lambda"] for b in mixed])
  labels = np.concatenate([b["labels"] for b in mixed])
  first = np.concatenate([b["label"] for b in mixed])
  np.testing.assert_allclose(labels.sum(1), 1.0, rtol=1e-6)  # single-label clips: λ + (1 - λ)
  assert (labels[np.arange(lam.size), first] >= lam - 1e-6).all()
  assert 0.3 < np.mean(lam < 1) < 0.7  # mixup_prob 0.5 over 200 examples


def test_separation_and_soundfilter_read_a_real_array_record_build(demo_tfds):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  path = glob.glob(os.path.join(demo_tfds, "labeled_audio", "*", "*"))[0]
  source = tfds.builder_from_directory(path).as_data_source("train")
  n = len(source)
  elements = [source[i] for i in range(n)]
  seg = 16000
  index = AnchorIndex(clip=np.arange(n), label=np.array([e["label"] for e in elements]),
                      start=np.array([e["waveform"].size // 3 for e in elements]), score=np.ones(n, np.float32),
                      segment_samples=seg, sample_rate=16000)
  batch = next(pipelines.separation_train_iterator(source, index, segment_samples=seg, global_batch=4, seed=0,
                                                   process_index=0, process_count=1, normalize=False))
  for j in range(4):
    clip = int(batch["target_clip"][j])
    wav = elements[clip]["waveform"].astype(np.float64) / 32768
    expect = np.zeros(seg)
    piece = wav[wav.size // 3:wav.size // 3 + seg]
    expect[:piece.size] = piece
    np.testing.assert_allclose(batch["target"][j], expect, rtol=1e-6, atol=1e-9)
    assert batch["class_id"][j] == elements[clip]["label"]
  sf = next(extraction.soundfilter_train_iterator(source, crop_samples=seg, global_batch=4, seed=0, process_index=0,
                                                 process_count=1))
  for j in range(4):
    caption = elements[int(sf["clip"][j])]["caption"]
    assert caption and bytes(sf["caption"][j]).rstrip(b"\0") == caption[:256]
