# syntax=docker/dockerfile:1
# sluice: one pipeline per container.
#   docker build -t sluice .
#   docker run --rm -v $PWD/pipelines:/etc/sluice -e DATABASE_URL=... sluice run /etc/sluice/orders-webhook.yaml

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sluice && cp target/release/sluice /usr/local/bin/sluice

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/sluice /usr/local/bin/sluice
# State (offsets, DLQ) lives under the working directory by default: mount a volume here.
WORKDIR /var/lib/sluice
RUN chown 65532:65532 /var/lib/sluice
USER 65532:65532
EXPOSE 9187
ENTRYPOINT ["sluice"]
CMD ["--help"]
