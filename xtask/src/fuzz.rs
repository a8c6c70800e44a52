//! `cargo xtask fuzz [--seconds N] [TARGET…]`: runs the cargo-fuzz targets in `fuzz/` (one per
//! `/proc` parser), each for N seconds, from a corpus seeded with the matching `fixtures/` files.
//! Installs `cargo-fuzz` when it is missing. The test lane runs every target briefly; a long run
//! is `cargo xtask fuzz --seconds 600 smaps`.
//!
//! Built with debug assertions (overflow checks on) and AddressSanitizer; libFuzzer's
//! `-malloc_limit_mb` turns an unbounded allocation into a failure. Findings land in
//! `fuzz/artifacts/<target>/`; reproduce one with `cargo +nightly fuzz run <target> <file>`.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::workspace_root;

/// Every target, with the fixture files that seed its corpus.
pub const TARGETS: [(&str, &[&str]); 13] = [
    ("meminfo", &["proc/meminfo", "cases/meminfo_hugepages"]),
    (
        "status",
        &["proc/1/status", "proc/2/status", "proc/43/status"],
    ),
    ("statm", &["proc/43/statm", "proc/44/statm"]),
    ("stat", &["proc/1/stat", "proc/2/stat", "proc/43/stat"]),
    (
        "smaps_rollup",
        &["proc/43/smaps_rollup", "cases/smaps_rollup_old_kernel"],
    ),
    (
        "smaps",
        &["proc/43/smaps", "cases/smaps_edge", "cases/smaps_truncated"],
    ),
    (
        "mountinfo",
        &["proc/self/mountinfo", "cases/mountinfo_escapes"],
    ),
    (
        "sysvipc",
        &[
            "proc/sysvipc/shm",
            "cases/sysvipc_shm_huge",
            "cases/sysvipc_shm_old_kernel",
        ],
    ),
    (
        "cmdline",
        &["proc/1/cmdline", "proc/43/cmdline", "proc/44/cmdline"],
    ),
    (
        "cgroup_files",
        &[
            "cgroup/v2/memory.stat",
            "cgroup/v2/kubepods.slice/memory.events",
            "cgroup/v2/kubepods.slice/memory.current",
            "cgroup/v2/kubepods.slice/memory.max",
            "cgroup/v1/memory/memory.stat",
        ],
    ),
    (
        "cgroup_pressure",
        &[
            "cgroup/v2/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b5e1a52_0c4f_4f8e_9d2a_7c3b1e0f9a84.slice/memory.pressure",
        ],
    ),
    (
        "proc_cgroup",
        &[
            "cgroup/proc-pid-cgroup/v1-hybrid",
            "cgroup/proc-pid-cgroup/v2-docker",
            "proc/43/cgroup",
        ],
    ),
    ("container_id", &["cgroup/container-paths"]),
];

/// Seconds per target in the test lane: 13 targets, about two and a half minutes in all.
pub const LANE_SECONDS: u64 = 10;

pub fn run(seconds: u64, only: &[String]) -> Result<()> {
    for name in only {
        if !TARGETS.iter().any(|(t, _)| t == name) {
            let all: Vec<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
            bail!(
                "no fuzz target {name:?}; the targets are {}",
                all.join(", ")
            );
        }
    }
    ensure_cargo_fuzz()?;
    let root = workspace_root();
    let target_dir = root.join("target/fuzz");
    eprintln!("xtask: building the fuzz targets (nightly, ASan, debug assertions)");
    cargo_fuzz(&root, "build", &target_dir, &["-a"])?;
    for (name, seeds) in TARGETS {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let corpus = target_dir.join("corpus").join(name);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        for seed in seeds {
            let from = root.join("fixtures").join(seed);
            let to = corpus.join(format!("fixture-{}", seed.replace('/', "-")));
            std::fs::copy(&from, &to)
                .with_context(|| format!("seeding {} from {}", to.display(), from.display()))?;
        }
        eprintln!("xtask: fuzzing {name} for {seconds} s");
        let corpus = corpus.display().to_string();
        let max_time = format!("-max_total_time={seconds}");
        cargo_fuzz(
            &root,
            "run",
            &target_dir,
            &[
                "-a",
                name,
                &corpus,
                "--",
                &max_time,
                "-malloc_limit_mb=512",
                "-rss_limit_mb=2048",
                "-timeout=10",
                "-max_len=262144",
                "-print_final_stats=1",
            ],
        )
        .with_context(|| format!("fuzz target {name} failed; see fuzz/artifacts/{name}/"))?;
    }
    Ok(())
}

/// `cargo +nightly fuzz SUB --target-dir DIR ARGS…` (ARGS may hold `--` and libFuzzer flags).
fn cargo_fuzz(root: &Path, sub: &str, target_dir: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new("cargo")
        .args(["+nightly", "fuzz", sub, "--target-dir"])
        .arg(target_dir)
        .args(args)
        // The parsers need no eBPF object; skip building it for the sanitizer build.
        .env("MEMSCOPE_NO_EBPF", "1")
        .env_remove("MEMSCOPE_REQUIRE_EBPF")
        .current_dir(root)
        .status()
        .context("running `cargo +nightly fuzz`")?;
    if !status.success() {
        bail!(
            "`cargo +nightly fuzz {sub} {}` failed ({status})",
            args.join(" ")
        );
    }
    Ok(())
}

/// Installs cargo-fuzz from crates.io when `cargo fuzz` is not there.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: cargo-fuzz missing, running `cargo install cargo-fuzz --locked`");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running `cargo install cargo-fuzz`")?;
    if !status.success() {
        bail!("`cargo install cargo-fuzz --locked` failed ({status})");
    }
    Ok(())
}
