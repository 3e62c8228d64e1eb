#!/usr/bin/env bash
# Create the project's virtual environment on one host and install uss_jax into it with the pinned versions of
# constraints.txt, plus the jax plugin of the host's accelerator. Idempotent: rerunning reuses the environment.
set -euo pipefail

readonly PROG="launch/host_setup.sh"

usage() {
  cat <<'EOF'
Usage: launch/host_setup.sh {cpu|tpu|gpu|cuda12|cuda13} [--venv DIR] [--python PY] [--test] [--no-check] [--dry-run]

  cpu              pip install -e <repo> -c constraints.txt
  tpu              ... plus jax[tpu] (libtpu; Cloud TPU VMs)
  gpu | cuda12     ... plus jax[cuda12] (CUDA 12 wheels from PyPI; needs only the NVIDIA driver)
  cuda13           ... plus jax[cuda13]
  The jax version is the one pinned in constraints.txt, so the plugin always matches jaxlib.

  --venv DIR       where the virtual environment goes (default: <repo>/.venv).
  --python PY      interpreter that creates it (default: the first of python3.13, python3.12, python3.11, python3
                   that is Python >= 3.11, which jax 0.10 and numpy 2.4 require).
  --test           install the test extras too (pip install -e '<repo>[test]').
  --no-check       skip the final check (prints the installed versions of jax, jaxlib and the plugin).
  --dry-run        print the commands instead of running them.
  -h, --help       show this help.
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
accel=""
venv=""
python=""
test_extras=0
check=1
dry_run=0

while (($#)); do
  case "$1" in
    --venv | --python)
      if (($# < 2)) || [[ -z "$2" ]]; then die "$1 needs a value"; fi
      if [[ "$1" == --venv ]]; then venv="$2"; else python="$2"; fi
      shift 2 ;;
    --venv=*) venv="${1#*=}"; [[ -n "$venv" ]] || die "--venv needs a value"; shift ;;
    --python=*) python="${1#*=}"; [[ -n "$python" ]] || die "--python needs a value"; shift ;;
    --test) test_extras=1; shift ;;
    --no-check) check=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    cpu | tpu | gpu | cuda12 | cuda13)
      [[ -z "$accel" ]] || die "accelerator given twice ('$accel' and '$1')"
      accel="$1"; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[[ -n "$accel" ]] || die "missing the accelerator argument: cpu, tpu or gpu"

# Python >= 3.11 (exit status 0) or not.
python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

if [[ -z "$python" ]]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
      python="$candidate"
      break
    fi
  done
  [[ -n "$python" ]] || die "no Python >= 3.11 found (tried python3.13 .. python3); install one (Ubuntu 22.04:
  sudo apt-get install -y python3.11 python3.11-venv) or pass --python"
elif ! python_ok "$python"; then
  die "--python $python is not a working Python >= 3.11"
fi

case "${venv:=$repo/.venv}" in
  /*) ;;
  *) venv="$PWD/$venv" ;;
esac

target="$repo"
if ((test_extras)); then target="${repo}[test]"; fi
install=("$venv/bin/python" -m pip install -e "$target")
# Distributions whose versions the final check prints (it fails when one is missing).
check_dists=(jax jaxlib)
case "$accel" in
  tpu) install+=("jax[tpu]"); check_dists+=(libtpu) ;;
  gpu | cuda12) install+=("jax[cuda12]"); check_dists+=(jax-cuda12-plugin) ;;
  cuda13) install+=("jax[cuda13]"); check_dists+=(jax-cuda13-plugin) ;;
esac
install+=(-c "$repo/constraints.txt")

run() {
  if ((dry_run)); then
    quote "$@"
  else
    echo "+ $(quote "$@")" >&2
    "$@"
  fi
}

if [[ -x "$venv/bin/python" ]]; then
  echo "$PROG: reusing the virtual environment $venv" >&2
else
  run "$python" -m venv "$venv"
fi
run "$venv/bin/python" -m pip install --upgrade pip
run "${install[@]}"
if ((check)); then
  # Versions only: initialising a TPU backend on one worker of a pod slice would wait for the other workers.
  run "$venv/bin/python" -c 'import importlib.metadata as m, sys; [print(d, m.version(d)) for d in sys.argv[1:]]' \
    "${check_dists[@]}"
fi
