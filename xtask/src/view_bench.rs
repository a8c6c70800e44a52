//! `cargo xtask view-bench`: what `memscope-agent show` costs against the agent's own `--once`,
//! and how long `memscope-agent report` takes on a day-sized stream (8640 emissions at 10 s), in
//! one run.
//!
//! Builds `memscope-agent` and `view_bench` (of `memscope-tests`) in release, then runs the bench
//! with the agent's path; extra arguments go to the bench (`cargo xtask view-bench -- --runs 11`).
//! It prints figures; no test times anything.

use std::process::Command;

use anyhow::{Context as _, bail};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = crate::workspace_root();
    let build = [
        "build",
        "--release",
        "--package",
        "memscope-agent",
        "--package",
        "memscope-tests",
        "--bin",
        "memscope-agent",
        "--bin",
        "view_bench",
    ];
    eprintln!("xtask: cargo {}", build.join(" "));
    let status = Command::new(&cargo)
        .args(build)
        .current_dir(&root)
        .status()
        .context("building the view bench")?;
    if !status.success() {
        bail!("building the view bench failed: {status}");
    }
    let release = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), std::path::PathBuf::from)
        .join("release");
    let bench = release.join("view_bench");
    let status = Command::new(&bench)
        .arg("--agent")
        .arg(release.join("memscope-agent"))
        .args(args)
        .status()
        .with_context(|| format!("running {}", bench.display()))?;
    if !status.success() {
        bail!("view_bench failed: {status}");
    }
    Ok(())
}
