r"""The ``uss-jax`` command: thin absl entry point (flags, distributed init) that hands (config, workdir) on.

  uss-jax train --config=configs/sed_cnn14.py:smoke --workdir=/tmp/run [--config.batch_size=32 ...]
  uss-jax eval  --config=configs/sed_cnn14.py:smoke --workdir=/tmp/run [--step=300]
  uss-jax separate --checkpoint DIR --mixture in.wav (--query-audio a.wav [b.wav ...] | --query-class NAME)
                   -o out.wav [--plot out.png] [--step N] [--chunk-seconds S] [--batch-size B] [--subtype PCM_16]

Running ``train`` again with the same workdir resumes from the latest checkpoint. Multi-process runs call
``jax.distributed.initialize()``: with ``--coordinator_address/--num_processes/--process_id`` when given (or the
environment variables JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID, read here since jax itself does
not read the last two), else when one of jax's cluster detectors recognises the environment (Cloud TPU VM / pod,
GKE TPU, SLURM, Open MPI) and lets jax fill in the rest. USS_JAX_DISTRIBUTED=1 / 0 forces it on / off.
``separate`` (query-based separation of one file with a separation run, ``uss_jax.inference``) takes dashed options
(argparse, parsed before absl) and prints a JSON summary line.
Bad input (missing file, unknown config field, empty dataset, unknown class, silent query ...) ends with one line
``uss-jax: error: ...`` and exit status 2; set USS_JAX_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (for clu's writers) start-up chatter

from absl import app, flags
from ml_collections import config_flags

_COMMANDS = ("train", "eval")  # ``separate`` is dispatched to argparse in run()

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config: configs/<recipe>.py[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard events, artifacts.")
_STEP = flags.DEFINE_integer("step", None, "eval: checkpoint step to evaluate (default: latest).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
_CPU_DEVICES = flags.DEFINE_integer("num_cpu_devices", None, "Split the CPU into this many devices (testing).")


class _QuietLibraries(logging.Filter):
  """Drops INFO records of orbax / tfds / grain internals so the console shows the run itself."""

  _NOISY = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/clu/metric_writers/async_writer")

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno > logging.INFO or not any(n in record.pathname for n in self._NOISY)


class _QuietOrbaxWarnings(logging.Filter):
  """Drops orbax's warnings below ERROR (e.g. "Metadata file does not exist" when reading a step's state)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or "/orbax/" not in record.pathname


class UsageError(Exception):
  """A problem with the command line or inputs, reported as one line without a traceback."""


def _cluster_detected() -> bool:
  """Whether one of jax's cluster detectors (jax/_src/clusters) recognises this environment."""
  try:
    from jax._src import clusters  # pylint: disable=import-outside-toplevel
    return any(c.is_env_present() for c in clusters.ClusterEnv._cluster_types)  # pylint: disable=protected-access
  except Exception:  # a private API: never let it break a single-process run  # pylint: disable=broad-except
    return False


def _wants_distributed() -> bool:
  forced = os.environ.get("USS_JAX_DISTRIBUTED")
  if forced is not None:
    return forced.strip().lower() in ("1", "true", "yes")
  return _cluster_detected()


def initialize_distributed() -> None:
  """``jax.distributed.initialize`` for multi-process runs; nothing for a single process."""
  import jax  # pylint: disable=import-outside-toplevel

  if _CPU_DEVICES.value:
    jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
  env = os.environ
  address = _COORDINATOR.value or (env.get("JAX_COORDINATOR_ADDRESS") if "JAX_NUM_PROCESSES" in env else None)
  if address:
    num = _NUM_PROCESSES.value if _NUM_PROCESSES.value is not None else env.get("JAX_NUM_PROCESSES")
    pid = _PROCESS_ID.value if _PROCESS_ID.value is not None else env.get("JAX_PROCESS_ID")
    if num is None or pid is None:
      raise UsageError("a coordinator address needs --num_processes and --process_id "
                       "(or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
    jax.distributed.initialize(coordinator_address=address, num_processes=int(num), process_id=int(pid))
  elif _wants_distributed():
    jax.distributed.initialize()


def _run(argv: list[str]) -> int:
  commands = [a for a in argv[1:]]
  if len(commands) != 1 or commands[0] not in _COMMANDS:
    known = ", ".join(_COMMANDS + ("separate",))
    raise UsageError(f"expected one command out of {known}; got {commands or 'none'} "
                     "(usage: uss-jax train --config=configs/<recipe>.py[:variant] --workdir=DIR)")
  command = commands[0]
  try:
    config = _CONFIG.value  # loads the file and applies --config.x=y overrides
    if config is not None:
      config.to_dict()  # the flag's value is a lazy proxy: touch it so load / override errors surface here
  except (OSError, AttributeError, KeyError, TypeError, ValueError) as e:
    raise UsageError(f"--config: {_one_line(e)}") from e
  if config is None:
    raise UsageError("--config is required (e.g. --config=configs/sed_cnn14.py:smoke)")
  if not _WORKDIR.value:
    raise UsageError("--workdir is required")
  initialize_distributed()

  import jax  # pylint: disable=import-outside-toplevel
  from uss_jax.train import trainer  # pylint: disable=import-outside-toplevel

  logging.info("uss-jax %s: %d processes, %d devices (%s)", command, jax.process_count(), jax.device_count(),
               jax.devices()[0].platform)
  if command == "train":
    result = trainer.train_and_evaluate(config, _WORKDIR.value)
    last_loss = result["history"][-1][1] if result["history"] else None
    summary = {"step": result["step"], "preempted": result["preempted"], "train_loss": last_loss, **result["eval"],
               **{k: round(v, 4) for k, v in result["throughput"].items()}}
  else:
    summary = trainer.evaluate(config, _WORKDIR.value, step=_STEP.value)
  if jax.process_index() == 0:
    print(json.dumps({"command": command, "workdir": _WORKDIR.value, **summary}, default=float))
  return 0


def _one_line(e: BaseException) -> str:
  text = str(e).replace("\\'", "'").replace("\\n", " ").replace("\n", " ").strip().strip("'\"")
  return " ".join(text.split()) or type(e).__name__


def main(argv: list[str]) -> None:
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    tfds.disable_progress_bar()
  except ImportError:
    pass
  try:
    sys.exit(_run(argv))
  except (UsageError, FileNotFoundError, ValueError, KeyError, FloatingPointError) as e:
    if os.environ.get("USS_JAX_DEBUG"):
      raise
    print(f"uss-jax: error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors (config_flags embeds a traceback in its messages)."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, OSError, TypeError, ValueError) as e:
    # e.g. --config=missing.py, an unknown variant, --config.optimizer.learning_rat=... (an unknown field)
    if os.environ.get("USS_JAX_DEBUG"):
      raise
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    if any(l.startswith("Traceback") for l in lines):
      lines = [lines[0].split(":")[0], lines[-1]]  # "flag --config=...", "ValueError: ..."
    print(f"uss-jax: error: {_one_line(' '.join(lines))}", file=sys.stderr)
    sys.exit(2)


class _SeparateParser(argparse.ArgumentParser):
  """argparse with the house's one-line errors (raised as UsageError instead of usage text + exit)."""

  def error(self, message: str):
    raise UsageError(f"separate: {message}")


def separate_parser() -> argparse.ArgumentParser:
  """The ``uss-jax separate`` command line."""
  p = _SeparateParser(
      prog="uss-jax separate",
      description="Separate the source described by a query (audio examples or a class name) from an audio file of "
                  "any length and sample rate with a trained separation run (uss_jax.inference).")
  p.add_argument("--checkpoint", required=True, metavar="DIR",
                 help="separation run directory (or one of its checkpoints/<step> folders)")
  p.add_argument("--mixture", required=True, metavar="AUDIO", help="input file (any soundfile format; mono-mixed)")
  query = p.add_mutually_exclusive_group(required=True)
  query.add_argument("--query-audio", nargs="+", metavar="AUDIO",
                     help="query recordings of the target source (their embeddings are averaged)")
  query.add_argument("--query-class", metavar="NAME", help="a class of the run's class_embeddings.npz")
  p.add_argument("-o", "--output", required=True, metavar="AUDIO",
                 help="output file: mono, at the mixture's rate and length, 32-bit float unless --subtype")
  p.add_argument("--plot", metavar="PNG", help="also write mixture / result spectrograms to this PNG")
  p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
  p.add_argument("--chunk-seconds", type=float, help="chunk length (default: 2 x the training segment)")
  p.add_argument("--batch-size", type=int, default=8, help="chunks per device call (default: 8)")
  p.add_argument("--subtype", help="soundfile subtype of the output, e.g. PCM_16 (default: FLOAT where available)")
  return p


def _run_separate(argv: list[str]) -> int:
  args = separate_parser().parse_args(argv)
  if args.batch_size < 1:
    raise UsageError(f"separate: --batch-size must be >= 1, got {args.batch_size}")
  from uss_jax import inference  # pylint: disable=import-outside-toplevel

  # Fail fast on bad input, before the model is loaded.
  inference.output_format(args.output, args.subtype)
  inference.check_mixture(args.mixture)
  for q in args.query_audio or ():
    inference.audio_info(q, "query")
  workdir, step = inference.resolve_checkpoint(args.checkpoint, args.step)
  if args.query_class is not None:
    names, _ = inference.load_class_table(workdir)
    if names and args.query_class not in names:
      raise ValueError(f"unknown class {args.query_class!r}; known classes: {', '.join(names)}")
  separator = inference.Separator.from_workdir(workdir, step=step)
  summary = inference.separate_file(
      separator, args.mixture, args.output, query_audio=args.query_audio, query_class=args.query_class,
      chunk_seconds=args.chunk_seconds, batch_size=args.batch_size, subtype=args.subtype, plot=args.plot)
  print(json.dumps({"command": "separate", **summary}, default=float))
  return 0


def separate_main(argv: list[str]) -> None:
  """``uss-jax separate ARGS``: runs and exits (0; 2 with one ``uss-jax: error: ...`` line on bad input)."""
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _QuietOrbaxWarnings) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietOrbaxWarnings())
  try:
    sys.exit(_run_separate(argv))
  except (UsageError, OSError, ValueError, KeyError, FloatingPointError) as e:  # FileNotFoundError is an OSError
    if os.environ.get("USS_JAX_DEBUG"):
      raise
    print(f"uss-jax: error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)


def run() -> None:
  """Console-script entry point (``uss-jax``)."""
  if len(sys.argv) > 1 and sys.argv[1] == "separate":
    separate_main(sys.argv[2:])
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
