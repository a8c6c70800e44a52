//! `cargo xtask view-bench`: what `memscope-agent show` costs against the agent's own `--once`,
//! and how long `memscope-agent report` takes on a day-sized stream (8640 emissions at 10 s), in
//! one run.
//!
//! Builds `memscope-agent` and `view_bench` (of `memscope-tests`) in release, then runs the bench
//! with the agent's path; extra arguments go to the bench (`cargo xtask view-bench -- --runs 11`).
//! It prints figures; no test times anything.

pub fn run(args: &[String]) -> anyhow::Result<()> {
    crate::run_agent_bench(&["view_bench"], args)
}
