#!/usr/bin/env bash
# m365-devo: creates the pipeline's topics on the compose Kafka (the `kafka-init` one-shot
# service). The stages also create missing topics themselves (admin client); doing it here
# first gives the same names, partitions and cleanup policies, and lets the three services
# start without racing each other to create them.
#
# Environment: KAFKA_BOOTSTRAP (kafka:9092), TOPIC_PREFIX (m365), PARTITIONS (6),
# REPLICATION_FACTOR (1). Keep them equal to `kafka.*` in deploy/compose/*.yaml.
set -euo pipefail

bootstrap="${KAFKA_BOOTSTRAP:-kafka:9092}"
prefix="${TOPIC_PREFIX:-m365}"
partitions="${PARTITIONS:-6}"
replication="${REPLICATION_FACTOR:-1}"
topics_cmd=/opt/kafka/bin/kafka-topics.sh
# 8 days: a URI (and its retry) outlives the 7 days its blob can be downloaded.
retention_ms=$((8 * 24 * 3600 * 1000))

create() {
  local name="$1" count="$2"
  shift 2
  "$topics_cmd" --bootstrap-server "$bootstrap" --create --if-not-exists \
    --topic "$name" --partitions "$count" --replication-factor "$replication" "$@"
}

for suffix in uris uris.retry uris.dead events health; do
  create "$prefix.$suffix" "$partitions" \
    --config cleanup.policy=delete --config "retention.ms=$retention_ms"
done
# Cursors, ledgers and dedup snapshots: the latest value per key is the state.
create "$prefix.state" "$partitions" --config cleanup.policy=compact
# Producer coordination: nothing is written; its partitions are the stream slots that the
# group `<prefix>-producer` divides among producer instances (12, as the producer creates it).
create "$prefix.streams" 12 --config cleanup.policy=delete --config "retention.ms=$retention_ms"
# Written only by the transaction probe, read by nobody.
create "$prefix.txn-probe" 1 --config cleanup.policy=delete --config "retention.ms=$retention_ms"

"$topics_cmd" --bootstrap-server "$bootstrap" --list | grep -E "^${prefix//./\\.}\\." || true
echo "m365-devo topics ready on $bootstrap (prefix $prefix)."
