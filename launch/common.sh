# Shell helpers shared by the launch scripts (sourced, never run): `die` and `quote`. The sourcing script sets PROG.

# Prints "PROG: error: MESSAGE" and the --help hint to stderr, then exits with status 2 (a usage error).
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  printf "Run '%s --help' for usage.\n" "$PROG" >&2
  exit 2
}

# Prints its arguments as one line of shell words that a POSIX shell splits back into exactly these arguments.
quote() {
  local IFS=' ' word out=()
  for word in "$@"; do
    if [[ -n "$word" && "$word" != *[!A-Za-z0-9_./:=,@%+-]* ]]; then
      out+=("$word")
    else
      out+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${out[*]}"
}
