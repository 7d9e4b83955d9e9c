#!/usr/bin/env bash
# deploy/docker/build.sh — build the project's images where no public registry can be reached.
#
#   deploy/docker/build.sh app     the app image ($IMAGE) FROM the local Debian base, pip offline
#   deploy/docker/build.sh kafka   Kafka ($KAFKA_IMAGE) from the jars servers.sh resolves with Maven
#   deploy/docker/build.sh es      Elasticsearch ($ES_IMAGE) from the distribution servers.sh resolves
#   deploy/docker/build.sh all     the three
#
# The app: the base image (deploy/docker/build-base.sh, reused when present), then a wheelhouse
# downloaded on the host (whose TLS proxy the host trusts and a container does not) into
# deploy/docker/wheelhouse/ from the lock files requirements/runtime.txt and build.txt (every
# version pinned, every wheel checked against its hash), then `docker build` with --build-arg BASE. Kafka and Elasticsearch: deploy/local/servers.sh fetch (Maven, ~/.m2), a Java
# runtime cut with jlink from a JDK of the host (17+ for Kafka, 21+ for Elasticsearch), and a
# small Dockerfile per server under deploy/docker/ whose entry point reads the same environment
# variables as the public images (so deploy/compose.yaml configures either).
#
# Environment (defaults in brackets): IMAGE [artifact-search:local], BASE_IMAGE
# [artifact-search-base:bookworm], KAFKA_IMAGE [artifact-search-kafka:local], ES_IMAGE
# [artifact-search-elasticsearch:local], PYTHON [.venv/bin/python], DOCKER [docker],
# KAFKA_VERSION/ES_VERSION (as servers.sh), JAVA_HOME_KAFKA/JAVA_HOME_ES [a JDK found like servers.sh].
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
IMAGE="${IMAGE:-artifact-search:local}"
export BASE_IMAGE="${BASE_IMAGE:-artifact-search-base:bookworm}"
KAFKA_IMAGE="${KAFKA_IMAGE:-artifact-search-kafka:local}"
ES_IMAGE="${ES_IMAGE:-artifact-search-elasticsearch:local}"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
DOCKER="${DOCKER:-docker}"
LOCAL_DIR="${SERVERS_LOCAL_DIR:-$REPO_ROOT/.local}"
CTX_DIR="$LOCAL_DIR/docker"
info() { printf '[build] %s\n' "$*" >&2; }
die() { printf '[build] ERROR: %s\n' "$*" >&2; exit 1; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

# docker_build TAG CONTEXT ARGS... — quiet on success, the build's log tail on failure
docker_build() {
  local tag="$1" ctx="$2" log; shift 2
  log="$(mktemp)"
  if ! "$DOCKER" build -t "$tag" "$@" "$ctx" >"$log" 2>&1; then
    tail -n 40 "$log" >&2; rm -f "$log"
    die "docker build of $tag failed (log above)"
  fi
  rm -f "$log"
}

build_app() {
  local t0 wh="$SCRIPT_DIR/wheelhouse" req="$REPO_ROOT/requirements"
  "$SCRIPT_DIR/build-base.sh"
  t0=$(date +%s)
  [[ -x "$PYTHON" ]] || die "$PYTHON is missing: run make venv (its pip downloads the wheelhouse)"
  mkdir -p "$wh"
  # the locks decide every version and hash: the same locks as last time, the same wheelhouse
  local stamp; stamp="$(cat "$req/runtime.txt" "$req/build.txt" | sha256sum | cut -c1-16)"
  if [[ "$(cat "$wh/.stamp" 2>/dev/null)" == "$stamp" ]]; then
    info "wheelhouse: up to date ($(find "$wh" -name '*.whl' | wc -l) wheels)"
  else
    rm -f "$wh"/*.whl "$wh/.stamp"
    # binary wheels only (the build stage has no compiler and no network), each checked
    # against the lock's hashes
    "$PYTHON" -m pip download -q --disable-pip-version-check --only-binary=:all: --require-hashes \
      -r "$req/runtime.txt" -r "$req/build.txt" -d "$wh"
    echo "$stamp" >"$wh/.stamp"
    info "wheelhouse: $(find "$wh" -name '*.whl' | wc -l) wheels ($(elapsed "$t0"))"
  fi
  t0=$(date +%s)
  docker_build "$IMAGE" "$REPO_ROOT" --build-arg "BASE=$BASE_IMAGE"
  info "$IMAGE built ($(elapsed "$t0")): $(image_size "$IMAGE")"
}

java_major() { "$1" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2; exit}' | cut -d. -f1; }

# a JDK 21+ with jlink: $JAVA_HOME_SERVERS, $ES_JAVA_HOME, $JAVA_HOME, then /usr/lib/jvm/*
find_jdk() {
  local d m
  for d in ${JAVA_HOME_SERVERS:-} ${ES_JAVA_HOME:-} ${JAVA_HOME:-} /usr/lib/jvm/*; do
    [[ -x "$d/bin/jlink" && -x "$d/bin/java" ]] || continue
    m="$(java_major "$d/bin/java")"
    if [[ -n "$m" && "$m" -ge 21 ]]; then echo "$d"; return 0; fi
  done
  return 1
}

# one Java runtime for both servers (Kafka needs 17+, Elasticsearch 21+), cut once with jlink
build_jre() {
  local jdk t0 jre="$CTX_DIR/jre"
  jdk="$(find_jdk)" || die "no JDK 21+ with jlink found (set JAVA_HOME_SERVERS)"
  if [[ -x "$jre/bin/java" && "$(cat "$jre/.jdk" 2>/dev/null)" == "$jdk" ]]; then return 0; fi
  t0=$(date +%s)
  rm -rf "$jre"; mkdir -p "$CTX_DIR"
  # every module but the development tools (compiler, debugger, jshell, packaging)
  local mods
  mods="$("$jdk/bin/java" --list-modules | sed 's/@.*//' \
    | grep -vE '^jdk\.(jpackage|jlink|jshell|javadoc|compiler|jdeps|jartool|jconsole|hotspot\.agent|jstatd|editpad|internal\.(ed|le|opt)|jcmd|jdi|jdwp)' \
    | paste -sd, -)"
  "$jdk/bin/jlink" --add-modules "$mods" --strip-debug --no-man-pages --no-header-files \
    --output "$jre" >/dev/null 2>&1 || die "jlink of $jdk failed"
  echo "$jdk" >"$jre/.jdk"
  info "Java runtime from $jdk ($(elapsed "$t0"), $(du -sh "$jre" | cut -f1))"
}

# server_context NAME SOURCE_DIR — a fresh build context: the Dockerfile and scripts of
# deploy/docker/NAME, the runtime and SOURCE_DIR (hard links where the file system allows)
server_context() {
  local name="$1" ctx="$CTX_DIR/$1"
  rm -rf "$ctx"; mkdir -p "$ctx"
  cp "$SCRIPT_DIR/$name"/* "$ctx/"
  cp -al "$CTX_DIR/jre" "$ctx/jre" 2>/dev/null || cp -a "$CTX_DIR/jre" "$ctx/jre"
  echo "$ctx"
}

build_kafka() {
  local t0 ctx; t0=$(date +%s)
  "$REPO_ROOT/deploy/local/servers.sh" fetch kafka
  build_jre
  ctx="$(server_context kafka)"
  cp -al "$LOCAL_DIR/kafka/libs" "$ctx/libs" 2>/dev/null || cp -a "$LOCAL_DIR/kafka/libs" "$ctx/libs"
  docker_build "$KAFKA_IMAGE" "$ctx" --build-arg "BASE=$BASE_IMAGE"
  info "$KAFKA_IMAGE built ($(elapsed "$t0")): $(image_size "$KAFKA_IMAGE")"
}

build_es() {
  local t0 ctx; t0=$(date +%s)
  "$REPO_ROOT/deploy/local/servers.sh" fetch es
  build_jre
  ctx="$(server_context elasticsearch)"
  cp -al "$LOCAL_DIR/es/dist" "$ctx/dist" 2>/dev/null || cp -a "$LOCAL_DIR/es/dist" "$ctx/dist"
  docker_build "$ES_IMAGE" "$ctx" --build-arg "BASE=$BASE_IMAGE"
  info "$ES_IMAGE built ($(elapsed "$t0")): $(image_size "$ES_IMAGE")"
}

image_size() { "$DOCKER" image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1/1e6}'; }

case "${1:-app}" in
  app) build_app ;;
  kafka) "$SCRIPT_DIR/build-base.sh"; build_kafka ;;
  es) "$SCRIPT_DIR/build-base.sh"; build_es ;;
  all) build_app; build_kafka; build_es ;;
  *) die "usage: $0 app|kafka|es|all" ;;
esac
