"""The one generic training loop shared by every recipe.

``train_and_evaluate(config, workdir)`` runs any task (``config.task``) on any mesh (``config.mesh``):

1. the state (model + optimizer) is created already sharded: ``nnx.eval_shape`` -> logical names -> shardings ->
   ``jax.jit(init, out_shardings=...)`` (big_vision train.py);
2. the step is a pure function of (state, global batch), jitted with those shardings and the state donated; the
   dropout / augmentation key is ``fold_in(seed key, step)``, so a resumed run draws the same randomness;
3. each host loads only its rows of the global batch (grain), assembled with ``jax.make_array_from_process_local_data``;
4. checkpoints hold state, grain iterator and config (``uss_jax.train.checkpoint``); running the same command again
   resumes, bit-identically; SIGTERM (preemption) writes a checkpoint before exit;
5. metrics go through ``clu.metrics`` to ``clu.metric_writers`` (TensorBoard, process 0 only), with
   ``ReportProgress`` (steps/s, ETA), an optional profiler hook and a throughput report (examples/s; model FLOPs
   utilisation from XLA's cost analysis on accelerators) from the time spent in train steps alone: the first step
   (compilation), evaluations and checkpoint saves are left out of the spans;
6. the steps are traced inside ``uss_jax.nn.partitioning.context``: activation sharding constraints from the same
   rules table as the parameters, ``config.remat`` (block rematerialisation policy) and ``config.scan_layers``.
The workdir may be a local path or a URL (``gs://``): host files go through ``uss_jax.io`` (epath); orbax and the
TensorBoard writer get ``io.native(workdir)``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import time
from collections.abc import Iterator, Mapping
from typing import Any

from clu import metric_writers, metrics as clu_metrics, periodic_actions
from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from uss_jax import io
from uss_jax import tasks as tasks_lib
from uss_jax.nn import partitioning
from uss_jax.train import checkpoint as ckpt_lib
from uss_jax.train import optim, sharding as sh

# Dense bf16 peak FLOP/s per device (vendor figures), for model FLOPs utilisation.
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12,
}


def peak_flops(device: jax.Device) -> float | None:
  """Peak dense bf16 FLOP/s of ``device`` from its ``device_kind``; None when unknown (CPU)."""
  kind = getattr(device, "device_kind", "")
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return None


class TrainState(nnx.Module):
  """Model + optax optimizer state (``opt.step`` is the global step)."""

  def __init__(self, model: nnx.Module, tx, wrt: Any = nnx.Param):
    self.model = model
    self.opt = nnx.Optimizer(model, tx, wrt=wrt)


@dataclasses.dataclass
class Run:
  """Everything built once per run: mesh, task, shardings, jitted functions."""
  config: ml_collections.ConfigDict
  workdir: str
  task: tasks_lib.Task
  mesh: jax.sharding.Mesh
  graphdef: Any
  abstract_state: Any
  state_shardings: Any
  batch_sharding: jax.sharding.NamedSharding
  init: Any
  train_step: Any
  eval_step: Any
  lr_schedule: Any

  def abstract_sharded_state(self) -> Any:
    """The abstract state with this run's shardings on every leaf (for restoring onto this mesh)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_state, self.state_shardings)


def _check_batch_size(name: str, size: int, mesh, rules) -> None:
  div = sh.batch_divisor(mesh, rules)
  if size % div or size % jax.process_count():
    raise ValueError(f"config.{name}={size} must be divisible by the {div} batch shards of mesh "
                     f"{dict(mesh.shape)} and by {jax.process_count()} processes")


def build_run(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh | None = None) -> Run:
  """Creates the mesh, the task and the jitted init / train / eval functions (nothing is allocated yet)."""
  mesh = mesh or sh.create_mesh(config.mesh)
  rules = [tuple(r) for r in config.get("sharding_rules", ())]
  task = tasks_lib.get_task(config, workdir)
  task.prepare()  # builds / opens datasets: the model may depend on them (number of classes)
  _check_batch_size("batch_size", config.batch_size, mesh, rules)
  _check_batch_size("eval_batch_size", config.get("eval_batch_size", config.batch_size), mesh, rules)

  def create() -> TrainState:
    model = task.build_model(nnx.Rngs(params=config.seed, default=config.seed))
    tx, _ = optim.make_optimizer(config.optimizer, config.schedule, config.total_steps,
                                 weight_decay_mask=task.weight_decay_mask)
    return TrainState(model, tx, wrt=task.trainable)

  _, lr_schedule = optim.make_optimizer(config.optimizer, config.schedule, config.total_steps)
  graphdef, abstract_state = nnx.split(nnx.eval_shape(create))
  shardings = sh.state_shardings(abstract_state, mesh, rules)
  batch_sharding = sh.batch_sharding(mesh, rules)
  base_key = jax.random.key(config.seed)
  remat = partitioning.check_remat(config.get("remat", "none") or "none")

  def traced():
    # Entered inside the jitted functions: active while they are traced (activation constraints, remat, scan).
    return partitioning.context(mesh, rules, remat=remat, scan_layers=bool(config.get("scan_layers", False)))

  init = jax.jit(lambda: nnx.state(create()), out_shardings=shardings)

  def train_step(state, batch):
    with traced():
      return _train_step(state, batch)

  def _train_step(state, batch):
    ts = nnx.merge(graphdef, state)
    ts.model.train()
    step = ts.opt.step.get_value()
    key = jax.random.fold_in(base_key, step)

    def loss_fn(model):
      # Rngs made inside the differentiated function: nnx may not advance a stream created outside the trace.
      return task.loss(model, batch, nnx.Rngs(default=key))

    diff = nnx.DiffState(0, task.trainable)
    (loss, aux), grads = nnx.value_and_grad(loss_fn, argnums=diff, has_aux=True)(ts.model)
    ts.opt.update(ts.model, grads)
    out = {"loss": loss, "grad_norm": _global_norm(grads), "learning_rate": lr_schedule(step), **aux}
    return nnx.state(ts), out

  def eval_step(state, batch):
    with traced():
      ts = nnx.merge(graphdef, state)
      ts.model.eval()
      return task.eval_outputs(ts.model, batch)

  return Run(
      config=config, workdir=workdir, task=task, mesh=mesh, graphdef=graphdef, abstract_state=abstract_state,
      state_shardings=shardings, batch_sharding=batch_sharding, init=init,
      train_step=jax.jit(train_step, in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None),
                         donate_argnums=0),
      eval_step=jax.jit(eval_step, in_shardings=(shardings, batch_sharding)),
      lr_schedule=lr_schedule)


def _global_norm(tree) -> jax.Array:
  leaves = [jnp.vdot(x, x).real for x in jax.tree.leaves(tree)]
  return jnp.sqrt(sum(leaves)) if leaves else jnp.zeros(())


def evaluate_state(run: Run, state: Any) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Runs the task's evaluation over its whole eval set; returns (metrics, per-example outputs)."""
  collected: dict[str, list[np.ndarray]] = {}
  for local in run.task.eval_iterator(jax.process_index(), jax.process_count()):
    mask = np.asarray(local["mask"]).astype(bool)
    batch = sh.make_global_batch(local, run.batch_sharding)
    out = run.eval_step(state, batch)
    out["mask"] = batch["mask"]
    if jax.process_count() > 1:
      out = multihost_utils.process_allgather(out, tiled=True)
    out = jax.tree.map(np.asarray, out)
    keep = out.pop("mask").astype(bool)
    del mask
    for k, v in out.items():
      collected.setdefault(k, []).append(v[keep])
  outputs = {k: np.concatenate(v) for k, v in collected.items()}
  return run.task.summarize(outputs), outputs


class _Preemption:
  """Turns SIGTERM into a flag the loop checks; multi-process runs rely on jax's preemption sync point instead."""

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: will checkpoint and exit")
    self.requested = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _metrics_collection(names) -> type[clu_metrics.Collection]:
  return clu_metrics.Collection.create(**{n: clu_metrics.Average.from_output(n) for n in names})


def initial_state(run: Run, checkpointer: ckpt_lib.Checkpointer | None, data_iterator=None) -> tuple[Any, int]:
  """Restores the latest checkpoint (with the iterator) if there is one, else initialises; returns (state, step)."""
  if checkpointer is not None and checkpointer.latest_step() is not None:
    return checkpointer.restore(run.abstract_sharded_state(), data_iterator=data_iterator)
  return run.task.initialize_state(run.init(), run.state_shardings), 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Trains ``config.task`` for ``config.total_steps`` steps, evaluating and checkpointing periodically.

  Running it again with the same workdir resumes from the latest checkpoint and continues exactly.

  Args:
    config: the resolved recipe config.
    workdir: run directory (checkpoints, events, artifacts); local path or ``gs://``.
    mesh: overrides ``config.mesh`` (tests pass a mesh over a subset of devices).
  Returns:
    dict with ``step`` (last step), ``eval`` (last evaluation metrics), ``preempted`` (bool), ``throughput``,
    ``history`` (list of (step, train loss averaged since the previous log step)) and ``state`` (the final state).
  Raises:
    FloatingPointError: the loss became NaN or inf (checked at every log step).
  """
  workdir = _resolve_workdir(workdir)
  if jax.process_index() == 0:
    io.makedirs(workdir)
  run = build_run(config, workdir, mesh)
  writer = metric_writers.create_default_writer(io.native(workdir), just_logging=jax.process_index() > 0)
  checkpointer = ckpt_lib.Checkpointer(io.join(workdir, "checkpoints"), keep=config.get("keep_checkpoints", 3),
                                       every=config.checkpoint_every,
                                       async_save=config.get("async_checkpoints", True))
  train_iter = run.task.train_iterator(jax.process_index(), jax.process_count())
  state, step = initial_state(run, checkpointer, train_iter)
  if step == 0:
    writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items() if isinstance(v, (int, float, str, bool))})
  logging.info("starting at step %d of %d on mesh %s (%d processes)", step, config.total_steps,
               dict(run.mesh.shape), jax.process_count())

  hooks = [periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer,
                                           every_steps=config.log_every)]
  if jax.process_index() == 0 and config.get("profile", False):
    hooks.append(periodic_actions.Profile(logdir=io.native(workdir), num_profile_steps=5, first_profile=step + 10))
  preemption = _Preemption()
  metrics = None
  result: dict[str, Any] = {"preempted": False, "eval": {}, "throughput": {}, "history": []}
  # Throughput spans: wall time between log points minus the time not spent in train steps (`excluded`: the first,
  # compiling step, evaluations, checkpoint saves); `span_steps` counts the steps that remain in the span.
  t_log, flops, step_fn, excluded, span_steps = time.perf_counter(), None, None, 0.0, 0
  try:
    while step < config.total_steps:
      if preemption.requested or checkpointer.reached_preemption(step):
        checkpointer.save(step, state, train_iter, config, force=True)
        checkpointer.wait()
        logging.warning("preempted: checkpoint written at step %d", step)
        result["preempted"] = True
        break
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = sh.make_global_batch(next(train_iter), run.batch_sharding)
        if step_fn is None:
          t_first = time.perf_counter()
          step_fn, flops = _compile_step(run, state, batch)
          state, out = step_fn(state, batch)
          jax.block_until_ready(out["loss"])
          excluded += time.perf_counter() - t_first
        else:
          state, out = step_fn(state, batch)
          span_steps += 1
      step += 1
      update = _metrics_collection(out).single_from_model_output(**out)
      metrics = update if metrics is None else metrics.merge(update)
      for hook in hooks:
        hook(step)
      if step % config.log_every == 0 or step == config.total_steps:
        scalars = {f"train/{k}": float(v) for k, v in metrics.compute().items()}
        if not np.isfinite(scalars["train/loss"]):
          raise FloatingPointError(f"training loss is {scalars['train/loss']} at step {step}")
        elapsed = time.perf_counter() - t_log - excluded  # synced: float() above waited for the step
        tput = throughput(config.batch_size, span_steps, elapsed, flops)
        if tput:
          scalars.update({f"perf/{k}": v for k, v in tput.items()})
          result["throughput"] = tput
        writer.write_scalars(step, scalars)
        result["history"].append((step, scalars["train/loss"]))
        metrics, t_log, excluded, span_steps = None, time.perf_counter(), 0.0, 0
      t_other = time.perf_counter()
      if config.eval_every and (step % config.eval_every == 0 or step == config.total_steps):
        result["eval"] = _evaluate_and_write(run, state, step, writer)
      checkpointer.save(step, state, train_iter, config, force=step == config.total_steps)
      excluded += time.perf_counter() - t_other
  finally:
    preemption.restore()
    checkpointer.close()
    writer.flush()
  result["step"] = step
  result["state"] = state
  return result


def _evaluate_and_write(run: Run, state, step: int, writer) -> dict[str, float]:
  t0 = time.perf_counter()
  metrics, outputs = evaluate_state(run, state)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
  # Process 0 writes the artifacts (CSV tables, plots, example audio), then every process passes a barrier.
  io.write_on_process0(f"artifacts_{step}", lambda: run.task.write_artifacts(outputs, metrics, step))
  logging.info("eval at step %d (%.1f s): %s", step, time.perf_counter() - t0,
               ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
  return metrics


def evaluate(config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> dict[str, float]:
  """Evaluates the checkpoint at ``step`` (default latest) of ``workdir`` with the task's evaluation.

  Raises:
    FileNotFoundError: no checkpoint in ``workdir``.
  """
  workdir = _resolve_workdir(workdir)
  directory = io.join(workdir, "checkpoints")
  if not io.is_dir(directory):
    raise FileNotFoundError(f"no checkpoint in {directory}")
  run = build_run(config, workdir)
  checkpointer = ckpt_lib.Checkpointer(directory)
  try:
    if checkpointer.latest_step() is None:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    state, step = checkpointer.restore(run.abstract_sharded_state(), step=step)
  finally:
    checkpointer.close()
  writer = metric_writers.create_default_writer(io.native(workdir), just_logging=jax.process_index() > 0,
                                                collection="eval")
  metrics = _evaluate_and_write(run, state, step, writer)
  writer.flush()
  return {"step": step, **metrics}


def _resolve_workdir(workdir: str | os.PathLike) -> str:
  """A URL unchanged (``gs://...``), a local path made absolute (the tasks and orbax see one spelling)."""
  workdir = os.fspath(workdir)
  return workdir.rstrip("/") if io.is_remote(workdir) else os.path.abspath(workdir)


def _compile_step(run: Run, state, batch) -> tuple[Any, float | None]:
  """The train step compiled ahead of time for these shapes, and its FLOPs per device from XLA's cost analysis.

  The FLOPs are only looked up where a peak figure exists (accelerators); on the CPU the plain jitted step is used.
  """
  if peak_flops(jax.devices()[0]) is None:
    return run.train_step, None
  compiled = run.train_step.lower(state, batch).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return compiled, float((analysis or {}).get("flops", 0.0)) or None


def throughput(global_batch: int, steps: int, seconds: float, flops_per_device: float | None) -> dict[str, float]:
  """examples/s, s/step and (on known accelerators) model FLOPs utilisation of a span of ``steps`` steps."""
  if steps <= 0 or seconds <= 0:
    return {}
  out = {"examples_per_sec": global_batch * steps / seconds, "step_time_s": seconds / steps}
  peak = peak_flops(jax.devices()[0])
  if peak and flops_per_device:
    out["mfu"] = flops_per_device * steps / seconds / peak
  return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
