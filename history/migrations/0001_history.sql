-- ferry's history: every checkpoint, replication, failover and StateApi
-- call. Durations are bigint milliseconds, sizes bigint bytes. Each row's
-- record_key is unique, so a write retried after a lost answer is stored
-- once.

CREATE TABLE checkpoints (
    id              bigserial PRIMARY KEY,
    record_key      text        NOT NULL UNIQUE,
    taken_at        timestamptz NOT NULL,
    policy          text        NOT NULL,
    namespace       text        NOT NULL,
    pod             text        NOT NULL,
    pod_uid         text        NOT NULL,
    container       text        NOT NULL,
    node            text        NOT NULL,
    strategy        text        NOT NULL,
    archive         text,
    size_bytes      bigint,
    total_ms        bigint      NOT NULL,
    -- CRIU's own statistics (stats-dump), when the archive has them.
    criu_freezing_ms bigint,
    criu_frozen_ms   bigint,
    criu_memdump_ms  bigint,
    criu_memwrite_ms bigint,
    criu_pages_scanned bigint,
    criu_pages_written bigint,
    error           text
);
CREATE INDEX checkpoints_policy_taken_at ON checkpoints (namespace, policy, taken_at);

CREATE TABLE replications (
    id              bigserial PRIMARY KEY,
    record_key      text        NOT NULL UNIQUE,
    finished_at     timestamptz NOT NULL,
    policy          text        NOT NULL,
    namespace       text        NOT NULL,
    archive         text        NOT NULL,
    source_node     text        NOT NULL,
    target_node     text        NOT NULL,
    size_bytes      bigint,
    duration_ms     bigint,
    error           text
);
CREATE INDEX replications_archive ON replications (archive);

CREATE TABLE failovers (
    id              bigserial PRIMARY KEY,
    record_key      text        NOT NULL UNIQUE,
    started_at      timestamptz NOT NULL,
    policy          text        NOT NULL,
    namespace       text        NOT NULL,
    pod             text        NOT NULL,
    pod_uid         text        NOT NULL,
    strategy        text        NOT NULL,
    trigger         text        NOT NULL,
    evidence        text[]      NOT NULL,
    from_node       text        NOT NULL,
    to_node         text,
    replacement_pod text,
    -- The archive restored (the first container's); none for a cold start.
    archive         text,
    -- Each stage, in milliseconds after the failure (the pod's disruption,
    -- or the detection when there was none to see).
    detected_ms     bigint      NOT NULL,
    fenced_ms       bigint,
    restored_ms     bigint,
    downtime_ms     bigint,
    checkpoint_age_ms bigint,
    warm            boolean     NOT NULL,
    outcome         text        NOT NULL,
    message         text
);
CREATE UNIQUE INDEX failovers_pod_uid ON failovers (namespace, pod_uid);

CREATE TABLE state_api_calls (
    id              bigserial PRIMARY KEY,
    record_key      text        NOT NULL UNIQUE,
    at              timestamptz NOT NULL,
    policy          text        NOT NULL,
    namespace       text        NOT NULL,
    pod             text        NOT NULL,
    container       text        NOT NULL,
    node            text        NOT NULL,
    operation       text        NOT NULL CHECK (operation IN ('read', 'write')),
    size_bytes      bigint,
    duration_ms     bigint      NOT NULL,
    http_status     bigint,
    error           text
);
CREATE INDEX state_api_calls_policy_at ON state_api_calls (namespace, policy, at);
