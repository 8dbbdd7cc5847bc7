# Stand-in for the official postgres image, for machines that cannot pull from Docker Hub
# (built from a local Debian base by docker/build_local_bases.sh). It honours the same
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB variables and /docker-entrypoint-initdb.d/*.sql.
ARG BASE_IMAGE=sweeper-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /docker-entrypoint-initdb.d /var/run/postgresql \
    && chown postgres:postgres /var/run/postgresql \
    && ln -s /usr/lib/postgresql/*/bin/* /usr/local/bin/ 2>/dev/null || true
COPY docker/local/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
