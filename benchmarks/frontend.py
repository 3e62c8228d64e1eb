"""Throughput of the uss_jax front ends (jitted, CPU by default) vs the CPU reference libraries, in one run.

Usage: python benchmarks/frontend.py [--batch 16] [--seconds 10] [--reps 5] [--only panns,m2d]

For every front end of ``uss_jax.audio.frontends`` it times a batch of ``batch`` random waveforms of ``seconds``
seconds at the front end's sample rate: the jitted JAX function (compilation excluded), and the reference
implementation on the CPU (librosa for the STFT / mel ones, kaldi_native_fbank for the Kaldi fbank, numpy for
VGGish's framing), and prints a table (examples/s, ms/batch, speed-up). A second table compares the three framing
methods of ``uss_jax.audio.stft.frame`` inside a jitted STFT (forward, and forward + backward). Times are medians
of ``reps`` runs; they depend on the machine and its load, so nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import kaldi_native_fbank as knf
import librosa
import numpy as np

from uss_jax.audio import frontends as F
from uss_jax.audio import stft as stft_lib


def _median_ms(fn, reps: int) -> float:
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append((time.perf_counter() - t) * 1e3)
  return statistics.median(times)


def _librosa_panns(x, fe: F.PannsLogMel):
  s = librosa.feature.melspectrogram(y=x, sr=fe.sample_rate, n_fft=fe.n_fft, hop_length=fe.hop_length,
                                     center=True, pad_mode="reflect", power=2.0, n_mels=fe.n_mels, fmin=fe.fmin,
                                     fmax=fe.fmax)
  return librosa.power_to_db(s, ref=1.0, amin=1e-10, top_db=None)


def _librosa_m2d(x, fe: F.M2DLogMel):
  s = librosa.feature.melspectrogram(y=x, sr=fe.sample_rate, n_fft=fe.n_fft, win_length=fe.win_length,
                                     hop_length=fe.hop_length, center=True, pad_mode="reflect", power=2.0,
                                     n_mels=fe.n_mels, fmin=fe.fmin, fmax=fe.fmax)
  return (np.log(s + fe.log_eps) - fe.norm_stats[0]) / fe.norm_stats[1]


def _librosa_uss(x, fe: F.UssMagnitude):
  s = librosa.stft(x, n_fft=fe.n_fft, hop_length=fe.hop_length, pad_mode="reflect")
  return np.sqrt(np.maximum(s.real ** 2 + s.imag ** 2, fe.eps))


def _librosa_care(x, fe: F.CareBandSplit):
  mag = np.abs(librosa.stft(x, n_fft=fe.n_fft, hop_length=fe.hop_length, pad_mode="reflect"))
  layout = fe.layout()
  return np.swapaxes(mag, -1, -2)[..., layout.index] * layout.mask


def _numpy_vggish(x, fe: F.VGGishLogMel):
  frames = np.swapaxes(librosa.util.frame(x, frame_length=fe.win_length, hop_length=fe.hop_length, axis=-1), -1, -2)
  window = 0.5 - 0.5 * np.cos(2 * np.pi / fe.win_length * np.arange(fe.win_length))
  mag = np.abs(np.fft.rfft(frames * window, fe.n_fft))
  return np.log(mag @ fe.filterbank() + fe.log_offset)


def _knf_audiomae(x, fe: F.AudioMAEFbank):
  opts = knf.FbankOptions()
  opts.frame_opts.dither = 0.0
  opts.frame_opts.samp_freq = fe.sample_rate
  opts.frame_opts.window_type = fe.window_type
  opts.mel_opts.num_bins = fe.num_mel_bins
  opts.htk_compat = True
  mean, std = fe.stats
  out = []
  for clip in x:
    clip = clip - clip.mean()
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(fe.sample_rate, clip)
    fb.input_finished()
    feats = np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])
    feats = np.pad(feats, ((0, max(0, fe.target_frames - feats.shape[0])), (0, 0)))[:fe.target_frames]
    out.append((feats - mean) / (2 * std))
  return np.stack(out)


REFERENCES = {
    "panns": ("librosa", _librosa_panns),
    "uss": ("librosa", _librosa_uss),
    "audiomae": ("kaldi_native_fbank", _knf_audiomae),
    "m2d": ("librosa", _librosa_m2d),
    "vggish": ("numpy+librosa.util.frame", _numpy_vggish),
    "care_bandsplit": ("librosa", _librosa_care),
}


def benchmark_frontends(batch: int, seconds: float, reps: int, only: list[str] | None) -> list[dict]:
  rows = []
  for name in F.FRONTENDS:
    if only and name not in only:
      continue
    fe = F.get_frontend(name)
    n = int(seconds * fe.sample_rate)
    x = (np.random.default_rng(0).standard_normal((batch, n)) * 0.1).astype(np.float32)
    xj = jnp.asarray(x)
    fn = jax.jit(fe)
    out = jax.block_until_ready(fn(xj))  # compile
    jax_ms = _median_ms(lambda: fn(xj), reps)
    # A random cotangent passed as an argument (a constant one lets XLA constant-fold the backward scatters).
    ct = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape).astype(np.float32))
    grad = jax.jit(jax.grad(lambda w, c: jnp.sum(fe(w) * c)))
    jax.block_until_ready(grad(xj, ct))
    grad_ms = _median_ms(lambda: grad(xj, ct), max(1, reps // 2))
    ref_name, ref_fn = REFERENCES[name]
    ref_fn(x[:1], fe)  # warm caches (filterbanks, FFT plans)
    ref_ms = _median_ms(lambda: ref_fn(x, fe), reps)
    rows.append(dict(name=name, shape=f"{batch}x{n}", out=str(tuple(out.shape)), jax_ms=jax_ms, grad_ms=grad_ms,
                     ref=ref_name, ref_ms=ref_ms))
  return rows


def benchmark_framing(batch: int, seconds: float, reps: int) -> list[dict]:
  n = int(seconds * 32000)
  x = jnp.asarray((np.random.default_rng(1).standard_normal((batch, n)) * 0.1).astype(np.float32))
  rows = []
  for method in ("slices", "gather", "conv"):
    fwd = jax.jit(lambda w, m=method: stft_lib.power(stft_lib.stft(w, 1024, 320, frame_method=m)))
    bwd = jax.jit(jax.grad(lambda w, c, m=method: jnp.sum(stft_lib.power(stft_lib.stft(w, 1024, 320, frame_method=m))
                                                          * c)))
    out = jax.block_until_ready(fwd(x))
    ct = jnp.asarray(np.random.default_rng(2).standard_normal(out.shape).astype(np.float32))
    jax.block_until_ready(bwd(x, ct))
    rows.append(dict(method=method, fwd_ms=_median_ms(lambda: fwd(x), reps),
                     grad_ms=_median_ms(lambda: bwd(x, ct), max(1, reps // 2))))
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--only", type=str, default="", help="comma-separated front-end names")
  parser.add_argument("--no-framing", action="store_true", help="skip the framing-method table")
  args = parser.parse_args()
  only = [s for s in args.only.split(",") if s]
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.devices()[0].device_kind}); librosa "
        f"{librosa.__version__}; batch {args.batch} x {args.seconds:g} s; median of {args.reps} runs\n")
  rows = benchmark_frontends(args.batch, args.seconds, args.reps, only)
  head = (f"| {'front end':<15}| {'input':<11}| {'output':<19}| {'jax ms/batch':>12} | {'jax ex/s':>9} "
          f"| {'jax fwd+bwd ms':>14} | {'reference':<25}| {'ref ms/batch':>12} | {'ref ex/s':>9} | {'speed-up':>8} |")
  print(head)
  print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
  for r in rows:
    b = args.batch
    print(f"| {r['name']:<15}| {r['shape']:<11}| {r['out']:<19}| {r['jax_ms']:>12.1f} | {b / r['jax_ms'] * 1e3:>9.1f} "
          f"| {r['grad_ms']:>14.1f} | {r['ref']:<25}| {r['ref_ms']:>12.1f} | {b / r['ref_ms'] * 1e3:>9.1f} "
          f"| {r['ref_ms'] / r['jax_ms']:>7.2f}x |")
  if not args.no_framing:
    print(f"\nSTFT 1024/320 power spectrogram, batch {args.batch} x {args.seconds:g} s at 32 kHz, by framing method:")
    print("| method | fwd ms/batch | fwd+bwd ms/batch |")
    print("|--------|--------------|------------------|")
    for r in benchmark_framing(args.batch, args.seconds, args.reps):
      print(f"| {r['method']:<6} | {r['fwd_ms']:>12.1f} | {r['grad_ms']:>16.1f} |")


if __name__ == "__main__":
  main()
