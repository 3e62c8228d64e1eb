"""AudioMAE converter against the PyTorch parity fixture (fine-tuning ViT-B/16, global pool, 527 classes).

Fixture (tests/fixtures/parity/README.md, "audiomae_vit_base_ft"): AudioMAE ``models_vit.vit_base_patch16`` with
``PatchEmbed_new(stride 16)``, every state_dict entry from the deterministic weight rule, eval mode, float32, input
``fbank`` (2, 1, 1024, 128) of standard normals. Here the rule state_dict is rebuilt with numpy
(``common.rule_state_dict``), converted, and the Flax model runs once on the input.
Pass threshold (README "Tolerance guidance"): max|y - ref| / max|ref| <= 2e-5 on every output.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import FIXTURES
from uss_jax.convert import audiomae, common
from uss_jax.models import vit

FIXTURE = FIXTURES / "parity" / "audiomae_vit_base_ft"
REL_TOL = 2e-5


def _rel(y, ref):
  y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
  assert y.shape == ref.shape, (y.shape, ref.shape)
  return float(np.abs(y - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="session")
def rule_sd():
  return common.rule_state_dict(FIXTURE / "manifest.json")


@pytest.fixture(scope="session")
def parity_outputs(rule_sd):
  """One full-size forward: the fixture's exact model built abstractly, filled by the converter."""
  model = nnx.eval_shape(lambda: vit.build_vit("base", num_classes=527, drop_path=0.1, global_pool=True,
                                               pos_embed="table", rngs=nnx.Rngs(0)))
  report = audiomae.convert_audiomae(rule_sd, model)
  model.eval()
  fbank = np.load(FIXTURE / "inputs.npz")["fbank"][:, 0]  # (B, 1, T, F) -> (B, T, F)
  with jax.default_matmul_precision("highest"):
    out = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(fbank))
  return report, jax.tree.map(np.asarray, out)


def test_rule_state_dict_and_key_map_match_the_fixture(rule_sd):
  checks = json.loads((FIXTURE / "weight_checks.json").read_text())
  manifest = common.load_manifest(FIXTURE / "manifest.json")
  assert len(rule_sd) == len(checks) == 152
  for key, check in checks.items():
    value = rule_sd[key].astype(np.float64)
    assert value.sum() == check["sum"] and np.abs(value).sum() == check["sum_abs"], key  # bit-exact
    assert value.ravel()[:3].tolist() == check["first"], key
  # Our key map for the fixture's model is exactly the reference state_dict (names and PyTorch shapes).
  model = nnx.eval_shape(lambda: vit.build_vit("base", pos_embed="table", rngs=nnx.Rngs(0)))
  assert audiomae.torch_shapes(model) == {k: s for k, s, _, _ in manifest}


def test_parity_with_pytorch_reference(parity_outputs):
  report, out = parity_outputs
  assert len(report["loaded"]) == 152 and not (report["skipped"] or report["kept"] or report["ignored_decoder"])
  ref = np.load(FIXTURE / "outputs.npz")
  assert set(ref.files) == {"logits", "pooled", "tokens", "patch_embed_out"}
  errors = {k: _rel(out[k], ref[k]) for k in ref.files}
  print("audiomae_vit_base_ft rel_max errors", errors)
  assert max(errors.values()) <= REL_TOL, errors


# ---------------------------------------------------------------------------------------------------------------------
# Strictness, pretraining checkpoints, files (tiny sizes).
# ---------------------------------------------------------------------------------------------------------------------

TINY = dict(img_size=(64, 32), patch_size=16, embed_dim=32, depth=2, num_heads=4, pos_embed="table")


def _tiny(**kwargs):
  build = lambda: vit.VisionTransformer(rngs=nnx.Rngs(0), **{**TINY, "num_classes": 5, **kwargs})  # noqa: E731
  model = nnx.eval_shape(build)
  return model, common.rule_state_dict(list(audiomae.torch_shapes(model).items()))


@nnx.jit
def _run(model, x):
  return model(x)


def _fbank(frames=64):
  return jnp.asarray(np.random.default_rng(0).standard_normal((2, frames, 32)), jnp.float32)


def test_convert_is_strict_and_exact():
  model, sd = _tiny()
  audiomae.convert_audiomae(sd, model)
  np.testing.assert_array_equal(model.patch_embed.proj.kernel[...],
                                sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
  qkv = model.blocks[1].attn.qkv.kernel[...]  # (D, 3, heads, head_dim): weight.T with a head axis
  np.testing.assert_array_equal(qkv.reshape(qkv.shape[0], -1), sd["blocks.1.attn.qkv.weight"].T)
  np.testing.assert_array_equal(model.blocks[0].norm2.scale[...], sd["blocks.0.norm2.weight"])
  np.testing.assert_array_equal(model.pos_embed[...], sd["pos_embed"])
  np.testing.assert_array_equal(model.head.kernel[...], sd["head.weight"].T)
  audiomae.convert_audiomae({f"module.{k}": v for k, v in sd.items()}, model)  # DDP prefix
  with pytest.raises(ValueError, match=r"unknown keys \['norm.weight'\]"):
    audiomae.convert_audiomae({**sd, "norm.weight": np.ones(32, np.float32)}, model)
  with pytest.raises(ValueError, match=r"missing keys \['blocks.1.mlp.fc2.bias'\]"):
    audiomae.convert_audiomae({k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.bias"}, model)
  with pytest.raises(ValueError, match="shape mismatches.*attn.proj.weight"):
    audiomae.convert_audiomae({**sd, "blocks.0.attn.proj.weight": np.zeros((32, 31), np.float32)}, model)
  generated, _ = _tiny(pos_embed="sincos")
  with pytest.raises(ValueError, match="pos_embed='table'"):
    audiomae.convert_audiomae(sd, generated)


def test_pretraining_checkpoint_encoder_and_finetune_start():
  """MAE pretraining keys: encoder + final ``norm`` + decoder (ignored); also the fine-tuning start (strict=False)."""
  encoder, sd = _tiny(global_pool=False, num_classes=0)
  assert "norm.weight" in sd and "fc_norm.weight" not in sd and "head.weight" not in sd
  decoder = {"mask_token": np.zeros((1, 1, 16), np.float32), "decoder_pos_embed": np.zeros((1, 9, 16), np.float32),
             "decoder_embed.weight": np.zeros((16, 32), np.float32), "decoder_pred.bias": np.zeros(256, np.float32)}
  report = audiomae.convert_audiomae({**sd, **decoder}, encoder)
  assert report["ignored_decoder"] == sorted(decoder) and len(report["loaded"]) == len(sd)
  np.testing.assert_array_equal(encoder.norm.scale[...], sd["norm.weight"])
  # Fine-tuning from it (AudioMAE main_finetune_as: load_state_dict(strict=False)): norm skipped, new head kept.
  finetune, own = _tiny(num_classes=7)
  audiomae.convert_audiomae(own, finetune)  # concrete values to keep (stand-ins for a fresh initialisation)
  head_before = np.asarray(finetune.head.kernel[...])
  report = audiomae.convert_audiomae({**sd, **decoder}, finetune, strict=False)
  assert report["skipped"] == ["norm.bias", "norm.weight"]
  assert report["kept"] == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
  np.testing.assert_array_equal(finetune.head.kernel[...], head_before)
  np.testing.assert_array_equal(finetune.blocks[1].mlp.fc1.kernel[...], sd["blocks.1.mlp.fc1.weight"].T)
  # The shared encoder weights give the same block outputs.
  encoder.eval()
  finetune.eval()
  x = _fbank()
  with jax.default_matmul_precision("highest"):
    np.testing.assert_array_equal(_run(encoder, x)["tokens"], _run(finetune, x)["tokens"])
  with pytest.raises(ValueError, match="shape mismatches.*head.weight"):
    audiomae.convert_audiomae({**sd, "head.weight": np.zeros((5, 32), np.float32), "head.bias": np.zeros(5)},
                              finetune, strict=False)


def test_load_checkpoint_from_npz_and_safetensors(tmp_path, rule_sd):
  model, sd = _tiny()
  audiomae.convert_audiomae(sd, model)
  model.eval()
  x = _fbank(80)
  want = np.asarray(_run(model, x)["logits"])
  np.savez(tmp_path / "ckpt.npz", **{f"model.{k}": v for k, v in sd.items()}, epoch=np.int64(3))
  common.write_safetensors(tmp_path / "ckpt.safetensors", {f"module.{k}": v for k, v in sd.items()})
  for name, key in (("ckpt.npz", "model"), ("ckpt.safetensors", None)):
    loaded = audiomae.load_audiomae_checkpoint(tmp_path / name, key=key, mel_bins=32, num_heads=4)
    assert loaded.deterministic and loaded.img_size == (64, 32) and loaded.grid == (4, 2)
    assert (loaded.embed_dim, len(loaded.blocks), loaded.num_classes, loaded.global_pool) == (32, 2, 5, True)
    np.testing.assert_array_equal(_run(loaded, x)["logits"], want)
  config = audiomae.infer_config(sd, mel_bins=32)
  assert config["num_heads"] == 1 and config["mlp_ratio"] == 4.0  # 32 // 64 -> 1: pass num_heads for odd widths
  base = audiomae.infer_config(rule_sd)
  assert {k: base[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "num_classes")} == {
      "img_size": (1024, 128), "patch_size": (16, 16), "embed_dim": 768, "depth": 12, "num_heads": 12,
      "num_classes": 527}


def test_torch_checkpoint_needs_torch(tmp_path):
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    pytest.skip("torch is installed")
  except ImportError:
    pass
  path = tmp_path / "finetuned.pth"
  path.write_bytes(b"not read")
  with pytest.raises(ImportError, match="safetensors or .npz"):
    audiomae.load_audiomae_checkpoint(path)
