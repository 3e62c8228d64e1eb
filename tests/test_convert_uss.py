"""bytedance/uss ResUNet30 converter against the PyTorch parity fixture (tests/fixtures/parity/uss_resunet30).

The reference ResUNet30(input_channels=1, output_channels=1, condition_size=2048) got every state_dict entry from the
deterministic weight rule and ran in eval mode, float32, on 2 x 2 s mixtures at 32 kHz. Here the rule state_dict is
rebuilt with numpy (``common.rule_state_dict``), converted, and the Flax model runs once on inputs.npz.
Pass thresholds (fixture README, "Tolerance guidance"): max|y - ref| / max|ref| <= 5e-5 for the waveform, 1e-4 for
mask_real / mask_imag (tanh of logits near +-0.5 amplifies float32 noise); 2e-5 for mask_logits, mask_mag and
mixture_mag (the reference's own float32-vs-float64 errors are 1.2e-6 to 5.4e-6 there). Measured on CPU (highest
precision): waveform 4.3e-6, mask_logits 1.4e-6, mask_mag 5.5e-6, mixture_mag 1.2e-6, mask_real 2.8e-5,
mask_imag 5.0e-5 (the reference's own float32-vs-float64 error for mask_imag is 4.8e-5).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import FIXTURES
from uss_jax.convert import common, uss
from uss_jax.models.resunet import ResUNet30

FIXTURE = FIXTURES / "parity" / "uss_resunet30"
TOL = {"waveform": 5e-5, "mask_logits": 2e-5, "mask_mag": 2e-5, "mixture_mag": 2e-5, "mask_real": 1e-4,
       "mask_imag": 1e-4}
TINY = dict(channels=(4, 8, 8), n_fft=256, hop_length=64, condition_size=6)


def _rel(y, ref):
  y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
  assert y.shape == ref.shape, (y.shape, ref.shape)
  return float(np.abs(y - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="session")
def rule_sd():
  return common.rule_state_dict(FIXTURE / "manifest.json")


@pytest.fixture(scope="session")
def parity_outputs(rule_sd):
  """One jitted forward of the full-size converted model on the fixture inputs (highest matmul precision)."""
  model = nnx.eval_shape(lambda: ResUNet30(input_channels=1, output_channels=1, condition_size=2048,
                                           rngs=nnx.Rngs(0)))
  uss.convert_resunet30(rule_sd, model)
  model.eval()
  inputs = np.load(FIXTURE / "inputs.npz")
  with jax.default_matmul_precision("highest"):
    out = nnx.jit(lambda m, x, c: m(x, c, return_intermediates=True))(
        model, jnp.asarray(inputs["mixture"][:, 0]), jnp.asarray(inputs["condition"]))
  return jax.tree.map(np.asarray, out)


def test_rule_state_dict_matches_weight_checks(rule_sd):
  checks = json.loads((FIXTURE / "weight_checks.json").read_text())
  manifest = common.load_manifest(FIXTURE / "manifest.json")
  assert list(rule_sd) == [row[0] for row in manifest] and len(manifest) == 332
  for key, check in checks.items():
    if check["category"].startswith("keep_"):
      continue
    value = rule_sd[key].astype(np.float64)
    assert value.sum() == check["sum"] and np.abs(value).sum() == check["sum_abs"], key  # bit-exact
    assert value.ravel()[:3].tolist() == check["first"], key


def test_parity_with_pytorch_reference(parity_outputs):
  out, ref = parity_outputs, np.load(FIXTURE / "outputs.npz")
  logits = out["mask_logits"]  # (batch, frames, bins, 3); the reference is (batch, 3, frames, bins)
  errors = {
      "waveform": _rel(out["waveform"], ref["waveform"][:, 0]),
      "mask_logits": _rel(logits, np.moveaxis(ref["mask_logits"], 1, -1)),
      "mask_mag": _rel(jax.nn.sigmoid(logits[..., 0]), ref["mask_mag"][:, 0]),
      "mask_real": _rel(np.tanh(logits[..., 1]), ref["mask_real"][:, 0]),
      "mask_imag": _rel(np.tanh(logits[..., 2]), ref["mask_imag"][:, 0]),
      "mixture_mag": _rel(out["mixture_mag"][..., 0], ref["mixture_mag"][:, 0]),
  }
  print("uss_resunet30 rel_max errors:", {k: f"{v:.2e}" for k, v in errors.items()})
  assert all(errors[k] <= TOL[k] for k in TOL), errors
  assert np.all(logits[:, :, -1] == 0.0)  # the padded top bin, as in the reference


def _tiny_abstract(**kw):
  return nnx.eval_shape(lambda: ResUNet30(rngs=nnx.Rngs(0), **{**TINY, **kw}))


def test_mapping_layouts_on_a_tiny_model():
  """Each kind of entry lands where it should, in the Flax layout (numpy transposes as the reference)."""
  model = _tiny_abstract()
  shapes = uss.torch_shapes(model)
  sd = common.rule_state_dict(list(shapes.items()))
  uss.convert_resunet30(sd, model)
  np.testing.assert_array_equal(np.asarray(model.bn0.var.get_value()), sd["base.bn0.running_var"])
  np.testing.assert_array_equal(np.asarray(model.encoder_block2.conv_block1.conv1.kernel.get_value()),
                                sd["base.encoder_block2.conv_block1.conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(model.decoder_block2.conv1.kernel.get_value()),
                                sd["base.decoder_block2.conv1.weight"].transpose(2, 3, 0, 1))
  np.testing.assert_array_equal(np.asarray(model.decoder_block3.conv_block2.film2.beta.kernel.get_value()),
                                sd["film.decoder_block3->conv_block2->beta2.weight"].T)
  np.testing.assert_array_equal(np.asarray(model.conv_block7a.conv_block1.film1.beta.bias.get_value()),
                                sd["film.conv_block7a->conv_block1->beta1.bias"])
  assert model.encoder_block1.conv_block1.shortcut is None  # 4 -> 4: identity shortcut, as the reference
  assert "base.encoder_block1.conv_block1.shortcut.weight" not in shapes
  # The full-size key set equals the fixture manifest's (front end and counters aside).
  full = uss.torch_shapes(nnx.eval_shape(lambda: ResUNet30(rngs=nnx.Rngs(0))))
  manifest = {k: s for k, s, _, c in common.load_manifest(FIXTURE / "manifest.json")
              if c not in ("keep_frontend", "keep_num_batches_tracked")}
  assert full == manifest


def test_strictness():
  model = _tiny_abstract()
  sd = common.rule_state_dict(list(uss.torch_shapes(model).items()))
  # The unused decoder bn2 / ->beta2 entries are optional; the front end and counters are ignored.
  kept = {k: v for k, v in sd.items() if ".bn2." not in k or "conv_block2" in k or "decoder" not in k}
  kept = {k: v for k, v in kept.items() if not ("->beta2." in k and k.count("->") == 1)}
  assert len(kept) < len(sd)
  uss.convert_resunet30({**kept, "base.stft.conv_real.weight": np.zeros(3),
                         "base.encoder_block1.conv_block1.bn1.num_batches_tracked": np.int64(0)}, model)
  uss.convert_resunet30({f"ss_model.{k}": v for k, v in sd.items()}, model)  # the Lightning prefix is removed
  with pytest.raises(ValueError, match=r"unknown keys \['base.foo.weight'\]"):
    uss.convert_resunet30({**sd, "base.foo.weight": np.zeros(2)}, model)
  with pytest.raises(ValueError, match=r"missing keys \['base.after_conv.bias'\]"):
    uss.convert_resunet30({k: v for k, v in sd.items() if k != "base.after_conv.bias"}, model)
  with pytest.raises(ValueError, match="base.decoder_block1.bn2.weight: checkpoint"):
    uss.convert_resunet30({**sd, "base.decoder_block1.bn2.weight": np.zeros(3, np.float32)}, model)
  with pytest.raises(ValueError, match="film.encoder_block1->conv_block1->beta1.weight: checkpoint"):
    uss.convert_resunet30({**sd, "film.encoder_block1->conv_block1->beta1.weight": np.zeros((4, 7))}, model)
  # A checkpoint with a shortcut where the model has none (identity) is rejected.
  with pytest.raises(ValueError, match="unknown keys"):
    uss.convert_resunet30({**sd, "base.encoder_block1.conv_block1.shortcut.weight": np.zeros((4, 4, 1, 1))}, model)


def test_load_lightning_checkpoint(tmp_path):
  """A LitSeparation-style state_dict (ss_model / query_net / anchor_segment_detector) saved as .safetensors."""
  model = _tiny_abstract(input_channels=2, output_channels=2)
  sd = common.rule_state_dict(list(uss.torch_shapes(model).items()))
  cnn14 = {"conv_block1.conv1.weight": np.ones((2, 1, 3, 3), np.float32), "fc1.bias": np.arange(3, dtype=np.float32),
           "spectrogram_extractor.stft.conv_real.weight": np.zeros((3, 1, 4), np.float32)}
  lightning = {f"state_dict.ss_model.{k}": v for k, v in sd.items()}
  lightning.update({f"state_dict.query_net.base.{k}": v for k, v in cnn14.items()})
  lightning["state_dict.query_net.fc1.weight"] = np.full((2, 3), 2.0, np.float32)
  lightning["state_dict.anchor_segment_detector.anchor_segment_scorer.smooth_filter"] = np.ones((1, 1, 5), np.float32)
  path = tmp_path / "uss.safetensors"
  common.write_safetensors(path, lightning)
  ckpt = uss.load_uss_checkpoint(path, hop_length=TINY["hop_length"])
  m = ckpt.model
  assert (m.input_channels, m.output_channels, m.condition_size, m.channels, m.n_fft, m.hop_length) == (
      2, 2, TINY["condition_size"], TINY["channels"], TINY["n_fft"], TINY["hop_length"])
  np.testing.assert_array_equal(np.asarray(m.after_conv.kernel.get_value()),
                                sd["base.after_conv.weight"].transpose(2, 3, 1, 0))
  assert sorted(ckpt.query_net_base) == sorted(cnn14)
  np.testing.assert_array_equal(ckpt.query_net_base["fc1.bias"], cnn14["fc1.bias"])
  assert list(ckpt.query_net_adaptor) == ["fc1.weight"]
  assert list(ckpt.other) == ["anchor_segment_detector"]
  assert m.bn0.use_running_average and m.decoder_block1.conv_block2.bn2.use_running_average  # eval mode
  leaves = jax.tree.leaves(nnx.state(m))
  assert all(isinstance(v, jax.Array) for v in leaves)  # every variable concrete (built abstractly, then filled)
  with pytest.raises(ValueError, match="no 'ss_model"):
    common.write_safetensors(tmp_path / "q.safetensors", {"state_dict.query_net.fc1.bias": np.zeros(2, np.float32)})
    uss.load_uss_checkpoint(tmp_path / "q.safetensors")
