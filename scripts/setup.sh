#!/usr/bin/env bash
# Install picmap into the current Python environment (a virtual environment is best), at the
# versions in constraints.txt, the lock every test run passed with.
#
#   bash scripts/setup.sh            picmap itself: what `picmap fit digits` needs
#   bash scripts/setup.sh --dev      also the test extras, and Debian's dataset-fashion-mnist
#                                    and chromium for the dataset and browser tests
#   bash scripts/setup.sh --latest   the newest releases pyproject.toml's ranges allow instead of
#                                    the lock (with --dev: how CI finds drift such as click 8.5)
#
# System packages are installed with apt-get as root, with sudo otherwise; where neither is
# possible the script says so and goes on (the tests that need them are then skipped).
# PYTHON=/path/to/python picks the interpreter (default: python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
latest=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --latest) latest=1 ;;
    *) echo "setup.sh: unknown option '$arg' (use --dev and/or --latest)" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-$(command -v python || command -v python3 || true)}"
if [ -z "$python" ]; then
  echo "setup.sh: no python or python3 on PATH; set PYTHON=/path/to/python" >&2
  exit 1
fi

system_packages=(dataset-fashion-mnist chromium)
missing_system_packages() {
  local name
  for name in "${system_packages[@]}"; do
    dpkg-query -W -f='${Status}\n' "$name" 2>/dev/null | grep -q "ok installed" || echo "$name"
  done
}

if [ "$dev" = 1 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "setup.sh: no apt-get here; install ${system_packages[*]} by hand (or their tests skip)" >&2
  else
    mapfile -t missing < <(missing_system_packages)
    if [ "${#missing[@]}" -gt 0 ]; then
      as_root=()
      if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null; then
          as_root=(sudo)
        else
          echo "setup.sh: not root and no sudo; skipping ${missing[*]} (their tests skip)" >&2
          missing=()
        fi
      fi
      if [ "${#missing[@]}" -gt 0 ]; then
        "${as_root[@]}" apt-get update -qq
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
          apt-get install -y -qq "${missing[@]}" >/dev/null
      fi
    fi
  fi
fi

target="."
[ "$dev" = 1 ] && target=".[dev]"
pip=("$python" -m pip install -q --disable-pip-version-check)
if [ "$latest" = 1 ]; then
  "${pip[@]}" --upgrade --upgrade-strategy eager -e "$target"
else
  "${pip[@]}" -c constraints.txt -e "$target"
fi
"$python" -m pip check >/dev/null || { "$python" -m pip check >&2; exit 1; }
