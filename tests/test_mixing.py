"""Tests of data_pipelines.mixing against numpy, a direct simulation of the reference algorithms, and paper formulas.

References: bytedance/uss ``uss/data/samplers.py`` BalancedSampler (re-simulated here with its queue / pointer
algorithm), ``anchor_segment_mixers.py`` energy matching, seed 000 Eq. (2), seed 003 Sec. 3.3.1 (SoundFilter
crops and gains), the Scaper SNR definition (power ratio in dB), Beta(α, α) moments for mixup.
"""

import numpy as np
import pytest
import scipy.stats

from data_pipelines import augment, mixing

# K = 7 classes with unequal numbers of rows (one class has a single row), rows listed in shuffled class order.
COUNTS = [1, 2, 3, 5, 8, 4, 6]
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(7), COUNTS))
K = len(COUNTS)


def _reference_balanced_slots(labels, num_slots, seed):
  """The bytedance/uss BalancedSampler algorithm as written there: queue of shuffled class permutations, one
  shuffled row list and pointer per class, reshuffled when the pointer wraps."""
  state = np.random.RandomState(seed)
  classes = np.unique(labels)
  rows = [np.flatnonzero(labels == c) for c in classes]
  for r in rows:
    state.shuffle(r)
  pointers = [0] * len(classes)
  queue, out = [], []
  while len(out) < num_slots:
    if not queue:
      order = list(range(len(classes)))
      state.shuffle(order)
      queue.extend(order)
    ci = queue.pop(0)
    out.append((classes[ci], rows[ci][pointers[ci]]))
    pointers[ci] += 1
    if pointers[ci] >= rows[ci].size:
      pointers[ci] = 0
      state.shuffle(rows[ci])
  return np.array(out)


def _gap_histogram(classes, num_classes):
  """Histogram (1 .. 2K - 1) of the distance between consecutive occurrences of the same class."""
  gaps = []
  for c in range(num_classes):
    gaps.append(np.diff(np.flatnonzero(classes == c)))
  return np.bincount(np.concatenate(gaps), minlength=2 * num_classes)[1:]


def _check_queue_structure(slots, labels):
  classes, rows = slots[:, 0], slots[:, 1]
  np.testing.assert_array_equal(labels[rows], classes)  # each row belongs to its class
  for e in range(len(slots) // K):  # every refill of K slots holds each class once
    assert sorted(classes[e * K:(e + 1) * K].tolist()) == list(range(K))
  for c, m in enumerate(COUNTS):  # each pass over a class's list uses each of its rows once
    used = rows[classes == c]
    for w in range(len(used) // m):
      assert sorted(used[w * m:(w + 1) * m].tolist()) == sorted(np.flatnonzero(labels == c).tolist())


def test_balanced_sampler_matches_the_reference_queue_algorithm_statistics():
  num = K * 3000
  sampler = mixing.BalancedSampler(LABELS, seed=5)
  ours = np.array([sampler.slot(n) for n in range(num)])
  ref = _reference_balanced_slots(LABELS, num, seed=5)
  _check_queue_structure(ours, LABELS)
  _check_queue_structure(ref, LABELS)
  # Class frequencies over the run: exactly uniform for both.
  np.testing.assert_array_equal(np.bincount(ours[:, 0], minlength=K), np.full(K, num // K))
  np.testing.assert_array_equal(np.bincount(ref[:, 0], minlength=K), np.full(K, num // K))
  # Gap between repeats of a class: two independent uniform positions in consecutive permutations give
  # P(gap = g) = (K - |g - K|) / K^2, g = 1 .. 2K - 1. Both histograms fit it and each other.
  g = np.arange(1, 2 * K)
  expected = (K - np.abs(g - K)) / K**2
  h_ours, h_ref = _gap_histogram(ours[:, 0], K), _gap_histogram(ref[:, 0], K)
  assert scipy.stats.chisquare(h_ours, expected * h_ours.sum()).pvalue > 1e-3
  assert scipy.stats.chisquare(h_ref, expected * h_ref.sum()).pvalue > 1e-3
  assert scipy.stats.chi2_contingency(np.stack([h_ours, h_ref])).pvalue > 1e-3
  # Row frequency within a class is uniform (each class's rows visited equally often, to one).
  for c in range(K):
    counts = np.bincount(ours[ours[:, 0] == c, 1], minlength=len(LABELS))[LABELS == c]
    assert counts.max() - counts.min() <= 1
  # Random access: a fresh sampler (another process) gives the same slots in any order.
  other = mixing.BalancedSampler(LABELS, seed=5)
  for n in (num - 1, 0, 1234, 17):
    assert other.slot(n) == tuple(ours[n])
  reseeded = mixing.BalancedSampler(LABELS, seed=6)
  assert [reseeded.slot(n) for n in range(20)] != [tuple(s) for s in ours[:20]]


def test_pairs_always_have_different_classes():
  sampler = mixing.BalancedSampler(LABELS, seed=1)
  skips = 0
  for n in range(K * 500):
    t, i = sampler.pair_slots(n)
    assert t == n and sampler.class_at(t) != sampler.class_at(i)
    if i == n + 2:  # only when the refill boundary repeats the class
      skips += 1
      assert (n + 1) % K == 0 and sampler.class_at(n + 1) == sampler.class_at(n)
    else:
      assert i == n + 1
  assert 0 < skips < 500 * 0.5  # about 1 in K refills repeat at the boundary
  with pytest.raises(ValueError):
    mixing.BalancedSampler(np.zeros(4, int), seed=0).pair_slots(0)


def _numpy_mix(t, i, normalize):
  t64, i64 = t.astype(np.float64), i.astype(np.float64)
  r = np.clip(np.sqrt(np.mean(t64**2) / max(np.mean(i64**2), 1e-10)), 0.02, 50)
  mix = t64 + r * i64
  if normalize:
    return r, mix / np.abs(mix).max(), t64 / np.abs(t64).max()
  return r, mix, t64


@pytest.mark.parametrize("interferer_scale, expect", [(1.7, "free"), (1e-4, "high"), (300.0, "low"), (0.0, "high")])
@pytest.mark.parametrize("normalize", [False, True])
def test_energy_matching_and_peak_normalisation_match_numpy(interferer_scale, expect, normalize):
  rng = np.random.default_rng(3)
  t = (0.3 * rng.standard_normal(4000)).astype(np.float32)
  i = (interferer_scale * rng.standard_normal(4000)).astype(np.float32)
  out = mixing.mix_pair(t, i, normalize=normalize)
  r, mix, tgt = _numpy_mix(t, i, normalize)
  assert out["ratio"] == pytest.approx(r, rel=1e-5)
  assert {"free": 0.02 < r < 50, "high": r == 50, "low": r == 0.02}[expect]
  np.testing.assert_allclose(out["mixture"], mix, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["target"], tgt, rtol=1e-5, atol=1e-6)
  if normalize:
    assert np.abs(out["mixture"]).max() == pytest.approx(1.0) and np.abs(out["target"]).max() == pytest.approx(1.0)
    # The returned interferer is its share of the normalised mixture.
    np.testing.assert_allclose(out["target"] * out["target_peak"] / out["mixture_peak"] + out["interferer"],
                               out["mixture"], atol=1e-6)
  else:
    np.testing.assert_allclose(out["interferer"], r * i, rtol=1e-5, atol=1e-9)
  if expect == "free":  # the scaled interferer carries the target's energy
    assert np.mean((r * i.astype(np.float64))**2) == pytest.approx(np.mean(t.astype(np.float64)**2), rel=1e-5)


def test_peak_normalize_keeps_silence_zero():
  x, peak = mixing.peak_normalize(np.zeros(10, np.float32))
  assert peak == mixing.PEAK_EPS and not x.any()


def test_anchor_crop_zero_pads_and_scales_int16():
  wav = np.arange(1, 11, dtype=np.int16) * 1000
  np.testing.assert_array_equal(mixing.anchor_crop(wav, 7, 5), np.r_[wav[7:], 0, 0] / 32768.0)
  np.testing.assert_array_equal(mixing.anchor_crop(wav, -2, 4), np.r_[0, 0, wav[:2]] / 32768.0)
  np.testing.assert_array_equal(mixing.anchor_crop(wav, 20, 3), np.zeros(3))
  f = np.linspace(-1, 1, 10).astype(np.float32)
  np.testing.assert_array_equal(mixing.anchor_crop(f, 2, 4), f[2:6])
  assert mixing.anchor_crop(wav, 0, 4).dtype == np.float32


def test_crop_or_tile_loops_short_backgrounds():
  wav = np.arange(5, dtype=np.float32)
  out = mixing.crop_or_tile(wav, 12, np.random.default_rng(0))
  start = int(out[0])
  np.testing.assert_array_equal(out, (start + np.arange(12)) % 5)


@pytest.mark.parametrize("clip_samples", [5000, 1500])  # >= 2 crops, and shorter than two crops
def test_soundfilter_crops_gains_and_text_rate(clip_samples):
  crop = 1000
  rng = np.random.default_rng(11)
  target_clip = rng.standard_normal(clip_samples).astype(np.float32)
  background_clip = rng.standard_normal(3000).astype(np.float32)
  gains, texts = [], []
  for _ in range(1500):
    ex = mixing.soundfilter_example(target_clip, background_clip, rng, crop_samples=crop, gain_db=4.0,
                                    text_rate=0.3)
    a, b, s = int(ex["target_start"]), int(ex["condition_start"]), int(ex["background_start"])
    g = float(ex["background_gain_db"])
    window = crop if clip_samples >= 2 * crop else clip_samples // 2
    assert len(set(range(a, a + window)) & set(range(b, b + window))) == 0  # no shared source sample
    np.testing.assert_array_equal(ex["target"][:window], target_clip[a:a + window])
    np.testing.assert_array_equal(ex["condition"][:window], target_clip[b:b + window])
    assert not ex["target"][window:].any()
    # the background is at g dB re the target crop (input SNR -g dB; an independent power ratio)
    crop_b = background_clip[s:s + crop].astype(np.float64)
    level = 10 * np.log10(np.mean(ex["background"].astype(np.float64) ** 2)
                          / np.mean(ex["target"].astype(np.float64) ** 2))
    np.testing.assert_allclose(level, g, atol=1e-4)
    np.testing.assert_allclose(ex["background"], crop_b * float(ex["background_scale"]), rtol=1e-5)
    np.testing.assert_allclose(ex["mixture"], ex["target"] + ex["background"], rtol=1e-6)
    gains.append(g)
    texts.append(float(ex["use_text"]))
  gains = np.array(gains)
  assert gains.min() >= -4.0 and gains.max() <= 4.0 and gains.min() < -3.9 and gains.max() > 3.9
  assert scipy.stats.kstest(gains, scipy.stats.uniform(loc=-4, scale=8).cdf).pvalue > 1e-3
  assert abs(np.mean(texts) - 0.3) < 4 * np.sqrt(0.3 * 0.7 / len(texts))


def test_soundfilter_raw_gain_and_silent_crops():
  rng = np.random.default_rng(3)
  target_clip = (0.01 * rng.standard_normal(4000)).astype(np.float32)
  background_clip = (0.5 * rng.standard_normal(4000)).astype(np.float32)
  for _ in range(20):  # 'raw': the gain multiplies the stored crop, whatever the target's level
    ex = mixing.soundfilter_example(target_clip, background_clip, rng, crop_samples=1000, gain_reference="raw")
    s, g = int(ex["background_start"]), float(ex["background_gain_db"])
    np.testing.assert_allclose(ex["background"], background_clip[s:s + 1000] * 10 ** (g / 20), rtol=1e-6)
  # 'target' with a silent target crop: no level to match, the stored crop at 10**(g / 20)
  ex = mixing.soundfilter_example(np.zeros(4000, np.float32), background_clip, rng, crop_samples=1000)
  s, g = int(ex["background_start"]), float(ex["background_gain_db"])
  np.testing.assert_allclose(ex["background"], background_clip[s:s + 1000] * 10 ** (g / 20), rtol=1e-6)
  with pytest.raises(ValueError, match="gain_reference"):
    mixing.soundfilter_example(target_clip, background_clip, rng, crop_samples=1000, gain_reference="peak")


@pytest.mark.parametrize("sound", [(300, 700), (200, 3700), (0, 5000)])  # short, long, the whole clip
def test_soundfilter_audible_crops(sound):
  """'audible': disjoint target / condition windows that both hold part of the sound; a background with sound."""
  crop, n = 1000, 5000
  rng = np.random.default_rng(5)
  clip = np.zeros(n, np.float32)
  clip[sound[0]:sound[1]] = rng.uniform(0.5, 1.0, sound[1] - sound[0])  # sound, zeros elsewhere (a padded clip)
  assert mixing.active_extent(clip) == sound
  length = sound[1] - sound[0]
  silent = {"random": 0, "audible": 0}
  for rule in silent:
    for _ in range(300):
      ex = mixing.soundfilter_example(clip, clip, rng, crop_samples=crop, crop_rule=rule)
      a, b = int(ex["target_start"]), int(ex["condition_start"])
      assert abs(a - b) >= crop  # no shared sample
      np.testing.assert_array_equal(ex["target"], np.pad(clip, crop)[a + crop:a + 2 * crop])  # zeros off the clip
      np.testing.assert_array_equal(ex["condition"], np.pad(clip, crop)[b + crop:b + 2 * crop])
      on_t, on_c = np.count_nonzero(ex["target"]), np.count_nonzero(ex["condition"])
      silent[rule] += int(on_t == 0 or on_c == 0 or not ex["background"].any())
      if rule == "audible":  # each window holds a quarter of the sound or a full window of it
        assert min(on_t, on_c) >= min(length // 4, crop)
        assert np.count_nonzero(ex["background"]) == min(length, crop)  # as much sound as a window can hold
  assert silent["audible"] == 0
  if sound[1] - sound[0] < 1000:
    assert silent["random"] > 50  # the paper's random crops miss a short sound (the reason for the rule)
  with pytest.raises(ValueError, match="crop_rule"):
    mixing.soundfilter_example(clip, clip, rng, crop_samples=crop, crop_rule="loud")


def test_scaper_mix_snrs_are_as_drawn():
  rng = np.random.default_rng(2)
  clips = [(rng.standard_normal(rng.integers(1500, 4000)) * s).astype(np.float32) for s in (0.1, 1.0, 3.0, 0.5)]
  background = (0.05 * rng.standard_normal(2500)).astype(np.float32)
  for _ in range(20):
    out = mixing.scaper_mix(clips, background, rng, mixture_samples=3000, event_samples=(1500, 2500),
                            snr_db=(5.0, 15.0))
    bg = out["background"].astype(np.float64)
    np.testing.assert_allclose(out["mixture"], bg + out["events"].sum(0), rtol=1e-5, atol=1e-6)
    for k in range(len(clips)):
      on, length, start = int(out["onset"][k]), int(out["length"][k]), int(out["clip_start"][k])
      ev = out["events"][k].astype(np.float64)
      assert not ev[:on].any() and not ev[on + length:].any()
      measured = 10 * np.log10(np.mean(ev[on:on + length]**2) / np.mean(bg**2))
      assert measured == pytest.approx(float(out["snr_db"][k]), abs=1e-3)
      assert 5.0 <= out["snr_db"][k] <= 15.0 and 1500 <= length <= min(2500, clips[k].size)
      np.testing.assert_allclose(ev[on:on + length], clips[k][start:start + length] * out["gain"][k], rtol=1e-5)


def test_tse_recipe_classes_enrollments_and_background():
  rng = np.random.default_rng(4)
  num_clips, num_classes = 60, 8
  labels = np.zeros((num_clips, num_classes), np.uint8)
  labels[np.arange(num_clips), rng.integers(0, num_classes, num_clips)] = 1
  labels[::7, 3] = 1  # some multi-label clips
  members = mixing.class_members(labels)
  counts = []
  for _ in range(300):
    r = mixing.draw_tse_recipe(rng, labels, members, num_events=(3, 4), num_targets=2)
    cls, clips = r["event_class"], r["event_clip"]
    counts.append(len(cls))
    assert len(set(cls.tolist())) == len(cls)  # distinct classes
    assert all(labels[c, k] for c, k in zip(clips, cls))  # each clip carries its class
    for enroll, c in zip(r["enrollment_clip"], cls[:2]):
      assert labels[enroll, c] and enroll not in clips  # a different clip of the target class
    assert not labels[r["background_clip"], cls].any()
  assert set(counts) == {3, 4}


def test_mixup_lambda_and_mixing():
  rng = np.random.default_rng(0)
  lams = np.array([augment.sample_mixup_lambda(rng, 10.0) for _ in range(4000)])
  a = 10.0  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
  assert abs(lams.mean() - 0.5) < 4 * np.sqrt(1 / (4 * (2 * a + 1)) / lams.size)
  assert lams.var() == pytest.approx(1 / (4 * (2 * a + 1)), rel=0.1)
  x1, x2 = rng.standard_normal(50).astype(np.float32), rng.standard_normal(50).astype(np.float32)
  y1, y2 = np.eye(4, dtype=np.float32)[1], np.eye(4, dtype=np.float32)[3]
  x, y = augment.mixup(x1, y1, x2, y2, 0.3)
  np.testing.assert_allclose(x, 0.3 * x1 + 0.7 * x2, rtol=1e-6)
  np.testing.assert_allclose(y, [0, 0.3, 0, 0.7], rtol=1e-6)


def test_audible_crop_redraws_silent_windows_of_sparse_clips():
  from data_pipelines import mixing  # pylint: disable=import-outside-toplevel
  clip = np.zeros(10_000, np.float32)
  clip[4000:4300] = np.sin(np.arange(300) * 0.3)  # one short hit in silence
  # The first draw is random_crop's; a silent window is redrawn from the same generator.
  for seed in range(20):
    window, start = mixing.audible_crop(clip, 1000, np.random.default_rng(seed))
    ref_rng = np.random.default_rng(seed)
    starts = []
    for _ in range(mixing.AUDIBLE_TRIES):
      _, s = mixing.random_crop(clip, 1000, ref_rng)
      starts.append(s)
      if np.mean(clip[s:s + 1000] ** 2) >= np.mean(clip ** 2) * 1e-3:
        break
    else:  # no audible draw: the loudest drawn window
      s = max(starts, key=lambda t: np.mean(clip[t:t + 1000] ** 2))
    assert start == s
    np.testing.assert_array_equal(window, clip[start:start + 1000])
  hits = [np.any(mixing.audible_crop(clip, 1000, np.random.default_rng(s))[0]) for s in range(200)]
  plain = [np.any(mixing.random_crop(clip, 1000, np.random.default_rng(s))[0]) for s in range(200)]
  assert np.mean(hits) > 0.95 > 0.3 > np.mean(plain)  # one draw overlaps the hit ~14 % of the time; 32 draws 99 %
