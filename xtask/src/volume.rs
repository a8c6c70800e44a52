//! `cargo xtask volume`: how many bytes a day the agent writes on this host, in each emit mode.
//! Builds the agent, `volume_bench` and `memhog` of `memscope-tests` in release and runs the bench
//! (`tests/src/bin/volume_bench.rs` says what it measures); arguments go to it
//! (`cargo xtask volume -- --seconds 120 --workers 300 --pid-namespace`).

pub fn run(args: &[String]) -> anyhow::Result<()> {
    crate::run_agent_bench(&["volume_bench", "memhog"], args)
}
