"""AudioMAE pretraining step throughput (ViT-B/16 + 16-block Swin decoder): examples/s, step time, MFU on accelerators.

Usage: python benchmarks/mae.py [--batch 2] [--frames 1024] [--mask-ratio 0.8] [--decoder audiomae_swin]
                                [--steps 3] [--dtype float32] [--attention einsum] [--waveform]
       (on a GPU: --batch 64,128 --dtype bfloat16 --attention dot_product_attention)

The step: normalised fbank (batch, frames, 128) -> random masking (0.8: 102 of 512 tokens kept) -> ViT-B encoder ->
decoder (default AudioMAE's released decoder_mode 1: 16 Swin-V2-style blocks, 512-d) -> per-patch normalised MSE on
the masked patches -> backward -> AdamW (0.9, 0.95, wd 1e-4), jitted with the state donated, compilation excluded.
``--waveform`` feeds 10 s waveforms and includes the Kaldi fbank front end as the trainer does. FLOPs come from XLA's
cost analysis of the compiled step; MFU = FLOPs / step time / device peak (``uss_jax.train.trainer.PEAK_FLOPS``;
none on CPU). The PyTorch reference column is facebookresearch/AudioMAE ``MaskedAutoencoderViT`` (decoder_mode 1,
fbank input, fwd + bwd + AdamW) measured by the project lead on the 2-core development CPU at batch 2 (~2.5 s per
step); it is a fixed figure, not re-measured here (torch is not a dependency). Prints a table, asserts nothing.
"""

from __future__ import annotations

import argparse
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import uss_jax  # noqa: F401  (flax eager sharding off)
from uss_jax import losses
from uss_jax.audio import frontends
from uss_jax.models import mae, vit
from uss_jax.train import trainer

# facebookresearch/AudioMAE pretraining model, batch 2, 1024 x 128, 2-core development CPU (figure from the lead).
TORCH_REFERENCE_CPU_STEP_S = {2: 2.5}


def bench(batch: int, frames: int, mask_ratio: float, decoder: str, steps: int, dtype: str, attention: str,
          waveform: bool) -> dict[str, float]:
  rngs = nnx.Rngs(0)
  dt = jnp.dtype(dtype)
  encoder = vit.build_vit("base", img_size=(frames, 128), global_pool=False, num_classes=0, drop_path=0.0,
                          pos_embed_layout="audiomae", attention=attention, dtype=dt, rngs=rngs)
  dec = mae.build_decoder(768, 256, decoder, pos_embed_layout="audiomae", attention=attention, dtype=dt, rngs=rngs)
  model = mae.MaskedAutoencoder(encoder, dec, mask_ratio=mask_ratio)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  state = trainer.TrainState(model, optax.adamw(4e-4, b1=0.9, b2=0.95, weight_decay=1e-4))
  graphdef, params = nnx.split(state)
  frontend = frontends.get_frontend("audiomae", target_frames=frames)

  def step(params, x, key):
    ts = nnx.merge(graphdef, params)
    ts.model.train()

    def loss_fn(m):
      fbank = frontend(x) if waveform else x
      out = m(fbank, rngs=nnx.Rngs(default=key))
      return losses.masked_patch_mse(out["pred"], out["target_patches"], out["mask"])

    loss, grads = nnx.value_and_grad(loss_fn)(ts.model)
    ts.opt.update(ts.model, grads)
    return nnx.state(ts), loss

  rng = np.random.default_rng(0)
  if waveform:
    x = jnp.asarray(rng.standard_normal((batch, 16000 * 10)) * 0.1, jnp.float32)
  else:
    x = jnp.asarray(rng.standard_normal((batch, frames, 128)) * 0.5, jnp.float32)
  t0 = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0).lower(params, x, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - t0
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  flops = float((analysis or {}).get("flops", 0.0))
  params, loss = compiled(params, x, jax.random.key(0))  # warm-up
  jax.block_until_ready(loss)
  times = []
  for i in range(steps):
    t = time.perf_counter()
    params, loss = compiled(params, x, jax.random.key(i + 1))
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  peak = trainer.peak_flops(jax.devices()[0])
  return {"batch": batch, "params_m": n_params / 1e6, "compile_s": compile_s, "step_s": step_s,
          "examples_per_s": batch / step_s, "gflop_per_step": flops / 1e9,
          "mfu": flops / step_s / peak if peak else float("nan"), "loss": float(loss)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", default="2")
  p.add_argument("--frames", type=int, default=1024)
  p.add_argument("--mask-ratio", type=float, default=0.8)
  p.add_argument("--decoder", default="audiomae_swin", choices=sorted(mae.DECODER_PRESETS))
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--attention", default="einsum", choices=["einsum", "dot_product_attention"])
  p.add_argument("--waveform", action="store_true", help="include the Kaldi fbank front end (10 s waveforms)")
  a = p.parse_args()
  dev = jax.devices()[0]
  print(f"AudioMAE pretraining step (fwd + bwd + AdamW): ViT-B/16, {a.frames} x 128, mask {a.mask_ratio}, decoder "
        f"{a.decoder}, {a.dtype}, attention {a.attention}, input {'waveform' if a.waveform else 'fbank'}, "
        f"device {dev.platform}:{dev.device_kind}, jax {jax.__version__}")
  print(f"{'batch':>5} {'params M':>9} {'compile s':>10} {'step s':>8} {'examples/s':>11} {'GFLOP/step':>11} "
        f"{'MFU':>6} {'torch step s':>13} {'ratio':>6}")
  for b in [int(x) for x in a.batch.split(",")]:
    r = bench(b, a.frames, a.mask_ratio, a.decoder, a.steps, a.dtype, a.attention, a.waveform)
    ref = TORCH_REFERENCE_CPU_STEP_S.get(b) if dev.platform == "cpu" and a.frames == 1024 else None
    mfu = "-" if np.isnan(r["mfu"]) else f"{r['mfu']:.1%}"
    ref_s = f"~{ref:.1f}" if ref else "-"
    ratio = f"{r['step_s'] / ref:.2f}" if ref else "-"
    print(f"{r['batch']:>5} {r['params_m']:>9.2f} {r['compile_s']:>10.1f} {r['step_s']:>8.3f} "
          f"{r['examples_per_s']:>11.3f} {r['gflop_per_step']:>11.1f} {mfu:>6} {ref_s:>13} {ratio:>6}")


if __name__ == "__main__":
  main()
