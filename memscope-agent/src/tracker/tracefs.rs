//! tracefs: where it is, and the field offsets of the tracepoints the programs read.
//!
//! Field offsets differ between kernels (`sched_process_fork`'s `child_pid` moved from 44 to 20
//! when the comm fields became `__data_loc`; `sched_process_exit` gained `group_dead`), so they
//! are read from each event's `format` file at load time and handed to the programs through the
//! config map.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

use memscope_common::{CONFIG_READY, Config, OFFSET_ABSENT};

use super::TrackerError;

/// Where tracefs may be mounted, in the order aya looks.
pub const TRACEFS_CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// One `field:` line of a `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// Parses the `field:` lines of a tracefs `format` file (pure; see the tests for the input shape).
/// Lines that are not fields, or that lack an offset or size, are skipped.
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in line.split(';') {
                let part = part.trim();
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d);
                } else if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.trim().parse().ok();
                } else if let Some(s) = part.strip_prefix("size:") {
                    size = s.trim().parse().ok();
                }
            }
            // "unsigned long len", "char comm[16]", "__data_loc char[] filename": the name is the
            // last word, without an array suffix.
            let name = decl?.split_whitespace().last()?;
            let name = name.split('[').next()?;
            Some(Field {
                name: name.to_owned(),
                offset: offset?,
                size: size?,
            })
        })
        .collect()
}

/// The field named `name` of a parsed format, if its size is one of `sizes`.
fn field(
    fields: &[Field],
    path: &Path,
    name: &str,
    sizes: &[u32],
) -> Result<Option<u32>, TrackerError> {
    match fields.iter().find(|f| f.name == name) {
        None => Ok(None),
        Some(f) if sizes.contains(&f.size) => Ok(Some(f.offset)),
        Some(f) => Err(TrackerError::FormatField {
            path: path.to_owned(),
            problem: format!(
                "field {name} has size {}, expected one of {sizes:?}",
                f.size
            ),
        }),
    }
}

fn required(fields: &[Field], path: &Path, name: &str, sizes: &[u32]) -> Result<u32, TrackerError> {
    field(fields, path, name, sizes)?.ok_or_else(|| TrackerError::FormatField {
        path: path.to_owned(),
        problem: format!("no field {name}"),
    })
}

/// Format texts of the tracepoints whose fields the programs read.
#[derive(Clone, Debug)]
pub struct Formats {
    pub exit: (PathBuf, String),
    /// `oom:mark_victim`, when the kernel has it (`None`: no OOM events, the kill is inferred).
    pub oom: Option<(PathBuf, String)>,
}

impl Formats {
    /// Reads the formats under a tracefs mount.
    pub fn read(tracefs: &Path) -> Result<Self, TrackerError> {
        let read = |event: &str| {
            let path = tracefs.join("events").join(event).join("format");
            std::fs::read_to_string(&path)
                .map(|text| (path.clone(), text))
                .map_err(|source| TrackerError::Format { path, source })
        };
        Ok(Self {
            exit: read("sched/sched_process_exit")?,
            oom: match read("oom/mark_victim") {
                Ok(f) => Some(f),
                Err(TrackerError::Format { source, .. })
                    if source.kind() == io::ErrorKind::NotFound =>
                {
                    None
                }
                Err(e) => return Err(e),
            },
        })
    }

    /// The programs' config: the tracepoint offsets plus the agent's tgid, marked ready. The
    /// kernel struct offsets (from BTF) and the anonymous threshold are left for the caller.
    pub fn config(&self, agent_tgid: u32) -> Result<Config, TrackerError> {
        let (exit_path, exit) = &self.exit;
        // `group_dead` is recent (6.x); without it the programs fall back to pid == tgid.
        let exit_group_dead_off =
            field(&parse_format(exit), exit_path, "group_dead", &[1])?.unwrap_or(OFFSET_ABSENT);
        let oom_pid_off = match &self.oom {
            Some((path, text)) => required(&parse_format(text), path, "pid", &[4])?,
            None => OFFSET_ABSENT,
        };
        Ok(Config {
            agent_tgid,
            flags: CONFIG_READY,
            exit_group_dead_off,
            oom_pid_off,
            ..Config::default()
        })
    }
}

/// A tracefs mount with events, or `None`.
pub fn find() -> Option<PathBuf> {
    find_in(&TRACEFS_CANDIDATES)
}

fn find_in(candidates: &[&str]) -> Option<PathBuf> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Finds tracefs; when it is not mounted anywhere and `allow_mount` (the config's
/// `agent.mount_tracefs`), mounts it at `/sys/kernel/tracing` (root only; tracepoint attach needs
/// it, and minimal hosts often leave it unmounted).
pub fn find_or_mount(allow_mount: bool) -> Result<PathBuf, TrackerError> {
    find_or_mount_in(&TRACEFS_CANDIDATES, allow_mount)
}

fn find_or_mount_in(candidates: &[&str], allow_mount: bool) -> Result<PathBuf, TrackerError> {
    if let Some(path) = find_in(candidates) {
        return Ok(path);
    }
    // tracefs is mode 0700: without CAP_DAC_READ_SEARCH a mounted tracefs looks empty.
    for candidate in candidates {
        if let Err(source) = std::fs::read_dir(candidate)
            && source.kind() == io::ErrorKind::PermissionDenied
        {
            return Err(TrackerError::TracefsUnreadable {
                path: candidate.into(),
                source,
            });
        }
    }
    if !allow_mount {
        return Err(TrackerError::TracefsNotMounted);
    }
    let target = Path::new(candidates[0]);
    mount_tracefs(target).map_err(TrackerError::NoTracefs)?;
    tracing::info!("mounted tracefs at {}", target.display());
    find_in(candidates).ok_or_else(|| {
        TrackerError::NoTracefs(io::Error::other(format!(
            "{} has no events after mounting",
            target.display()
        )))
    })
}

fn mount_tracefs(target: &Path) -> io::Result<()> {
    let to_c = |s: &str| CString::new(s).map_err(io::Error::other);
    let source = to_c("tracefs")?;
    let fstype = to_c("tracefs")?;
    let target_c = to_c(
        target
            .to_str()
            .ok_or_else(|| io::Error::other("non-UTF-8 path"))?,
    )?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; data is null.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracefs_is_not_mounted_when_the_config_says_no() {
        let dir = tempfile::tempdir().expect("tempdir");
        let unmounted = dir.path().join("tracing");
        std::fs::create_dir(&unmounted).expect("mkdir");
        let candidates = [unmounted.to_str().expect("utf-8 tempdir")];
        let err = find_or_mount_in(&candidates, false).expect_err("not mounted, may not mount");
        assert!(matches!(err, TrackerError::TracefsNotMounted), "{err}");
        assert!(err.to_string().contains("agent.mount_tracefs"), "{err}");
        // A mounted one (events present) is found whatever the setting.
        std::fs::create_dir(unmounted.join("events")).expect("mkdir");
        assert_eq!(
            find_or_mount_in(&candidates, false).expect("found"),
            unmounted
        );
    }

    const FORK_6_18: &str = "name: sched_process_fork
ID: 366
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;

print fmt: \"comm=%s pid=%d child_comm=%s child_pid=%d\", __get_str(parent_comm), REC->parent_pid
";

    const FORK_5_10: &str = "name: sched_process_fork
ID: 301
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:1;
\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:1;
\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;
";

    const EXIT_6_18: &str = "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;
";

    const EXIT_5_10: &str = "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:1;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;
";

    fn formats(exit: &str) -> Formats {
        Formats {
            exit: ("exit/format".into(), exit.to_owned()),
            oom: None,
        }
    }

    /// `oom:mark_victim` on 6.18 (this VM), trimmed to the fields before `comm`'s payload.
    const MARK_VICTIM_6_18: &str =
        "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;
";

    #[test]
    fn oom_victim_offset_when_the_kernel_has_mark_victim() -> Result<(), TrackerError> {
        let mut f = formats(EXIT_6_18);
        assert_eq!(f.config(1)?.oom_pid_off, OFFSET_ABSENT, "no tracepoint");
        f.oom = Some(("oom/format".into(), MARK_VICTIM_6_18.to_owned()));
        assert_eq!(f.config(1)?.oom_pid_off, 8);
        f.oom = Some(("oom/format".into(), EXIT_5_10.replace("pid;", "tid;")));
        assert!(matches!(
            f.config(1),
            Err(TrackerError::FormatField { ref problem, .. }) if problem.contains("no field pid")
        ));
        Ok(())
    }

    #[test]
    fn parses_field_lines_and_names() {
        let fields = parse_format(FORK_6_18);
        let names: Vec<_> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "common_type",
                "common_flags",
                "common_preempt_count",
                "common_pid",
                "parent_comm",
                "parent_pid",
                "child_comm",
                "child_pid"
            ]
        );
        assert_eq!(
            fields.last(),
            Some(&Field {
                name: "child_pid".into(),
                offset: 20,
                size: 4
            })
        );
        let old = parse_format(FORK_5_10);
        assert!(old.contains(&Field {
            name: "parent_comm".into(),
            offset: 8,
            size: 16
        }));
    }

    #[test]
    fn config_on_6_18() -> Result<(), TrackerError> {
        let cfg = formats(EXIT_6_18).config(42)?;
        assert_eq!(cfg.agent_tgid, 42);
        assert_eq!(cfg.flags, CONFIG_READY);
        assert_eq!(cfg.exit_group_dead_off, 32);
        Ok(())
    }

    #[test]
    fn config_on_old_kernel_without_group_dead() -> Result<(), TrackerError> {
        let cfg = formats(EXIT_5_10).config(1)?;
        assert_eq!(cfg.exit_group_dead_off, OFFSET_ABSENT);
        Ok(())
    }

    #[test]
    fn odd_fields_are_errors() {
        let mut f = formats(EXIT_6_18);
        let odd = MARK_VICTIM_6_18.replace("pid;\toffset:8;\tsize:4", "pid;\toffset:8;\tsize:8");
        f.oom = Some(("oom/format".into(), odd));
        let err = f.config(1);
        assert!(
            matches!(err, Err(TrackerError::FormatField { ref problem, .. }) if problem.contains("size 8"))
        );
        let odd = EXIT_6_18.replace("size:1;", "size:4;");
        let err = formats(&odd).config(1);
        assert!(
            matches!(err, Err(TrackerError::FormatField { ref problem, .. }) if problem.contains("group_dead"))
        );
    }

    #[test]
    fn garbage_lines_are_skipped() {
        assert!(
            parse_format("format:\n\tfield:int x;\toffset:zz;\tsize:4;\nprint fmt: \"\"")
                .is_empty()
        );
    }
}
