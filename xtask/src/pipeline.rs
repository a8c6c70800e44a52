//! `cargo xtask test-pipeline`: the log-pipeline lane. Installs what it needs, then runs
//! `tests/tests/pipeline.rs` (rsyslog ships the rotating file sink over RELP, end to end) and
//! `tests/tests/fleet.rs` (the documented ClickHouse queries on chDB, an in-process ClickHouse) and
//! `tests/tests/shipper_configs.rs` (the Vector, Fluent Bit and systemd configs).
//!
//! - rsyslog, rsyslog-relp and systemd (for `systemd-analyze verify`) from Debian (`apt-get`,
//!   root), when missing;
//! - chDB from PyPI (`chdb-core`, pinned) in a virtualenv at `target/pipeline-venv`, when it does
//!   not import there.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::run_checked as run;

/// The chDB release the fleet queries were written and checked against.
const CHDB_CORE: &str = "chdb-core==26.9.0";
const RSYSLOG_RELP_MODULE: &str = "/usr/lib/x86_64-linux-gnu/rsyslog/omrelp.so";

pub fn lane() -> Result<()> {
    ensure_debian_packages()?;
    let python = ensure_chdb()?;
    crate::cargo(&["build", "-p", "memscope-agent"], &[])?;
    let python = python.display().to_string();
    crate::cargo(
        &[
            "test",
            "-p",
            "memscope-tests",
            "--test",
            "pipeline",
            "--test",
            "fleet",
            "--test",
            "shipper_configs",
        ],
        &[("MEMSCOPE_CHDB_PYTHON", python.as_str())],
    )
}

/// Debian packages the lane runs, each with a file that shows it is installed.
const DEBIAN_PACKAGES: [(&str, &str); 3] = [
    ("rsyslog", "/usr/sbin/rsyslogd"),
    ("rsyslog-relp", RSYSLOG_RELP_MODULE),
    ("systemd", "/usr/bin/systemd-analyze"),
];

fn ensure_debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        eprintln!("pipeline: rsyslog, rsyslog-relp, systemd-analyze: present");
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "the pipeline lane needs the Debian packages {} and installs them with apt-get, which \
             needs root: run `sudo cargo xtask test-pipeline`",
            missing.join(", ")
        );
    }
    eprintln!("pipeline: installing {} with apt-get", missing.join(", "));
    crate::apt_install(&missing)
}

/// Returns the virtualenv's python, with chDB importable.
fn ensure_chdb() -> Result<PathBuf> {
    let venv = crate::workspace_root().join("target/pipeline-venv");
    let python = venv.join("bin/python");
    if imports_chdb(&python) {
        eprintln!("pipeline: chDB in {}: present", venv.display());
        return Ok(python);
    }
    eprintln!("pipeline: installing {CHDB_CORE} into {}", venv.display());
    let python3 = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    run(Command::new(&python3).arg("-m").arg("venv").arg(&venv))
        .with_context(|| format!("creating a virtualenv at {} with {python3}", venv.display()))?;
    run(Command::new(&python).args(["-m", "pip", "install", "-q", CHDB_CORE]))?;
    if !imports_chdb(&python) {
        bail!(
            "{}: chdb does not import after installing {CHDB_CORE}",
            python.display()
        );
    }
    Ok(python)
}

fn imports_chdb(python: &Path) -> bool {
    python.exists()
        && Command::new(python)
            .args(["-c", "import chdb"])
            .status()
            .is_ok_and(|s| s.success())
}
