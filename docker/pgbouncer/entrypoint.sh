#!/bin/bash
# Writes PgBouncer's configuration from the environment, then PgBouncer replaces this script (PID 1, as
# the postgres user; it refuses root). The password goes into a file only the postgres user reads, never
# onto a command line. Transaction pooling: sweeper keeps no session state on a connection (its study lock
# is a transaction's, it prepares no statements), so any server connection can run any transaction.
set -euo pipefail
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
conf=/etc/pgbouncer
mkdir -p "$conf" /var/run/postgresql
printf '"%s" "%s"\n' "${POSTGRES_USER:-sweeper}" "$POSTGRES_PASSWORD" > "$conf/userlist.txt"
cat > "$conf/pgbouncer.ini" <<INI
[databases]
* = host=${PGBOUNCER_DB_HOST:-postgres} port=${PGBOUNCER_DB_PORT:-5432}
[pgbouncer]
listen_addr = *
listen_port = 6432
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $conf/userlist.txt
pool_mode = transaction
; server connections per database (PostgreSQL's max_connections is 100 by default; MLflow needs some too)
default_pool_size = ${PGBOUNCER_POOL_SIZE:-40}
max_db_connections = ${PGBOUNCER_POOL_SIZE:-40}
max_client_conn = ${PGBOUNCER_MAX_CLIENTS:-2000}
; a restarted PostgreSQL is logged into again within a second, not PgBouncer's default 15 s
server_login_retry = 1
ignore_startup_parameters = extra_float_digits
INI
chown -R postgres:postgres "$conf" /var/run/postgresql
chmod 600 "$conf/userlist.txt"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec setpriv --reuid=postgres --regid=postgres --init-groups pgbouncer "$conf/pgbouncer.ini"
