# shellcheck shell=bash
# Real services for the test suite, started by scripts/test.sh (source this file; bash).
#
# Each `<name>_up` starts one throw-away server and exports what the tests read; each `<name>_down`
# stops exactly what its `_up` started and is a no-op (also under `set -euo pipefail`) when nothing
# was started. To add a service, add a `<name>_up`/`<name>_down` pair here and call both from
# scripts/test.sh (the EXIT trap there lists every `_down`).
#
# Scratch dirs come from `mktemp --tmpdir`: TMPDIR must be unset or a directory the `postgres` user
# can enter (never under /root, which is mode 0700).

_free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# Run "$@" until it succeeds, for at most 20 s.
_wait_for() { local i; for i in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }

# Run "$@" as the postgres user when we are root (initdb refuses root); as ourselves otherwise.
_as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# PostgreSQL 15 (Debian) ---------------------------------------------------------------------------
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

pg_up() {  # [port] -> exports DATABASE_URL and PGHOST, PGPORT, PGUSER, PGDATABASE
  local port=${1:-$(_free_port)}
  PG_CI_DIR=$(mktemp -d --tmpdir pgci.XXXXXX) || return 1
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$PG_CI_DIR" || return 1; fi
  _as_postgres "$PG_BIN/initdb" -D "$PG_CI_DIR/data" -U postgres -A trust -E UTF8 \
      --locale=C.UTF-8 --no-sync >"$PG_CI_DIR/initdb.log" 2>&1 || { cat "$PG_CI_DIR/initdb.log"; return 1; }
  _as_postgres "$PG_BIN/pg_ctl" -D "$PG_CI_DIR/data" -l "$PG_CI_DIR/log" -w -t 60 -o \
      "-c listen_addresses=127.0.0.1 -p $port -k $PG_CI_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      start >/dev/null || { cat "$PG_CI_DIR/log"; return 1; }
  _as_postgres "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres ci || return 1
  export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=ci
  export DATABASE_URL="postgresql://postgres@127.0.0.1:$port/ci"
}

pg_down() {
  [ -n "${PG_CI_DIR:-}" ] || return 0
  _as_postgres "$PG_BIN/pg_ctl" -D "$PG_CI_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_CI_DIR"
  unset PG_CI_DIR
}

# Podman (offline images; no registry is reachable) ------------------------------------------------
PODMAN_CONF=${PODMAN_CONF:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/containers.conf}

podman_setup() {  # exports CONTAINERS_CONF (runc, cgroupfs, ulimits, no network); /etc is left alone
  command -v podman >/dev/null 2>&1 || { echo "podman_setup: podman is not installed" >&2; return 1; }
  # CONTAINERS_CONF replaces the system files for every podman process that inherits it (the test
  # suite's, and the cleanup processes conmon starts), so nothing outside the repo is changed.
  export CONTAINERS_CONF=$PODMAN_CONF
  local got; got=$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}}' 2>&1) || { echo "$got" >&2; return 1; }
  [ "$got" = "runc cgroupfs" ] || { echo "podman_setup: podman uses '$got', expected 'runc cgroupfs'" >&2; return 1; }
}

busybox_image() {  # [name] -> a ~2 MB image from Debian's busybox-static, no registry needed
  local name=${1:-localhost/busybox:ci} root a rc
  podman image exists "$name" 2>/dev/null && return 0
  root=$(mktemp -d --tmpdir busybox-image.XXXXXX) || return 1
  mkdir -p "$root/bin" "$root/tmp" "$root/etc" && cp /bin/busybox "$root/bin/" || { rm -rf "$root"; return 1; }
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"; echo 'root:x:0:' >"$root/etc/group"
  tar -C "$root" -c . | podman import -q --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' - "$name" >/dev/null
  rc=$?; rm -rf "$root"; return $rc
}
