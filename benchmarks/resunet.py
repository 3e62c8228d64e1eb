"""Full-size ResUNet30 (bytedance/uss) on the CPU: train-step time and separation real-time factor.

Train step = forward + backward of the L1 waveform loss ``mean|y_hat - y|`` + AdamW (amsgrad, lr 1e-3, betas
(0.9, 0.999), wd 0; ``uss_jax.train.optim.make_optimizer``), BatchNorm in train mode, on 2 s segments at 32 kHz
(64,000 samples), jitted with the state donated. Separation: a 60 s mixture cut into 2 s windows, run in batches
through the jitted eval-mode forward; real-time factor = wall time / 60 s.

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


def bench_separation(seconds: float, sep_batch: int) -> tuple[float, float]:
  """(compile s, wall s to separate ``seconds`` of audio in 2 s windows, batches of ``sep_batch``)."""
  model = ResUNet30(rngs=nnx.Rngs(0))
  model.eval()
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, x, c: nnx.merge(graphdef, s)(x, c)["waveform"])
  audio = np.random.default_rng(0).standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32) * 0.1
  windows = -(-audio.size // SEGMENT)
  padded = np.zeros(windows * SEGMENT, np.float32)
  padded[:audio.size] = audio
  chunks = padded.reshape(windows, SEGMENT)
  groups = -(-windows // sep_batch)
  chunks = np.concatenate([chunks, np.zeros((groups * sep_batch - windows, SEGMENT), np.float32)])
  condition = jnp.ones((sep_batch, 2048), jnp.float32) * 0.1
  t0 = time.perf_counter()
  jax.block_until_ready(fwd(state, jnp.asarray(chunks[:sep_batch]), condition))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = [fwd(state, jnp.asarray(chunks[g * sep_batch:(g + 1) * sep_batch]), condition) for g in range(groups)]
  separated = np.concatenate([np.asarray(o) for o in out]).reshape(-1)[:audio.size]
  wall = time.perf_counter() - t0
  assert separated.shape == audio.shape
  return compile_s, wall


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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="1,4")
  parser.add_argument("--steps", type=int, default=3, help="timed steps after the first (compiling) one")
  parser.add_argument("--seconds", type=float, default=60.0)
  parser.add_argument("--sep_batch", type=int, default=4)
  parser.add_argument("--profile", action="store_true")
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
    compile_s, wall = bench_separation(args.seconds, args.sep_batch)
    print(f"\nseparation of {args.seconds:.0f} s in 2 s windows, batch {args.sep_batch}: {wall:.2f} s "
          f"-> real-time factor {wall / args.seconds:.3f} (compile {compile_s:.1f} s)")
  if args.profile:
    profile(1)


if __name__ == "__main__":
  main()
