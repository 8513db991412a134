#!/usr/bin/env bash
# Side-by-side benchmark of shadow-proxy against the yardstick peers, in one run on this machine.
#
#   bash bench/run.sh                       # direct, nginx, nginx mirror, reference aiohttp, shadow-proxy
#   PEERS=direct,cmd bash bench/run.sh      # a subset ("cmd" is shadow-proxy)
#   REPS=2 bash bench/run.sh                # two passes, to show the noise
#   WORKERS=2 PEER_CPUS=0,1 bash bench/run.sh   # shadow-proxy with two worker processes
#
# Uses the yardstick harness in ../shared/bench (or $SHARED_BENCH): nginx stubs for legacy (18081) and
# model (fast 18082, slow 200 ms 18083), wrk as the load generator, pinned cores (see its README).
# shadow-proxy runs as the harness's `cmd` peer through bench/peer.sh, configured as users run it:
# audit trail to files, decisions, budgets, access log on. Results are copied to bench/results/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
shared="${SHARED_BENCH:-$here/../../shared/bench}"
[ -f "$shared/bench.py" ] || { echo "bench: the yardstick harness is not at $shared (set SHARED_BENCH)" >&2; exit 2; }
bash "$shared/setup.sh" 2>/dev/null | tail -1
mkdir -p "$here/results"
export PEERS="${PEERS:-direct,nginx-proxy,nginx-mirror,aio-uvloop-1p,aio-uvloop-2p,cmd}"
default_cmd="$here/peer.sh {port} {primary} {model}"  # not inside ${...:-}: its braces would end it
export PEER_CMD="${PEER_CMD:-$default_cmd}"
for _ in $(seq 1 "${REPS:-1}"); do
  before=$(ls "$shared"/results-*.json 2>/dev/null | wc -l)
  "$shared/.venv/bin/python" "$shared/bench.py"
  newest=$(ls -t "$shared"/results-*.json | head -1)
  [ "$(ls "$shared"/results-*.json | wc -l)" -gt "$before" ] && cp "$newest" "${newest%.json}.md" "$here/results/"
done
if [ "${REPS:-1}" -gt 1 ]; then "$shared/.venv/bin/python" "$shared/compare.py" --last "${REPS}"; fi
