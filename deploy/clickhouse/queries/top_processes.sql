-- Top processes by PSS across hosts, as of each host's latest keyframe (with emit = "full" every
-- emission is one; with emit = "changes" every keyframe_every-th). Names that are not UTF-8 are
-- objects {"text", "bytes"}: the lossy text is shown.
WITH latest AS
(
    SELECT host, argMax(seq, ts) AS last_seq, max(ts) AS last_ts
    FROM memscope.records
    WHERE kind = 'snapshot' AND data.keyframe
    GROUP BY host
)
SELECT
    r.host AS host,
    r.data.pid AS pid,
    ifNull(r.data.name.:String, r.data.name.text.:String) AS name,
    r.data.pss_bytes AS pss_bytes,
    r.data.rss_bytes AS rss_bytes
FROM memscope.records AS r
INNER JOIN latest AS l ON r.host = l.host AND r.ts = l.last_ts AND r.seq = l.last_seq
WHERE r.kind = 'process'
ORDER BY pss_bytes DESC, host ASC, pid ASC
LIMIT 10
