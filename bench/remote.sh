#!/usr/bin/env bash
# Run the dispatch benchmark on a lent many-core machine (DEVELOPERS.md): Python 3.12, no network,
# only the checkout and .devbench/ (wheels, GNU parallel's .deb) arrive. Results go to $OUT.
#   bash bench/remote.sh [ITEMS] [WORKERS]     (defaults: 1000 and 16,64,16x4)
set -euo pipefail
cd "$(dirname "$0")/.."
items=${1:-1000}
workers=${2:-16,64,16x4}
pip install --quiet --no-index --no-deps --target /tmp/site .devbench/wheels/*.whl
dpkg -x .devbench/parallel_*.deb /tmp/parallel
export PYTHONPATH=/tmp/site:$PWD/runtime PATH=/tmp/parallel/usr/bin:/tmp/site/bin:$PATH
if node --version 2> /dev/null | grep -qE '^v(2[0-9]|[3-9][0-9])\.'; then
  export PYANAMO_BENCH_ENGINE=dynalite   # needs node_modules/ carried along
else
  echo "Node.js 20+ missing there: measuring on moto" >&2
  export PYANAMO_BENCH_ENGINE=moto
fi
python3 bench/dispatch.py --items "$items" --workers "$workers" --name "dispatch-$(nproc)-cores"
cp bench/results/dispatch-*-cores.json "${OUT:-/tmp}/"
