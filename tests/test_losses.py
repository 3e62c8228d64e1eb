"""uss_jax.losses against numpy references, closed forms and sklearn; silence safety with jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import sklearn.metrics

from uss_jax import losses

EPS = np.float64(np.finfo(np.float32).eps)


def _np_snr(est, ref):
  return 10 * np.log10((np.sum(ref**2, -1) + EPS) / (np.sum((ref - est)**2, -1) + EPS))


def _np_si_sdr(est, ref, zero_mean=False):
  if zero_mean:
    est = est - est.mean(-1, keepdims=True)
    ref = ref - ref.mean(-1, keepdims=True)
  alpha = (np.sum(est * ref, -1, keepdims=True) + EPS) / (np.sum(ref**2, -1, keepdims=True) + EPS)
  t = alpha * ref
  return 10 * np.log10((np.sum(t**2, -1) + EPS) / (np.sum((t - est)**2, -1) + EPS))


def _softplus(x):
  return np.logaddexp(0.0, x)


@pytest.fixture(scope="session")
def waves():
  rng = np.random.default_rng(0)
  ref = rng.standard_normal((3, 4000)).astype(np.float32) * 0.3
  est = (0.8 * ref + 0.1 * rng.standard_normal((3, 4000))).astype(np.float32)
  return est, ref


def test_l1_waveform_matches_numpy(waves):
  est, ref = waves
  np.testing.assert_allclose(losses.l1_waveform(est, ref), np.mean(np.abs(est - ref)), rtol=1e-6)
  np.testing.assert_allclose(losses.l1_waveform(est, ref, reduction="none"), np.abs(est - ref).mean(-1), rtol=1e-6)


def test_snr_closed_form_known_noise_power():
  rng = np.random.default_rng(1)
  ref = rng.standard_normal((4, 8000))
  noise = rng.standard_normal((4, 8000))
  target_db = np.array([-5.0, 0.0, 10.0, 25.0])
  # scale noise so that sum(ref^2) / sum(noise^2) = 10^(target/10) exactly
  scale = np.sqrt(np.sum(ref**2, -1) / np.sum(noise**2, -1) / 10**(target_db / 10))
  est = ref + scale[:, None] * noise
  got = np.asarray(losses.snr(jnp.asarray(est, jnp.float32), jnp.asarray(ref, jnp.float32)))
  np.testing.assert_allclose(got, target_db, atol=2e-3)
  np.testing.assert_allclose(got, _np_snr(est, ref), atol=2e-3)


def test_si_sdr_matches_numpy_and_fast_bss_eval(waves):
  import fast_bss_eval.numpy as fbe
  est, ref = waves
  got = np.asarray(losses.si_sdr(est, ref))
  np.testing.assert_allclose(got, _np_si_sdr(est.astype(np.float64), ref.astype(np.float64)), atol=1e-3)
  # fast_bss_eval has no eps terms: agreement to float32 precision
  np.testing.assert_allclose(got, fbe.si_sdr(ref[:, None].astype(np.float64), est[:, None].astype(np.float64))[:, 0],
                             atol=1e-3)


def test_si_sdr_scale_invariance_and_perfect_estimate_bounded_by_eps(waves):
  est, ref = waves
  np.testing.assert_allclose(losses.si_sdr(3.0 * est, ref), losses.si_sdr(est, ref), atol=1e-3)
  # est = 2.5 * ref: numerator sum(t^2)+eps, residual ~0 -> 10 log10(sum(t^2)/eps), finite (float32 rounding of
  # alpha limits the residual, so the value lies between ~60 dB and the eps bound)
  perfect = np.asarray(losses.si_sdr(2.5 * ref, ref))
  bound = 10 * np.log10((np.sum((2.5 * ref.astype(np.float64))**2, -1) + EPS) / EPS)
  assert np.all(np.isfinite(perfect))
  assert np.all(perfect > 60.0) and np.all(perfect <= bound + 1e-3)


def test_si_snr_is_zero_mean_si_sdr_and_offset_invariant(waves):
  est, ref = waves
  got = np.asarray(losses.si_snr(est + 0.5, ref - 0.2))
  np.testing.assert_allclose(got, _np_si_sdr(est + 0.5, ref - 0.2, zero_mean=True), atol=1e-3)
  np.testing.assert_allclose(got, losses.si_snr(est, ref), atol=1e-3)


def test_negative_losses_and_weighted_snr_si_snr(waves):
  est, ref = waves
  snr_np = _np_snr(est.astype(np.float64), ref.astype(np.float64))
  si_np = _np_si_sdr(est.astype(np.float64), ref.astype(np.float64), zero_mean=True)
  np.testing.assert_allclose(losses.snr_loss(est, ref), -snr_np.mean(), atol=1e-3)
  np.testing.assert_allclose(losses.si_sdr_loss(est, ref, zero_mean=True), -si_np.mean(), atol=1e-3)
  # Waveformer: -0.9 * snr.mean() - 0.1 * si_snr.mean()
  np.testing.assert_allclose(losses.weighted_snr_si_snr_loss(est, ref), -0.9 * snr_np.mean() - 0.1 * si_np.mean(),
                             atol=1e-3)
  np.testing.assert_allclose(losses.weighted_snr_si_snr_loss(est, ref, snr_weight=0.5, si_snr_weight=0.5,
                                                             reduction="sum"),
                             np.sum(-0.5 * snr_np - 0.5 * si_np), atol=3e-3)


def test_soft_clipped_si_sdr_loss_value_and_direction(waves):
  est, ref = waves
  si = _np_si_sdr(est.astype(np.float64), ref.astype(np.float64))
  np.testing.assert_allclose(losses.soft_clipped_si_sdr_loss(est, ref, reduction="none"), _softplus(30 - si),
                             rtol=1e-4)
  # the erratum check: a better estimate must have a LOWER loss, and the gradient step must raise SI-SDR
  better = 0.5 * est + 0.5 * ref
  assert losses.soft_clipped_si_sdr_loss(better, ref) < losses.soft_clipped_si_sdr_loss(est, ref)
  g = jax.grad(lambda e: losses.soft_clipped_si_sdr_loss(e, ref))(jnp.asarray(est))
  stepped = est - 1e-2 * np.asarray(g) / np.abs(np.asarray(g)).max()
  assert np.all(np.asarray(losses.si_sdr(stepped, ref)) > np.asarray(losses.si_sdr(est, ref)))
  # soft clip: far above 30 dB the loss is ~0
  assert float(losses.soft_clipped_si_sdr_loss(ref + 1e-4 * est, ref)) < 1e-6


def test_mixture_consistency_loss_matches_numpy(waves):
  est, ref = waves
  mixture = ref + est
  enhanced, suppressed = 0.9 * ref, 0.8 * est
  expected = _softplus(30 - _np_snr((enhanced + suppressed).astype(np.float64), mixture.astype(np.float64)))
  np.testing.assert_allclose(losses.mixture_consistency_loss(mixture, enhanced, suppressed), expected.mean(),
                             rtol=1e-4)
  np.testing.assert_allclose(losses.soft_clipped_snr_loss(enhanced + suppressed, mixture, reduction="none"),
                             expected, rtol=1e-4)


def test_mixture_consistency_projection():
  rng = np.random.default_rng(2)
  mixture = rng.standard_normal((2, 100)).astype(np.float32)
  sources = rng.standard_normal((2, 3, 100)).astype(np.float32)
  out = np.asarray(losses.mixture_consistency_projection(mixture, sources))
  np.testing.assert_allclose(out.sum(1), mixture, atol=1e-5)
  np.testing.assert_allclose(out, sources + (mixture - sources.sum(1))[:, None] / 3, atol=1e-6)
  w = np.array([[1.0, 0.0, 3.0], [1.0, 1.0, 2.0]], np.float32)
  out_w = np.asarray(losses.mixture_consistency_projection(mixture, sources, w))
  expected = sources + (w / w.sum(1, keepdims=True))[..., None] * (mixture - sources.sum(1))[:, None]
  np.testing.assert_allclose(out_w, expected, atol=1e-6)


def _np_info_nce(a, b, log_t, normalize=True):
  if normalize:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
  logits = a @ b.T / np.exp(log_t)
  row = -np.diag(scipy.special.log_softmax(logits, axis=1))
  col = -np.diag(scipy.special.log_softmax(logits, axis=0))
  return row, col


def test_info_nce_and_symmetric_contrastive_match_numpy():
  rng = np.random.default_rng(3)
  a = rng.standard_normal((6, 8))
  b = a + 0.7 * rng.standard_normal((6, 8))
  log_t = np.log(0.1)
  row, col = _np_info_nce(a, b, log_t)
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  np.testing.assert_allclose(losses.info_nce(a32, b32, log_t), row.mean(), rtol=1e-5)
  np.testing.assert_allclose(losses.info_nce(b32, a32, log_t, reduction="none"), col, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.symmetric_contrastive_loss(a32, b32, jnp.float32(log_t)), 0.5 * (row + col).mean(),
                             rtol=1e-5)
  row_u, col_u = _np_info_nce(a, b, 0.3, normalize=False)
  np.testing.assert_allclose(losses.symmetric_contrastive_loss(a32, b32, 0.3, normalize=False),
                             0.5 * (row_u + col_u).mean(), rtol=1e-5)
  # learnable temperature: gradient matches a central finite difference of the numpy loss
  g = jax.grad(lambda t: losses.symmetric_contrastive_loss(a32, b32, t))(jnp.float32(log_t))
  h = 1e-4
  fd = (np.mean(sum(_np_info_nce(a, b, log_t + h))) - np.mean(sum(_np_info_nce(a, b, log_t - h)))) / (2 * h) / 2
  np.testing.assert_allclose(g, fd, rtol=1e-3)


def test_contrastive_under_jit_with_sharded_batch_is_global():
  rng = np.random.default_rng(4)
  a = rng.standard_normal((8, 4)).astype(np.float32)
  b = rng.standard_normal((8, 4)).astype(np.float32)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  a_s, b_s = jax.device_put(a, sharding), jax.device_put(b, sharding)
  got = jax.jit(losses.symmetric_contrastive_loss)(a_s, b_s, jnp.float32(-1.0))
  row, col = _np_info_nce(a.astype(np.float64), b.astype(np.float64), -1.0)
  np.testing.assert_allclose(got, 0.5 * (row + col).mean(), rtol=1e-5)


def test_masked_patch_mse_matches_numpy_loops():
  rng = np.random.default_rng(5)
  pred = rng.standard_normal((2, 6, 16))
  target = 3.0 * rng.standard_normal((2, 6, 16)) + 1.0
  mask = np.array([[1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 1, 1]], np.float32)
  for norm in (True, False):
    total, count = 0.0, 0.0
    for i in range(2):
      for p in range(6):
        t = target[i, p]
        if norm:
          t = (t - t.mean()) / np.sqrt(t.var(ddof=1) + 1e-6)  # torch .var is unbiased
        if mask[i, p]:
          total += np.mean((pred[i, p] - t)**2)
          count += 1
    got = losses.masked_patch_mse(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32), mask,
                                  norm_pix_loss=norm)
    np.testing.assert_allclose(got, total / count, rtol=1e-5)


def test_visible_and_masked_mse_matches_seed004_eq1():
  rng = np.random.default_rng(6)
  pred = rng.standard_normal((2, 5, 4))
  target = rng.standard_normal((2, 5, 4))
  mask = np.array([[1, 0, 0, 0, 0], [0, 1, 0, 1, 0]])
  vis, msk = [], []
  for i in range(2):
    for p in range(5):
      (msk if mask[i, p] else vis).append(np.mean((pred[i, p] - target[i, p])**2))
  expected = np.mean(vis) + np.mean(msk)
  got = losses.visible_and_masked_mse(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32), mask)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_sigmoid_bce_matches_sklearn_log_loss():
  rng = np.random.default_rng(7)
  logits = rng.standard_normal((10, 5)) * 3
  labels = (rng.random((10, 5)) < 0.3).astype(np.float32)
  expected = sklearn.metrics.log_loss(labels.ravel(), scipy.special.expit(logits).ravel(), labels=[0, 1])
  np.testing.assert_allclose(losses.sigmoid_bce(jnp.asarray(logits, jnp.float32), labels), expected, rtol=1e-5)
  # soft labels (mixup) vs the plain formula
  soft = rng.random((10, 5))
  p = scipy.special.expit(logits)
  np.testing.assert_allclose(losses.sigmoid_bce(jnp.asarray(logits, jnp.float32), jnp.asarray(soft, jnp.float32)),
                             np.mean(-(soft * np.log(p) + (1 - soft) * np.log(1 - p))), rtol=1e-5)


def test_softmax_ce_with_temperature_matches_numpy():
  rng = np.random.default_rng(8)
  logits = rng.standard_normal((6, 4))
  ids = rng.integers(0, 4, 6)
  for tau in (1.0, 0.2):
    logp = scipy.special.log_softmax(logits / tau, axis=-1)
    expected = -logp[np.arange(6), ids].mean()
    lj = jnp.asarray(logits, jnp.float32)
    np.testing.assert_allclose(losses.softmax_ce(lj, jnp.asarray(ids), temperature=tau), expected, rtol=1e-5)
    np.testing.assert_allclose(losses.softmax_ce(lj, np.eye(4, dtype=np.float32)[ids], temperature=tau), expected,
                               rtol=1e-5)


def test_batched_leading_axes_and_jit(waves):
  est, ref = waves
  est3, ref3 = est.reshape(3, 1, 4000).repeat(2, 1), ref.reshape(3, 1, 4000).repeat(2, 1)
  got = jax.jit(losses.si_sdr)(est3, ref3)
  assert got.shape == (3, 2)
  np.testing.assert_allclose(got, np.repeat(np.asarray(losses.si_sdr(est, ref))[:, None], 2, 1), atol=1e-4)
  np.testing.assert_allclose(jax.jit(losses.soft_clipped_si_sdr_loss)(est3, ref3),
                             losses.soft_clipped_si_sdr_loss(est, ref), rtol=1e-5)


def _finite_tree(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


_WAVE_LOSSES = {
    "l1_waveform": losses.l1_waveform,
    "snr_loss": losses.snr_loss,
    "si_sdr_loss": losses.si_sdr_loss,
    "si_snr_loss": lambda e, r: losses.si_sdr_loss(e, r, zero_mean=True),
    "weighted_snr_si_snr_loss": losses.weighted_snr_si_snr_loss,
    "soft_clipped_si_sdr_loss": losses.soft_clipped_si_sdr_loss,
    "soft_clipped_snr_loss": losses.soft_clipped_snr_loss,
    "mixture_consistency_loss": lambda e, r: losses.mixture_consistency_loss(r, e, 0.5 * e),
}


@pytest.mark.parametrize("name", sorted(_WAVE_LOSSES))
@pytest.mark.parametrize("case", ["zero_ref", "zero_est", "both_zero"])
def test_waveform_losses_finite_at_silence(name, case):
  rng = np.random.default_rng(9)
  x = jnp.asarray(rng.standard_normal((2, 256)), jnp.float32)
  zero = jnp.zeros((2, 256), jnp.float32)
  est, ref = {"zero_ref": (x, zero), "zero_est": (zero, x), "both_zero": (zero, zero)}[case]
  fn = _WAVE_LOSSES[name]
  value, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(est, ref)
  assert _finite_tree((value, grads)), (name, case, value)


def test_other_losses_finite_at_silence():
  zeros = jnp.zeros((4, 8), jnp.float32)
  ones = jnp.ones((4, 8), jnp.float32)
  contrastive = jax.jit(jax.value_and_grad(losses.symmetric_contrastive_loss, argnums=(0, 1, 2)))
  v, g = contrastive(zeros, zeros, jnp.float32(-2.3))
  assert _finite_tree((v, g))
  np.testing.assert_allclose(v, np.log(4), rtol=1e-6)  # all logits equal -> uniform softmax
  patches = jnp.zeros((2, 3, 16), jnp.float32)
  mask = jnp.array([[1, 0, 1], [0, 0, 1]])
  for fn in (losses.masked_patch_mse, losses.visible_and_masked_mse):
    v, g = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(patches, patches, mask)
    assert _finite_tree((v, g)) and float(v) == 0.0
  v, g = jax.jit(jax.value_and_grad(losses.masked_patch_mse, argnums=(0, 1)))(patches, patches, jnp.zeros((2, 3)))
  assert _finite_tree((v, g)) and float(v) == 0.0  # no masked patch: clamped count
  v, g = jax.jit(jax.value_and_grad(losses.sigmoid_bce))(zeros, ones)
  assert _finite_tree((v, g))
  np.testing.assert_allclose(v, np.log(2), rtol=1e-6)
  v, g = jax.jit(jax.value_and_grad(losses.softmax_ce))(zeros, jnp.zeros((4,), jnp.int32))
  assert _finite_tree((v, g))
  np.testing.assert_allclose(v, np.log(8), rtol=1e-6)


def test_bad_shapes_raise_value_error_naming_shapes():
  with pytest.raises(ValueError, match=r"\(2, 100\).*\(2, 99\)"):
    losses.si_sdr(jnp.zeros((2, 100)), jnp.zeros((2, 99)))
  with pytest.raises(ValueError, match=r"\(2, 100\).*\(3, 100\)"):
    losses.l1_waveform(jnp.zeros((2, 100)), jnp.zeros((3, 100)))
  with pytest.raises(ValueError, match="mask"):
    losses.masked_patch_mse(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"\(4, 8\).*\(5, 8\)"):
    losses.info_nce(jnp.zeros((4, 8)), jnp.zeros((5, 8)), 0.0)
  with pytest.raises(ValueError, match="labels"):
    losses.softmax_ce(jnp.zeros((4, 3)), jnp.zeros((4, 2)))
  with pytest.raises(ValueError, match="reduction"):
    losses.snr_loss(jnp.ones((2, 4)), jnp.ones((2, 4)), reduction="avg")
