#!/usr/bin/env bash
# Install dlf-study and its test tools into the active Python environment, the one route that
# the README, the docs and CI all use. torch is pinned to the tested version
# (constraints-cpu.txt); its CPU build (~200 MB) comes from PyTorch's CPU index when that index
# answers a 5-second probe. Where it does not (a firewall, an offline mirror), pip is not told
# about it, so it never stalls retrying: torch then comes from the configured indexes (from plain
# PyPI on Linux that is the CUDA build, several GB, which also runs on a CPU).
#   ./install.sh            # the project with its dev extras (tests, linters)
#   ./install.sh docs       # other extras, comma-separated
set -euo pipefail
cd "$(dirname "$0")"
extras=${1:-dev}
cpu_index=https://download.pytorch.org/whl/cpu
index=()
if python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5).close()' \
    "$cpu_index/torch/" 2>/dev/null; then
  index=(--extra-index-url "$cpu_index")
else
  echo "install.sh: $cpu_index does not answer; torch comes from the configured indexes" >&2
fi
python -m pip install -q --retries 2 --timeout 30 ${index[@]+"${index[@]}"} \
  -c constraints-cpu.txt -e ".[$extras]"
