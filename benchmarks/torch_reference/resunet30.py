"""PyTorch ResUNet30 with bytedance/uss's state_dict layout (``uss.models.resunet.ResUNet30``), benchmark-only.

Written for the side-by-side figures of ``benchmarks/resunet.py``; it needs only torch + numpy and is run with a
separate interpreter (``--torch_python``), so torch never becomes a dependency of uss_jax. Architecture as in
bytedance/uss ``models/resunet.py``: STFT 2048/320 (hann, centre, reflect) magnitude + phase, BatchNorm over
frequency bins, 1x1 pre-conv, 6 residual encoder blocks (32..384 channels, 2x2 / 1x2 average pooling), a centre
block, 6 decoder blocks (kernel = stride transposed conv, skip concat, residual block), 1x1 after-conv to 3 maps
(magnitude mask, complex phase mask), iSTFT. FiLM: one Linear(condition -> channels) per BatchNorm of every block,
added before the leaky ReLU (the decoder blocks' ``bn2`` / ``beta2`` exist but are unused, as upstream).

The STFT uses ``torch.stft`` / ``torch.istft`` (upstream uses torchlibrosa's conv-DFT); the conv kernels are kept
as buffers so the state_dict has upstream's keys and loads with ``strict=True``. Since bytedance/uss's conv STFT is
slower than ``torch.stft``, the timed torch model here is, if anything, faster than upstream.

``python benchmarks/torch_reference/resunet30.py --fixture DIR --seconds S --sep_batch B --train_batches 1,4``
checks the model against the parity fixture (weight rule on ``manifest.json``, ``inputs.npz`` -> ``outputs.npz``)
and then prints one JSON line with the parity error and the timings.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import zlib

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

N_FFT, HOP = 2048, 320
MOMENTUM = 0.01


class ConvBlockRes(nn.Module):

  def __init__(self, cin: int, cout: int):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin, momentum=MOMENTUM)
    self.bn2 = nn.BatchNorm2d(cout, momentum=MOMENTUM)
    self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
    self.is_shortcut = cin != cout
    if self.is_shortcut:
      self.shortcut = nn.Conv2d(cin, cout, 1)
    self.has_film = True

  def forward(self, x, film):
    h = self.conv1(F.leaky_relu(self.bn1(x) + film["beta1"], 0.01))
    h = self.conv2(F.leaky_relu(self.bn2(h) + film["beta2"], 0.01))
    return (self.shortcut(x) if self.is_shortcut else x) + h


class EncoderBlockRes1B(nn.Module):

  def __init__(self, cin: int, cout: int, downsample):
    super().__init__()
    self.conv_block1 = ConvBlockRes(cin, cout)
    self.downsample = downsample

  def forward(self, x, film):
    enc = self.conv_block1(x, film["conv_block1"])
    return F.avg_pool2d(enc, kernel_size=self.downsample), enc


class DecoderBlockRes1B(nn.Module):

  def __init__(self, cin: int, cout: int, upsample):
    super().__init__()
    self.conv1 = nn.ConvTranspose2d(cin, cout, kernel_size=upsample, stride=upsample, bias=False)
    self.bn1 = nn.BatchNorm2d(cin, momentum=MOMENTUM)
    self.conv_block2 = ConvBlockRes(cout * 2, cout)
    self.bn2 = nn.BatchNorm2d(cin, momentum=MOMENTUM)  # unused, as upstream
    self.has_film = True

  def forward(self, x, skip, film):
    h = self.conv1(F.leaky_relu(self.bn1(x) + film["beta1"], 0.01))
    return self.conv_block2(torch.cat((h, skip), dim=1), film["conv_block2"])


def _hann(n: int) -> np.ndarray:
  return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


class _Stft(nn.Module):
  """Holds torchlibrosa's conv-DFT kernels (state_dict keys only); computes with ``torch.stft``."""

  def __init__(self):
    super().__init__()
    w, n, k = _hann(N_FFT), np.arange(N_FFT), np.arange(N_FFT // 2 + 1)[:, None]
    self.conv_real = nn.Conv1d(1, N_FFT // 2 + 1, N_FFT, stride=HOP, bias=False)
    self.conv_imag = nn.Conv1d(1, N_FFT // 2 + 1, N_FFT, stride=HOP, bias=False)
    self.conv_real.weight.data = torch.tensor((w * np.cos(2 * np.pi * k * n / N_FFT))[:, None], dtype=torch.float32)
    self.conv_imag.weight.data = torch.tensor((-w * np.sin(2 * np.pi * k * n / N_FFT))[:, None], dtype=torch.float32)
    for p in self.parameters():
      p.requires_grad_(False)
    self.register_buffer("window", torch.tensor(w, dtype=torch.float32), persistent=False)

  def forward(self, x):  # (B, T) -> complex (B, frames, bins)
    return torch.stft(x, N_FFT, HOP, window=self.window, center=True, pad_mode="reflect",
                      return_complex=True).transpose(1, 2)


class _Istft(nn.Module):

  def __init__(self):
    super().__init__()
    w, n, k = _hann(N_FFT), np.arange(N_FFT)[:, None], np.arange(N_FFT)
    self.conv_real = nn.Conv1d(N_FFT, N_FFT, 1, bias=False)
    self.conv_imag = nn.Conv1d(N_FFT, N_FFT, 1, bias=False)
    self.conv_real.weight.data = torch.tensor((w[:, None] * np.cos(2 * np.pi * k * n / N_FFT) / N_FFT)[..., None],
                                              dtype=torch.float32)
    self.conv_imag.weight.data = torch.tensor((w[:, None] * np.sin(2 * np.pi * k * n / N_FFT) / N_FFT)[..., None],
                                              dtype=torch.float32)
    for p in self.parameters():
      p.requires_grad_(False)
    self.register_buffer("ola_window", torch.tensor(w ** 2, dtype=torch.float32))
    self.register_buffer("window", torch.tensor(w, dtype=torch.float32), persistent=False)

  def forward(self, real, imag, length: int):  # (B, frames, bins) x 2 -> (B, length)
    spec = torch.complex(real, imag).transpose(1, 2)
    return torch.istft(spec, N_FFT, HOP, window=self.window, center=True, length=length)


class ResUNet30_Base(nn.Module):  # pylint: disable=invalid-name

  def __init__(self, input_channels: int = 1, output_channels: int = 1):
    super().__init__()
    self.output_channels, self.K = output_channels, 3
    self.stft, self.istft = _Stft(), _Istft()
    self.bn0 = nn.BatchNorm2d(N_FFT // 2 + 1, momentum=MOMENTUM)
    self.pre_conv = nn.Conv2d(input_channels, 32, 1)
    ch = [32, 32, 64, 128, 256, 384, 384]
    for i in range(6):
      setattr(self, f"encoder_block{i + 1}",
              EncoderBlockRes1B(ch[i], ch[i + 1], (2, 2) if i < 5 else (1, 2)))
    self.conv_block7a = EncoderBlockRes1B(384, 384, (1, 1))
    dec = [384, 384, 384, 256, 128, 64, 32]
    for i in range(6):
      setattr(self, f"decoder_block{i + 1}", DecoderBlockRes1B(dec[i], dec[i + 1], (1, 2) if i == 0 else (2, 2)))
    self.after_conv = nn.Conv2d(32, output_channels * self.K, 1)

  def forward(self, mixtures, film, extras: dict | None = None):
    b, c, length = mixtures.shape
    spec = self.stft(mixtures.reshape(b * c, length))
    mag = spec.abs()
    denom = mag.clamp(min=1e-10)
    cos_in = (spec.real / denom).reshape(b, c, *mag.shape[1:])
    sin_in = (spec.imag / denom).reshape(b, c, *mag.shape[1:])
    mag = mag.reshape(b, c, *mag.shape[1:])  # (B, C, T, F)
    x = self.bn0(mag.transpose(1, 3)).transpose(1, 3)
    frames = x.shape[2]
    x = F.pad(x, (0, 0, 0, int(math.ceil(frames / 32)) * 32 - frames))
    x = self.pre_conv(x[..., :-1])
    skips = []
    for i in range(6):
      x, skip = getattr(self, f"encoder_block{i + 1}")(x, film[f"encoder_block{i + 1}"])
      skips.append(skip)
    x, _ = self.conv_block7a(x, film["conv_block7a"])
    for i in range(6):
      x = getattr(self, f"decoder_block{i + 1}")(x, skips[5 - i], film[f"decoder_block{i + 1}"])
    x = F.pad(self.after_conv(x), (0, 1))[:, :, :frames]
    # mask: sigmoid magnitude, tanh (real, imag) normalised to a unit phasor
    x = x.reshape(b, 1, self.output_channels, self.K, frames, x.shape[-1])
    mask_mag = torch.sigmoid(x[:, :, :, 0])
    mr, mi = torch.tanh(x[:, :, :, 1]), torch.tanh(x[:, :, :, 2])
    mm = (mr ** 2 + mi ** 2) ** 0.5
    mcos, msin = mr / mm.clamp(min=1e-10), mi / mm.clamp(min=1e-10)
    out_cos = cos_in[:, None] * mcos - sin_in[:, None] * msin
    out_sin = sin_in[:, None] * mcos + cos_in[:, None] * msin
    out_mag = F.relu(mag[:, None] * mask_mag)
    shape = (-1, frames, x.shape[-1])
    wav = self.istft((out_mag * out_cos).reshape(shape), (out_mag * out_sin).reshape(shape), length)
    if extras is not None:
      extras.update(mask_logits=x.reshape(b, -1, frames, x.shape[-1]), mixture_mag=mag,
                    mask_mag=mask_mag.reshape(b, -1, frames, x.shape[-1]))
    return {"waveform": wav.reshape(b, -1, length)}


def _film_meta(module: nn.Module) -> dict:
  meta = {}
  if getattr(module, "has_film", False):
    meta["beta1"], meta["beta2"] = module.bn1.num_features, module.bn2.num_features
  for name, child in module.named_children():
    sub = _film_meta(child)
    if sub:
      meta[name] = sub
  return meta


class FiLM(nn.Module):

  def __init__(self, meta: dict, condition_size: int):
    super().__init__()
    self.meta = meta
    self._names = []

    def walk(m, prefix):
      for k, v in m.items():
        if isinstance(v, dict):
          walk(v, prefix + [k])
        else:
          name = "->".join(prefix + [k])
          self.add_module(name, nn.Linear(condition_size, v))
          self._names.append(prefix + [k])

    walk(meta, [])

  def forward(self, conditions):
    out: dict = {}
    for path in self._names:
      d = out
      for p in path[:-1]:
        d = d.setdefault(p, {})
      d[path[-1]] = getattr(self, "->".join(path))(conditions)[:, :, None, None]
    return out


class ResUNet30(nn.Module):

  def __init__(self, input_channels: int = 1, output_channels: int = 1, condition_size: int = 2048):
    super().__init__()
    self.base = ResUNet30_Base(input_channels, output_channels)
    self.film = FiLM(_film_meta(self.base), condition_size)

  def forward(self, input_dict, extras: dict | None = None):
    return self.base(input_dict["mixture"], self.film(input_dict["condition"]), extras)


# ---------------------------------------------------------------------------------------------------------------
def rule_state_dict(manifest: list, model: nn.Module) -> dict:
  """The parity fixtures' weight rule (``/work/shared/fixtures/parity/README.md``) on the manifest's keys."""
  own = model.state_dict()
  sd = {}
  for key, shape, _, _ in manifest:
    if key.endswith("num_batches_tracked") or any(s in key for s in ("stft", "istft", "spectrogram_extractor",
                                                                       "logmel_extractor", "melW")):
      sd[key] = own[key]
      continue
    x = np.random.default_rng(zlib.crc32(key.encode("utf-8"))).standard_normal(shape)
    if key.endswith("running_var"):
      v = 1 + 0.1 * np.abs(x)
    elif key.endswith("running_mean"):
      v = 0.1 * x
    elif len(shape) == 1 and key.endswith("weight"):
      v = 1 + 0.1 * x
    elif key.endswith("bias"):
      v = 0.1 * x
    elif len(shape) >= 2:
      v = x / np.sqrt(np.prod(shape[1:]))
    else:
      v = 0.02 * x
    sd[key] = torch.tensor(v.astype(np.float32))
  return sd


def parity(fixture: str) -> dict:
  model = ResUNet30()
  manifest = json.load(open(f"{fixture}/manifest.json", encoding="utf-8"))
  keys = [k for k, *_ in manifest]
  if set(keys) != set(model.state_dict()):
    missing = set(keys) ^ set(model.state_dict())
    raise AssertionError(f"state_dict keys differ from the manifest ({len(missing)}): {sorted(missing)[:6]}")
  model.load_state_dict(rule_state_dict(manifest, model), strict=True)
  model.eval()
  inp, ref = np.load(f"{fixture}/inputs.npz"), np.load(f"{fixture}/outputs.npz")
  extras: dict = {}
  with torch.inference_mode():
    out = model({"mixture": torch.tensor(inp["mixture"]), "condition": torch.tensor(inp["condition"])}, extras)
  got = {"waveform": out["waveform"], **extras}
  errs = {}
  for k, v in got.items():
    r = ref[k]
    errs[k] = float(np.max(np.abs(v.numpy() - r)) / np.max(np.abs(r)))
  return {"rel_err": errs, "params": sum(p.numel() for p in model.parameters()), "model": model}


def hann_periodic(n: int) -> np.ndarray:
  return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def separate(model, x: np.ndarray, cond: np.ndarray, chunk: int, batch: int) -> np.ndarray:
  """``uss-jax separate``'s chunking: ``hop = chunk/2`` zeros in front, chunks every hop so that each sample lies in
  two chunks, the model on ``batch`` chunks at a time (last batch padded with silence), periodic-Hann overlap-add."""
  hop = chunk // 2
  n = len(x)
  count = -(-(n + hop) // hop)
  padded = np.zeros((count + 1) * hop, np.float32)
  padded[hop:hop + n] = x
  w = torch.tensor(hann_periodic(chunk))
  out = torch.zeros(len(padded))
  c = torch.tensor(cond)[None]
  with torch.inference_mode():
    for s in range(0, count, batch):
      idx = list(range(s, min(s + batch, count)))
      chunks = np.zeros((batch, chunk), np.float32)
      for j, i in enumerate(idx):
        chunks[j] = padded[i * hop:i * hop + chunk]
      y = model({"mixture": torch.from_numpy(chunks)[:, None], "condition": c.expand(batch, -1)})["waveform"][:, 0]
      for j, i in enumerate(idx):
        out[i * hop:i * hop + chunk] += y[j] * w
  return out[hop:hop + n].numpy()


def check_chunking(seconds: float = 9.3, chunk: int = 4 * 32000, batch: int = 4) -> float:
  """Max |error| of ``separate`` with an identity model: constant overlap-add must give the input back, as
  ``uss_jax.audio.streaming.overlap_add`` does for a memoryless model."""
  x = np.random.default_rng(1).standard_normal(int(seconds * 32000)).astype(np.float32)
  y = separate(lambda d: {"waveform": d["mixture"]}, x, np.zeros(2048, np.float32), chunk, batch)
  return float(np.max(np.abs(y - x)))


def time_separation(model, seconds: float, batch: int, repeats: int) -> dict:
  rng = np.random.default_rng(0)
  x = (0.1 * rng.standard_normal(int(round(seconds * 32000)))).astype(np.float32)
  cond = rng.standard_normal(2048).astype(np.float32)
  cond /= np.linalg.norm(cond)
  chunk = 4 * 32000
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    separate(model, x, cond, chunk, batch)
    times.append(time.perf_counter() - t)
  hop = chunk // 2
  return {"seconds": seconds, "batch_size": batch, "chunks": -(-(len(x) + hop) // hop), "times_s": times,
          "best_s": min(times), "rtf_best": min(times) / seconds}


def time_train(batch: int, steps: int) -> dict:
  torch.manual_seed(0)
  model = ResUNet30().train()
  opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.999),
                          eps=1e-8, weight_decay=0.0, amsgrad=True)
  rng = np.random.default_rng(batch)
  mixture = torch.tensor((rng.standard_normal((batch, 1, 64000)) * 0.1).astype(np.float32))
  target = mixture * 0.5
  cond = torch.tensor(rng.standard_normal((batch, 2048)).astype(np.float32))
  times, loss = [], None
  for _ in range(steps + 1):
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = torch.mean(torch.abs(model({"mixture": mixture, "condition": cond})["waveform"] - target))
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t)
  return {"batch": batch, "first_s": times[0], "step_s": float(np.median(times[1:])), "loss": float(loss)}


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--fixture", required=True)
  p.add_argument("--seconds", type=float, default=120.0)
  p.add_argument("--sep_batch", type=int, default=4)
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--train_batches", default="1,4")
  p.add_argument("--steps", type=int, default=3)
  a = p.parse_args()
  torch.set_num_threads(2)
  res = parity(a.fixture)
  model = res.pop("model")
  res["torch"] = torch.__version__
  res["max_rel_err"] = max(res["rel_err"].values())
  if res["max_rel_err"] > 1e-4:
    print(json.dumps(res))
    raise SystemExit(f"the torch reference does not match the fixture: {res['rel_err']}")
  res["chunking_identity_err"] = check_chunking()
  if res["chunking_identity_err"] > 1e-5:
    raise SystemExit(f"the torch chunking does not overlap-add to the identity: {res['chunking_identity_err']}")
  if a.seconds > 0:
    res["separation"] = time_separation(model, a.seconds, a.sep_batch, a.repeats)
  res["train"] = [time_train(int(b), a.steps) for b in a.train_batches.split(",") if b]
  print("RESULT " + json.dumps(res))


if __name__ == "__main__":
  main()
