#!/bin/bash
# Writes server.properties from the KAFKA_* environment (as apache/kafka does), formats the
# KRaft storage once (CLUSTER_ID), then runs the broker in the foreground.
set -euo pipefail
CONF_DIR="${KAFKA_CONF_DIR:-/opt/kafka/config}"
[[ -w "$CONF_DIR" ]] || CONF_DIR="$(mktemp -d)"
props="$CONF_DIR/server.properties"
{
  echo "log.dirs=${KAFKA_LOG_DIRS:-/var/lib/kafka/data}"
  while IFS='=' read -r name value; do
    case "$name" in
      KAFKA_HEAP_OPTS|KAFKA_OPTS|KAFKA_JVM_PERFORMANCE_OPTS|KAFKA_LOG4J_OPTS|KAFKA_CONF_DIR|KAFKA_LOG_DIRS|KAFKA_VERSION) continue ;;
      KAFKA_*) ;;
      *) continue ;;
    esac
    key="${name#KAFKA_}"; key="${key,,}"
    key="${key//___/-}"; key="${key//__/@}"; key="${key//_/.}"; key="${key//@/_}"
    printf '%s=%s\n' "$key" "$value"
  done < <(env)
} >"$props"
cat >"$CONF_DIR/log4j.properties" <<'LOG'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.common.config=WARN
log4j.logger.state.change.logger=WARN
LOG
cat >"$CONF_DIR/log4j2.properties" <<'LOG'
status = error
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = warn
LOG
CP="/opt/kafka/libs/*"
JAVA_OPTS=(${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} ${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20}
  -Djava.awt.headless=true "-Dlog4j.configuration=file:$CONF_DIR/log4j.properties"
  "-Dlog4j2.configurationFile=$CONF_DIR/log4j2.properties" ${KAFKA_OPTS:-})
data="${KAFKA_LOG_DIRS:-/var/lib/kafka/data}"
if [[ ! -f "$data/meta.properties" ]]; then
  cid="${CLUSTER_ID:-$(java -cp "$CP" kafka.tools.StorageTool random-uuid | tail -n1)}"
  java "${JAVA_OPTS[@]}" -cp "$CP" kafka.tools.StorageTool format -t "$cid" -c "$props" --ignore-formatted
fi
exec java "${JAVA_OPTS[@]}" -cp "$CP" kafka.Kafka "$props"
