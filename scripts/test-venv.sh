#!/usr/bin/env bash
# A Python environment for the tests that compare against other people's software: Hugging
# Face `tokenizers` (tokenizer parity) and the official `openai` client (the HTTP API).
# Installed from PyPI for the tests only, into the folder given (default build/test-venv).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/build/test-venv}"
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
"$venv/bin/python" -c "import tokenizers, openai" 2>/dev/null ||
  "$venv/bin/pip" install -q --disable-pip-version-check "tokenizers==0.23.3" "openai==3.57.0"
