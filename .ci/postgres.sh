#!/usr/bin/env bash
# Start the machine's PostgreSQL 15 on loopback for the sweep storage tests and print its URL.
# Best effort: without a server the PostgreSQL tests are skipped, the rest of CI runs.
set -uo pipefail
command -v pg_ctlcluster > /dev/null || exit 0
pg_ctlcluster 15 main start > /dev/null 2>&1 || pg_ctlcluster 15 main status > /dev/null 2>&1 || exit 0
for _ in $(seq 1 30); do su postgres -c "pg_isready -q -h 127.0.0.1" && break; sleep 1; done
su postgres -c "psql -q -h 127.0.0.1 -c \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'encoderlab') THEN CREATE ROLE encoderlab LOGIN SUPERUSER PASSWORD 'encoderlab'; END IF; END \\\$\\\$;\"" > /dev/null 2>&1 \
  || su postgres -c "psql -q -c \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'encoderlab') THEN CREATE ROLE encoderlab LOGIN SUPERUSER PASSWORD 'encoderlab'; END IF; END \\\$\\\$;\"" > /dev/null 2>&1
su postgres -c "createdb -O encoderlab encoderlab_test" > /dev/null 2>&1 || true
echo "postgresql://encoderlab:encoderlab@127.0.0.1:5432/encoderlab_test"
