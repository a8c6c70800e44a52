#!/bin/bash
# The agent's memory after a spike of processes (issue 10 item 10), run as root in a PID
# namespace of its own: `unshare --pid --fork --mount --mount-proc tests/soak-spike.sh AGENT`.
# 6000 idle processes, the agent (polling, 2 s ticks, both tiers' max_staleness 20 s, so every
# process is read within the spike), then 5000 killed; VmRSS/VmHWM before and after.
AGENT=${1:?usage: soak-spike.sh AGENT}
CONF=$(mktemp --suffix=.toml)
cat > "$CONF" <<T
[agent]
interval = "2s"
tracker = "polling"
[collectors.processes]
max_staleness = "20s"
[collectors.smaps]
max_staleness = "20s"
T
pids=()
for i in $(seq 1 6000); do sleep 100000 & pids+=($!); done
"$AGENT" --config "$CONF" --log warn > /dev/null &
A=$!
rss() { awk '/^VmRSS/{r=$2} /^VmHWM/{h=$2} END{printf "VmRSS %.1f MiB VmHWM %.1f MiB", r/1024, h/1024}' /proc/$A/status; }
sleep 60; echo "6000 idle, 60 s: $(rss) procs=$(ls /proc | grep -c '^[0-9]')"
kill "${pids[@]:0:5000}"; wait "${pids[@]:0:5000}" 2>/dev/null
sleep 30; echo "1000 left, +30 s: $(rss) procs=$(ls /proc | grep -c '^[0-9]')"
sleep 30; echo "1000 left, +60 s: $(rss)"
kill $A; kill "${pids[@]:5000}"; wait 2>/dev/null; rm -f "$CONF"
