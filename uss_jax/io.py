"""Host file I/O through ``etils.epath``: local paths and cloud URLs (``gs://``, ``s3://``) alike.

Every host file of a run (workdirs, anchor indexes, eval sets, class embeddings, artifacts, another run's files) goes
through these helpers, never through ``open`` / ``os``: with a ``gs://`` workdir, ``os.makedirs`` would silently make
a local ``./gs:/...`` folder on each host. ``epath`` serves ``gs://`` through ``tf.io.gfile`` when TensorFlow is
installed (it is, for clu's writers) and through fsspec (``gcsfs``) otherwise.

Files a later run trusts (eval sets, anchor indexes, class embeddings, system contexts) are written to a temporary name
beside the final one and renamed (``write_bytes_atomic``), so a crash never leaves a half-written file that a later
run would read; on an object store the object appears whole or not at all. Multi-process runs write such files on
process 0 only and then pass a barrier (``write_on_process0``). A stored set records the settings it was built with
(``settings_mismatch`` / ``check_settings``) and is refused when they differ.

Libraries that open files themselves (orbax / TensorStore, TensorBoard's gfile, tfds / array_record) get ``native(p)``:
the URL unchanged, a local path made absolute.

Errors: ``FileNotFoundError`` naming the path for a missing file (``read_*``); ``StoredSettingsError`` (a
``ValueError``) naming the file and the differing setting (``check_settings``).
"""

from __future__ import annotations

import io as _io
import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from etils import epath

PathLike = str | os.PathLike


def path(p: PathLike) -> epath.Path:
  """An ``epath.Path`` for a local path or a URL (``gs://bucket/x``)."""
  return epath.Path(p)


def is_remote(p: PathLike) -> bool:
  """True for URLs (``scheme://...``), False for local paths."""
  return "://" in os.fspath(p)


def native(p: PathLike) -> str:
  """The string to hand to a library that opens ``p`` itself (orbax, TensorBoard's gfile, tfds / array_record).

  URLs are returned unchanged; local paths are made absolute (orbax refuses relative ones). A path class that knows a
  local mount of its URLs (an object with a ``native_path()`` method, e.g. the tests' fake bucket, the way a gcsfuse
  mount backs ``gs://``) is mapped to that mount.
  """
  if hasattr(p, "native_path"):
    return str(p.native_path())
  s = os.fspath(p)
  if is_remote(s):
    mapped = path(s)
    return str(mapped.native_path()) if hasattr(mapped, "native_path") else s
  return os.path.abspath(s)


def join(*parts: PathLike) -> str:
  """``parts`` joined with ``/`` (URLs and POSIX paths), as a string."""
  return os.path.join(*(os.fspath(p) for p in parts))


def exists(p: PathLike) -> bool:
  return path(p).exists()


def is_dir(p: PathLike) -> bool:
  return path(p).is_dir()


def makedirs(p: PathLike) -> None:
  """Creates ``p`` and its parents (no-op when it exists; on object stores folders are implicit)."""
  path(p).mkdir(parents=True, exist_ok=True)


def listdir(p: PathLike) -> list[str]:
  """Names in folder ``p`` (sorted); ``[]`` when it does not exist."""
  d = path(p)
  if not d.exists():
    return []
  return sorted(c.name for c in d.iterdir())


def remove(p: PathLike, missing_ok: bool = True) -> None:
  """Deletes file ``p``."""
  path(p).unlink(missing_ok=missing_ok)


def rmtree(p: PathLike) -> None:
  """Deletes folder ``p`` with everything in it (no-op when missing)."""
  d = path(p)
  if d.exists():
    d.rmtree()


def _missing(p: PathLike, e: Exception) -> FileNotFoundError:
  return FileNotFoundError(f"{os.fspath(p)}: no such file ({type(e).__name__}: {e})")


def read_bytes(p: PathLike) -> bytes:
  """Contents of file ``p``.

  Raises:
    FileNotFoundError: ``p`` does not exist (the message names it).
  """
  try:
    return path(p).read_bytes()
  except FileNotFoundError:
    raise
  except Exception as e:  # gfile raises tf.errors.NotFoundError  # pylint: disable=broad-except
    if not exists(p):
      raise _missing(p, e) from e
    raise


def read_text(p: PathLike) -> str:
  """UTF-8 text of file ``p`` (``FileNotFoundError`` naming it when missing)."""
  return read_bytes(p).decode("utf-8")


def read_json(p: PathLike) -> Any:
  """The JSON value in file ``p``.

  Raises:
    FileNotFoundError: missing file. ValueError: not valid JSON (the message names the file).
  """
  text = read_text(p)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{os.fspath(p)}: not valid JSON ({e})") from e


def _tmp_name(final: epath.Path) -> epath.Path:
  return final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"


def write_bytes_atomic(p: PathLike, data: bytes) -> None:
  """Writes ``data`` to a temporary file beside ``p`` and renames it to ``p`` (parents created, ``p`` replaced)."""
  final = path(p)
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = _tmp_name(final)
  try:
    tmp.write_bytes(data)
    tmp.replace(final)
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise


def write_text_atomic(p: PathLike, text: str) -> None:
  """``write_bytes_atomic`` of UTF-8 text."""
  write_bytes_atomic(p, text.encode("utf-8"))


def write_json_atomic(p: PathLike, value: Any) -> None:
  """``value`` as indented, key-sorted JSON, written atomically."""
  write_text_atomic(p, json.dumps(value, indent=1, sort_keys=True))


def save_npz_atomic(p: PathLike, **arrays: Any) -> None:
  """``np.savez`` into memory, then ``write_bytes_atomic`` (works for cloud paths too; no pickled objects)."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  buf = _io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes_atomic(p, buf.getvalue())


def load_npz(p: PathLike) -> dict[str, Any]:
  """All arrays of an ``.npz`` file (no pickle), read through epath.

  Raises:
    FileNotFoundError: missing file. ValueError: not an npz archive (the message names the file).
  """
  import numpy as np  # pylint: disable=import-outside-toplevel

  data = read_bytes(p)
  try:
    with np.load(_io.BytesIO(data), allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"{os.fspath(p)}: not a readable .npz file ({e})") from e


def write_wav_atomic(p: PathLike, waveform: Any, sample_rate: int, subtype: str = "FLOAT") -> None:
  """A mono / multichannel WAV (``soundfile``) written in memory, then atomically to ``p`` (cloud paths too)."""
  import soundfile as sf  # pylint: disable=import-outside-toplevel

  buf = _io.BytesIO()
  sf.write(buf, waveform, int(sample_rate), subtype=subtype, format="WAV")
  write_bytes_atomic(p, buf.getvalue())


def save_figure_atomic(p: PathLike, figure: Any, **savefig_kwargs: Any) -> None:
  """A matplotlib figure rendered in memory (format from the suffix of ``p``), then written atomically."""
  buf = _io.BytesIO()
  fmt = os.path.splitext(os.fspath(p))[1].lstrip(".") or "png"
  figure.savefig(buf, format=fmt, **savefig_kwargs)
  write_bytes_atomic(p, buf.getvalue())


# ---- multi-process writes ----


def barrier(name: str) -> None:
  """All processes wait here (``multihost_utils.sync_global_devices``); no-op with one process."""
  import jax  # pylint: disable=import-outside-toplevel

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(f"uss_jax_io:{name}")


def write_on_process0(name: str, write: Callable[[], None]) -> None:
  """Runs ``write()`` on process 0, then a barrier named ``name`` so every process sees the file afterwards.

  A failing ``write`` still reaches the barrier before its exception propagates, so the other processes do not wait
  forever (they go on and fail when they read the missing file).
  """
  import jax  # pylint: disable=import-outside-toplevel

  error = None
  if jax.process_index() == 0:
    try:
      write()
    except BaseException as e:  # pylint: disable=broad-except
      error = e
  barrier(name)
  if error is not None:
    raise error


def build_or_load(name: str, p: PathLike, build: Callable[[], Any], save: Callable[[PathLike, Any], None],
                  load: Callable[[PathLike], Any]) -> Any:
  """The stored value at ``p`` for every process: process 0 builds and saves it when missing, then a barrier, then
  every process loads it from ``p`` (so all processes use the same bytes, and a later run reuses them).

  Args:
    name: barrier name (unique per call site).
    p: the file.
    build: ``() -> value`` (runs on process 0 only, and only when ``p`` is missing).
    save: ``(p, value) -> None``, atomic (``save_npz_atomic`` ...).
    load: ``(p) -> value``; may raise ``StoredSettingsError`` for a file built with other settings.
  """
  def write():
    if not exists(p):
      save(p, build())
      logging.info("wrote %s", os.fspath(p))

  write_on_process0(name, write)
  value = load(p)
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() > 0:
    logging.info("process %d read %s (written by process 0)", jax.process_index(), os.fspath(p))
  return value


# ---- stored sets: the settings they were built with ----


class StoredSettingsError(ValueError):
  """A stored set (eval set, anchor index) was built with other settings than the current run asks for."""


def _canonical(v: Any) -> Any:
  if hasattr(v, "tolist"):  # numpy scalars / arrays
    v = v.tolist()
  if isinstance(v, tuple):
    v = list(v)
  if isinstance(v, list):
    return [_canonical(x) for x in v]
  if isinstance(v, Mapping):
    return {str(k): _canonical(x) for k, x in v.items()}
  return v


def settings_mismatch(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
  """``{name: (stored value, wanted value)}`` for every setting of ``wanted`` whose stored value differs (numpy
  scalars, tuples and lists compared by value; a setting missing from ``stored`` counts as differing)."""
  out = {}
  for k, v in wanted.items():
    a, b = _canonical(stored.get(k)), _canonical(v)
    if a != b:
      out[k] = (a, b)
  return out


def check_settings(p: PathLike, stored: Mapping[str, Any], wanted: Mapping[str, Any], what: str = "file",
                   remedy: str = "delete it (or use another workdir) to rebuild it") -> None:
  """Refuses a stored set built with other settings.

  Raises:
    StoredSettingsError: naming ``p`` and each differing setting (stored vs wanted), e.g. ``.../eval_set.npz: the
      evaluation set was built with other settings (pairs_per_class: on disk 4, now 8); delete it ...``.
  """
  diff = settings_mismatch(stored, wanted)
  if diff:
    lines = "; ".join(f"{k}: on disk {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
    raise StoredSettingsError(f"{os.fspath(p)}: the {what} was built with other settings ({lines}); {remedy}")
