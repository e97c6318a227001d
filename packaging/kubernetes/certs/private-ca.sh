#!/usr/bin/env bash
# Without cert-manager: makes a private CA and the server certificate with openssl, stores them
# as the Secret atproto-verifier-tls, and writes the CA into both webhook configurations and
# Gatekeeper's Provider (printed as patched YAML on stdout, to review and `kubectl apply -f -`).
#
#   packaging/kubernetes/certs/private-ca.sh DIR [NAMESPACE]
#
# DIR keeps ca.key: guard it (whoever holds it can impersonate the verifier to the API server).
# Re-run to rotate the server certificate; the server reloads the Secret without a restart.
set -euo pipefail
dir=${1:?usage: private-ca.sh DIR [NAMESPACE]}
ns=${2:-atproto-verifier}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir" && chmod 700 "$dir"
umask 077
if [ ! -s "$dir/ca.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" -subj "/CN=atproto-verifier-ca" 2>/dev/null
fi
host="atproto-verifier.$ns.svc"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/tls.key" -out "$dir/tls.csr" -subj "/CN=$host" 2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:%s.cluster.local\nextendedKeyUsage=serverAuth\n' "$host" "$host" > "$dir/ext.cnf"
openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 365 \
  -extfile "$dir/ext.cnf" -out "$dir/tls.crt" 2>/dev/null
if command -v kubectl >/dev/null; then
  kubectl -n "$ns" create secret tls atproto-verifier-tls --cert "$dir/tls.crt" --key "$dir/tls.key" \
    --dry-run=client -o yaml | kubectl apply -f - >&2
fi
ca=$(base64 -w0 < "$dir/ca.crt")
# caBundle into every webhook (after each clientConfig:) and into the Provider.
sed -e "s|^\(    clientConfig:\)$|\1\n      caBundle: $ca|" "$here/webhooks.yaml"
echo '---'
sed -e "s|REPLACE_WITH_BASE64_CA_PEM|$ca|" "$here/gatekeeper/provider.yaml"
