"""MAE decoders, masking, the reconstruction loss and the SupMAM branch against independent numpy references.

The numpy references are written from facebookresearch/AudioMAE ``models_mae.py`` (``patchify``, ``forward_decoder``,
``forward_loss``) and ``timm_patch/swin_transformer.py`` (``SwinTransformerBlock`` / ``WindowMultiHeadAttention``),
literally and with explicit loops: windows are visited one by one, every (query, key) pair gets its own cosine,
log-spaced relative coordinate, bias-MLP evaluation and shift-mask entry; the shift mask regions come from the
reference's own ``img_mask`` slice construction.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from uss_jax import losses
from uss_jax.models import mae, vit

TOL = dict(rtol=2e-5, atol=2e-5)


# ---------------------------------------------------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------------------------------------------------


def a(v):
  return np.asarray(v[...] if hasattr(v, "get_value") else v, np.float64)


def np_ln(x, norm, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * a(norm.scale) + a(norm.bias)


def np_lin(x, lin):
  kernel = a(lin.kernel)  # a FusedQKV kernel (D, 3, heads, head_dim) is PyTorch's (D, 3 D) weight.T reshaped
  return x @ kernel.reshape(kernel.shape[0], -1) + a(lin.bias)


def np_gelu(x):
  return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_mlp(x, mlp):
  return np_lin(np_gelu(np_lin(x, mlp.fc1)), mlp.fc2)


def ref_img_mask(t, f, window, shift):
  """timm SwinTransformerBlock._make_attention_mask's img_mask, with Python's slice semantics (-0 == 0)."""
  img = np.zeros((t, f))
  cnt = 0
  for h in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
    for w in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
      img[h, w] = cnt
      cnt += 1
  return img


def np_swin_block(x, blk, grid, window, shift, heads):
  """SwinTransformerBlock.forward (post-norm) with a window-by-window, pair-by-pair attention loop."""
  b, n, c = x.shape
  t, f = grid
  wt, wf = window
  hd = c // heads
  y = np.roll(x.reshape(b, t, f, c), (-shift[0], -shift[1]), axis=(1, 2))
  labels = ref_img_mask(t, f, window, shift) if any(shift) else np.zeros((t, f))
  at = blk.attn
  tau = a(at.tau)
  out = np.zeros_like(y)
  for bi in range(b):
    for i0 in range(0, t, wt):
      for j0 in range(0, f, wf):
        pos = [(i, j) for i in range(i0, i0 + wt) for j in range(j0, j0 + wf)]
        tok = np.stack([y[bi, i, j] for i, j in pos])
        qkv = np_lin(tok, at.qkv)
        q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
        res = np.zeros((len(pos), c))
        for h in range(heads):
          sl = slice(h * hd, (h + 1) * hd)
          logits = np.zeros((len(pos), len(pos)))
          for qi, pq in enumerate(pos):
            for ki, pk in enumerate(pos):
              cos = q[qi, sl] @ k[ki, sl] / max(np.linalg.norm(q[qi, sl]) * np.linalg.norm(k[ki, sl]), 1e-6)
              d = np.array([pq[0] - pk[0], pq[1] - pk[1]], np.float64)
              d = np.sign(d) * np.log(1 + np.abs(d))
              bias = np_lin(np.maximum(np_lin(d, at.meta_fc1), 0), at.meta_fc2)[h]
              masked = -100.0 if labels[pq] != labels[pk] else 0.0
              logits[qi, ki] = cos / max(tau[h], 0.01) + bias + masked
          res[:, sl] = np_softmax(logits) @ v[:, sl]
        res = np_lin(res, at.proj)
        for li, (i, j) in enumerate(pos):
          out[bi, i, j] = res[li]
  out = np.roll(out, shift, axis=(1, 2)).reshape(b, n, c)
  x = x + np_ln(out, blk.norm1)
  return x + np_ln(np_mlp(x, blk.mlp), blk.norm2)


def np_vit_block(x, blk, heads):
  """timm 0.4.5 Block (pre-LN, fused qkv, softmax(q k^T / sqrt(hd)))."""
  b, n, c = x.shape
  hd = c // heads
  qkv = np_lin(np_ln(x, blk.norm1), blk.attn.qkv).reshape(b, n, 3, heads, hd).transpose(2, 0, 3, 1, 4)
  att = np_softmax(qkv[0] @ qkv[1].transpose(0, 1, 3, 2) * hd ** -0.5) @ qkv[2]
  x = x + np_lin(att.transpose(0, 2, 1, 3).reshape(b, n, c), blk.attn.proj)
  return x + np_mlp(np_ln(x, blk.norm2), blk.mlp)


def np_sincos(dim, grid):
  """MAE get_2d_sincos_pos_embed_flexible on (T, F): frequency index in the first half, time in the second."""
  def one(d, p):
    omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2))
    return np.concatenate([np.sin(p[:, None] * omega), np.cos(p[:, None] * omega)], 1)
  t, f = grid
  tt, ff = np.meshgrid(np.arange(t, dtype=np.float64), np.arange(f, dtype=np.float64), indexing="ij")
  return np.concatenate([one(dim // 2, ff.ravel()), one(dim // 2, tt.ravel())], 1)


def np_decoder(latent, ids_restore, dec, grid, heads, window=(4, 4), shift=(2, 0)):
  """AudioMAE forward_decoder (decoder_mode 0 or 1), token unshuffling done element by element."""
  x = np_lin(latent, dec.decoder_embed)
  b, n = ids_restore.shape
  keep = x.shape[1] - 1
  full = np.zeros((b, n, x.shape[2]))
  for bi in range(b):
    seq = list(x[bi, 1:]) + [a(dec.mask_token)[0, 0]] * (n - keep)
    for j in range(n):
      full[bi, j] = seq[ids_restore[bi, j]]
  full = full + np_sincos(x.shape[2], grid)[None]
  if dec.kind == "global":
    y = np.concatenate([x[:, :1], full], 1)
    for blk in dec.blocks:
      y = np_vit_block(y, blk, heads)
    y = y[:, 1:]
  else:
    y = full
    for i, blk in enumerate(dec.blocks):
      y = np_swin_block(y, blk, grid, window, shift if i % 2 else (0, 0), heads)
  return np_lin(np_ln(y, dec.decoder_norm), dec.decoder_pred)


def np_patchify(fb, p):
  b, frames, bins = fb.shape
  t, f = frames // p, bins // p
  out = np.zeros((b, t * f, p * p))
  for ti in range(t):
    for fi in range(f):
      for i in range(p):
        for j in range(p):
          out[:, ti * f + fi, i * p + j] = fb[:, ti * p + i, fi * p + j]
  return out


def np_masked_loss(pred, fb, mask, p):
  tgt = np_patchify(fb, p)
  tgt = (tgt - tgt.mean(-1, keepdims=True)) / np.sqrt(tgt.var(-1, ddof=1, keepdims=True) + 1e-6)
  per = ((pred - tgt) ** 2).mean(-1)
  return (per * mask).sum() / mask.sum()


def _randomise(module, seed=0, scale=0.3):
  """Non-trivial values for every parameter (tau away from 1, biases and norms away from 0 / 1)."""
  rng = np.random.default_rng(seed)
  for path, var in nnx.iter_graph(module):
    if isinstance(var, nnx.Param):
      shape = var[...].shape
      if path[-1] == "tau":
        var[...] = jnp.asarray(rng.uniform(0.005, 0.5, shape), jnp.float32)
      elif path[-1] == "scale":
        var[...] = jnp.asarray(1 + 0.1 * rng.standard_normal(shape), jnp.float32)
      else:
        var[...] = jnp.asarray(scale * rng.standard_normal(shape) / np.sqrt(max(shape[0], 1) if len(shape) > 1
                                                                           else 1), jnp.float32)


# ---------------------------------------------------------------------------------------------------------------------
# windows, shift mask, Swin block
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid,window,shift", [((8, 8), (4, 4), (2, 0)), ((8, 8), (4, 4), (2, 2)),
                                               ((64, 8), (4, 4), (2, 0)), ((12, 8), (4, 2), (2, 1))])
def test_shift_mask_matches_reference_construction(grid, window, shift):
  img = ref_img_mask(*grid, window, shift)
  t, f = grid
  wins = img.reshape(t // window[0], window[0], f // window[1], window[1]).transpose(0, 2, 1, 3)
  wins = wins.reshape(-1, window[0] * window[1])
  expected = np.where(wins[:, None, :] - wins[:, :, None] != 0, -100.0, 0.0)
  np.testing.assert_array_equal(mae.shifted_window_mask(grid, window, shift), expected)
  assert mae.shifted_window_mask(grid, window, (0, 0)) is None


def test_window_partition_roundtrip_and_order():
  x = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
  w = np.asarray(mae.window_partition(jnp.asarray(x), (4, 2)))
  assert w.shape == (2, 8, 8, 3)
  for wi in range(2):
    for wj in range(4):
      block = x[:, wi * 4:(wi + 1) * 4, wj * 2:(wj + 1) * 2].reshape(2, 8, 3)
      np.testing.assert_array_equal(w[:, wi * 4 + wj], block)
  np.testing.assert_array_equal(np.asarray(mae.window_reverse(jnp.asarray(w), (4, 2), (8, 8))), x)
  with pytest.raises(ValueError, match="not divisible"):
    mae.window_partition(jnp.zeros((1, 6, 8, 3)), (4, 4))


def test_relative_coordinates_and_window_clamp():
  rel = mae.relative_coordinates_log((2, 3))
  coords = [(i, j) for i in range(2) for j in range(3)]
  for a_, pa in enumerate(coords):
    for b_, pb in enumerate(coords):
      d = np.array([pa[0] - pb[0], pa[1] - pb[1]])
      np.testing.assert_allclose(rel[a_ * 6 + b_], np.sign(d) * np.log1p(np.abs(d)), rtol=1e-6)
  # timm _calc_window_shift: window clamped to the grid, no shift along an axis the window spans.
  assert mae.effective_window_and_shift((4, 8), (4, 4), (2, 0)) == ((4, 4), (0, 0))
  assert mae.effective_window_and_shift((2, 8), (4, 4), (2, 2)) == ((2, 4), (0, 2))


@pytest.mark.parametrize("shift", [(0, 0), (2, 0), (2, 2)])
def test_swin_block_matches_numpy_loop(shift):
  dim, heads = 16, 2
  blk = mae.SwinV2Block(dim, heads, window=(4, 4), shift=shift, meta_hidden=8, meta_dropout=0.1, rngs=nnx.Rngs(0))
  _randomise(blk, seed=1)
  blk.eval()  # the bias MLP's dropout off
  x = np.random.default_rng(2).standard_normal((2, 64, dim))
  got = np.asarray(nnx.jit(lambda m, y: m(y, (8, 8)))(blk, jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(got, np_swin_block(x, blk, (8, 8), (4, 4), shift, heads), **TOL)


def test_swin_attention_tau_clamp_and_mask_matter():
  blk = mae.SwinV2Block(8, 2, window=(4, 4), shift=(2, 0), meta_hidden=8, meta_dropout=0.0, rngs=nnx.Rngs(0))
  _randomise(blk, seed=3)
  x = jnp.asarray(np.random.default_rng(4).standard_normal((1, 32, 8)), jnp.float32)
  blk.attn.tau[...] = jnp.array([0.001, 0.002])
  y1 = blk(x, (8, 4))
  blk.attn.tau[...] = jnp.array([0.01, 0.01])  # both clamp to 0.01: identical output
  np.testing.assert_allclose(np.asarray(blk(x, (8, 4))), np.asarray(y1), rtol=1e-6, atol=1e-6)
  unshifted = mae.SwinV2Block(8, 2, window=(4, 4), shift=(0, 0), meta_hidden=8, meta_dropout=0.0,
                              rngs=nnx.Rngs(0))
  nnx.update(unshifted, nnx.state(blk))
  assert not np.allclose(np.asarray(unshifted(x, (8, 4))), np.asarray(y1), atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# decoders
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["swin", "global"])
def test_decoder_matches_numpy(kind):
  enc_dim, dim, heads, grid = 12, 16, 2, (8, 4)
  dec = mae.MAEDecoder(enc_dim, 10, kind=kind, embed_dim=dim, depth=2, num_heads=heads, window=(4, 4),
                       shift=(2, 0), meta_hidden=8, rngs=nnx.Rngs(0))
  _randomise(dec, seed=5)
  dec.eval()
  rng = np.random.default_rng(6)
  b, n, keep = 2, grid[0] * grid[1], 7
  latent = rng.standard_normal((b, 1 + keep, enc_dim))
  ids_restore = np.stack([rng.permutation(n) for _ in range(b)]).astype(np.int32)
  got = np.asarray(nnx.jit(lambda m, z, i: m(z, i, grid))(dec, jnp.asarray(latent, jnp.float32),
                                                          jnp.asarray(ids_restore)))
  np.testing.assert_allclose(got, np_decoder(latent, ids_restore, dec, grid, heads), **TOL)


def test_decoder_presets():
  d = nnx.eval_shape(lambda: mae.build_decoder(768, 256, "audiomae_swin", rngs=nnx.Rngs(0)))
  assert len(d.blocks) == 16 and d.kind == "swin" and d.embed_dim == 512
  assert [b.shift for b in d.blocks] == [(0, 0), (2, 0)] * 8 and d.blocks[0].window == (4, 4)
  assert d.blocks[0].attn.num_heads == 16 and d.blocks[0].attn.meta_fc1.kernel.shape == (2, 384)
  n_params = sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(d, nnx.Param)))
  # AudioMAE: full model 137 M (decoder_mode 1) with an 85.66 M encoder -> decoder ~51 M.
  assert 50e6 < n_params < 52e6
  g = nnx.eval_shape(lambda: mae.build_decoder(768, 256, "audiomae_global", rngs=nnx.Rngs(0)))
  assert len(g.blocks) == 8 and g.kind == "global"
  c = nnx.eval_shape(lambda: mae.build_decoder(768, 512, "mam_clap_local", rngs=nnx.Rngs(0)))
  assert len(c.blocks) == 1 and c.blocks[0].shift == (2, 0)
  # MAM-CLAP normalises the predicted teacher tokens: a LayerNorm over the 512 output features.
  assert isinstance(c.pred_norm, nnx.LayerNorm) and c.pred_norm.scale.shape == (512,)
  with pytest.raises(ValueError, match="unknown decoder preset"):
    mae.build_decoder(768, 256, "nope", rngs=nnx.Rngs(0))


def test_mam_clap_head_is_linear_then_layernorm():
  dec = mae.build_decoder(8, 6, "mam_clap_local", embed_dim=8, num_heads=2, meta_hidden=4, rngs=nnx.Rngs(0))
  _randomise(dec, seed=7)
  dec.eval()
  rng = np.random.default_rng(8)
  latent = rng.standard_normal((1, 1 + 5, 8))
  ids = rng.permutation(32)[None].astype(np.int32)
  got = np.asarray(dec(jnp.asarray(latent, jnp.float32), jnp.asarray(ids), (8, 4)))
  x = np_lin(latent, dec.decoder_embed)
  seq = list(x[0, 1:]) + [a(dec.mask_token)[0, 0]] * 27
  full = np.stack([seq[i] for i in ids[0]])[None] + np_sincos(8, (8, 4))[None]
  y = np_swin_block(full, dec.blocks[0], (8, 4), (4, 4), (2, 0), 2)
  expected = np_ln(np_lin(np_ln(y, dec.decoder_norm), dec.decoder_pred), dec.pred_norm)
  np.testing.assert_allclose(got, expected, **TOL)


# ---------------------------------------------------------------------------------------------------------------------
# masked autoencoder, loss, SupMAM branch
# ---------------------------------------------------------------------------------------------------------------------


def tiny_mae(num_classes=0, mask_ratio=0.75):
  rngs = nnx.Rngs(0)
  enc = vit.VisionTransformer(img_size=(64, 32), patch_size=8, embed_dim=16, depth=1, num_heads=2,
                              global_pool=False, num_classes=0, drop_path=0.0, rngs=rngs)
  dec = mae.MAEDecoder(16, 64, kind="swin", embed_dim=16, depth=2, num_heads=2, meta_hidden=8, rngs=rngs)
  cls = mae.SupervisedBranch(16, num_classes, hidden=12, rngs=rngs) if num_classes else None
  model = mae.MaskedAutoencoder(enc, dec, mask_ratio=mask_ratio, classifier=cls)
  _randomise(model, seed=9)
  return model


def test_patchify_matches_numpy_and_roundtrips():
  fb = np.random.default_rng(0).standard_normal((2, 35, 18)).astype(np.float32)
  got = np.asarray(mae.patchify(jnp.asarray(fb), 8))  # 4 x 2 patches, remainders dropped
  np.testing.assert_array_equal(got, np_patchify(fb, 8))
  back = np.asarray(mae.unpatchify(jnp.asarray(got), (4, 2), 8))
  np.testing.assert_array_equal(back, fb[:, :32, :16])


def test_masking_is_shape_static_under_jit_and_loss_counts_only_masked_patches():
  model = tiny_mae()
  fb = jnp.asarray(np.random.default_rng(1).standard_normal((3, 64, 32)), jnp.float32)  # 8 x 4 = 32 tokens

  @jax.jit
  def run(m, x, key):
    return m(x, rngs=nnx.Rngs(masking=key, dropout=key))

  out = jax.tree.map(np.asarray, run(model, fb, jax.random.key(0)))
  keep = vit.num_kept(32, 0.75)
  assert out["latent"].shape == (3, 1 + keep, 16) and out["pred"].shape == (3, 32, 64)
  np.testing.assert_array_equal(out["mask"].sum(1), [32 - keep] * 3)
  np.testing.assert_array_equal(out["target_patches"], np_patchify(np.asarray(fb), 8))
  # Different keys -> different masks, same counts.
  other = np.asarray(run(model, fb, jax.random.key(1))["mask"])
  assert not np.array_equal(other, out["mask"]) and np.all(other.sum(1) == 32 - keep)

  loss = float(losses.masked_patch_mse(out["pred"], out["target_patches"], out["mask"]))
  np.testing.assert_allclose(loss, np_masked_loss(out["pred"], np.asarray(fb), out["mask"], 8), rtol=1e-5)
  visible = out["mask"] == 0
  corrupted = np.where(visible[..., None], out["pred"] + 100.0, out["pred"])
  np.testing.assert_allclose(float(losses.masked_patch_mse(corrupted, out["target_patches"], out["mask"])), loss,
                             rtol=1e-6)
  one_masked = out["pred"].copy()
  bi, ti = np.argwhere(out["mask"] == 1)[0]
  one_masked[bi, ti] += 1.0
  assert float(losses.masked_patch_mse(one_masked, out["target_patches"], out["mask"])) > loss + 1e-3


def test_supmam_branch_sees_only_visible_tokens():
  model = tiny_mae(num_classes=5, mask_ratio=0.5)
  rng = np.random.default_rng(2)
  fb = rng.standard_normal((4, 64, 32)).astype(np.float32)
  ids_keep = np.stack([np.sort(rng.permutation(32)[:16]) for _ in range(4)]).astype(np.int32)
  jitted = nnx.jit(lambda m, x, ids: m(x, ids_keep=ids, rngs=nnx.Rngs(dropout=0)))
  call = lambda x: jitted(model, jnp.asarray(x), jnp.asarray(ids_keep))
  out = call(fb)  # train mode: BatchNorm on batch statistics, the same dropout draws at every call
  # Branch = fc2(relu(BN_batch(fc1(mean of visible latents)))) in numpy from the encoder's latent.
  br = model.classifier
  h = np_lin(np.asarray(out["latent"], np.float64)[:, 1:].mean(1), br.fc1)
  h = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5) * a(br.bn.scale) + a(br.bn.bias)
  np.testing.assert_allclose(np.asarray(out["logits"]), np_lin(np.maximum(h, 0), br.fc2), rtol=1e-4, atol=1e-5)

  # Changing every masked patch of the input leaves the logits unchanged; changing one visible patch does not.
  masked_tokens = np.asarray(out["mask"]).astype(bool)
  changed = fb.copy()
  for bi in range(4):
    for tok in np.flatnonzero(masked_tokens[bi]):
      t, f = divmod(tok, 4)
      changed[bi, t * 8:(t + 1) * 8, f * 8:(f + 1) * 8] = rng.standard_normal((8, 8)) * 5
  out2 = call(changed)
  np.testing.assert_allclose(np.asarray(out2["logits"]), np.asarray(out["logits"]), rtol=1e-5, atol=1e-6)
  # The decoder too sees only visible latents: the change shows in the targets, not in the predictions.
  np.testing.assert_allclose(np.asarray(out2["pred"]), np.asarray(out["pred"]), rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(out2["target_patches"]), np.asarray(out["target_patches"]))
  t, f = divmod(int(ids_keep[0, 0]), 4)
  changed[0, t * 8:(t + 1) * 8, f * 8:(f + 1) * 8] += 1.0
  out3 = call(changed)
  assert np.abs(np.asarray(out3["logits"]) - np.asarray(out["logits"])).max() > 1e-4


def test_mam_task_losses_match_numpy():
  from configs import supmam  # pylint: disable=import-outside-toplevel
  from uss_jax.tasks import mam  # pylint: disable=import-outside-toplevel

  config = supmam.get_config("tiny")
  task = mam.MAMTask(config, "/nonexistent")
  model = mam.build_mae(config, num_classes=4, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(3)
  batch = {"waveform": jnp.asarray(rng.standard_normal((4, 20800)) * 0.1, jnp.float32),
           "labels": jnp.asarray([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1], [1, 0, 0, 1]], jnp.float32),
           "label": jnp.asarray([0, 1, 3, 0], jnp.int32)}

  @nnx.jit
  def run(m, b, key):
    fbank = task.frontend(b["waveform"])
    return task.loss(m, b, nnx.Rngs(default=key)), m(fbank, rngs=nnx.Rngs(default=key)), fbank

  (loss, aux), out, fb = run(model, batch, jax.random.key(5))
  fb = np.asarray(fb, np.float64)
  rec = np_masked_loss(np.asarray(out["pred"], np.float64), fb, np.asarray(out["mask"]), 16)
  y = np.asarray(batch["labels"]) / np.asarray(batch["labels"]).sum(1, keepdims=True)
  z = np.asarray(out["logits"], np.float64) / config.supmam.temperature
  logp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
  ce = -(y * logp).sum(1).mean()
  np.testing.assert_allclose(float(aux["rec_loss"]), rec, rtol=1e-5)
  np.testing.assert_allclose(float(aux["cls_loss"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(loss), rec + 0.01 * ce, rtol=1e-5)
  assert out["mask"].shape == (4, 64) and int(out["mask"][0].sum()) == 64 - vit.num_kept(64, 0.4)

  # Evaluation: per-clip masked loss with the fixed eval key, branch scores (masked and full input), summary.
  model.eval()

  @nnx.jit
  def evaluate(m, b, x):
    out = m(x, rngs=nnx.Rngs(masking=jax.random.key(config.eval_seed)))
    return task.eval_outputs(m, b), out["pred"], out["mask"], m.classify(x)

  ev, pred_e, mask_e, logits_full = jax.tree.map(np.asarray, evaluate(model, batch, jnp.asarray(fb, jnp.float32)))
  per_clip = [np_masked_loss(pred_e[i:i + 1].astype(np.float64), fb[i:i + 1], mask_e[i:i + 1], 16)
              for i in range(4)]
  np.testing.assert_allclose(ev["rec_loss"], per_clip, rtol=1e-5)
  z_full = logits_full.astype(np.float64) / config.supmam.temperature
  p_full = np.exp(z_full - z_full.max(1, keepdims=True))
  np.testing.assert_allclose(ev["scores_full"], p_full / p_full.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
  summary = task.summarize(ev)
  np.testing.assert_allclose(summary["rec_loss"], np.mean(per_clip), rtol=1e-5)
  np.testing.assert_allclose(summary["accuracy"], np.mean(ev["scores"].argmax(1) == [0, 1, 3, 0]))
  assert {"mAP", "mAP_full", "accuracy_full", "num_clips"} <= set(summary)


def test_errors():
  rngs = nnx.Rngs(0)
  enc = vit.VisionTransformer(img_size=(64, 32), patch_size=8, embed_dim=16, depth=1, num_heads=2,
                              global_pool=True, num_classes=0, rngs=rngs)
  dec = mae.MAEDecoder(16, 64, kind="global", embed_dim=16, depth=1, num_heads=2, rngs=rngs)
  with pytest.raises(ValueError, match="global_pool=False"):
    mae.MaskedAutoencoder(enc, dec)
  with pytest.raises(ValueError, match="unknown decoder kind"):
    mae.MAEDecoder(16, 64, kind="mvit", rngs=rngs)
  with pytest.raises(ValueError, match="no classification branch"):
    tiny_mae().classify(jnp.zeros((1, 64, 32)))
  with pytest.raises(ValueError, match="not divisible"):  # 6 x 4 grid, window 4 x 4 (raised while tracing)
    nnx.eval_shape(lambda m: m(jnp.zeros((1, 48, 32)), rngs=nnx.Rngs(0)), tiny_mae())


def test_mam_recipes_train_and_evaluate_end_to_end(demo_tfds, tmp_path):
  """configs/{audiomae,supmam}.py:tiny through the generic trainer: every step logs a finite loss, eval gives finite metrics."""
  import sys
  from spine_utils import REPO
  sys.path.insert(0, str(REPO))
  from configs import audiomae, supmam  # pylint: disable=import-outside-toplevel
  from uss_jax.train import trainer  # pylint: disable=import-outside-toplevel
  for name, module in (("audiomae", audiomae), ("supmam", supmam)):
    c = module.get_config("tiny")
    c.data.tfds_dir = demo_tfds
    c.total_steps, c.log_every, c.eval_every, c.checkpoint_every = 4, 1, 4, 4
    result = trainer.train_and_evaluate(c, str(tmp_path / name))
    losses = [loss for _, loss in result["history"]]
    assert len(losses) == 4 and all(np.isfinite(losses)), (name, losses)
    assert result["eval"] and all(np.isfinite(v) for v in result["eval"].values()), (name, result["eval"])
