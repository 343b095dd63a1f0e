#!/usr/bin/env bash
# Provision a codepool workspace box: the image (code-AMI) the Auto Scaling Group launches.
# Run as root on a fresh Debian 12 instance (by hand, or from Packer's shell provisioner),
# from a checkout of codepool, then make an AMI of the instance.
#
#   deploy/workspace-tls.sh tls/                          # once: CA + box certificate
#   sudo deploy/provision-workspace.sh --tls-dir tls/     # on the image builder
#
# Options:
#   --tls-dir DIR    folder with workspace.crt and workspace.key (required)
#   --user NAME      the account that owns the workspace and runs code-server (default coder)
#   --stage DIR      write every file under DIR instead of /, and skip apt, useradd and
#                    systemctl: to look at the result, or to test this script
#
# What the box gets: code-server (pinned, scripts/install-code-server) in /opt/code-server,
# running as the user on 127.0.0.1:8080 (deploy/systemd/codepool-code-server.service);
# nginx with nginx/workspace.conf on 8443, the box's only open port, with the certificate
# in /etc/codepool/tls. Nothing starts a workspace's tag or identity: the group tags new
# boxes Owner=UNASSIGNED itself, and the router injects the heartbeat (docs/architecture.md).
set -euo pipefail

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tls_dir=""
user="coder"
stage=""
while (( $# )); do
  case "$1" in
    --tls-dir) tls_dir="${2:?--tls-dir needs a folder}"; shift 2 ;;
    --user) user="${2:?--user needs a name}"; shift 2 ;;
    --stage) stage="${2:?--stage needs a folder}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
fail() { echo "error: $*" >&2; exit 2; }
[[ -n "$tls_dir" ]] || fail "--tls-dir is required (make one with deploy/workspace-tls.sh)"
for f in workspace.crt workspace.key; do
  [[ -f "$tls_dir/$f" ]] || fail "--tls-dir $tls_dir: $f is missing (deploy/workspace-tls.sh makes it)"
done
[[ "$user" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || fail "--user $user: allowed is a Linux user name (a-z, 0-9, _ and -)"
if [[ -z "$stage" && $(id -u) -ne 0 ]]; then
  fail "run as root (or use --stage DIR to write the files into a folder)"
fi

root="${stage:+$(mkdir -p "$stage" && cd "$stage" && pwd)}"   # "" means the real /
say() { printf '==> %s\n' "$*" >&2; }
home="/home/$user"

if [[ -z "$stage" ]]; then
  say "Debian packages: nginx, openssl"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx openssl >/dev/null
  if ! id "$user" >/dev/null 2>&1; then
    say "user $user (no sudo: the workspace is theirs, the box is not)"
    useradd --create-home --home-dir "$home" --shell /bin/bash "$user"
  fi
else
  mkdir -p "$root$home"
fi

say "code-server into $root/opt/code-server"
CODEPOOL_CODE_SERVER_DIR="$root/opt/code-server" "$REPO/scripts/install-code-server" >&2

say "nginx: $root/etc/nginx/conf.d/codepool-workspace.conf on 8443"
install -d -m 755 "$root/etc/nginx/conf.d" "$root/etc/codepool"
install -m 644 "$REPO/nginx/workspace.conf" "$root/etc/nginx/conf.d/codepool-workspace.conf"
# Debian's default site answers on port 80; a box has one door, 8443.
rm -f "$root/etc/nginx/sites-enabled/default"

say "TLS certificate into $root/etc/codepool/tls (key readable by root only)"
install -d -m 755 "$root/etc/codepool/tls"
install -m 644 "$tls_dir/workspace.crt" "$root/etc/codepool/tls/workspace.crt"
install -m 600 "$tls_dir/workspace.key" "$root/etc/codepool/tls/workspace.key"

say "systemd unit codepool-code-server.service (as $user)"
install -d -m 755 "$root/etc/systemd/system"
sed -e "s|/home/coder|$home|g" -e "s|^User=coder$|User=$user|" -e "s|^Group=coder$|Group=$user|" \
  "$REPO/deploy/systemd/codepool-code-server.service" \
  > "$root/etc/systemd/system/codepool-code-server.service"
chmod 644 "$root/etc/systemd/system/codepool-code-server.service"

if [[ -z "$stage" ]]; then
  nginx -t
  systemctl daemon-reload
  systemctl enable --now codepool-code-server.service nginx.service
  systemctl reload nginx
  say "done: this box answers https://<address>:8443/healthz once code-server is up; make an AMI of it"
else
  say "done: staged under $root"
fi
