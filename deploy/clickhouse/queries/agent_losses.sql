-- Hosts whose agent lost something: eBPF dirty marks dropped (processes re-read only at their
-- staleness deadline), lifecycle events lost (exits found late), or lines the sink failed to write.
-- The counters are cumulative per agent run (they restart at 0 with the agent): each column is the
-- largest count one run reported. `runs_with_losses` counts those runs (by the agent's pid);
-- first_seen / last_seen bound the agent records that reported a loss.
SELECT
    host,
    uniqExact(data.pid) AS runs_with_losses,
    max(data.dirty_marks_dropped) AS dirty_marks_dropped,
    max(data.events_lost) AS events_lost,
    max(data.lines_dropped) AS lines_dropped,
    min(ts) AS first_seen,
    max(ts) AS last_seen
FROM memscope.records
WHERE kind = 'agent' AND (data.dirty_marks_dropped > 0 OR data.events_lost > 0 OR data.lines_dropped > 0)
GROUP BY host
ORDER BY host ASC
