//! `cargo xtask bench-peers`: memscope against smem, smemstat and prometheus-process-exporter on
//! one shared-memory workload, in one run (root). Installs the three from Debian when any is
//! missing (one `apt-get update`), builds the agent, `peers_bench` and `memhog` of
//! `memscope-tests` in release, and runs the bench; extra arguments go to it
//! (`cargo xtask bench-peers -- --sizes 300 --repeats 3`). It prints tables; what it measures is
//! described in `tests/src/bin/peers_bench.rs` and BENCHMARKS.md. Never part of `cargo xtask test`.

use anyhow::bail;
use memscope_build::toolchain::find_on_path;

/// The peers' programs and the Debian packages that hold them.
const PEERS: [(&str, &str); 3] = [
    ("smem", "smem"),
    ("smemstat", "smemstat"),
    ("prometheus-process-exporter", "prometheus-process-exporter"),
];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!(
            "the peers bench needs root (every process's smaps, eBPF, apt-get): run `sudo cargo xtask bench-peers`"
        );
    }
    if PEERS
        .iter()
        .any(|(program, _)| find_on_path(program).is_none())
    {
        crate::apt_install(&PEERS.map(|(_, package)| package))?;
    }
    for (program, package) in PEERS {
        if find_on_path(program).is_none() {
            bail!("{program} still missing after installing the Debian package {package}");
        }
    }
    crate::run_agent_bench(&["peers_bench", "memhog"], args)
}
