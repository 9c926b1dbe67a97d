#!/usr/bin/env bash
# Install everything the test suite needs and run it: pytest, then ruff (lint + format), then mypy.
#
#   bash scripts/test.sh [pytest args...]
#   bash scripts/test.sh -m "not slow" -x -q     # the quick inner loop: no servers, CLI processes or crashes
#   bash scripts/test.sh tests/store -k blobs    # one folder, some tests
#
# Tests marked `slow` start `datamill up` or other subprocesses, or kill processes in a loop; CI
# (.ci/run) passes no arguments and runs everything.
# Works on a fresh Debian 12 machine with only Python 3.11 and pip. As root it installs the Debian
# packages below (skipped when they are already there); it installs uv if missing, syncs the venv
# from uv.lock, starts a throw-away PostgreSQL (see scripts/services.sh) and stops it on exit.
# All three checks always run; the exit status is non-zero if any of them failed (pytest's
# "no tests collected", exit 5, counts as a failure).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# Debian packages the tests need: PostgreSQL; podman (with its recommended helpers: netavark,
# fuse-overlayfs, uidmap, catatonit...) for container steps; Debian's chromium, without its ~100
# recommended packages, for the web app's browser tests (Playwright drives it; never `playwright install`).
APT_PACKAGES=(postgresql podman runc busybox-static)
APT_PACKAGES_NO_RECOMMENDS=(chromium)

_apt_have() {  # package -> 0 when it is usable already
  case "$1" in
    postgresql) [ -x /usr/lib/postgresql/15/bin/initdb ] ;;
    *) dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed' ;;
  esac
}

_apt_missing() {  # packages... -> the missing ones, space-separated
  local pkg out=()
  for pkg in "$@"; do _apt_have "$pkg" || out+=("$pkg"); done
  echo "${out[*]}"
}

read -r -a missing <<<"$(_apt_missing "${APT_PACKAGES[@]}")"
read -r -a missing_nr <<<"$(_apt_missing "${APT_PACKAGES_NO_RECOMMENDS[@]}")"
if [ ${#missing[@]} -gt 0 ] || [ ${#missing_nr[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "test.sh: installing Debian packages: ${missing[*]} ${missing_nr[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -o DPkg::Lock::Timeout=300
    if [ ${#missing[@]} -gt 0 ]; then
      apt-get install -y -o DPkg::Lock::Timeout=300 "${missing[@]}"
    fi
    if [ ${#missing_nr[@]} -gt 0 ]; then
      apt-get install -y -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing_nr[@]}"
    fi
  else
    echo "test.sh: missing Debian packages (${missing[*]} ${missing_nr[*]}); run as root or install them" >&2
    exit 1
  fi
fi

# uv, then the project's venv exactly as locked (dev extra: pytest, ruff, mypy).
if command -v uv >/dev/null 2>&1; then
  UV=(uv)
else
  if ! python3 -m uv --version >/dev/null 2>&1; then
    echo "test.sh: installing uv with pip"
    # Debian's own python3 is "externally managed" (PEP 668): fall back to overriding that.
    python3 -m pip install --quiet uv || python3 -m pip install --quiet --break-system-packages uv
  fi
  UV=(python3 -m uv)
fi
export UV_PYTHON_DOWNLOADS=never  # use the machine's Python 3.11; only PyPI is reachable
# Bytecode compiled at install: pool workers and Dask workers start with -B and would compile
# SQLAlchemy and friends from source each time (tens of seconds on a loaded machine).
export UV_COMPILE_BYTECODE=1
"${UV[@]}" sync --frozen --extra dev

# Scratch dirs (PostgreSQL's data dir among them) must be enterable by the postgres user.
if [ -n "${TMPDIR:-}" ] && [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$TMPDIR" 2>/dev/null; then
  echo "test.sh: TMPDIR=$TMPDIR is not usable by the postgres user; using /tmp"
  export TMPDIR=/tmp
fi

# shellcheck source=scripts/services.sh
. scripts/services.sh
trap 'set +e; pg_down' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
pg_up || { echo "test.sh: PostgreSQL failed to start" >&2; exit 1; }
echo "test.sh: PostgreSQL at $DATABASE_URL"
# Container steps: podman configured through CONTAINERS_CONF and the offline busybox image.
podman_setup || { echo "test.sh: podman is not usable" >&2; exit 1; }
busybox_image || { echo "test.sh: could not build localhost/busybox:ci" >&2; exit 1; }

PYTEST_LOG=$(mktemp --tmpdir pytest-log.XXXXXX)
trap 'set +e; pg_down; rm -f "$PYTEST_LOG"' EXIT
pytest_rc=0 ruff_rc=0 mypy_rc=0
set +e
.venv/bin/python -m pytest "$@" 2>&1 | tee "$PYTEST_LOG"
pytest_rc=${PIPESTATUS[0]}
set -e
# Lint (with the complexity limit, C90 in pyproject.toml) and formatting.
.venv/bin/ruff check src tests benchmarks || ruff_rc=$?
.venv/bin/ruff format --check src tests benchmarks || ruff_rc=$?
.venv/bin/mypy || mypy_rc=$?

echo "test.sh: pytest exit $pytest_rc, ruff exit $ruff_rc, mypy exit $mypy_rc"
# End with pytest's own closing line, so whoever reads the tail of the log sees the test counts.
tail -n 1 "$PYTEST_LOG"
if [ "$pytest_rc" -ne 0 ] || [ "$ruff_rc" -ne 0 ] || [ "$mypy_rc" -ne 0 ]; then
  exit 1
fi
