"""Query-based universal sound separation systems: a separator conditioned on a frozen PANNs Cnn14's embedding.

``QueryConditionedSeparator`` = separator (ResUNet30 of bytedance/uss, or MAE-ResUNet of seed 000) + the frozen
query net (the Cnn14 of a tagging run, or a converted PANNs checkpoint) whose latent source embedding (``fc1``
output, 2048-d at full size) of the query audio conditions it. It is the model the separation task trains (its tree
is the checkpoint's ``model``: ``separator/...``, ``query_net/...``) and a system of ``uss_jax.models.interface``:
``separate`` / ``embed_audio``; class queries are served from the run's class-average table.

Registry name: ``'resunet30'`` and ``'mae_resunet'`` (``config.model.name``), builder ``build_uss_system``.
Context (``uss_jax.models.registry``): ``query_net_config`` (the tagging run's config: front end and Cnn14 widths),
``num_classes`` (the query net's classifier width), ``condition_space`` (``'cnn14:<digest of the query-net
weights>'``, plus ``'/clipwise'`` for class-probability conditions), ``query_class_names`` (the query net's class
names, for one-hot class queries of ``config.query.output='clipwise_output'`` runs), and for MAE-ResUNet
``mae_encoder`` / ``mae_fbank`` (the A-MAE ViT's constructor arguments and front end, ``mae_resunet.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from uss_jax.audio import frontends
from uss_jax.models import cnn14, resunet
from uss_jax.models.interface import SystemInterface


QUERY_OUTPUTS = ("embedding", "clipwise_output")


def frontend_from_config(config: ml_collections.ConfigDict):
  """The front end of ``config.frontend`` (``uss_jax.audio.frontends.get_frontend``)."""
  fe = dict(config.frontend)
  return frontends.get_frontend(fe.pop("name"), **fe)


def cnn14_from_config(config: ml_collections.ConfigDict, num_classes: int, rngs: nnx.Rngs) -> cnn14.Cnn14:
  """The Cnn14 of a tagging config: ``config.model`` (``channels``, ``head``, ``dropout``, ``spec_augment``) with the
  front end of ``config.frontend``; compute dtype ``config.compute_dtype``."""
  m = config.model
  return cnn14.Cnn14(
      num_classes=num_classes, channels=tuple(m.channels), head=m.get("head", "clip"),
      frontend=frontend_from_config(config), dropout=m.get("dropout", 0.2), spec_augment=m.get("spec_augment", False),
      dtype=jnp.dtype(config.get("compute_dtype", "float32")), rngs=rngs)


def weights_digest(tree: Any, name: str = "cnn14") -> str:
  """``'<name>:<sha1[:16]>'`` of the arrays of a pure-dict tree (paths sorted): the identity of a frozen query net,
  so two runs can tell whether their conditions live in the same embedding space."""
  h = hashlib.sha1()

  def walk(node, prefix):
    if isinstance(node, Mapping):
      for k in sorted(node, key=str):
        walk(node[k], f"{prefix}/{k}")
    else:
      a = np.ascontiguousarray(np.asarray(node))
      h.update(prefix.encode())
      h.update(str(a.dtype).encode() + str(a.shape).encode())
      h.update(a.tobytes())

  walk(tree, "")
  return f"{name}:{h.hexdigest()[:16]}"


class QueryConditionedSeparator(nnx.Module):
  """Separator + the frozen query net whose embedding conditions it (the task trains only ``separator``).

  Args:
    separator: ``(mixture (batch, samples), condition (batch, D)) -> {'waveform': (batch, samples)}`` with a
      ``condition_size`` attribute (``ResUNet30``, ``MAEResUNet``).
    query_net: a ``Cnn14`` (eval mode when embedding).
    info: the system's ``SystemInterface`` (static facts for inference); None for a bare model.
    query_output: which query-net output conditions the separator: ``'embedding'`` (the latent source embedding,
      bytedance/uss ``condition_type='embedding'``) or ``'clipwise_output'`` (the class probabilities: the released
      ``querynet=at_soft`` checkpoint, whose class queries are then one-hot vectors, as bytedance/uss
      ``inference.py`` separates by AudioSet class).
  """

  def __init__(self, separator: nnx.Module, query_net: cnn14.Cnn14, info: SystemInterface | None = None,
               query_output: str = "embedding"):
    if query_output not in QUERY_OUTPUTS:
      raise ValueError(f"config.query.output must be one of {QUERY_OUTPUTS}, got {query_output!r}")
    self.separator = separator
    self.query_net = query_net
    self.info = info
    self.query_output = query_output

  def embed(self, query: jax.Array) -> jax.Array:
    """Query condition (batch, D) of query audio (batch, samples): the query net's ``query_output``; no gradient,
    eval mode."""
    self.query_net.eval()
    return jax.lax.stop_gradient(self.query_net(query)[self.query_output])

  def __call__(self, mixture: jax.Array, condition: jax.Array) -> jax.Array:
    """Separated waveform (batch, samples) of ``mixture`` (batch, samples) for ``condition`` (batch, embedding_dim)."""
    return self.separator(mixture, condition)["waveform"]

  # ---- the system interface (uss_jax.models.interface) ----

  def interface(self) -> SystemInterface:
    if self.info is None:
      raise ValueError("this QueryConditionedSeparator was built without a SystemInterface (use build_uss_system)")
    return self.info

  def separate(self, mixture: jax.Array, condition: jax.Array) -> dict[str, jax.Array]:
    """``{'waveform': (batch, samples)}`` for ``mixture`` (batch, samples), ``condition`` (batch, D)."""
    return {"waveform": self(mixture, condition)}

  def embed_audio(self, audio: jax.Array) -> jax.Array:
    """Query embedding (batch, D) of query segments (batch, query_samples): the frozen Cnn14's ``query_output``."""
    return self.embed(audio)

  def embed_class(self, class_id: jax.Array) -> jax.Array:
    """One-hot class conditions (batch, classes) (``query_output='clipwise_output'`` systems only)."""
    return jax.nn.one_hot(class_id, self.query_net.num_classes, dtype=jnp.float32)


def build_separator(config: ml_collections.ConfigDict, condition_size: int, context: Mapping[str, Any],
                    rngs: nnx.Rngs) -> nnx.Module:
  """The separator of ``config.model.name``: ``'resunet30'`` (``ResUNet30``) or ``'mae_resunet'`` (``MAEResUNet``).

  Args:
    config: the separation run's config (``model.channels``, ``n_fft``, ``hop_length``, ``output_init``,
      ``bn_momentum``; ``compute_dtype``; for MAE-ResUNet also ``model.mae``).
    condition_size: the query embedding width.
    context: the system context (MAE-ResUNet reads ``mae_encoder``).
    rngs: initialisation RNG streams.

  Raises:
    ValueError: unknown model name.
  """
  m = config.model
  name = m.get("name", "resunet30") or "resunet30"
  dtype = jnp.dtype(config.get("compute_dtype", "float32"))
  unet_kw = dict(condition_size=condition_size, channels=tuple(m.channels), n_fft=m.n_fft, hop_length=m.hop_length,
                 output_init=m.get("output_init", "reference"), bn_momentum=m.get("bn_momentum", 0.01), dtype=dtype)
  if name == "resunet30":
    return resunet.ResUNet30(**unet_kw, rngs=rngs)
  if name == "mae_resunet":
    from uss_jax.models import mae_resunet  # pylint: disable=import-outside-toplevel
    return mae_resunet.build_mae_resunet(config, unet_kw, context, rngs)
  raise ValueError(f"config.model.name: unknown USS separator {name!r}; expected 'resunet30' or 'mae_resunet'")


def build_uss_system(config: ml_collections.ConfigDict, context: Mapping[str, Any],
                     rngs: nnx.Rngs) -> QueryConditionedSeparator:
  """The registry builder of ``'resunet30'`` / ``'mae_resunet'``: separator + frozen Cnn14 query net.

  Args:
    config: the separation run's config.
    context: ``query_net_config`` (dict), ``num_classes`` (int), ``condition_space`` (str, optional).
    rngs: initialisation RNGs; the separator draws its values first, then the query net (whose values a task or a
      restore replaces).

  Raises:
    KeyError: the context lacks ``query_net_config`` / ``num_classes``.
  """
  query_config = ml_collections.ConfigDict(dict(context["query_net_config"]))
  num_classes = int(context["num_classes"])
  query_output = (config.get("query") or {}).get("output", "embedding") or "embedding"
  embedding_dim = (num_classes if query_output == "clipwise_output" else
                   nnx.eval_shape(lambda: cnn14_from_config(query_config, num_classes, nnx.Rngs(0))).embedding_dim)
  separator = build_separator(config, embedding_dim, context, rngs)
  query_net = cnn14_from_config(query_config, num_classes, rngs)
  sr = int(config.data.sample_rate)
  segment = int(round(config.data.segment_seconds * sr))
  # One-hot class queries exist for class-probability conditions with named classes (a converted at_soft run).
  class_names = tuple(context.get("query_class_names") or ()) if query_output == "clipwise_output" else ()
  info = SystemInterface(
      name=str(config.model.get("name", "resunet30") or "resunet30"), sample_rate=sr, segment_samples=segment,
      condition_size=int(embedding_dim), query_kinds=("audio", "class") if class_names else ("audio",),
      outputs=("waveform",), condition_space=str(context.get("condition_space", "")), query_samples=segment,
      class_names=class_names)
  return QueryConditionedSeparator(separator, query_net, info, query_output=query_output)
