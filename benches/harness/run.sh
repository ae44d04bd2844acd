#!/usr/bin/env bash
# benches/harness/run.sh -- runs the shared peer harness (../shared/bench) with egret as the
# subject, in one run with nginx and HAProxy, and writes benches/RESULTS.md.
#
#   benches/harness/run.sh            # ~14 min on 2 vCPUs; loopback only; every load is bounded
#
# Runs: (1) peers + egret with its access log on (a file), one worker thread;
#       (2) egret alone with the access log off, and with TLS session resumption off;
#       (3) 10,000 idle keep-alive client connections against egret (RSS growth).
# Needs: nginx haproxy wrk curl openssl python3 (Debian packages); BENCH=path to the harness.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bench=${BENCH:-$(cd "$root/../shared/bench" 2>/dev/null && pwd || true)}
[[ -n $bench && -x $bench/run.sh ]] || { echo "the shared harness is not at ../shared/bench (set BENCH=)" >&2; exit 1; }
work=${WORK:-/tmp/egret-bench}
export WORK=$work
mkdir -p "$work"

echo "== building egret (profile dist: fat LTO, one codegen unit)"
(cd "$root" && cargo build --profile dist --quiet)
bin=$root/target/dist/egret
export EGRET_BIN=$bin

echo "== run 1: peers and egret (access log on, 1 worker thread)"
SUBJECT_NAME=egret SUBJECT_CMD="$here/subject.sh" OUT_MD="$work/run1.md" OUT_CSV="$work/run1.csv" \
  "$bench/run.sh" > "$work/run1.log" 2>&1

echo "== run 2: egret alone, access log off"
EGRET_ACCESS_LOG=off TARGETS="" SUBJECT_NAME=egret-nolog SUBJECT_CMD="$here/subject.sh" \
  OUT_MD="$work/run2.md" OUT_CSV="$work/run2.csv" "$bench/run.sh" > "$work/run2.log" 2>&1

echo "== run 3: egret alone, TLS session resumption off (new connection case only)"
EGRET_RESUMPTION=off TARGETS="" MODES="" RATE=0 SUBJECT_NAME=egret-noresume \
  SUBJECT_CMD="$here/subject.sh" OUT_MD="$work/run3.md" OUT_CSV="$work/run3.csv" \
  "$bench/run.sh" > "$work/run3.log" 2>&1

echo "== idle connections: 10,000 keep-alive clients"
source "$bench/lib.sh"
origin=$work/idle-origin
gen_upstream_conf "$origin" "$CERTS/server-chain.crt" "$CERTS/server.key"
nginx -p "$origin" -c "$origin/nginx.conf" >>"$origin/logs/stdout.log" 2>&1 &
opid=$!
wait_port 127.0.0.1 9443 10
mkdir -p "$work/idle-subject"
EB_WORKDIR=$work/idle-subject EB_CA=$CERTS/ca.crt EB_CLIENT_CERT=$CERTS/client-chain.crt \
  EB_CLIENT_KEY=$CERTS/client.key "$here/subject.sh" > "$work/idle-subject/stdout.log" 2>&1 &
spid=$!
wait_port 127.0.0.1 10080 20
(ulimit -n 20000; python3 "$here/idle-connections.py" 10000 10080 "$spid") > "$work/idle.txt" || true
kill "$spid" "$opid" 2>/dev/null || true
wait "$spid" "$opid" 2>/dev/null || true

echo "== writing benches/RESULTS.md"
python3 "$here/results.py" "$work" > "$root/benches/RESULTS.md"
echo "wrote $root/benches/RESULTS.md"
