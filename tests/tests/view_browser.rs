//! The `view` lane: the HTML report opened in a real headless browser (Debian's `chromium`, which
//! `cargo xtask test-view` installs). The page must load with no console message at all (it has no
//! script; any message is an error such as a blocked fetch), hold the treemap and the three plots,
//! and show the top processes' names. A canary page first proves that console messages are seen.
//!
//! A screenshot is taken too; with `MEMSCOPE_VIEW_SCREENSHOT=PATH` it is copied to PATH (that is
//! how `docs/view-report.png` is made).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use memscope_agent::view::report::{ReportArgs, run as report};
use memscope_tests::{
    once_over_fixtures,
    synth::{SynthOptions, synthesize},
};

const TIMEOUT: Duration = Duration::from_secs(120);

fn chromium() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("chromium is not installed: run this lane through `cargo xtask test-view`, which installs it (apt-get install chromium)")
    })
}

/// Runs headless chromium on `page` with `mode` (`--dump-dom` or `--screenshot=…`); returns
/// (stdout, stderr). Fails on a non-zero exit or after [`TIMEOUT`].
fn browse(page: &Path, mode: &[String], scratch: &Path) -> (String, String) {
    use std::os::unix::process::CommandExt as _;
    let profile = tempfile::tempdir_in(scratch).expect("profile dir");
    let (out, err) = (scratch.join("stdout"), scratch.join("stderr"));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(mode)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        // Its own process group, so a hung browser is ended with all its helpers.
        .process_group(0)
        .spawn()
        .expect("starting chromium");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for chromium") {
            break s;
        }
        if started.elapsed() > TIMEOUT {
            let pgid = child.id() as i32;
            // SAFETY: signals the process group of the child this test started.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            panic!("chromium did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(status.success(), "chromium failed: {status}\n{stderr}");
    (stdout, stderr)
}

fn console_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

#[test]
fn report_loads_in_chromium_without_console_errors() {
    let dir = tempfile::tempdir().expect("tempdir");

    // The canary: a console message must be seen, or the check below proves nothing.
    let canary = dir.path().join("canary.html");
    std::fs::write(
        &canary,
        "<html><body><script>console.error('memscope-canary')</script></body></html>",
    )
    .expect("canary page");
    let (_, err) = browse(&canary, &["--dump-dom".to_string()], dir.path());
    assert!(
        console_lines(&err)
            .iter()
            .any(|l| l.contains("memscope-canary")),
        "chromium's console messages are not visible on stderr:\n{err}"
    );

    // A recorded stream (synthesized from the fixtures' records: 6 hours at 10 s, `changes`).
    let records = once_over_fixtures().expect("agent runs over fixtures");
    let stream = dir.path().join("stream.jsonl");
    std::fs::write(
        &stream,
        synthesize(
            &records,
            &SynthOptions {
                emissions: 2160,
                interval_s: 10,
                keyframe_every: Some(10),
                extra_processes: 0,
            },
        ),
    )
    .expect("stream");
    let html = dir.path().join("report.html");
    report(&ReportArgs {
        stream: stream.clone(),
        output: Some(html.clone()),
        at: None,
        top: 8,
    })
    .expect("report written");

    let (dom, err) = browse(&html, &["--dump-dom".to_string()], dir.path());
    let console = console_lines(&err);
    assert!(console.is_empty(), "console messages: {console:#?}");
    for needle in [
        "<svg id=\"treemap\"",
        "class=\"leaf\"",
        "<svg id=\"plot-processes\"",
        "<svg id=\"plot-ledger\"",
        "<svg id=\"plot-meminfo\"",
        "<polyline",
        "OOM kill",
    ] {
        assert!(dom.contains(needle), "the loaded page lacks {needle}");
    }
    // The top processes of the stream by peak PSS, named in the plot's legend and the treemap.
    for name in ["memhog", "java", "postgres", "node", "redis-server"] {
        assert!(
            dom.contains(&format!(">{name} (")),
            "{name} is not shown on the page"
        );
    }
    assert!(
        dom.contains("&lt;b&gt;x&lt;/b&gt;") && !dom.contains("<b>x</b>"),
        "a process named <b>x</b> is shown as text, not markup"
    );

    let png = dir.path().join("report.png");
    browse(
        &html,
        &[
            "--window-size=1280,2300".to_string(),
            format!("--screenshot={}", png.display()),
        ],
        dir.path(),
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG"), "screenshot is a PNG");
    assert!(
        bytes.len() > 50_000,
        "screenshot has content: {} bytes",
        bytes.len()
    );
    if let Some(to) = std::env::var_os("MEMSCOPE_VIEW_SCREENSHOT") {
        std::fs::copy(&png, &to).expect("copying the screenshot");
        eprintln!("screenshot: {}", PathBuf::from(to).display());
    }
}
