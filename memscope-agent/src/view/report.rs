//! `memscope-agent report STREAM.jsonl [-o report.html]`: one self-contained HTML file from a
//! recorded stream (either emit mode): a treemap of where the memory went at one emission, time
//! plots of the top processes' PSS, of the `Shmem` ledger and of meminfo, and the exits (OOM kills
//! marked). No script, no external resource: the SVG is inline, tooltips are SVG `<title>`s.
//!
//! The stream is read once, line by line, through [`Rebuilder`]; per emission it keeps a handful of
//! meminfo and ledger figures and each live process's PSS. Plots are drawn with `plotters` (SVG
//! backend) and thinned to at most [`MAX_POINTS`] points per series (the maximum of each bucket, so
//! peaks survive).

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use plotters::prelude::*;
use serde_json::Value;

use super::{
    field_text, field_u64, human_bytes,
    state::{Exit, Line, Rebuilder, State, Step},
    treemap::{Rect, squarify},
};

/// Points per plotted series at most.
pub const MAX_POINTS: usize = 1500;
/// The progress bar appears when reading takes longer than this.
const PROGRESS_AFTER: Duration = Duration::from_millis(400);

/// `memscope-agent report`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// A recorded stream of JSON lines (`emit = "full"` or `"changes"`); `-` reads stdin.
    pub stream: PathBuf,
    /// The HTML file to write (default: the stream's path with `.html`).
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// The treemap's moment: an emission's `seq`, or an RFC 3339 time (the last emission at or
    /// before it). Default: the last emission.
    #[arg(long, value_name = "SEQ|TIME")]
    pub at: Option<String>,
    /// Processes in the PSS plot.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub top: usize,
}

/// Runs `report`: reads the stream, writes the HTML file, says where on stderr.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let output = args.output.clone().unwrap_or_else(|| {
        if args.stream.as_os_str() == "-" {
            PathBuf::from("memscope-report.html")
        } else {
            args.stream.with_extension("html")
        }
    });
    if output == args.stream {
        anyhow::bail!(
            "{}: the report would overwrite the stream; name another file with -o",
            output.display()
        );
    }
    let at = args.at.as_deref().map(Moment::parse).transpose()?;
    let started = Instant::now();
    let (input, len): (Box<dyn Read>, Option<u64>) = if args.stream.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = std::fs::File::open(&args.stream)
            .with_context(|| format!("{}: cannot open the stream", args.stream.display()))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let data = read_stream(input, len, at.as_ref())
        .with_context(|| format!("{}: reading the stream", args.stream.display()))?;
    let html = render_html(&data, args.top);
    std::fs::write(&output, html)
        .with_context(|| format!("{}: cannot write the report", output.display()))?;
    eprintln!(
        "{}: {} emissions, {} exits ({} OOM kills), written in {:.1} s",
        output.display(),
        data.emissions,
        data.exits.len(),
        data.exits.iter().filter(|e| e.exit.is_oom_kill()).count(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The moment the treemap shows.
#[derive(Debug, Clone, PartialEq)]
pub enum Moment {
    Seq(u64),
    Time(SystemTime),
}

impl Moment {
    pub fn parse(s: &str) -> anyhow::Result<Moment> {
        if let Ok(seq) = s.parse::<u64>() {
            return Ok(Moment::Seq(seq));
        }
        humantime::parse_rfc3339_weak(s)
            .map(Moment::Time)
            .map_err(|e| {
                anyhow::anyhow!("--at {s}: neither a seq number nor an RFC 3339 time ({e})")
            })
    }
}

/// One process's PSS over the stream: `(emission index, bytes)`.
#[derive(Debug, Clone, Default)]
struct ProcSeries {
    name: String,
    pid: u64,
    points: Vec<(u32, u64)>,
}

/// An exit and when it happened (seconds since the first emission).
#[derive(Debug, Clone)]
pub struct TimedExit {
    pub t: f64,
    pub exit: Exit,
}

/// The meminfo and ledger figures plotted, per emission.
const MEMINFO_SERIES: [&str; 7] = [
    "used",
    "available",
    "buff/cache",
    "Shmem",
    "AnonPages",
    "swap used",
    "hugetlb",
];
const LEDGER_SERIES: [(&str, &str); 6] = [
    ("Shmem", "shmem_bytes"),
    ("tmpfs", "tmpfs_bytes"),
    ("SysV", "sysv_bytes"),
    ("memfd", "memfd_bytes"),
    ("shared anon", "shared_anon_bytes"),
    ("unexplained", "unexplained_bytes"),
];

/// What the report shows, gathered in one pass over the stream.
pub struct ReportData {
    pub host: String,
    pub first_ts: String,
    pub last_ts: String,
    pub emissions: u64,
    pub lines: u64,
    pub unreadable: u64,
    /// Emissions cut short (the agent stopped mid-write), left out.
    pub cut: u64,
    /// Emission times, seconds since the first.
    times: Vec<f64>,
    meminfo: Vec<Vec<f64>>,
    ledger: Vec<Vec<f64>>,
    procs: HashMap<(u64, u64), ProcSeries>,
    pub exits: Vec<TimedExit>,
    /// The state shown in the treemap (the chosen moment's emission).
    pub moment: Option<State>,
}

fn ts_secs(ts: &str) -> Option<f64> {
    humantime::parse_rfc3339_weak(ts)
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
}

fn meminfo_figures(m: &Value) -> [f64; 7] {
    let f = |k: &str| field_u64(m, &format!("{k}_bytes")).unwrap_or(0);
    let cache = f("Buffers") + f("Cached") + f("SReclaimable");
    let used = f("MemTotal").saturating_sub(f("MemFree") + cache);
    let hugetlb = field_u64(m, "Hugetlb_bytes").unwrap_or_else(|| f("HugePages_Total"));
    [
        used,
        f("MemAvailable"),
        cache,
        f("Shmem"),
        f("AnonPages"),
        f("SwapTotal").saturating_sub(f("SwapFree")),
        hugetlb,
    ]
    .map(|v| v as f64)
}

/// Reads a whole stream. `len` (bytes, when known) drives the progress bar.
pub fn read_stream(
    input: impl Read,
    len: Option<u64>,
    at: Option<&Moment>,
) -> anyhow::Result<ReportData> {
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let bar =
        indicatif::ProgressBar::with_draw_target(len, indicatif::ProgressDrawTarget::hidden());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "reading {bytes}/{total_bytes} [{wide_bar}] {eta} left",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut shown = false;

    let mut rb = Rebuilder::new();
    let mut data = ReportData {
        host: String::new(),
        first_ts: String::new(),
        last_ts: String::new(),
        emissions: 0,
        lines: 0,
        unreadable: 0,
        cut: 0,
        times: Vec::new(),
        meminfo: vec![Vec::new(); MEMINFO_SERIES.len()],
        ledger: vec![Vec::new(); LEDGER_SERIES.len()],
        procs: HashMap::new(),
        exits: Vec::new(),
        moment: None,
    };
    let mut t0: Option<f64> = None;
    let at_time = match at {
        Some(Moment::Time(t)) => t
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs_f64()),
        _ => None,
    };
    let mut buf = Vec::with_capacity(4096);
    let mut since_tick = 0u64;
    // The chosen moment's emission has closed and its state is not copied yet.
    let mut pending = false;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).context("read")?;
        if n == 0 {
            break;
        }
        data.lines += 1;
        since_tick += n as u64;
        if data.lines.is_multiple_of(4096) {
            bar.inc(since_tick);
            since_tick = 0;
            if !shown && started.elapsed() > PROGRESS_AFTER {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                shown = true;
            }
        }
        let line = String::from_utf8_lossy(&buf);
        // The chosen emission's state is copied once, when the next emission opens (or at the
        // end): then it holds that emission and the exits sent at once after it.
        let next_snapshot = if pending && line.contains("snapshot") {
            Line::parse(&line).filter(|l| l.kind == "snapshot")
        } else {
            None
        };
        if let Some(next) = next_snapshot {
            let next = ts_secs(&next.ts);
            let past = match at {
                Some(Moment::Time(_)) => at_time.is_some_and(|a| next.is_none_or(|x| x > a)),
                _ => true,
            };
            if past {
                data.moment = Some(rb.state().clone());
                pending = false;
            }
        }
        match rb.push(&line) {
            Step::Emission => {
                let s = rb.state();
                let secs = ts_secs(&s.ts);
                let base = *t0.get_or_insert(secs.unwrap_or(0.0));
                let t =
                    secs.map_or_else(|| data.times.last().copied().unwrap_or(0.0), |x| x - base);
                let idx = data.times.len() as u32;
                data.times.push(t);
                if data.first_ts.is_empty() {
                    data.first_ts = s.ts.clone();
                }
                data.last_ts = s.ts.clone();
                data.host = s.host.clone();
                let mi = s.singleton("meminfo").map(|m| meminfo_figures(&m));
                for (i, series) in data.meminfo.iter_mut().enumerate() {
                    series.push(mi.map_or(f64::NAN, |m| m[i]));
                }
                let ledger = s.singleton("shmem_ledger");
                for (series, (_, key)) in data.ledger.iter_mut().zip(LEDGER_SERIES) {
                    let v = ledger
                        .as_ref()
                        .and_then(|l| l.get(key))
                        .and_then(Value::as_f64);
                    series.push(v.unwrap_or(f64::NAN));
                }
                for e in s.entities("process") {
                    let pid = e.pid.unwrap_or(0);
                    let series = data
                        .procs
                        .entry((pid, e.start_ticks.unwrap_or(0)))
                        .or_default();
                    let pss = e.pss_bytes.unwrap_or(0);
                    if series.points.is_empty() {
                        series.name = e.name.clone();
                        series.pid = pid;
                    }
                    series.points.push((idx, pss));
                }
                let chosen = match at {
                    None => false,
                    Some(Moment::Seq(q)) => s.seq == Some(*q),
                    Some(Moment::Time(_)) => at_time.is_some_and(|a| secs.is_some_and(|x| x <= a)),
                };
                pending |= chosen;
            }
            Step::Exit(exit) => {
                let base = t0.unwrap_or(0.0);
                let t = ts_secs(&exit.ts)
                    .map(|x| x - base)
                    .unwrap_or_else(|| data.times.last().copied().unwrap_or(0.0));
                data.exits.push(TimedExit { t, exit });
            }
            Step::Applied | Step::Unreadable => {}
        }
    }
    bar.finish_and_clear();
    data.emissions = rb.emissions;
    data.unreadable = rb.unreadable;
    data.cut = rb.cut;
    if data.emissions == 0 {
        anyhow::bail!(
            "no emission in the stream ({} lines, {} unreadable): is it memscope's JSON lines?",
            data.lines,
            data.unreadable
        );
    }
    if at.is_none() || pending {
        data.moment = Some(rb.into_state());
    }
    if let (Some(m), None) = (at, &data.moment) {
        anyhow::bail!("--at {m:?}: no emission at that moment in the stream");
    }
    Ok(data)
}

/// Escapes text for HTML and SVG.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// One box of the treemap's second level.
struct Leaf {
    label: String,
    bytes: u64,
}

/// A first-level box: a kind of memory and what holds it.
struct Group {
    label: &'static str,
    color: (u8, u8, u8),
    leaves: Vec<Leaf>,
}

impl Group {
    fn bytes(&self) -> u64 {
        self.leaves.iter().map(|l| l.bytes).sum()
    }
}

/// Keeps the largest `n` leaves and folds the rest into one.
fn top_leaves(mut leaves: Vec<Leaf>, n: usize, rest: &str) -> Vec<Leaf> {
    leaves.retain(|l| l.bytes > 0);
    leaves.sort_by_key(|l| std::cmp::Reverse(l.bytes));
    if leaves.len() > n {
        let tail = leaves.split_off(n);
        let bytes = tail.iter().map(|l| l.bytes).sum();
        leaves.push(Leaf {
            label: format!("{} {rest}", tail.len()),
            bytes,
        });
    }
    leaves
}

/// Where the memory went at one emission: MemTotal split into kinds without double counting.
/// Process anonymous memory (PSS anon), mapped files (file objects' PSS), `Shmem` (tmpfs mounts,
/// SysV segments, memfds, shared anonymous, the unexplained remainder), the page cache nobody
/// maps, kernel memory, buffers, hugetlb, free, and what meminfo leaves unaccounted.
fn treemap_groups(state: &State) -> Vec<Group> {
    let m = state.singleton("meminfo").unwrap_or(Value::Null);
    let mi = |k: &str| field_u64(&m, &format!("{k}_bytes")).unwrap_or(0);
    let objects = state.values("object");
    let object_leaves = |kind: &str| -> Vec<Leaf> {
        objects
            .iter()
            .filter(|o| field_text(o, "object_kind").as_deref() == Some(kind))
            .map(|o| Leaf {
                label: field_text(o, "label").unwrap_or_default(),
                bytes: field_u64(o, "pss_bytes").unwrap_or(0),
            })
            .collect()
    };

    let procs: Vec<Leaf> = state
        .values("process")
        .iter()
        .map(|p| {
            let f = |k: &str| field_u64(p, k).unwrap_or(0);
            let anon = p
                .get("pss_anon_bytes")
                .and_then(Value::as_u64)
                .unwrap_or_else(|| {
                    f("pss_bytes").saturating_sub(f("pss_file_bytes") + f("pss_shmem_bytes"))
                });
            Leaf {
                label: format!(
                    "{} ({})",
                    field_text(p, "name").unwrap_or_default(),
                    f("pid")
                ),
                bytes: anon,
            }
        })
        .collect();

    let files = object_leaves("file");
    let files_total: u64 = files.iter().map(|l| l.bytes).sum();

    let mut shmem = Vec::new();
    for t in state.values("tmpfs") {
        let mount = t
            .get("mount_points")
            .and_then(Value::as_array)
            .and_then(|m| m.first())
            .and_then(super::value_text)
            .unwrap_or_default();
        shmem.push(Leaf {
            label: format!("tmpfs {mount}"),
            bytes: field_u64(&t, "allocated_bytes").unwrap_or(0),
        });
    }
    for s in state.values("sysv") {
        shmem.push(Leaf {
            label: format!(
                "SysV {} ({})",
                field_text(&s, "shmid").unwrap_or_default(),
                field_text(&s, "key_hex").unwrap_or_default()
            ),
            bytes: field_u64(&s, "resident_bytes").unwrap_or(0),
        });
    }
    let memfds = object_leaves("memfd");
    let memfd_mapped: u64 = memfds.iter().map(|l| l.bytes).sum();
    shmem.extend(memfds);
    shmem.extend(object_leaves("shared_anon"));
    if let Some(l) = state.singleton("shmem_ledger") {
        let held = field_u64(&l, "memfd_bytes")
            .unwrap_or(0)
            .saturating_sub(memfd_mapped);
        shmem.push(Leaf {
            label: "memfds held by descriptors only".to_string(),
            bytes: held,
        });
        if let Some(u) = l.get("unexplained_bytes").and_then(Value::as_i64) {
            shmem.push(Leaf {
                label: "unexplained".to_string(),
                bytes: u.max(0) as u64,
            });
        }
    }

    let kernel: Vec<Leaf> = [
        ("slab, reclaimable", "SReclaimable"),
        ("slab, unreclaimable", "SUnreclaim"),
        ("kernel stacks", "KernelStack"),
        ("page tables", "PageTables"),
        ("per-cpu", "Percpu"),
    ]
    .into_iter()
    .map(|(label, field)| Leaf {
        label: label.to_string(),
        bytes: mi(field),
    })
    .collect();
    let hugetlb = field_u64(&m, "Hugetlb_bytes").unwrap_or_else(|| mi("HugePages_Total"));
    let single = |label: &str, bytes: u64| {
        vec![Leaf {
            label: label.to_string(),
            bytes,
        }]
    };
    let mut groups = vec![
        Group {
            label: "processes (anonymous PSS)",
            color: (76, 120, 168),
            leaves: top_leaves(procs, 40, "more processes"),
        },
        Group {
            label: "mapped files (PSS)",
            color: (89, 161, 79),
            leaves: top_leaves(files, 40, "more files"),
        },
        Group {
            label: "shared memory (Shmem)",
            color: (225, 87, 89),
            leaves: top_leaves(shmem, 40, "more"),
        },
        Group {
            label: "page cache, not mapped",
            color: (237, 201, 72),
            leaves: single(
                "page cache",
                mi("Cached").saturating_sub(mi("Shmem") + files_total),
            ),
        },
        Group {
            label: "kernel",
            color: (176, 122, 161),
            leaves: kernel,
        },
        Group {
            label: "buffers",
            color: (156, 117, 95),
            leaves: single("buffers", mi("Buffers")),
        },
        Group {
            label: "hugetlb",
            color: (255, 157, 167),
            leaves: single("hugetlb pages", hugetlb),
        },
        Group {
            label: "free",
            color: (186, 176, 172),
            leaves: single("free", mi("MemFree")),
        },
    ];
    let counted: u64 = groups.iter().map(Group::bytes).sum();
    groups.push(Group {
        label: "other (not in the above)",
        color: (121, 112, 110),
        leaves: single("other", mi("MemTotal").saturating_sub(counted)),
    });
    for g in &mut groups {
        g.leaves.retain(|l| l.bytes > 0);
    }
    groups.retain(|g| g.bytes() > 0);
    groups
}

fn shade((r, g, b): (u8, u8, u8), k: f64) -> String {
    let mix = |c: u8| (f64::from(c) + (255.0 - f64::from(c)) * k).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(r), mix(g), mix(b))
}

/// The treemap as an inline SVG.
fn treemap_svg(state: &State, width: f64, height: f64) -> String {
    let groups = treemap_groups(state);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg id="treemap" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let sizes: Vec<f64> = groups.iter().map(|g| g.bytes() as f64).collect();
    let rects = squarify(&sizes, Rect::new(0.0, 0.0, width, height));
    for (g, r) in groups.iter().zip(rects) {
        let _ = write!(
            svg,
            r#"<g class="kind"><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}" stroke="white" stroke-width="2"><title>{}: {}</title></rect>"#,
            r.x,
            r.y,
            r.w,
            r.h,
            shade(g.color, 0.0),
            escape(g.label),
            human_bytes(g.bytes())
        );
        let header = if r.h > 40.0 && r.w > 60.0 { 16.0 } else { 0.0 };
        if header > 0.0 {
            let text = fit_text(
                &format!("{} {}", g.label, human_bytes(g.bytes())),
                r.w - 6.0,
            );
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" fill="white" font-weight="bold">{}</text>"#,
                r.x + 4.0,
                r.y + 12.0,
                escape(&text)
            );
        }
        let inner = Rect::new(r.x, r.y + header, r.w, r.h - header).inset(2.0);
        let leaf_sizes: Vec<f64> = g.leaves.iter().map(|l| l.bytes as f64).collect();
        for (i, (l, lr)) in g
            .leaves
            .iter()
            .zip(squarify(&leaf_sizes, inner))
            .enumerate()
        {
            let _ = write!(
                svg,
                r#"<rect class="leaf" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}" stroke="white" stroke-width="0.5"><title>{}: {}</title></rect>"#,
                lr.x,
                lr.y,
                lr.w,
                lr.h,
                shade(g.color, 0.25 + 0.35 * (i % 3) as f64 / 2.0),
                escape(&l.label),
                human_bytes(l.bytes)
            );
            if lr.w > 50.0 && lr.h > 26.0 {
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" fill="black">{}</text><text x="{:.1}" y="{:.1}" fill="black">{}</text>"#,
                    lr.x + 3.0,
                    lr.y + 12.0,
                    escape(&fit_text(&l.label, lr.w - 6.0)),
                    lr.x + 3.0,
                    lr.y + 24.0,
                    human_bytes(l.bytes)
                );
            }
        }
        svg.push_str("</g>");
    }
    svg.push_str("</svg>");
    svg
}

/// Cuts `s` to about `px` pixels of 11-pixel sans-serif text.
fn fit_text(s: &str, px: f64) -> String {
    let max = (px / 6.5).floor().max(0.0) as usize;
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Bytes per unit and its name, for a value range up to `max`.
fn unit_for(max: f64) -> (f64, &'static str) {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    if max >= 2.0 * GIB {
        (GIB, "GiB")
    } else if max >= 2.0 * 1024.0 * 1024.0 {
        (1024.0 * 1024.0, "MiB")
    } else {
        (1024.0, "KiB")
    }
}

/// Time unit for the x axis: seconds per unit and its name.
fn time_unit(span: f64) -> (f64, &'static str) {
    if span >= 3.0 * 3600.0 {
        (3600.0, "hours")
    } else if span >= 180.0 {
        (60.0, "minutes")
    } else {
        (1.0, "seconds")
    }
}

/// Thins `(x, y)` points to at most [`MAX_POINTS`]: the maximum of each bucket of x.
fn thin(points: &[(f64, f64)], span: f64) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS || span <= 0.0 {
        return points.to_vec();
    }
    let width = span / MAX_POINTS as f64;
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(MAX_POINTS + 1);
    let mut bucket = -1i64;
    for &(x, y) in points {
        let b = (x / width) as i64;
        match out.last_mut() {
            Some(last) if b == bucket => last.1 = last.1.max(y),
            _ => {
                out.push((x, y));
                bucket = b;
            }
        }
    }
    out
}

/// A line series of a time plot.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
}

/// One time plot as SVG; `marks` are `(x, y, label)` drawn as red crosses (OOM kills).
fn time_plot(
    id: &str,
    title: &str,
    series: &[Series],
    marks: &[(f64, f64, String)],
    span: f64,
    x_name: &str,
) -> String {
    let mut svg = String::new();
    let (lo, hi) = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(marks.iter().map(|m| m.1))
        .filter(|v| v.is_finite())
        .fold((0.0_f64, 0.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (unit, unit_name) = unit_for(hi.max(-lo));
    let (tu, tu_name) = time_unit(span);
    let x_max = (span / tu).max(1e-9);
    let y_lo = lo / unit * 1.05;
    let y_hi = (hi / unit * 1.08).max(y_lo + 1.0);
    let result = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, (1100, 380)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, y_lo..y_hi)?;
        chart
            .configure_mesh()
            .x_desc(format!("{tu_name} since {x_name}"))
            .y_desc(unit_name)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|p| (p.0 / tu, p.1 / unit))
                .collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        if !marks.is_empty() {
            chart
                .draw_series(
                    marks
                        .iter()
                        .map(|(x, y, _)| Cross::new((x / tu, y / unit), 7, RED.stroke_width(3))),
                )?
                .label("OOM kill")
                .legend(|(x, y)| Cross::new((x + 8, y), 5, RED.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font(("sans-serif", 12))
            .draw()?;
        root.present()?;
        Ok(())
    })();
    if let Err(e) = result {
        return format!(
            r#"<p class="error">{}: cannot draw the plot: {}</p>"#,
            escape(title),
            escape(&e.to_string())
        );
    }
    // plotters writes a bare <svg>; give it an id for the page (and the tests).
    svg.replacen("<svg ", &format!(r#"<svg id="{id}" class="plot" "#), 1)
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1200px}\
h1{font-size:22px}h2{font-size:17px;margin-top:28px}\
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}\
td.n{text-align:right}tr.oom td{background:#fde2e2}.badge{background:#c62828;color:#fff;padding:1px 6px;border-radius:3px;font-size:11px}\
.meta{color:#555;font-size:13px}svg{max-width:100%;height:auto}";

/// The whole page.
pub fn render_html(data: &ReportData, top: usize) -> String {
    let span = data.times.iter().copied().fold(0.0, f64::max);
    let times = &data.times;
    let mut html = String::with_capacity(1 << 20);
    let title = format!("memscope report: {}", data.host);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    let _ = writeln!(
        html,
        "<p class=\"meta\">{} emissions from {} to {}; {} lines{}{}.</p>",
        data.emissions,
        escape(&data.first_ts),
        escape(&data.last_ts),
        data.lines,
        if data.unreadable > 0 {
            format!(", {} unreadable lines skipped", data.unreadable)
        } else {
            String::new()
        },
        if data.cut > 0 {
            format!(", {} emissions cut short left out", data.cut)
        } else {
            String::new()
        }
    );

    // Treemap.
    if let Some(state) = &data.moment {
        let _ = writeln!(
            html,
            "<h2>Where the memory went at {} (seq {})</h2>\n<p class=\"meta\">Area = bytes. MemTotal split by kind, then by process or object; hover for figures.{}</p>",
            escape(&state.ts),
            state.seq.map_or_else(|| "-".to_string(), |s| s.to_string()),
            if state.complete {
                ""
            } else {
                " The stream starts between keyframes: entities unchanged since are missing."
            }
        );
        html.push_str(&treemap_svg(state, 1150.0, 620.0));
        html.push('\n');
    }

    // Top processes' PSS, by name: processes with one name (workers, restarts) are summed.
    let series = program_series(data, top, span);
    let oom: Vec<(f64, f64, String)> = data
        .exits
        .iter()
        .filter(|e| e.exit.is_oom_kill())
        .map(|e| {
            (
                e.t,
                e.exit.pss_bytes.unwrap_or(0) as f64,
                e.exit.name.clone(),
            )
        })
        .collect();
    let _ = writeln!(
        html,
        "<h2>Top {} processes by peak PSS</h2>\n<p class=\"meta\">Processes with the same name are summed (label: name and pid, or the number of pids).</p>",
        series.len()
    );
    html.push_str(&time_plot(
        "plot-processes",
        "PSS of the top processes (red cross: OOM kill)",
        &series,
        &oom,
        span,
        &data.first_ts,
    ));

    let plot_of = |rows: &[Vec<f64>], names: &[&str]| -> Vec<Series> {
        rows.iter()
            .zip(names)
            .filter(|(r, _)| r.iter().any(|v| v.is_finite() && *v != 0.0))
            .map(|(r, n)| Series {
                label: (*n).to_string(),
                points: thin(
                    &times
                        .iter()
                        .copied()
                        .zip(r.iter().copied())
                        .collect::<Vec<_>>(),
                    span,
                ),
            })
            .collect()
    };
    let ledger_names: Vec<&str> = LEDGER_SERIES.iter().map(|(n, _)| *n).collect();
    html.push_str("\n<h2>Shmem ledger</h2>\n");
    html.push_str(&time_plot(
        "plot-ledger",
        "meminfo Shmem and what explains it",
        &plot_of(&data.ledger, &ledger_names),
        &[],
        span,
        &data.first_ts,
    ));
    html.push_str("\n<h2>meminfo</h2>\n");
    html.push_str(&time_plot(
        "plot-meminfo",
        "host memory",
        &plot_of(&data.meminfo, &MEMINFO_SERIES),
        &[],
        span,
        &data.first_ts,
    ));
    html.push('\n');
    exits_table(&mut html, &data.exits);
    html.push_str("</body></html>\n");
    html
}

/// The PSS series of the `top` names with the highest peak; each sums the processes of that name
/// alive at each emission.
fn program_series(data: &ReportData, top: usize, span: f64) -> Vec<Series> {
    struct Program {
        sum: Vec<Option<u64>>,
        pids: Vec<u64>,
    }
    let n = data.times.len();
    let mut by_name: HashMap<&str, Program> = HashMap::new();
    for p in data.procs.values() {
        let prog = by_name.entry(p.name.as_str()).or_insert_with(|| Program {
            sum: vec![None; n],
            pids: Vec::new(),
        });
        prog.pids.push(p.pid);
        for (i, v) in &p.points {
            if let Some(slot) = prog.sum.get_mut(*i as usize) {
                *slot = Some(slot.unwrap_or(0) + v);
            }
        }
    }
    let mut ranked: Vec<(&str, Program, u64)> = by_name
        .into_iter()
        .map(|(name, p)| {
            let peak = p.sum.iter().flatten().copied().max().unwrap_or(0);
            (name, p, peak)
        })
        .collect();
    ranked.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(b.0)));
    ranked
        .into_iter()
        .take(top)
        .map(|(name, p, _)| {
            let pts: Vec<(f64, f64)> = p
                .sum
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| (data.times[i], v as f64)))
                .collect();
            let label = match p.pids.as_slice() {
                [pid] => format!("{name} ({pid})"),
                pids => format!("{name} ({} pids)", pids.len()),
            };
            Series {
                label,
                points: thin(&pts, span),
            }
        })
        .collect()
}

/// Most exits listed; every OOM kill is listed whatever the count.
const MAX_EXITS: usize = 200;

fn exits_table(html: &mut String, exits: &[TimedExit]) {
    let ooms = exits.iter().filter(|e| e.exit.is_oom_kill()).count();
    let _ = writeln!(
        html,
        "<h2>Exits ({} processes, {ooms} OOM kills)</h2>",
        exits.len()
    );
    if exits.is_empty() {
        html.push_str("<p class=\"meta\">No process exited in this stream.</p>\n");
        return;
    }
    let keep_from = exits.len().saturating_sub(MAX_EXITS);
    let listed: Vec<&TimedExit> = exits
        .iter()
        .enumerate()
        .filter(|(i, e)| *i >= keep_from || e.exit.is_oom_kill())
        .map(|(_, e)| e)
        .collect();
    if listed.len() < exits.len() {
        let _ = writeln!(
            html,
            "<p class=\"meta\">The last {MAX_EXITS} exits and every OOM kill are listed.</p>"
        );
    }
    html.push_str("<table id=\"exits\"><tr><th>time</th><th>pid</th><th>name</th><th>last PSS</th><th>reason</th></tr>\n");
    for e in listed {
        let x = &e.exit;
        let reason = match x.reason.as_deref() {
            Some("oom_kill") => "<span class=\"badge\">OOM kill</span>".to_string(),
            Some(r) => escape(r),
            None if x.at_once => "exit (eBPF, at once)".to_string(),
            None => "exit".to_string(),
        };
        let _ = writeln!(
            html,
            "<tr{}><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            if x.is_oom_kill() {
                " class=\"oom\""
            } else {
                ""
            },
            escape(&x.ts),
            x.pid,
            escape(&x.name),
            x.pss_bytes.map_or_else(|| "-".to_string(), human_bytes),
            reason
        );
    }
    html.push_str("</table>\n");
}

/// Reads and renders a stream file (tests, benches).
pub fn report_file(stream: &Path, top: usize) -> anyhow::Result<String> {
    let f = std::fs::File::open(stream)
        .with_context(|| format!("{}: cannot open the stream", stream.display()))?;
    let data = read_stream(f, None, None)?;
    Ok(render_html(&data, top))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_hostile_names() {
        assert_eq!(
            escape("<script>alert('x')</script>&\u{7}"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;\u{FFFD}"
        );
    }

    #[test]
    fn thinning_keeps_peaks_and_bounds_points() {
        let pts: Vec<(f64, f64)> = (0..10_000).map(|i| (f64::from(i), 1.0)).collect();
        let mut with_peak = pts.clone();
        with_peak[5_003].1 = 99.0;
        let t = thin(&with_peak, 10_000.0);
        assert!(t.len() <= MAX_POINTS + 1, "{}", t.len());
        assert!(t.iter().any(|p| p.1 == 99.0), "peak kept");
        assert_eq!(thin(&pts[..10], 10.0).len(), 10);
    }

    #[test]
    fn treemap_kinds_partition_memtotal_without_double_counting() {
        let stream = [
            r#"{"kind":"snapshot","seq":0,"ts":"2026-11-26T00:00:00Z","keyframe":true}"#,
            r#"{"kind":"meminfo","MemTotal_bytes":10000,"MemFree_bytes":3000,"Cached_bytes":2000,"Shmem_bytes":500,"Buffers_bytes":100,"SReclaimable_bytes":200,"SUnreclaim_bytes":300,"KernelStack_bytes":50,"PageTables_bytes":50}"#,
            r#"{"kind":"process","pid":1,"name":"a","pss_bytes":1500,"pss_anon_bytes":1000,"pss_file_bytes":400,"pss_shmem_bytes":100}"#,
            r#"{"kind":"process","pid":2,"name":"b","pss_bytes":700,"pss_file_bytes":200,"pss_shmem_bytes":0}"#,
            r#"{"kind":"object","id":"file:1:2:3","object_kind":"file","label":"/lib/x.so","pss_bytes":600}"#,
            r#"{"kind":"object","id":"memfd:0:1:9","object_kind":"memfd","label":"memfd:m","pss_bytes":100}"#,
            r#"{"kind":"tmpfs","dev":"0:27","mount_points":["/dev/shm"],"allocated_bytes":250}"#,
            r#"{"kind":"shmem_ledger","shmem_bytes":500,"memfd_bytes":150,"unexplained_bytes":100}"#,
            r#"{"kind":"agent","seq":0}"#,
        ]
        .join("\n");
        let (state, _) = super::super::state::rebuild(&stream);
        let groups = treemap_groups(&state);
        let total: u64 = groups.iter().map(Group::bytes).sum();
        assert_eq!(total, 10_000, "the kinds add up to MemTotal");
        let of = |label: &str| {
            groups
                .iter()
                .find(|g| g.label.starts_with(label))
                .map_or(0, Group::bytes)
        };
        assert_eq!(
            of("processes"),
            1000 + 500,
            "anonymous PSS (b: PSS - file - shmem)"
        );
        assert_eq!(of("mapped files"), 600);
        // tmpfs 250 + memfd object 100 + fd-held memfd 50 + unexplained 100.
        assert_eq!(of("shared memory"), 500);
        assert_eq!(of("page cache"), 2000 - 500 - 600);
        assert_eq!(of("kernel"), 600);
        assert_eq!(of("free"), 3000);
        assert_eq!(
            of("other"),
            10_000 - 1500 - 600 - 500 - 900 - 600 - 100 - 3000
        );
    }

    #[test]
    fn the_treemap_shows_the_chosen_moment() {
        let mut stream = String::new();
        for seq in 0..5u64 {
            let _ = writeln!(
                stream,
                r#"{{"kind":"snapshot","seq":{seq},"ts":"2026-11-26T00:00:{:02}Z","keyframe":true}}"#,
                seq * 10
            );
            let _ = writeln!(
                stream,
                r#"{{"kind":"process","pid":{},"name":"p{seq}","pss_bytes":1}}"#,
                100 + seq
            );
            let _ = writeln!(stream, r#"{{"kind":"agent","seq":{seq}}}"#);
        }
        let name_at = |at: Option<&str>| {
            let m = at.map(|a| Moment::parse(a).expect("moment"));
            let d = read_stream(stream.as_bytes(), None, m.as_ref()).expect("reads");
            let s = d.moment.expect("a moment");
            s.entities("process")
                .map(|e| e.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(name_at(None), ["p4"], "default: the last emission");
        assert_eq!(name_at(Some("2")), ["p2"]);
        assert_eq!(
            name_at(Some("2026-11-26T00:00:25Z")),
            ["p2"],
            "last at or before"
        );
        assert_eq!(name_at(Some("2026-11-26T00:00:30Z")), ["p3"]);
        assert_eq!(name_at(Some("2026-11-27T00:00:00Z")), ["p4"]);
        let m = Moment::parse("2026-11-25T00:00:00Z").expect("moment");
        assert!(
            read_stream(stream.as_bytes(), None, Some(&m)).is_err(),
            "before the stream"
        );
        assert!(read_stream(stream.as_bytes(), None, Some(&Moment::Seq(9))).is_err());
    }

    #[test]
    fn moments_parse() {
        assert_eq!(Moment::parse("12").expect("seq"), Moment::Seq(12));
        assert!(matches!(
            Moment::parse("2026-11-26T11:01:41.790Z").expect("time"),
            Moment::Time(_)
        ));
        assert!(Moment::parse("yesterday").is_err());
    }
}
