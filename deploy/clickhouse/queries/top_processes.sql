-- Top processes by PSS across hosts, as of each host's latest keyframe (memscope.latest_keyframes,
-- schema.sql). Names that are not UTF-8 are objects {"text", "bytes"}: the lossy text is shown.
SELECT
    r.host AS host,
    r.data.pid AS pid,
    ifNull(r.data.name.:String, r.data.name.text.:String) AS name,
    r.data.pss_bytes AS pss_bytes,
    r.data.rss_bytes AS rss_bytes
FROM memscope.records AS r
INNER JOIN memscope.latest_keyframes AS l ON r.host = l.host AND r.ts = l.last_ts AND r.seq = l.last_seq
WHERE r.kind = 'process'
ORDER BY pss_bytes DESC, host ASC, pid ASC
LIMIT 10
