//! Configuration: TOML in, a typed [`Config`] out, with the same defaults as `config/memscope.toml`.
//!
//! Every table rejects unknown keys. Errors name the file, the line and the key
//! (`memscope.toml: line 3: agent.interval: …`), so a fleet operator can fix a file without guessing.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{collectors::CollectorsConfig, procfs::line_at};

pub mod bounds;
mod error;
mod units;

pub use error::ConfigError;
use error::KeyLines;
pub use units::{ByteSize, Interval, Positive, parse_byte_size};

/// The documented default configuration; [`Config::default`] equals it (a test proves it).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../../config/memscope.toml");

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    /// One section per collector: declared by the collectors themselves (see [`crate::collectors`]).
    pub collectors: CollectorsConfig,
    pub output: OutputConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// How often a snapshot is emitted (and the default interval of every collector).
    pub interval: Interval,
    /// Host name put in every record; empty means the system's host name.
    pub host: String,
    /// Root of the proc filesystem to read.
    pub proc_root: PathBuf,
    /// How layout changes are detected: `auto` (eBPF, else polling), `ebpf` (required), `polling`.
    pub tracker: TrackerMode,
    /// Mount namespaces read besides the agent's own (one `mountinfo` each, for the tmpfs
    /// collector and the smaps `tmpfs` classification); 0: only the agent's own.
    pub max_mount_namespaces: u32,
    /// Whether the agent may mount tracefs at `/sys/kernel/tracing` when it is not mounted (the
    /// eBPF tracker needs it). With `false` and no tracefs, the tracker falls back to polling.
    pub mount_tracefs: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            interval: Interval(Duration::from_secs(10)),
            host: String::new(),
            proc_root: PathBuf::from("/proc"),
            tracker: TrackerMode::Auto,
            max_mount_namespaces: 256,
            mount_tracefs: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrackerMode {
    /// Try eBPF; on any failure log one line and poll.
    #[default]
    Auto,
    /// eBPF or nothing: the agent exits if the tracker cannot attach.
    Ebpf,
    /// Never load eBPF.
    Polling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    #[default]
    Stdout,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EmitMode {
    /// Every record, every emission.
    Full,
    /// Only what changed beyond `min_change` (as `delta` records, plus `exit`/`removed` records),
    /// with a full keyframe every `keyframe_interval`.
    #[default]
    Changes,
}

impl EmitMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EmitMode::Full => "full",
            EmitMode::Changes => "changes",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    pub sink: SinkKind,
    /// File to write when `sink = "file"`.
    pub path: Option<PathBuf>,
    /// Rotate the file when it would grow past this size.
    pub max_bytes: ByteSize,
    /// Rotated files kept beside the live one (`path.1` … `path.N`).
    pub keep: Positive,
    pub emit: EmitMode,
    /// In `changes` mode, a full keyframe at least this often (rounded up to whole emissions).
    pub keyframe_interval: Interval,
    /// In `changes` mode, how far a byte figure may move before its record counts as changed.
    pub min_change: MinChangeByKind,
}

/// The hysteresis of one record kind in `changes` mode: a `_bytes` field counts as changed when it
/// moved from the value last *sent* by at least `bytes` and by at least `percent` % of that value.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinChange {
    pub bytes: ByteSize,
    pub percent: f64,
}

impl MinChange {
    const fn new(bytes: u64, percent: f64) -> MinChange {
        MinChange {
            bytes: ByteSize(bytes),
            percent,
        }
    }
}

impl Default for MinChange {
    fn default() -> Self {
        MinChange::new(0, 0.0)
    }
}

/// `[output.min_change]`: the hysteresis of each record kind (see docs/records.md).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinChangeByKind {
    pub meminfo: MinChange,
    pub process: MinChange,
    pub cgroup: MinChange,
    pub object: MinChange,
    pub sysv: MinChange,
    pub tmpfs: MinChange,
    pub memfd: MinChange,
    pub shmem_ledger: MinChange,
    pub hugetlb_ledger: MinChange,
}

impl Default for MinChangeByKind {
    fn default() -> Self {
        const MIB: u64 = 1 << 20;
        MinChangeByKind {
            meminfo: MinChange::new(4 * MIB, 1.0),
            process: MinChange::new(MIB, 1.0),
            cgroup: MinChange::new(MIB, 1.0),
            object: MinChange::new(MIB, 1.0),
            sysv: MinChange::new(MIB, 1.0),
            tmpfs: MinChange::new(MIB, 1.0),
            memfd: MinChange::new(MIB, 1.0),
            shmem_ledger: MinChange::new(MIB, 1.0),
            hugetlb_ledger: MinChange::new(MIB, 1.0),
        }
    }
}

impl MinChangeByKind {
    /// The hysteresis of `kind`; kinds without one (`snapshot`, `agent`, …) are exact.
    pub fn of(&self, kind: &str) -> MinChange {
        match kind {
            "meminfo" => self.meminfo,
            "process" => self.process,
            "cgroup" => self.cgroup,
            "object" => self.object,
            "sysv" => self.sysv,
            "tmpfs" => self.tmpfs,
            "memfd" => self.memfd,
            "shmem_ledger" => self.shmem_ledger,
            "hugetlb_ledger" => self.hugetlb_ledger,
            _ => MinChange::default(),
        }
    }

    /// Every kind with its hysteresis and the config keys of its two fields, for the range checks.
    pub fn all(&self) -> [(&'static str, &'static str, MinChange); 9] {
        macro_rules! row {
            ($kind:ident) => {
                (
                    concat!("output.min_change.", stringify!($kind), ".bytes"),
                    concat!("output.min_change.", stringify!($kind), ".percent"),
                    self.$kind,
                )
            };
        }
        [
            row!(meminfo),
            row!(process),
            row!(cgroup),
            row!(object),
            row!(sysv),
            row!(tmpfs),
            row!(memfd),
            row!(shmem_ledger),
            row!(hugetlb_ledger),
        ]
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            sink: SinkKind::Stdout,
            path: None,
            max_bytes: ByteSize(100 * 1024 * 1024),
            keep: Positive(5),
            emit: EmitMode::Changes,
            keyframe_interval: Interval(Duration::from_secs(30 * 60)),
            min_change: MinChangeByKind::default(),
        }
    }
}

impl Config {
    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(src: &str, origin: &str) -> Result<Config, ConfigError> {
        let keys = KeyLines::scan(src);
        let config: Config = toml::from_str(src).map_err(|e| {
            let line = e.span().map(|s| line_at(src.as_bytes(), s.start));
            ConfigError {
                origin: origin.to_string(),
                line,
                key: line.and_then(|l| keys.key_on_line(l)).map(str::to_string),
                message: e.message().trim().to_string(),
            }
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::at_key(origin, Some(src), &key, message))?;
        Ok(config)
    }

    /// Rules that span several keys, then each collector section's own.
    fn validate(&self) -> Result<(), (String, String)> {
        self.validate_own()
            .map_err(|(key, why)| (key.to_string(), why))?;
        self.collectors.validate()
    }

    fn validate_own(&self) -> Result<(), (&'static str, String)> {
        if self.output.sink == SinkKind::File {
            match &self.output.path {
                None => {
                    return Err((
                        "output.sink",
                        r#"sink = "file" needs output.path"#.to_string(),
                    ));
                }
                Some(p) if p.as_os_str().is_empty() => {
                    return Err(("output.path", "must not be empty".to_string()));
                }
                Some(_) => {}
            }
        }
        if self.agent.proc_root.as_os_str().is_empty() {
            return Err(("agent.proc_root", "must not be empty".to_string()));
        }
        bounds::check_agent_and_output(self)
    }

    /// The interval of a collector: its own, else the agent's.
    pub fn collector_interval(&self, own: Option<Interval>) -> Duration {
        own.unwrap_or(self.agent.interval).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> ConfigError {
        match Config::parse(src, "test.toml") {
            Ok(c) => panic!("expected an error for {src:?}, got {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn built_in_defaults_equal_the_documented_file() {
        let parsed = Config::parse(DEFAULT_CONFIG_TOML, "config/memscope.toml").expect("parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::parse("", "x").expect("parses"), Config::default());
    }

    #[test]
    fn reads_every_section() {
        let c = Config::parse(
            r#"
[agent]
interval = "2s"
host = "db-7"
proc_root = "/host/proc"
mount_tracefs = false

[collectors.meminfo]
enabled = false

[collectors.processes]
interval = "30s"

[output]
sink = "file"
path = "/var/log/memscope.jsonl"
max_bytes = "10MiB"
keep = 3
emit = "full"
keyframe_interval = "5m"

[output.min_change]
process = { bytes = "256KiB", percent = 0.5 }
meminfo = { bytes = 0 }
"#,
            "x",
        )
        .expect("parses");
        assert_eq!(c.agent.interval.get(), Duration::from_secs(2));
        assert_eq!(c.agent.host, "db-7");
        assert_eq!(c.agent.proc_root, PathBuf::from("/host/proc"));
        assert!(!c.agent.mount_tracefs);
        assert!(
            Config::default().agent.mount_tracefs,
            "mounting is allowed by default"
        );
        assert!(!c.collectors.meminfo.enabled);
        assert!(c.collectors.processes.enabled);
        assert_eq!(
            c.collector_interval(c.collectors.processes.interval),
            Duration::from_secs(30)
        );
        assert_eq!(
            c.collector_interval(c.collectors.meminfo.interval),
            Duration::from_secs(2)
        );
        assert_eq!(c.output.sink, SinkKind::File);
        assert_eq!(c.output.max_bytes, ByteSize(10 << 20));
        assert_eq!(c.output.keep, Positive(3));
        assert_eq!(c.output.emit, EmitMode::Full);
        assert_eq!(Config::default().output.emit, EmitMode::Changes);
        assert_eq!(c.output.keyframe_interval.get(), Duration::from_secs(300));
        assert_eq!(
            c.output.min_change.of("process"),
            MinChange::new(256 << 10, 0.5)
        );
        assert_eq!(c.output.min_change.of("meminfo"), MinChange::new(0, 0.0));
        assert_eq!(
            c.output.min_change.of("object"),
            MinChangeByKind::default().object,
            "kinds not named keep their defaults"
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err("[agent]\ninterval = \"5s\"\ncolour = \"blue\"\n");
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key.as_deref(), Some("agent.colour"));
        assert!(e.message.contains("unknown field `colour`"), "{e}");
        assert!(
            e.to_string()
                .starts_with("test.toml: line 3: agent.colour: "),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_inside_a_collector_names_key_and_line() {
        let e = err("[collectors.processes]\nenabled = true\nbogus = 1\n");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("collectors.processes.bogus"))
        );
        let e = err("[collectors.smaps]\n\nmin_change = -5\n");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("collectors.smaps.min_change"))
        );
    }

    #[test]
    fn unknown_collector_is_rejected() {
        let e = err("[collectors.nosuch]\nenabled = true\n");
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("nosuch"), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let e = err("[collectors.meminfo]\nenabled = \"yes\"\n");
        assert_eq!(e.line, Some(2));
        assert_eq!(e.key.as_deref(), Some("collectors.meminfo.enabled"));
        assert!(e.message.contains("invalid type"), "{e}");
    }

    #[test]
    fn negative_zero_and_unitless_intervals_are_rejected() {
        let e = err("[agent]\ninterval = \"-5s\"\n");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("agent.interval"))
        );
        assert!(e.message.contains("positive"), "{e}");
        let e = err("[agent]\ninterval = -5\n");
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("positive"), "{e}");
        let e = err("[agent]\n\ninterval = \"0s\"\n");
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("positive"), "{e}");
        let e = err("[agent]\ninterval = 10\n");
        assert!(e.message.contains("needs a unit"), "{e}");
        let e = err("[agent]\ninterval = \"soon\"\n");
        assert!(e.message.contains("invalid duration"), "{e}");
    }

    #[test]
    fn impossible_values_are_rejected() {
        let e = err("[output]\nkeep = 0\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("output.keep")));
        let e = err("[output]\nkeyframe_interval = 600\n");
        assert_eq!(e.key.as_deref(), Some("output.keyframe_interval"));
        let e = err("[output]\nmax_bytes = \"12 parsecs\"\n");
        assert!(e.message.contains("unknown unit"), "{e}");
        let e = err("[output]\nmax_bytes = 0\n");
        assert!(e.message.contains("out of range"), "{e}");
        let e = err("[output]\nemit = \"sometimes\"\n");
        assert_eq!(e.key.as_deref(), Some("output.emit"));
        let e = err("[output]\nsink = \"kafka\"\n");
        assert_eq!(e.key.as_deref(), Some("output.sink"));
    }

    #[test]
    fn file_sink_needs_a_path() {
        let e = err("[output]\nsink = \"file\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("output.sink")));
    }

    #[test]
    fn tmpfs_section() {
        let c = Config::parse(
            "[collectors.tmpfs]\nhost_root = \"/host\"\ntop_files = 5\nmax_walk_time = \"500ms\"\nscan_fds = false\n",
            "x",
        )
        .expect("parses");
        let t = &c.collectors.tmpfs;
        assert_eq!(t.host_root, PathBuf::from("/host"));
        assert_eq!(t.top_files, Positive(5));
        assert_eq!(
            t.top_dirs,
            crate::collectors::tmpfs::TmpfsConfig::default().top_dirs
        );
        assert_eq!(t.max_walk_time.get(), Duration::from_millis(500));
        assert!(!t.scan_fds && t.enabled);
        let e = err("[collectors.tmpfs]\ntop_filez = 3\n");
        assert!(e.message.contains("top_filez"), "{e}");
        let e = err("[collectors.tmpfs]\ntop_dirs = 0\n");
        assert_eq!(e.key.as_deref(), Some("collectors.tmpfs.top_dirs"));
        let e = err("[collectors.tmpfs]\n\nhost_root = \"\"\n");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("collectors.tmpfs.host_root"))
        );
    }
}
