"""LAION-CLAP audio converter + HTS-AT model against an independent numpy forward of the PyTorch reference.

There is no HTS-AT parity fixture and torch is not installed, so the reference is written here in numpy, literally
from LAION-AI/CLAP ``clap_module/htsat.py`` (``HTSAT_Swin_Transformer.forward`` / ``forward_features`` /
``reshape_wav2img``, ``SwinTransformerBlock``, ``WindowAttention``, ``PatchMerging``, ``PatchEmbed``) and
``model.py`` (``audio_projection``), in the reference's NCHW layout with PyTorch-layout weights: window attention
with the reference's own ``relative_position_index`` and ``img_mask`` slice construction, the bicubic stretch as a
per-output loop of PyTorch's cubic-convolution rule (A = -0.75, ``align_corners=True``, clamped taps), PANNs'
repeat interpolation. The log-mel is librosa's (torchlibrosa computes exactly ``librosa.filters.mel`` on the power
STFT). A fake LAION state_dict with the exact key names and shapes (buffers and the unused ``head`` included, plus
text-branch keys that must be ignored) is filled with random numbers and converted.
"""


import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from uss_jax.convert import clap, common
from uss_jax.models import htsat

# A tiny HTS-AT with the reference's square image: 16 mels x freq_ratio 2 = 32 rows, 64 frames / 2 = 32 columns.
FE = dict(sample_rate=8000, n_fft=256, hop_length=64, n_mels=16, fmin=50.0, fmax=4000.0)
SPEC_SIZE, FREQ_RATIO, PATCH, EMBED, DEPTHS, HEADS, WINDOW, CLASSES, JOINT = 32, 2, 4, 8, (2, 2), (2, 4), 4, 5, 6
REL_TOL = 2e-5


# ---------------------------------------------------------------------------------------------------------------------
# The fake LAION state_dict (keys and shapes from the reference's module tree).
# ---------------------------------------------------------------------------------------------------------------------


def reference_windows():
  """(resolution, window, shift per block) of each stage, as SwinTransformerBlock.__init__ decides."""
  res = SPEC_SIZE // PATCH
  out = []
  for i, depth in enumerate(DEPTHS):
    r = res // 2 ** i
    blocks = []
    for j in range(depth):
      ws, ss = WINDOW, 0 if j % 2 == 0 else WINDOW // 2
      if r <= ws:
        ss, ws = 0, r
      blocks.append((ws, ss))
    out.append((r, blocks))
  return out


def ref_relative_position_index(ws):
  coords = np.stack(np.meshgrid(np.arange(ws), np.arange(ws), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0).copy()
  rel[:, :, 0] += ws - 1
  rel[:, :, 1] += ws - 1
  rel[:, :, 0] *= 2 * ws - 1
  return rel.sum(-1)


def ref_window_partition(x, ws):  # (B, H, W, C) -> (nW * B, ws, ws, C)
  b, h, w, c = x.shape
  x = x.reshape(b, h // ws, ws, w // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, ws, ws, c)


def ref_window_reverse(windows, ws, h, w):
  b = windows.shape[0] // (h * w // ws // ws)
  x = windows.reshape(b, h // ws, w // ws, ws, ws, -1).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, -1)


def ref_attn_mask(res, ws, ss):
  img = np.zeros((1, res, res, 1))
  cnt = 0
  for hs in (slice(0, -ws), slice(-ws, -ss), slice(-ss, None)):
    for wsl in (slice(0, -ws), slice(-ws, -ss), slice(-ss, None)):
      img[:, hs, wsl, :] = cnt
      cnt += 1
  mw = ref_window_partition(img, ws).reshape(-1, ws * ws)
  m = mw[:, None, :] - mw[:, :, None]
  return np.where(m != 0, -100.0, 0.0)


def fake_laion_state_dict(seed=0):
  rng = np.random.default_rng(seed)
  sd = {}

  def w(name, *shape, scale=0.2):
    sd[name] = (rng.standard_normal(shape) * scale).astype(np.float32)

  def ln(name, dim):
    sd[name + ".weight"] = (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32)
    sd[name + ".bias"] = (0.1 * rng.standard_normal(dim)).astype(np.float32)

  def lin(name, dout, din, bias=True):
    w(name + ".weight", dout, din, scale=din ** -0.5)
    if bias:
      w(name + ".bias", dout, scale=0.05)

  a = "audio_branch."
  n_bins = FE["n_fft"] // 2 + 1
  sd[a + "spectrogram_extractor.stft.conv_real.weight"] = rng.standard_normal((n_bins, 1, FE["n_fft"])).astype(
      np.float32)
  sd[a + "spectrogram_extractor.stft.conv_imag.weight"] = rng.standard_normal((n_bins, 1, FE["n_fft"])).astype(
      np.float32)
  sd[a + "logmel_extractor.melW"] = librosa.filters.mel(sr=FE["sample_rate"], n_fft=FE["n_fft"], n_mels=FE["n_mels"],
                                                        fmin=FE["fmin"], fmax=FE["fmax"]).T.astype(np.float32)
  ln(a + "bn0", FE["n_mels"])
  sd[a + "bn0.running_mean"] = (-40 + 5 * rng.standard_normal(FE["n_mels"])).astype(np.float32)
  sd[a + "bn0.running_var"] = (100 + 20 * rng.random(FE["n_mels"])).astype(np.float32)
  sd[a + "bn0.num_batches_tracked"] = np.array(1000, np.int64)
  w(a + "patch_embed.proj.weight", EMBED, 1, PATCH, PATCH, scale=0.5)
  w(a + "patch_embed.proj.bias", EMBED, scale=0.1)
  ln(a + "patch_embed.norm", EMBED)
  for i, (res, blocks) in enumerate(reference_windows()):
    dim = EMBED * 2 ** i
    for j, (ws, ss) in enumerate(blocks):
      p = f"{a}layers.{i}.blocks.{j}."
      ln(p + "norm1", dim)
      w(p + "attn.relative_position_bias_table", (2 * ws - 1) ** 2, HEADS[i], scale=0.5)
      sd[p + "attn.relative_position_index"] = ref_relative_position_index(ws).astype(np.int64)
      lin(p + "attn.qkv", 3 * dim, dim)
      lin(p + "attn.proj", dim, dim)
      ln(p + "norm2", dim)
      lin(p + "mlp.fc1", 4 * dim, dim)
      lin(p + "mlp.fc2", dim, 4 * dim)
      if ss:
        sd[p + "attn_mask"] = ref_attn_mask(res, ws, ss).astype(np.float32)
    if i < len(DEPTHS) - 1:
      lin(f"{a}layers.{i}.downsample.reduction", 2 * dim, 4 * dim, bias=False)
      ln(f"{a}layers.{i}.downsample.norm", 4 * dim)
  feats = EMBED * 2 ** (len(DEPTHS) - 1)
  ln(a + "norm", feats)
  c_freq = SPEC_SIZE // 2 ** (len(DEPTHS) - 1) // PATCH // FREQ_RATIO
  w(a + "tscam_conv.weight", CLASSES, feats, c_freq, 3, scale=0.3)
  w(a + "tscam_conv.bias", CLASSES, scale=0.1)
  lin(a + "head", CLASSES, CLASSES)  # built by the reference, never called
  lin("audio_projection.0", JOINT, feats)
  lin("audio_projection.2", JOINT, JOINT)
  # Parts of a full CLAP checkpoint that the audio converter ignores.
  w("text_branch.embeddings.word_embeddings.weight", 7, 4)
  w("audio_transform.sequential.0.weight", JOINT, JOINT)
  sd["logit_scale_a"] = np.float32(2.6)
  return {"module." + k: v for k, v in sd.items()}


# ---------------------------------------------------------------------------------------------------------------------
# numpy forward of the reference (PyTorch layout).
# ---------------------------------------------------------------------------------------------------------------------


def np_layer_norm(x, sd, name, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]


def np_linear(x, sd, name):
  y = x @ sd[name + ".weight"].astype(np.float64).T
  return y + sd[name + ".bias"] if name + ".bias" in sd else y


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_bicubic_time(x, out_len, a=-0.75):
  """F.interpolate(x, (out_len, F), mode='bicubic', align_corners=True) along axis 2 of (B, C, T, F), by loops."""
  t_in = x.shape[2]
  y = np.zeros(x.shape[:2] + (out_len,) + x.shape[3:])

  def kern(d):
    d = abs(d)
    if d <= 1:
      return ((a + 2) * d - (a + 3)) * d * d + 1
    if d < 2:
      return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return 0.0

  for i in range(out_len):
    src = i * (t_in - 1) / (out_len - 1)
    i0 = int(np.floor(src))
    t = src - i0
    for k in range(-1, 3):
      y[:, :, i] += kern(t - k) * x[:, :, min(max(i0 + k, 0), t_in - 1)]
  return y


def np_logmel(wave):
  out = []
  for w in wave:
    spec = np.abs(librosa.stft(w.astype(np.float64), n_fft=FE["n_fft"], hop_length=FE["hop_length"], center=True,
                               pad_mode="reflect", window="hann")) ** 2
    mel = librosa.filters.mel(sr=FE["sample_rate"], n_fft=FE["n_fft"], n_mels=FE["n_mels"], fmin=FE["fmin"],
                              fmax=FE["fmax"]) @ spec
    out.append(10 * np.log10(np.maximum(mel, 1e-10)).T)
  return np.stack(out)  # (B, T, mels)


def reference_forward(sd, wave):
  """LAION-CLAP audio encoder (eval) in numpy: returns the reference's outputs + projection."""
  sd = {k[len("module."):]: np.asarray(v, np.float64) for k, v in sd.items()}
  a = "audio_branch."
  sd = {**{k[len(a):]: v for k, v in sd.items() if k.startswith(a)},
        **{k: v for k, v in sd.items() if k.startswith("audio_projection.")}}
  x = np_logmel(wave)[:, None]  # (B, 1, T, F)
  x = (x - sd["bn0.running_mean"]) / np.sqrt(sd["bn0.running_var"] + 1e-5) * sd["bn0.weight"] + sd["bn0.bias"]
  # reshape_wav2img
  target_t = SPEC_SIZE * FREQ_RATIO
  if x.shape[2] < target_t:
    x = np_bicubic_time(x, target_t)
  x = x.transpose(0, 1, 3, 2)
  x = x.reshape(x.shape[0], 1, x.shape[2], FREQ_RATIO, x.shape[3] // FREQ_RATIO).transpose(0, 1, 3, 2, 4)
  x = x.reshape(x.shape[0], 1, x.shape[2] * x.shape[3], x.shape[4])
  frames_num = x.shape[2]
  # patch_embed: Conv2d(1, D, 4, stride 4) + flatten(2).transpose(1, 2) + LayerNorm
  b = x.shape[0]
  g = SPEC_SIZE // PATCH
  patches = x.reshape(b, 1, g, PATCH, g, PATCH)
  y = np.einsum("bchpwq,ocpq->bohw", patches, sd["patch_embed.proj.weight"]) + sd["patch_embed.proj.bias"][:, None,
                                                                                                           None]
  x = np_layer_norm(y.reshape(b, EMBED, -1).transpose(0, 2, 1), sd, "patch_embed.norm")
  for i, (res, blocks) in enumerate(reference_windows()):
    dim = EMBED * 2 ** i
    nh = HEADS[i]
    for j, (ws, ss) in enumerate(blocks):
      p = f"layers.{i}.blocks.{j}."
      shortcut = x
      h = np_layer_norm(x, sd, p + "norm1").reshape(b, res, res, dim)
      if ss:
        h = np.roll(h, (-ss, -ss), axis=(1, 2))
      win = ref_window_partition(h, ws).reshape(-1, ws * ws, dim)
      bw, n, _ = win.shape
      qkv = np_linear(win, sd, p + "attn.qkv").reshape(bw, n, 3, nh, dim // nh).transpose(2, 0, 3, 1, 4)
      q, k, v = qkv[0] * (dim // nh) ** -0.5, qkv[1], qkv[2]
      attn = q @ k.transpose(0, 1, 3, 2)
      bias = sd[p + "attn.relative_position_bias_table"][ref_relative_position_index(ws).reshape(-1)]
      attn = attn + bias.reshape(n, n, nh).transpose(2, 0, 1)[None]
      if ss:
        mask = ref_attn_mask(res, ws, ss)
        nw = mask.shape[0]
        attn = (attn.reshape(bw // nw, nw, nh, n, n) + mask[None, :, None]).reshape(-1, nh, n, n)
      out = (np_softmax(attn) @ v).transpose(0, 2, 1, 3).reshape(bw, n, dim)
      out = np_linear(out, sd, p + "attn.proj").reshape(-1, ws, ws, dim)
      h = ref_window_reverse(out, ws, res, res)
      if ss:
        h = np.roll(h, (ss, ss), axis=(1, 2))
      x = shortcut + h.reshape(b, res * res, dim)
      hid = np_linear(np_layer_norm(x, sd, p + "norm2"), sd, p + "mlp.fc1")
      x = x + np_linear(0.5 * hid * (1 + erf(hid / np.sqrt(2))), sd, p + "mlp.fc2")
    if i < len(DEPTHS) - 1:
      h = x.reshape(b, res, res, dim)
      h = np.concatenate([h[:, 0::2, 0::2], h[:, 1::2, 0::2], h[:, 0::2, 1::2], h[:, 1::2, 1::2]], -1)
      h = np_layer_norm(h.reshape(b, -1, 4 * dim), sd, f"layers.{i}.downsample.norm")
      x = h @ sd[f"layers.{i}.downsample.reduction.weight"].T
  x = np_layer_norm(x, sd, "norm")
  _, n, c = x.shape
  sf = frames_num // 2 ** (len(DEPTHS) - 1) // PATCH
  st = frames_num // 2 ** (len(DEPTHS) - 1) // PATCH
  x = x.transpose(0, 2, 1).reshape(b, c, sf, st)
  c_freq = sf // FREQ_RATIO
  x = x.reshape(b, c, sf // c_freq, c_freq, st).transpose(0, 1, 3, 2, 4).reshape(b, c, c_freq, -1)
  latent = x.reshape(b, c, -1).mean(-1)
  # tscam_conv: Conv2d(C, K, (c_freq, 3), padding (0, 1)) -> (B, K, 1, T)
  xp = np.pad(x, ((0, 0), (0, 0), (0, 0), (1, 1)))
  t_tok = x.shape[-1]
  conv = np.stack([np.einsum("bcfk,ocfk->bo", xp[..., t:t + 3], sd["tscam_conv.weight"]) for t in range(t_tok)], -1)
  conv = conv + sd["tscam_conv.bias"][None, :, None]  # (B, K, T)
  sig = 1 / (1 + np.exp(-conv))
  framewise = np.repeat(sig.transpose(0, 2, 1), 8 * PATCH // (2 ** (4 - len(DEPTHS))), axis=1)
  logits = conv.mean(-1)
  proj = np.maximum(latent @ sd["audio_projection.0.weight"].T + sd["audio_projection.0.bias"], 0)
  proj = proj @ sd["audio_projection.2.weight"].T + sd["audio_projection.2.bias"]
  tokens = x.transpose(0, 3, 2, 1)  # (B, T, c_freq, C)
  return {"clipwise_output": 1 / (1 + np.exp(-logits)), "logits": logits, "framewise_output": framewise,
          "embedding": latent, "tokens": tokens, "projection": proj}


# ---------------------------------------------------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------------------------------------------------


def _tiny_encoder(**kwargs):
  args = dict(mel_bins=FE["n_mels"], freq_ratio=FREQ_RATIO, target_frames=SPEC_SIZE * FREQ_RATIO, patch_size=PATCH,
              embed_dim=EMBED, depths=DEPTHS, num_heads=HEADS, window_size=WINDOW,
              frontend=htsat.clap_frontend(**FE))
  args.update(kwargs)
  return nnx.eval_shape(lambda: htsat.CLAPAudioEncoder(htsat.HTSAT(CLASSES, rngs=nnx.Rngs(0), **args), JOINT,
                                                        rngs=nnx.Rngs(0)))


def _rel(y, ref):
  y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
  assert y.shape == ref.shape, (y.shape, ref.shape)
  return float(np.abs(y - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="session")
def fake_sd():
  return fake_laion_state_dict()


@pytest.fixture(scope="session")
def waves():
  rng = np.random.default_rng(1)
  # 3712 samples -> 59 frames (stretched to 64 by bicubic interpolation); 4032 samples -> 64 frames (no stretch).
  short = (0.3 * rng.standard_normal((2, 3712))).astype(np.float32)
  exact = (0.3 * rng.standard_normal((1, 4032))).astype(np.float32)
  return short, exact


def test_key_map_is_the_reference_state_dict(fake_sd):
  encoder = _tiny_encoder()
  learned = {k[len("module."):]: v.shape for k, v in fake_sd.items()
             if not k.endswith(("relative_position_index", "attn_mask", "num_batches_tracked", "melW"))
             and "extractor" not in k and ".head." not in k and k.startswith(("module.audio_branch",
                                                                                 "module.audio_projection"))}
  assert clap.torch_shapes(encoder) == learned


def test_converted_model_matches_numpy_reference(fake_sd, waves):
  encoder = _tiny_encoder()
  report = clap.convert_clap(fake_sd, encoder)
  assert report["unused"] == ["audio_branch.head.bias", "audio_branch.head.weight"]
  assert report["ignored"] == ["audio_transform.sequential.0.weight", "logit_scale_a",
                               "text_branch.embeddings.word_embeddings.weight"]
  assert "audio_branch.logmel_extractor.melW" in report["buffers"]
  assert "audio_branch.layers.0.blocks.1.attn_mask" in report["buffers"]
  encoder.eval()
  fn = nnx.jit(lambda m, x: m(x))
  errors = {}
  for wave in waves:
    with jax.default_matmul_precision("highest"):
      out = jax.tree.map(np.asarray, fn(encoder, jnp.asarray(wave)))
    ref = reference_forward(fake_sd, wave)
    for key, value in ref.items():
      errors[(wave.shape[1], key)] = _rel(out[key], value)
  print("HTS-AT / CLAP vs numpy reference, max rel error:", max(errors.values()))
  assert max(errors.values()) <= REL_TOL, errors
  # The layout: 64 frames -> 8 time x 2 frequency tokens, framewise at the image's 64 frames.
  assert out["tokens"].shape == (1, 8, 2, 16) and out["framewise_output"].shape == (1, 64, CLASSES)


def test_strictness(fake_sd):
  encoder = _tiny_encoder()
  with pytest.raises(ValueError, match=r"missing keys \['layers.1.blocks.0.mlp.fc2.bias'\]"):
    clap.convert_clap({k: v for k, v in fake_sd.items() if not k.endswith("layers.1.blocks.0.mlp.fc2.bias")},
                      encoder)
  with pytest.raises(ValueError, match=r"unknown keys \['layers.0.blocks.0.attn.extra'\]"):
    clap.convert_clap({**fake_sd, "module.audio_branch.layers.0.blocks.0.attn.extra": np.zeros(3)}, encoder)
  with pytest.raises(ValueError, match="shape mismatches.*tscam_conv.weight"):
    clap.convert_clap({**fake_sd, "module.audio_branch.tscam_conv.weight": np.zeros((CLASSES, 16, 2, 5))}, encoder)
  with pytest.raises(ValueError, match="audio_projection.*missing keys.*2.bias"):
    clap.convert_clap({k: v for k, v in fake_sd.items() if k != "module.audio_projection.2.bias"}, encoder)
  with pytest.raises(ValueError, match="feature-fusion"):
    clap.convert_clap({**fake_sd, "module.audio_branch.fusion_model.local_att.0.weight": np.zeros(3)}, encoder)
  bad_index = fake_sd["module.audio_branch.layers.0.blocks.0.attn.relative_position_index"].T.copy()
  with pytest.raises(ValueError, match="relative_position_index: differs"):
    clap.convert_clap({**fake_sd, "module.audio_branch.layers.0.blocks.0.attn.relative_position_index": bad_index},
                      encoder)
  # A front end at another rate than the checkpoint's mel filterbank was made for is refused.
  wrong_rate = _tiny_encoder(frontend=htsat.clap_frontend(**{**FE, "fmax": 3000.0}))
  with pytest.raises(ValueError, match="mel filterbank"):
    clap.convert_clap(fake_sd, wrong_rate)


def test_load_checkpoint_file_infers_the_architecture(fake_sd, tmp_path):
  common.write_safetensors(tmp_path / "clap.safetensors", {k: np.asarray(v) for k, v in fake_sd.items()})
  encoder = clap.load_clap_checkpoint(tmp_path / "clap.safetensors", frontend=htsat.clap_frontend(**FE))
  branch = encoder.audio_branch
  assert (branch.embed_dim, branch.depths, branch.num_heads, branch.window_size) == (EMBED, DEPTHS, HEADS, WINDOW)
  assert (branch.freq_ratio, branch.target_frames, branch.num_classes, encoder.joint_dim) == (2, 64, CLASSES, JOINT)
  assert branch.deterministic
  np.savez(tmp_path / "bare.npz", **{k.replace("module.audio_branch.", "sed_model."): np.asarray(v)
                                     for k, v in fake_sd.items() if k.startswith("module.audio_branch.")})
  bare = clap.load_htsat_checkpoint(tmp_path / "bare.npz", frontend=htsat.clap_frontend(**FE))
  for a, b in zip(jax.tree.leaves(nnx.state(encoder.audio_branch)), jax.tree.leaves(nnx.state(bare))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(encoder.audio_projection.linear2.kernel[...]),
                                fake_sd["module.audio_projection.2.weight"].T)


def test_clap_htsat_tiny_layout():
  """The released LAION-CLAP HTSAT-tiny: 10 s at 48 kHz -> 1001 frames -> 256 x 256 image -> 32 x 2 x 768 tokens."""
  model = nnx.eval_shape(lambda: htsat.clap_htsat_tiny(rngs=nnx.Rngs(0)))
  branch = model.audio_branch
  assert branch.image_size == (256, 256) and branch.grid == (64, 64)
  assert branch.stage_windows == ((8, 4), (8, 4), (8, 4), (8, 0))
  assert branch.token_grid(1001) == (32, 2) and branch.frames_per_token == 32 and branch.num_features == 768
  assert branch.frontend.num_frames(480000) == 1001
  shapes = clap.torch_shapes(model)
  assert shapes["audio_branch.tscam_conv.weight"] == (527, 768, 2, 3)
  assert shapes["audio_branch.layers.3.blocks.1.attn.relative_position_bias_table"] == (225, 32)
  assert shapes["audio_branch.layers.2.downsample.reduction.weight"] == (768, 1536)
  assert shapes["audio_projection.0.weight"] == (512, 768)
  # Parameter count from the reference's module shapes (head Linear(527, 527) excluded: never called).
  n = 96 * 16 + 96 + 2 * 96 + 64 * 2
  for i, depth in enumerate((2, 2, 6, 2)):
    c, heads = 96 * 2 ** i, (4, 8, 16, 32)[i]
    n += depth * (4 * c + 3 * c * c + 3 * c + c * c + c + 225 * heads + 4 * c * c + 4 * c + 4 * c * c + c)
    if i < 3:
      n += 8 * c + 4 * c * 2 * c
  n += 2 * 768 + 768 * 527 * 6 + 527 + 768 * 512 + 512 + 512 * 512 + 512
  assert htsat.count_params(model) == n
