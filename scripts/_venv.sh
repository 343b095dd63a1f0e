# shellcheck shell=bash
# Sourced by the other scripts: make .venv with the project and its test tools installed.
# Idempotent and quick when nothing changed (a stamp holds the hash of pyproject.toml and
# constraints.txt, the versions CI tested).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

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
  echo "==> creating $VENV with $py" >&2
  "$py" -m venv "$VENV"
fi
stamp="$VENV/.codepool-installed"
want=$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "==> installing codepool and its test tools into .venv" >&2
  # (pip's notes about unused local index folders of this machine's pip config are noise)
  quiet() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2> >(quiet)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$ROOT/constraints.txt" -e "${ROOT}[test]" 2> >(quiet)
  echo "$want" > "$stamp"
fi
