//! The view (issue 13), unprivileged: `show`'s tables over `fixtures/proc` against a golden file,
//! column by column; the state rebuilt from a `changes` stream equals the `full` stream's at every
//! emission; the HTML report of a synthesized stream holds what it must. The browser check of the
//! report is in `view_browser.rs` (the `view` lane).

use std::collections::BTreeMap;

use memscope_agent::view::{
    human_bytes,
    report::{read_stream, render_html},
    state::{Rebuilder, State, Step, rebuild},
    table::{ShowOptions, SortKey, render},
};
use memscope_tests::{
    once_over_fixtures,
    synth::{SynthOptions, synthesize},
    workspace_root,
};
use serde_json::Value;

fn fixture_lines() -> (Vec<Value>, String) {
    let records = once_over_fixtures().expect("agent runs over fixtures");
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    (records, text)
}

/// The tables of `text`, with the checkout's path replaced in the records before rendering, so
/// truncated cells do not depend on where the repository is cloned.
fn show_text(text: &str, opts: &ShowOptions) -> String {
    let prefix = workspace_root().display().to_string();
    let (mut state, _) = rebuild(&text.replace(&prefix, "<workspace>"));
    state.ts = "<ts>".to_string();
    render(&state, opts)
}

/// Splits a table line into cells at runs of two or more spaces.
fn cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn show_over_fixtures_matches_golden_column_by_column() {
    let (_, text) = fixture_lines();
    let got = show_text(
        &text,
        &ShowOptions {
            top: 10,
            sort: SortKey::Pss,
            width: 120,
        },
    );
    let golden = workspace_root().join("fixtures/golden/show.txt");
    if std::env::var_os("MEMSCOPE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).expect("write golden");
        eprintln!("updated {}", golden.display());
        return;
    }
    let want = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask golden-update`", golden.display()));
    let (got_lines, want_lines): (Vec<&str>, Vec<&str>) =
        (got.lines().collect(), want.lines().collect());
    // The header row of the table each line belongs to names the columns in the message.
    let mut header: Vec<String> = Vec::new();
    for (i, (g, w)) in got_lines.iter().zip(&want_lines).enumerate() {
        if w.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && !w.contains(" of ")
            && w.to_uppercase() == *w
        {
            header = cells(w);
        }
        if g != w {
            let (gc, wc) = (cells(g), cells(w));
            for (c, (a, b)) in gc.iter().zip(&wc).enumerate() {
                assert_eq!(
                    a,
                    b,
                    "line {}: column {} ({}) differs\n got: {g}\nwant: {w}\n(run `cargo xtask golden-update` if intended)",
                    i + 1,
                    c + 1,
                    header.get(c).map_or("?", String::as_str)
                );
            }
            panic!(
                "line {} differs (alignment or column count)\n got: {g:?}\nwant: {w:?}",
                i + 1
            );
        }
    }
    assert_eq!(got_lines.len(), want_lines.len(), "line counts differ");
}

#[test]
fn process_rows_show_the_records_figures() {
    let (records, text) = fixture_lines();
    let out = show_text(
        &text,
        &ShowOptions {
            top: 10,
            sort: SortKey::Uss,
            width: 200,
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("PROCESSES"))
        .expect("process table");
    let header = cells(lines[start + 1]);
    assert_eq!(
        header,
        [
            "PID",
            "USER",
            "NAME",
            "PSS",
            "USS",
            "RSS",
            "SWAP",
            "CGROUP/CONTAINER"
        ]
    );
    let rows: Vec<Vec<String>> = lines[start + 2..]
        .iter()
        .take_while(|l| !l.is_empty() && !l.starts_with('…') && !l.starts_with('~'))
        .map(|l| cells(l))
        .collect();
    let procs: Vec<&Value> = records.iter().filter(|r| r["kind"] == "process").collect();
    assert_eq!(rows.len(), procs.len(), "every fixture process shown");
    let mut last_uss = u64::MAX;
    for row in &rows {
        let rec = procs
            .iter()
            .find(|p| p["pid"].as_u64().map(|v| v.to_string()).as_deref() == Some(row[0].as_str()))
            .unwrap_or_else(|| panic!("no record for row {row:?}"));
        assert_eq!(row[1], rec["user"].as_str().expect("user"));
        assert_eq!(row[2], rec["name"].as_str().expect("name"));
        for (col, field) in [
            (3, "pss_bytes"),
            (4, "uss_bytes"),
            (5, "rss_bytes"),
            (6, "swap_bytes"),
        ] {
            let v = rec[field].as_u64().expect("figure");
            assert_eq!(
                row[col],
                human_bytes(v),
                "{} of pid {}",
                header[col],
                row[0]
            );
        }
        let owner = memscope_agent::view::owner_label(rec).unwrap_or_default();
        assert_eq!(
            row.get(7).map_or("", String::as_str),
            owner,
            "cgroup of pid {}",
            row[0]
        );
        let uss = rec["uss_bytes"].as_u64().expect("uss");
        assert!(uss <= last_uss, "sorted by USS, descending");
        last_uss = uss;
    }
}

#[test]
fn narrow_terminal_tables_fit() {
    let (_, text) = fixture_lines();
    for width in [60, 80] {
        let out = show_text(
            &text,
            &ShowOptions {
                top: 5,
                sort: SortKey::Pss,
                width,
            },
        );
        for l in out.lines() {
            assert!(l.chars().count() <= width, "{width} columns: {l:?}");
        }
        assert!(out.contains("fx) worker"), "names stay readable at {width}");
    }
}

/// Entities by (kind, key): the record without its header fields.
type Entities = BTreeMap<(String, String), String>;

/// The state's entities without the header fields (`ts`, `seq` differ for unchanged entities).
fn entities(state: &State) -> Entities {
    let mut out = BTreeMap::new();
    for kind in state.kinds() {
        for e in state.entities(kind) {
            let mut v: Value = serde_json::from_str(&e.raw).expect("raw line is JSON");
            let o = v.as_object_mut().expect("object");
            for k in ["ts", "seq", "schema", "host"] {
                o.remove(k);
            }
            let key = memscope_agent::view::state::Line::parse(&e.raw)
                .expect("line")
                .entity_key();
            out.insert((kind.to_string(), key), v.to_string());
        }
    }
    out
}

fn states_per_emission(stream: &str) -> (Vec<Entities>, usize) {
    let mut r = Rebuilder::new();
    let mut out = Vec::new();
    let mut exits = 0;
    for line in stream.lines() {
        match r.push(line) {
            Step::Emission => out.push(entities(r.state())),
            Step::Exit(_) => exits += 1,
            Step::Unreadable => panic!("unreadable line: {line}"),
            Step::Applied => {}
        }
    }
    (out, exits)
}

#[test]
fn a_changes_stream_rebuilds_the_full_state_at_every_emission() {
    let (records, _) = fixture_lines();
    let n = 400;
    let full = synthesize(
        &records,
        &SynthOptions {
            emissions: n,
            interval_s: 10,
            keyframe_every: None,
            extra_processes: 0,
        },
    );
    let changes = synthesize(
        &records,
        &SynthOptions {
            emissions: n,
            interval_s: 10,
            keyframe_every: Some(10),
            extra_processes: 0,
        },
    );
    assert!(
        changes.len() * 2 < full.len(),
        "changes mode sends less: {} vs {} bytes",
        changes.len(),
        full.len()
    );
    let (a, exits_full) = states_per_emission(&full);
    let (b, exits_changes) = states_per_emission(&changes);
    assert_eq!(a.len(), n);
    assert_eq!(b.len(), n);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "emission {i}: rebuilt state differs");
    }
    assert_eq!(exits_full, exits_changes);
    assert_eq!(exits_full, 8, "7 cron jobs and one OOM kill exit");
}

#[test]
fn report_of_a_stream_has_treemap_plots_and_marked_oom_kills() {
    let (records, _) = fixture_lines();
    let stream = synthesize(
        &records,
        &SynthOptions {
            emissions: 720,
            interval_s: 10,
            keyframe_every: Some(10),
            extra_processes: 0,
        },
    );
    let data = read_stream(stream.as_bytes(), None, None).expect("reads");
    assert_eq!(data.emissions, 720);
    let ooms: Vec<_> = data.exits.iter().filter(|e| e.exit.is_oom_kill()).collect();
    assert_eq!(ooms.len(), 2, "memhog is killed every 293 emissions");
    assert_eq!(ooms[0].exit.name, "memhog");
    let html = render_html(&data, 8);
    for needle in [
        "<svg id=\"treemap\"",
        "id=\"plot-processes\"",
        "id=\"plot-ledger\"",
        "id=\"plot-meminfo\"",
        "<table id=\"exits\"",
        "<tr class=\"oom\">",
        "java (",
        "postgres (",
        "&lt;b&gt;x&lt;/b&gt;",
    ] {
        assert!(html.contains(needle), "report lacks {needle}");
    }
    assert!(!html.contains("<b>x</b>"), "a process name is escaped");
    for fetch in ["src=\"http", "href=\"http", "url(", "<script", "<link"] {
        assert!(
            !html.contains(fetch),
            "report must be self-contained: {fetch}"
        );
    }
}
