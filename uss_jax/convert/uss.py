"""bytedance/uss checkpoints -> ``uss_jax.models.resunet.ResUNet30`` (and the query net's weights, for Cnn14).

Source layout: bytedance/uss ``uss/models/resunet.py`` (``ResUNet30`` = ``base`` (``ResUNet30_Base``) + ``film``
(``FiLM``)), ``uss/models/film.py`` (FiLM Linears registered under names joined with ``->``) and
``uss/models/pl_modules.py`` (``LitSeparation``: the released Lightning ``.ckpt`` holds a ``state_dict`` whose keys
start with ``ss_model.`` for the separator, ``query_net.`` for the query net (``Cnn14_Wrapper``: ``query_net.base.``
is a PANNs Cnn14; ``AdaptiveCnn14_Wrapper`` adds ``query_net.fc1`` / ``query_net.fc2``), and possibly
``anchor_segment_detector.`` (the training-time SED model); ``uss/inference.py`` loads it with ``strict=False``).

ResUNet30 state_dict (without the ``ss_model.`` prefix) -> Flax path (``B`` = ``encoder_block{i}`` or
``conv_block7a``, ``D`` = ``decoder_block{j}``, ``R`` = a ``ConvBlockRes``: ``B.conv_block1`` or ``D.conv_block2``):

================================================================  ===============================================
PyTorch key (shape)                                                Flax path (shape)
================================================================  ===============================================
``base.bn0.{weight,bias,running_mean,running_var}`` (bins)         ``bn0.{scale,bias,mean,var}``
``base.{pre_conv,after_conv}.weight`` (out, in, 1, 1) / ``.bias``  ``{pre_conv,after_conv}.kernel`` (1, 1, in, out)
``base.R.bn{1,2}.*``                                               ``R.bn{1,2}.{scale,bias,mean,var}``
``base.R.conv{1,2}.weight`` (out, in, 3, 3)                        ``R.conv{1,2}.kernel`` (3, 3, in, out)
``base.R.shortcut.weight`` (out, in, 1, 1) / ``.bias``             ``R.shortcut.kernel`` (1, 1, in, out) / ``.bias``
``base.D.bn1.*``                                                   ``D.bn1.*``
``base.D.conv1.weight`` (in, out, st, sf) (ConvTranspose2d)        ``D.conv1.kernel`` (st, sf, in, out), not flipped
``film.B->conv_block1->beta{1,2}.weight`` (C, cond) / ``.bias``    ``B.conv_block1.film{1,2}.beta.kernel`` (cond, C)
``film.D->beta1.*``                                                ``D.film1.beta.*``
``film.D->conv_block2->beta{1,2}.*``                               ``D.conv_block2.film{1,2}.beta.*``
================================================================  ===============================================

Accepted and dropped (they exist in the reference but its forward pass never reads them): ``base.D.bn2.*`` and
``film.D->beta2.*`` (checked for shape when present, not required). Ignored: ``*num_batches_tracked`` and the fixed
STFT / iSTFT tensors (``base.stft.*``, ``base.istft.*``; ``uss_jax.audio.stft`` recomputes them).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from uss_jax.convert import common
from uss_jax.models.resunet import ResUNet30

_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}

_Entry = common.KeyMapEntry


def _patch_conv_transpose_kernel(w: np.ndarray) -> np.ndarray:
  """``ConvTranspose2d.weight`` (in, out, kh, kw), kernel = stride -> ``PatchConvTranspose.kernel`` (kh, kw, in, out).

  No spatial flip: ``PatchConvTranspose`` scatters ``x[i] * W[:, :, a]`` to output ``i * stride + a`` exactly as
  PyTorch does (``common.conv_transpose2d_kernel`` is for ``nnx.ConvTranspose``, which needs the flip).
  """
  if np.ndim(w) != 4:
    raise ValueError(f"ConvTranspose2d weight: expected 4 dims, got shape {np.shape(w)}")
  return np.ascontiguousarray(np.asarray(w).transpose(2, 3, 0, 1))


_CONV_SHAPE = lambda s: (s[3], s[2], s[0], s[1])  # (kh, kw, in, out) -> (out, in, kh, kw)
_CONVT_SHAPE = lambda s: (s[2], s[3], s[0], s[1])  # (kh, kw, in, out) -> (in, out, kh, kw)
_LINEAR_SHAPE = lambda s: (s[1], s[0])


def _key_map(num_blocks: int) -> tuple[dict[str, _Entry], dict[str, tuple[tuple[str, ...], Callable]]]:
  """(mapped PyTorch key -> entry, dropped PyTorch key -> (Flax path whose shape it has, shape map))."""
  table: dict[str, _Entry] = {}
  dropped: dict[str, tuple[tuple[str, ...], Callable]] = {}

  def bn(torch_prefix: str, path: tuple[str, ...]) -> None:
    for tname, fname in _BN.items():
      table[f"{torch_prefix}.{tname}"] = (path + (fname,), common.identity, common.same_shape)

  def conv(torch_prefix: str, path: tuple[str, ...], bias: bool) -> None:
    table[f"{torch_prefix}.weight"] = (path + ("kernel",), common.conv2d_kernel, _CONV_SHAPE)
    if bias:
      table[f"{torch_prefix}.bias"] = (path + ("bias",), common.identity, common.same_shape)

  def film(torch_name: str, path: tuple[str, ...]) -> None:
    table[f"film.{torch_name}.weight"] = (path + ("beta", "kernel"), common.linear_kernel, _LINEAR_SHAPE)
    table[f"film.{torch_name}.bias"] = (path + ("beta", "bias"), common.identity, common.same_shape)

  def res_block(block: str, sub: str, shortcut: bool) -> None:
    prefix, path = f"base.{block}.{sub}", (block, sub)
    for k in (1, 2):
      bn(f"{prefix}.bn{k}", path + (f"bn{k}",))
      conv(f"{prefix}.conv{k}", path + (f"conv{k}",), bias=False)
      film(f"{block}->{sub}->beta{k}", path + (f"film{k}",))
    if shortcut:
      conv(f"{prefix}.shortcut", path + ("shortcut",), bias=True)

  bn("base.bn0", ("bn0",))
  conv("base.pre_conv", ("pre_conv",), bias=True)
  conv("base.after_conv", ("after_conv",), bias=True)
  for i in range(1, num_blocks + 1):
    res_block(f"encoder_block{i}", "conv_block1", shortcut=True)
  res_block("conv_block7a", "conv_block1", shortcut=False)
  for j in range(1, num_blocks + 1):
    block = f"decoder_block{j}"
    bn(f"base.{block}.bn1", (block, "bn1"))
    film(f"{block}->beta1", (block, "film1"))
    table[f"base.{block}.conv1.weight"] = ((block, "conv1", "kernel"), _patch_conv_transpose_kernel, _CONVT_SHAPE)
    res_block(block, "conv_block2", shortcut=True)
    # The reference's unused bn2 has bn1's width; its FiLM beta2 has film1's shapes.
    for tname, fname in _BN.items():
      dropped[f"base.{block}.bn2.{tname}"] = ((block, "bn1", fname), common.same_shape)
    dropped[f"film.{block}->beta2.weight"] = ((block, "film1", "beta", "kernel"), _LINEAR_SHAPE)
    dropped[f"film.{block}->beta2.bias"] = ((block, "film1", "beta", "bias"), common.same_shape)
  return table, dropped


def _prune_identity_shortcuts(table: dict[str, _Entry], model: ResUNet30) -> dict[str, _Entry]:
  """Removes shortcut entries of blocks whose in/out widths agree (the reference has no shortcut there either)."""
  variables = _variables(model)
  return {k: e for k, e in table.items() if not (".shortcut." in k and e[0] not in variables)}


def _variables(model: ResUNet30) -> dict[tuple[str, ...], Any]:
  flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
  return {tuple(str(p) for p in path): v for path, v in flat}


def is_ignored_key(key: str) -> bool:
  """True for keys the converter skips: ``*num_batches_tracked`` and the fixed ``base.stft.*`` / ``base.istft.*``."""
  return key.endswith("num_batches_tracked") or key.startswith(("base.stft.", "base.istft."))


def torch_shapes(model: ResUNet30, *, include_dropped: bool = True) -> dict[str, tuple[int, ...]]:
  """The reference ResUNet30 state_dict keys and PyTorch shapes for ``model`` (STFT kernels, counters excluded).

  Tests use it to build rule state_dicts for reduced-width models:
  ``common.rule_state_dict(list(torch_shapes(model).items()))``.

  Args:
    model: a ``ResUNet30`` (may be abstract).
    include_dropped: also list the reference's unused ``decoder_block*.bn2`` / ``->beta2`` entries.
  """
  table, dropped = _key_map(model.num_blocks)
  table = _prune_identity_shortcuts(table, model)
  variables = _variables(model)
  shapes = {key: tuple(int(d) for d in to_torch(tuple(variables[path].shape)))
            for key, (path, _, to_torch) in table.items()}
  if include_dropped:
    shapes.update({key: tuple(int(d) for d in to_torch(tuple(variables[path].shape)))
                   for key, (path, to_torch) in dropped.items()})
  return shapes


def _strip_known_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  sd = common.strip_prefix(dict(state_dict), "module.")
  if sd and all(k.startswith("ss_model.") for k in sd):
    sd = common.strip_prefix(sd, "ss_model.")
  return sd


def convert_resunet30(state_dict: Mapping[str, Any], model: ResUNet30) -> None:
  """Loads a bytedance/uss ``ResUNet30`` state_dict into ``model`` in place (strict).

  Args:
    state_dict: ``{key: array}`` in PyTorch layout with keys ``base.*`` / ``film.*`` (numpy arrays or anything
      ``np.asarray`` accepts); a ``module.`` prefix, or an ``ss_model.`` prefix on every key, is removed.
    model: a ``ResUNet30`` (concrete or from ``nnx.eval_shape``) whose widths match the checkpoint.

  Raises:
    ValueError: listing unknown keys (neither mapped, dropped nor ignored), missing keys, and shape mismatches
      (the dropped ``decoder_block*.bn2`` / ``->beta2`` entries included).
  """
  sd = _strip_known_prefixes(state_dict)
  table, dropped = _key_map(model.num_blocks)
  table = _prune_identity_shortcuts(table, model)
  expected = torch_shapes(model)
  unknown = sorted(k for k in sd if k not in table and k not in dropped and not is_ignored_key(k))
  missing = sorted(k for k in table if k not in sd)
  bad = sorted(f"{k}: checkpoint {tuple(np.shape(sd[k]))} vs model (PyTorch layout) {expected[k]}"
               for k in expected if k in sd and tuple(np.shape(sd[k])) != expected[k])
  if unknown or missing or bad:
    raise ValueError(f"ResUNet30 checkpoint does not match the model: unknown keys {unknown}; missing keys "
                     f"{missing}; shape mismatches {bad}")
  values = {path: transform(np.asarray(sd[key], dtype=np.float32)) for key, (path, transform, _) in table.items()}
  common.assign_flat(model, values)


def infer_resunet30_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """``ResUNet30`` constructor arguments read off a state_dict's shapes.

  Returns:
    ``{'input_channels', 'output_channels', 'condition_size', 'channels', 'n_fft'}``.

  Raises:
    ValueError: the keys do not look like a ResUNet30.
  """
  sd = _strip_known_prefixes(state_dict)
  blocks = sorted(int(m.group(1)) for k in sd
                  if (m := re.fullmatch(r"base\.encoder_block(\d+)\.conv_block1\.conv2\.weight", k)))
  if not blocks or blocks != list(range(1, len(blocks) + 1)):
    raise ValueError(f"cannot infer ResUNet30 encoder blocks from the checkpoint keys (found blocks {blocks})")
  try:
    return {
        "input_channels": int(np.shape(sd["base.pre_conv.weight"])[1]),
        "output_channels": int(np.shape(sd["base.after_conv.weight"])[0]) // 3,
        "condition_size": int(np.shape(sd["film.encoder_block1->conv_block1->beta1.weight"])[1]),
        "channels": tuple(int(np.shape(sd[f"base.encoder_block{i}.conv_block1.conv2.weight"])[0]) for i in blocks),
        "n_fft": 2 * (int(np.shape(sd["base.bn0.weight"])[0]) - 1),
    }
  except KeyError as e:
    raise ValueError(f"ResUNet30 checkpoint lacks {e.args[0]!r}") from e


def split_lightning_state_dict(state_dict: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """Groups a ``LitSeparation`` state_dict by its first key component, with that prefix removed.

  E.g. ``{'ss_model': {'base.bn0.weight': ...}, 'query_net': {'base.conv_block1.conv1.weight': ...},
  'anchor_segment_detector': {...}}``; keys without a dot go to group ``''``.
  """
  groups: dict[str, dict[str, Any]] = {}
  for key, value in state_dict.items():
    head, _, rest = key.partition(".")
    if not rest:
      head, rest = "", key
    groups.setdefault(head, {})[rest] = value
  return groups


@dataclasses.dataclass
class USSCheckpoint:
  """What a bytedance/uss Lightning checkpoint holds, converted where a converter exists here.

  Attributes:
    model: the ``ResUNet30`` with the ``ss_model.*`` weights, in eval mode.
    query_net_base: the query net's PANNs Cnn14 state_dict (``query_net.base.*`` with that prefix removed; keys as
      in a PANNs checkpoint's ``'model'`` entry), ready for ``uss_jax.convert.panns.convert_cnn14``; empty when the
      checkpoint has no query net.
    query_net_adaptor: the other ``query_net.*`` entries (``fc1`` / ``fc2`` of ``AdaptiveCnn14_Wrapper``; empty for
      ``Cnn14_Wrapper``, whose output is the Cnn14 output itself), prefix removed.
    other: every remaining top-level group (e.g. ``anchor_segment_detector``), prefix removed.
  """
  model: ResUNet30
  query_net_base: dict[str, np.ndarray]
  query_net_adaptor: dict[str, np.ndarray]
  other: dict[str, dict[str, np.ndarray]]


def load_uss_checkpoint(path: common.PathLike, model: ResUNet30 | None = None, *, key: str | None = "state_dict",
                        rngs: nnx.Rngs | None = None, **model_kwargs: Any) -> USSCheckpoint:
  """Reads a bytedance/uss checkpoint (e.g. the released ``pretrained.ckpt``) and converts its separator.

  Args:
    path: a Lightning ``.ckpt`` (a dict whose ``'state_dict'`` holds ``ss_model.*`` / ``query_net.*`` / ...
      entries; needs torch, loaded with ``weights_only=True``, never unpickling code), or a ``.safetensors`` /
      ``.npz`` copy of that state_dict (numpy only; keys may carry a ``'state_dict.'`` prefix).
    model: the target; None builds one (abstractly, then filled) with the widths inferred from the checkpoint
      (``infer_resunet30_config``) updated by ``model_kwargs`` (e.g. ``hop_length``, ``precision``).
    key: checkpoint entry holding the state_dict (None for a bare state_dict).
    rngs: RNGs for building the model (nothing is drawn; default ``nnx.Rngs(0)``).
    **model_kwargs: further ``ResUNet30`` arguments for a built model.

  Returns:
    a ``USSCheckpoint`` (model in eval mode, plus the query net's weights for the Cnn14 converter).

  Raises:
    ImportError: a torch checkpoint without torch installed.
    ValueError: no ``ss_model.*`` entries, or the separator weights do not match (see ``convert_resunet30``).
  """
  raw = common.strip_prefix(common.load_state_dict(path, key=key), "module.")
  groups = split_lightning_state_dict(raw)
  if "ss_model" not in groups:
    raise ValueError(f"{path}: no 'ss_model.*' entries (found top-level groups {sorted(groups)})")
  ss = groups.pop("ss_model")
  query = groups.pop("query_net", {})
  base = {k[len("base."):]: v for k, v in query.items() if k.startswith("base.")}
  adaptor = {k: v for k, v in query.items() if not k.startswith("base.")}
  if model is None:
    kwargs = {**infer_resunet30_config(ss), **model_kwargs}
    model = nnx.eval_shape(lambda: ResUNet30(rngs=rngs or nnx.Rngs(0), **kwargs))
    convert_resunet30(ss, model)
    abstract = [p for p, v in nnx.to_flat_state(nnx.state(model))
                if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
    if abstract:
      raise ValueError(f"variables left without a value after conversion: {abstract}")
  else:
    convert_resunet30(ss, model)
  model.eval()
  as_np = lambda d: {k: np.asarray(v) for k, v in d.items()}
  return USSCheckpoint(model=model, query_net_base=as_np(base), query_net_adaptor=as_np(adaptor),
                       other={g: as_np(d) for g, d in groups.items()})
