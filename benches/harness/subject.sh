#!/usr/bin/env bash
# benches/harness/subject.sh -- egret as the subject of ../shared/bench (SUBJECT_CMD contract):
# plaintext HTTP/1.1 on 10080 (SIMPLE), 10081 (MUTUAL), 10082 (NEWCONN: a fresh upstream TCP+TLS
# connection per request), all for Host upstream.test, TLS verified against {CA} with SNI and
# hostname upstream.test. A production configuration: the access log is on, written to a file.
#
# Environment (besides the harness's EB_*):
#   EGRET_BIN          the binary (default: target/dist/egret of this checkout)
#   EGRET_THREADS      worker threads (default 1, as the peers' one worker)
#   EGRET_ACCESS_LOG   access log path (default $EB_WORKDIR/access.log; "off" disables it)
#   EGRET_RESUMPTION   on (default) | off: TLS session resumption toward the origin
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
d=${EB_WORKDIR:?}
mkdir -p "$d"
bin=${EGRET_BIN:-$here/../../target/dist/egret}
log=${EGRET_ACCESS_LOG:-$d/access.log}
upstream_host=${EB_UPSTREAM_HOST:-upstream.test}
simple=${EB_UPSTREAM_SIMPLE:-127.0.0.1:9443}
mutual=${EB_UPSTREAM_MUTUAL:-127.0.0.1:9444}
# One destination with a port per listener; each port has its own TLS policy and pool settings.
cat > "$d/egret.yaml" <<CONF
listeners:
  - {name: simple, address: "127.0.0.1:${EB_SIMPLE_PORT:-10080}", port: 1}
  - {name: mutual, address: "127.0.0.1:${EB_MUTUAL_PORT:-10081}", port: 2}
  - {name: newconn, address: "127.0.0.1:${EB_NEWCONN_PORT:-10082}", port: 3}
destinations:
  - hosts: [$upstream_host]
    ports:
      - {number: 1, name: http-simple, protocol: HTTP}
      - {number: 2, name: http-mutual, protocol: HTTP}
      - {number: 3, name: http-newconn, protocol: HTTP}
    resolution: STATIC
    endpoints:
      - address: ${simple%:*}
        ports: {http-simple: ${simple##*:}, http-mutual: ${mutual##*:}, http-newconn: ${simple##*:}}
    trafficPolicy:
      portLevelSettings:
        - port: {number: 1}
          tls: {mode: SIMPLE, caCertificates: ${EB_CA:?}, sni: $upstream_host}
        - port: {number: 2}
          tls:
            mode: MUTUAL
            caCertificates: $EB_CA
            clientCertificate: ${EB_CLIENT_CERT:?}
            privateKey: ${EB_CLIENT_KEY:?}
            sni: $upstream_host
        - port: {number: 3}
          tls: {mode: SIMPLE, caCertificates: $EB_CA, sni: $upstream_host}
          connectionPool: {http: {maxRequestsPerConnection: 1}}
CONF
args=(run -c "$d/egret.yaml" --concurrency "${EGRET_THREADS:-1}" --access-log "$log"
      --ready off --stats off --admin off --watch-interval 0s)
if [[ ${EGRET_RESUMPTION:-on} == off ]]; then args+=(--no-tls-resumption); fi
exec "$bin" "${args[@]}"
