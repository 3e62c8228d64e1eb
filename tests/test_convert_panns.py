"""PANNs converter and shared converter helpers against the PyTorch parity fixtures and numpy references.

Fixtures (tests/fixtures/parity/README.md): the reference PANNs models got every state_dict entry from a
deterministic weight rule and ran in eval mode, float32, on 3 x 10 s at 32 kHz. Here the rule state_dict is rebuilt
from manifest.json with numpy (``common.rule_state_dict``), converted, and the Flax model runs on inputs.npz.
Pass threshold (README "Tolerance guidance"): max|y - ref| / max|ref| <= 2e-5; log-mel within 1e-2 dB.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import FIXTURES
from uss_jax.convert import common, panns
from uss_jax.models.cnn14 import Cnn14

PARITY = FIXTURES / "parity"
REL_TOL = 2e-5


def _rel(y, ref):
  y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
  assert y.shape == ref.shape, (y.shape, ref.shape)
  return float(np.abs(y - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="session")
def rule_sd():
  """The cnn14 rule state_dict (Cnn14_DecisionLevelMax has the same keys, shapes and hence values)."""
  return common.rule_state_dict(PARITY / "cnn14" / "manifest.json")


def _full_model(head, rule_sd, frontend=None):
  model = nnx.eval_shape(lambda: Cnn14(head=head, rngs=nnx.Rngs(0)))  # abstract: the converter fills everything
  panns.convert_cnn14(rule_sd, model)
  model.set_frontend(frontend)
  model.eval()
  return model


def test_rule_state_dict_matches_weight_checks(rule_sd):
  checks = json.loads((PARITY / "cnn14" / "weight_checks.json").read_text())
  manifest = common.load_manifest(PARITY / "cnn14" / "manifest.json")
  assert list(rule_sd) == [row[0] for row in manifest]  # state_dict order
  assert all(rule_sd[k].shape == s and str(rule_sd[k].dtype) == dt for k, s, dt, _ in manifest)
  assert len(checks) == len([row for row in manifest if row[3] != "keep_num_batches_tracked"]) == 71
  for key, check in checks.items():
    if check["category"].startswith("keep_"):
      continue
    value = rule_sd[key].astype(np.float64)
    assert value.sum() == check["sum"] and np.abs(value).sum() == check["sum_abs"], key  # bit-exact
    assert value.ravel()[:3].tolist() == check["first"], key
  assert (json.loads((PARITY / "cnn14" / "manifest.json").read_text())
          == json.loads((PARITY / "cnn14_decisionlevelmax" / "manifest.json").read_text()))
  with pytest.raises(ValueError, match="manifest says"):
    common.rule_state_dict([("fc1.weight", (4, 3), "float32", "bias")])


@pytest.mark.parametrize("head,fixture", [("clip", "cnn14"), ("decision_max", "cnn14_decisionlevelmax")])
def test_parity_with_pytorch_reference(head, fixture, rule_sd):
  """Full-size Cnn14 / Cnn14_DecisionLevelMax, one forward each on the fixture's 3 x 10 s waveforms."""
  inputs, ref = np.load(PARITY / fixture / "inputs.npz"), np.load(PARITY / fixture / "outputs.npz")
  model = _full_model(head, rule_sd, frontend="panns")
  with jax.default_matmul_precision("highest"):
    out = nnx.jit(lambda m, w: m(w))(model, jnp.asarray(inputs["waveform"]))
  out = jax.tree.map(np.asarray, out)
  # The front end: the reference logmel is (B, 1, frames, mels) in dB.
  logmel_err = float(np.abs(out["logmel"] - ref["logmel"][:, 0]).max())
  assert logmel_err <= 1e-2, logmel_err
  errors = {k: _rel(out[k], ref[k]) for k in ref.files if k != "logmel"}
  if head == "clip":
    # The clip model's segment path is the DecisionLevelMax head on the same (identical-rule) weights.
    dlm = np.load(PARITY / "cnn14_decisionlevelmax" / "outputs.npz")
    errors.update({f"dlm_{k}": _rel(out[k], dlm[k]) for k in ("framewise_output", "segmentwise_logits")})
  print(f"{fixture}: logmel max abs err {logmel_err:.2e} dB; rel_max errors", errors)
  assert max(errors.values()) <= REL_TOL, errors


def test_network_parity_from_reference_logmel(rule_sd):
  """The network alone on the reference log-mel (front-end differences excluded): Cnn14_DecisionLevelMax outputs."""
  ref = np.load(PARITY / "cnn14_decisionlevelmax" / "outputs.npz")
  model = _full_model("decision_max", rule_sd)
  with jax.default_matmul_precision("highest"):
    out = nnx.jit(lambda m, x: m.from_logmel(x))(model, jnp.asarray(ref["logmel"][:, 0]))
  errors = {k: _rel(out[k], ref[k]) for k in ("framewise_output", "clipwise_output", "segmentwise_logits")}
  print("cnn14_decisionlevelmax from reference logmel: rel_max errors", errors)
  assert max(errors.values()) <= REL_TOL, errors


# ---------------------------------------------------------------------------------------------------------------------
# Strictness, checkpoint files, layout helpers (tiny sizes)
# ---------------------------------------------------------------------------------------------------------------------

TINY = dict(channels=(4, 6, 8), embedding_dim=7, mel_bins=16)


def _tiny_sd(num_classes=5):
  model = nnx.eval_shape(lambda: Cnn14(num_classes, rngs=nnx.Rngs(0), **TINY))  # filled by the converter
  sd = common.rule_state_dict(list(panns.torch_shapes(model).items()))
  # What a real checkpoint also holds: BN counters and the fixed front-end kernels (all ignored by the converter).
  sd.update({"bn0.num_batches_tracked": np.zeros((), np.int64),
             "spectrogram_extractor.stft.conv_real.weight": np.ones((9, 1, 16), np.float32),
             "logmel_extractor.melW": np.ones((9, 16), np.float32)})
  return model, sd


def test_convert_is_strict_and_exact():
  model, sd = _tiny_sd()
  panns.convert_cnn14(sd, model)
  np.testing.assert_array_equal(model.conv_block2.conv1.kernel[...],
                                sd["conv_block2.conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(model.fc_audioset.kernel[...], sd["fc_audioset.weight"].T)
  np.testing.assert_array_equal(model.conv_block3.bn2.var[...], sd["conv_block3.bn2.running_var"])
  np.testing.assert_array_equal(model.bn0.scale[...], sd["bn0.weight"])
  # DataParallel prefix is accepted.
  panns.convert_cnn14({f"module.{k}": v for k, v in sd.items()}, model)
  with pytest.raises(ValueError, match=r"unknown keys \['fc2.weight'\]"):
    panns.convert_cnn14({**sd, "fc2.weight": np.zeros((2, 2), np.float32)}, model)
  with pytest.raises(ValueError, match=r"missing keys \['conv_block2.bn1.running_mean'\]"):
    panns.convert_cnn14({k: v for k, v in sd.items() if k != "conv_block2.bn1.running_mean"}, model)
  with pytest.raises(ValueError, match="shape mismatches.*fc1.weight"):
    panns.convert_cnn14({**sd, "fc1.weight": sd["fc1.weight"].T}, model)
  wrong_width = nnx.eval_shape(lambda: Cnn14(6, rngs=nnx.Rngs(0), **TINY))
  with pytest.raises(ValueError, match="fc_audioset"):
    panns.convert_cnn14(sd, wrong_width)


def test_load_checkpoint_from_npz_and_safetensors(tmp_path):
  model, sd = _tiny_sd()
  panns.convert_cnn14(sd, model)
  model.eval()
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 40, 16)) * 10, jnp.float32)
  want = np.asarray(model.from_logmel(x)["logits"])
  # A .npz copy of {'model': state_dict} flattened with the 'model.' prefix, and a bare safetensors state_dict.
  np.savez(tmp_path / "ckpt.npz", **{f"model.{k}": v for k, v in sd.items()}, **{"iteration": np.int64(3)})
  common.write_safetensors(tmp_path / "ckpt.safetensors", sd)
  for name, head in (("ckpt.npz", "clip"), ("ckpt.safetensors", "decision_max")):
    loaded = panns.load_cnn14_checkpoint(tmp_path / name, head=head)
    assert (loaded.channels, loaded.embedding_dim, loaded.num_classes, loaded.mel_bins) == ((4, 6, 8), 7, 5, 16)
    assert loaded.deterministic and loaded.head == head
    if head == "clip":
      np.testing.assert_array_equal(loaded.from_logmel(x)["logits"], want)
    else:
      np.testing.assert_array_equal(loaded.from_logmel(x)["segmentwise_logits"],
                                    model.from_logmel(x)["segmentwise_logits"])
  # Into an existing model, with a front end attached on the way.
  target = Cnn14(5, rngs=nnx.Rngs(1), **TINY)
  panns.load_cnn14_checkpoint(tmp_path / "ckpt.npz", target)
  np.testing.assert_array_equal(target.from_logmel(x)["logits"], want)


def test_torch_checkpoint_needs_torch(tmp_path):
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    pytest.skip("torch is installed")
  except ImportError:
    pass
  path = tmp_path / "Cnn14_mAP=0.431.pth"
  path.write_bytes(b"not read")
  with pytest.raises(ImportError, match="safetensors or .npz"):
    panns.load_cnn14_checkpoint(path)


def test_safetensors_reader_follows_the_format(tmp_path):
  # Hand-built per the format: u64 LE header size, JSON header (offsets relative to the data), raw LE bytes.
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  b = np.array([1.5, -2.0], dtype=np.float32)
  bf16 = (b.view(np.uint32) >> 16).astype("<u2")  # exact in bf16
  header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
            "b": {"dtype": "BF16", "shape": [2], "data_offsets": [24, 28]},
            "__metadata__": {"format": "pt"}}
  blob = json.dumps(header).encode()
  path = tmp_path / "x.safetensors"
  path.write_bytes(len(blob).to_bytes(8, "little") + blob + a.astype("<f4").tobytes() + bf16.tobytes())
  got = common.read_safetensors(path)
  np.testing.assert_array_equal(got["a"], a)
  np.testing.assert_array_equal(got["b"], b)
  assert set(got) == {"a", "b"}
  path.write_bytes(len(blob).to_bytes(8, "little") + blob + a.astype("<f4").tobytes())  # body too short
  with pytest.raises(ValueError, match="outside"):
    common.read_safetensors(path)


def _np_conv2d_nchw(x, w, padding):
  """PyTorch Conv2d (cross-correlation), x (N, C, H, W), w (O, C, kh, kw), stride 1."""
  x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  _, _, kh, kw = w.shape
  h, wd = x.shape[2] - kh + 1, x.shape[3] - kw + 1
  return sum(np.einsum("nchw,oc->nohw", x[:, :, a:a + h, b:b + wd], w[:, :, a, b]) for a in range(kh)
             for b in range(kw))


def _np_conv_transpose2d_nchw(x, w, stride, padding, output_padding):
  """PyTorch ConvTranspose2d by its definition: scatter-add x[i, j] * W[:, :, a, b] to (i s + a, j s + b)."""
  n, _, h, wd = x.shape
  _, o, kh, kw = w.shape
  y = np.zeros((n, o, (h - 1) * stride + kh + output_padding, (wd - 1) * stride + kw + output_padding))
  for i in range(h):
    for j in range(wd):
      y[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += np.einsum("nc,cokl->nokl", x[:, :, i, j], w)
  return y[:, :, padding:y.shape[2] - padding, padding:y.shape[3] - padding]


def _abstract(make):
  """A layer built with nnx.eval_shape (no init compiled); its kernel is set below."""
  return nnx.eval_shape(make)


def test_layout_helpers_reproduce_pytorch_layers():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 7, 6))
  nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1), jnp.float32)
  nchw = lambda a: np.asarray(a, np.float64).transpose(0, 3, 1, 2)
  # Conv2d (out, in, kh, kw), padding 1.
  w = rng.standard_normal((5, 3, 3, 2))
  conv = _abstract(lambda: nnx.Conv(3, 5, (3, 2), padding=((1, 1), (1, 1)), use_bias=False, rngs=nnx.Rngs(0)))
  conv.kernel.set_value(jnp.asarray(common.conv2d_kernel(w.astype(np.float32))))
  np.testing.assert_allclose(nchw(conv(nhwc(x))), _np_conv2d_nchw(x, w, 1), rtol=1e-5, atol=1e-5)
  # Conv1d (out, in, k) as the 2-D case with width 1.
  w1 = rng.standard_normal((5, 3, 3))
  x1 = rng.standard_normal((2, 3, 9))
  conv1 = _abstract(lambda: nnx.Conv(3, 5, (3,), padding="VALID", use_bias=False, rngs=nnx.Rngs(0)))
  conv1.kernel.set_value(jnp.asarray(common.conv1d_kernel(w1.astype(np.float32))))
  y1 = np.asarray(conv1(jnp.asarray(x1.transpose(0, 2, 1), jnp.float32))).transpose(0, 2, 1)
  np.testing.assert_allclose(y1, _np_conv2d_nchw(x1[..., None], w1[..., None], 0)[..., 0], rtol=1e-5, atol=1e-5)
  # Linear (out, in).
  wl = rng.standard_normal((4, 6))
  lin = _abstract(lambda: nnx.Linear(6, 4, use_bias=False, rngs=nnx.Rngs(0)))
  lin.kernel.set_value(jnp.asarray(common.linear_kernel(wl.astype(np.float32))))
  xl = rng.standard_normal((3, 6))
  np.testing.assert_allclose(lin(jnp.asarray(xl, jnp.float32)), xl @ wl.T, rtol=1e-5, atol=1e-5)
  # ConvTranspose2d (in, out, kh, kw): kernel = stride (USS decoders) and an overlapping padded case.
  for k, s, p, op in ((2, 2, 0, 0), (3, 2, 1, 1), (1, 2, 0, 0)):
    wt = rng.standard_normal((3, 4, k, k))
    pad = common.conv_transpose_padding((k, k), (p, p), (op, op))
    ct = _abstract(lambda: nnx.ConvTranspose(3, 4, (k, k), strides=(s, s), padding=pad, use_bias=False,
                                             transpose_kernel=False, rngs=nnx.Rngs(0)))
    ct.kernel.set_value(jnp.asarray(common.conv_transpose2d_kernel(wt.astype(np.float32))))
    np.testing.assert_allclose(nchw(ct(nhwc(x))), _np_conv_transpose2d_nchw(x, wt, s, p, op), rtol=1e-5, atol=1e-5,
                               err_msg=str((k, s, p, op)))
  # ConvTranspose1d (in, out, k) as the 2-D case with width 1.
  wt1 = rng.standard_normal((3, 4, 3))
  pad1 = common.conv_transpose_padding((3,), (1,), (0,))
  ct1 = _abstract(lambda: nnx.ConvTranspose(3, 4, (3,), strides=(2,), padding=pad1, use_bias=False,
                                            transpose_kernel=False, rngs=nnx.Rngs(0)))
  ct1.kernel.set_value(jnp.asarray(common.conv_transpose1d_kernel(wt1.astype(np.float32))))
  y = np.asarray(ct1(jnp.asarray(x1.transpose(0, 2, 1), jnp.float32))).transpose(0, 2, 1)
  want = _np_conv_transpose2d_nchw(x1[..., None], wt1[..., None], 2, 0, 0)[:, :, 1:-1, 0]  # padding 1 in time only
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
