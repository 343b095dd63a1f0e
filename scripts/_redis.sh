# shellcheck shell=bash
# Sourced by scripts/test and scripts/stress: when CODEPOOL_TEST_REDIS_URL is unset, start a
# throwaway Redis on a private socket for the real-Redis tests, stopped (and its folder
# removed) when the script exits.
if [[ -z "${CODEPOOL_TEST_REDIS_URL:-}" ]] && command -v redis-server >/dev/null; then
  tmp=$(mktemp -d)
  redis-server --port 0 --unixsocket "$tmp/redis.sock" --save "" --appendonly no \
    --daemonize yes --pidfile "$tmp/redis.pid" --logfile "$tmp/redis.log" --dir "$tmp"
  stop_redis() {
    local pid
    pid=$(cat "$tmp/redis.pid" 2>/dev/null) || pid=""
    if [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; then
      # Gone before its folder is: it removes its socket and pid file as it exits.
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    fi
    rm -rf "$tmp" || true
  }
  trap stop_redis EXIT
  for _ in $(seq 50); do [[ -S "$tmp/redis.sock" ]] && break; sleep 0.1; done
  export CODEPOOL_TEST_REDIS_URL="unix://$tmp/redis.sock"
fi
