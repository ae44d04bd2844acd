#!/usr/bin/env bash
# gen-certs.sh DIR  -- generate a development PKI for egret (the same files as the benchmark
# harness's certs.sh in ../shared/bench, so the two can be swapped). Never for production.
#
# Idempotent: existing files are kept; only missing artefacts are (re)created.
# KEY_TYPE=ec (default, P-256) or rsa (2048) selects the key algorithm for every key.
#
# Output (all PEM):
#   root-ca.{key,crt}         trust anchor for the upstream server chain
#   int-ca.{key,crt}          intermediate CA that signs the server leaf
#   server.{key,crt}          leaf for upstream.test (SAN DNS:upstream.test, IP:127.0.0.1)
#   server-chain.crt          leaf + intermediate (what the upstream presents)
#   ca.crt                    == root-ca.crt: the CA file proxies verify the upstream with
#   client-ca.{key,crt}       CA the MUTUAL upstream verifies client certs against
#   client.{key,crt}          client cert for the proxy (CN=egress-proxy, EKU clientAuth)
#   client-chain.crt          == client.crt (client CA is a root; kept for symmetry)
#   -- negative-test material (used by verify-check.sh) --
#   wrong-host-chain.crt/.key leaf for wrong.test (valid chain, wrong name)
#   untrusted-chain.crt/.key  self-signed upstream.test (not under root-ca)
#   expired-chain.crt/.key    upstream.test leaf, valid chain, expired in 2020
#   leaf-only.crt             server leaf WITHOUT the intermediate (chain incomplete)
#   -- the seed manifests' names (/etc/istio/egress-certs) --
#   ca.pem, crt.pem, key.pem  root+intermediate, client chain, client key
set -euo pipefail
DIR=${1:?usage: certs.sh DIR}
KEY_TYPE=${KEY_TYPE:-ec}
mkdir -p "$DIR"
cd "$DIR"

if [[ -f .key_type && "$(cat .key_type)" != "$KEY_TYPE" ]]; then
  echo "certs.sh: $DIR already holds KEY_TYPE=$(cat .key_type); use another dir" >&2
  exit 1
fi
echo "$KEY_TYPE" > .key_type

genkey() { # $1 = out file
  [[ -f $1 ]] && return 0
  if [[ $KEY_TYPE == rsa ]]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null
  else
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
  fi
  chmod 600 "$1"
}

# ---- extension profiles ----
cat > ext.cnf <<'CNF'
[ v3_root ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ v3_int ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[ v3_server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:upstream.test, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ v3_wrong ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:wrong.test
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ v3_client ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectAltName = URI:spiffe://cluster.local/ns/istio-system/sa/egress-proxy
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF

selfsign() { # key crt subj ext
  [[ -f $2 ]] && return 0
  openssl req -new -x509 -key "$1" -out "$2" -days 3650 -sha256 -subj "$3" \
    -config ext.cnf -extensions "$4" 2>/dev/null
}
sign() { # key crt subj ext ca_crt ca_key [days]
  [[ -f $2 ]] && return 0
  openssl req -new -key "$1" -subj "$3" -out "$2.csr" 2>/dev/null
  openssl x509 -req -in "$2.csr" -CA "$5" -CAkey "$6" -CAcreateserial \
    -out "$2" -days "${7:-825}" -sha256 -extfile ext.cnf -extensions "$4" 2>/dev/null
  rm -f "$2.csr"
}

# root + intermediate (server side)
genkey root-ca.key; selfsign root-ca.key root-ca.crt "/O=egress-bench/CN=egress-bench root CA" v3_root
genkey int-ca.key;  sign int-ca.key int-ca.crt "/O=egress-bench/CN=egress-bench intermediate CA" v3_int root-ca.crt root-ca.key 3650
# server leaf
genkey server.key;  sign server.key server.crt "/O=egress-bench/CN=upstream.test" v3_server int-ca.crt int-ca.key
[[ -f server-chain.crt ]] || cat server.crt int-ca.crt > server-chain.crt
[[ -f ca.crt ]] || cp root-ca.crt ca.crt
# client side
genkey client-ca.key; selfsign client-ca.key client-ca.crt "/O=egress-bench/CN=egress-bench client CA" v3_root
genkey client.key;    sign client.key client.crt "/O=egress-bench/CN=egress-proxy" v3_client client-ca.crt client-ca.key
[[ -f client-chain.crt ]] || cp client.crt client-chain.crt

# ---- negative-test material ----
genkey wrong-host.key; sign wrong-host.key wrong-host.crt "/O=egress-bench/CN=wrong.test" v3_wrong int-ca.crt int-ca.key
[[ -f wrong-host-chain.crt ]] || cat wrong-host.crt int-ca.crt > wrong-host-chain.crt
genkey untrusted-ca.key; selfsign untrusted-ca.key untrusted-ca.crt "/O=evil/CN=untrusted CA" v3_root
genkey untrusted.key; sign untrusted.key untrusted.crt "/O=evil/CN=upstream.test" v3_server untrusted-ca.crt untrusted-ca.key
[[ -f untrusted-chain.crt ]] || cat untrusted.crt untrusted-ca.crt > untrusted-chain.crt
[[ -f leaf-only.crt ]] || cp server.crt leaf-only.crt
# expired leaf: openssl 3.0 'x509 -req' cannot back-date, so use 'openssl ca' with explicit dates
genkey expired.key
if [[ ! -f expired.crt ]]; then
  rm -rf ca-db && mkdir -p ca-db && : > ca-db/index.txt && echo 1000 > ca-db/serial
  cat > ca-db/ca.cnf <<CNF
[ ca ]
default_ca = CA_default
[ CA_default ]
dir = ca-db
database = ca-db/index.txt
new_certs_dir = ca-db
serial = ca-db/serial
default_md = sha256
policy = policy_any
copy_extensions = none
unique_subject = no
[ policy_any ]
commonName = supplied
organizationName = optional
CNF
  openssl req -new -key expired.key -subj "/O=egress-bench/CN=upstream.test" -out expired.csr 2>/dev/null
  openssl ca -batch -config ca-db/ca.cnf -cert int-ca.crt -keyfile int-ca.key \
    -startdate 20200101000000Z -enddate 20200201000000Z \
    -extfile ext.cnf -extensions v3_server -in expired.csr -out expired.crt -notext 2>/dev/null
  rm -f expired.csr; rm -rf ca-db
fi
[[ -f expired-chain.crt ]] || cat expired.crt int-ca.crt > expired-chain.crt
chmod 644 *.crt

# The file names the seed manifests mount at /etc/istio/egress-certs (use with
# --mount /etc/istio/egress-certs=DIR): ca.pem = root + intermediate (the seed's advice),
# crt.pem = client chain, key.pem = client key.
[[ -f ca.pem ]] || cat ca.crt int-ca.crt > ca.pem
[[ -f crt.pem ]] || cp client-chain.crt crt.pem
[[ -f key.pem ]] || { cp client.key key.pem; chmod 600 key.pem; }

# sanity: chain must verify
openssl verify -CAfile ca.crt -untrusted int-ca.crt server.crt >/dev/null
openssl verify -CAfile client-ca.crt client.crt >/dev/null
echo "certs OK in $DIR (KEY_TYPE=$KEY_TYPE)"
