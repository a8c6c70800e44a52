-- memscope records in ClickHouse: one row per record. The common envelope (schema, kind, ts, host,
-- seq) is typed columns, the whole record is a JSON column (ClickHouse >= 24.8's JSON type), with
-- type hints for the fields the documented queries use. Shippers insert raw lines into
-- memscope.records_in; a materialized view fills memscope.records. See docs/pipeline.md.
-- Tested by tests/tests/fleet.rs on chDB (in-process ClickHouse 26.9).

CREATE DATABASE IF NOT EXISTS memscope;

CREATE TABLE IF NOT EXISTS memscope.records
(
    schema LowCardinality(String),
    kind LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    host LowCardinality(String),
    seq UInt64,
    data JSON(
        pid UInt32,
        keyframe Bool,
        pss_bytes Int64,
        rss_bytes Int64,
        mappers Int64,
        shmem_bytes Int64,
        unexplained_bytes Int64,
        dirty_marks_dropped Int64,
        events_lost Int64,
        lines_dropped Int64
    )
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (host, kind, ts, seq)
TTL toDateTime(ts) + INTERVAL 30 DAY;

-- The landing table: one raw JSON line per row (`INSERT … FORMAT LineAsString`). Null engine:
-- nothing is stored here, the view below parses each line once.
CREATE TABLE IF NOT EXISTS memscope.records_in
(
    line String
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS memscope.records_mv TO memscope.records AS
SELECT
    JSONExtractString(line, 'schema') AS schema,
    JSONExtractString(line, 'kind') AS kind,
    parseDateTime64BestEffort(JSONExtractString(line, 'ts'), 3, 'UTC') AS ts,
    JSONExtractString(line, 'host') AS host,
    JSONExtractUInt(line, 'seq') AS seq,
    CAST(line, 'JSON(pid UInt32, keyframe Bool, pss_bytes Int64, rss_bytes Int64, mappers Int64, shmem_bytes Int64, unexplained_bytes Int64, dirty_marks_dropped Int64, events_lost Int64, lines_dropped Int64)') AS data
FROM memscope.records_in
WHERE JSONExtractString(line, 'schema') = 'memscope.v1';

-- Each host's latest keyframe (a snapshot with keyframe = true: with emit = "full" every emission,
-- with emit = "changes", the default, one every keyframe_interval): the emission that holds the
-- host's whole state.
CREATE VIEW IF NOT EXISTS memscope.latest_keyframes AS
SELECT host, argMax(seq, ts) AS last_seq, max(ts) AS last_ts
FROM memscope.records
WHERE kind = 'snapshot' AND data.keyframe
GROUP BY host;

-- Every record of each host's latest keyframe: the host's whole state as of then. The "top"
-- queries read it (queries/top_processes.sql, queries/top_objects.sql).
CREATE VIEW IF NOT EXISTS memscope.latest_state AS
SELECT r.schema AS schema, r.kind AS kind, r.ts AS ts, r.host AS host, r.seq AS seq, r.data AS data
FROM memscope.records AS r
INNER JOIN memscope.latest_keyframes AS l ON r.host = l.host AND r.ts = l.last_ts AND r.seq = l.last_seq;
