"""Public checkpoints -> run directories of this project (``uss-jax convert``).

A converted run looks exactly like a trained one (``uss_jax.runs``): an orbax checkpoint at step 0 holding the full
train state (the converted model and a freshly initialised optimizer state of the recipe's optimizer, so ``eval``,
``info``, ``separate`` and resuming / fine-tuning read it as they read a trained run), the recipe's resolved config,
and for separation systems ``system_context.json``. Nothing is unpickled: files are read by the strict converters of
``uss_jax.convert`` (``torch.load(weights_only=True)`` only when torch is installed; ``.safetensors`` / ``.npz``
otherwise), and a file with a missing / unexpected key or a wrong shape is refused with the key named.

Sources (``--from``):
  * ``panns``: a PANNs Cnn14 / Cnn14_DecisionLevelMax ``.pth`` -> a tagging run (``configs/sed_cnn14.py``, 32 kHz):
    the query net / anchor detector of separation runs (``--config.query.workdir``).
  * ``bytedance-uss``: a bytedance/uss Lightning ``.ckpt`` (ResUNet30 + its query net, or the query net from
    ``--query-net Cnn14.pth``) -> a separation run (``configs/uss_resunet30.py``) with its query net as the tagging
    run ``<out>/query_net``. The released ``querynet=at_soft`` checkpoint conditions on the 527 class probabilities
    (``config.query.output='clipwise_output'``); with ``--class-labels class_labels_indices.csv`` its AudioSet class
    names become one-hot class queries, as bytedance/uss ``inference.py`` separates by class.
  * ``audiomae``: an AudioMAE ``pretrained.pth`` -> a masked-pretraining run (``configs/audiomae.py``) whose encoder
    fine-tuning (``--config.init.workdir``) and MAE-ResUNet (``--config.model.mae.workdir``) read; the decoder keeps
    its fresh initialisation (AudioMAE's released file holds the encoder).
  * ``htsat``: a RetroCirce HTS-AT AudioSet ``.ckpt`` -> a tagging run (``configs/sed_htsat.py``): the MAM-CLAP
    teacher (``--config.teacher.workdir``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from flax import nnx
import ml_collections
import numpy as np

from uss_jax import io
from uss_jax.models import registry

SOURCES = ("panns", "bytedance-uss", "audiomae", "htsat")


def _check_out_dir(out: str, overwrite: bool) -> None:
  ckpt = os.path.join(out, "checkpoints")
  if io.exists(ckpt) and not overwrite:
    raise ValueError(f"{out} already holds checkpoints; choose another -o or pass --overwrite")


def write_run(out: str, config: ml_collections.ConfigDict, model: nnx.Module, *,
              context: Mapping[str, Any] | None = None, class_names: Sequence[str] | None = None,
              class_embeddings: np.ndarray | None = None, trainable: Any = nnx.Param) -> str:
  """Writes ``model`` as step 0 of a run in ``out`` (full train state: the optimizer of ``config`` initialised).

  Args:
    out: the run directory (local or a cloud URL).
    config: the run's resolved config (stored with the checkpoint; ``config.optimizer`` / ``schedule`` build the
      optimizer state).
    model: the converted model: the exact module the config's task builds (checked by the caller's restore test).
    context: the system context (separation systems), written as ``system_context.json``.
    class_names, class_embeddings: a class-average table, written as ``class_embeddings.npz``.
    trainable: the recipe task's ``trainable`` filter (the optimizer state covers those parameters only, as the
      trainer's ``TrainState`` does, so a resumed or evaluated run restores the same tree).

  Returns:
    ``out``.
  """
  from uss_jax.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from uss_jax.train import optim, trainer  # pylint: disable=import-outside-toplevel

  io.makedirs(out)
  tx, _ = optim.make_optimizer(config.optimizer, config.schedule, config.total_steps)
  state = nnx.state(trainer.TrainState(model, tx, wrt=trainable))
  checkpointer = ckpt_lib.Checkpointer(os.path.join(out, "checkpoints"), keep=1, every=1, async_save=False)
  try:
    checkpointer.save(0, state, None, config, force=True)
  finally:
    checkpointer.close()
  if context is not None:
    registry.write_context(out, context)
  if class_embeddings is not None:
    io.save_npz_atomic(os.path.join(out, "class_embeddings.npz"), class_names=np.array(list(class_names)),
                       embeddings=np.asarray(class_embeddings, np.float32))
  logging.info("wrote converted run %s", out)
  return out


def read_class_labels(path: str) -> list[str]:
  """Class names in index order from an AudioSet ``class_labels_indices.csv`` (``index,mid,display_name``) or a text
  file with one name per line.

  Raises:
    FileNotFoundError: no such file. ValueError: an empty file or indices that are not 0..n-1.
  """
  import csv  # pylint: disable=import-outside-toplevel

  if not io.exists(path):
    raise FileNotFoundError(f"--class-labels: file not found: {path}")
  text = io.read_text(path)
  if path.endswith(".csv"):
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or "display_name" not in rows[0] or "index" not in rows[0]:
      raise ValueError(f"{path}: expected columns index, mid, display_name")
    rows.sort(key=lambda r: int(r["index"]))
    if [int(r["index"]) for r in rows] != list(range(len(rows))):
      raise ValueError(f"{path}: class indices are not 0..{len(rows) - 1}")
    names = [r["display_name"] for r in rows]
  else:
    names = [line.strip() for line in text.splitlines() if line.strip()]
  if not names:
    raise ValueError(f"{path} names no class")
  return names


def _recipe(module: str, variant: str = "") -> ml_collections.ConfigDict:
  import importlib  # pylint: disable=import-outside-toplevel
  return importlib.import_module(f"configs.{module}").get_config(variant)


def _converted(config: ml_collections.ConfigDict, source: str, path: str) -> ml_collections.ConfigDict:
  config.converted_from = ml_collections.ConfigDict({"source": source, "file": os.path.abspath(path)})
  return config


def convert_panns(checkpoint: str, out: str, *, head: str | None = None, overwrite: bool = False) -> dict[str, Any]:
  """A PANNs Cnn14 file -> a tagging run (32 kHz PANNs front end, widths read off the file).

  ``head``: ``'clip'`` (Cnn14) or ``'decision_max'`` (Cnn14_DecisionLevelMax); default ``decision_max``, which gives
  the framewise output anchor mining needs from either file (the two heads share their weights).
  """
  from uss_jax.convert import common, panns  # pylint: disable=import-outside-toplevel
  from uss_jax.models import uss  # pylint: disable=import-outside-toplevel

  _check_out_dir(out, overwrite)
  sd = common.strip_prefix(common.load_state_dict(checkpoint, key="model"), "module.")
  return _write_panns(sd, checkpoint, out, head or "decision_max")


def _write_panns(sd: Mapping[str, np.ndarray], checkpoint: str, out: str, head: str) -> dict[str, Any]:
  from uss_jax.convert import panns  # pylint: disable=import-outside-toplevel
  from uss_jax.models import uss  # pylint: disable=import-outside-toplevel

  widths = panns._infer_widths(sd)  # pylint: disable=protected-access
  config = _recipe("sed_cnn14")
  config.model.channels = tuple(widths["channels"])
  config.model.head = head
  config = _converted(config, "panns", checkpoint)
  num_classes = int(widths["num_classes"])
  model = uss.cnn14_from_config(config, num_classes, nnx.Rngs(0))
  panns.convert_cnn14(dict(sd), model)
  write_run(out, config, model)
  return {"run": out, "task": "tagging", "model": "cnn14", "classes": num_classes, "head": head}


def convert_bytedance_uss(checkpoint: str, out: str, *, query_net: str | None = None, class_labels: str | None = None,
                          overwrite: bool = False) -> dict[str, Any]:
  """A bytedance/uss ``.ckpt`` (+ optional PANNs ``--query-net`` file) -> a separation run and its query-net run.

  Raises:
    ValueError: no query net (neither in the checkpoint nor given), an adaptive query net (``fc1`` / ``fc2``), a
      condition size that fits neither the query net's embedding nor its classes, or label / class counts that differ.
  """
  from uss_jax.convert import common, panns, uss as convert_uss  # pylint: disable=import-outside-toplevel
  from uss_jax.models import uss  # pylint: disable=import-outside-toplevel

  _check_out_dir(out, overwrite)
  ckpt = convert_uss.load_uss_checkpoint(checkpoint)
  if ckpt.query_net_adaptor:
    raise ValueError(f"{checkpoint}: an adaptive query net ({sorted(ckpt.query_net_adaptor)[:3]} ...) is not supported")
  if query_net:
    qsd = common.strip_prefix(common.load_state_dict(query_net, key="model"), "module.")
  elif ckpt.query_net_base:
    qsd = ckpt.query_net_base
  else:
    raise ValueError(f"{checkpoint} holds no query net: pass --query-net Cnn14.pth")
  query_dir = os.path.join(out, "query_net")
  _check_out_dir(query_dir, overwrite)
  # bytedance/uss conditions on the clip-level Cnn14 (pooled fc1 embedding / clipwise output); the clip head also
  # gives the framewise output that anchor mining reads (uss_jax.models.cnn14: the SED extension).
  query = _write_panns(qsd, query_net or checkpoint, query_dir, "clip")
  num_classes = query["classes"]
  query_config = _recipe("sed_cnn14")
  query_config.model.channels = tuple(panns._infer_widths(qsd)["channels"])  # pylint: disable=protected-access
  query_config.model.head = "clip"
  embedding_dim = int(np.shape(qsd["fc1.weight"])[0])
  cond = ckpt.model.condition_size
  if cond == num_classes:
    output = "clipwise_output"
  elif cond == embedding_dim:
    output = "embedding"
  else:
    raise ValueError(f"{checkpoint}: the separator's condition size {cond} is neither the query net's embedding "
                     f"({embedding_dim}) nor its class count ({num_classes})")
  config = _recipe("uss_resunet30")
  config.model.channels = tuple(ckpt.model.channels)
  config.model.n_fft = ckpt.model.n_fft
  config.query.workdir = query_dir
  config.query.output = output
  config = _converted(config, "bytedance-uss", checkpoint)
  names = read_class_labels(class_labels) if class_labels else []
  if names and len(names) != num_classes:
    raise ValueError(f"--class-labels names {len(names)} classes, the query net has {num_classes}")
  qnet = uss.cnn14_from_config(query_config, num_classes, nnx.Rngs(0))
  panns.convert_cnn14(dict(qsd), qnet)
  context = {"query_net_config": query_config.to_dict(), "num_classes": num_classes,
             "condition_space": uss.weights_digest(nnx.state(qnet).to_pure_dict()) + (
                 "/clipwise" if output == "clipwise_output" else ""),
             "query_class_names": names, "converted_from": "bytedance-uss"}
  model = registry.build_system(config, context, nnx.Rngs(0))
  nnx.update(model.separator, nnx.state(ckpt.model))
  nnx.update(model.query_net, nnx.state(qnet))
  # The separation task trains the separator only (uss_jax.tasks.separation.SeparationTask.trainable).
  write_run(out, config, model, context=context, trainable=nnx.All(nnx.Param, nnx.PathContains("separator")))
  return {"run": out, "query_net_run": query_dir, "task": "separation", "model": "resunet30", "condition": output,
          "condition_size": cond, "classes": len(names)}


def convert_audiomae(checkpoint: str, out: str, *, overwrite: bool = False) -> dict[str, Any]:
  """An AudioMAE pretraining / fine-tuning file -> a masked-pretraining run holding the converted encoder."""
  from uss_jax.convert import audiomae  # pylint: disable=import-outside-toplevel
  from uss_jax.tasks import mam  # pylint: disable=import-outside-toplevel  (builds the recipe's model tree)

  _check_out_dir(out, overwrite)
  sd = audiomae.load_state_dict(checkpoint)
  arch = audiomae.infer_config(sd)
  config = _recipe("audiomae")
  enc = dict(config.model.encoder)
  enc.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in arch.items()
              if k in ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio")})
  enc["pos_embed"] = "table"
  config.model.encoder = enc
  config = _converted(config, "audiomae", checkpoint)
  model = mam.build_mae(config, num_classes=0, rngs=nnx.Rngs(0))
  audiomae.convert_audiomae(sd, model.encoder, strict=False)
  write_run(out, config, model)
  return {"run": out, "task": "mam", "model": "audiomae", "embed_dim": arch["embed_dim"], "depth": arch["depth"]}


def convert_htsat(checkpoint: str, out: str, *, overwrite: bool = False) -> dict[str, Any]:
  """A RetroCirce HTS-AT AudioSet checkpoint -> a tagging run (``configs/sed_htsat.py``, widths read off the file)."""
  from uss_jax.convert import clap  # pylint: disable=import-outside-toplevel
  from uss_jax.models import htsat  # pylint: disable=import-outside-toplevel

  _check_out_dir(out, overwrite)
  sd = clap.load_state_dict(checkpoint)
  sd = {k[len("sed_model."):]: v for k, v in sd.items() if k.startswith("sed_model.")} or sd
  arch = clap.infer_htsat_config(sd)
  num_classes = int(arch.pop("num_classes"))
  config = _recipe("sed_htsat")
  config.model = ml_collections.ConfigDict({"name": "htsat", **{
      k: (list(v) if isinstance(v, tuple) else v) for k, v in arch.items()}})
  config = _converted(config, "htsat", checkpoint)
  model = htsat.build_htsat(config, num_classes, nnx.Rngs(0))
  clap.convert_htsat(sd, model)
  write_run(out, config, model)
  return {"run": out, "task": "tagging", "model": "htsat", "classes": num_classes}


def convert(source: str, checkpoint: str, out: str, **kwargs: Any) -> dict[str, Any]:
  """Dispatch of ``uss-jax convert --from SOURCE``.

  Raises:
    ValueError: unknown source, options the source does not take, or a checkpoint the converter refuses.
    FileNotFoundError: a missing file.
  """
  if not io.exists(checkpoint):
    raise FileNotFoundError(f"--checkpoint: file not found: {checkpoint}")
  fns = {"panns": convert_panns, "bytedance-uss": convert_bytedance_uss, "audiomae": convert_audiomae,
         "htsat": convert_htsat}
  if source not in fns:
    raise ValueError(f"--from: unknown source {source!r}; known: {', '.join(SOURCES)}")
  given = {k: v for k, v in kwargs.items() if v not in (None, False)}
  import inspect  # pylint: disable=import-outside-toplevel
  accepted = set(inspect.signature(fns[source]).parameters) - {"checkpoint", "out"}
  extra = sorted(set(given) - accepted)
  if extra:
    raise ValueError(f"--from {source} does not take --{extra[0].replace('_', '-')}")
  result = fns[source](checkpoint, out, **given)
  return json.loads(json.dumps(result, default=str))
