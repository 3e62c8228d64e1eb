"""PANNs Cnn14 / Cnn14_DecisionLevelMax PyTorch checkpoints -> ``uss_jax.models.cnn14.Cnn14``.

Source layout: qiuqiangkong/audioset_tagging_cnn ``pytorch/models.py``; released checkpoints such as
``Cnn14_mAP=0.431.pth`` and ``Cnn14_DecisionLevelMax_mAP=0.385.pth`` are dicts whose ``'model'`` entry is the
state_dict. Both architectures have the same keys:

=====================================================  =================================================
PyTorch key (shape)                                     Flax path (shape)
=====================================================  =================================================
``bn0.{weight,bias,running_mean,running_var}`` (64)     ``bn0.{scale,bias,mean,var}``
``conv_block{i}.conv{j}.weight`` (out, in, 3, 3)        ``conv_block{i}.conv{j}.kernel`` (3, 3, in, out)
``conv_block{i}.bn{j}.{weight,bias,running_*}``         ``conv_block{i}.bn{j}.{scale,bias,mean,var}``
``fc1.weight`` (emb, C) / ``fc1.bias``                  ``fc1.kernel`` (C, emb) / ``fc1.bias``
``fc_audioset.weight`` (K, emb) / ``.bias``             ``fc_audioset.kernel`` (emb, K) / ``.bias``
=====================================================  =================================================

Ignored: ``*num_batches_tracked`` and the fixed front-end tensors (keys containing ``stft``,
``spectrogram_extractor``, ``logmel_extractor`` or ``melW``; our front end recomputes them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from uss_jax.convert import common
from uss_jax.models.cnn14 import Cnn14

_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_IGNORED_SUBSTRINGS = ("stft", "spectrogram_extractor", "logmel_extractor", "melW")

# (flax path, PyTorch -> Flax transform, Flax -> PyTorch shape)
_Entry = common.KeyMapEntry


def _key_map(num_blocks: int) -> dict[str, _Entry]:
  """PyTorch key -> (Flax path, transform, inverse shape map) for a Cnn14 with ``num_blocks`` conv blocks."""
  table: dict[str, _Entry] = {}

  def bn(torch_prefix: str, path: tuple[str, ...]) -> None:
    for tname, fname in _BN.items():
      table[f"{torch_prefix}.{tname}"] = (path + (fname,), common.identity, common.same_shape)

  bn("bn0", ("bn0",))
  conv_shape = lambda s: (s[3], s[2], s[0], s[1])  # (kh, kw, in, out) -> (out, in, kh, kw)
  for i in range(1, num_blocks + 1):
    for j in (1, 2):
      table[f"conv_block{i}.conv{j}.weight"] = ((f"conv_block{i}", f"conv{j}", "kernel"), common.conv2d_kernel,
                                                conv_shape)
      bn(f"conv_block{i}.bn{j}", (f"conv_block{i}", f"bn{j}"))
  for name in ("fc1", "fc_audioset"):
    table[f"{name}.weight"] = ((name, "kernel"), common.linear_kernel, lambda s: (s[1], s[0]))
    table[f"{name}.bias"] = ((name, "bias"), common.identity, common.same_shape)
  return table


def is_ignored_key(key: str) -> bool:
  """True for keys the converter skips: ``*num_batches_tracked`` and the fixed front-end tensors."""
  return key.endswith("num_batches_tracked") or any(s in key for s in _IGNORED_SUBSTRINGS)


def torch_shapes(model: Cnn14) -> dict[str, tuple[int, ...]]:
  """The PyTorch state_dict keys and shapes a checkpoint for ``model`` must have (front end, counters excluded).

  Used by tests to build rule state_dicts for reduced-width models, e.g.
  ``common.rule_state_dict(list(torch_shapes(model).items()))``.
  """
  table = _key_map(len(model.channels))
  variables = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))}
  return {key: tuple(int(d) for d in to_torch(tuple(variables[path].shape)))
          for key, (path, _, to_torch) in table.items()}


def convert_cnn14(state_dict: Mapping[str, Any], model: Cnn14) -> None:
  """Loads a PANNs Cnn14 / Cnn14_DecisionLevelMax state_dict into ``model`` in place (strict).

  Args:
    state_dict: ``{key: array}`` in PyTorch layout (numpy arrays or anything ``np.asarray`` accepts), e.g. from
      ``common.load_state_dict(path, key='model')``; a ``'module.'`` prefix (DataParallel) is removed.
    model: a ``Cnn14`` whose widths match the checkpoint; front-end variables (``model.frontend``) are not touched.

  Raises:
    ValueError: listing unknown keys (neither mapped nor ignored), missing keys, and shape mismatches.
  """
  state_dict = common.strip_prefix(dict(state_dict), "module.")
  table = _key_map(len(model.channels))
  unknown = sorted(k for k in state_dict if k not in table and not is_ignored_key(k))
  missing = sorted(k for k in table if k not in state_dict)
  expected = torch_shapes(model)
  bad = sorted(f"{k}: checkpoint {tuple(np.shape(state_dict[k]))} vs model (PyTorch layout) {expected[k]}"
               for k in table if k in state_dict and tuple(np.shape(state_dict[k])) != expected[k])
  if unknown or missing or bad:
    raise ValueError(f"Cnn14 checkpoint does not match the model: unknown keys {unknown}; missing keys {missing}; "
                     f"shape mismatches {bad}")
  values = {path: transform(np.asarray(state_dict[key], dtype=np.float32))
            for key, (path, transform, _) in table.items()}
  common.assign_flat(model, values, exclude=("frontend", "spec_augment"))


def _infer_widths(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  blocks = sorted(int(m.group(1)) for k in state_dict
                  if (m := re.fullmatch(r"conv_block(\d+)\.conv2\.weight", k)))
  if not blocks or blocks != list(range(1, len(blocks) + 1)):
    raise ValueError(f"cannot infer Cnn14 conv blocks from the checkpoint keys (found blocks {blocks})")
  try:
    return {
        "channels": tuple(int(np.shape(state_dict[f"conv_block{i}.conv2.weight"])[0]) for i in blocks),
        "embedding_dim": int(np.shape(state_dict["fc1.weight"])[0]),
        "num_classes": int(np.shape(state_dict["fc_audioset.weight"])[0]),
        "mel_bins": int(np.shape(state_dict["bn0.weight"])[0]),
    }
  except KeyError as e:
    raise ValueError(f"Cnn14 checkpoint lacks {e.args[0]!r}") from e


def load_cnn14_checkpoint(path: common.PathLike, model: Cnn14 | None = None, *, head: str = "clip",
                          key: str | None = "model", rngs: nnx.Rngs | None = None, **model_kwargs: Any) -> Cnn14:
  """Reads a PANNs checkpoint file and returns a ``Cnn14`` holding its weights, in eval mode.

  Args:
    path: ``Cnn14_mAP=0.431.pth``-style file (a dict with the state_dict under ``'model'``; needs torch, loaded with
      ``weights_only=True``), or a ``.safetensors`` / ``.npz`` copy of the state_dict (numpy only; keys may carry a
      ``'model.'`` prefix).
    model: the target; None builds one with widths inferred from the checkpoint (classes, channels, embedding, mel
      bins), ``head`` and ``model_kwargs`` (e.g. ``frontend=...``).
    head: ``'clip'`` (Cnn14) or ``'decision_max'`` (Cnn14_DecisionLevelMax) when building the model.
    key: checkpoint entry holding the state_dict (None for a bare state_dict).
    rngs: RNGs for building the model abstractly (nothing is drawn; default ``nnx.Rngs(0)``).
    **model_kwargs: further ``Cnn14`` arguments for a built model.

  Returns:
    the model, after ``model.eval()``.

  Raises:
    ImportError: a torch checkpoint without torch installed.
    ValueError: the checkpoint does not match (see ``convert_cnn14``).
  """
  state_dict = common.strip_prefix(common.load_state_dict(path, key=key), "module.")
  if model is not None:
    convert_cnn14(state_dict, model)
    model.eval()
    return model
  kwargs = {**_infer_widths(state_dict), **model_kwargs}
  frontend = kwargs.pop("frontend", None)
  # Built abstractly (no random init, nothing allocated); the conversion then fills every Param / BatchStat, and the
  # front end, which may hold its own constants, is attached afterwards.
  model = nnx.eval_shape(lambda: Cnn14(head=head, rngs=rngs or nnx.Rngs(0), **kwargs))
  convert_cnn14(state_dict, model)
  abstract = [p for p, v in nnx.to_flat_state(nnx.state(model)) if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
  if abstract:
    raise ValueError(f"variables left without a value after conversion: {abstract}")
  model.set_frontend(frontend)
  model.eval()
  return model
