r"""The ``uss-jax`` command: thin absl entry point (flags, distributed init) that hands (config, workdir) on.

  uss-jax train --config=configs/sed_cnn14.py:smoke --workdir=/tmp/run [--config.batch_size=32 ...]
  uss-jax eval  --config=configs/sed_cnn14.py:smoke --workdir=/tmp/run [--step=300]
  uss-jax separate --checkpoint RUN --mixture in.wav (--query-audio a.wav [b.wav ...] | --query-class NAME |
                   --query-text "..." | --enrollment a.wav) -o out.wav [--plot out.png] [--step N] ...
  uss-jax extract / info / convert / embed / search ...   (uss_jax.commands)

Running ``train`` again with the same workdir resumes from the latest checkpoint. Multi-process runs call
``jax.distributed.initialize()``: with ``--coordinator_address/--num_processes/--process_id`` when given (or the
environment variables JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID, read here since jax itself does
not read the last two), else when one of jax's cluster detectors recognises the environment (Cloud TPU VM / pod,
GKE TPU, SLURM, Open MPI) and lets jax fill in the rest. USS_JAX_DISTRIBUTED=1 / 0 forces it on / off.
``separate`` / ``extract`` (any separation / extraction run, ``uss_jax.inference``), ``info``, ``convert``, ``embed`` and
``search`` take dashed options (argparse, parsed before absl, ``uss_jax.commands``) and print a JSON summary line.
Bad input (missing file, unknown config field, empty dataset, unknown class, silent query ...) ends with one line
``uss-jax: error: ...`` and exit status 2; set USS_JAX_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (for clu's writers) start-up chatter

from absl import app, flags
from ml_collections import config_flags

from uss_jax import commands

_COMMANDS = ("train", "eval")  # the dashed-option commands (separate, info, convert ...) go to uss_jax.commands

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


UsageError = commands.UsageError


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
  given = list(argv[1:])
  if len(given) != 1 or given[0] not in _COMMANDS:
    known = ", ".join(_COMMANDS + tuple(commands.COMMANDS))
    raise UsageError(f"expected one command out of {known}; got {given or 'none'} "
                     "(usage: uss-jax train --config=configs/<recipe>.py[:variant] --workdir=DIR)")
  command = given[0]
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


_one_line = commands.one_line


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


def separate_main(argv: list[str]) -> None:
  """``uss-jax separate ARGS``: runs and exits (0; 2 with one ``uss-jax: error: ...`` line on bad input)."""
  commands.main("separate", argv)


separate_parser = commands.separate_parser


def run() -> None:
  """Console-script entry point (``uss-jax``)."""
  if len(sys.argv) > 1 and sys.argv[1] in commands.COMMANDS:
    commands.main(sys.argv[1], sys.argv[2:])
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
