"""ResUNet30 (bytedance/uss) and the FiLM layers, on tiny widths, against numpy / librosa references.

The full-size parity with the PyTorch reference is in tests/test_convert_uss.py; here: the parameter count of the
full-size layout, FiLM = numpy, the transposed-conv upsampling = PyTorch ConvTranspose2d semantics (numpy scatter),
an all-pass configuration (mask magnitude 1, phase 0) = librosa STFT -> iSTFT, bn0 statistics over the right axis,
and the condition really steering the output.
"""

import json

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import scipy.signal
from flax import nnx

from conftest import FIXTURES
from uss_jax.convert import common
from uss_jax.models import resunet
from uss_jax.models.resunet import PatchConvTranspose, ResUNet30
from uss_jax.nn.film import FiLM, film_modulate

TINY = dict(channels=(4, 8, 8), n_fft=256, hop_length=64, condition_size=6)


def _tiny(seed=0, **kw):
  model = ResUNet30(rngs=nnx.Rngs(seed), **{**TINY, **kw})
  model.eval()
  return model


def _signal(shape, seed=0):
  """Test audio with (almost) nothing at the Nyquist frequency: sines below 0.31 fs plus noise low-passed at fs / 4,
  faded in and out (Tukey window) so that the reflect padding at the edges adds no broadband kink (float32)."""
  rng = np.random.default_rng(seed)
  n = np.arange(shape[-1])
  x = np.zeros(shape)
  for f in (0.013, 0.041, 0.097, 0.19, 0.31):
    x = x + rng.uniform(0.05, 0.3, shape[:-1] + (1,)) * np.sin(2 * np.pi * f * n + rng.uniform(0, 6, shape[:-1] + (1,)))
  b, a = scipy.signal.butter(8, 0.5)
  x = x + 0.1 * scipy.signal.filtfilt(b, a, rng.standard_normal(shape), axis=-1)
  return (x * scipy.signal.windows.tukey(shape[-1], 0.2)).astype(np.float32)


def test_full_size_parameter_count():
  """The reference's 41,586,757 trainable parameters = ours + its 36 unused decoder bn2 / FiLM beta2 entries."""
  model = nnx.eval_shape(lambda: ResUNet30(rngs=nnx.Rngs(0)))
  ours = resunet.count_params(model)
  manifest = common.load_manifest(FIXTURES / "parity" / "uss_resunet30" / "manifest.json")
  stats = json.loads((FIXTURES / "parity" / "uss_resunet30" / "stats.json").read_text())
  params = [(k, s) for k, s, _, c in manifest if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
  frontend = sum(int(np.prod(s)) for k, s in params if k.startswith(("base.stft.", "base.istft.conv")))
  reference = stats["n_params"] - frontend  # parameters() counts the frozen conv-DFT kernels too
  unused = sum(int(np.prod(s)) for k, s in params
               if (".bn2." in k and k.startswith("base.decoder_block") and ".conv_block2." not in k)
               or ("->beta2." in k and k.count("->") == 1 and k.startswith("film.decoder_block")))
  film = sum(int(np.prod(s)) for k, s in params if k.startswith("film."))
  assert reference == 41_586_757 and film == 9856 * 2049
  assert unused == 3_281_600
  assert ours == reference - unused == 38_305_157


def test_film_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 5, 7, 4)).astype(np.float32)
  c = rng.standard_normal((3, 6)).astype(np.float32)
  add = FiLM(6, 4, rngs=nnx.Rngs(0))
  wb, bb = np.asarray(add.beta.kernel.get_value()), rng.standard_normal(4).astype(np.float32)
  add.beta.bias.set_value(jnp.asarray(bb))
  expect = x + (c @ wb + bb)[:, None, None, :]
  np.testing.assert_allclose(np.asarray(add(jnp.asarray(x), jnp.asarray(c))), expect, rtol=1e-5, atol=1e-5)
  assert add.gamma is None

  aff = FiLM(6, 4, use_gamma=True, gamma_offset=1.0, rngs=nnx.Rngs(1))
  wg = rng.standard_normal((6, 4)).astype(np.float32)
  aff.gamma.kernel.set_value(jnp.asarray(wg))
  wb = np.asarray(aff.beta.kernel.get_value())
  x3 = x[:, :, 0]  # a 1-D map (batch, time, channels)
  expect = (1.0 + c @ wg)[:, None, :] * x3 + (c @ wb)[:, None, :]
  np.testing.assert_allclose(np.asarray(aff(jnp.asarray(x3), jnp.asarray(c))), expect, rtol=1e-5, atol=1e-5)
  # Logical axis names on the generator parameters.
  assert aff.beta.kernel.get_metadata()["out_sharding"] == ("embed", "conv_out")
  assert aff.beta.bias.get_metadata()["out_sharding"] == ("conv_out",)
  with pytest.raises(ValueError, match="condition must be"):
    add(jnp.asarray(x), jnp.zeros((3, 5)))
  with pytest.raises(ValueError, match="does not modulate"):
    film_modulate(jnp.asarray(x), None, jnp.zeros((3, 5)))


def test_patch_conv_transpose_matches_pytorch_semantics():
  """y[i*s + a] += x[i] W[:, :, a] (PyTorch ConvTranspose2d, kernel = stride) by an explicit numpy scatter, and the
  same layer through lax.conv_transpose with the flipped kernel of common.conv_transpose2d_kernel."""
  rng = np.random.default_rng(1)
  cin, cout, (st, sf) = 3, 5, (2, 3)
  w_torch = rng.standard_normal((cin, cout, st, sf)).astype(np.float32)  # ConvTranspose2d.weight layout
  x = rng.standard_normal((2, 4, 3, cin)).astype(np.float32)
  expect = np.zeros((2, 4 * st, 3 * sf, cout))
  for i in range(4):
    for j in range(3):
      for a in range(st):
        for b in range(sf):
          expect[:, i * st + a, j * sf + b] += x[:, i, j] @ w_torch[:, :, a, b]
  layer = PatchConvTranspose(cin, cout, (st, sf), rngs=nnx.Rngs(0))
  layer.kernel.set_value(jnp.asarray(w_torch.transpose(2, 3, 0, 1)))
  with jax.default_matmul_precision("highest"):
    y = np.asarray(layer(jnp.asarray(x)))
    ref = jax.lax.conv_transpose(jnp.asarray(x), jnp.asarray(common.conv_transpose2d_kernel(w_torch)), (st, sf),
                                 common.conv_transpose_padding((st, sf)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ref), expect, rtol=1e-5, atol=1e-5)


def _all_pass(model):
  """after_conv -> constant logits (30, 30, 0): mask magnitude sigmoid(30) = 1, phasor (tanh(30), 0) = (1, 0)."""
  k = model.after_conv.kernel.get_value()
  model.after_conv.kernel.set_value(jnp.zeros_like(k))
  model.after_conv.bias.set_value(jnp.tile(jnp.asarray([30.0, 30.0, 0.0]), model.output_channels))


@pytest.mark.parametrize("channels", [1, 2])
def test_all_pass_mask_reproduces_the_mixture(channels):
  """With mask 1 and zero phase shift the model is STFT -> iSTFT except for the top (Nyquist) bin, which the
  reference always zeroes (its logits are the zero padding: phasor (0, 0)). Reference: librosa, Nyquist bin zeroed."""
  n_fft, hop = TINY["n_fft"], TINY["hop_length"]
  model = _tiny(input_channels=channels, output_channels=channels)
  _all_pass(model)
  shape = (2, 3000) if channels == 1 else (2, channels, 3000)
  x = _signal(shape)
  cond = np.random.default_rng(3).standard_normal((2, TINY["condition_size"])).astype(np.float32)
  out = nnx.jit(lambda m, a, c: m(a, c, return_intermediates=True))(model, jnp.asarray(x), jnp.asarray(cond))
  y = np.asarray(out["waveform"])
  spec = librosa.stft(x.astype(np.float64), n_fft=n_fft, hop_length=hop, window="hann", center=True,
                      pad_mode="reflect")
  spec[..., -1, :] = 0.0  # librosa: (..., bins, frames)
  ref = librosa.istft(spec, hop_length=hop, n_fft=n_fft, window="hann", center=True, length=x.shape[-1])
  scale = np.abs(x).max()
  assert y.shape == x.shape
  assert np.abs(y - ref).max() / scale <= 1e-5, np.abs(y - ref).max() / scale
  # The test signal has almost nothing at the Nyquist frequency, so the output is the mixture itself.
  assert np.abs(y - x).max() / scale <= 1e-5, np.abs(y - x).max() / scale
  # The intermediates: librosa magnitude (floored at 1e-5 as the reference) and the constant logits, top bin 0.
  mag_ref = np.moveaxis(np.sqrt(np.maximum(np.abs(librosa.stft(
      x.astype(np.float64), n_fft=n_fft, hop_length=hop, center=True, pad_mode="reflect")) ** 2, 1e-10)), -1, -2)
  mag_ref = mag_ref[..., None] if channels == 1 else np.moveaxis(mag_ref, 1, -1)
  np.testing.assert_allclose(np.asarray(out["mixture_mag"]), mag_ref, rtol=1e-4, atol=1e-5 * mag_ref.max())
  logits = np.asarray(out["mask_logits"])
  np.testing.assert_array_equal(logits[:, :, :-1], np.broadcast_to(np.tile([30.0, 30.0, 0.0], channels),
                                                                   logits[:, :, :-1].shape))
  assert np.all(logits[:, :, -1] == 0.0)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_identity_output_init_outputs_half_the_mixture(mode):
  """output_init='identity': logits (0, 1, 0) everywhere -> magnitude mask sigmoid(0) = 1/2, phase angle 0, whatever
  the condition and the BatchNorm mode: the untrained model returns 0.5 * mixture (up to the Nyquist bin, which the
  test signal barely has). The reference initialisation does not (its random mask logits reach |.| ~ 3)."""
  x = _signal((2, 3000))
  cond = np.random.default_rng(3).standard_normal((2, TINY["condition_size"])).astype(np.float32)
  model = ResUNet30(rngs=nnx.Rngs(0), output_init="identity", **TINY)
  getattr(model, mode)()
  y = np.asarray(nnx.jit(lambda m, a, c: m(a, c)["waveform"])(model, jnp.asarray(x), jnp.asarray(cond)))
  scale = np.abs(x).max()
  assert np.abs(y - 0.5 * x).max() / scale <= 1e-5, np.abs(y - 0.5 * x).max() / scale
  reference = _tiny()
  y_ref = np.asarray(nnx.jit(lambda m, a, c: m(a, c)["waveform"])(reference, jnp.asarray(x), jnp.asarray(cond)))
  assert np.abs(y_ref - 0.5 * x).max() / scale > 1e-2
  with pytest.raises(ValueError, match="output_init"):
    ResUNet30(rngs=nnx.Rngs(0), output_init="zeros", **TINY)


def test_condition_steers_the_output_through_film():
  model = _tiny(seed=2)
  x = jnp.asarray(_signal((2, 2000), seed=1))
  c1, c2 = (jnp.asarray(np.random.default_rng(s).standard_normal((2, TINY["condition_size"])), jnp.float32)
            for s in (4, 5))
  fwd = nnx.jit(lambda m, a, c: m(a, c)["waveform"])
  y1, y2 = np.asarray(fwd(model, x, c1)), np.asarray(fwd(model, x, c2))
  assert np.abs(y1 - y2).max() / np.abs(y1).max() > 1e-2  # the query changes the separation
  # Zero every FiLM kernel: the modulation is then the (condition-free) bias, and the condition has no effect.
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if "film1" in path or "film2" in path:
      if path[-1] == "kernel":
        var.set_value(jnp.zeros_like(var.get_value()))
  z1, z2 = np.asarray(fwd(model, x, c1)), np.asarray(fwd(model, x, c2))
  np.testing.assert_array_equal(z1, z2)
  assert np.abs(z1 - y1).max() > 1e-3 * np.abs(y1).max()


def test_train_mode_bn0_statistics_and_finite_gradients():
  """bn0 normalises each frequency bin over (batch, frames, channels): after one train-mode pass its running mean
  is 0.01 x the per-bin mean of the STFT magnitude (PyTorch momentum 0.01), checked against librosa; the L1 loss
  has finite, non-zero gradients (the mask phasor at |mask| = 0 included)."""
  model = _tiny(seed=3)
  model.train()
  x = _signal((2, 2000), seed=2)
  cond = jnp.asarray(np.random.default_rng(6).standard_normal((2, TINY["condition_size"])), jnp.float32)

  def loss_fn(m, a, c, target):
    return jnp.mean(jnp.abs(m(a, c)["waveform"] - target))

  loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model, jnp.asarray(x), cond, jnp.asarray(x) * 0.5)
  mag = np.sqrt(np.maximum(np.abs(librosa.stft(x.astype(np.float64), n_fft=TINY["n_fft"],
                                               hop_length=TINY["hop_length"], pad_mode="reflect")) ** 2, 1e-10))
  expect = 0.01 * mag.mean(axis=(0, 2))  # (batch, bins, frames) -> per bin
  np.testing.assert_allclose(np.asarray(model.bn0.mean.get_value()), expect, rtol=1e-4, atol=1e-7)
  leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
  assert np.isfinite(float(loss)) and all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
  film_grad = np.asarray(grads["encoder_block1"]["conv_block1"]["film1"]["beta"]["kernel"].get_value())
  assert np.abs(film_grad).max() > 0


def test_invalid_arguments():
  with pytest.raises(ValueError, match="not divisible"):
    ResUNet30(channels=(4, 8, 8), n_fft=200, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="input_channels"):
    ResUNet30(input_channels=2, output_channels=3, rngs=nnx.Rngs(0), **TINY)
  model = _tiny()
  with pytest.raises(ValueError, match="condition must be"):
    model(jnp.zeros((1, 1000)), jnp.zeros((1, 5)))
  with pytest.raises(ValueError, match="mixture must be"):
    model(jnp.zeros((1, 2, 1000)), jnp.zeros((1, 6)))
