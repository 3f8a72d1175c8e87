#!/usr/bin/env bash
# Install and start a local PostgreSQL for the tests that run `mlflow server` on a
# PostgreSQL backend store (tests/tracking/test_server_e2e.py). Idempotent: safe to
# run again on a machine where any part of it is already done.
#
# Result: a server on 127.0.0.1:${OFEXP_PG_PORT:-5432} with user/password ofexp/ofexp
# and an empty database `ofexp`; psycopg2-binary in .venv. The tests find it through
# OFEXP_TEST_POSTGRES_URI (default postgresql://ofexp:ofexp@127.0.0.1:5432/ofexp) and
# create a fresh database per test session, so the `ofexp` user may create databases.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_USER=ofexp
PG_PASSWORD=ofexp
PG_DB=ofexp
PG_PORT="${OFEXP_PG_PORT:-5432}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

# The psycopg2 wheel bundles libpq: no compiler or headers needed.
.venv/bin/python -c "import psycopg2" 2>/dev/null || .venv/bin/pip install -q "psycopg2-binary>=2.9,<3"

# Debian makes one cluster at install time; create it if a minimal image skipped that.
read -r PG_VERSION PG_CLUSTER < <(pg_lsclusters --no-header | awk 'NR==1 {print $1, $2}') || true
if [ -z "${PG_VERSION:-}" ]; then
  PG_VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
  PG_CLUSTER=main
  as_root pg_createcluster --port "$PG_PORT" "$PG_VERSION" "$PG_CLUSTER" >/dev/null
fi
if ! pg_lsclusters --no-header | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {print $4}' | grep -q online; then
  as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
fi

psql_admin() { as_root su postgres -c "psql -v ON_ERROR_STOP=1 -q -p $PG_PORT $*"; }
if ! psql_admin "-tAc \"SELECT 1 FROM pg_roles WHERE rolname='$PG_USER'\"" | grep -q 1; then
  psql_admin "-c \"CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'\""
fi
if ! psql_admin "-tAc \"SELECT 1 FROM pg_database WHERE datname='$PG_DB'\"" | grep -q 1; then
  psql_admin "-c \"CREATE DATABASE $PG_DB OWNER $PG_USER\""
fi
echo "PostgreSQL $PG_VERSION/$PG_CLUSTER on 127.0.0.1:$PG_PORT: postgresql://$PG_USER:***@127.0.0.1:$PG_PORT/$PG_DB" >&2
