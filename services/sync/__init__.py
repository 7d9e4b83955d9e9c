"""`sync-prefect`: keep the event topics in step with a live self-hosted Prefect server.

Change data capture from Prefect's PostgreSQL database (logical replication, the
built-in `pgoutput` plugin): a snapshot consistent with a replication slot, then the
committed changes in commit order (docs/adr/0007-prefect-change-data-capture.md).

- `pgoutput`  PURE: the binary messages of the `pgoutput` plugin -> dataclasses
- `changes`   PURE: messages -> committed transactions -> contract events, versions
- `postgres`  adapter: the replication connection (psycopg2), slot, publication, snapshot
- `bridge`    the loop: snapshot, stream, Kafka with bounded in-flight, LSN confirmation
- `state`     the state file (which slot, whether its snapshot was published)
- `metrics`   Prometheus metrics of the bridge
"""
