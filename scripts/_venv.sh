# shellcheck shell=bash
# Sourced by the other scripts: make .venv with codepool installed, and (given "test") the
# tools the tests use. Idempotent and quick when nothing changed: a stamp for each holds
# the hash of pyproject.toml, constraints.txt (the versions CI tested) and the version.
#   source scripts/_venv.sh          # codepool and what it needs to run
#   source scripts/_venv.sh test     # and the test tools
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
WANT="${1:-run}"

pick_python() {
  for py in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    if [[ -z "$py" ]] || ! command -v "$py" >/dev/null; then continue; fi
    if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "error: codepool needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
  py=$(pick_python)
  if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
    echo "error: $py cannot make a virtual environment: its venv module is missing." >&2
    echo "  On Debian or Ubuntu: sudo apt-get install python3-venv" >&2
    exit 1
  fi
  echo "==> creating $VENV with $py" >&2
  "$py" -m venv "$VENV"
fi

# What each level installs, said before it is installed: codepool's own dependencies,
# then (test) the test tools of pyproject.toml's "test" extra.
requirements() {
  "$VENV/bin/python" - "$ROOT/pyproject.toml" "$1" <<'PY'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
wanted = project["dependencies"] if sys.argv[2] == "run" else project["optional-dependencies"]["test"]
print(" ".join(sorted({re.split(r"[\s\[<>=;!~]", d, maxsplit=1)[0] for d in wanted})))
PY
}

install_level() {
  local level=$1 stamp="$VENV/.codepool-installed-$1" want target
  # (__init__.py holds the version, which the installed metadata copies)
  want=$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" "$ROOT/codepool/__init__.py" |
    sha256sum | cut -d' ' -f1)
  [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && return 0
  if [[ "$level" == run ]]; then
    target="$ROOT"
    echo "==> installing codepool into .venv, with what it needs to run: $(requirements run)" >&2
  else
    target="${ROOT}[test]"
    echo "==> installing the test tools into .venv: $(requirements test)" >&2
  fi
  # (pip's notes about unused local index folders of this machine's pip config are noise)
  quiet() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2> >(quiet)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$ROOT/constraints.txt" \
    -e "$target" 2> >(quiet)
  echo "$want" > "$stamp"
}

install_level run
if [[ "$WANT" == test ]]; then
  install_level test
fi
