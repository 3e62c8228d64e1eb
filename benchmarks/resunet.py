"""Full-size ResUNet30 (bytedance/uss) on the CPU: train-step time and separation real-time factor.

Train step = forward + backward of the L1 waveform loss ``mean|y_hat - y|`` + AdamW (amsgrad, lr 1e-3, betas
(0.9, 0.999), wd 0; ``uss_jax.train.optim.make_optimizer``), BatchNorm in train mode, on 2 s segments at 32 kHz
(64,000 samples), jitted with the state donated. Separation: ``uss_jax.inference.real_time_factor``, i.e. the path of
``uss-jax separate`` (4 s chunks with 50 % Hann overlap-add, so every sample goes through the model twice, batches
of ``--sep_batch`` chunks through one jitted eval-mode forward) on a 60 s mixture; real-time factor = wall time / 60 s.

Prints a table beside the PyTorch reference figures measured on the same 2-core CPU (bytedance/uss ResUNet30,
torch CPU, 2 threads): ~1.5 s per step at batch 1, ~8.5 s at batch 4. Never asserts a time: the machine is shared.

Usage: ``python benchmarks/resunet.py [--batches 1,4] [--steps 3] [--seconds 60] [--sep_batch 4] [--profile]``.
``--profile`` also times the pieces of one eval forward (STFT, U-Net, mask + iSTFT) and the encoder / decoder
blocks' forward + backward separately.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uss_jax import inference
from uss_jax.models.resunet import ResUNet30, count_params
from uss_jax.train import optim

SAMPLE_RATE = 32000
SEGMENT = 2 * SAMPLE_RATE
REFERENCE_STEP_S = {1: 1.5, 4: 8.5}  # PyTorch, same 2-core CPU


def _timeit(fn, repeats: int) -> tuple[float, float]:
  """(first call incl. compilation, median of ``repeats`` further calls) in seconds; ``fn`` must block."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times))


def make_train_step(model: ResUNet30):
  """A jitted ``(state, mixture, condition, target) -> (state, loss)`` over the split (model, optimizer) state
  (donated), the pattern of ``uss_jax.train.trainer``."""
  tx, _ = optim.make_optimizer({"name": "adamw", "learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
                                "weight_decay": 0.0, "amsgrad": True}, {"name": "constant"}, total_steps=1)
  graphdef, state = nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))

  def step(state, mixture, condition, target):
    model, opt = nnx.merge(graphdef, state)
    model.train()

    def loss_fn(m):
      return jnp.mean(jnp.abs(m(mixture, condition)["waveform"] - target))

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return nnx.state((model, opt)), loss

  return jax.jit(step, donate_argnums=0), state


def bench_train(batch: int, steps: int) -> tuple[float, float, float]:
  """(compile + first step s, median step s, final loss) for a fresh full-size model."""
  model = ResUNet30(rngs=nnx.Rngs(0))
  model.train()
  step, state = make_train_step(model)
  rng = np.random.default_rng(batch)
  mixture = jnp.asarray(rng.standard_normal((batch, SEGMENT)) * 0.1, jnp.float32)
  target = mixture * 0.5
  condition = jnp.asarray(rng.standard_normal((batch, 2048)), jnp.float32)
  holder = {"state": state, "loss": None}

  def run():
    holder["state"], holder["loss"] = step(holder["state"], mixture, condition, target)
    jax.block_until_ready(holder["loss"])

  first, median = _timeit(run, steps)
  return first, median, float(holder["loss"])


class _WaveformOnly(nnx.Module):
  """ResUNet30 with the ``(mixture, condition) -> waveform`` interface ``uss_jax.inference.Separator`` expects."""

  def __init__(self, separator: ResUNet30):
    self.separator = separator

  def __call__(self, mixture, condition):
    return self.separator(mixture, condition)["waveform"]


def bench_separation(seconds: float, sep_batch: int, chunk_seconds: float | None) -> dict:
  """``uss_jax.inference.real_time_factor``: the real ``uss-jax separate`` path (4 s chunks, 50 % overlap-add,
  ``sep_batch`` chunks per call) on a ``seconds`` long mixture at 32 kHz, full-size untrained model."""
  separator = inference.Separator(_WaveformOnly(ResUNet30(rngs=nnx.Rngs(0))), sample_rate=SAMPLE_RATE,
                                  segment_seconds=2.0, embedding_dim=2048, description="full-size ResUNet30")
  return inference.real_time_factor(separator, seconds, chunk_seconds=chunk_seconds, batch_size=sep_batch, repeats=2)


def profile(batch: int) -> None:
  """Times the pieces of the eval forward and the fwd + bwd of the encoder / decoder halves."""
  model = ResUNet30(rngs=nnx.Rngs(0))
  model.eval()
  graphdef, state = nnx.split(model)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, SEGMENT)) * 0.1, jnp.float32)
  c = jnp.asarray(rng.standard_normal((batch, 2048)), jnp.float32)

  def part(name, fn, *args):
    f = jax.jit(fn)
    first, med = _timeit(lambda: jax.block_until_ready(f(*args)), 3)
    print(f"  {name:<42s} {med * 1e3:9.1f} ms   (first call {first:6.1f} s)")

  spec = jax.jit(lambda s, a: nnx.merge(graphdef, s).spectrogram(a))(state, x)
  logits = jax.jit(lambda s, m: nnx.merge(graphdef, s).unet(m, c))(state, spec[0])
  print(f"profile, eval forward, batch {batch}:")
  part("STFT + magnitude / phase", lambda s, a: nnx.merge(graphdef, s).spectrogram(a), state, x)
  part("U-Net (bn0 .. after_conv)", lambda s, m: nnx.merge(graphdef, s).unet(m, c), state, spec[0])
  part("mask + iSTFT", lambda s, l, m, co, si: nnx.merge(graphdef, s).apply_mask(l, m, co, si, SEGMENT),
       state, logits, *spec)
  part("whole forward", lambda s, a: nnx.merge(graphdef, s)(a, c)["waveform"], state, x)

  def grad_of(fn):
    return lambda s, *a: jax.grad(lambda p: jnp.sum(fn(p, *a)))(s)

  model.train()
  graphdef, state = nnx.split(model)
  print(f"profile, train-mode forward + backward, batch {batch}:")
  part("U-Net fwd + bwd", grad_of(lambda s, m: nnx.merge(graphdef, s).unet(m, c)), state, spec[0])
  part("STFT + mask + iSTFT fwd + bwd (no U-Net)",
       grad_of(lambda s, a, l: nnx.merge(graphdef, s).apply_mask(l, *nnx.merge(graphdef, s).spectrogram(a),
                                                                  SEGMENT)), state, x, logits)
  h = jnp.asarray(rng.standard_normal((batch, 224, 1024, 32)), jnp.float32)
  part("encoder_block1 fwd + bwd (224x1024x32)",
       grad_of(lambda s, a: nnx.merge(graphdef, s).encoder_block1(a, c)[1]), state, h)
  h2 = jnp.asarray(rng.standard_normal((batch, 112, 512, 64)), jnp.float32)
  part("decoder_block6 fwd + bwd (-> 224x1024x32)",
       grad_of(lambda s, a, k: nnx.merge(graphdef, s).decoder_block6(a, k, c)), state, h2, h)


def bench_recipe_rtf(recipe: str, seconds: float, sep_batch: int) -> dict:
  """RTF of the ``uss-jax separate`` path for the system a recipe builds (``configs/<recipe>.py:<variant>``, e.g.
  ``uss_resunet30:smoke`` = the quickstart size), built by the model registry with untrained weights (the timing
  does not depend on them). MAE-ResUNet recipes get a ViT-B A-MAE encoder context (``mae_resunet:frozen`` = full)."""
  import importlib  # pylint: disable=import-outside-toplevel
  from uss_jax.models import registry  # pylint: disable=import-outside-toplevel
  module, _, variant = recipe.partition(":")
  config = importlib.import_module(f"configs.{module}").get_config(variant)
  small = "smoke" in variant or "tiny" in variant
  query = importlib.import_module("configs.sed_cnn14").get_config("smoke" if small else "")
  context = {"query_net_config": query.to_dict(), "num_classes": 19, "condition_space": "bench",
             "class_names": [str(i) for i in range(19)],
             "mae_encoder": {"size": "small" if small else "base", "img_size": [208, 128]},
             "mae_fbank": {"sample_rate": 16000, "num_mel_bins": 128, "norm_stats": "audioset"}}
  model = registry.build_system(config, context, nnx.Rngs(0))
  separator = inference.Separator(model, description=recipe)
  return inference.real_time_factor(separator, seconds, batch_size=sep_batch, repeats=1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="1,4")
  parser.add_argument("--steps", type=int, default=3, help="timed steps after the first (compiling) one")
  parser.add_argument("--seconds", type=float, default=60.0)
  parser.add_argument("--sep_batch", type=int, default=4)
  parser.add_argument("--chunk_seconds", type=float, default=None, help="default: 4 s (uss-jax separate)")
  parser.add_argument("--profile", action="store_true")
  parser.add_argument("--rtf_recipes", default="",
                      help="';'-separated recipe[:variant] systems whose uss-jax separate RTF to measure on a "
                           "--seconds mixture, e.g. 'uss_resunet30:smoke;uss_resunet30;mae_resunet:frozen,smoke'")
  args = parser.parse_args()

  print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
  abstract = nnx.eval_shape(lambda: ResUNet30(rngs=nnx.Rngs(0)))
  print(f"ResUNet30 full size: {count_params(abstract):,} parameters (condition 2048)")
  rows = []
  for b in [int(s) for s in args.batches.split(",") if s]:
    first, med, loss = bench_train(b, args.steps)
    rows.append((b, first, med, b / med, REFERENCE_STEP_S.get(b), loss))
  print("\ntrain step (fwd + bwd + AdamW amsgrad, L1 waveform loss), 2 s at 32 kHz:")
  print(f"{'batch':>5} | {'compile+1st (s)':>15} | {'step (s)':>8} | {'examples/s':>10} | {'PyTorch ref (s)':>15} "
        f"| {'ratio':>6}")
  for b, first, med, eps, ref, loss in rows:
    ref_s = f"{ref:.1f}" if ref else "n/a"
    ratio = f"{med / ref:.2f}" if ref else "n/a"
    print(f"{b:>5} | {first:>15.1f} | {med:>8.2f} | {eps:>10.2f} | {ref_s:>15} | {ratio:>6}   (loss {loss:.4f})")
  if args.seconds > 0:
    r = bench_separation(args.seconds, args.sep_batch, args.chunk_seconds)
    print(f"\nseparation (uss-jax separate path) of {r['seconds']:.0f} s at 32 kHz: {r['chunks']} chunks of "
          f"{r['chunk_seconds']:.1f} s, 50 % overlap-add, batch {r['batch_size']}: best {r['best_s']:.2f} s -> "
          f"real-time factor {r['rtf_best']:.3f} (median {r['rtf_median']:.3f}; first call {r['first_call_s']:.1f} s)")
  for recipe in [r for r in args.rtf_recipes.split(";") if r]:
    r = bench_recipe_rtf(recipe, args.seconds, args.sep_batch)
    print(f"RTF {recipe:28s} {r['seconds']:.0f} s at {r['sample_rate']} Hz, {r['chunks']} chunks, batch "
          f"{r['batch_size']}: {r['best_s']:.1f} s -> RTF {r['rtf_best']:.3f} (first call {r['first_call_s']:.1f} s)")
  if args.profile:
    profile(1)


if __name__ == "__main__":
  main()
