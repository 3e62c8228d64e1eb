"""CaRE-SEP Swin-UNet (uss_jax/models/swin_unet.py) and the ST-SED-SEP ZS-ASP separator (uss_jax/models/zs_asp.py)
against numpy transcriptions of their pieces: Swin-UNet's patch expand / x4 patch-up, HTS-AT's folding, the band
features and band-merge head, the additive query conditioning (FiLM-add), PyTorch's ConvTranspose2d + ZS-ASP prune,
the masks of the untrained models, and the query-gradient switch. Tiny sizes, CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
import pytest

from uss_jax.audio import bandsplit
from uss_jax.models import htsat, swin_unet, zs_asp

SR = 16000


def _encoder(seed=0, **kw):
  # Tiny sizes shared by every test (the first build of a shape compiles its initialisers: the file's main cost).
  args = dict(sample_rate=SR, n_fft=512, hop_length=160, n_bands=16, freq_ratio=1, patch_size=2, embed_dim=4,
              depths=(2, 1), num_heads=(1, 2), window_size=2, drop_path=0.0)
  args.update(kw)
  return swin_unet.SwinEncoder(5, rngs=nnx.Rngs(seed), **args)


def _care(query_grad=True, shared=True):
  enc = _encoder()
  dec = swin_unet.SwinDecoder(enc, rngs=nnx.Rngs(1))
  q = None if shared else _encoder(seed=3)
  model = swin_unet.CareSep(enc, dec, query_encoder=q, query_grad=query_grad, rngs=nnx.Rngs(2))
  model.eval()
  return model


def _wave(batch=2, samples=SR, seed=0):
  return (0.1 * np.random.default_rng(seed).standard_normal((batch, samples))).astype(np.float32)


def test_patch_expand_and_x4_patch_up_match_numpy():
  rng = np.random.default_rng(0)
  for factor, dim, keep in ((2, 8, False), (4, 4, True)):
    layer = swin_unet.PatchExpand(dim, factor, keep_width=keep, rngs=nnx.Rngs(0))
    x = rng.standard_normal((2, 3, 5, dim)).astype(np.float32)
    y = np.asarray(layer(jnp.asarray(x)))
    w = np.asarray(layer.expand.kernel[...])
    e = x @ w  # Linear without bias
    c = e.shape[-1] // factor ** 2
    ref = np.zeros((2, 3 * factor, 5 * factor, c), np.float32)
    for i in range(3):
      for j in range(5):
        for p1 in range(factor):
          for p2 in range(factor):  # einops 'b h w (p1 p2 c) -> b (h p1) (w p2) c'
            ref[:, i * factor + p1, j * factor + p2] = e[:, i, j, (p1 * factor + p2) * c:(p1 * factor + p2 + 1) * c]
    mu, var = ref.mean(-1, keepdims=True), ref.var(-1, keepdims=True)
    ref = (ref - mu) / np.sqrt(var + 1e-5) * np.asarray(layer.norm.scale[...]) + np.asarray(layer.norm.bias[...])
    assert y.shape == (2, 3 * factor, 5 * factor, dim // 2 if factor == 2 else dim)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_fold_is_htsat_to_image_and_unfold_inverts_it():
  x = np.random.default_rng(1).standard_normal((2, 64, 16, 1)).astype(np.float32)
  model = htsat.HTSAT(3, mel_bins=16, freq_ratio=4, target_frames=64, patch_size=2, embed_dim=4, depths=(1, 1),
                      num_heads=(1, 1), window_size=2, spec_augment=False, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(swin_unet.fold(jnp.asarray(x), 4)),
                                np.asarray(model.to_image(jnp.asarray(x[..., 0]))))
  np.testing.assert_array_equal(np.asarray(swin_unet.unfold(swin_unet.fold(jnp.asarray(x), 4), 4)), x)


def test_band_features_are_mean_band_db_and_the_head_merges_bands():
  enc = _encoder()
  enc.eval()
  x = _wave(1, 4000)
  spec, feats = enc.bands(jnp.asarray(x))
  # numpy STFT (centre, reflect, periodic Hann) and the mean dB over each band's bins.
  n_fft, hop = 512, 160
  padded = np.pad(x[0].astype(np.float64), n_fft // 2, mode="reflect")
  win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
  frames = np.stack([padded[t * hop:t * hop + n_fft] * win for t in range(1 + len(x[0]) // hop)])
  ref_spec = np.fft.rfft(frames, axis=-1)
  np.testing.assert_allclose(np.asarray(spec[0]), ref_spec, rtol=1e-3, atol=2e-4)
  layout = bandsplit.band_layout(float(SR), n_fft, 16)
  db = 10 * np.log10(np.maximum(np.abs(ref_spec) ** 2, 1e-10))
  ref = np.stack([db[:, layout.edges[i]:layout.edges[i + 2]].mean(-1) for i in range(16)], axis=-1)
  ref = ref / np.sqrt(1 + 1e-5)  # bn0 in eval mode with its initial statistics (0, 1)
  np.testing.assert_allclose(np.asarray(feats[0, :, :, 0]), ref, rtol=1e-3, atol=2e-3)
  # The head: per-band slot logits -> each bin = mean of its band copies (UDPC "sum, halve the overlap").
  logits = np.random.default_rng(2).standard_normal((1, 3, 1, 16, layout.max_width)).astype(np.float32)
  merged = np.asarray(bandsplit.band_merge(jnp.asarray(logits), layout))[0, :, 0]
  ref_m = np.zeros((3, layout.n_bins))
  count = np.zeros(layout.n_bins)
  for i in range(16):
    lo, hi = layout.edges[i], layout.edges[i + 2]
    ref_m[:, lo:hi] += logits[0, :, 0, i, :hi - lo]
    count[lo:hi] += 1
  np.testing.assert_allclose(merged, ref_m / count, rtol=1e-6, atol=1e-6)


def test_untrained_care_sep_and_zs_asp_output_half_the_mixture_with_a_zero_head():
  x = _wave(2, 4000)
  care = _care()
  care.decoder.head_kernel[...] = jnp.zeros_like(care.decoder.head_kernel[...])
  y = np.asarray(care(jnp.asarray(x), care.embed(jnp.asarray(x))))
  np.testing.assert_allclose(y, 0.5 * x, atol=1e-5)  # sigmoid(0) magnitude mask, mixture phase, exact iSTFT
  sep = zs_asp.ZeroShotASP(16, channels=(4, 8, 8), n_fft=512, hop_length=160, rngs=nnx.Rngs(0))
  sep.eval()
  sep.after_conv2.kernel[...] = jnp.zeros_like(sep.after_conv2.kernel[...])
  y = np.asarray(sep(jnp.asarray(x), jnp.ones((2, 16)))["waveform"])
  np.testing.assert_allclose(y, 0.5 * x, atol=1e-5)


def test_query_is_added_before_every_block_as_a_shift_of_the_previous_norm():
  """FiLM-add: adding beta(c) to the input of the first block == adding it to the patch-embedding LayerNorm's bias."""
  care = _care()
  x = jnp.asarray(_wave(1, 4000))
  c = jnp.asarray(np.random.default_rng(3).standard_normal((1, care.condition_size)).astype(np.float32))
  film = care.films_encoder[0][0]
  beta = np.asarray(c) @ np.asarray(film.beta.kernel[...]) + np.asarray(film.beta.bias[...])  # numpy Linear
  widths = care.encoder.block_widths()
  conds = [[jnp.zeros((1, w)) for w in stage] for stage in widths]
  conds[0][0] = jnp.asarray(beta)
  with_add = care.encoder(x, conds)["tokens_map"]
  care.encoder.patch_embed.norm.bias[...] = care.encoder.patch_embed.norm.bias[...] + beta[0]
  shifted = care.encoder(x, None)["tokens_map"]
  np.testing.assert_allclose(np.asarray(with_add), np.asarray(shifted), rtol=1e-4, atol=1e-5)
  # and the system really adds its FiLMs: a zero condition with zero FiLM biases == the unconditioned encoder
  for stage in list(care.films_encoder) + list(care.films_decoder):
    for f in stage:
      f.beta.bias[...] = jnp.zeros_like(f.beta.bias[...])
  plain = care.encoder(x, None)["tokens_map"]
  zero = care.encoder(x, [[f.modulation(jnp.zeros_like(c))[1] for f in s] for s in care.films_encoder])["tokens_map"]
  np.testing.assert_allclose(np.asarray(zero), np.asarray(plain), atol=1e-6)


def test_query_embedding_is_the_mean_token_and_the_encoder_is_shared():
  care = _care()
  x = jnp.asarray(_wave(2, 4000))
  out = care.encoder(x)
  tokens = np.asarray(out["tokens_map"])
  np.testing.assert_allclose(np.asarray(care.embed(x)), tokens.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
  assert care.embed(x).shape == (2, 4 * 2)  # D * 2^(stages - 1): 8D for HTS-AT's four stages
  separate = _care(shared=False)
  assert not np.allclose(np.asarray(separate.embed(x)), np.asarray(separate.encoder(x)["embedding"]))


@pytest.mark.parametrize("embed_dim,width", [(96, 768), (256, 2048)])
def test_htsat_configuration_gives_the_papers_query_widths(embed_dim, width):
  model = nnx.eval_shape(lambda: swin_unet.CareSep(
      *(lambda e: (e, swin_unet.SwinDecoder(e, rngs=nnx.Rngs(1))))(swin_unet.SwinEncoder(
          527, sample_rate=32000, embed_dim=embed_dim, min_frames=1024, rngs=nnx.Rngs(0))), rngs=nnx.Rngs(2)))
  assert model.condition_size == width
  assert model.encoder.stage_windows == ((8, 4), (8, 4), (8, 4), (8, 0))  # HTS-AT's 64x64 grid of 10 s clips
  assert model.encoder.padded_frames(1001) == 1024


def test_query_grad_switch_stops_the_gradient_into_the_query_embedding():
  x = jnp.asarray(_wave(1, 1600))

  def grad_norm(model):
    def f(m):
      return jnp.sum(m.embed(x) ** 2)
    g = nnx.grad(f)(model)
    return float(sum(jnp.sum(v ** 2) for v in jax.tree.leaves(g)))

  assert grad_norm(_care(query_grad=True)) > 0
  assert grad_norm(_care(query_grad=False)) == 0.0


def test_transposed_conv_matches_pytorch_semantics_and_prune():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
  k = rng.standard_normal((3, 3, 5, 6)).astype(np.float32)
  y = np.asarray(zs_asp.transposed_conv3x3_stride2_pruned(jnp.asarray(x), jnp.asarray(k),
                                                           jax.lax.Precision.HIGHEST))
  full = np.zeros((2, 2 * 3 + 1, 2 * 4 + 1, 6))  # torch: out[i*s + a] += in[i] * w[a] (no flip), size (n-1)s + k
  for i in range(3):
    for j in range(4):
      for a in range(3):
        for b in range(3):
          full[:, 2 * i + a, 2 * j + b] += x[:, i, j] @ k[a, b]
  np.testing.assert_allclose(y, full[:, :-1, :-1], rtol=1e-5, atol=1e-5)


def test_zs_asp_conditioning_is_linear_after_every_relu():
  """The first ConvBlock's output = relu(bn(conv(relu(bn(conv(x))) + e1))) + e2 with e = W c + b (numpy)."""
  block = zs_asp.ConvBlock(1, 3, 4, rngs=nnx.Rngs(0))
  block.eval()
  rng = np.random.default_rng(5)
  x = rng.standard_normal((1, 5, 6, 1)).astype(np.float32)
  c = rng.standard_normal((1, 4)).astype(np.float32)

  def conv(v, k):  # 'same' 3x3 cross-correlation, channels last
    p = np.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(p[:, a:a + v.shape[1], b:b + v.shape[2]] @ k[a, b] for a in range(3) for b in range(3))

  bn = 1 / np.sqrt(1 + 1e-5)
  e1 = c @ np.asarray(block.emb1.beta.kernel[...]) + np.asarray(block.emb1.beta.bias[...])
  e2 = c @ np.asarray(block.emb2.beta.kernel[...]) + np.asarray(block.emb2.beta.bias[...])
  h = np.maximum(conv(x, np.asarray(block.conv1.kernel[...])) * bn, 0) + e1[:, None, None]
  ref = np.maximum(conv(h, np.asarray(block.conv2.kernel[...])) * bn, 0) + e2[:, None, None]
  np.testing.assert_allclose(np.asarray(block(jnp.asarray(x), jnp.asarray(c))), ref, rtol=1e-4, atol=1e-5)
  assert np.abs(np.asarray(block.emb1.beta.kernel[...])).max() <= 0.1  # init_emb U(-0.1, 0.1)
