-- The Shmem ledger per host over time: per minute, the mean of meminfo's Shmem, of the part the
-- agent could not attribute (tmpfs, SysV, memfd, shared anonymous), and the unexplained share.
-- Add `AND ts >= now() - INTERVAL 1 DAY` to the WHERE clause for a window.
SELECT
    host,
    toStartOfMinute(ts) AS minute,
    count() AS emissions,
    avg(data.shmem_bytes) AS shmem_bytes,
    avg(data.unexplained_bytes) AS unexplained_bytes,
    if(sum(data.shmem_bytes) = 0, 0, sum(data.unexplained_bytes) / sum(data.shmem_bytes)) AS unexplained_share
FROM memscope.records
WHERE kind = 'shmem_ledger'
GROUP BY host, minute
ORDER BY host ASC, minute ASC
