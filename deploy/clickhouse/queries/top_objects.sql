-- Shared objects that cost most across the fleet: PSS summed over hosts, as of each host's latest
-- keyframe (memscope.latest_state, schema.sql), grouped by kind and label (a library, a /dev/shm
-- file, a memfd name). SysV segments are `sysv` records (joined with their mappings), labelled by
-- key. `other:*` rows are the small objects each agent folded together.
WITH
objects AS
(
    SELECT
        host,
        data.object_kind.:String AS object_kind,
        ifNull(data.label.:String, data.label.text.:String) AS label,
        data.pss_bytes AS pss_bytes,
        data.mappers AS mappers
    FROM memscope.latest_state
    WHERE kind = 'object'
    UNION ALL
    SELECT
        host,
        'sysv',
        concat('key ', data.key_hex.:String),
        ifNull(data.mapped.pss_bytes.:Int64, 0),
        ifNull(data.mapped.mappers.:Int64, 0)
    FROM memscope.latest_state
    WHERE kind = 'sysv'
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
