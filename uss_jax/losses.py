"""In-graph training objectives (pure ``jax.numpy``, jit-able, differentiable).

Conventions
-----------
* Waveforms are ``(..., samples)``: any number of leading axes (``(batch, samples)``,
  ``(batch, sources, samples)``); the last axis is time. Ratio functions (:func:`snr`, :func:`si_sdr`) return dB per
  example, shape ``(...)``.
* Losses take ``reduction`` in ``{"mean", "sum", "none"}``: ``"mean"`` (default) averages the per-example losses over
  every leading axis, ``"none"`` returns them with shape ``(...)``. Under ``jax.jit`` with sharded inputs the mean is
  over the *global* batch (XLA inserts the cross-device reduction).
* Keyword options (``reduction``, ``zero_mean``, ``normalize`` ...) are Python values: call the losses inside a jitted
  step, or bind the options with ``functools.partial`` / ``static_argnames`` before jitting a loss on its own.
* Computation is done in at least float32 (bfloat16 / float16 inputs are promoted) so energy sums over tens of
  thousands of samples stay accurate.

Epsilon convention (silence safety)
-----------------------------------
Every loss gives a finite value *and* finite gradients when the target, the estimate, or both are all-zero:

* SNR / SI-SDR family: ``EPS = 1.1920929e-07`` (float32 machine epsilon, the value ``torchmetrics`` uses for float32
  tensors, which Waveformer / SoundBeam train with) is added to the numerator and the denominator energy *sums*, and to
  the numerator and denominator of the SI-SDR projection coefficient. There is no square root anywhere, so the
  gradient is a ratio of polynomials over strictly positive denominators. Consequences: a perfect (or perfectly
  scaled) estimate gives a large but finite value ``10·log10(Σref² / EPS)``; SNR of a zero estimate against a zero
  reference is 0 dB; SI-SDR of an all-zero estimate is 0 dB (the torchmetrics convention).
* Embedding L2 normalisation (contrastive loss): ``x · rsqrt(max(Σx², 1e-12))``.
* Patch normalisation (AudioMAE): ``(x − mean) / sqrt(var + 1e-6)``; masked / visible counts are clamped to ≥ 1.
* Cross-entropies use the log-sigmoid / log-softmax forms: no epsilon, finite for any finite logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1.1920929e-07  # float32 machine epsilon (torchmetrics' eps for float32 inputs)
NORM_EPS = 1e-12  # floor of the squared norm in embedding L2 normalisation
PATCH_VAR_EPS = 1e-6  # AudioMAE models_mae.py forward_loss: (var + 1e-6) ** 0.5

_REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------
def _check_same_shape(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
  if jnp.shape(a) != jnp.shape(b):
    raise ValueError(f"{name_a} and {name_b} must have the same shape, got {name_a}.shape={jnp.shape(a)} and "
                     f"{name_b}.shape={jnp.shape(b)}")


def _float(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _reduce(x: jax.Array, reduction: str) -> jax.Array:
  if reduction == "mean":
    return jnp.mean(x)
  if reduction == "sum":
    return jnp.sum(x)
  if reduction == "none":
    return x
  raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _waveform_pair(est: jax.Array, ref: jax.Array) -> tuple[jax.Array, jax.Array]:
  _check_same_shape("est", est, "ref", ref)
  if jnp.ndim(est) < 1:
    raise ValueError(f"waveforms need a samples axis, got est.shape={jnp.shape(est)}")
  return _float(est), _float(ref)


# --------------------------------------------------------------------------------------------------------------------
# waveform losses and ratios
# --------------------------------------------------------------------------------------------------------------------
def l1_waveform(est: jax.Array, ref: jax.Array, *, reduction: str = "mean") -> jax.Array:
  """Mean absolute error between waveforms, ``mean |est − ref|`` (USS training loss).

  Source: bytedance/uss uss/losses.py ``l1`` / ``l1_wav`` (``torch.mean(torch.abs(output - target))``).

  Args:
    est: estimated waveform, shape ``(..., samples)``, float.
    ref: reference waveform, same shape.
    reduction: ``"mean"`` (the reference: mean over every element, which equals the mean over examples of the
      per-example mean since all examples have the same length), ``"sum"`` (of per-example means) or ``"none"``
      (per-example mean over samples, shape ``(...)``).

  Returns:
    Scalar loss (waveform units), or shape ``(...)`` for ``reduction="none"``.

  Raises:
    ValueError: shapes differ, or unknown ``reduction``.
  """
  est, ref = _waveform_pair(est, ref)
  return _reduce(jnp.mean(jnp.abs(est - ref), axis=-1), reduction)


def snr(est: jax.Array, ref: jax.Array, *, eps: float = EPS) -> jax.Array:
  """Signal-to-noise ratio in dB per example: ``10·log10((Σ ref² + eps) / (Σ (ref − est)² + eps))``.

  Source: torchmetrics ``signal_noise_ratio`` (``zero_mean=False``), used by vb000/Waveformer
  src/training/dcc_tf.py ``loss``; seed 002 (SoundBeam) evaluation metric.

  Args:
    est: estimate, shape ``(..., samples)``.
    ref: reference, same shape.
    eps: energy floor added to both sums (module docstring).

  Returns:
    SNR in dB, shape ``(...)``.

  Raises:
    ValueError: shapes differ.
  """
  est, ref = _waveform_pair(est, ref)
  num = jnp.sum(ref**2, axis=-1) + eps
  den = jnp.sum((ref - est)**2, axis=-1) + eps
  return 10.0 * jnp.log10(num / den)


def si_sdr(est: jax.Array, ref: jax.Array, *, zero_mean: bool = False, eps: float = EPS) -> jax.Array:
  """Scale-invariant SDR in dB per example.

  ``α = (⟨est, ref⟩ + eps) / (Σ ref² + eps)``, ``s = α·ref``,
  ``SI-SDR = 10·log10((Σ s² + eps) / (Σ (s − est)² + eps))``.

  Source: Le Roux et al., "SDR – half-baked or well done?" (ICASSP 2019), Eqs. (3)–(4); eps placement as torchmetrics
  ``scale_invariant_signal_distortion_ratio``. Seed 003 (SoundFilter) loss and metric.

  Args:
    est: estimate, shape ``(..., samples)``.
    ref: reference, same shape.
    zero_mean: subtract each signal's mean over samples first (``True`` gives SI-SNR).
    eps: see the module docstring.

  Returns:
    SI-SDR in dB, shape ``(...)``.

  Raises:
    ValueError: shapes differ.
  """
  est, ref = _waveform_pair(est, ref)
  if zero_mean:
    est = est - jnp.mean(est, axis=-1, keepdims=True)
    ref = ref - jnp.mean(ref, axis=-1, keepdims=True)
  alpha = (jnp.sum(est * ref, axis=-1, keepdims=True) + eps) / (jnp.sum(ref**2, axis=-1, keepdims=True) + eps)
  target = alpha * ref
  num = jnp.sum(target**2, axis=-1) + eps
  den = jnp.sum((target - est)**2, axis=-1) + eps
  return 10.0 * jnp.log10(num / den)


def si_snr(est: jax.Array, ref: jax.Array, *, eps: float = EPS) -> jax.Array:
  """Scale-invariant SNR in dB per example: :func:`si_sdr` with ``zero_mean=True``.

  Source: torchmetrics ``scale_invariant_signal_noise_ratio`` (Luo & Mesgarani, Conv-TasNet, Eq. (12)).

  Args:
    est: estimate, shape ``(..., samples)``.
    ref: reference, same shape.
    eps: see the module docstring.

  Returns:
    SI-SNR in dB, shape ``(...)``.

  Raises:
    ValueError: shapes differ.
  """
  return si_sdr(est, ref, zero_mean=True, eps=eps)


def snr_loss(est: jax.Array, ref: jax.Array, *, reduction: str = "mean") -> jax.Array:
  """Negative SNR loss, ``−SNR(est, ref)`` in dB (see :func:`snr`).

  Args:
    est: estimate, shape ``(..., samples)``.
    ref: reference, same shape.
    reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the leading axes.

  Returns:
    Scalar (or ``(...)``) loss in dB.

  Raises:
    ValueError: shapes differ, or unknown ``reduction``.
  """
  return _reduce(-snr(est, ref), reduction)


def si_sdr_loss(est: jax.Array, ref: jax.Array, *, zero_mean: bool = False, reduction: str = "mean") -> jax.Array:
  """Negative SI-SDR loss, ``−SI-SDR(est, ref)`` in dB (see :func:`si_sdr`; ``zero_mean=True`` gives −SI-SNR).

  Args:
    est: estimate, shape ``(..., samples)``.
    ref: reference, same shape.
    zero_mean: subtract the means first (SI-SNR).
    reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the leading axes.

  Returns:
    Scalar (or ``(...)``) loss in dB.

  Raises:
    ValueError: shapes differ, or unknown ``reduction``.
  """
  return _reduce(-si_sdr(est, ref, zero_mean=zero_mean), reduction)


def weighted_snr_si_snr_loss(est: jax.Array,
                             ref: jax.Array,
                             *,
                             snr_weight: float = 0.9,
                             si_snr_weight: float = 0.1,
                             reduction: str = "mean") -> jax.Array:
  """SoundBeam / Waveformer extraction loss ``−w_snr·SNR − w_si·SI-SNR`` (dB).

  Sources: seed 002 Eq. (2) (``L^ext`` = weighted SNR + SI-SNR losses); weights from vb000/Waveformer
  src/training/dcc_tf.py ``loss``: ``-0.9 * snr(pred, tgt).mean() - 0.1 * si_snr(pred, tgt).mean()``.
  The multi-clue weighting ``α·L(class) + (1 − α)·L(enroll)`` of seed 002 is left to the task.

  Args:
    est: estimate, shape ``(..., samples)``.
    ref: reference, same shape.
    snr_weight: weight of the SNR term (0.9 in Waveformer).
    si_snr_weight: weight of the SI-SNR term (0.1 in Waveformer).
    reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the leading axes.

  Returns:
    Scalar (or ``(...)``) loss in dB.

  Raises:
    ValueError: shapes differ, or unknown ``reduction``.
  """
  per_example = -snr_weight * snr(est, ref) - si_snr_weight * si_snr(est, ref)
  return _reduce(per_example, reduction)


def soft_clipped_si_sdr_loss(est: jax.Array,
                             ref: jax.Array,
                             *,
                             clip_db: float = 30.0,
                             zero_mean: bool = False,
                             reduction: str = "mean") -> jax.Array:
  """SoundFilter reconstruction loss ``softplus(clip_db − SI-SDR(est, ref))``.

  Source: seed 003 Eq. (1). The paper prints ``−softplus(30 − SI-SDR)``; minimising that would *lower* SI-SDR, so the
  sign is an erratum (/work/shared/seeds/INDEX.md). The loss decreases monotonically with SI-SDR and flattens above
  ``clip_db`` (a soft clip: examples already separated to ~30 dB stop dominating the gradient).

  Args:
    est: estimate (enhanced or suppressed output), shape ``(..., samples)``.
    ref: reference (target or background), same shape.
    clip_db: soft clipping threshold in dB.
    zero_mean: use SI-SNR instead of SI-SDR.
    reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the leading axes.

  Returns:
    Scalar (or ``(...)``) loss (dB-scaled, ≥ 0).

  Raises:
    ValueError: shapes differ, or unknown ``reduction``.
  """
  return _reduce(jax.nn.softplus(clip_db - si_sdr(est, ref, zero_mean=zero_mean)), reduction)


def soft_clipped_snr_loss(est: jax.Array,
                          ref: jax.Array,
                          *,
                          clip_db: float = 30.0,
                          reduction: str = "mean") -> jax.Array:
  """``softplus(clip_db − SNR(est, ref))``: the SNR analogue of :func:`soft_clipped_si_sdr_loss` (seed 003, §2.3).

  Args:
    est: estimate, shape ``(..., samples)``.
    ref: reference, same shape.
    clip_db: soft clipping threshold in dB.
    reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the leading axes.

  Returns:
    Scalar (or ``(...)``) loss (≥ 0).

  Raises:
    ValueError: shapes differ, or unknown ``reduction``.
  """
  return _reduce(jax.nn.softplus(clip_db - snr(est, ref)), reduction)


def mixture_consistency_loss(mixture: jax.Array,
                             enhanced: jax.Array,
                             suppressed: jax.Array,
                             *,
                             clip_db: float = 30.0,
                             reduction: str = "mean") -> jax.Array:
  """SoundFilter consistency loss ``softplus(clip_db − SNR(est = enhanced + suppressed, ref = mixture))``.

  Source: seed 003 §2.3 ("the standard signal-to-noise ratio ... converted into a loss in the analogous way to
  SI-SDR"), with the sign erratum of Eq. (1) corrected as in :func:`soft_clipped_si_sdr_loss`.

  Args:
    mixture: model input, shape ``(..., samples)``.
    enhanced: target output, same shape.
    suppressed: background output, same shape.
    clip_db: soft clipping threshold in dB.
    reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the leading axes.

  Returns:
    Scalar (or ``(...)``) loss (≥ 0).

  Raises:
    ValueError: shapes differ, or unknown ``reduction``.
  """
  _check_same_shape("enhanced", enhanced, "suppressed", suppressed)
  return soft_clipped_snr_loss(_float(enhanced) + _float(suppressed), mixture, clip_db=clip_db, reduction=reduction)


def mixture_consistency_projection(mixture: jax.Array,
                                   sources: jax.Array,
                                   weights: jax.Array | None = None) -> jax.Array:
  """Project source estimates so they sum exactly to the mixture.

  ``ŝ_i = s_i + w_i · (x − Σ_j s_j)`` with ``Σ_i w_i = 1``; uniform ``w_i = 1/N`` by default.
  Source: Wisdom et al., "Differentiable consistency constraints for improved deep speech enhancement"
  (ICASSP 2019), Eq. (4) (unweighted) and Eq. (5) (weighted).

  Args:
    mixture: shape ``(..., samples)``.
    sources: estimates, shape ``(..., n_sources, samples)``.
    weights: optional non-negative weights, shape ``(..., n_sources)`` (normalised here to sum to one over
      sources; e.g. per-source energies for Eq. (5)). ``None`` -> uniform.

  Returns:
    Projected sources, shape ``(..., n_sources, samples)``; their sum over sources equals ``mixture``.

  Raises:
    ValueError: ``sources`` is not ``mixture`` with one extra source axis, or ``weights`` has the wrong shape.
  """
  mixture, sources = _float(mixture), _float(sources)
  if sources.ndim != mixture.ndim + 1 or sources.shape[:-2] + sources.shape[-1:] != mixture.shape:
    raise ValueError(f"sources must have shape (..., n_sources, samples) matching mixture (..., samples); got "
                     f"sources.shape={sources.shape} and mixture.shape={mixture.shape}")
  residual = mixture - jnp.sum(sources, axis=-2)
  if weights is None:
    w = jnp.full(sources.shape[:-1], 1.0 / sources.shape[-2], sources.dtype)
  else:
    weights = _float(weights)
    if weights.shape != sources.shape[:-1]:
      raise ValueError(f"weights must have shape {sources.shape[:-1]} (..., n_sources), got {weights.shape}")
    w = weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), NORM_EPS)
  return sources + w[..., None] * residual[..., None, :]


# --------------------------------------------------------------------------------------------------------------------
# contrastive
# --------------------------------------------------------------------------------------------------------------------
def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """L2-normalise embeddings: ``x / max(‖x‖, 1e-6)``, computed as ``x · rsqrt(max(Σx², 1e-12))``.

  Zero vectors stay zero with a finite gradient (the floor replaces the ``F.normalize`` eps of CLIP-style code).

  Args:
    x: embeddings, e.g. ``(batch, dim)``.
    axis: the feature axis.

  Returns:
    Same shape, unit norm along ``axis`` (or zero).
  """
  x = _float(x)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x**2, axis=axis, keepdims=True), NORM_EPS))


def _contrastive_logits(a: jax.Array, b: jax.Array, log_temperature: jax.Array, normalize: bool) -> jax.Array:
  if a.ndim != 2 or b.ndim != 2 or a.shape != b.shape:
    raise ValueError(f"embeddings must both be (batch, dim) with equal shapes, got {a.shape} and {b.shape}")
  if jnp.ndim(log_temperature) != 0:
    raise ValueError(f"log_temperature must be a scalar, got shape {jnp.shape(log_temperature)}")
  if normalize:
    a, b = l2_normalize(a), l2_normalize(b)
  else:
    a, b = _float(a), _float(b)
  return (a @ b.T) * jnp.exp(-_float(log_temperature))


def info_nce(query: jax.Array,
             keys: jax.Array,
             log_temperature: jax.Array,
             *,
             normalize: bool = True,
             reduction: str = "mean") -> jax.Array:
  """One-directional InfoNCE: cross-entropy of ``softmax(q·kᵀ / T)`` rows with labels on the diagonal.

  ``L_i = −log( exp(q_i·k_i / T) / Σ_j exp(q_i·k_j / T) )``, ``T = exp(log_temperature)``.
  Source: van den Oord et al. (CPC) Eq. (4); Tian et al., "Contrastive multiview coding" (ECCV 2020) Eq. (2) with the
  full-softmax form used by SoundWords (seed 003 §3: loss over the global batch, learnable temperature initialised
  to 0.1, i.e. ``log_temperature = log(0.1)``).

  Under ``jax.jit`` with batch-sharded ``query`` / ``keys`` the ``(batch, batch)`` logits span the *global* batch:
  every example sees every other device's examples as negatives (XLA gathers the keys).

  Args:
    query: embeddings, shape ``(batch, dim)``; row ``i`` is paired with ``keys[i]``.
    keys: embeddings, shape ``(batch, dim)``.
    log_temperature: scalar (a learnable parameter), natural log of the softmax temperature.
    normalize: L2-normalise both embeddings first (cosine similarities); see :func:`l2_normalize`.
    reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch.

  Returns:
    Scalar loss in nats (or shape ``(batch,)``).

  Raises:
    ValueError: embeddings are not 2-D with equal shapes, ``log_temperature`` is not a scalar, or unknown
      ``reduction``.
  """
  logits = _contrastive_logits(query, keys, log_temperature, normalize)
  per_example = -jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))
  return _reduce(per_example, reduction)


def symmetric_contrastive_loss(audio_emb: jax.Array,
                               text_emb: jax.Array,
                               log_temperature: jax.Array,
                               *,
                               normalize: bool = True,
                               reduction: str = "mean") -> jax.Array:
  """Symmetric audio–text InfoNCE: ``½ (InfoNCE(audio → text) + InfoNCE(text → audio))``.

  Logits ``a·tᵀ / T`` (``T = exp(log_temperature)``) over the global batch, labels on the diagonal; the text → audio
  term is the column-wise softmax of the same logits. Sources: CLIP (Radford et al. 2021, Fig. 3 pseudocode) and the
  two-view contrastive multiview coding loss (Tian et al. 2020, Eq. (3)) used by SoundWords (seed 003).
  Under ``jax.jit`` with sharded inputs the batch is the global batch (see :func:`info_nce`).

  Args:
    audio_emb: shape ``(batch, dim)``.
    text_emb: shape ``(batch, dim)``; ``text_emb[i]`` describes ``audio_emb[i]``.
    log_temperature: scalar, natural log of the temperature (learnable).
    normalize: L2-normalise both embeddings first.
    reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (per pair: the mean of its two directional terms).

  Returns:
    Scalar loss in nats (or shape ``(batch,)``).

  Raises:
    ValueError: as :func:`info_nce`.
  """
  logits = _contrastive_logits(audio_emb, text_emb, log_temperature, normalize)
  a2t = -jnp.diagonal(jax.nn.log_softmax(logits, axis=1))
  t2a = -jnp.diagonal(jax.nn.log_softmax(logits, axis=0))
  return _reduce(0.5 * (a2t + t2a), reduction)


# --------------------------------------------------------------------------------------------------------------------
# masked modelling
# --------------------------------------------------------------------------------------------------------------------
def _check_patches(pred: jax.Array, target: jax.Array, mask: jax.Array) -> None:
  _check_same_shape("pred", pred, "target_patches", target)
  if jnp.ndim(pred) < 2 or jnp.shape(mask) != jnp.shape(pred)[:-1]:
    raise ValueError(f"mask must have shape pred.shape[:-1] = (batch, patches); got pred.shape={jnp.shape(pred)} "
                     f"and mask.shape={jnp.shape(mask)}")


def normalize_patches(patches: jax.Array, *, eps: float = PATCH_VAR_EPS) -> jax.Array:
  """Per-patch normalisation ``(x − mean) / sqrt(var + eps)`` over the last (patch pixel) axis.

  ``var`` is the *unbiased* variance (``ddof=1``), as ``torch.Tensor.var`` computes in facebookresearch/AudioMAE
  models_mae.py ``forward_loss``.

  Args:
    patches: shape ``(..., patch_dim)``.
    eps: variance floor.

  Returns:
    Normalised patches, same shape.
  """
  patches = _float(patches)
  mean = jnp.mean(patches, axis=-1, keepdims=True)
  var = jnp.var(patches, axis=-1, keepdims=True, ddof=1)
  return (patches - mean) / jnp.sqrt(var + eps)


def masked_patch_mse(pred: jax.Array,
                     target_patches: jax.Array,
                     mask: jax.Array,
                     *,
                     norm_pix_loss: bool = True) -> jax.Array:
  """AudioMAE reconstruction loss: per-patch MSE averaged over the masked patches only.

  ``target = (x − mean) / sqrt(var + 1e-6)`` per patch if ``norm_pix_loss``; ``l_p = mean_d (pred − target)²``;
  ``L = Σ_p m_p l_p / Σ_p m_p`` over all patches of the (global) batch.
  Source: facebookresearch/AudioMAE models_mae.py ``MaskedAutoencoderViT.forward_loss``. The target is used as given:
  wrap it in ``jax.lax.stop_gradient`` if it comes from a network.

  Args:
    pred: decoder predictions, shape ``(batch, patches, patch_dim)``.
    target_patches: patchified input, same shape.
    mask: shape ``(batch, patches)``, 1 = masked (removed, predicted), 0 = visible.
    norm_pix_loss: normalise each target patch (the released AudioMAE config uses ``True``).

  Returns:
    Scalar loss. With no masked patch at all the denominator is clamped to 1 and the loss is 0.

  Raises:
    ValueError: shapes disagree.
  """
  _check_patches(pred, target_patches, mask)
  target = normalize_patches(target_patches) if norm_pix_loss else _float(target_patches)
  per_patch = jnp.mean((_float(pred) - target)**2, axis=-1)
  mask = _float(mask)
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def visible_and_masked_mse(pred: jax.Array,
                           target: jax.Array,
                           mask: jax.Array,
                           *,
                           norm_target: bool = False) -> jax.Array:
  """MAM-CLAP target loss: L2 on visible and on masked tokens, each averaged over its own count.

  ``L = (1/l_v) Σ_{visible} ‖Y − T‖² + (1/l_m) Σ_{masked} ‖Y − T‖²`` where ``‖·‖²`` is read as the per-token
  mean squared error over the feature axis (the same per-token form as AudioMAE) and ``l_v``, ``l_m`` count the
  visible / masked tokens of the (global) batch. Source: seed 004 Eq. (1).

  Args:
    pred: student predictions, shape ``(batch, tokens, dim)``.
    target: teacher (CLAP) features on the same token grid, same shape (stop its gradient in the caller).
    mask: shape ``(batch, tokens)``, 1 = masked, 0 = visible.
    norm_target: apply :func:`normalize_patches` to the target first.

  Returns:
    Scalar loss (a term whose token set is empty contributes 0).

  Raises:
    ValueError: shapes disagree.
  """
  _check_patches(pred, target, mask)
  target = normalize_patches(target) if norm_target else _float(target)
  per_token = jnp.mean((_float(pred) - target)**2, axis=-1)
  masked = _float(mask)
  visible = 1.0 - masked
  loss_v = jnp.sum(per_token * visible) / jnp.maximum(jnp.sum(visible), 1.0)
  loss_m = jnp.sum(per_token * masked) / jnp.maximum(jnp.sum(masked), 1.0)
  return loss_v + loss_m


# --------------------------------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------------------------------
def sigmoid_bce(logits: jax.Array, labels: jax.Array, *, reduction: str = "mean") -> jax.Array:
  """Multi-label binary cross-entropy on logits, ``−[y·log σ(z) + (1 − y)·log(1 − σ(z))]``.

  Computed as ``max(z, 0) − z·y + log1p(exp(−|z|))`` (numerically stable). Source: ``torch.nn.BCEWithLogitsLoss``
  (mean over every element), the tagging loss of PANNs / AudioMAE / M2D-AS fine-tuning.

  Args:
    logits: shape ``(batch, classes)`` (any shape).
    labels: targets in ``[0, 1]`` (multi-hot or soft, e.g. mixup), same shape.
    reduction: ``"mean"`` over every element (default, as torch), ``"sum"``, or ``"none"`` (elementwise).

  Returns:
    Scalar loss in nats (or elementwise).

  Raises:
    ValueError: shapes differ, or unknown ``reduction``.
  """
  _check_same_shape("logits", logits, "labels", labels)
  z, y = _float(logits), _float(labels)
  per_element = jnp.maximum(z, 0.0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))
  return _reduce(per_element, reduction)


def softmax_ce(logits: jax.Array,
               labels: jax.Array,
               *,
               temperature: float | jax.Array = 1.0,
               reduction: str = "mean") -> jax.Array:
  """Softmax cross-entropy of temperature-scaled logits, ``CE(p / τ, y)``.

  ``L = −Σ_c y_c · log_softmax(p / τ)_c``. Source: seed 004 Eq. (2) (SupMAM classification branch).

  Args:
    logits: shape ``(batch, classes)``.
    labels: integer class ids, shape ``(batch,)``, or class probabilities / one-hot, shape ``(batch, classes)``.
    temperature: τ > 0 (scalar).
    reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch.

  Returns:
    Scalar loss in nats (or shape ``(batch,)``).

  Raises:
    ValueError: ``labels`` matches neither accepted shape, or unknown ``reduction``.
  """
  logits = _float(logits)
  labels = jnp.asarray(labels)
  log_p = jax.nn.log_softmax(logits / temperature, axis=-1)
  if labels.shape == logits.shape[:-1] and jnp.issubdtype(labels.dtype, jnp.integer):
    per_example = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
  elif labels.shape == logits.shape:
    per_example = -jnp.sum(_float(labels) * log_p, axis=-1)
  else:
    raise ValueError(f"labels must be integer ids of shape {logits.shape[:-1]} or probabilities of shape "
                     f"{logits.shape}; got labels.shape={labels.shape} (dtype {labels.dtype}) for "
                     f"logits.shape={logits.shape}")
  return _reduce(per_example, reduction)
