#!/usr/bin/env bash
# Build dist/forsun-box, the one-file executable (Linux x86_64), with PyInstaller.
# Usage: build/build.sh   (PYTHON=... picks the interpreter; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"

if ! "$PY" -c "import PyInstaller" 2>/dev/null; then
  echo "build.sh: PyInstaller is missing; install it with: $PY -m pip install -e '.[all,build]'" >&2
  exit 1
fi

# the executable carries every action's library: refuse to build one without them
if ! "$PY" -c "import redis, aiomysql, pymysql, greenstalk, asyncpg" 2>/dev/null; then
  echo "build.sh: the action libraries are missing; install them with: $PY -m pip install -e '.[all,build]'" >&2
  exit 1
fi

"$PY" -m PyInstaller --noconfirm --clean --log-level "${LOG_LEVEL:-WARN}" \
  --workpath build/work --distpath dist build/forsun-box.spec

# fail here, not at a user's: the executable must answer as server and client
./dist/forsun-box --version
./dist/forsun-box serve --help >/dev/null
size=$(stat -c %s dist/forsun-box)
echo "dist/forsun-box: $((size / 1024 / 1024)) MiB ($size bytes)"
