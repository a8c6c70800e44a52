//! `cargo xtask view-bench`: what `memscope-agent show` costs against the agent's own `--once`,
//! and how long `memscope-agent report` takes on a day-sized stream (8640 emissions at 10 s), in
//! one run.
//!
//! Builds `memscope-agent` and `view_bench` (of `memscope-tests`) in release, then runs the bench
//! with the agent's path; extra arguments go to the bench (`cargo xtask view-bench -- --runs 11`).
//! It prints figures; no test times anything.

pub fn run(args: &[String]) -> anyhow::Result<()> {
    crate::cargo(
        &[
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
        ],
        &[],
    )?;
    let agent = crate::release_dir().join("memscope-agent");
    let mut bench_args = vec!["--agent".to_string(), agent.display().to_string()];
    bench_args.extend_from_slice(args);
    crate::run_release_bin("view_bench", &bench_args)
}
