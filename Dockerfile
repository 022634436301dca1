# Switchyard: multi-stage build. The build stage installs the `build` packages of packages.txt (cmake,
# protoc, gcc: the one list the README's ./dev and CI read too); the runtime image holds the binary
# alone and runs it as a non-root user.
#
#   docker build -t switchyard .
#   docker run -p 8080:8080 -p 127.0.0.1:9901:9901 -v "$PWD/conf/deploy/container.yaml:/etc/switchyard/switchyard.yaml:ro" switchyard

FROM rust:1-bookworm AS build
WORKDIR /src
COPY packages.txt dev ./
RUN ./dev deps build && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked && strip target/release/switchyard

FROM debian:bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/switchyard --shell /usr/sbin/nologin switchyard \
    && mkdir -p /etc/switchyard /var/lib/switchyard /run/switchyard \
    && chown switchyard:switchyard /var/lib/switchyard /run/switchyard
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
COPY conf/deploy/container.yaml /etc/switchyard/switchyard.yaml
USER switchyard
VOLUME ["/etc/switchyard", "/var/lib/switchyard"]
EXPOSE 8080 9901
# SIGTERM: stop accepting, finish what is in flight (at most grace_period), exit as soon as nothing is
# left. Give the platform's stop timeout more than grace_period.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9901/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["run", "-c", "/etc/switchyard/switchyard.yaml"]
