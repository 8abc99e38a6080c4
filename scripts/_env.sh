# Shared set-up for the project's scripts: a virtualenv in .venv with the project installed (editable).
# Sourced, not run. Re-installs only when pyproject.toml, setup.py or one of the C files the install
# compiles (setup.py lists them) changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LER_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    for cand in python3.13 python3.12 python3.11; do
        if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
    done
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "setting up $VENV ..." >&2
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.ler-installed"
stale=0
for f in pyproject.toml setup.py storage/_smt_native.c storage/_keyfilter_native.c ler/_tx_native.c ler/_sha256.h; do  # what the install reads or compiles
    if [ "$ROOT/$f" -nt "$STAMP" ]; then stale=1; fi
done
if [ ! -f "$STAMP" ] || [ "$stale" = 1 ]; then
    echo "installing LER Ledger and its dependencies into $VENV ..." >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2 || true
    "$VENV/bin/python" -m pip install --quiet --quiet --disable-pip-version-check -e "$ROOT[test,dev]" >&2
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
