#!/usr/bin/env bash
# Make the TLS material between the routers and the workspace boxes: a private CA, and one
# certificate for every box, signed by it, for a fixed name (boxes' addresses are not known
# when the image is built).
#
#   deploy/workspace-tls.sh OUTDIR                       # CA + box certificate
#   deploy/workspace-tls.sh --name ws.corp.internal OUTDIR
#   deploy/workspace-tls.sh --days 365 OUTDIR            # a new box certificate, same CA
#
# OUTDIR gets:
#   ca.crt          -> every router: aws.workspace_ca_file
#   ca.key          -> keep offline; with it you sign the next box certificate
#   workspace.crt   -> the code-AMI: deploy/provision-workspace.sh --tls-dir OUTDIR
#   workspace.key   -> the code-AMI (root only)
# and the routers set aws.workspace_tls_name to the name (default workspace.codepool.internal).
# An existing CA in OUTDIR is kept, so renewing the box certificate needs no router change.
set -euo pipefail

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
name="workspace.codepool.internal"
days=825
while (( $# )); do
  case "$1" in
    --name) name="${2:?--name needs a value}"; shift 2 ;;
    --days) days="${2:?--days needs a value}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "error: unknown option $1 (allowed: --name NAME, --days N)" >&2; exit 2 ;;
    *) break ;;
  esac
done
if (( $# != 1 )); then
  echo "error: give exactly one output folder (see --help)" >&2; exit 2
fi
if [[ ! "$name" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
  echo "error: --name $name: allowed is a DNS name (letters, digits, dots, hyphens)" >&2; exit 2
fi
if [[ ! "$days" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --days $days: allowed is a whole number of days, 1 or more" >&2; exit 2
fi
command -v openssl >/dev/null || { echo "error: openssl is needed (apt-get install openssl)" >&2; exit 1; }

out="$1"
mkdir -p "$out"
umask 077
if [[ ! -f "$out/ca.key" ]]; then
  echo "==> new private CA in $out/ca.crt" >&2
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$out/ca.key" -out "$out/ca.crt" -days 3650 -subj "/CN=codepool workspace CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
else
  echo "==> keeping the CA in $out/ca.crt" >&2
fi
echo "==> box certificate for $name, $days days" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$tmp/workspace.key" -out "$tmp/workspace.csr" -subj "/CN=$name" 2>/dev/null
printf 'subjectAltName=DNS:%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
  "$name" > "$tmp/ext"
openssl x509 -req -in "$tmp/workspace.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
  -CAcreateserial -CAserial "$tmp/ca.srl" -days "$days" -extfile "$tmp/ext" \
  -out "$tmp/workspace.crt" 2>/dev/null
mv "$tmp/workspace.key" "$out/workspace.key"
mv "$tmp/workspace.crt" "$out/workspace.crt"
chmod 644 "$out/ca.crt" "$out/workspace.crt"
echo "==> done: routers trust $out/ca.crt for name $name; boxes serve $out/workspace.crt" >&2
