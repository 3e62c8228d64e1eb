"""LAION-CLAP audio checkpoints (``audio_branch.*`` HTS-AT + ``audio_projection.*``) -> ``uss_jax.models.htsat``.

Sources: LAION-AI/CLAP ``src/laion_clap/clap_module/htsat.py`` (``HTSAT_Swin_Transformer`` module names),
``model.py`` (``CLAP.audio_branch``, ``CLAP.audio_projection = Sequential(Linear, ReLU, Linear)``) and ``factory.py``
(``load_state_dict``: the released ``.pt`` files hold ``{'state_dict': ...}`` whose keys start with ``module.``).
The same ``convert_htsat`` maps a bare HTS-AT state_dict (RetroCirce/HTS-Audio-Transformer checkpoints hold it under
``sed_model.``; pass ``prefix='sed_model.'`` to ``convert_htsat_checkpoint``).

Key map (PyTorch -> Flax NNX path, ``i`` stage, ``j`` block):

=====================================================  =========================================================
``bn0.weight`` / ``.bias`` / ``.running_mean`` / ``.running_var``  ``bn0.scale`` / ``.bias`` / ``.mean`` / ``.var``
``patch_embed.proj.weight`` (D, 1, p, p) / ``.bias``   ``patch_embed.proj.kernel`` (p, p, 1, D) / ``.bias``
``patch_embed.norm.weight`` / ``.bias``                ``patch_embed.norm.scale`` / ``.bias``
``layers.i.blocks.j.norm1`` / ``norm2``                ``layers.i.blocks.j.norm1`` / ``norm2`` (scale, bias)
``layers.i.blocks.j.attn.qkv`` / ``attn.proj``         ``...attn.qkv`` / ``attn.proj`` (kernel = weight.T, bias; the qkv
                                                        kernel reshaped to (C, 3, heads, head_dim))
``layers.i.blocks.j.attn.relative_position_bias_table``  same name, unchanged ((2w-1)^2, heads)
``layers.i.blocks.j.mlp.fc1`` / ``mlp.fc2``            same names (kernel = weight.T, bias)
``layers.i.downsample.norm`` / ``.reduction.weight``   same names (reduction has no bias)
``norm.weight`` / ``.bias``                            ``norm.scale`` / ``.bias``
``tscam_conv.weight`` (K, C, c, 3) / ``.bias``         ``tscam_conv.kernel`` (3, c, C, K) (time, freq, in, out)
``audio_projection.0`` / ``audio_projection.2``        ``audio_projection.linear1`` / ``linear2`` (CLAP only)
=====================================================  =========================================================

Fixed buffers are checked, not loaded: ``relative_position_index`` (must equal ours), ``attn_mask`` (must equal the
shifted-window mask of the nominal grid), the torchlibrosa STFT kernels (``n_fft`` must match the front end) and
``logmel_extractor.melW`` (must equal the front end's librosa mel matrix: a mismatch means a wrong ``sample_rate`` /
``fmin`` / ``fmax``); ``bn0.num_batches_tracked`` is ignored; ``head.*`` (a ``Linear(classes, classes)`` the
reference builds but never calls) is reported as unused. Feature-fusion checkpoints (``enable_fusion=True``:
``mel_conv2d``, ``fusion_model``, ``mel_conv1d``) are refused. In a full CLAP checkpoint every key outside
``audio_branch.`` / ``audio_projection.`` (text branch, ``audio_transform``, logit scales) is reported as ignored.

Files are read without unpickling code: ``.safetensors`` / ``.npz`` with numpy, torch files with
``torch.load(weights_only=True)`` (``uss_jax.convert.common.load_state_dict``).
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from uss_jax.audio import mel as mel_lib
from uss_jax.convert import common
from uss_jax.models import htsat as htsat_lib
from uss_jax.models import mae

FUSION_KEYS = ("mel_conv2d", "fusion_model", "mel_conv1d")
FRONTEND_BUFFERS = ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight",
                    "logmel_extractor.melW")
UNUSED_KEYS = ("head.weight", "head.bias")
BRANCH, PROJECTION = "audio_branch.", "audio_projection."

_Entry = common.KeyMapEntry


def _tscam_kernel(w: np.ndarray) -> np.ndarray:
  # torch (K, C, c_freq, 3_time) -> ours (3_time, c_freq, C, K)
  if np.ndim(w) != 4:
    raise ValueError(f"tscam_conv weight: expected 4 dims, got {np.shape(w)}")
  return np.ascontiguousarray(np.transpose(w, (3, 2, 1, 0)))


def _tscam_shape(shape: tuple[int, ...]) -> tuple[int, ...]:  # (3, c, C, K) -> (K, C, c, 3)
  return (shape[3], shape[2], shape[1], shape[0])


def htsat_key_map(model: htsat_lib.HTSAT) -> dict[str, _Entry]:
  """PyTorch key (bare HTS-AT state_dict) -> (Flax path, PyTorch -> Flax transform, Flax -> PyTorch shape map)."""
  table: dict[str, _Entry] = {}

  def linear(name: str, path: tuple[Any, ...], bias: bool = True) -> None:
    table[f"{name}.weight"] = (path + ("kernel",), common.linear_kernel, common.transposed_shape)
    if bias:
      table[f"{name}.bias"] = (path + ("bias",), common.identity, common.same_shape)

  def norm(name: str, path: tuple[Any, ...]) -> None:
    table[f"{name}.weight"] = (path + ("scale",), common.identity, common.same_shape)
    table[f"{name}.bias"] = (path + ("bias",), common.identity, common.same_shape)

  norm("bn0", ("bn0",))
  table["bn0.running_mean"] = (("bn0", "mean"), common.identity, common.same_shape)
  table["bn0.running_var"] = (("bn0", "var"), common.identity, common.same_shape)
  table["patch_embed.proj.weight"] = (("patch_embed", "proj", "kernel"), common.conv2d_kernel, common.conv2d_shape)
  table["patch_embed.proj.bias"] = (("patch_embed", "proj", "bias"), common.identity, common.same_shape)
  norm("patch_embed.norm", ("patch_embed", "norm"))
  for i, stage in enumerate(model.layers):
    for j in range(len(stage.blocks)):
      p, path = f"layers.{i}.blocks.{j}", ("layers", i, "blocks", j)
      norm(f"{p}.norm1", path + ("norm1",))
      table.update(common.qkv_entries(f"{p}.attn.qkv", path + ("attn", "qkv"), stage.blocks[j].attn.num_heads))
      linear(f"{p}.attn.proj", path + ("attn", "proj"))
      table[f"{p}.attn.relative_position_bias_table"] = (
          path + ("attn", "relative_position_bias_table"), common.identity, common.same_shape)
      norm(f"{p}.norm2", path + ("norm2",))
      linear(f"{p}.mlp.fc1", path + ("mlp", "fc1"))
      linear(f"{p}.mlp.fc2", path + ("mlp", "fc2"))
    if stage.downsample is not None:
      norm(f"layers.{i}.downsample.norm", ("layers", i, "downsample", "norm"))
      linear(f"layers.{i}.downsample.reduction", ("layers", i, "downsample", "reduction"), bias=False)
  norm("norm", ("norm",))
  table["tscam_conv.weight"] = (("tscam_conv", "kernel"), _tscam_kernel, _tscam_shape)
  table["tscam_conv.bias"] = (("tscam_conv", "bias"), common.identity, common.same_shape)
  return table


def projection_key_map() -> dict[str, _Entry]:
  """``audio_projection.{0,2}.{weight,bias}`` -> ``audio_projection.linear{1,2}`` (keys without the prefix)."""
  table: dict[str, _Entry] = {}
  for torch_idx, name in (("0", "linear1"), ("2", "linear2")):
    table[f"{torch_idx}.weight"] = (("audio_projection", name, "kernel"), common.linear_kernel, common.transposed_shape)
    table[f"{torch_idx}.bias"] = (("audio_projection", name, "bias"), common.identity, common.same_shape)
  return table


def _variables(model: nnx.Module) -> dict[tuple[Any, ...], nnx.Variable]:
  return {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))}


def torch_shapes(model: htsat_lib.HTSAT | htsat_lib.CLAPAudioEncoder) -> dict[str, tuple[int, ...]]:
  """The learned PyTorch keys and shapes a checkpoint for ``model`` holds (buffers and ``head`` excluded).

  For a ``CLAPAudioEncoder`` the keys carry the ``audio_branch.`` / ``audio_projection.`` prefixes.
  """
  if isinstance(model, htsat_lib.CLAPAudioEncoder):
    variables = _variables(model)
    branch = {BRANCH + k: tuple(int(d) for d in to_torch(tuple(variables[("audio_branch",) + path].shape)))
              for k, (path, _, to_torch) in htsat_key_map(model.audio_branch).items()}
    proj = {PROJECTION + k: tuple(int(d) for d in to_torch(tuple(variables[path].shape)))
            for k, (path, _, to_torch) in projection_key_map().items()}
    return {**branch, **proj}
  variables = _variables(model)
  return {k: tuple(int(d) for d in to_torch(tuple(variables[path].shape)))
          for k, (path, _, to_torch) in htsat_key_map(model).items()}


def _stage_grids(model: htsat_lib.HTSAT) -> list[tuple[int, int]]:
  return [(model.grid[0] // 2 ** i, model.grid[1] // 2 ** i) for i in range(len(model.depths))]


def _check_buffer(key: str, value: np.ndarray, model: htsat_lib.HTSAT) -> str | None:
  """None if ``key`` is a fixed buffer consistent with ``model``; an error message if inconsistent; raises KeyError
  if ``key`` is not a buffer name."""
  if key == "bn0.num_batches_tracked":
    return None
  m = re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.(attn\.relative_position_index|attn_mask)", key)
  if m:
    i, j, what = int(m.group(1)), int(m.group(2)), m.group(3)
    if i >= len(model.layers) or j >= len(model.layers[i].blocks):
      raise KeyError(key)
    block = model.layers[i].blocks[j]
    if what == "attn.relative_position_index":
      want = htsat_lib.relative_position_index(block.window)
      if np.shape(value) != want.shape or not np.array_equal(np.asarray(value), want):
        return f"{key}: differs from the window-{block.window} index"
      return None
    if not block.shift:
      raise KeyError(key)
    want = mae.shifted_window_mask(_stage_grids(model)[i], (block.window,) * 2, (block.shift,) * 2)
    if np.shape(value) != want.shape or not np.allclose(np.asarray(value, np.float64), want):
      return f"{key}: shape {np.shape(value)} / values differ from the shifted-window mask {want.shape} of the grid"
    return None
  if key in FRONTEND_BUFFERS:
    fe = model.frontend
    n_fft = getattr(fe, "n_fft", None)
    if key.startswith("spectrogram_extractor"):
      if n_fft is not None and np.shape(value) != (n_fft // 2 + 1, 1, n_fft):
        return f"{key}: shape {np.shape(value)} does not match the front end's n_fft={n_fft}"
      return None
    if n_fft is not None and hasattr(fe, "sample_rate"):
      want = mel_lib.mel_filterbank(fe.sample_rate, n_fft, fe.n_mels, fe.fmin, fe.fmax)
      if np.shape(value) != want.shape or not np.allclose(np.asarray(value, np.float64), want, rtol=1e-4, atol=1e-7):
        return (f"{key}: the checkpoint's mel filterbank {np.shape(value)} differs from the front end's (sample_rate="
                f"{fe.sample_rate}, n_fft={n_fft}, n_mels={fe.n_mels}, fmin={fe.fmin}, fmax={fe.fmax})")
    return None
  raise KeyError(key)


def convert_htsat(state_dict: Mapping[str, Any], model: htsat_lib.HTSAT) -> dict[str, list[str]]:
  """Loads a bare HTS-AT state_dict (no ``audio_branch.`` prefix) into ``model`` in place, strictly.

  Every learned key must have a place and every model variable a value, with equal shapes; fixed buffers are
  checked (module docstring).

  Args:
    state_dict: ``{key: array}`` in PyTorch layout.
    model: the target (may be abstract, from ``nnx.eval_shape``).

  Returns:
    ``{'loaded': [...], 'buffers': [...], 'unused': [...]}``.

  Raises:
    ValueError: a feature-fusion checkpoint, unknown / missing keys, shape mismatches or inconsistent buffers.
  """
  values, report = _htsat_values(dict(state_dict), model)
  common.assign_flat(model, values)
  return report


def _htsat_values(state_dict: dict[str, Any], model: htsat_lib.HTSAT) -> tuple[dict, dict[str, list[str]]]:
  fusion = sorted(k for k in state_dict if k.split(".")[0] in FUSION_KEYS)
  if fusion:
    raise ValueError(f"feature-fusion (enable_fusion=True) HTS-AT checkpoints are not supported: {fusion[:4]}...")
  table = htsat_key_map(model)
  expected = torch_shapes(model)
  unknown, buffers, unused, bad_buffers = [], [], [], []
  for key, value in state_dict.items():
    if key in table:
      continue
    if key in UNUSED_KEYS:
      unused.append(key)
      continue
    try:
      problem = _check_buffer(key, value, model)
    except KeyError:
      unknown.append(key)
      continue
    (bad_buffers if problem else buffers).append(problem or key)
  missing = sorted(k for k in table if k not in state_dict)
  bad = sorted(f"{k}: checkpoint {tuple(np.shape(state_dict[k]))} vs model (PyTorch layout) {expected[k]}"
               for k in table if k in state_dict and tuple(np.shape(state_dict[k])) != expected[k])
  if unknown or missing or bad or bad_buffers:
    raise ValueError(f"HTS-AT checkpoint does not match the model: unknown keys {sorted(unknown)}; missing keys "
                     f"{missing}; shape mismatches {bad}; inconsistent buffers {bad_buffers}")
  values = {path: transform(np.asarray(state_dict[key], np.float32)) for key, (path, transform, _) in table.items()}
  return values, {"loaded": sorted(table), "buffers": sorted(buffers), "unused": sorted(unused)}


def convert_clap(state_dict: Mapping[str, Any], encoder: htsat_lib.CLAPAudioEncoder) -> dict[str, list[str]]:
  """Loads the audio side of a LAION-CLAP state_dict into ``encoder`` in place, strictly.

  ``audio_branch.*`` -> ``encoder.audio_branch`` (``convert_htsat`` rules), ``audio_projection.*`` ->
  ``encoder.audio_projection``; a ``module.`` prefix is removed; every other key is reported as ignored.

  Returns:
    ``{'loaded', 'buffers', 'unused', 'ignored'}`` key lists (prefixed names).

  Raises:
    ValueError: as ``convert_htsat``, or unknown / missing / mis-shaped ``audio_projection`` keys.
  """
  sd = common.strip_prefix(dict(state_dict), "module.")
  branch = {k[len(BRANCH):]: v for k, v in sd.items() if k.startswith(BRANCH)}
  proj = {k[len(PROJECTION):]: v for k, v in sd.items() if k.startswith(PROJECTION)}
  ignored = sorted(k for k in sd if not k.startswith((BRANCH, PROJECTION)))
  if not branch:
    raise ValueError("no audio_branch.* keys: not a LAION-CLAP checkpoint (for a bare HTS-AT use convert_htsat)")
  values, report = _htsat_values(branch, encoder.audio_branch)
  values = {("audio_branch",) + p: v for p, v in values.items()}
  ptable = projection_key_map()
  variables = _variables(encoder)
  unknown = sorted(PROJECTION + k for k in proj if k not in ptable)
  missing = sorted(PROJECTION + k for k in ptable if k not in proj)
  bad = []
  for k, (path, transform, to_torch) in ptable.items():
    if k in proj:
      want = tuple(to_torch(tuple(variables[path].shape)))
      if tuple(np.shape(proj[k])) != want:
        bad.append(f"{PROJECTION}{k}: checkpoint {tuple(np.shape(proj[k]))} vs model {want}")
      else:
        values[path] = transform(np.asarray(proj[k], np.float32))
  if unknown or missing or bad:
    raise ValueError(f"CLAP audio_projection does not match: unknown keys {unknown}; missing keys {missing}; "
                     f"shape mismatches {bad}")
  common.assign_flat(encoder, values)
  return {"loaded": sorted([BRANCH + k for k in report["loaded"]] + [PROJECTION + k for k in ptable]),
          "buffers": [BRANCH + k for k in report["buffers"]], "unused": [BRANCH + k for k in report["unused"]],
          "ignored": ignored}


# --------------------------------------------------------------------------------------------------------------------
# Architecture inference and files.
# --------------------------------------------------------------------------------------------------------------------


def infer_htsat_config(state_dict: Mapping[str, Any], *, freq_ratio: int | None = None,
                       target_frames: int | None = None) -> dict[str, Any]:
  """``HTSAT`` arguments implied by a bare HTS-AT state_dict.

  From the weights: ``embed_dim``, ``patch_size`` (= stride), ``depths`` (block indices), ``num_heads`` (columns of
  each stage's bias table), ``window_size`` (stage 0's table has ``(2w - 1)^2`` rows), ``mlp_ratio``, ``mel_bins``
  (``bn0``), ``num_classes`` (``tscam_conv``). ``freq_ratio`` / ``target_frames`` are not stored: unless given they
  come from stage 0's ``attn_mask`` buffer under the reference's square image (``spec_size x spec_size``,
  ``freq_ratio = spec_size / mel_bins``, ``target_frames = spec_size * freq_ratio``), else LAION's 4 / 1024.

  Raises:
    ValueError: keys needed for the inference are missing or inconsistent.
  """
  try:
    proj = np.shape(state_dict["patch_embed.proj.weight"])
    mel_bins = int(np.shape(state_dict["bn0.weight"])[0])
    tscam = np.shape(state_dict["tscam_conv.weight"])
  except KeyError as e:
    raise ValueError(f"HTS-AT checkpoint lacks {e.args[0]!r}") from e
  blocks: dict[int, set[int]] = {}
  for k in state_dict:
    if m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", k):
      blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
  stages = sorted(blocks)
  if not stages or stages != list(range(len(stages))) or any(sorted(blocks[i]) != list(range(len(blocks[i])))
                                                             for i in stages):
    raise ValueError(f"cannot infer the depths: blocks {blocks}")
  depths = tuple(len(blocks[i]) for i in stages)
  heads = tuple(int(np.shape(state_dict[f"layers.{i}.blocks.0.attn.relative_position_bias_table"])[1])
                for i in stages)
  rows0 = int(np.shape(state_dict["layers.0.blocks.0.attn.relative_position_bias_table"])[0])
  window = (int(round(np.sqrt(rows0))) + 1) // 2
  if (2 * window - 1) ** 2 != rows0:
    raise ValueError(f"relative_position_bias_table with {rows0} rows is not (2w - 1)^2")
  embed_dim, patch = int(proj[0]), (int(proj[2]), int(proj[3]))
  hidden = int(np.shape(state_dict["layers.0.blocks.0.mlp.fc1.weight"])[0])
  if freq_ratio is None:
    mask = state_dict.get("layers.0.blocks.1.attn_mask")
    if mask is not None:
      side = int(round(np.sqrt(np.shape(mask)[0]))) * window * patch[0]
      freq_ratio = max(side // mel_bins, 1)
      target_frames = target_frames or side * freq_ratio
    else:
      freq_ratio = 4
  target_frames = target_frames or 256 * freq_ratio
  return {"num_classes": int(tscam[0]), "mel_bins": mel_bins, "freq_ratio": int(freq_ratio),
          "target_frames": int(target_frames), "patch_size": patch, "embed_dim": embed_dim, "depths": depths,
          "num_heads": heads, "window_size": window, "mlp_ratio": hidden / embed_dim}


def load_state_dict(path: common.PathLike, *, key: str | None = "state_dict") -> dict[str, np.ndarray]:
  """A LAION-CLAP (or HTS-AT) checkpoint as ``{name: numpy array}`` (PyTorch layout), without unsafe unpickling.

  ``.safetensors`` / ``.npz``: numpy only (entries under ``f'{key}.'`` when present, else all). Torch files:
  ``torch.load(weights_only=True)`` of ``checkpoint[key]`` (or the whole file when it has no ``key``). A
  ``module.`` prefix is removed.

  Raises:
    ImportError: a torch file without torch installed (convert it to ``.safetensors`` / ``.npz`` first).
  """
  path = pathlib.Path(path)
  try:
    sd = common.load_state_dict(path, key=key)
  except ValueError as e:
    if key is None or "no entry" not in str(e):
      raise
    sd = common.load_state_dict(path, key=None)
  return common.strip_prefix(sd, "module.")


def clap_architecture(state_dict: Mapping[str, Any], *, freq_ratio: int | None = None,
                      target_frames: int | None = None, joint_dim: int | None = None,
                      **model_kwargs: Any) -> dict[str, Any]:
  """``build_clap_encoder`` arguments implied by a LAION-CLAP state_dict (``infer_htsat_config`` of the branch).

  Returns:
    ``{'num_classes', 'joint_dim', 'htsat': {HTSAT kwargs}}``.

  Raises:
    ValueError: no ``audio_branch.*`` keys, or as ``infer_htsat_config``.
  """
  sd = common.strip_prefix(dict(state_dict), "module.")
  branch = {k[len(BRANCH):]: v for k, v in sd.items() if k.startswith(BRANCH)}
  if not branch:
    raise ValueError("no audio_branch.* keys (not a LAION-CLAP checkpoint)")
  kwargs = {**infer_htsat_config(branch, freq_ratio=freq_ratio, target_frames=target_frames), **model_kwargs}
  num_classes = kwargs.pop("num_classes")
  joint = joint_dim or int(np.shape(sd.get(PROJECTION + "0.weight", np.zeros((htsat_lib.CLAP_JOINT_DIM, 1))))[0])
  return {"num_classes": int(num_classes), "joint_dim": int(joint), "htsat": kwargs}


def build_clap_encoder(architecture: Mapping[str, Any], frontend: Any, rngs: nnx.Rngs) -> htsat_lib.CLAPAudioEncoder:
  """A (freshly initialised) ``CLAPAudioEncoder`` of ``clap_architecture``'s result with ``frontend``."""
  branch = htsat_lib.HTSAT(architecture["num_classes"], frontend=frontend, rngs=rngs, **architecture["htsat"])
  return htsat_lib.CLAPAudioEncoder(branch, architecture["joint_dim"], rngs=rngs)


def load_clap_checkpoint(path: common.PathLike, *, frontend: Any = None, freq_ratio: int | None = None,
                         target_frames: int | None = None, joint_dim: int | None = None,
                         **model_kwargs: Any) -> htsat_lib.CLAPAudioEncoder:
  """Reads a LAION-CLAP checkpoint into a ``CLAPAudioEncoder`` (architecture from ``clap_architecture``), eval mode.

  Args:
    path: ``630k-audioset-best.pt`` (needs torch) or a ``.safetensors`` / ``.npz`` copy of its state_dict.
    frontend: the branch's front end (default LAION's ``htsat.clap_frontend()``: 48 kHz, 1024 / 480, 64 mels
      50-14000 Hz); checked against the checkpoint's STFT / mel buffers.
    freq_ratio, target_frames: see ``infer_htsat_config``.
    joint_dim: projection width (default: from ``audio_projection.0.weight``).
    **model_kwargs: ``HTSAT`` overrides (e.g. ``drop_path=0``).

  Raises:
    ImportError / ValueError: as ``load_state_dict`` / ``convert_clap``.
  """
  sd = load_state_dict(path)
  arch = clap_architecture(sd, freq_ratio=freq_ratio, target_frames=target_frames, joint_dim=joint_dim,
                           **model_kwargs)
  fe = frontend if frontend is not None else htsat_lib.clap_frontend()
  encoder = nnx.eval_shape(lambda: build_clap_encoder(arch, fe, nnx.Rngs(0)))
  convert_clap(sd, encoder)
  encoder.eval()
  return encoder


def load_htsat_checkpoint(path: common.PathLike, *, frontend: Any = None, prefix: str = "sed_model.",
                          key: str | None = "state_dict", freq_ratio: int | None = None,
                          target_frames: int | None = None, **model_kwargs: Any) -> htsat_lib.HTSAT:
  """Reads a bare HTS-AT checkpoint (RetroCirce ``HTSAT_AudioSet_Saved_*.ckpt``: keys under ``sed_model.``), eval mode.

  Raises:
    ImportError / ValueError: as ``load_state_dict`` / ``convert_htsat``.
  """
  sd = load_state_dict(path, key=key)
  if prefix:
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)} or sd
  kwargs = {**infer_htsat_config(sd, freq_ratio=freq_ratio, target_frames=target_frames), **model_kwargs}
  num_classes = kwargs.pop("num_classes")
  model = nnx.eval_shape(lambda: htsat_lib.HTSAT(num_classes, frontend=frontend, rngs=nnx.Rngs(0), **kwargs))
  convert_htsat(sd, model)
  model.eval()
  return model
