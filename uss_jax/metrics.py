"""Host-side evaluation metrics (numpy; never inside a jitted graph).

Waveform metrics take ``(batch, samples)`` arrays (one value per row) or single 1-D signals (a Python float back);
everything is computed in float64. Mismatched shapes raise ``ValueError`` naming both shapes.

Which "SDR" is which
--------------------
* :func:`sdr` — USS / seed 000: ``10·log10(max(mean(ref²), 1e-10) / max(mean((est − ref)²), 1e-10))``, a plain SNR
  (bytedance/uss uss/utils.py ``calculate_sdr``). :func:`sdri` subtracts the mixture's SDR.
* :func:`snr` — SoundBeam / Waveformer / seed 002: torchmetrics ``signal_noise_ratio`` (float32 eps on the sums).
* :func:`si_sdr` — Le Roux et al. 2019 scale-invariant SDR (seed 003).
* :func:`bss_eval_v4` / :func:`mixture_sdr` / :func:`clean_sdr` — museval BSS Eval v4 in ``bss_eval_images`` mode with
  one window covering the whole signal (CaRE-SEP, ST-SED-SEP; RetroCirce/Zero_Shot_Audio_Source_Separation utils.py).
  Its SDR is ``Σ ref² / Σ (est − ref)²``: the 512-tap distortion filter only splits the error into spatial (ISR) and
  artifact (SAR) parts and does not change SDR.
* :func:`bss_eval_sdr` — the classic BSS Eval v3 ``bss_eval_sources`` SDR (mir_eval.separation.bss_eval_sources,
  fast_bss_eval.sdr): the estimate is projected on 512 delayed copies of the reference, so any 512-tap filtering of the
  reference counts as target, not error. Offered for comparison with the wider literature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sklearn.metrics

USS_EPS = 1e-10  # bytedance/uss calculate_sdr
SILENCE_FLOOR = 1e-8  # RetroCirce utils.py calculate_silence_sdr
TORCH_F32_EPS = float(np.finfo(np.float32).eps)  # torchmetrics eps for float32 tensors
BSS_FILTER_LENGTH = 512


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------
def _signals(**named: Any) -> tuple[list[np.ndarray], bool]:
  """Validates same-shaped 1-D / 2-D signals; returns them as float64 2-D arrays and whether the input was 1-D."""
  arrays = {k: np.asarray(v, dtype=np.float64) for k, v in named.items()}
  shapes = {k: a.shape for k, a in arrays.items()}
  if len(set(shapes.values())) != 1:
    desc = ", ".join(f"{k}.shape={s}" for k, s in shapes.items())
    raise ValueError(f"signals must have the same shape, got {desc}")
  first = next(iter(arrays.values()))
  if first.ndim not in (1, 2) or first.shape[-1] == 0:
    raise ValueError(f"signals must be (samples,) or (batch, samples) with samples > 0, got shape {first.shape}")
  single = first.ndim == 1
  return [np.atleast_2d(a) for a in arrays.values()], single


def _out(values: np.ndarray, single: bool) -> np.ndarray | float:
  return float(values[0]) if single else values


def _db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """10·log10(num / den) with num/0 -> +inf (museval ``_safe_db``) and 0/0 -> nan, without warnings."""
  num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
  out = np.full(num.shape, np.nan)
  pos = den > 0
  with np.errstate(divide="ignore"):
    out[pos] = 10.0 * np.log10(num[pos] / den[pos])
  out[~pos & (num > 0)] = np.inf
  return out


# --------------------------------------------------------------------------------------------------------------------
# energy-ratio metrics
# --------------------------------------------------------------------------------------------------------------------
def sdr(est: np.ndarray, ref: np.ndarray, *, eps: float = USS_EPS) -> np.ndarray | float:
  """USS SDR in dB: ``10·log10(max(mean(ref²), eps) / max(mean((est − ref)²), eps))``.

  Source: bytedance/uss uss/utils.py ``calculate_sdr(ref, est, eps=1e-10)`` (both mean energies clipped below at
  ``eps`` before the ratio); seed 000's metric.

  Args:
    est: estimate, ``(samples,)`` or ``(batch, samples)``.
    ref: reference, same shape.
    eps: clip floor of both mean energies.

  Returns:
    dB, shape ``(batch,)`` (a float for 1-D input).

  Raises:
    ValueError: shapes differ.
  """
  (est, ref), single = _signals(est=est, ref=ref)
  num = np.maximum(np.mean(ref**2, axis=-1), eps)
  den = np.maximum(np.mean((est - ref)**2, axis=-1), eps)
  return _out(10.0 * np.log10(num / den), single)


def sdri(est: np.ndarray, ref: np.ndarray, mixture: np.ndarray, *, eps: float = USS_EPS) -> np.ndarray | float:
  """SDR improvement ``sdr(est, ref) − sdr(mixture, ref)`` in dB (bytedance/uss uss/evaluate.py; seed 000).

  Args:
    est: estimate, ``(samples,)`` or ``(batch, samples)``.
    ref: reference, same shape.
    mixture: separator input, same shape.
    eps: see :func:`sdr`.

  Returns:
    dB, shape ``(batch,)`` (a float for 1-D input).

  Raises:
    ValueError: shapes differ.
  """
  _signals(est=est, ref=ref, mixture=mixture)
  return sdr(est, ref, eps=eps) - sdr(mixture, ref, eps=eps)


def snr(est: np.ndarray, ref: np.ndarray, *, eps: float = TORCH_F32_EPS) -> np.ndarray | float:
  """SNR in dB: ``10·log10((Σ ref² + eps) / (Σ (ref − est)² + eps))``.

  Source: torchmetrics ``signal_noise_ratio`` as used by vb000/Waveformer src/training/dcc_tf.py ``metrics`` (seed
  002's SNR / SNRi); eps = float32 machine epsilon, as torchmetrics uses for float32 tensors.

  Args:
    est: estimate, ``(samples,)`` or ``(batch, samples)``.
    ref: reference, same shape.
    eps: added to both energy sums.

  Returns:
    dB, shape ``(batch,)`` (a float for 1-D input).

  Raises:
    ValueError: shapes differ.
  """
  (est, ref), single = _signals(est=est, ref=ref)
  num = np.sum(ref**2, axis=-1) + eps
  den = np.sum((ref - est)**2, axis=-1) + eps
  return _out(10.0 * np.log10(num / den), single)


def snri(est: np.ndarray, ref: np.ndarray, mixture: np.ndarray) -> np.ndarray | float:
  """SNR improvement ``snr(est, ref) − snr(mixture, ref)`` in dB (seed 002).

  Args:
    est: estimate, ``(samples,)`` or ``(batch, samples)``.
    ref: reference, same shape.
    mixture: extractor input, same shape.

  Returns:
    dB, shape ``(batch,)`` (a float for 1-D input).

  Raises:
    ValueError: shapes differ.
  """
  _signals(est=est, ref=ref, mixture=mixture)
  return snr(est, ref) - snr(mixture, ref)


def si_sdr(est: np.ndarray,
           ref: np.ndarray,
           *,
           zero_mean: bool = False,
           eps: float = TORCH_F32_EPS) -> np.ndarray | float:
  """Scale-invariant SDR in dB (SI-SNR with ``zero_mean=True``).

  ``α = (⟨est, ref⟩ + eps) / (Σ ref² + eps)``, ``SI-SDR = 10·log10((Σ (α ref)² + eps) / (Σ (α ref − est)² + eps))``.
  Source: Le Roux et al., ICASSP 2019, Eqs. (3)–(4); eps placement as torchmetrics (and as
  :func:`uss_jax.losses.si_sdr`, so the training objective and this metric agree).

  Args:
    est: estimate, ``(samples,)`` or ``(batch, samples)``.
    ref: reference, same shape.
    zero_mean: remove each signal's mean first.
    eps: see above.

  Returns:
    dB, shape ``(batch,)`` (a float for 1-D input).

  Raises:
    ValueError: shapes differ.
  """
  (est, ref), single = _signals(est=est, ref=ref)
  if zero_mean:
    est = est - est.mean(axis=-1, keepdims=True)
    ref = ref - ref.mean(axis=-1, keepdims=True)
  alpha = (np.sum(est * ref, axis=-1, keepdims=True) + eps) / (np.sum(ref**2, axis=-1, keepdims=True) + eps)
  target = alpha * ref
  val = 10.0 * np.log10((np.sum(target**2, axis=-1) + eps) / (np.sum((target - est)**2, axis=-1) + eps))
  return _out(val, single)


def si_sdri(est: np.ndarray, ref: np.ndarray, mixture: np.ndarray, *, zero_mean: bool = False) -> np.ndarray | float:
  """SI-SDR improvement ``si_sdr(est, ref) − si_sdr(mixture, ref)`` in dB.

  Args:
    est: estimate, ``(samples,)`` or ``(batch, samples)``.
    ref: reference, same shape.
    mixture: separator input, same shape.
    zero_mean: SI-SNRi instead.

  Returns:
    dB, shape ``(batch,)`` (a float for 1-D input).

  Raises:
    ValueError: shapes differ.
  """
  _signals(est=est, ref=ref, mixture=mixture)
  return si_sdr(est, ref, zero_mean=zero_mean) - si_sdr(mixture, ref, zero_mean=zero_mean)


def failure_rate(snri_values: np.ndarray, threshold_db: float = 1.0) -> float:
  """Fraction of examples whose SNRi is below ``threshold_db`` (seed 002 "FR": SNRi < 1 dB; ×100 for percent).

  Args:
    snri_values: SNRi values in dB, any shape; NaN entries are ignored.
    threshold_db: failure threshold in dB (strictly below counts as failure).

  Returns:
    Fraction in ``[0, 1]``.

  Raises:
    ValueError: no value, or all values are NaN.
  """
  values = np.asarray(snri_values, dtype=np.float64).ravel()
  values = values[~np.isnan(values)]
  if values.size == 0:
    raise ValueError("failure_rate needs at least one non-NaN SNRi value")
  return float(np.mean(values < threshold_db))


def silence_sdr(mixture: np.ndarray, est: np.ndarray, *, floor: float = SILENCE_FLOOR) -> np.ndarray | float:
  """Silence-SDR: dB of energy removed when the query is absent from the input.

  ``10·(log10(max(mean(mix²), 1e-8)) − log10(max(mean(est²), 1e-8)))``. Source: RetroCirce/
  Zero_Shot_Audio_Source_Separation utils.py ``calculate_silence_sdr`` (CaRE-SEP / ST-SED-SEP, seed 001): input is
  the other source alone, the target is silence.

  Args:
    mixture: separator input, ``(samples,)`` or ``(batch, samples)``.
    est: separator output, same shape.
    floor: clip floor of both mean energies.

  Returns:
    dB, shape ``(batch,)`` (a float for 1-D input).

  Raises:
    ValueError: shapes differ.
  """
  (mixture, est), single = _signals(mixture=mixture, est=est)
  val = 10.0 * (np.log10(np.maximum(np.mean(mixture**2, axis=-1), floor)) -
                np.log10(np.maximum(np.mean(est**2, axis=-1), floor)))
  return _out(val, single)


# --------------------------------------------------------------------------------------------------------------------
# BSS Eval
# --------------------------------------------------------------------------------------------------------------------
def _project_on_delayed(est: np.ndarray, ref: np.ndarray, filter_length: int) -> np.ndarray:
  """Least-squares projection of ``est`` on ``{ref delayed by 0..L-1}``, length ``N + L − 1``.

  The Gram matrix of the delayed references is the Toeplitz matrix of ref's autocorrelation; the right-hand side is
  the ref–est cross-correlation (both by FFT); a diagonal load of float64 eps as museval metrics.py
  ``_compute_projection_filters``; least squares when the solve fails.
  """
  n = est.shape[-1]
  length = n + filter_length - 1
  n_fft = int(2**np.ceil(np.log2(length)))
  ref_f = np.fft.rfft(ref, n_fft)
  est_f = np.fft.rfft(est, n_fft)
  autocorr = np.fft.irfft(np.abs(ref_f)**2, n_fft)[:filter_length]
  xcorr = np.fft.irfft(np.conj(ref_f) * est_f, n_fft)[:filter_length]
  lags = np.arange(filter_length)
  gram = autocorr[np.abs(lags[:, None] - lags[None, :])]
  try:
    coef = np.linalg.solve(gram + np.finfo(np.float64).eps * np.eye(filter_length), xcorr)
  except np.linalg.LinAlgError:
    coef = np.linalg.lstsq(gram, xcorr, rcond=None)[0]
  return np.fft.irfft(np.fft.rfft(coef, n_fft) * ref_f, n_fft)[:length]


def bss_eval_v4(est: np.ndarray,
                ref: np.ndarray,
                *,
                filter_length: int = BSS_FILTER_LENGTH) -> dict[str, np.ndarray | float]:
  """Single-window BSS Eval v4 (``bss_eval_images`` mode) for one source per example.

  The estimate (zero-padded by ``L − 1``) is decomposed as ``s_true + e_spat + e_interf + e_artif`` with
  ``s_true = ref``, ``s_true + e_spat = P est`` (projection on ``L`` delayed copies of ``ref``), ``e_interf = 0``
  (a single reference), ``e_artif = est − P est``; then ``SDR = ‖s_true‖² / ‖est − s_true‖²``,
  ``ISR = ‖s_true‖² / ‖e_spat‖²``, ``SIR = +inf``, ``SAR = ‖P est‖² / ‖e_artif‖²`` (all dB).
  Source: sigsep/sigsep-mus-eval museval/metrics.py ``bss_eval`` with ``framewise_filters=False``,
  ``bsseval_sources_version=False`` and ``window = hop = len`` (what ``museval.evaluate(..., win=len, hop=len)``
  runs). Examples whose reference or estimate is all zeros get NaN (museval marks such windows NaN).

  Args:
    est: estimate, ``(samples,)`` or ``(batch, samples)``.
    ref: reference, same shape.
    filter_length: distortion filter taps (512 in museval).

  Returns:
    ``{"sdr", "isr", "sir", "sar"}``, each shape ``(batch,)`` (floats for 1-D input), dB.

  Raises:
    ValueError: shapes differ.
  """
  (est, ref), single = _signals(est=est, ref=ref)
  out = {k: np.full(est.shape[0], np.nan) for k in ("sdr", "isr", "sir", "sar")}
  for i, (e, r) in enumerate(zip(est, ref)):
    if not np.any(e) or not np.any(r):
      continue
    proj = _project_on_delayed(e, r, filter_length)
    e_pad = np.pad(e, (0, filter_length - 1))
    r_pad = np.pad(r, (0, filter_length - 1))
    energy_true = np.sum(r_pad**2)
    out["sdr"][i] = _db(energy_true, np.sum((e_pad - r_pad)**2))
    out["isr"][i] = _db(energy_true, np.sum((proj - r_pad)**2))
    out["sir"][i] = np.inf
    out["sar"][i] = _db(np.sum(proj**2), np.sum((e_pad - proj)**2))
  return {k: _out(v, single) for k, v in out.items()}


def _retrocirce_sdr(est: np.ndarray, ref: np.ndarray, filter_length: int) -> np.ndarray | float:
  (est2, ref2), single = _signals(est=est, ref=ref)
  values = np.atleast_1d(bss_eval_v4(est2, ref2, filter_length=filter_length)["sdr"]).copy()
  skipped = (np.sum(ref2, axis=-1) == 0) | (np.sum(est2, axis=-1) == 0)
  values[skipped] = np.nan
  return _out(values, single)


def mixture_sdr(est: np.ndarray, ref: np.ndarray, *, filter_length: int = BSS_FILTER_LENGTH) -> np.ndarray | float:
  """CaRE-SEP / ST-SED-SEP mixture-SDR: single-window BSS Eval v4 SDR of the separated source (input = mixture).

  Source: RetroCirce/Zero_Shot_Audio_Source_Separation utils.py ``calculate_sdr`` (museval.evaluate with
  ``win = hop = len(ref)``) inside ``evaluate_sdr``, which skips pairs with ``sum(ref) == 0`` or ``sum(est) == 0``;
  skipped pairs are NaN here (aggregate with NaN-aware functions, e.g. :func:`per_class_summary`).

  Args:
    est: separator output, ``(samples,)`` or ``(batch, samples)``.
    ref: target source, same shape.
    filter_length: BSS Eval distortion filter taps.

  Returns:
    dB, shape ``(batch,)`` (a float for 1-D input), NaN for skipped pairs.

  Raises:
    ValueError: shapes differ.
  """
  return _retrocirce_sdr(est, ref, filter_length)


def clean_sdr(est: np.ndarray, ref: np.ndarray, *, filter_length: int = BSS_FILTER_LENGTH) -> np.ndarray | float:
  """CaRE-SEP / ST-SED-SEP clean-SDR: as :func:`mixture_sdr`, but the separator's input was the clean target alone.

  Source: RetroCirce utils.py ``get_mix_data(mix_type="clean")`` + ``evaluate_sdr``.

  Args:
    est: separator output, ``(samples,)`` or ``(batch, samples)``.
    ref: the clean source (also the input), same shape.
    filter_length: BSS Eval distortion filter taps.

  Returns:
    dB, shape ``(batch,)`` (a float for 1-D input), NaN for skipped pairs.

  Raises:
    ValueError: shapes differ.
  """
  return _retrocirce_sdr(est, ref, filter_length)


def bss_eval_sdr(est: np.ndarray, ref: np.ndarray, *, filter_length: int = BSS_FILTER_LENGTH) -> np.ndarray | float:
  """BSS Eval v3 ``bss_eval_sources`` SDR for one source per example (dB).

  ``s_target = P est`` (projection on ``filter_length`` delayed copies of ``ref``), ``SDR = ‖s_target‖² /
  ‖est − s_target‖²`` over the ``N + L − 1`` padded samples. With a single reference there is no interference term,
  so this equals mir_eval.separation.bss_eval_sources and fast_bss_eval.sdr (Vincent et al., IEEE TASLP 2006,
  Eqs. (8)–(12)). Unlike :func:`bss_eval_v4`, a filtered copy of the reference scores as perfect.

  Args:
    est: estimate, ``(samples,)`` or ``(batch, samples)``.
    ref: reference, same shape.
    filter_length: distortion filter taps.

  Returns:
    dB, shape ``(batch,)`` (a float for 1-D input); NaN where ``ref`` or ``est`` is all zeros.

  Raises:
    ValueError: shapes differ.
  """
  (est, ref), single = _signals(est=est, ref=ref)
  values = np.full(est.shape[0], np.nan)
  for i, (e, r) in enumerate(zip(est, ref)):
    if not np.any(e) or not np.any(r):
      continue
    proj = _project_on_delayed(e, r, filter_length)
    values[i] = _db(np.sum(proj**2), np.sum((np.pad(e, (0, filter_length - 1)) - proj)**2))
  return _out(values, single)


# --------------------------------------------------------------------------------------------------------------------
# classification and retrieval
# --------------------------------------------------------------------------------------------------------------------
def mean_average_precision(labels: np.ndarray,
                           scores: np.ndarray,
                           *,
                           return_per_class: bool = False) -> float | tuple[float, np.ndarray]:
  """Macro mAP over the classes that have at least one positive (AudioSet / FSD50K tagging).

  Per class ``sklearn.metrics.average_precision_score(labels[:, c], scores[:, c])``; the mean skips classes without a
  positive (their AP is undefined).

  Args:
    labels: binary targets, shape ``(examples, classes)``.
    scores: predicted scores (probabilities or logits), same shape.
    return_per_class: also return the per-class APs (NaN for skipped classes), shape ``(classes,)``.

  Returns:
    mAP in ``[0, 1]`` (and the per-class array).

  Raises:
    ValueError: shapes differ, inputs are not 2-D, or no class has a positive.
  """
  labels = np.asarray(labels)
  scores = np.asarray(scores, dtype=np.float64)
  if labels.shape != scores.shape or labels.ndim != 2:
    raise ValueError(f"labels and scores must both be (examples, classes), got labels.shape={labels.shape} and "
                     f"scores.shape={scores.shape}")
  labels = labels > 0.5
  per_class = np.full(labels.shape[1], np.nan)
  for c in np.flatnonzero(labels.any(axis=0)):
    per_class[c] = sklearn.metrics.average_precision_score(labels[:, c], scores[:, c])
  if np.all(np.isnan(per_class)):
    raise ValueError("no class has a positive example: mAP is undefined")
  value = float(np.nanmean(per_class))
  return (value, per_class) if return_per_class else value


def accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
  """Top-1 accuracy: fraction of examples whose argmax score is the label (ESC-50, SPC).

  Args:
    labels: integer class ids, shape ``(examples,)``, or one-hot, shape ``(examples, classes)``.
    scores: scores or logits, shape ``(examples, classes)``.

  Returns:
    Fraction in ``[0, 1]``.

  Raises:
    ValueError: shapes are inconsistent.
  """
  labels = np.asarray(labels)
  scores = np.asarray(scores)
  if scores.ndim != 2 or labels.shape not in (scores.shape[:1], scores.shape):
    raise ValueError(f"expected labels (examples,) or (examples, classes) and scores (examples, classes), got "
                     f"labels.shape={labels.shape} and scores.shape={scores.shape}")
  ids = labels.argmax(axis=-1) if labels.ndim == 2 else labels
  return float(np.mean(scores.argmax(axis=-1) == ids))


def recall_at_k(query_emb: np.ndarray,
                item_emb: np.ndarray,
                k: int | Sequence[int],
                *,
                ground_truth: np.ndarray | None = None,
                normalize: bool = True) -> float | dict[int, float]:
  """Retrieval recall@K (e.g. text → audio on Clotho, SoundWords R@1 in seed 003).

  Similarity is the dot product of (L2-normalised, if ``normalize``) embeddings. A query is a hit when one of its
  relevant items ranks within the first ``k``; the rank of an item is the number of items scoring strictly higher
  (ties resolved in the query's favour).

  Args:
    query_emb: shape ``(queries, dim)``.
    item_emb: shape ``(items, dim)``.
    k: cut-off, or several cut-offs.
    ground_truth: ``None`` -> item ``i`` is relevant to query ``i`` (needs queries ≤ items); integer array
      ``(queries,)`` -> the relevant item of each query (e.g. 5 captions per clip); boolean ``(queries, items)`` ->
      any relevant item counts.
    normalize: cosine similarity.

  Returns:
    Recall in ``[0, 1]`` for an int ``k``; ``{k: recall}`` for a sequence.

  Raises:
    ValueError: embeddings or ``ground_truth`` have inconsistent shapes, or a ``k`` is below 1.
  """
  q = np.asarray(query_emb, dtype=np.float64)
  v = np.asarray(item_emb, dtype=np.float64)
  if q.ndim != 2 or v.ndim != 2 or q.shape[1] != v.shape[1]:
    raise ValueError(f"embeddings must be (queries, dim) and (items, dim), got query_emb.shape={q.shape} and "
                     f"item_emb.shape={v.shape}")
  n_q, n_items = q.shape[0], v.shape[0]
  if ground_truth is None:
    if n_q > n_items:
      raise ValueError(f"diagonal ground truth needs queries <= items, got {q.shape} and {v.shape}")
    relevant = np.zeros((n_q, n_items), dtype=bool)
    relevant[np.arange(n_q), np.arange(n_q)] = True
  else:
    gt = np.asarray(ground_truth)
    if gt.shape == (n_q,) and np.issubdtype(gt.dtype, np.integer):
      relevant = np.zeros((n_q, n_items), dtype=bool)
      relevant[np.arange(n_q), gt] = True
    elif gt.shape == (n_q, n_items):
      relevant = gt.astype(bool)
    else:
      raise ValueError(f"ground_truth must be int ({n_q},) or bool ({n_q}, {n_items}), got shape {gt.shape}")
  if normalize:
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
  sim = q @ v.T
  best_relevant = np.where(relevant, sim, -np.inf).max(axis=1)
  rank = np.sum(sim > best_relevant[:, None], axis=1)  # 0-based rank of the best relevant item
  has_relevant = relevant.any(axis=1)
  ks = [k] if isinstance(k, (int, np.integer)) else list(k)
  if any(kk < 1 for kk in ks):
    raise ValueError(f"k must be >= 1, got {k}")
  result = {int(kk): float(np.mean(has_relevant & (rank < kk))) for kk in ks}
  return result[int(k)] if isinstance(k, (int, np.integer)) else result


# --------------------------------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------------------------------
def per_class_summary(values: np.ndarray,
                      class_ids: np.ndarray,
                      class_names: Sequence[str] | Mapping[int, str] | None = None) -> dict[str, Any]:
  """Seed-000 / USS aggregation: median per class, then the mean over classes.

  Source: bytedance/uss uss/evaluate.py (``np.nanmedian`` per class, ``get_mean_sdr_from_dict`` = ``np.nanmean`` over
  classes). NaN values (e.g. pairs skipped by :func:`mixture_sdr`) are ignored; a class whose values are all NaN has a
  NaN median and is left out of the mean.

  Args:
    values: per-example metric (e.g. SDRi in dB), shape ``(examples,)``.
    class_ids: integer class of each example, shape ``(examples,)``.
    class_names: names indexed by class id (sequence or mapping); keys of the result are names when given, ids
      otherwise.

  Returns:
    ``{"per_class": {class: median}, "counts": {class: non-NaN count}, "mean": mean of the per-class medians}``, the
    classes in ascending id order.

  Raises:
    ValueError: ``values`` and ``class_ids`` are not 1-D of the same length, or the input is empty.
  """
  values = np.asarray(values, dtype=np.float64)
  class_ids = np.asarray(class_ids)
  if values.ndim != 1 or values.shape != class_ids.shape:
    raise ValueError(f"values and class_ids must be 1-D of equal length, got values.shape={values.shape} and "
                     f"class_ids.shape={class_ids.shape}")
  if values.size == 0:
    raise ValueError("per_class_summary needs at least one value")
  per_class, counts = {}, {}
  for c in np.unique(class_ids):
    v = values[class_ids == c]
    v = v[~np.isnan(v)]
    key = int(c) if class_names is None else class_names[int(c)]
    per_class[key] = float(np.median(v)) if v.size else float("nan")
    counts[key] = int(v.size)
  medians = np.array(list(per_class.values()))
  mean = float(np.mean(medians[~np.isnan(medians)])) if np.any(~np.isnan(medians)) else float("nan")
  return {"per_class": per_class, "counts": counts, "mean": mean}
