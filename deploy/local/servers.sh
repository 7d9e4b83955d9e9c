#!/usr/bin/env bash
# deploy/local/servers.sh — run the project's real backing servers locally, without Docker.
#
#   Kafka          KRaft single node (broker+controller)  127.0.0.1:9092 (controller 9093)
#   Elasticsearch  single-node, security off              127.0.0.1:9200 (transport 9300)
#   PostgreSQL     C collation, trust auth, wal_level=logical (sync-prefect's CDC)  127.0.0.1:55432
#
# Usage:  deploy/local/servers.sh fetch|start|stop|status|reset [kafka|es|pg|all]   (default: all)
#
#   fetch   download what is missing (Maven, cached in ~/.m2) into .local/ — skips what is present
#   start   fetch if needed, start, and wait until healthy; a no-op when already running and healthy
#   stop    graceful stop, killed after a bound
#   status  one line per server; exit 0 when all asked-for servers run, 3 otherwise
#   reset   stop and wipe the data (and logs) — keeps the downloaded distributions
#
# Runtime state lives under .local/ at the repo root (git-ignored):
#   .local/kafka/{libs,data,logs,config,build}  .local/es/{dist,config,data,logs,tmp,run}  .local/pg/{data,logs}
# Elasticsearch and PostgreSQL refuse to run as root: when run as root, they run as the system users
# $ES_USER (created if missing) and $PG_USER.
#
# Environment overrides (defaults in brackets):
#   SERVERS_LOCAL_DIR [<repo>/.local]   M2_REPO [~/.m2/repository]   MVN [mvn]   MVN_ARGS []
#   KAFKA_VERSION [4.1.1] KAFKA_JAVA_HOME [$JAVA_HOME or java on PATH, 17+] KAFKA_PORT [9092]
#   KAFKA_CONTROLLER_PORT [9093] KAFKA_HEAP [512m] KAFKA_PARTITIONS [3] KAFKA_START_TIMEOUT [90]
#   ES_VERSION [9.2.4] ES_JAVA_HOME [first JDK 21+ found] ES_PORT [9200] ES_TRANSPORT_PORT [9300]
#   ES_HEAP [1g] ES_USER [esrun] ES_START_TIMEOUT [120]
#   PG_BIN [newest /usr/lib/postgresql/*/bin] PG_PORT [55432] PG_USER [postgres] PG_START_TIMEOUT [60]
#   STOP_TIMEOUT [60]
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
LOCAL_DIR="${SERVERS_LOCAL_DIR:-$REPO_ROOT/.local}"
M2_REPO="${M2_REPO:-$HOME/.m2/repository}"
MVN="${MVN:-mvn}"
MVN_ARGS="${MVN_ARGS:-}"
HOST=127.0.0.1
STOP_TIMEOUT="${STOP_TIMEOUT:-60}"

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
KAFKA_PARTITIONS="${KAFKA_PARTITIONS:-3}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_DIR="$LOCAL_DIR/kafka"

ES_VERSION="${ES_VERSION:-9.2.4}"
ES_PORT="${ES_PORT:-9200}"
ES_TRANSPORT_PORT="${ES_TRANSPORT_PORT:-9300}"
ES_HEAP="${ES_HEAP:-1g}"
ES_USER="${ES_USER:-esrun}"
ES_START_TIMEOUT="${ES_START_TIMEOUT:-120}"
ES_DIR="$LOCAL_DIR/es"

PG_PORT="${PG_PORT:-55432}"
PG_USER="${PG_USER:-postgres}"
PG_START_TIMEOUT="${PG_START_TIMEOUT:-60}"
PG_DIR="$LOCAL_DIR/pg"

# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
info() { printf '[servers] %s\n' "$*" >&2; }
die() { printf '[servers] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }

is_root() { [[ $EUID -eq 0 ]]; }

# as_user USER CMD... — run CMD as USER when we are root, else as ourselves.
as_user() {
  local user="$1"; shift
  if is_root; then runuser -u "$user" -- "$@"; else "$@"; fi
}

pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
# own_pid PID MARKER — PID is alive and its command line contains MARKER (guards against pid reuse
# after a reboot, when pid files of a previous run are still around)
own_pid() { pid_alive "${1:-}" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"; }
# own_group PGID MARKER — some process of process group PGID has MARKER in its command line
own_group() { [[ -n "${1:-}" ]] && pgrep -g "$1" -f -- "$2" >/dev/null 2>&1; }
read_pid() { [[ -s "$1" ]] && tr -dc '0-9' <"$1" || true; }

# Print the last lines of a log file, for failure messages.
log_tail() {
  local f="$1" n="${2:-40}"
  if [[ -f "$f" ]]; then
    printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
    tail -n "$n" "$f" >&2
    printf -- '----- end of %s -----\n' "$f" >&2
  else
    printf '(no log file %s)\n' "$f" >&2
  fi
}

# port_open PORT — something accepts TCP connections on $HOST:PORT.
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# port_pid PORT — pid of the process listening on PORT (empty when unknown or free).
port_pid() {
  command -v ss >/dev/null 2>&1 || return 0
  ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2 || true
}

# describe_port PORT — human description of who holds PORT.
describe_port() {
  local pid; pid="$(port_pid "$1")"
  if [[ -n "$pid" ]]; then
    printf 'pid %s (%s)' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-160)"
  elif command -v ss >/dev/null 2>&1; then
    ss -ltnpH "sport = :$1" 2>/dev/null | head -n1
  else
    printf 'an unknown process (install iproute2 for ss to name it)'
  fi
}

# check_port NAME PORT MARKER PIDFILE — fail if PORT is held by a process that is not ours.
# A listener whose command line contains MARKER (our runtime dir) is adopted: its pid is recorded.
# Returns 0 when the port is free, 10 when an own process was adopted.
check_port() {
  local name="$1" port="$2" marker="$3" pidfile="$4" pid
  port_open "$port" || return 0
  pid="$(port_pid "$port")"
  if [[ -n "$pid" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker"; then
    info "$name: found own server already listening on $port (pid $pid); adopting it"
    echo "$pid" >"$pidfile"
    return 10
  fi
  die "$name: port $HOST:$port is already taken by $(describe_port "$port"). Stop it or choose another port (see the header of $0)."
}

java_major() {  # java_major JAVA_BIN -> 17, 21, 25 ... (empty when not runnable)
  "$1" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2; exit}' | cut -d. -f1
}

# find_java MIN PREFERRED_HOME — print a java binary of major version >= MIN.
# PREFERRED_HOME (may be empty) is tried alone when set: an unsuitable explicit choice is an error.
find_java() {
  local min="$1" preferred="$2" cand major
  local -a cands=()
  if [[ -n "$preferred" ]]; then
    cands=("$preferred/bin/java")
  else
    [[ -n "${JAVA_HOME:-}" ]] && cands+=("$JAVA_HOME/bin/java")
    command -v java >/dev/null 2>&1 && cands+=("$(command -v java)")
    local d
    for d in /usr/lib/jvm/*/; do [[ -x "$d/bin/java" ]] && cands+=("${d%/}/bin/java"); done
  fi
  for cand in "${cands[@]}"; do
    [[ -x "$cand" ]] || continue
    major="$(java_major "$cand")"
    if [[ -n "$major" && "$major" -ge "$min" ]]; then echo "$cand"; return 0; fi
  done
  return 1
}

need_java() {  # need_java MIN PREFERRED_HOME WHAT VAR -> java binary or die
  local java
  if ! java="$(find_java "$1" "$2")"; then
    if [[ -n "$2" ]]; then
      die "$3 needs Java $1+, but $4=$2 is not a Java $1+ home (found: $(java_major "$2/bin/java" 2>/dev/null || echo none))."
    fi
    die "$3 needs Java $1+ and none was found (looked at \$JAVA_HOME, java on PATH, /usr/lib/jvm/*). Install a JDK $1+ (Debian: apt-get install openjdk-17-jdk-headless; Java 21+ for Elasticsearch) or set $4."
  fi
  echo "$java"
}

need_cmd() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required: $2"; }

# run_mvn LOGFILE ARGS... — run Maven quietly; on failure show its output and die.
run_mvn() {
  local logf="$1"; shift
  need_cmd "$MVN" "install Maven (Debian: apt-get install maven)"
  # shellcheck disable=SC2086
  if ! "$MVN" -B -q -Dstyle.color=never $MVN_ARGS "$@" >"$logf" 2>&1 </dev/null; then
    info "Maven failed: $MVN -B -q $MVN_ARGS $*"
    log_tail "$logf" 60
    die "Maven could not resolve the artifacts (see its output above)."
  fi
}

# stop_pid NAME PID [TIMEOUT] — SIGTERM, wait, then SIGKILL.
stop_pid() {
  local name="$1" pid="$2" timeout="${3:-$STOP_TIMEOUT}" deadline
  pid_alive "$pid" || return 0
  info "$name: stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$(( $(now) + timeout ))
  while pid_alive "$pid" && (( $(now) < deadline )); do sleep 0.5; done
  if pid_alive "$pid"; then
    info "$name: still running after ${timeout}s; killing pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
  fi
}

ensure_system_user() {
  local user="$1"
  id -u "$user" >/dev/null 2>&1 && return 0
  is_root || die "system user '$user' does not exist and we are not root to create it"
  info "creating system user $user"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
}

# check_access USER DIR — USER can write DIR (the path to it must be traversable).
check_access() {
  local user="$1" dir="$2"
  is_root || return 0
  as_user "$user" test -w "$dir" -a -x "$dir" || die "user '$user' cannot access $dir (a parent directory is not traversable for other users?). Make the path readable (chmod o+x on the parents) or set SERVERS_LOCAL_DIR to a directory outside a private home, e.g. /var/tmp/servers."
}

# ----------------------------------------------------------------------------------------------
# Kafka
# ----------------------------------------------------------------------------------------------
KAFKA_PIDFILE="$KAFKA_DIR/kafka.pid"
KAFKA_LOG="$KAFKA_DIR/logs/server.log"

kafka_java() { need_java 17 "${KAFKA_JAVA_HOME:-}" "Kafka $KAFKA_VERSION" KAFKA_JAVA_HOME; }

kafka_fetch() {
  local libs="$KAFKA_DIR/libs"
  if [[ -f "$libs/kafka_2.13-$KAFKA_VERSION.jar" ]]; then
    info "kafka: libs for $KAFKA_VERSION present"
    return 0
  fi
  if kafka_running; then die "kafka: running with other libs; stop it before fetching $KAFKA_VERSION"; fi
  info "kafka: resolving Kafka $KAFKA_VERSION jars with Maven (cached in ~/.m2)"
  mkdir -p "$KAFKA_DIR/build"
  cp "$SCRIPT_DIR/kafka/pom.xml" "$KAFKA_DIR/build/pom.xml"
  rm -rf "$libs.tmp"
  run_mvn "$KAFKA_DIR/build/mvn.log" -f "$KAFKA_DIR/build/pom.xml" \
    dependency:copy-dependencies "-DoutputDirectory=$libs.tmp" "-Dkafka.version=$KAFKA_VERSION"
  [[ -f "$libs.tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || die "kafka: Maven did not produce kafka_2.13-$KAFKA_VERSION.jar"
  rm -rf "$libs"
  mv "$libs.tmp" "$libs"
  info "kafka: $(find "$libs" -name '*.jar' | wc -l) jars in $libs"
}

kafka_running() { own_pid "$(read_pid "$KAFKA_PIDFILE")" "$KAFKA_DIR/"; }

kafka_write_config() {
  local cfg="$KAFKA_DIR/config"
  mkdir -p "$cfg"
  cat >"$cfg/server.properties" <<EOF
# Generated by deploy/local/servers.sh on every start — edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$KAFKA_DIR/data
num.partitions=$KAFKA_PARTITIONS
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
EOF
  cat >"$cfg/log4j.properties" <<'EOF'
# reload4j configuration (slf4j-reload4j): everything to stdout, which servers.sh sends to logs/server.log
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.network.RequestChannel$=WARN
log4j.logger.org.apache.kafka.common.config=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.storage.internals.log=WARN
log4j.logger.kafka.authorizer.logger=WARN
EOF
  cat >"$cfg/log4j2.properties" <<'EOF'
# log4j2 is only touched by Kafka's log level controller; keep it quiet and on stdout
status = error
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = STDOUT
EOF
}

kafka_jvm_opts() {
  local cfg="$KAFKA_DIR/config"
  printf '%s\n' "-Xms256m" "-Xmx$KAFKA_HEAP" "-XX:+UseG1GC" "-XX:MaxGCPauseMillis=20" \
    "-Djava.awt.headless=true" "-Dlog4j.configuration=file:$cfg/log4j.properties" \
    "-Dlog4j2.configurationFile=$cfg/log4j2.properties" "-Dkafka.logs.dir=$KAFKA_DIR/logs"
}

kafka_format() {  # format the KRaft storage once; the cluster id is generated once and kept
  local java="$1" cfg="$KAFKA_DIR/config/server.properties" idf="$KAFKA_DIR/cluster.id" cid
  [[ -f "$KAFKA_DIR/data/meta.properties" ]] && return 0
  if [[ ! -s "$idf" ]]; then
    cid="$("$java" -cp "$KAFKA_DIR/libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
    [[ -n "$cid" ]] || die "kafka: could not generate a cluster id with kafka.tools.StorageTool"
    echo "$cid" >"$idf"
  fi
  cid="$(cat "$idf")"
  info "kafka: formatting KRaft storage (cluster id $cid)"
  mkdir -p "$KAFKA_DIR/data"
  local -a opts; mapfile -t opts < <(kafka_jvm_opts)
  if ! "$java" "${opts[@]}" -cp "$KAFKA_DIR/libs/*" kafka.tools.StorageTool format \
      -t "$cid" -c "$cfg" --ignore-formatted >"$KAFKA_DIR/logs/format.log" 2>&1; then
    log_tail "$KAFKA_DIR/logs/format.log"
    die "kafka: storage format failed"
  fi
}

# kafka_metadata_ok — a real metadata round trip (not only an open port).
kafka_metadata_ok() {
  local py
  for py in "$REPO_ROOT/.venv/bin/python" python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import aiokafka' 2>/dev/null; then
      timeout 20 "$py" - "$HOST:$KAFKA_PORT" <<'EOF' >/dev/null 2>&1
import asyncio, sys
from aiokafka.admin import AIOKafkaAdminClient

async def main() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=5000)
    await admin.start()
    try:
        info = await admin.describe_cluster()
        assert info["brokers"], info
    finally:
        await admin.close()

asyncio.run(main())
EOF
      return $?
    fi
  done
  # no aiokafka around: ask the broker with Kafka's own tool
  timeout 30 "$(kafka_java)" -Xmx128m -Dlog4j.configuration="file:$KAFKA_DIR/config/log4j.properties" \
    -cp "$KAFKA_DIR/libs/*" org.apache.kafka.tools.ClusterTool cluster-id \
    --bootstrap-server "$HOST:$KAFKA_PORT" >/dev/null 2>&1
}

kafka_wait_healthy() {
  local start deadline pid; start=$(now); deadline=$(( start + KAFKA_START_TIMEOUT ))
  while (( $(now) < deadline )); do
    pid="$(read_pid "$KAFKA_PIDFILE")"
    if ! kafka_running; then
      log_tail "$KAFKA_LOG"
      die "kafka: process exited during startup (log above)"
    fi
    if port_open "$KAFKA_PORT" && kafka_metadata_ok; then
      info "kafka: healthy on $HOST:$KAFKA_PORT (pid $pid, waited $(( $(now) - start ))s)"
      return 0
    fi
    sleep 1
  done
  log_tail "$KAFKA_LOG"
  kafka_stop
  die "kafka: not healthy within ${KAFKA_START_TIMEOUT}s (log above); stopped it"
}

kafka_start() {
  if kafka_running; then info "kafka: already running"; kafka_wait_healthy; return 0; fi
  kafka_fetch
  local java rc=0; java="$(kafka_java)"
  mkdir -p "$KAFKA_DIR/logs" "$KAFKA_DIR/data"
  check_port kafka "$KAFKA_PORT" "$KAFKA_DIR/" "$KAFKA_PIDFILE" || rc=$?
  if (( rc == 10 )); then kafka_wait_healthy; return 0; fi
  check_port kafka-controller "$KAFKA_CONTROLLER_PORT" "$KAFKA_DIR/" "$KAFKA_PIDFILE" || rc=$?
  if (( rc == 10 )); then kafka_wait_healthy; return 0; fi
  kafka_write_config
  kafka_format "$java"
  [[ -f "$KAFKA_LOG" ]] && mv -f "$KAFKA_LOG" "$KAFKA_LOG.1"
  local -a opts; mapfile -t opts < <(kafka_jvm_opts)
  info "kafka: starting Kafka $KAFKA_VERSION with $("$java" -version 2>&1 | head -n1)"
  # setsid: own session, so Ctrl-C in the calling terminal/make does not reach the server
  setsid nohup "$java" "${opts[@]}" -cp "$KAFKA_DIR/libs/*" kafka.Kafka \
    "$KAFKA_DIR/config/server.properties" >"$KAFKA_LOG" 2>&1 </dev/null &
  echo $! >"$KAFKA_PIDFILE"
  sleep 1  # let the background job exec java (its command line identifies it as ours)
  kafka_wait_healthy
}

kafka_stop() {
  local pid; pid="$(read_pid "$KAFKA_PIDFILE")"
  if kafka_running; then stop_pid kafka "$pid"; else info "kafka: not running"; fi
  rm -f "$KAFKA_PIDFILE"
}

kafka_status() {
  local pid; pid="$(read_pid "$KAFKA_PIDFILE")"
  if kafka_running; then
    local health=unhealthy; port_open "$KAFKA_PORT" && kafka_metadata_ok && health=healthy
    printf '%-6s running  pid=%-8s %s:%s  %s\n' kafka "$pid" "$HOST" "$KAFKA_PORT" "$health"
  else
    printf '%-6s stopped\n' kafka; return 3
  fi
}

kafka_reset() {
  kafka_stop
  info "kafka: wiping data and logs"
  rm -rf "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
}

# ----------------------------------------------------------------------------------------------
# Elasticsearch
# ----------------------------------------------------------------------------------------------
ES_PIDFILE="$ES_DIR/run/es.pid"          # written by Elasticsearch itself (-p)
ES_LAUNCHER_PIDFILE="$ES_DIR/launcher.pid"
ES_OUT="$ES_DIR/logs/stdout.log"

es_user() { if is_root; then echo "$ES_USER"; else id -un; fi; }
es_java() { need_java 21 "${ES_JAVA_HOME:-}" "Elasticsearch $ES_VERSION" ES_JAVA_HOME; }
es_zip() { echo "$M2_REPO/org/elasticsearch/distribution/integ-test-zip/elasticsearch/$ES_VERSION/elasticsearch-$ES_VERSION.zip"; }

es_fetch() {
  local dist="$ES_DIR/dist" zip; zip="$(es_zip)"
  if [[ -x "$dist/bin/elasticsearch" && "$(cat "$dist/.version" 2>/dev/null)" == "$ES_VERSION" ]]; then
    info "es: distribution $ES_VERSION present"
    return 0
  fi
  if es_running; then die "es: running another version; stop it before fetching $ES_VERSION"; fi
  if [[ ! -f "$zip" ]]; then
    info "es: resolving Elasticsearch $ES_VERSION (integ-test-zip) with Maven (cached in ~/.m2)"
    mkdir -p "$ES_DIR"
    run_mvn "$ES_DIR/mvn.log" dependency:get \
      "-Dartifact=org.elasticsearch.distribution.integ-test-zip:elasticsearch:$ES_VERSION:zip" -Dtransitive=false
    [[ -f "$zip" ]] || die "es: Maven finished but $zip is missing (set M2_REPO if your local repository is elsewhere)"
  fi
  info "es: extracting $(basename "$zip")"
  rm -rf "$ES_DIR/extract.tmp" "$dist"
  mkdir -p "$ES_DIR/extract.tmp"
  if command -v unzip >/dev/null 2>&1; then
    unzip -q "$zip" -d "$ES_DIR/extract.tmp"
  else  # python fallback that keeps the file modes
    python3 - "$zip" "$ES_DIR/extract.tmp" <<'EOF'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for i in z.infolist():
        p = z.extract(i, sys.argv[2])
        mode = i.external_attr >> 16
        if mode:
            os.chmod(p, mode & 0o7777)
EOF
  fi
  mv "$ES_DIR/extract.tmp/elasticsearch-$ES_VERSION" "$dist"
  rm -rf "$ES_DIR/extract.tmp"
  echo "$ES_VERSION" >"$dist/.version"
}

es_server_pid() { read_pid "$ES_PIDFILE"; }
es_server_running() { own_pid "$(es_server_pid)" "$ES_DIR/"; }
es_group_running() { own_group "$(read_pid "$ES_LAUNCHER_PIDFILE")" "$ES_DIR/"; }
es_running() { es_server_running || es_group_running; }

es_write_config() {
  local cfg="$ES_DIR/config"
  if [[ ! -f "$cfg/jvm.options" ]]; then
    mkdir -p "$cfg"
    cp -r "$ES_DIR/dist/config/." "$cfg/"
  fi
  mkdir -p "$cfg/jvm.options.d"
  cat >"$cfg/elasticsearch.yml" <<EOF
# Generated by deploy/local/servers.sh on every start — edit the script, not this file.
cluster.name: local-dev
node.name: local-node
path.data: $ES_DIR/data
path.logs: $ES_DIR/logs
network.host: $HOST
http.port: $ES_PORT
transport.port: $ES_TRANSPORT_PORT
discovery.type: single-node
xpack.security.enabled: false
cluster.routing.allocation.disk.threshold_enabled: false
action.destructive_requires_name: false
EOF
  printf -- '-Xms%s\n-Xmx%s\n' "$ES_HEAP" "$ES_HEAP" >"$cfg/jvm.options.d/heap.options"
}

es_health_ok() {
  curl -fsS --max-time 10 "http://$HOST:$ES_PORT/_cluster/health?wait_for_status=yellow&timeout=5s" 2>/dev/null \
    | grep -q '"timed_out":false'
}

es_wait_healthy() {
  local start deadline; start=$(now); deadline=$(( start + ES_START_TIMEOUT ))
  while (( $(now) < deadline )); do
    if ! es_running; then
      log_tail "$ES_OUT"; log_tail "$ES_DIR/logs/local-dev.log"
      die "es: process exited during startup (logs above)"
    fi
    if port_open "$ES_PORT" && es_health_ok; then
      info "es: healthy on http://$HOST:$ES_PORT (pid $(es_server_pid), waited $(( $(now) - start ))s)"
      return 0
    fi
    sleep 2
  done
  log_tail "$ES_OUT"; log_tail "$ES_DIR/logs/local-dev.log"
  es_stop
  die "es: not healthy within ${ES_START_TIMEOUT}s (logs above); stopped it"
}

es_start() {
  need_cmd curl "install curl (Debian: apt-get install curl)"
  if es_running; then info "es: already running"; es_wait_healthy; return 0; fi
  es_fetch
  local java rc=0 user; java="$(es_java)"
  mkdir -p "$ES_DIR/run"
  check_port es "$ES_PORT" "$ES_DIR/" "$ES_PIDFILE" || rc=$?
  if (( rc == 10 )); then es_wait_healthy; return 0; fi
  check_port es-transport "$ES_TRANSPORT_PORT" "$ES_DIR/" "$ES_PIDFILE" || rc=$?
  if (( rc == 10 )); then es_wait_healthy; return 0; fi
  if is_root; then ensure_system_user "$ES_USER"; fi
  user="$(es_user)"
  es_write_config
  mkdir -p "$ES_DIR/data" "$ES_DIR/logs" "$ES_DIR/tmp" "$ES_DIR/run"
  if is_root; then chown -R "$ES_USER:" "$ES_DIR/data" "$ES_DIR/logs" "$ES_DIR/tmp" "$ES_DIR/run" "$ES_DIR/config"; fi
  check_access "$user" "$ES_DIR/data"
  as_user "$user" test -x "$ES_DIR/dist/bin/elasticsearch" || die "es: user $user cannot run $ES_DIR/dist/bin/elasticsearch"
  rm -f "$ES_PIDFILE"
  [[ -f "$ES_OUT" ]] && mv -f "$ES_OUT" "$ES_OUT.1"
  local java_home; java_home="$(dirname "$(dirname "$java")")"
  info "es: starting Elasticsearch $ES_VERSION as $user with Java $(java_major "$java") ($java_home)"
  # setsid: own session, so Ctrl-C in the calling terminal/make does not reach the server
  setsid nohup bash -c 'if [[ $EUID -eq 0 ]]; then exec runuser -u "$0" -- "$@"; else exec "$@"; fi' "$user" \
    env "ES_JAVA_HOME=$java_home" "ES_PATH_CONF=$ES_DIR/config" "ES_TMPDIR=$ES_DIR/tmp" \
    "$ES_DIR/dist/bin/elasticsearch" -p "$ES_PIDFILE" >"$ES_OUT" 2>&1 </dev/null &
  echo $! >"$ES_LAUNCHER_PIDFILE"
  sleep 1  # let the background job exec the launcher (its command line identifies it as ours)
  es_wait_healthy
}

es_stop() {
  # The launcher was started with setsid: it leads a process group holding the Elasticsearch
  # CLI and server, so the group catches a server whose pid file is not written yet.
  local pid lpid; pid="$(es_server_pid)"; lpid="$(read_pid "$ES_LAUNCHER_PIDFILE")"
  if ! es_running; then info "es: not running"; rm -f "$ES_PIDFILE" "$ES_LAUNCHER_PIDFILE"; return 0; fi
  if es_server_running; then stop_pid es "$pid"; fi
  local _; for _ in $(seq 1 20); do es_group_running || break; sleep 0.5; done  # exits by itself
  if es_group_running; then
    info "es: stopping process group $lpid"
    kill -TERM -- "-$lpid" 2>/dev/null || true
    for _ in $(seq 1 $(( STOP_TIMEOUT * 2 ))); do es_group_running || break; sleep 0.5; done
    if es_group_running; then kill -KILL -- "-$lpid" 2>/dev/null || true; sleep 1; fi
  fi
  rm -f "$ES_PIDFILE" "$ES_LAUNCHER_PIDFILE"
}

es_status() {
  if es_running; then
    local health=unhealthy; es_health_ok && health=healthy
    printf '%-6s running  pid=%-8s %s:%s  %s\n' es "$(es_server_pid)" "$HOST" "$ES_PORT" "$health"
  else
    printf '%-6s stopped\n' es; return 3
  fi
}

es_reset() {
  es_stop
  info "es: wiping data and logs"
  rm -rf "$ES_DIR/data" "$ES_DIR/logs" "$ES_DIR/tmp" "$ES_DIR/config"
}

# ----------------------------------------------------------------------------------------------
# PostgreSQL
# ----------------------------------------------------------------------------------------------
PG_DATA="$PG_DIR/data"
PG_LOG="$PG_DIR/logs/postgresql.log"

pg_bindir() {
  if [[ -n "${PG_BIN:-}" ]]; then echo "$PG_BIN"; return 0; fi
  local d best=""
  for d in /usr/lib/postgresql/*/bin; do [[ -x "$d/initdb" ]] && best="$d"; done
  if [[ -z "$best" ]]; then
    if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; then best="$(pg_config --bindir)"
    elif command -v initdb >/dev/null 2>&1; then best="$(dirname "$(command -v initdb)")"
    fi
  fi
  [[ -n "$best" ]] || die "pg: PostgreSQL server binaries (initdb, pg_ctl) not found. Install them (Debian: apt-get install postgresql) or set PG_BIN."
  echo "$best"
}

pg_fetch() { info "pg: using PostgreSQL binaries in $(pg_bindir) (nothing to download)"; }

pg_pid() { [[ -f "$PG_DATA/postmaster.pid" ]] && head -n1 "$PG_DATA/postmaster.pid" | tr -dc '0-9' || true; }
pg_running() { own_pid "$(pg_pid)" "$PG_DATA"; }
pg_user() { if is_root; then echo "$PG_USER"; else id -un; fi; }

pg_ready() {
  local isready; isready="$(pg_bindir)/pg_isready"
  [[ -x "$isready" ]] || isready=pg_isready
  "$isready" -q -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -t 3
}

pg_wait_healthy() {
  local start deadline; start=$(now); deadline=$(( start + PG_START_TIMEOUT ))
  while (( $(now) < deadline )); do
    if pg_ready; then info "pg: healthy on $HOST:$PG_PORT (pid $(pg_pid), waited $(( $(now) - start ))s)"; return 0; fi
    if ! pg_running; then log_tail "$PG_LOG"; die "pg: server is not running (log above)"; fi
    sleep 1
  done
  log_tail "$PG_LOG"
  pg_stop
  die "pg: not ready within ${PG_START_TIMEOUT}s (log above); stopped it"
}

pg_start() {
  local bin user rc=0; bin="$(pg_bindir)"
  if pg_running; then info "pg: already running"; pg_wait_healthy; return 0; fi
  check_port pg "$PG_PORT" "$PG_DATA" "$PG_DIR/adopted.pid" || rc=$?
  if (( rc == 10 )); then pg_wait_healthy; return 0; fi
  if is_root; then id -u "$PG_USER" >/dev/null 2>&1 || ensure_system_user "$PG_USER"; fi
  user="$(pg_user)"
  mkdir -p "$PG_DIR/logs"
  if is_root; then chown "$user:" "$PG_DIR/logs"; fi
  check_access "$user" "$PG_DIR/logs"
  if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
    info "pg: initdb (C collation, UTF8, trust auth) in $PG_DATA"
    rm -rf "$PG_DATA"; mkdir -p "$PG_DATA"; chmod 700 "$PG_DATA"
    if is_root; then chown "$user:" "$PG_DATA"; fi
    if ! as_user "$user" "$bin/initdb" -D "$PG_DATA" --locale=C --encoding=UTF8 --auth=trust \
        --username="$PG_USER" >"$PG_DIR/logs/initdb.log" 2>&1; then
      log_tail "$PG_DIR/logs/initdb.log"; die "pg: initdb failed"
    fi
    cat >>"$PG_DATA/postgresql.conf" <<'EOF'

# ---- deploy/local/servers.sh: throwaway dev/test server ----
# listen address and port are passed on the command line (PG_PORT)
unix_socket_directories = ''
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
EOF
  fi
  [[ -f "$PG_LOG" ]] && mv -f "$PG_LOG" "$PG_LOG.1"
  info "pg: starting PostgreSQL ($("$bin/postgres" --version)) as $user on $HOST:$PG_PORT"
  # logical replication (tests/sync) needs these at start; on the command line, so an
  # existing data directory gets them too
  local repl="-c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20"
  if ! setsid -w bash -c 'if [[ $EUID -eq 0 ]]; then exec runuser -u "$0" -- "$@"; else exec "$@"; fi' "$user" \
      "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -o "-c listen_addresses=$HOST -p $PG_PORT $repl" \
      -w -t "$PG_START_TIMEOUT" start >"$PG_DIR/logs/pg_ctl.log" 2>&1 </dev/null; then
    cat "$PG_DIR/logs/pg_ctl.log" >&2; log_tail "$PG_LOG"
    die "pg: pg_ctl start failed (output above)"
  fi
  pg_wait_healthy
}

pg_stop() {
  if ! pg_running; then info "pg: not running"; rm -f "$PG_DIR/adopted.pid"; return 0; fi
  local bin; bin="$(pg_bindir)"
  info "pg: stopping pid $(pg_pid)"
  as_user "$(stat -c %U "$PG_DATA")" "$bin/pg_ctl" -D "$PG_DATA" -m fast -w -t "$STOP_TIMEOUT" stop >/dev/null 2>&1 || true
  if pg_running; then stop_pid pg "$(pg_pid)" 10; fi
  rm -f "$PG_DIR/adopted.pid"
}

pg_status() {
  if pg_running; then
    local health=unhealthy; pg_ready && health=healthy
    printf '%-6s running  pid=%-8s %s:%s  %s\n' pg "$(pg_pid)" "$HOST" "$PG_PORT" "$health"
  else
    printf '%-6s stopped\n' pg; return 3
  fi
}

pg_reset() {
  pg_stop
  info "pg: wiping data and logs"
  rm -rf "$PG_DATA" "$PG_DIR/logs"
}

# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

main() {
  local cmd="${1:-}" target="${2:-all}" t rc=0
  local -a targets
  case "$target" in
    all) targets=(kafka es pg) ;;
    kafka|es|pg) targets=("$target") ;;
    *) usage ;;
  esac
  case "$cmd" in
    fetch|start|stop|reset)
      mkdir -p "$LOCAL_DIR"
      for t in "${targets[@]}"; do
        local t0; t0=$(now)
        "${t}_${cmd}"
        if [[ "$cmd" == start ]]; then info "$t: start took $(( $(now) - t0 ))s"; fi
      done
      ;;
    status)
      for t in "${targets[@]}"; do "${t}_status" || rc=3; done
      return "$rc"
      ;;
    *) usage ;;
  esac
}

main "$@"
