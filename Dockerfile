# syntax=docker/dockerfile:1
# Larder container images, on Debian 12 packages only (docs/deployment.md).
#
#   docker build -t larder-sidecar:0.1 .                    # runtime (default): larder-sidecar, larderctl
#   docker build -t larder-client:0.1 --target client .     # headers, liblarder, CMake package
#
# The build stage runs the commands of README.md ("Building by hand"), so the
# image builds the way the repository is built and tested:
#   bash scripts/install-deps.sh
#   cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
#   cmake --build build -j2
# plus `cmake --install` into /opt/larder.

ARG DEBIAN=debian:12

# ---------------------------------------------------------------------------
FROM ${DEBIAN} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# install-deps.sh first, alone: its layer stays cached until the script changes.
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
ARG JOBS=2
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLARDER_BUILD_BENCH=OFF -DLARDER_BUILD_TESTS=OFF \
 && cmake --build build -j"${JOBS}" \
 && cmake --install build --prefix /opt/larder \
 && strip --strip-debug /opt/larder/bin/*

# ---------------------------------------------------------------------------
# For inference images that link the client:
#   COPY --from=larder-client:0.1 /usr/local/include/larder /usr/local/include/larder
#   COPY --from=larder-client:0.1 /usr/local/lib/ /usr/local/lib/
# then find_package(larder) and target_link_libraries(app PRIVATE larder::client)
# (CMAKE_PREFIX_PATH=/usr/local is the default). Only the C++ standard library
# is needed at run time.
FROM ${DEBIAN}-slim AS client
COPY --from=build /opt/larder/include/ /usr/local/include/
COPY --from=build /opt/larder/lib/ /usr/local/lib/
RUN ldconfig

# ---------------------------------------------------------------------------
# The sidecar: larder-sidecar and larderctl, run as uid/gid 65532 (larder).
# Give the segment's volume to this user's group (Kubernetes: fsGroup) and run
# the inference container in that group; see examples/k8s/.
FROM ${DEBIAN}-slim AS runtime
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      ca-certificates librabbitmq4 libyaml-cpp0.7 libspdlog1.10 libfmt9 libsimdjson14 \
      libcpp-httplib0.11 libssl3 libzstd1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 larder \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin larder \
 && mkdir -p /etc/larder /var/run/larder \
 && chown larder:larder /var/run/larder && chmod 2775 /var/run/larder
COPY --from=build /opt/larder/bin/larder-sidecar /opt/larder/bin/larderctl /usr/local/bin/
COPY examples/sidecar.example.yaml /etc/larder/sidecar.example.yaml
USER 65532:65532
# The segment directory: mount a memory-backed volume at /var/run/larder
# (emptyDir with medium: Memory; docker run --mount type=tmpfs,...) or use
# /dev/shm sized with --shm-size; `larderctl size --config` gives the size.
# No VOLUME here: an anonymous volume would be disk-backed, and the sidecar
# refuses a segment directory that is not a tmpfs.
# The metrics listener (/metrics, /healthz, /readyz) when metrics.listen is
# 0.0.0.0:9464; the default 127.0.0.1 is reachable only inside the pod.
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/larder-sidecar"]
CMD ["--config", "/etc/larder/sidecar.yaml"]
