"""uss_jax.metrics against mir_eval / fast_bss_eval / sklearn / closed forms, on random and real signals."""

import warnings

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from uss_jax import metrics

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # mir_eval 0.8 deprecates bss_eval_*


def _filtered_plus_noise(seed, n=8000, batch=3, noise=0.3):
  rng = np.random.default_rng(seed)
  ref = rng.standard_normal((batch, n))
  taps = rng.standard_normal(24) * np.exp(-np.arange(24) / 5.0)
  est = scipy.signal.lfilter(taps, [1.0], ref, axis=-1) + noise * rng.standard_normal((batch, n))
  return est, ref


def _mir_eval(est, ref):
  """mir_eval bss_eval_images (SDR, ISR, SAR) and bss_eval_sources SDR for one single-channel source."""
  import mir_eval.separation as mes
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    img = mes.bss_eval_images(ref[None, :, None], est[None, :, None], compute_permutation=False)
    src = mes.bss_eval_sources(ref[None], est[None], compute_permutation=False)
  return {"sdr": img[0][0], "isr": img[1][0], "sar": img[3][0]}, src[0][0]


# ----------------------------------------------------------------------------------------------------- energy ratios
def test_sdr_is_uss_calculate_sdr_closed_form():
  rng = np.random.default_rng(0)
  ref = rng.standard_normal((4, 3200))
  noise = rng.standard_normal((4, 3200))
  target_db = np.array([-10.0, 0.0, 6.0, 30.0])
  est = ref + noise * np.sqrt(np.mean(ref**2, -1) / np.mean(noise**2, -1) / 10**(target_db / 10))[:, None]
  np.testing.assert_allclose(metrics.sdr(est, ref), target_db, atol=1e-9)
  # eps = 1e-10 clips both mean energies: perfect estimate and silent reference
  np.testing.assert_allclose(metrics.sdr(ref[0], ref[0]), 10 * np.log10(np.mean(ref[0]**2) / 1e-10), rtol=1e-12)
  np.testing.assert_allclose(metrics.sdr(est[0], np.zeros(3200)), 10 * np.log10(1e-10 / np.mean(est[0]**2)),
                             rtol=1e-12)
  assert metrics.sdr(np.zeros(10), np.zeros(10)) == 0.0
  assert isinstance(metrics.sdr(est[0], ref[0]), float)


def test_improvements_are_differences():
  est, ref = _filtered_plus_noise(1, batch=2)
  mix = ref + np.roll(ref, 7, axis=-1)
  np.testing.assert_allclose(metrics.sdri(est, ref, mix), metrics.sdr(est, ref) - metrics.sdr(mix, ref))
  np.testing.assert_allclose(metrics.snri(est, ref, mix), metrics.snr(est, ref) - metrics.snr(mix, ref))
  np.testing.assert_allclose(metrics.si_sdri(est, ref, mix), metrics.si_sdr(est, ref) - metrics.si_sdr(mix, ref))
  # SNR (torchmetrics eps on sums) and SDR (USS eps on means) agree away from silence
  np.testing.assert_allclose(metrics.snr(est, ref), metrics.sdr(est, ref), atol=1e-9)


def test_si_sdr_matches_fast_bss_eval_and_closed_form():
  import fast_bss_eval.numpy as fbe
  est, ref = _filtered_plus_noise(2)
  np.testing.assert_allclose(metrics.si_sdr(est, ref), fbe.si_sdr(ref[:, None], est[:, None])[:, 0], atol=1e-8)
  # closed form: est = a*ref + e with e orthogonal to ref -> SI-SDR = 10 log10(a^2 |ref|^2 / |e|^2)
  rng = np.random.default_rng(3)
  r = rng.standard_normal(5000)
  e = rng.standard_normal(5000)
  e -= (e @ r) / (r @ r) * r
  np.testing.assert_allclose(metrics.si_sdr(0.3 * r + e, r), 10 * np.log10(0.09 * (r @ r) / (e @ e)), atol=1e-8)
  # zero-mean variant ignores DC offsets
  np.testing.assert_allclose(metrics.si_sdr(est + 1.0, ref - 2.0, zero_mean=True),
                             fbe.si_sdr(ref[:, None], est[:, None], zero_mean=True)[:, 0], atol=1e-6)


def test_failure_rate_and_silence_sdr():
  assert metrics.failure_rate(np.array([0.5, 1.0, 2.0, -3.0, np.nan])) == 0.5  # 0.5 and -3 fail (< 1 dB)
  assert metrics.failure_rate([0.5, 1.5], threshold_db=2.0) == 1.0
  rng = np.random.default_rng(4)
  mix = rng.standard_normal((2, 1000))
  est = 0.1 * mix
  np.testing.assert_allclose(metrics.silence_sdr(mix, est), [20.0, 20.0], atol=1e-9)  # 1/100 of the energy left
  # silent output: clipped at 1e-8
  np.testing.assert_allclose(metrics.silence_sdr(mix[0], np.zeros(1000)), 10 * np.log10(np.mean(mix[0]**2) / 1e-8))
  with pytest.raises(ValueError):
    metrics.failure_rate([np.nan])


# ----------------------------------------------------------------------------------------------------------- BSS Eval
def test_bss_eval_v4_and_sources_match_mir_eval_and_fast_bss_eval_random():
  import fast_bss_eval
  est, ref = _filtered_plus_noise(5, n=6000, batch=2)
  v4 = metrics.bss_eval_v4(est, ref)
  src = metrics.bss_eval_sdr(est, ref)
  for i in range(2):
    img, mir_src = _mir_eval(est[i], ref[i])
    for key in ("sdr", "isr", "sar"):
      np.testing.assert_allclose(v4[key][i], img[key], atol=1e-6, err_msg=key)
    np.testing.assert_allclose(src[i], mir_src, atol=1e-6)
  np.testing.assert_allclose(src, fast_bss_eval.sdr(ref[:, None], est[:, None])[:, 0], atol=1e-4)
  # v4 images SDR is the plain energy ratio; a filtered copy of the reference is an error for it but not for v3
  np.testing.assert_allclose(v4["sdr"], 10 * np.log10(np.sum(ref**2, -1) / np.sum((est - ref)**2, -1)), atol=1e-9)
  short = np.concatenate([ref[0, :-8], np.zeros(8)])  # trailing zeros: the filtered copy is not truncated
  filtered = scipy.signal.lfilter([0.5, 0.3, 0.2], [1.0], short)
  assert metrics.bss_eval_sdr(filtered, short) > 100.0
  assert metrics.bss_eval_v4(filtered, short)["sdr"] < 10.0
  assert np.all(np.isinf(v4["sir"]))


def test_mixture_and_clean_sdr_skip_rule():
  est, ref = _filtered_plus_noise(6, n=4000, batch=3)
  est[1] = 0.0  # RetroCirce evaluate_sdr skips sum(est) == 0 ...
  ref[2, :2000] = 1.0
  ref[2, 2000:] = -1.0  # ... and sum(ref) == 0, even for a non-silent reference
  got = metrics.mixture_sdr(est, ref)
  assert np.isnan(got[1]) and np.isnan(got[2])
  np.testing.assert_allclose(got[0], 10 * np.log10(np.sum(ref[0]**2) / np.sum((est[0] - ref[0])**2)), atol=1e-9)
  np.testing.assert_allclose(metrics.clean_sdr(est[0], ref[0]), got[0])


def test_bss_eval_on_real_corpus_signals(corpus_dir):
  import fast_bss_eval
  import fast_bss_eval.numpy as fbe
  names = ["rain__mg-desert2-rain-c0.wav", "acoustic_guitar__fluid-gm25-melody0.wav"]
  sigs = []
  for name in names:
    x, sr = sf.read(corpus_dir / "wav16k" / name, dtype="float64")
    assert sr == 16000
    sigs.append(x[:16000])
  target, other = sigs
  mixture = target + other
  # a plausible separator output: the target, slightly low-passed, plus a leak of the other source
  est = scipy.signal.lfilter([0.6, 0.3, 0.1], [1.0], target) + 0.1 * other
  img, mir_src = _mir_eval(est, target)
  v4 = metrics.bss_eval_v4(est, target)
  for key in ("sdr", "isr", "sar"):
    np.testing.assert_allclose(v4[key], img[key], atol=1e-4, err_msg=key)
  np.testing.assert_allclose(metrics.bss_eval_sdr(est, target), mir_src, atol=1e-3)
  np.testing.assert_allclose(metrics.bss_eval_sdr(est, target), fast_bss_eval.sdr(target[None], est[None])[0],
                             atol=1e-3)
  np.testing.assert_allclose(metrics.mixture_sdr(est, target), img["sdr"], atol=1e-4)
  np.testing.assert_allclose(metrics.si_sdr(est, target), fbe.si_sdr(target[None], est[None])[0], atol=1e-6)
  # USS SDR of the mixture vs the closed form on the real signals
  np.testing.assert_allclose(metrics.sdr(mixture, target), 10 * np.log10(np.mean(target**2) / np.mean(other**2)),
                             atol=1e-9)


# ------------------------------------------------------------------------------------------ classification/retrieval
def _np_average_precision(y, s):
  order = np.argsort(-s, kind="stable")
  y = y[order]
  hits = np.cumsum(y)
  precision_at_k = hits / np.arange(1, len(y) + 1)
  return np.sum(precision_at_k * y) / y.sum()


def test_mean_average_precision_vs_numpy_ap():
  rng = np.random.default_rng(7)
  labels = (rng.random((40, 6)) < 0.3).astype(int)
  labels[:, 4] = 0  # no positive: left out of the mean
  scores = rng.random((40, 6)) + 0.5 * labels
  expected = np.mean([_np_average_precision(labels[:, c], scores[:, c]) for c in (0, 1, 2, 3, 5)])
  value, per_class = metrics.mean_average_precision(labels, scores, return_per_class=True)
  np.testing.assert_allclose(value, expected, rtol=1e-12)
  assert np.isnan(per_class[4])
  perfect = metrics.mean_average_precision(labels, labels + 0.01 * rng.random(labels.shape))
  assert perfect == 1.0


def test_accuracy():
  scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.3, 0.4, 0.3]])
  assert metrics.accuracy(np.array([1, 0, 0, 1]), scores) == 0.75
  assert metrics.accuracy(np.eye(3)[[1, 0, 0, 1]], scores) == 0.75


def test_recall_at_k_vs_brute_force():
  rng = np.random.default_rng(8)
  items = rng.standard_normal((12, 5))
  queries = items[np.repeat(np.arange(6), 2)] + 0.9 * rng.standard_normal((12, 5))  # 2 queries per item
  gt = np.repeat(np.arange(6), 2)

  def brute(k, q, v, relevant):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    hits = 0
    for i in range(len(q)):
      sims = [(float(q[i] @ v[j]), j) for j in range(len(v))]
      top = [j for _, j in sorted(sims, reverse=True)[:k]]
      hits += any(relevant(i, j) for j in top)
    return hits / len(q)

  for k in (1, 3, 5):
    np.testing.assert_allclose(metrics.recall_at_k(queries, items, k, ground_truth=gt),
                               brute(k, queries, items, lambda i, j: j == gt[i]))
    np.testing.assert_allclose(metrics.recall_at_k(queries[:10], items, k),
                               brute(k, queries[:10], items, lambda i, j: i == j))
  rel = np.zeros((12, 12), bool)
  rel[np.arange(12), gt] = True
  rel[np.arange(12), (gt + 1) % 12] = True
  got = metrics.recall_at_k(queries, items, [1, 2], ground_truth=rel)
  assert got == {k: brute(k, queries, items, lambda i, j: rel[i, j]) for k in (1, 2)}


def test_per_class_summary_hand_example():
  values = np.array([1.0, 2.0, 9.0, 4.0, np.nan, 6.0, np.nan])
  class_ids = np.array([0, 0, 0, 2, 2, 2, 5])
  out = metrics.per_class_summary(values, class_ids, class_names={0: "dog", 2: "rain", 5: "siren"})
  assert out["per_class"] == {"dog": 2.0, "rain": 5.0, "siren": pytest.approx(np.nan, nan_ok=True)}
  assert out["counts"] == {"dog": 3, "rain": 2, "siren": 0}
  assert out["mean"] == 3.5  # mean of the per-class medians (2, 5); the all-NaN class is left out
  assert metrics.per_class_summary(values[:3], class_ids[:3])["per_class"] == {0: 2.0}


# ---------------------------------------------------------------------------------------------------------- bad input
def test_mismatched_shapes_raise_value_error_naming_shapes():
  a, b = np.zeros((2, 100)), np.zeros((2, 90))
  for fn in (metrics.sdr, metrics.snr, metrics.si_sdr, metrics.bss_eval_sdr, metrics.mixture_sdr):
    with pytest.raises(ValueError, match=r"\(2, 100\).*\(2, 90\)"):
      fn(a, b)
  with pytest.raises(ValueError, match=r"mixture.shape=\(3, 100\)"):
    metrics.sdri(a, a, np.zeros((3, 100)))
  with pytest.raises(ValueError, match=r"\(5, 3\).*\(5, 4\)"):
    metrics.mean_average_precision(np.zeros((5, 3)), np.zeros((5, 4)))
  with pytest.raises(ValueError, match=r"\(4, 8\).*\(6, 7\)"):
    metrics.recall_at_k(np.zeros((4, 8)), np.zeros((6, 7)), 1)
  with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
    metrics.per_class_summary(np.zeros(3), np.zeros(4, int))
