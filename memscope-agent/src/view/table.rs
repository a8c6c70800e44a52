//! `memscope-agent show`: the rebuilt state as aligned text tables that fit the terminal width.
//!
//! Sections: host summary, top processes, top shared objects, cgroups (when the stream has
//! `cgroup` records), tmpfs mounts, SysV segments, the `Shmem` ledger, then the snapshot's warnings. A table wider than the terminal first shortens its
//! text columns (names, labels, paths; cut with `…`), then leaves out its optional columns.

use std::fmt::Write as _;

use serde_json::Value;

use super::{
    field_text, field_u64, human_bytes, human_bytes_signed, owner_label, state::State, value_text,
};

/// The process column `--sort` orders by (descending).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SortKey {
    #[default]
    Pss,
    Uss,
    Rss,
    Swap,
}

impl SortKey {
    fn field(self) -> &'static str {
        match self {
            SortKey::Pss => "pss_bytes",
            SortKey::Uss => "uss_bytes",
            SortKey::Rss => "rss_bytes",
            SortKey::Swap => "swap_bytes",
        }
    }
}

/// What `show` prints.
#[derive(Debug, Clone)]
pub struct ShowOptions {
    /// Rows per table (processes, objects).
    pub top: usize,
    pub sort: SortKey,
    /// Terminal width in columns.
    pub width: usize,
}

impl Default for ShowOptions {
    fn default() -> Self {
        ShowOptions {
            top: 15,
            sort: SortKey::Pss,
            width: 100,
        }
    }
}

/// The terminal's width, else `$COLUMNS`, else 100.
pub fn terminal_width() -> usize {
    if let Some((terminal_size::Width(w), _)) = terminal_size::terminal_size() {
        return usize::from(w).max(40);
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|w| *w >= 40)
        .unwrap_or(100)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

#[derive(Debug, Clone)]
struct Column {
    name: &'static str,
    align: Align,
    /// A text column that may be shortened (with `…`) to fit.
    flex: bool,
    /// Left out when the table does not fit otherwise; higher goes first.
    drop_rank: u8,
}

const fn col(name: &'static str, align: Align) -> Column {
    Column {
        name,
        align,
        flex: false,
        drop_rank: 0,
    }
}

const fn text(name: &'static str) -> Column {
    Column {
        name,
        align: Align::Left,
        flex: true,
        drop_rank: 0,
    }
}

const fn optional(mut c: Column, rank: u8) -> Column {
    c.drop_rank = rank;
    c
}

/// A titled table with notes under it.
#[derive(Debug, Clone)]
struct Table {
    title: String,
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

/// The narrowest a flexible column gets before optional columns are left out.
const MIN_FLEX: usize = 12;
const GAP: &str = "  ";

fn width_of(s: &str) -> usize {
    s.chars().count()
}

fn cut(s: &str, w: usize) -> String {
    if width_of(s) <= w {
        return s.to_string();
    }
    let mut out: String = s.chars().take(w.saturating_sub(1)).collect();
    out.push('…');
    out
}

impl Table {
    fn new(title: impl Into<String>, columns: Vec<Column>) -> Table {
        Table {
            title: title.into(),
            columns,
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Column widths that fit `width`, and which columns are shown.
    fn layout(&self, width: usize) -> (Vec<usize>, Vec<bool>) {
        let n = self.columns.len();
        let mut widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                self.rows
                    .iter()
                    .map(|r| r.get(i).map_or(0, |s| width_of(s)))
                    .max()
                    .unwrap_or(0)
                    .max(width_of(c.name))
            })
            .collect();
        let mut shown = vec![true; n];
        let total = |w: &[usize], shown: &[bool]| {
            let cols = shown.iter().filter(|s| **s).count();
            w.iter()
                .zip(shown)
                .filter(|(_, s)| **s)
                .map(|(w, _)| *w)
                .sum::<usize>()
                + GAP.len() * cols.saturating_sub(1)
        };
        loop {
            // Shorten the widest flexible column, one character at a time.
            while total(&widths, &shown) > width {
                let widest = (0..n)
                    .filter(|i| shown[*i] && self.columns[*i].flex)
                    .filter(|i| widths[*i] > MIN_FLEX.max(width_of(self.columns[*i].name)))
                    .max_by_key(|i| widths[*i]);
                match widest {
                    Some(i) => widths[i] -= 1,
                    None => break,
                }
            }
            if total(&widths, &shown) <= width {
                break;
            }
            let drop = (0..n)
                .filter(|i| shown[*i] && self.columns[*i].drop_rank > 0)
                .max_by_key(|i| self.columns[*i].drop_rank);
            match drop {
                Some(i) => shown[i] = false,
                None => break,
            }
        }
        (widths, shown)
    }

    fn render(&self, width: usize, out: &mut String) {
        let _ = writeln!(out, "{}", self.title);
        if self.rows.is_empty() {
            let _ = writeln!(out, "  (none)");
        } else {
            let (widths, shown) = self.layout(width);
            let header: Vec<String> = self.columns.iter().map(|c| c.name.to_string()).collect();
            for row in std::iter::once(&header).chain(&self.rows) {
                let mut line = String::new();
                for (i, c) in self.columns.iter().enumerate() {
                    if !shown[i] {
                        continue;
                    }
                    if !line.is_empty() {
                        line.push_str(GAP);
                    }
                    let cell = cut(row.get(i).map_or("", String::as_str), widths[i]);
                    let pad = widths[i] - width_of(&cell);
                    match c.align {
                        Align::Left => {
                            line.push_str(&cell);
                            line.push_str(&" ".repeat(pad));
                        }
                        Align::Right => {
                            line.push_str(&" ".repeat(pad));
                            line.push_str(&cell);
                        }
                    }
                }
                let _ = writeln!(out, "{}", line.trim_end());
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "{}", cut(note, width));
        }
        out.push('\n');
    }
}

fn size(v: &Value, key: &str) -> String {
    field_u64(v, key).map_or_else(|| "-".to_string(), human_bytes)
}

fn meminfo(m: &Value, field: &str) -> u64 {
    field_u64(m, &format!("{field}_bytes")).unwrap_or(0)
}

fn host_table(state: &State) -> Table {
    let mut t = Table::new(
        "HOST",
        vec![
            col("TOTAL", Align::Right),
            col("USED", Align::Right),
            col("AVAILABLE", Align::Right),
            col("BUFF/CACHE", Align::Right),
            col("SHMEM", Align::Right),
            optional(col("SWAP USED", Align::Right), 1),
            optional(col("SWAP TOTAL", Align::Right), 3),
            optional(col("HUGETLB", Align::Right), 2),
        ],
    );
    if let Some(m) = state.singleton("meminfo") {
        let total = meminfo(&m, "MemTotal");
        let cache = meminfo(&m, "Buffers") + meminfo(&m, "Cached") + meminfo(&m, "SReclaimable");
        let used = total.saturating_sub(meminfo(&m, "MemFree") + cache);
        let swap_total = meminfo(&m, "SwapTotal");
        // `Hugetlb` (kernel 4.16+) covers every huge page size; older kernels only have the
        // default size's pool.
        let hugetlb =
            field_u64(&m, "Hugetlb_bytes").unwrap_or_else(|| meminfo(&m, "HugePages_Total"));
        t.rows.push(vec![
            human_bytes(total),
            human_bytes(used),
            human_bytes(meminfo(&m, "MemAvailable")),
            human_bytes(cache),
            human_bytes(meminfo(&m, "Shmem")),
            human_bytes(swap_total.saturating_sub(meminfo(&m, "SwapFree"))),
            human_bytes(swap_total),
            human_bytes(hugetlb),
        ]);
        t.notes.push(
            "used = total - free - buff/cache (as free(1)); buff/cache = Buffers + Cached + SReclaimable"
                .to_string(),
        );
    }
    t
}

/// `~` before a figure that is approximate, `?` before one that could not be read.
fn mark(numbers: Option<&str>) -> &'static str {
    match numbers {
        Some("approximate") => "~",
        Some("inaccessible") => "?",
        _ => "",
    }
}

fn process_table(state: &State, opts: &ShowOptions) -> Table {
    let mut procs = state.values("process");
    let sort = opts.sort.field();
    procs.sort_by(|a, b| {
        field_u64(b, sort)
            .unwrap_or(0)
            .cmp(&field_u64(a, sort).unwrap_or(0))
            .then(field_u64(a, "pid").cmp(&field_u64(b, "pid")))
    });
    let with_owner = procs.iter().any(|p| owner_label(p).is_some());
    let mut columns = vec![
        col("PID", Align::Right),
        optional(text("USER"), 2),
        text("NAME"),
        col("PSS", Align::Right),
        col("USS", Align::Right),
        col("RSS", Align::Right),
        optional(col("SWAP", Align::Right), 1),
    ];
    if with_owner {
        columns.push(optional(text("CGROUP/CONTAINER"), 3));
    }
    let sort_name = format!("{:?}", opts.sort).to_uppercase();
    let mut t = Table::new(
        format!(
            "PROCESSES (top {} of {} by {sort_name})",
            opts.top.min(procs.len()),
            procs.len()
        ),
        columns,
    );
    let (mut approx, mut denied) = (0, 0);
    for p in procs.iter().take(opts.top) {
        let numbers = p.get("numbers").and_then(Value::as_str);
        let m = mark(numbers);
        match m {
            "~" => approx += 1,
            "?" => denied += 1,
            _ => {}
        }
        let figure = |k: &str| format!("{m}{}", size(p, k));
        let mut row = vec![
            field_text(p, "pid").unwrap_or_default(),
            field_text(p, "user")
                .or_else(|| field_text(p, "uid"))
                .unwrap_or_default(),
            field_text(p, "name").unwrap_or_default(),
            figure("pss_bytes"),
            figure("uss_bytes"),
            figure("rss_bytes"),
            figure("swap_bytes"),
        ];
        if with_owner {
            row.push(owner_label(p).unwrap_or_default());
        }
        t.rows.push(row);
    }
    if procs.len() > opts.top {
        let rest: u64 = procs
            .iter()
            .skip(opts.top)
            .map(|p| field_u64(p, "pss_bytes").unwrap_or(0))
            .sum();
        t.notes.push(format!(
            "… {} more processes, {} PSS in all",
            procs.len() - opts.top,
            human_bytes(rest)
        ));
    }
    if approx > 0 {
        t.notes.push(
            "~ approximate: smaps_rollup unreadable (run as root); from status, PSS shown as RSS"
                .to_string(),
        );
    }
    if denied > 0 {
        t.notes
            .push("? inaccessible: nothing could be read; shown as zero".to_string());
    }
    t
}

/// `name (pid) PSS` of an object's largest mapper.
fn top_consumer(top: Option<&Value>) -> String {
    top.and_then(Value::as_array)
        .and_then(|t| t.first())
        .map(|c| {
            format!(
                "{} ({}) {}",
                field_text(c, "name").unwrap_or_default(),
                field_text(c, "pid").unwrap_or_default(),
                size(c, "pss_bytes")
            )
        })
        .unwrap_or_default()
}

fn object_table(state: &State, opts: &ShowOptions) -> Table {
    let mut objects = state.values("object");
    objects.sort_by_key(|o| std::cmp::Reverse(field_u64(o, "pss_bytes").unwrap_or(0)));
    let mut t = Table::new(
        format!(
            "SHARED OBJECTS (top {} of {} by PSS; SysV segments below)",
            opts.top.min(objects.len()),
            objects.len()
        ),
        vec![
            text("KIND"),
            text("OBJECT"),
            col("PSS", Align::Right),
            col("RSS", Align::Right),
            optional(col("SWAP", Align::Right), 1),
            col("MAPPERS", Align::Right),
            optional(text("TOP CONSUMER"), 2),
        ],
    );
    for o in objects.iter().take(opts.top) {
        let mut label = field_text(o, "label").unwrap_or_default();
        if let Some(n) = field_u64(o, "objects") {
            let _ = write!(label, " ({n})");
        }
        if o.get("deleted").and_then(Value::as_bool) == Some(true) && !label.contains("(deleted)") {
            label.push_str(" (deleted)");
        }
        t.rows.push(vec![
            field_text(o, "object_kind").unwrap_or_default(),
            label,
            size(o, "pss_bytes"),
            size(o, "rss_bytes"),
            size(o, "swap_bytes"),
            field_text(o, "mappers").unwrap_or_else(|| "-".to_string()),
            top_consumer(o.get("top")),
        ]);
    }
    t
}

/// `cgroup` records (the cgroup collector), largest usage first: the kernel's charge beside the
/// fair share (PSS summed over the cgroup's processes). Shown only when the stream has them.
fn cgroup_table(state: &State, opts: &ShowOptions) -> Option<Table> {
    let mut groups = state.values("cgroup");
    if groups.is_empty() {
        return None;
    }
    groups.sort_by_key(|g| std::cmp::Reverse(field_u64(g, "usage_bytes").unwrap_or(0)));
    let mut t = Table::new(
        format!(
            "CGROUPS (top {} of {} by usage)",
            opts.top.min(groups.len()),
            groups.len()
        ),
        vec![
            text("CGROUP"),
            optional(text("CONTAINER/UNIT"), 2),
            col("USAGE", Align::Right),
            col("LIMIT", Align::Right),
            col("FAIR PSS", Align::Right),
            optional(col("PROCS", Align::Right), 1),
            col("OOM KILLS", Align::Right),
        ],
    );
    for g in groups.iter().take(opts.top) {
        let fair = g.get("fair").filter(|f| !f.is_null());
        let owner = owner_label(&serde_json::json!({ "container": g.get("container") }))
            .or_else(|| field_text(g, "unit"))
            .unwrap_or_default();
        let mut path = field_text(g, "path").unwrap_or_default();
        if let Some(n) = field_u64(g, "cgroups") {
            let _ = write!(path, " ({n} cgroups)");
        }
        t.rows.push(vec![
            path,
            owner,
            size(g, "usage_bytes"),
            size(g, "limit_bytes"),
            fair.map_or_else(|| "-".to_string(), |f| size(f, "pss_bytes")),
            fair.and_then(|f| field_text(f, "processes"))
                .unwrap_or_else(|| "-".to_string()),
            g.get("events")
                .and_then(|e| field_text(e, "oom_kill"))
                .unwrap_or_else(|| "-".to_string()),
        ]);
    }
    Some(t)
}

fn tmpfs_table(state: &State) -> Table {
    let mut mounts = state.values("tmpfs");
    mounts.sort_by_key(|m| std::cmp::Reverse(field_u64(m, "allocated_bytes").unwrap_or(0)));
    let mut t = Table::new(
        "TMPFS MOUNTS",
        vec![
            text("MOUNT"),
            col("LIMIT", Align::Right),
            col("USED", Align::Right),
            col("FILES", Align::Right),
            optional(text("TOP FILE"), 1),
            text("NOTE"),
        ],
    );
    for m in &mounts {
        let mount = m
            .get("mount_points")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter_map(value_text)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let top = m
            .get("top_files")
            .and_then(Value::as_array)
            .and_then(|f| f.first())
            .map(|f| {
                format!(
                    "{} {}",
                    field_text(f, "path").unwrap_or_default(),
                    size(f, "allocated_bytes")
                )
            })
            .unwrap_or_default();
        let mut note = Vec::new();
        if m.get("hidden").and_then(Value::as_bool) == Some(true) {
            note.push("hidden by another mount".to_string());
        }
        if m.get("truncated").and_then(Value::as_bool) == Some(true) {
            note.push("walk truncated".to_string());
        }
        if let Some(n) = field_u64(m, "deleted_open_files").filter(|n| *n > 0) {
            note.push(format!(
                "{n} deleted-open ({})",
                size(m, "deleted_open_bytes")
            ));
        }
        if let Some(e) = field_text(m, "error") {
            note.push(format!("error: {e}"));
        }
        t.rows.push(vec![
            mount,
            size(m, "limit_bytes"),
            size(m, "allocated_bytes"),
            field_text(m, "files").unwrap_or_else(|| "-".to_string()),
            top,
            note.join("; "),
        ]);
    }
    t
}

fn sysv_table(state: &State) -> Table {
    let mut segs = state.values("sysv");
    segs.sort_by_key(|s| field_u64(s, "shmid"));
    let mut t = Table::new(
        "SYSV SEGMENTS",
        vec![
            col("SHMID", Align::Right),
            col("KEY", Align::Left),
            optional(text("OWNER"), 3),
            col("SIZE", Align::Right),
            col("RESIDENT", Align::Right),
            optional(col("SWAPPED", Align::Right), 2),
            col("ATTACH", Align::Right),
            col("MAPPED PSS", Align::Right),
            optional(text("FLAGS"), 1),
        ],
    );
    for s in &segs {
        let mut flags = Vec::new();
        if s.get("marked_for_destroy").and_then(Value::as_bool) == Some(true) {
            flags.push("destroy");
        }
        if s.get("locked").and_then(Value::as_bool) == Some(true) {
            flags.push("locked");
        }
        let mapped = s
            .get("mapped")
            .filter(|m| !m.is_null())
            .map_or_else(|| "-".to_string(), |m| size(m, "pss_bytes"));
        t.rows.push(vec![
            field_text(s, "shmid").unwrap_or_default(),
            field_text(s, "key_hex").unwrap_or_default(),
            field_text(s, "owner")
                .or_else(|| field_text(s, "uid"))
                .unwrap_or_default(),
            size(s, "size_bytes"),
            size(s, "resident_bytes"),
            size(s, "swapped_bytes"),
            field_text(s, "attaches").unwrap_or_default(),
            mapped,
            flags.join(","),
        ]);
    }
    t
}

fn ledger_table(state: &State) -> Table {
    let mut t = Table::new(
        "SHMEM LEDGER (meminfo Shmem against what explains it)",
        vec![
            text("SOURCE"),
            col("BYTES", Align::Right),
            col("OF SHMEM", Align::Right),
        ],
    );
    let Some(l) = state.singleton("shmem_ledger") else {
        return t;
    };
    let shmem = field_u64(&l, "shmem_bytes").unwrap_or(0);
    let share = |b: i64| {
        if shmem == 0 {
            "-".to_string()
        } else {
            format!("{:.1} %", b as f64 * 100.0 / shmem as f64)
        }
    };
    let rows: [(&str, &str); 8] = [
        ("Shmem (meminfo)", "shmem_bytes"),
        ("tmpfs files, mapped", "tmpfs_mapped_bytes"),
        ("tmpfs files, unmapped", "tmpfs_unmapped_bytes"),
        ("SysV segments", "sysv_bytes"),
        ("memfds", "memfd_bytes"),
        ("shared anonymous", "shared_anon_bytes"),
        ("explained", "explained_bytes"),
        ("unexplained", "unexplained_bytes"),
    ];
    for (label, key) in rows {
        let Some(b) = l.get(key).and_then(Value::as_i64) else {
            continue;
        };
        t.rows
            .push(vec![label.to_string(), human_bytes_signed(b), share(b)]);
    }
    // Fields this reader does not name (added by later versions), shown as they come.
    if let Some(o) = l.as_object() {
        for (k, v) in o {
            let known = rows.iter().any(|(_, f)| f == k) || k == "tmpfs_bytes";
            if let (false, Some(name), Some(b)) = (known, k.strip_suffix("_bytes"), v.as_i64()) {
                t.rows.push(vec![
                    name.replace('_', " "),
                    human_bytes_signed(b),
                    share(b),
                ]);
            }
        }
    }
    let missing: Vec<String> = l
        .get("sources")
        .and_then(Value::as_object)
        .map(|s| {
            s.iter()
                .filter(|(_, on)| on.as_bool() == Some(false))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    if !missing.is_empty() {
        t.notes.push(format!(
            "collectors off, so not explained: {}",
            missing.join(", ")
        ));
    }
    t
}

/// Renders the whole view of `state`.
pub fn render(state: &State, opts: &ShowOptions) -> String {
    let mut out = String::new();
    let snapshot = state.snapshot_value();
    let tracker = snapshot
        .as_ref()
        .and_then(|s| s.get("tracker"))
        .and_then(|t| field_text(t, "mode"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "memscope  host {}  {}  seq {}  tracker {}\n",
        state.host,
        state.ts,
        state.seq.map_or_else(|| "-".to_string(), |s| s.to_string()),
        tracker
    );
    host_table(state).render(opts.width, &mut out);
    process_table(state, opts).render(opts.width, &mut out);
    object_table(state, opts).render(opts.width, &mut out);
    if let Some(t) = cgroup_table(state, opts) {
        t.render(opts.width, &mut out);
    }
    tmpfs_table(state).render(opts.width, &mut out);
    sysv_table(state).render(opts.width, &mut out);
    ledger_table(state).render(opts.width, &mut out);
    let warnings: Vec<String> = snapshot
        .as_ref()
        .and_then(|s| s.get("warnings"))
        .and_then(Value::as_array)
        .map(|w| w.iter().filter_map(value_text).collect())
        .unwrap_or_default();
    if !warnings.is_empty() {
        let _ = writeln!(out, "WARNINGS ({})", warnings.len());
        for w in &warnings {
            let _ = writeln!(out, "{}", cut(&format!("- {w}"), opts.width));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let mut t = Table::new(
            "T",
            vec![
                col("PID", Align::Right),
                text("NAME"),
                optional(col("EXTRA", Align::Right), 1),
            ],
        );
        t.rows.push(vec![
            "1".into(),
            "a-very-long-process-name-indeed-it-is".into(),
            "123456".into(),
        ]);
        t.rows.push(vec!["22".into(), "b".into(), "7".into()]);
        t
    }

    fn lines(t: &Table, width: usize) -> Vec<String> {
        let mut s = String::new();
        t.render(width, &mut s);
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn cgroups_and_containers_show_when_records_have_them() {
        let stream = [
            r#"{"kind":"snapshot","seq":0,"keyframe":true}"#,
            r#"{"kind":"process","pid":7,"name":"nginx","pss_bytes":2048,"cgroup":"/system.slice/docker-ab.scope","container":{"runtime":"docker","id":"abcdef0123456789abcd"}}"#,
            r#"{"kind":"process","pid":8,"name":"sshd","pss_bytes":1024,"cgroup":"/system.slice/ssh.service","container":null}"#,
            r#"{"kind":"cgroup","path":"/system.slice/ssh.service","usage_bytes":4194304,"limit_bytes":null,"events":{"oom_kill":0},"fair":{"processes":1,"pss_bytes":1024},"unit":"ssh.service"}"#,
            r#"{"kind":"cgroup","path":"/kubepods","usage_bytes":8388608,"limit_bytes":67108864,"events":{"oom_kill":2},"fair":{"processes":3,"pss_bytes":5242880},"container":{"runtime":"containerd","id":"9e0f5d4c3b2a1908"}}"#,
            r#"{"kind":"agent","seq":0}"#,
        ]
        .join("\n");
        let (state, _) = super::super::state::rebuild(&stream);
        let out = render(&state, &ShowOptions::default());
        let lines: Vec<&str> = out.lines().collect();
        let procs = lines
            .iter()
            .position(|l| l.starts_with("PROCESSES"))
            .expect("processes");
        assert!(
            lines[procs + 1].ends_with("CGROUP/CONTAINER"),
            "{}",
            lines[procs + 1]
        );
        assert!(
            lines[procs + 2].ends_with("docker:abcdef012345"),
            "{}",
            lines[procs + 2]
        );
        assert!(
            lines[procs + 3].ends_with("/system.slice/ssh.service"),
            "{}",
            lines[procs + 3]
        );
        let cg = lines
            .iter()
            .position(|l| l.starts_with("CGROUPS"))
            .expect("cgroup table");
        assert_eq!(
            lines[cg + 2]
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>(),
            [
                "/kubepods",
                "containerd:9e0f5d4c3b2a",
                "8.0 MiB",
                "64.0 MiB",
                "5.0 MiB",
                "3",
                "2"
            ]
        );
        assert!(lines[cg + 3].contains("ssh.service") && lines[cg + 3].contains("4.0 MiB"));
    }

    #[test]
    fn fits_by_shortening_text_then_dropping_optional_columns() {
        let wide = lines(&table(), 200);
        let name = "a-very-long-process-name-indeed-it-is";
        assert_eq!(wide[1], format!("PID  {:<37}   EXTRA", "NAME"));
        assert_eq!(wide[2], format!("  1  {name}  123456"));
        assert_eq!(wide[3], format!(" 22  {:<37}       7", "b"));
        let narrow = lines(&table(), 30);
        assert!(narrow.iter().all(|l| width_of(l) <= 30), "{narrow:?}");
        assert_eq!(narrow[2], "  1  a-very-long-proc…  123456");
        let tiny = lines(&table(), 18);
        assert_eq!(tiny[1], "PID  NAME", "EXTRA left out");
        assert_eq!(tiny[2], "  1  a-very-long…");
    }
}
