#!/usr/bin/env bash
# Install a codepool router on this machine as a systemd service (`codepool serve`).
# Run as root on Debian 12, from a checkout of codepool.
#
#   sudo deploy/provision-router.sh                  # install or upgrade, then (re)start
#   sudo deploy/provision-router.sh --stage /tmp/r   # write the files under a folder only
#
# It makes the system user `codepool`, a virtualenv with codepool in /opt/codepool/venv,
# /etc/codepool/config.toml (from config/example.toml, only if there is none: an upgrade
# keeps yours), the docs in /opt/codepool/docs, and deploy/systemd/codepool.socket and
# codepool.service (systemd holds the port; the router serves on it).
# Then edit /etc/codepool/config.toml (docs/aws.md) and run `codepool doctor` as `codepool`.
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stage=""
while (( $# )); do
  case "$1" in
    --stage) stage="${2:?--stage needs a folder}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -z "$stage" && $(id -u) -ne 0 ]]; then
  echo "error: run as root (or use --stage DIR to write the files into a folder)" >&2; exit 2
fi
root="${stage:+$(mkdir -p "$stage" && cd "$stage" && pwd)}"   # "" means the real /
say() { printf '==> %s\n' "$*" >&2; }

if [[ -z "$stage" ]] && ! id codepool >/dev/null 2>&1; then
  say "system user codepool"
  useradd --system --home-dir /var/lib/codepool --shell /usr/sbin/nologin codepool
fi

say "codepool into $root/opt/codepool/venv"
python3 -m venv "$root/opt/codepool/venv"
"$root/opt/codepool/venv/bin/python" -m pip install -q --disable-pip-version-check "$REPO"
rm -rf "$root/opt/codepool/docs"
cp -r "$REPO/docs" "$root/opt/codepool/docs"

install -d -m 755 "$root/etc/codepool"
if [[ ! -f "$root/etc/codepool/config.toml" ]]; then
  say "configuration $root/etc/codepool/config.toml (every key at its default: edit it)"
  sed -e 's|^state_dir = .*|state_dir = "/var/lib/codepool"|' "$REPO/config/example.toml" \
    > "$root/etc/codepool/config.toml"
else
  say "keeping $root/etc/codepool/config.toml"
fi
# It holds the store's password and the OIDC client secret: root's, readable by the
# router's group only (not by the workspaces' accounts, nor anyone else on the machine).
chmod 640 "$root/etc/codepool/config.toml"
[[ -z "$stage" ]] && chgrp codepool "$root/etc/codepool/config.toml"

install -d -m 755 "$root/etc/systemd/system"
for unit in codepool.socket codepool.service; do
  install -m 644 "$REPO/deploy/systemd/$unit" "$root/etc/systemd/system/$unit"
done

if [[ -z "$stage" ]]; then
  install -d -o codepool -g codepool -m 700 /var/lib/codepool
  su -s /bin/sh codepool -c "CODEPOOL_CONFIG=/etc/codepool/config.toml /opt/codepool/venv/bin/codepool doctor" \
    || say "codepool doctor found something to fix in /etc/codepool/config.toml (above)"
  systemctl daemon-reload
  systemctl enable codepool.socket codepool.service
  # A router from before codepool.socket holds the port the socket needs: stopped first.
  systemctl stop codepool.service
  systemctl restart codepool.socket
  systemctl start codepool.service
  say "done: codepool serve runs (journalctl -u codepool); first start prints the admin's password there"
else
  say "done: staged under $root"
fi
