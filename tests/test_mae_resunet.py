"""MAE-ResUNet (seed 000 Sec. III-B): A-MAE features beside the STFT magnitude, frozen and updated.

The pooling of the token grid to STFT frames is checked against a numpy transcription of the rule (module docstring
of uss_jax.models.mae_resunet); the updated mode's softmax layer sum against the encoder's own layer outputs; then
both recipes of configs/mae_resunet.py train 2 steps on the demo corpus from an AudioMAE-layout checkpoint file
(.npz, timm keys) and the run separates a file through ``uss-jax separate``'s library path, its A-MAE encoder equal
to the file (frozen) or moved by training (updated).
"""

import types

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from spine_utils import REPO
from uss_jax import inference
from uss_jax.models import mae_resunet, vit
from uss_jax.train import trainer

# No xdist group: each test trains its own run; the session's tagger run (the query net) is trained per worker.

ENCODER = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, img_size=(208, 128))


def _amae_file(path):
  """A tiny AudioMAE pretraining state_dict (timm keys, 'model.' prefix) with random weights, as .npz."""
  from uss_jax.convert import audiomae as conv  # pylint: disable=import-outside-toplevel
  ref = vit.VisionTransformer(**ENCODER, global_pool=False, num_classes=0, pos_embed="table", rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  sd = {k: (0.2 * rng.standard_normal(s)).astype(np.float32) for k, s in conv.torch_shapes(ref).items()}
  np.savez(path, **{f"model.{k}": v for k, v in sd.items()})
  return sd


def _model(mode, pooling="aligned", seconds=2.0):
  c = ml_collections.ConfigDict({"data": {"sample_rate": 16000}, "model": {"mae": {"mode": mode, "pooling": pooling}}})
  context = {"mae_encoder": {"size": "base", **ENCODER},
             "mae_fbank": {"sample_rate": 16000, "num_mel_bins": 128, "norm_stats": "audioset"}}
  unet_kw = dict(channels=(4, 8, 8), n_fft=320, hop_length=160, condition_size=6)
  return mae_resunet.build_mae_resunet(c, unet_kw, context, nnx.Rngs(0))


@pytest.mark.parametrize("pooling", ["aligned", "paper"])
def test_frame_features_follow_the_pooling_rule(pooling):
  model = _model("frozen", pooling)
  x = jnp.asarray(0.1 * np.random.default_rng(1).standard_normal((2, 32000)), jnp.float32)
  tokens, (t_tok, f_tok) = model.token_features(x)
  tokens = np.asarray(tokens)
  frames, hop_s = 201, 0.01
  got = np.asarray(model.frame_features(x, frames, hop_s))
  if pooling == "aligned":
    grid = tokens.reshape(2, t_tok, f_tok, -1)
    pooled = grid.mean(axis=2) + grid.max(axis=2)
    idx = [min(int(np.floor(j * hop_s / (16 * 0.01) + 1e-6)), t_tok - 1) for j in range(frames)]
    want = pooled[:, idx]
    assert t_tok == 13  # 198 fbank frames padded to 208 = 13 patches of 16
  else:
    assert tokens.shape[1] == 512  # the fbank padded to 1024 frames: 64 x 8 tokens
    win = tokens.reshape(2, 32, 16, -1)
    pooled = win.mean(axis=2) + win.max(axis=2)
    rep = np.repeat(pooled, 7, axis=1)  # 224 frames >= 201
    want = rep[:, :frames]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_updated_features_are_the_softmax_weighted_sum_of_all_layers():
  model = _model("updated")
  model.layer_logits.set_value(jnp.asarray([0.3, -1.0]))
  x = jnp.asarray(0.1 * np.random.default_rng(2).standard_normal((1, 32000)), jnp.float32)
  tokens, _ = model.token_features(x)
  layers = np.asarray(model.encoder(model._encoder_input(x), return_layers=True)["layers"])  # pylint: disable=protected-access
  w = np.exp([0.3, -1.0]) / np.exp([0.3, -1.0]).sum()
  np.testing.assert_allclose(np.asarray(tokens), np.einsum("l,lbnd->bnd", w, layers)[:, 1:], rtol=1e-5, atol=1e-6)


def _recipe(variant):
  import sys  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, str(REPO))
  from configs import mae_resunet as recipe  # pylint: disable=import-outside-toplevel
  return recipe.get_config(variant)


@pytest.mark.parametrize("mode", ["frozen", "updated"])
def test_trainable_parameters_of_each_mode(mode):
  """Frozen: the optimizer sees the U-Net (and feature BN) only; updated: the A-MAE layers and layer weights too,
  the encoder at optimizer.lr_multipliers' rate."""
  from uss_jax.tasks.separation import SeparationTask  # pylint: disable=import-outside-toplevel
  c = _recipe(f"{mode},tiny")
  trainable = SeparationTask.trainable.fget(types.SimpleNamespace(config=c))

  class Holder(nnx.Module):
    def __init__(self, m):
      self.separator = m

  paths = [tuple(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(Holder(_model(mode)), trainable))]
  assert any("unet" in p for p in paths)  # path components ("encoder" the A-MAE, not the U-Net's encoder_block*)
  assert any("encoder" in p for p in paths) == (mode == "updated")
  assert any("layer_logits" in p for p in paths) == (mode == "updated")
  assert (list(map(tuple, c.optimizer.get("lr_multipliers", None) or [])) == [("encoder", 0.1)]) == (mode == "updated")


def test_updated_recipe_trains_and_separates_from_an_audiomae_file(demo_tfds, tagger_workdir, tmp_path):
  mode = "updated"
  sd = _amae_file(tmp_path / "pretrained.npz")
  c = _recipe(f"{mode},tiny")
  c.data.tfds_dir, c.query.workdir = demo_tfds, tagger_workdir
  c.model.mae.checkpoint = str(tmp_path / "pretrained.npz")
  c.total_steps, c.eval_every, c.checkpoint_every = 2, 2, 2
  c.model.output_init = "reference"  # 'identity' zeroes after_conv: 2 steps would give no gradient upstream of it
  workdir = str(tmp_path / "run")
  result = trainer.train_and_evaluate(c, workdir)
  assert np.isfinite(result["eval"]["SDRi_oracle"])
  sep = inference.Separator.from_workdir(workdir)
  assert sep.info.name == "mae_resunet" and sep.step == 2
  kernel = np.asarray(sep.model.separator.encoder.blocks[1].mlp.fc1.kernel.get_value())
  assert not np.array_equal(kernel, sd["blocks.1.mlp.fc1.weight"].T)  # the A-MAE layers trained
  assert np.any(np.asarray(sep.model.separator.layer_logits.get_value()) != 0.0)  # and the softmax layer weights
  x = 0.1 * np.random.default_rng(3).standard_normal(3 * 16000).astype(np.float32)
  cond, _ = sep.condition(audio=x)
  y = sep.separate(x, 16000, cond)
  assert y.shape == x.shape and np.all(np.isfinite(y))
