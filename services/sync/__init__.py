"""`sync-prefect`: keep the event topics in step with a live Prefect server.

A self-hosted Prefect on PostgreSQL: change data capture from its database (logical
replication, the built-in `pgoutput` plugin): a snapshot consistent with a replication
slot, then the committed changes in commit order (docs/adr/0007-prefect-change-data-capture.md).

- `pgoutput`  PURE: the binary messages of the `pgoutput` plugin -> dataclasses
- `changes`   PURE: messages -> committed transactions -> contract events, versions
- `postgres`  adapter: the replication connection (psycopg2), slot, publication, snapshot
- `bridge`    the loop: snapshot, stream, Kafka with bounded in-flight, LSN confirmation
- `topic_keys` adapter: an entity topic's live ids, read back for a TRUNCATE
- `state`     the state file (which slot, whether its snapshot was published)
- `metrics`   Prometheus metrics of the bridge (both modes)
- `errors`    the setup errors that stop the command with a message (both modes)

Prefect's API, for a Prefect without database access (docs/adr/0009-prefect-api-sync.md):

- `api_plan`     PURE: Prefect events -> entities to read; snapshot -> event and version;
                 vanished ids; the read queue
- `prefect_api`  adapter: the REST API (paced, retried) and the `/events/out` websocket
- `api_state`    the checkpoint: what was published per entity (SQLite), event position
- `api_session`  one session's tasks: events -> reads -> Kafka, reconcile passes
- `api_bridge`   the session loop: checks, checkpoint, producer, backoff
"""
