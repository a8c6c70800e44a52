//! Pure parsers for cgroup files: `/proc/PID/cgroup` (which cgroup a process is in) and the memory
//! controller's files of cgroup v2 (`memory.current`, `memory.max`, `memory.stat`,
//! `memory.events`, `memory.pressure`, …) and v1 (`memory.usage_in_bytes`, `memory.limit_in_bytes`,
//! `memory.stat`, `memory.oom_control`, …). Bytes in, typed values out; nothing here panics.

use super::{
    ParseError,
    text::{bad_value, fields, lines, lossy, parse_u64},
};

/// What `/proc/PID/cgroup` says about one process: its cgroup v2 path (`0::/path`) and its path in
/// the v1 hierarchy that holds the `memory` controller (`4:memory:/path`), as raw bytes (a cgroup
/// name may hold any byte but `/` and `\n`; the kernel refuses `\n` in cgroup names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcCgroup {
    pub v2: Option<Vec<u8>>,
    pub v1_memory: Option<Vec<u8>>,
}

impl ProcCgroup {
    /// The path of the cgroup that charges the process's memory: the v1 `memory` line when the
    /// memory controller is on v1 (a hybrid host lists both), else the v2 line.
    pub fn memory_path(&self) -> Option<&[u8]> {
        self.v1_memory.as_deref().or(self.v2.as_deref())
    }
}

/// Parses `/proc/PID/cgroup`: lines `hierarchy-id:controller,list:/path`. The path is everything
/// after the second colon (it may hold colons). An empty file (no cgroup support) gives no paths.
pub fn parse_proc_cgroup(text: &[u8]) -> Result<ProcCgroup, ParseError> {
    let mut out = ProcCgroup::default();
    for line in lines(text) {
        if line.bytes.is_empty() {
            continue;
        }
        let mut parts = line.bytes.splitn(3, |&b| b == b':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(ParseError::new(
                line.no,
                format!(
                    "expected `id:controllers:path`, got {:?}",
                    lossy(line.bytes)
                ),
            ));
        };
        if parse_u64(id).is_none() {
            return Err(bad_value(line.no, b"hierarchy id", id));
        }
        if !path.starts_with(b"/") {
            return Err(ParseError::new(
                line.no,
                format!("cgroup path {:?} is not absolute", lossy(path)),
            ));
        }
        if id == b"0" && controllers.is_empty() {
            out.v2 = Some(path.to_vec());
        } else if controllers.split(|&b| b == b',').any(|c| c == b"memory") {
            out.v1_memory = Some(path.to_vec());
        }
    }
    Ok(out)
}

/// A single number (`memory.current`, `memory.usage_in_bytes`, `memory.failcnt`).
pub fn parse_u64_file(text: &[u8]) -> Result<u64, ParseError> {
    let t = text.trim_ascii();
    parse_u64(t).ok_or_else(|| bad_value(1, b"value", t))
}

/// v1 prints "no limit" as the page counter's maximum, `PAGE_COUNTER_MAX * PAGE_SIZE`
/// (9223372036854771712 with 4 KiB pages); anything at or above 2^62 bytes is taken as no limit.
pub const V1_UNLIMITED: u64 = 1 << 62;

/// A limit: `max` (v2) or a number at or above [`V1_UNLIMITED`] (v1) is `None`, no limit.
pub fn parse_limit(text: &[u8]) -> Result<Option<u64>, ParseError> {
    let t = text.trim_ascii();
    if t == b"max" {
        return Ok(None);
    }
    let v = parse_u64(t).ok_or_else(|| bad_value(1, b"limit", t))?;
    Ok((v < V1_UNLIMITED).then_some(v))
}

/// A flat keyed file, `key value` per line (`memory.stat`, `memory.events`,
/// `memory.oom_control`), in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlatKeyed(pub Vec<(Vec<u8>, u64)>);

impl FlatKeyed {
    pub fn get(&self, key: &str) -> Option<u64> {
        self.0
            .iter()
            .find(|(k, _)| k == key.as_bytes())
            .map(|(_, v)| *v)
    }
}

pub fn parse_flat_keyed(text: &[u8]) -> Result<FlatKeyed, ParseError> {
    let mut out = Vec::new();
    for line in lines(text) {
        let mut f = fields(line.bytes);
        let Some(key) = f.next() else { continue };
        let value = f.next().unwrap_or_default();
        let v = parse_u64(value).ok_or_else(|| bad_value(line.no, key, value))?;
        if let Some(extra) = f.next() {
            return Err(ParseError::new(
                line.no,
                format!("{}: unexpected {:?}", lossy(key), lossy(extra)),
            ));
        }
        out.push((key.to_vec(), v));
    }
    Ok(FlatKeyed(out))
}

/// One line of a PSI file: the share of time stalled over 10 s and 60 s (percent), and the total
/// stall time in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct PsiLine {
    pub avg10: f64,
    pub avg60: f64,
    pub total_us: u64,
}

/// `memory.pressure`: `some` (at least one task stalled on memory) and `full` (all non-idle tasks
/// stalled at once).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Psi {
    pub some: Option<PsiLine>,
    pub full: Option<PsiLine>,
}

/// Parses a PSI file: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and a `full` line.
pub fn parse_psi(text: &[u8]) -> Result<Psi, ParseError> {
    let mut psi = Psi::default();
    for line in lines(text) {
        let mut f = fields(line.bytes);
        let Some(which) = f.next() else { continue };
        let (mut avg10, mut avg60, mut total) = (None, None, None);
        for kv in f {
            let Some(eq) = kv.iter().position(|&b| b == b'=') else {
                return Err(bad_value(line.no, which, kv));
            };
            let (k, v) = (&kv[..eq], &kv[eq + 1..]);
            match k {
                b"avg10" => avg10 = Some(parse_percent(v).ok_or_else(|| bad_value(line.no, k, v))?),
                b"avg60" => avg60 = Some(parse_percent(v).ok_or_else(|| bad_value(line.no, k, v))?),
                b"total" => total = Some(parse_u64(v).ok_or_else(|| bad_value(line.no, k, v))?),
                _ => {}
            }
        }
        let (Some(avg10), Some(avg60), Some(total_us)) = (avg10, avg60, total) else {
            return Err(ParseError::new(
                line.no,
                format!("{}: avg10, avg60 or total missing", lossy(which)),
            ));
        };
        let parsed = Some(PsiLine {
            avg10,
            avg60,
            total_us,
        });
        match which {
            b"some" => psi.some = parsed,
            b"full" => psi.full = parsed,
            other => {
                return Err(ParseError::new(
                    line.no,
                    format!("unknown PSI line {:?}", lossy(other)),
                ));
            }
        }
    }
    if psi.some.is_none() {
        return Err(ParseError::new(0, "no `some` line"));
    }
    Ok(psi)
}

/// A percentage as the kernel prints it (`12.34`): digits, optionally a dot and digits; 0 to 100.
fn parse_percent(v: &[u8]) -> Option<f64> {
    if v.is_empty() || !v.iter().all(|b| b.is_ascii_digit() || *b == b'.') {
        return None;
    }
    let x: f64 = std::str::from_utf8(v).ok()?.parse().ok()?;
    (0.0..=100.0).contains(&x).then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::text::fixture;

    #[test]
    fn proc_cgroup_v1_hybrid_prefers_the_memory_line() {
        let text = fixture("cgroup/proc-pid-cgroup/v1-hybrid");
        let c = parse_proc_cgroup(&text).expect("parses");
        assert_eq!(c.v2.as_deref(), Some(&b"/"[..]));
        assert_eq!(
            c.memory_path(),
            Some(&b"/process_api/a1ad259df35837410ec3029cc0d5b807"[..])
        );
    }

    #[test]
    fn proc_cgroup_v2_only_and_paths_with_colons() {
        let c = parse_proc_cgroup(b"0::/system.slice/a:b.service\n").expect("parses");
        assert_eq!(c.memory_path(), Some(&b"/system.slice/a:b.service"[..]));
        assert_eq!(c.v1_memory, None);
        // A v1 line whose controller list holds memory among others.
        let c = parse_proc_cgroup(b"3:cpu,memory:/x\n0::/\n").expect("parses");
        assert_eq!(c.memory_path(), Some(&b"/x"[..]));
        // name=systemd is a named hierarchy, not the memory controller.
        let c = parse_proc_cgroup(b"1:name=systemd:/y\n").expect("parses");
        assert_eq!(c.memory_path(), None);
        assert_eq!(
            parse_proc_cgroup(b"").expect("empty"),
            ProcCgroup::default()
        );
    }

    #[test]
    fn proc_cgroup_garbage_is_an_error_with_the_line() {
        assert_eq!(
            parse_proc_cgroup(b"0::/\nnonsense\n").map_err(|e| e.line),
            Err(2)
        );
        assert_eq!(parse_proc_cgroup(b"x::/\n").map_err(|e| e.line), Err(1));
        assert_eq!(
            parse_proc_cgroup(b"0::relative\n").map_err(|e| e.line),
            Err(1)
        );
    }

    #[test]
    fn limits_and_values() {
        assert_eq!(parse_limit(b"max\n"), Ok(None));
        assert_eq!(parse_limit(b"67108864\n"), Ok(Some(64 << 20)));
        assert_eq!(parse_limit(b"9223372036854771712\n"), Ok(None));
        assert!(parse_limit(b"-1\n").is_err());
        assert!(parse_limit(b"").is_err());
        assert_eq!(parse_u64_file(b"4096\n"), Ok(4096));
        assert!(parse_u64_file(b"12 kB\n").is_err());
    }

    #[test]
    fn flat_keyed_files() {
        let s = parse_flat_keyed(&fixture("cgroup/v2/memory.stat")).expect("v2 stat");
        assert_eq!(s.get("anon"), Some(405_159_936));
        assert_eq!(s.get("nosuch"), None);
        let oom =
            parse_flat_keyed(&fixture("cgroup/v1/memory/memory.oom_control")).expect("oom_control");
        assert_eq!(oom.get("oom_kill"), Some(0));
        assert_eq!(oom.get("under_oom"), Some(0));
        assert_eq!(parse_flat_keyed(b"a 1\nb x\n").map_err(|e| e.line), Err(2));
        assert_eq!(parse_flat_keyed(b"a 1 2\n").map_err(|e| e.line), Err(1));
        assert_eq!(parse_flat_keyed(b"a\n").map_err(|e| e.line), Err(1));
    }

    #[test]
    fn psi() {
        let p = parse_psi(
            b"some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\nfull avg10=0.00 avg60=0.10 avg300=0.00 total=789\n",
        )
        .expect("parses");
        assert_eq!(
            p.some,
            Some(PsiLine {
                avg10: 1.5,
                avg60: 0.25,
                total_us: 123_456
            })
        );
        assert_eq!(p.full.map(|f| f.total_us), Some(789));
        // Old kernels' system-wide files had no `full` line for CPU; memory always has it, but a
        // missing one is not an error.
        assert!(parse_psi(b"some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").is_ok());
        assert!(parse_psi(b"").is_err());
        assert!(parse_psi(b"some avg10=nan avg60=0.00 avg300=0.00 total=0\n").is_err());
        assert!(parse_psi(b"some avg10=101.00 avg60=0.00 avg300=0.00 total=0\n").is_err());
        assert!(parse_psi(b"some avg60=0.00 total=0\n").is_err());
        assert!(parse_psi(b"most avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").is_err());
    }
}
