#!/usr/bin/env sh
# The shadow-proxy peer for the yardstick harness (../shared/bench): writes a config for the harness's
# ports and runs the proxy as users run it — audit trail, decisions, budgets and access log all on.
#   PEER_CMD='bench/peer.sh {port} {primary} {model}'   (placeholders filled in by the harness)
# Knobs: WORKERS (default 1), STORE (memory:// or redis://...), SINK (default file://$DIR/audit).
set -eu
port=$1 primary=$2 model=$3
here=$(cd "$(dirname "$0")" && pwd)
dir=${BENCH_RUN_DIR:-$(mktemp -d /tmp/shadow-proxy-bench.XXXXXX)}
mkdir -p "$dir"
cat > "$dir/config.yaml" <<YAML
listen: {host: 127.0.0.1, port: $port}
admin: {host: 127.0.0.1, port: ${ADMIN_PORT:-19901}}
log: {level: info, format: json, access_sample: ${ACCESS_SAMPLE:-1.0}}
store: {url: "${STORE:-memory://}"}
audit: {sink: "${SINK:-file://$dir/audit}", fsync: ${FSYNC:-batch}}
default_upstream: $primary
routes:
  - name: score
    match: {path_prefix: /score, methods: [POST]}
    primary: {url: $primary, timeout: 10s}
    model: {url: $model, timeout: 2s, version: bench}
    decision: {primary: decision, model: decision, confidence: confidence}
    segment: body.currency
    budget:
      rate: 1000000/s
      cost: {per_request: 0.0001, limit: 1000000, window: 1d}
YAML
exec "${SHADOW_PROXY:-$here/../.venv/bin/shadow-proxy}" run -c "$dir/config.yaml" ${WORKERS:+--workers $WORKERS} > "$dir/proxy.log" 2>&1
