#!/usr/bin/env bash
# Run a shadow-proxy load-test scenario headless: stubs + proxy + locust, then the latency budget.
#   loadtests/run.sh shadow | assisted | autonomous | slow-model | slow-model-assisted | failing-model |
#                    failing-model-autonomous | over-budget | over-budget-autonomous | all | list
# Knobs (env): USERS SPAWN_RATE DURATION RATE WARMUP WORKERS PRIMARY_LATENCY MODEL_LATENCY PIN PROXY_CPUS
# LOADGEN_CPUS STUB_CPUS PROXY_PORT ADMIN_PORT LEGACY_PORT MODEL_PORT MASTER_PORT OUT_DIR. See README.md.
# The work (start, wait for ports, stop by PID on exit or Ctrl-C) is done by run.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-$here/../.venv/bin/python}"
if [[ ! -x "$py" ]]; then
  echo "run.sh: no Python at $py (create the venv: python3.11 -m venv .venv && .venv/bin/pip install -e '.[load]'; or set PYTHON)" >&2
  exit 2
fi
if ! "$py" -c 'import locust, proxy' 2>/dev/null; then
  echo "run.sh: $py lacks locust or shadow-proxy (install: $py -m pip install -e '$here/..[load]')" >&2
  exit 2
fi
exec "$py" "$here/run.py" "$@"
