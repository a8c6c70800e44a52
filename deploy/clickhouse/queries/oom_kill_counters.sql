-- OOM kills per cgroup from the `cgroup` records (issue 8's collector): how far each cgroup's
-- kernel counter (memory.events `oom_kill`; v1: memory.oom_control) rose within the data, per host.
-- Counts kills the agent saw no exit record for, too. A counter that restarts (the cgroup was
-- removed and made again) makes the rise an undercount. Add a `ts` window to the WHERE clause.
SELECT
    host,
    ifNull(data.path.:String, data.path.text.:String) AS cgroup,
    max(data.events.oom_kill.:Int64) - min(data.events.oom_kill.:Int64) AS oom_kills,
    max(data.events.oom_kill.:Int64) AS oom_kill_counter,
    max(ts) AS last_seen
FROM memscope.records
WHERE kind = 'cgroup' AND data.events.oom_kill.:Int64 IS NOT NULL
GROUP BY host, cgroup
HAVING oom_kills > 0
ORDER BY oom_kills DESC, host ASC, cgroup ASC
