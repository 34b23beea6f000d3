# syntax=docker/dockerfile:1
# secret_vault on the official PostgreSQL 15 image.
# UNTESTED: there is no Docker engine on the machines this project is built on.

ARG PG_MAJOR=15

FROM postgres:${PG_MAJOR}-bookworm AS build
ARG PG_MAJOR
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates curl build-essential pkg-config libclang-dev clang \
      postgresql-server-dev-${PG_MAJOR} \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
RUN cargo install cargo-pgrx --version 0.18.0 --locked \
 && cargo pgrx init --pg${PG_MAJOR} /usr/lib/postgresql/${PG_MAJOR}/bin/pg_config
WORKDIR /src
COPY . .
RUN cargo pgrx package --pg-config /usr/lib/postgresql/${PG_MAJOR}/bin/pg_config \
 && mkdir /out \
 && cp -r target/release/secret_vault-pg${PG_MAJOR}/usr /out/

FROM postgres:${PG_MAJOR}-bookworm
COPY --from=build /out/usr/ /usr/
COPY docker/init-secret-vault.sql /docker-entrypoint-initdb.d/10-secret-vault.sql
# The extension refuses to load unless preloaded.
CMD ["postgres", "-c", "shared_preload_libraries=secret_vault"]
