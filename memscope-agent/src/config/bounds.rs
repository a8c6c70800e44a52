//! The documented range of every numeric setting (the README's configuration table lists them).
//! A value outside its range is a config error naming the key, its line and the range, so a typo
//! like `interval = "1ns"` (4000 emissions a second) or `max_bytes = 1` (one line per file) stops
//! the agent with exit 2 instead of running badly.

use std::time::Duration;

use super::{Config, Interval};

/// An inclusive range of a setting.
#[derive(Clone, Copy, Debug)]
pub struct Bound<T> {
    pub min: T,
    pub max: T,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
const fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// `[agent] interval` and every collector's `interval`: 100 ms to one day.
pub const INTERVAL: Bound<Duration> = Bound {
    min: millis(100),
    max: secs(86_400),
};
/// `max_staleness`: one second to a week.
pub const MAX_STALENESS: Bound<Duration> = Bound {
    min: secs(1),
    max: secs(7 * 86_400),
};
/// `budget` and `max_walk_time`: 10 ms to one hour.
pub const BUDGET: Bound<Duration> = Bound {
    min: millis(10),
    max: secs(3_600),
};
/// `min_change`, `min_object_pss` and cgroup `min_usage`: 0 to 1 TiB.
pub const THRESHOLD: Bound<u64> = Bound {
    min: 0,
    max: 1 << 40,
};
/// `[output] max_bytes`: 64 KiB (an emission's larger lines fit) to 1 TiB.
pub const MAX_BYTES: Bound<u64> = Bound {
    min: 64 << 10,
    max: 1 << 40,
};
/// `[output] keep`: 1 to 1000 rotated files.
pub const KEEP: Bound<u32> = Bound { min: 1, max: 1000 };
/// `[agent] max_mount_namespaces`: 0 (only the agent's own) to 65536.
pub const MOUNT_NAMESPACES: Bound<u32> = Bound {
    min: 0,
    max: 65_536,
};
/// `[output] keyframe_interval`: one second to one day.
pub const KEYFRAME_INTERVAL: Bound<Duration> = Bound {
    min: secs(1),
    max: secs(86_400),
};
/// `[output.min_change] <kind>.percent`: 0 to 100.
pub const PERCENT: Bound<f64> = Bound {
    min: 0.0,
    max: 100.0,
};
/// List lengths: `top_consumers`, `top_files`, `top_dirs`, `max_holders`, cgroup `max_records`:
/// 1 to 10000.
pub const TOP: Bound<u32> = Bound {
    min: 1,
    max: 10_000,
};
/// `[collectors.cgroup] max_depth`: 1 to 1000 levels.
pub const CGROUP_DEPTH: Bound<u32> = Bound { min: 1, max: 1000 };
/// `[collectors.cgroup] max_cgroups`: 1 to a million.
pub const MAX_CGROUPS: Bound<u32> = Bound {
    min: 1,
    max: 1_000_000,
};
/// `[collectors.tmpfs] max_entries`: 1 to 100 million.
pub const MAX_ENTRIES: Bound<u32> = Bound {
    min: 1,
    max: 100_000_000,
};

fn check<T: PartialOrd + Copy>(
    key: &'static str,
    value: T,
    bound: Bound<T>,
    show: impl Fn(T) -> String,
) -> Result<(), (&'static str, String)> {
    if value < bound.min || value > bound.max {
        return Err((
            key,
            format!(
                "{} is out of range: must be from {} to {}",
                show(value),
                show(bound.min),
                show(bound.max)
            ),
        ));
    }
    Ok(())
}

/// A duration setting within its range; `key` as the section names it.
pub fn duration(
    key: &'static str,
    v: Interval,
    b: Bound<Duration>,
) -> Result<(), (&'static str, String)> {
    check(key, v.get(), b, |d| {
        format!("\"{}\"", humantime::format_duration(d))
    })
}

/// A byte size or a count within its range, shown as a plain number.
pub fn number<T: PartialOrd + Copy + std::fmt::Display>(
    key: &'static str,
    v: T,
    b: Bound<T>,
) -> Result<(), (&'static str, String)> {
    check(key, v, b, |n| n.to_string())
}

/// `[agent]` and `[output]`. Each collector section checks its own keys (its `section!`
/// validation), and every section's `interval` is checked against [`INTERVAL`] for all.
pub fn check_agent_and_output(c: &Config) -> Result<(), (&'static str, String)> {
    duration("agent.interval", c.agent.interval, INTERVAL)?;
    number(
        "agent.max_mount_namespaces",
        c.agent.max_mount_namespaces,
        MOUNT_NAMESPACES,
    )?;
    let o = &c.output;
    number("output.max_bytes", o.max_bytes.0, MAX_BYTES)?;
    number("output.keep", o.keep.0, KEEP)?;
    duration(
        "output.keyframe_interval",
        o.keyframe_interval,
        KEYFRAME_INTERVAL,
    )?;
    for (bytes_key, percent_key, m) in o.min_change.all() {
        number(bytes_key, m.bytes.0, THRESHOLD)?;
        if m.percent.is_nan() {
            return Err((percent_key, "nan is not a percentage".to_string()));
        }
        number(percent_key, m.percent, PERCENT)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn rejected(src: &str, key: &str, line: usize) -> String {
        match Config::parse(src, "t.toml") {
            Ok(c) => panic!("{src:?} must be rejected, got {c:?}"),
            Err(e) => {
                assert_eq!(e.key.as_deref(), Some(key), "{e}");
                assert_eq!(e.line, Some(line), "{e}");
                e.message
            }
        }
    }

    #[test]
    fn values_out_of_range_name_key_line_and_range() {
        let m = rejected("[agent]\ninterval = \"1ns\"\n", "agent.interval", 2);
        assert!(
            m.contains("out of range") && m.contains("100ms") && m.contains("1day"),
            "{m}"
        );
        let m = rejected("[output]\nmax_bytes = 1\n", "output.max_bytes", 2);
        assert!(m.contains("65536"), "{m}");
        for (src, key, line) in [
            ("[agent]\ninterval = \"100y\"\n", "agent.interval", 2),
            (
                "[collectors.tmpfs]\n\ninterval = \"10ms\"\n",
                "collectors.tmpfs.interval",
                3,
            ),
            (
                "[collectors.processes]\nmax_staleness = \"500ms\"\n",
                "collectors.processes.max_staleness",
                2,
            ),
            (
                "[collectors.smaps]\nbudget = \"2d\"\n",
                "collectors.smaps.budget",
                2,
            ),
            ("[output]\nkeep = 5000\n", "output.keep", 2),
            (
                "[output]\nkeyframe_interval = \"2d\"\n",
                "output.keyframe_interval",
                2,
            ),
            (
                "[output.min_change]\nprocess = { percent = 101 }\n",
                "output.min_change.process.percent",
                2,
            ),
            (
                "[output.min_change]\n\nobject = { bytes = \"2TiB\" }\n",
                "output.min_change.object.bytes",
                3,
            ),
            (
                "[collectors.cgroup]\nmax_cgroups = 2000000\n",
                "collectors.cgroup.max_cgroups",
                2,
            ),
            (
                "[collectors.smaps]\ntop_consumers = 100000\n",
                "collectors.smaps.top_consumers",
                2,
            ),
            (
                "[collectors.smaps]\nmin_object_pss = \"2T\"\n",
                "collectors.smaps.min_object_pss",
                2,
            ),
        ] {
            rejected(src, key, line);
        }
    }

    #[test]
    fn the_ends_of_each_range_are_accepted() {
        Config::parse(
            "[agent]\ninterval = \"100ms\"\n[collectors.tmpfs]\ninterval = \"1day\"\n\
             [output]\nmax_bytes = \"64KiB\"\nkeep = 1000\n[collectors.smaps]\nmin_change = 0\n",
            "t.toml",
        )
        .expect("in range");
    }
}
