"""HTS-AT: layout rules, the bicubic stretch, output relations, any-length inputs, the config builder.

Parity of the whole forward with the PyTorch reference (as a numpy transcription) is in tests/test_convert_clap.py.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spine_utils import REPO
from test_convert_clap import np_bicubic_time
from uss_jax.models import htsat

sys.path.insert(0, str(REPO))
from configs import sed_htsat  # noqa: E402  pylint: disable=wrong-import-position


def _tiny(**kwargs):
  args = dict(mel_bins=16, freq_ratio=2, target_frames=64, patch_size=4, embed_dim=8, depths=(2, 2),
              num_heads=(2, 4), window_size=4, drop_path=0.0)
  args.update(kwargs)
  return htsat.HTSAT(5, rngs=nnx.Rngs(0), **args)


@nnx.jit
def _run(model, logmel):
  return model.from_logmel(logmel)


@pytest.fixture(scope="session")
def tiny_model():
  model = _tiny()
  model.eval()
  return model


def test_bicubic_resize_matches_pytorch_rule():
  rng = np.random.default_rng(0)
  for n_in, n_out in ((1001, 1024), (59, 64), (5, 13), (7, 7), (1, 4)):
    x = rng.standard_normal((1, 1, n_in, 3))
    want = np_bicubic_time(x, n_out)[0, 0]
    m = htsat.bicubic_resize_matrix(n_in, n_out)
    np.testing.assert_allclose(m @ x[0, 0], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)  # cubic convolution keeps constants
    if n_in > 1:  # align_corners: the end samples are kept
      np.testing.assert_allclose((m @ x[0, 0])[[0, -1]], x[0, 0][[0, -1]], atol=1e-12)
  np.testing.assert_array_equal(htsat.bicubic_resize_matrix(6, 6), np.eye(6))


def test_window_rule_and_relative_position_index():
  # Swin: a stage whose smaller side is <= the window takes that side as window and is not shifted.
  assert htsat.stage_windows((64, 64), 8, (2, 2, 6, 2)) == [(8, 4), (8, 4), (8, 4), (8, 0)]
  assert htsat.stage_windows((16, 8), 4, (2, 1, 1)) == [(4, 2), (4, 0), (2, 0)]
  idx = htsat.relative_position_index(3)
  coords = [(r, c) for r in range(3) for c in range(3)]
  for i, (ri, ci) in enumerate(coords):
    for j, (rj, cj) in enumerate(coords):
      assert idx[i, j] == (ri - rj + 2) * 5 + (ci - cj + 2)


def test_outputs_are_consistent_and_eval_is_deterministic(tiny_model):
  model = tiny_model
  logmel = jnp.asarray(np.random.default_rng(1).standard_normal((2, 50, 16)) * 10 - 40, jnp.float32)
  out = jax.tree.map(np.asarray, _run(model, logmel))
  seg = out["segmentwise_logits"].astype(np.float64)
  assert seg.shape == (2, 8, 5) and out["tokens"].shape == (2, 8, 2, 16)
  np.testing.assert_allclose(out["logits"], seg.mean(1), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out["clipwise_output"], 1 / (1 + np.exp(-seg.mean(1))), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(out["framewise_output"], np.repeat(1 / (1 + np.exp(-seg)), 8, axis=1), rtol=1e-6,
                             atol=1e-7)
  np.testing.assert_allclose(out["embedding"], out["tokens"].astype(np.float64).mean((1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out["logits"], np.asarray(_run(model, logmel)["logits"]))
  # The token-semantic head: a (3 time x c freq) convolution over the token map, zero-padded in time.
  tok = out["tokens"].astype(np.float64)
  kernel = np.asarray(model.tscam_conv.kernel[...], np.float64)  # (3, c, C, K)
  padded = np.pad(tok, ((0, 0), (1, 1), (0, 0), (0, 0)))
  want = np.stack([np.einsum("btfc,tfck->bk", padded[:, t:t + 3], kernel) for t in range(8)], 1)
  np.testing.assert_allclose(seg, want + np.asarray(model.tscam_conv.bias[...]), rtol=1e-5, atol=1e-5)


def test_train_mode_uses_spec_augment_and_rngs(tiny_model):
  model = tiny_model
  logmel = jnp.asarray(np.random.default_rng(2).standard_normal((2, 64, 16)) * 10 - 40, jnp.float32)
  ref = np.asarray(_run(model, logmel)["logits"])
  assert model.spec_augment is htsat.cnn14.panns_spec_augment
  model.train()
  try:
    train = nnx.jit(lambda m, x, k: m.from_logmel(x, rngs=nnx.Rngs(default=k))["logits"])
    a, b = np.asarray(train(model, logmel, jax.random.key(0))), np.asarray(train(model, logmel, jax.random.key(1)))
    assert not np.allclose(a, b) and not np.allclose(a, ref)
    with pytest.raises(ValueError, match="rngs"):
      model.from_logmel(logmel)
  finally:
    model.eval()


def test_any_length_inputs(tiny_model):
  model = tiny_model
  assert model.frame_multiple == 64 and model.frames_per_token == 8
  long = jnp.asarray(np.random.default_rng(3).standard_normal((1, 128, 16)), jnp.float32)
  out = _run(model, long)
  assert out["tokens"].shape == (1, 16, 2, 16) and out["framewise_output"].shape == (1, 128, 5)
  assert model.token_grid(128) == (16, 2) and model.token_grid(40) == (8, 2)
  seg = np.asarray(out["segmentwise_logits"], np.float64)
  np.testing.assert_allclose(np.asarray(out["logits"]), seg.mean(1), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="multiple of 64"):
    model.from_logmel(jnp.zeros((1, 96, 16)))
  with pytest.raises(ValueError, match="16"):
    model.from_logmel(jnp.zeros((1, 64, 12)))
  with pytest.raises(ValueError, match="not divisible"):
    _tiny(target_frames=48)


def test_build_from_config_with_logical_axis_names():
  c = sed_htsat.get_config("tiny")
  model = nnx.eval_shape(lambda: htsat.build_htsat(c, 7, nnx.Rngs(0)))
  assert (model.mel_bins, model.num_classes, model.num_features, model.freq_ratio) == (32, 7, 32, 2)
  assert model.token_grid(128) == (8, 2) and model.frontend.sample_rate == c.data.sample_rate
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names = var.get_metadata().get("out_sharding") or var.get_metadata().get("sharding_names")
    assert names is not None and len(names) == var.ndim, (path, names)
  qkv = model.layers[0].blocks[0].attn.qkv.kernel
  assert tuple(qkv.get_metadata()["out_sharding"]) == ("embed", "qkv", "heads", "kv")  # whole heads on 'tensor'
  assert tuple(model.tscam_conv.kernel.get_metadata()["out_sharding"]) == (None, None, "conv_in", "conv_out")
  smoke = nnx.eval_shape(lambda: htsat.build_htsat(sed_htsat.get_config("smoke"), 25, nnx.Rngs(0)))
  assert smoke.image_size == (128, 128) and smoke.token_grid(201) == (8, 2) and smoke.num_features == 256
  full = nnx.eval_shape(lambda: htsat.build_htsat(sed_htsat.get_config(""), 527, nnx.Rngs(0)))
  assert full.image_size == (256, 256) and full.token_grid(1001) == (32, 2) and full.frontend.hop_length == 320
  bad = sed_htsat.get_config("tiny")
  bad.frontend.sample_rate = 32000
  with pytest.raises(ValueError, match="sample_rate"):
    htsat.build_htsat(bad, 7, nnx.Rngs(0))
  bad = sed_htsat.get_config("tiny")
  bad.model.size = "huge"
  with pytest.raises(ValueError, match="unknown HTS-AT size"):
    htsat.build_htsat(bad, 7, nnx.Rngs(0))
