-- Shared objects that cost most across the fleet: PSS summed over hosts, as of each host's latest
-- keyframe, grouped by kind and label (a library, a /dev/shm file, a memfd name). SysV segments
-- are `sysv` records (joined with their mappings), labelled by key. `other:*` rows are the small
-- objects each agent folded together.
WITH
objects AS
(
    SELECT
        r.host AS host,
        r.data.object_kind.:String AS object_kind,
        ifNull(r.data.label.:String, r.data.label.text.:String) AS label,
        r.data.pss_bytes AS pss_bytes,
        r.data.mappers AS mappers
    FROM memscope.records AS r
    INNER JOIN memscope.latest_keyframes AS l ON r.host = l.host AND r.ts = l.last_ts AND r.seq = l.last_seq
    WHERE r.kind = 'object'
    UNION ALL
    SELECT
        r.host,
        'sysv',
        concat('key ', r.data.key_hex.:String),
        ifNull(r.data.mapped.pss_bytes.:Int64, 0),
        ifNull(r.data.mapped.mappers.:Int64, 0)
    FROM memscope.records AS r
    INNER JOIN memscope.latest_keyframes AS l ON r.host = l.host AND r.ts = l.last_ts AND r.seq = l.last_seq
    WHERE r.kind = 'sysv'
)
SELECT
    object_kind,
    label,
    sum(pss_bytes) AS pss_bytes,
    uniqExact(host) AS hosts,
    sum(mappers) AS mappers
FROM objects
GROUP BY object_kind, label
ORDER BY pss_bytes DESC, object_kind ASC, label ASC
LIMIT 10
