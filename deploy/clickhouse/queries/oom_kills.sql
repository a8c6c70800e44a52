-- OOM kills per cgroup: `exit` records with "reason": "oom_kill" (sent with the victim's last
-- numbers and its cgroup once the cgroup collector of issue 8 lands; until then this returns no
-- rows, and still runs: missing JSON paths read as NULL).
SELECT
    host,
    ifNull(data.cgroup.:String, '') AS cgroup,
    count() AS oom_kills,
    max(ts) AS last_kill,
    max(data.rss_bytes) AS largest_victim_rss_bytes
FROM memscope.records
WHERE kind = 'exit' AND data.reason.:String = 'oom_kill'
GROUP BY host, cgroup
ORDER BY oom_kills DESC, host ASC, cgroup ASC
