//! Helpers for memscope's integration tests: run the agent once (as a library) and read its lines.

use std::path::{Path, PathBuf};

use memscope_agent::config::{Config, SinkKind};
use serde_json::Value;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Runs the agent once with `config` (its output redirected to a temporary file) and returns the
/// emitted lines parsed as JSON.
pub fn run_once(mut config: Config) -> anyhow::Result<Vec<Value>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("out.jsonl");
    config.output.sink = SinkKind::File;
    config.output.path = Some(path.clone());
    let sink = memscope_agent::runtime::open_sink(&config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(memscope_agent::runtime::run(
        config,
        sink,
        true,
        std::future::pending(),
    ))?;
    let text = std::fs::read_to_string(&path)?;
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("not JSON ({e}): {l}")))
        .collect()
}

/// Panics unless running as root: for the privileged lane, which must fail loudly, never pass empty.
pub fn require_root(lane: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the {lane} tests need root (euid is {euid}); run them through `sudo cargo xtask test`"
    );
}
