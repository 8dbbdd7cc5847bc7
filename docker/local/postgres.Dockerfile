# Stand-in for the official postgres image, for machines that cannot pull from Docker Hub, built on the
# local Debian base (docker/build_local_bases.sh; PostgreSQL 15 is already in it). It honours the same
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB variables and /docker-entrypoint-initdb.d/*.sql.
ARG BASE_IMAGE=sweeper-base:bookworm
FROM ${BASE_IMAGE}
RUN set -e; if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \
      && rm -rf /var/lib/apt/lists/*; \
    fi; \
    mkdir -p /docker-entrypoint-initdb.d /var/run/postgresql && chown postgres:postgres /var/run/postgresql; \
    for f in /usr/lib/postgresql/*/bin/*; do ln -sf "$f" /usr/local/bin/; done
COPY docker/local/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data
# Fast shutdown, as in the official image: SIGTERM ("smart") would wait for every client to disconnect.
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
