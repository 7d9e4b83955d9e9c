#!/bin/sh
# kafka-topics.sh of Kafka's distribution (the compose file's health check calls it by this path)
exec java -Xmx128m -cp "/opt/kafka/libs/*" org.apache.kafka.tools.TopicCommand "$@"
