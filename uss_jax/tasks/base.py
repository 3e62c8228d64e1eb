"""The task interface: what the one generic trainer needs to know about a recipe.

A task is a small object (ARCHITECTURE.md rule 6): it builds the model, computes the loss of a batch inside the jitted
step, computes per-example evaluation outputs inside a jitted eval step, summarises them on the host, and provides
its data as per-host iterators. The trainer (``uss_jax.train.trainer``) does everything else: mesh, sharded state,
optimizer, checkpoints, metrics, preemption.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from typing import Any

from flax import nnx
import jax
import ml_collections
import numpy as np

Batch = Mapping[str, jax.Array]


class Task(abc.ABC):
  """Base class of a training recipe. Subclasses are registered in ``uss_jax.tasks.TASKS``.

  Args:
    config: the resolved, locked ``ml_collections.ConfigDict`` of the run.
    workdir: the run's directory (datasets may be built under it).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir

  def prepare(self) -> None:
    """One-time host-side preparation (build datasets, mine anchors). Called on every process before training."""

  @abc.abstractmethod
  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    """Creates the model (called under ``nnx.eval_shape`` and under ``jax.jit``; must be pure given ``rngs``)."""

  @abc.abstractmethod
  def loss(self, model: nnx.Module, batch: Batch, rngs: nnx.Rngs) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar training loss of a global batch and a dict of scalar metrics to log (model is in train mode)."""

  @abc.abstractmethod
  def eval_outputs(self, model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
    """Per-example outputs for evaluation, leading axis = batch (model is in eval mode)."""

  @abc.abstractmethod
  def summarize(self, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Host-side metrics from the concatenated ``eval_outputs`` of the whole evaluation set (padding removed)."""

  @abc.abstractmethod
  def train_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """Infinite, checkpointable (grain) iterator of this process's rows of each global batch."""

  @abc.abstractmethod
  def eval_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """Finite iterator of this process's rows of each evaluation batch; each batch has a ``mask`` (1 = real row)."""

  # Which variables the optimizer trains (an nnx filter). A task with a frozen sub-network (e.g. the query net of
  # query-based separation) narrows it; the frozen weights stay in the state, sharded and checkpointed.
  trainable: Any = nnx.Param

  def initialize_state(self, state: Any, shardings: Any) -> Any:
    """Fills a freshly initialised state (not a restored one), e.g. with pretrained weights; default: unchanged.

    Args:
      state: the ``nnx.State`` of the train state (``state['model']``, ``state['opt']``), already sharded.
      shardings: the same tree of ``NamedSharding``s (as Variable values), for placing new arrays.
    """
    del shardings
    return state

  def weight_decay_mask(self, params: Any) -> Any:
    """Which parameters get weight decay (default: all with ndim > 1, i.e. not biases / norm scales).

    Called by optax with the parameter tree at update time (an optax ``mask`` callable).
    """
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) > 1, params)

  def write_artifacts(self, outputs: Mapping[str, np.ndarray], metrics: Mapping[str, float], step: int) -> None:
    """Optional: tables / plots / audio written to the workdir by process 0 after an evaluation."""
