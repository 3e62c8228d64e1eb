"""STFT / iSTFT against librosa, perfect reconstruction, the USS ResUNet30 parity fixture, gradients.

Tolerances (float32): STFT vs librosa.stft max|diff| <= 1e-5 * max|ref| (measured ~1.5e-7); iSTFT vs librosa.istft
<= 1e-5 absolute on unit-variance signals (measured ~1e-6); istft(stft(x)) == x to 1e-5 (measured <= 1e-6).
"""

import pathlib

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
from jax.test_util import check_grads

from uss_jax.audio import stft as S

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "parity"

# (samples, n_fft, hop, win_length, center, pad_mode): the USS, PANNs and M2D layouts plus odd ones.
CASES = [
    (64000, 2048, 320, None, True, "reflect"),
    (32000, 1024, 320, None, True, "reflect"),
    (16003, 400, 160, 400, True, "reflect"),
    (5001, 512, 160, 400, True, "constant"),
    (4999, 512, 128, None, False, "reflect"),
    (777, 1024, 320, None, True, "reflect"),  # shorter than n_fft: repeated reflection
    (2000, 256, 100, 200, True, "reflect"),  # hop does not divide n_fft, window padded in the centre
]


@pytest.mark.filterwarnings("ignore:n_fft=.*is too large:UserWarning")
@pytest.mark.parametrize("n,n_fft,hop,win,center,pad_mode", CASES)
def test_stft_matches_librosa(n, n_fft, hop, win, center, pad_mode):
  x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
  ref = librosa.stft(x, n_fft=n_fft, hop_length=hop, win_length=win, center=center, pad_mode=pad_mode).T
  out = np.asarray(jax.jit(lambda v: S.stft(v, n_fft, hop, win, center=center, pad_mode=pad_mode))(x))
  assert out.dtype == np.complex64
  assert out.shape == ref.shape
  if center:
    assert out.shape[0] == S.num_frames(n, n_fft, hop) == 1 + n // hop
  np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("method", ["slices", "conv"])
def test_frame_methods_agree(method):
  x = np.random.default_rng(1).standard_normal((2, 3001)).astype(np.float32)
  idx = 160 * np.arange(1 + (3001 - 400) // 160)[:, None] + np.arange(400)[None]
  ref = x[:, idx]
  np.testing.assert_array_equal(np.asarray(S.frame(x, 400, 160)), ref)
  np.testing.assert_array_equal(np.asarray(S.frame(x, 400, 160, method=method)), ref)


def test_overlap_add_is_adjoint_of_frame():
  rng = np.random.default_rng(2)
  x = rng.standard_normal(2500).astype(np.float32)
  f = rng.standard_normal((1 + (2500 - 300) // 70, 300)).astype(np.float32)
  y = np.asarray(S.overlap_add(jnp.asarray(f), 70))
  ref = np.zeros(300 + 70 * (f.shape[0] - 1))
  for t in range(f.shape[0]):
    ref[t * 70:t * 70 + 300] += f[t]
  np.testing.assert_allclose(y, ref, atol=1e-5)
  # <frame(x), f> == <x, ola(f)> on the covered part.
  lhs = float(np.sum(np.asarray(S.frame(x, 300, 70)) * f))
  rhs = float(np.sum(x[:y.shape[0]] * y))
  assert abs(lhs - rhs) < 1e-3 * abs(lhs)


def test_stft_batched_leading_axes():
  x = np.random.default_rng(3).standard_normal((2, 3, 4000)).astype(np.float32)
  out = np.asarray(S.stft(x, 512, 160))
  assert out.shape == (2, 3, 26, 257)
  for i in range(2):
    for j in range(3):
      ref = librosa.stft(x[i, j], n_fft=512, hop_length=160, pad_mode="reflect").T
      np.testing.assert_allclose(out[i, j], ref, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("n,n_fft,hop,win,center,pad_mode", [c for c in CASES if c[4]])
def test_istft_matches_librosa(n, n_fft, hop, win, center, pad_mode):
  rng = np.random.default_rng(n + 1)
  t = 1 + n // hop
  # An arbitrary (inconsistent) spectrogram, so the overlap-add and normalisation are really exercised.
  spec = (rng.standard_normal((t, n_fft // 2 + 1)) + 1j * rng.standard_normal((t, n_fft // 2 + 1))).astype(np.complex64)
  ref = librosa.istft(spec.T, n_fft=n_fft, hop_length=hop, win_length=win, center=True, length=n)
  out = np.asarray(jax.jit(lambda s: S.istft(s, n_fft, hop, win, length=n))(spec))
  assert out.shape == (n,)
  np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * max(1.0, np.abs(ref).max()))


def test_istft_non_centred_interior_matches_librosa():
  rng = np.random.default_rng(5)
  spec = (rng.standard_normal((30, 257)) + 1j * rng.standard_normal((30, 257))).astype(np.complex64)
  ref = librosa.istft(spec.T, n_fft=512, hop_length=128, center=False)
  out = np.asarray(S.istft(spec, 512, 128, center=False))
  assert out.shape == ref.shape
  # Away from the first / last n_fft - hop samples, where the window envelope is ~0 and the division is ill-posed.
  np.testing.assert_allclose(out[384:-384], ref[384:-384], atol=1e-5)


@pytest.mark.parametrize("n,n_fft,hop,win,center,pad_mode", [c for c in CASES if c[4]])
def test_perfect_reconstruction(n, n_fft, hop, win, center, pad_mode):
  x = np.random.default_rng(n + 2).uniform(-1, 1, (2, n)).astype(np.float32)
  y = np.asarray(S.istft(S.stft(x, n_fft, hop, win, pad_mode=pad_mode), n_fft, hop, win, length=n))
  np.testing.assert_allclose(y, x, rtol=0, atol=1e-5)


def test_istft_length_pads_and_cuts():
  x = np.random.default_rng(6).standard_normal(3200).astype(np.float32)
  spec = S.stft(x, 1024, 320)
  np.testing.assert_allclose(np.asarray(S.istft(spec, 1024, 320)), x, atol=1e-5)  # default: hop * (frames - 1)
  longer = np.asarray(S.istft(spec, 1024, 320, length=4000))
  np.testing.assert_allclose(longer[:3200], x, atol=1e-5)
  ref = librosa.istft(np.asarray(spec).T, n_fft=1024, hop_length=320, length=4000)
  np.testing.assert_allclose(longer, ref, atol=1e-5)


def test_uss_resunet30_magnitude_and_waveform_fixture():
  """mixture_mag of the reference (torchlibrosa conv STFT) and its output waveform through our iSTFT."""
  d = FIXTURES / "uss_resunet30"
  if not (d / "outputs.npz").exists():
    pytest.skip("uss_resunet30 fixture not copied")
  mix = np.load(d / "inputs.npz")["mixture"][:, 0]
  out = np.load(d / "outputs.npz")
  mag, cos, sin = S.magphase(S.stft(mix, 2048, 320))
  ref = out["mixture_mag"][:, 0]
  assert mag.shape == ref.shape == (2, 201, 1025)
  assert np.abs(np.asarray(mag) - ref).max() <= 1e-5 * np.abs(ref).max()  # measured 1.2e-6
  # Reference output path (uss/models/base.py feature_maps_to_wav), from the stored mask logits.
  logits = out["mask_logits"]
  m_mag = jax.nn.sigmoid(logits[:, 0])
  m_re, m_im = jnp.tanh(logits[:, 1]), jnp.tanh(logits[:, 2])
  m_abs = jnp.sqrt(jnp.maximum(m_re ** 2 + m_im ** 2, 1e-10))
  m_cos, m_sin = m_re / m_abs, m_im / m_abs
  out_cos = cos * m_cos - sin * m_sin
  out_sin = sin * m_cos + cos * m_sin
  y = S.istft(S.polar_to_complex(jax.nn.relu(mag * m_mag), out_cos, out_sin), 2048, 320, length=64000)
  ref_wav = out["waveform"][:, 0]
  assert np.abs(np.asarray(y) - ref_wav).max() <= 5e-5 * np.abs(ref_wav).max()  # measured 8e-7


def test_gradients_numerical_and_finite_at_zero():
  x = np.random.default_rng(7).standard_normal(300).astype(np.float32)

  def loss(v):
    spec = S.stft(v, 128, 48)
    return jnp.sum(S.magnitude(spec)) + jnp.sum(S.istft(spec * 0.5, 128, 48, length=300) ** 2)

  check_grads(jax.jit(loss), (jnp.asarray(x, jnp.float32),), order=1, modes=("rev",), atol=5e-2, rtol=5e-2, eps=1e-2)
  for fn in (lambda v: jnp.sum(S.magnitude(S.stft(v, 256, 64))),
             lambda v: jnp.sum(S.magphase(S.stft(v, 256, 64))[0]),
             lambda v: jnp.sum(S.power(S.stft(v, 256, 64)))):
    g = jax.jit(jax.grad(fn))(jnp.zeros(700))
    assert np.all(np.isfinite(np.asarray(g)))


def test_magnitude_eps_floor():
  spec = jnp.asarray([[0j, 3 + 4j]], dtype=jnp.complex64)
  np.testing.assert_allclose(np.asarray(S.magnitude(spec)), [[0.0, 5.0]])
  np.testing.assert_allclose(np.asarray(S.magnitude(spec, eps=1e-10)), [[1e-5, 5.0]], rtol=1e-6)
  mag, cos, sin = S.magphase(spec)
  np.testing.assert_allclose(np.asarray(cos), [[0.0, 0.6]], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(sin), [[0.0, 0.8]], rtol=1e-6)


def test_errors():
  with pytest.raises(ValueError):
    S.stft(jnp.zeros(100), 256, 64, center=False)
  with pytest.raises(ValueError):
    S.istft(jnp.zeros((3, 100), jnp.complex64), 256, 64)
  with pytest.raises(ValueError):
    S.get_window("hann", 256, 512)
