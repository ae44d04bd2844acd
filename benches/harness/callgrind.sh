#!/usr/bin/env bash
# benches/harness/callgrind.sh -- user-space instructions per request of one egret binary, the
# figure the notes compare before/after a hot-path change (keep-alive SIMPLE 44 B, 32
# connections in lock step, access log on, one worker thread).
#
#   benches/harness/callgrind.sh BIN [N]      (N: measured requests, default 20000)
#
# Needs valgrind and the shared harness's TLS origin on 127.0.0.1:9443 (nginx from
# ../shared/bench/lib.sh `gen_upstream_conf`, certificates from ../shared/bench/certs.sh in
# $EB_CERTS, default /tmp/egret-cg/certs). egret runs under callgrind twice, with N and 2N
# requests after a 2000-request warm-up; instructions per request = (total(2N) - total(N)) / N,
# so start-up, warm-up and shutdown cancel out. Runs of one binary agree within about 0.3 %.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${1:?usage: callgrind.sh BIN [N]}
n=${2:-20000}
work=${EB_WORKDIR:-/tmp/egret-cg}
mkdir -p "$work"
certs=${EB_CERTS:-$work/certs}
export EB_WORKDIR=$work EB_CERTS=$certs EB_CA=$certs/ca.crt \
  EB_CLIENT_CERT=$certs/client-chain.crt EB_CLIENT_KEY=$certs/client.key
EGRET_BIN=/bin/echo bash "$here/subject.sh" >/dev/null   # writes $work/egret.yaml
run() {
  local count=$1 out=$work/cg.$1
  rm -f "$out".* "$work/access.log"
  valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$out.%p" \
    "$bin" run -c "$work/egret.yaml" --concurrency 1 --access-log "$work/access.log" \
    --ready off --stats off --admin off --watch-interval 0s >"$work/egret.$count.log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/10080) 2>/dev/null && break; sleep 0.1; done
  python3 "$here/lockstep.py" 10080 32 2000 >/dev/null
  python3 "$here/lockstep.py" 10080 32 "$count" >&2
  kill -TERM "$pid"; wait "$pid" || true
  awk '/^(summary|totals):/{s+=$2} END{print s}' "$out".*
}
a=$(run "$n"); b=$(run $((2 * n)))
echo "instructions/request: $(( (b - a) / n ))  (N=$n: $a, 2N: $b)"
