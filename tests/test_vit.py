"""Audio ViT (AudioMAE encoder): tiny models against an independent numpy forward written from the timm / MAE sources.

The numpy reference works on the PyTorch-layout state_dict (``Linear`` (out, in), ``Conv2d`` (out, in, kh, kw)) and
follows timm 0.4.5 ``Block`` / AudioMAE ``models_vit.py`` literally (pre-LN, fused qkv, ``softmax(q k^T) * scale``,
erf GELU, LayerNorm eps 1e-6, mean pool over patch tokens + ``fc_norm``); weights come from the parity-fixture rule.
The full-size check against PyTorch is in test_convert_audiomae.py.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from conftest import FIXTURES
from uss_jax.convert import audiomae, common
from uss_jax.models import vit

TINY = dict(img_size=(64, 32), patch_size=16, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4.0)
GRID0 = (4, 2)  # (64 - 16) // 16 + 1, (32 - 16) // 16 + 1
TOL = 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# Independent numpy references.
# ---------------------------------------------------------------------------------------------------------------------


def mae_sincos_flexible(embed_dim, grid_size):
  """MAE util/pos_embed.py get_2d_sincos_pos_embed_flexible, re-derived: meshgrid with w first, h half from grid[0]."""
  def one_d(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  grid_h = np.arange(grid_size[0], dtype=np.float32)
  grid_w = np.arange(grid_size[1], dtype=np.float32)
  grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size[0], grid_size[1])
  return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


def np_layer_norm(x, w, b, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def np_linear(x, sd, name):
  return x @ sd[f"{name}.weight"].astype(np.float64).T + sd[f"{name}.bias"]


def np_block(x, sd, i, heads, scales=(1.0, 1.0)):
  """timm 0.4.5 Block.forward; ``scales`` multiply the two residual branches (drop path: 0 or 1 / keep)."""
  p = f"blocks.{i}"
  b, n, c = x.shape
  qkv = np_linear(np_layer_norm(x, sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"]), sd, f"{p}.attn.qkv")
  qkv = qkv.reshape(b, n, 3, heads, c // heads).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv[0], qkv[1], qkv[2]
  attn = q @ k.transpose(0, 1, 3, 2) * (c // heads) ** -0.5
  attn = np.exp(attn - attn.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  a = np_linear((attn @ v).transpose(0, 2, 1, 3).reshape(b, n, c), sd, f"{p}.attn.proj")
  x = x + scales[0] * a
  h = np_linear(np_layer_norm(x, sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"]), sd, f"{p}.mlp.fc1")
  h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
  return x + scales[1] * np_linear(h, sd, f"{p}.mlp.fc2")


def np_patch_embed(fbank, sd, patch=16):
  """Conv2d(1, D, 16, stride 16) on (B, 1, T, F), then flatten(2).transpose(1, 2): token t * F' + f."""
  w = sd["patch_embed.proj.weight"].astype(np.float64)  # (D, 1, p, p)
  b, frames, bins = fbank.shape
  t, f = (frames - patch) // patch + 1, (bins - patch) // patch + 1
  x = fbank[:, :t * patch, :f * patch].astype(np.float64).reshape(b, t, patch, f, patch)
  y = np.einsum("btifj,dij->btfd", x, w[:, 0]) + sd["patch_embed.proj.bias"]
  return y.reshape(b, t * f, -1)


def np_pos_rows(table, grid0, t):
  """Crop (t <= T0) or np.interp along time with half-pixel source coordinates (t > T0); cls row kept."""
  t0, f0 = grid0
  rows = table[0, 1:].reshape(t0, f0, -1).astype(np.float64)
  if t <= t0:
    rows = rows[:t]
  else:
    src = (np.arange(t) + 0.5) * t0 / t - 0.5
    rows = np.stack([[np.interp(src, np.arange(t0), rows[:, f, d]) for d in range(rows.shape[2])]
                     for f in range(f0)]).transpose(2, 0, 1)
  return np.concatenate([table[0, :1], rows.reshape(-1, rows.shape[-1])])


def np_vit(sd, fbank, heads, *, global_pool=True, ids_keep=None, final_norm=False):
  """AudioMAE forward_features (+ head), numpy float64; ``ids_keep`` gathers tokens after the position embedding."""
  patches = np_patch_embed(fbank, sd)
  t = (fbank.shape[1] - 16) // 16 + 1
  pos = np_pos_rows(sd["pos_embed"], GRID0, t)
  x = patches + pos[1:]
  if ids_keep is not None:
    x = np.take_along_axis(x, np.asarray(ids_keep)[:, :, None], axis=1)
  cls = np.broadcast_to(sd["cls_token"] + pos[:1], (x.shape[0], 1, x.shape[2]))
  x = np.concatenate([cls, x], axis=1)
  for i in range(len({k.split(".")[1] for k in sd if k.startswith("blocks.")})):
    x = np_block(x, sd, i, heads)
  out = {"tokens": x, "patch_embed_out": patches}
  if global_pool:
    out["pooled"] = np_layer_norm(x[:, 1:].mean(1), sd["fc_norm.weight"], sd["fc_norm.bias"])
  else:
    out["normed_tokens"] = np_layer_norm(x, sd["norm.weight"], sd["norm.bias"])
    out["pooled"] = out["normed_tokens"][:, 0]
  if "head.weight" in sd:
    out["logits"] = np_linear(out["pooled"], sd, "head")
  return out


def _rel(y, ref):
  y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
  assert y.shape == ref.shape, (y.shape, ref.shape)
  return float(np.abs(y - ref).max() / np.abs(ref).max())


def _tiny(**kwargs):
  """A tiny ViT with rule weights (table position embedding), and its PyTorch-layout state_dict."""
  kwargs = {**TINY, "num_classes": 5, "pos_embed": "table", **kwargs}
  model = nnx.eval_shape(lambda: vit.VisionTransformer(rngs=nnx.Rngs(0), **kwargs))  # the converter fills it
  sd = common.rule_state_dict(list(audiomae.torch_shapes(model).items()))
  audiomae.convert_audiomae(sd, model)
  return model, sd


@nnx.jit(static_argnames=("return_layers",))
def _run(model, x, rngs=None, return_layers=False):
  return model(x, rngs=rngs, return_layers=return_layers)


@nnx.jit(static_argnames=("mask_ratio",))
def _encode(model, x, ids_keep=None, mask_ratio=None, rngs=None):
  return model.forward_encoder(x, ids_keep=ids_keep, mask_ratio=mask_ratio, rngs=rngs)


def _fbank(batch, frames, seed=0):
  return np.random.default_rng(seed).standard_normal((batch, frames, 32)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Position embedding.
# ---------------------------------------------------------------------------------------------------------------------


def test_sincos_matches_mae_formula_and_layouts():
  d = 768
  ours = vit.sincos_pos_embed_2d(d, (64, 8), cls_token=True)
  np.testing.assert_array_equal(ours[0], 0.0)
  # time_freq: MAE's flexible helper on the (time, freq) grid, as AudioMAE's PatchEmbed_new path builds it.
  np.testing.assert_allclose(ours[1:], mae_sincos_flexible(d, (64, 8)), rtol=0, atol=1e-7)
  # audiomae: the pretraining table, whose PatchEmbed_org.patch_hw is (freq, time) = (8, 64).
  swapped = vit.sincos_pos_embed_2d(d, (64, 8), layout="audiomae")
  np.testing.assert_allclose(swapped, mae_sincos_flexible(d, (8, 64)), rtol=0, atol=1e-7)
  assert np.abs(swapped - ours[1:]).max() > 0.5  # the two layouts really differ
  # Token t*8+f in the time_freq layout: first half encodes f, second half t (sin(0) = 0 for f = 0 / t = 0).
  t, f = 5, 3
  row = ours[1 + t * 8 + f]
  np.testing.assert_allclose(row[0], np.sin(f), atol=1e-7)
  np.testing.assert_allclose(row[d // 2], np.sin(t), atol=1e-7)
  # A shorter input's embedding is the prefix of the longer one's (positions do not depend on the length).
  np.testing.assert_array_equal(vit.sincos_pos_embed_2d(d, (20, 8)), ours[1:1 + 160])
  # The 'sincos' model kind generates exactly this for any grid.
  model = nnx.eval_shape(lambda: vit.VisionTransformer(**TINY, num_classes=0, rngs=nnx.Rngs(0)))
  np.testing.assert_array_equal(model.position_embedding((7, 2))[0],
                                vit.sincos_pos_embed_2d(32, (7, 2), cls_token=True))
  with pytest.raises(ValueError, match="multiple of 4|% 4"):
    vit.sincos_pos_embed_2d(30, (2, 2))


def test_table_kind_initialised_with_sincos_and_frequency_mismatch_raises():
  model = vit.VisionTransformer(**{**TINY, "depth": 0}, num_classes=0, pos_embed="table",
                                pos_embed_layout="audiomae", rngs=nnx.Rngs(0))
  np.testing.assert_allclose(model.pos_embed[...][0, 1:], mae_sincos_flexible(32, GRID0[::-1]), atol=1e-7)
  assert not isinstance(model.pos_embed, nnx.Param)  # fixed: the optimizer (wrt=nnx.Param) leaves it alone
  with pytest.raises(ValueError, match="frequency patches"):
    model(jnp.zeros((1, 64, 48)))


# ---------------------------------------------------------------------------------------------------------------------
# Forward against numpy.
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames,global_pool", [(64, True), (40, True), (100, False)])
def test_forward_matches_numpy_any_length(frames, global_pool):
  """64 frames: nominal grid; 40: 2 time patches (table cropped, 8 frames dropped); 100: 6 (table interpolated)."""
  model, sd = _tiny(global_pool=global_pool)
  model.eval()
  x = _fbank(2, frames)
  with jax.default_matmul_precision("highest"):
    out = _run(model, jnp.asarray(x), return_layers=True)
  ref = np_vit(sd, x, 4, global_pool=global_pool)
  keys = ["tokens", "patch_embed_out", "pooled", "logits"] + ([] if global_pool else ["normed_tokens"])
  errors = {k: _rel(out[k], ref[k]) for k in keys}
  assert max(errors.values()) <= TOL, errors
  np.testing.assert_array_equal(out["layers"][-1], out["tokens"])
  assert out["layers"].shape[0] == 2


def test_fused_attention_and_generated_sincos_under_jit():
  """``attention='dot_product_attention'`` equals the einsum path; ``'sincos'`` models (no table) jit at any length."""
  einsum, sd = _tiny(pos_embed="sincos")
  fused = nnx.eval_shape(lambda: vit.VisionTransformer(rngs=nnx.Rngs(0), **{
      **TINY, "num_classes": 5, "pos_embed": "sincos", "attention": "dot_product_attention"}))
  audiomae.convert_audiomae(sd, fused)
  assert "pos_embed" not in sd
  x = jnp.asarray(_fbank(2, 100))
  einsum.eval()
  fused.eval()
  with jax.default_matmul_precision("highest"):
    a, b = _run(einsum, x), _run(fused, x)
  assert _rel(b["tokens"], a["tokens"]) <= TOL
  # The generated embedding is what the model added: tokens before blocks = patches + pos (depth-0 model).
  flat, _ = _tiny(pos_embed="sincos", depth=0)
  flat.eval()
  out = _run(flat, x)
  pos = vit.sincos_pos_embed_2d(32, (6, 2), cls_token=True)
  np.testing.assert_allclose(out["tokens"][:, 1:], out["patch_embed_out"] + pos[1:], rtol=0, atol=1e-6)


def test_shorter_input_is_prefix_before_attention():
  """Without blocks, tokens of a 40-frame input equal the first 2 time rows of the 64-frame input's tokens."""
  model, _ = _tiny(depth=0)
  model.eval()
  x = _fbank(2, 64)
  full, short = _run(model, jnp.asarray(x))["tokens"], _run(model, jnp.asarray(x[:, :40]))["tokens"]
  np.testing.assert_array_equal(short, full[:, :1 + 2 * 2])


# ---------------------------------------------------------------------------------------------------------------------
# Masking.
# ---------------------------------------------------------------------------------------------------------------------


def test_num_kept_follows_mae():
  assert [vit.num_kept(512, r) for r in (0.8, 0.75, 0.6, 0.0)] == [102, 128, 204, 512]
  assert vit.num_kept(10, 0.9) == 1 and vit.num_kept(512, 0.9) == 51
  with pytest.raises(ValueError):
    vit.num_kept(512, 1.0)


def test_masking_from_noise_is_mae_random_masking():
  noise = np.random.default_rng(3).random((4, 512)).astype(np.float32)
  ids_keep, mask, ids_restore = jax.tree.map(np.asarray, vit.masking_from_noise(jnp.asarray(noise), 102))
  # MAE random_masking in numpy.
  shuffle = np.argsort(noise, axis=1)
  restore = np.argsort(shuffle, axis=1)
  ref_mask = np.take_along_axis(np.concatenate([np.zeros((4, 102)), np.ones((4, 410))], 1), restore, axis=1)
  np.testing.assert_array_equal(ids_keep, shuffle[:, :102])
  np.testing.assert_array_equal(ids_restore, restore)
  np.testing.assert_array_equal(mask, ref_mask)
  assert (mask.sum(1) == 410).all() and all(len(set(r)) == 102 for r in ids_keep)
  np.testing.assert_array_equal(np.take_along_axis(shuffle, ids_restore, axis=1), np.tile(np.arange(512), (4, 1)))


def test_random_masking_keeps_fixed_count_and_restore_unshuffles():
  ids_keep, mask, ids_restore = jax.tree.map(np.asarray, vit.random_masking(jax.random.key(0), 3, 512, 0.8))
  assert ids_keep.shape == (3, 102) and (mask.sum(1) == 512 - 102).all()
  tokens = np.tile(np.arange(512), (3, 1))
  for ids, m, r, tok in zip(ids_keep, mask, ids_restore, tokens):
    assert len(set(ids)) == 102 and (m[ids] == 0).all()
    # Decoder convention: concat(kept, mask tokens = -1) gathered with ids_restore is in token order.
    restored = np.concatenate([tok[ids], -np.ones(410, int)])[r]
    np.testing.assert_array_equal(restored, np.where(m == 1, -1, tok))
  # A caller-given index set (here sorted) obeys the same convention.
  given = np.sort(ids_keep, axis=1)
  m2, r2 = jax.tree.map(np.asarray, vit.masking_from_ids_keep(jnp.asarray(given), 512))
  np.testing.assert_array_equal(m2, mask)
  for ids, m, r, tok in zip(given, m2, r2, tokens):
    np.testing.assert_array_equal(np.concatenate([tok[ids], -np.ones(410, int)])[r], np.where(m == 1, -1, tok))


def test_forward_encoder_matches_numpy_on_kept_tokens():
  model, sd = _tiny(global_pool=False, num_classes=0, drop_path=0.0)
  model.eval()
  x = _fbank(3, 64, seed=1)
  rng = np.random.default_rng(5)
  ids_keep = np.stack([rng.permutation(8)[:3] for _ in range(3)])  # 3 of 8 tokens, shuffled order
  with jax.default_matmul_precision("highest"):
    latent, mask, ids_restore = _encode(model, jnp.asarray(x), ids_keep=jnp.asarray(ids_keep))
  ref = np_vit(sd, x, 4, global_pool=False, ids_keep=ids_keep)
  assert _rel(latent, ref["normed_tokens"]) <= TOL  # the MAE encoder ends with its norm
  np.testing.assert_array_equal(np.asarray(mask).sum(1), 5)
  # Random masking through the same entry point equals the index-set path on the ids it drew.
  with jax.default_matmul_precision("highest"):
    lat_r, mask_r, restore_r = _encode(model, jnp.asarray(x), mask_ratio=0.6, rngs=nnx.Rngs(masking=1))
    drawn = np.argsort(np.asarray(restore_r), axis=1)[:, :3]  # ids_shuffle[:, :keep]
    lat_i, mask_i, _ = _encode(model, jnp.asarray(x), ids_keep=jnp.asarray(drawn))
  assert lat_r.shape == (3, 1 + vit.num_kept(8, 0.6), 32)
  np.testing.assert_array_equal(mask_r, mask_i)
  np.testing.assert_allclose(lat_r, lat_i, rtol=0, atol=1e-6)
  with pytest.raises(ValueError, match="exactly one"):
    model.forward_encoder(jnp.asarray(x))
  with pytest.raises(ValueError, match="rngs"):
    model.forward_encoder(jnp.asarray(x), mask_ratio=0.5)


def test_train_mode_2d_masking_keeps_whole_rows_and_columns():
  """Fine-tuning masking (AudioMAE random_masking_2d) on a 100-frame input (6 x 2 grid), p_t = p_f = 0.5."""
  model, sd = _tiny(drop_path=0.0, mask_t_prob=0.5, mask_f_prob=0.5)
  model.train()
  x = _fbank(4, 100, seed=2)
  with jax.default_matmul_precision("highest"):
    out = _run(model, jnp.asarray(x), nnx.Rngs(masking=11))
  ids_keep = np.asarray(vit.random_masking_2d(nnx.Rngs(masking=11).masking(), 4, (6, 2), 0.5, 0.5))
  assert ids_keep.shape == (4, 3 * 1)
  for ids in ids_keep:  # a product set: 3 distinct time rows x 1 frequency column
    assert len({i // 2 for i in ids}) == 3 and len({i % 2 for i in ids}) == 1
  ref = np_vit(sd, x, 4, ids_keep=ids_keep)
  assert out["tokens"].shape == (4, 4, 32)
  assert max(_rel(out[k], ref[k]) for k in ("tokens", "pooled", "logits")) <= TOL
  model.eval()  # no masking in eval mode
  assert _run(model, jnp.asarray(x))["tokens"].shape == (4, 1 + 12, 32)


def test_drop_path_drops_whole_branches_per_example():
  model, sd = _tiny(depth=2, drop_path=0.5)  # rates linspace(0, 0.5, 2) = [0, 0.5]
  assert model.blocks[0].drop_path.rate == 0.0 and model.blocks[1].drop_path.rate == 0.5
  block = model.blocks[1]
  block.train()
  x = np.random.default_rng(4).standard_normal((16, 5, 32)).astype(np.float32)
  with jax.default_matmul_precision("highest"):
    y = np.asarray(nnx.jit(lambda m, v, r: m(v, rngs=r))(block, jnp.asarray(x), nnx.Rngs(dropout=0)))
  options = {s: np_block(x.astype(np.float64), sd, 1, 4, scales=s) for s in ((0, 0), (0, 2), (2, 0), (2, 2))}
  seen = set()
  for b in range(16):
    errs = {s: np.abs(y[b] - o[b]).max() / np.abs(o[b]).max() for s, o in options.items()}
    best = min(errs, key=errs.get)
    assert errs[best] <= TOL, errs
    seen.add(best)
  assert len(seen) >= 3  # with p = 0.5 over 16 examples, several patterns occur
  block.eval()
  with jax.default_matmul_precision("highest"):
    y_eval = nnx.jit(lambda m, v: m(v))(block, jnp.asarray(x))
  assert _rel(y_eval, np_block(x.astype(np.float64), sd, 1, 4)) <= TOL


# ---------------------------------------------------------------------------------------------------------------------
# Size, presets, metadata.
# ---------------------------------------------------------------------------------------------------------------------


def test_vit_base_size_matches_reference_and_every_param_is_named():
  stats = json.loads((FIXTURES / "parity" / "audiomae_vit_base_ft" / "stats.json").read_text())
  model = nnx.eval_shape(lambda: vit.build_vit("base", pos_embed="table", rngs=nnx.Rngs(0)))
  sizes = [int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Variable))]
  assert sum(sizes) == stats["n_params"] == 86053391  # reference PyTorch model, pos_embed included
  allowed = {None, "embed", "mlp", "heads", "kv", "qkv", "classes", "conv_in"}
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.Variable)):
    names = v.get_metadata().get("out_sharding")
    assert names is not None and len(names) == len(v.shape) and set(names) <= allowed, (path, names)
  large = nnx.eval_shape(lambda: vit.build_vit("large", num_classes=0, rngs=nnx.Rngs(0)))
  assert (len(large.blocks), large.embed_dim, large.blocks[0].attn.num_heads) == (24, 1024, 16)
  # ViT-L/16 encoder: 24 x (12 D^2 + 13 D) + patch (256 D + D) + cls D + final norm 2D, D = 1024.
  d = 1024
  assert sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(large, nnx.Param))) == (
      24 * (12 * d * d + 13 * d) + 257 * d + d + 2 * d)


def test_helpers_moved_to_vit_utils_are_re_exported_unchanged():
  """The position-embedding / masking helpers live in vit_utils; vit keeps the same objects under the same names."""
  from uss_jax.models import vit_utils
  for name in vit_utils.__all__:
    assert getattr(vit, name) is getattr(vit_utils, name), name
  # One value against MAE's get_2d_sincos_pos_embed_flexible through the old import path.
  np.testing.assert_allclose(vit.sincos_pos_embed_2d(16, (3, 2)), mae_sincos_flexible(16, (3, 2)), atol=1e-6)
