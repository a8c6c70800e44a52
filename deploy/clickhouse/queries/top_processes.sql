-- Top processes by PSS across hosts, as of each host's latest keyframe (memscope.latest_state,
-- schema.sql). Names that are not UTF-8 are objects {"text", "bytes"}: the lossy text is shown.
SELECT
    host,
    data.pid AS pid,
    ifNull(data.name.:String, data.name.text.:String) AS name,
    data.pss_bytes AS pss_bytes,
    data.rss_bytes AS rss_bytes
FROM memscope.latest_state
WHERE kind = 'process'
ORDER BY pss_bytes DESC, host ASC, pid ASC
LIMIT 10
