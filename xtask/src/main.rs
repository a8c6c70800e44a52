//! `cargo xtask`: what cargo alone can't do — toolchain setup, the test lanes, golden updates, benches.
//!
//! `cargo xtask test` is the one test command (README, CI): it sets up the eBPF toolchain, checks
//! formatting and lints, runs the unprivileged lane (unit, CLI, golden, schema and view tests), a
//! short fuzz run of every parser, the view lane (the HTML report in headless chromium), then the
//! privileged lane (root + BPF), which fails loudly when it cannot run, then the packaging and
//! log-pipeline lanes (rsyslog, chDB; installs them).

mod benches;
mod ebpf_object;
mod fuzz;
mod packaging;
mod pipeline;
mod setup;

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Everything: setup, fmt, clippy, unprivileged tests, the eBPF object check, privileged
    /// tests, packaging, the pipeline lane.
    Test {
        /// Skip the privileged and pipeline lanes (root). Says so loudly; CI never passes this.
        #[arg(long)]
        skip_privileged: bool,
    },
    /// Only the privileged lane (needs root).
    TestPrivileged,
    /// Only the view lane: the HTML report in headless chromium (installs chromium when missing).
    TestView,
    /// What `show` costs against `--once`, and how long `report` takes on a day-sized stream.
    ViewBench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Only the packaging lane (root): the agent built without the eBPF toolchain attaches, least
    /// privilege, systemd unit, .deb, Kubernetes manifests.
    TestPackaging,
    /// Only the log-pipeline lane: rsyslog end to end, fleet queries on chDB (installs both; root).
    TestPipeline,
    /// Regenerate fixtures/golden/ (once.jsonl, show.txt) from fixtures/proc.
    GoldenUpdate,
    /// Regenerate the JSON Schemas under schema/ from the record types.
    SchemaUpdate,
    /// Bytes per day the agent writes on this host, `emit = "full"` and `"changes"` side by side
    /// (`cargo xtask volume -- --seconds 120 --interval 10s`).
    Volume {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The agent's RSS over time with 1000 and 3000 idle processes (root): `cargo xtask soak --
    /// --minutes N [--every SECONDS] [--processes 1000,3000] [--interval 10s] [--pid-namespace]
    /// [--agent PATH]`.
    Soak {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install the eBPF toolchain (nightly rust-src, bpf-linker for the nightly's LLVM). Idempotent.
    Setup,
    /// Rebuild the committed eBPF object and its stamp (memscope-ebpf/prebuilt/). `--check`: fail
    /// when the committed object is stale or the pinned toolchain does not rebuild it exactly.
    EbpfObject {
        #[arg(long)]
        check: bool,
    },
    /// Measure the tracepoint programs' overhead on a 4 KiB mmap+munmap loop (root).
    ProbeBench,
    /// Fuzz the /proc parsers (cargo-fuzz, nightly): every target, or the ones named, for N
    /// seconds each. Installs cargo-fuzz if missing.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        targets: Vec<String>,
    },
    /// Cost ladder: polling vs eBPF steady-state tick vs a full smaps pass, ticks until a change
    /// statm misses is shown, then the programs' syscall overhead (root). Extra arguments go to the
    /// ladder bench (`cargo xtask bench -- --workers 1000`, `-- --workers 50 --churn-all-ms 200`,
    /// `-- --forks-per-s 500`; `-- --help`).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Sharing: one exit among 1000 sharers against a normal tick, and start-up at 3000 sharers
    /// against `--once` (root; `cargo xtask bench-sharing -- --only exit --sharers 500`).
    BenchSharing {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// memscope against smem, smemstat and process-exporter, and the stall of a monitored 2 GiB
    /// process (root; installs the peers). `cargo xtask bench-peers -- --sizes 300 --repeats 3`.
    BenchPeers {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Test { skip_privileged } => test(skip_privileged),
        Cmd::TestPrivileged => privileged_lane(),
        Cmd::TestView => view_lane(),
        Cmd::ViewBench { args } => benches::view(&args),
        Cmd::TestPackaging => packaging::lane(&workspace_root()),
        Cmd::TestPipeline => pipeline::lane(),
        Cmd::Setup => setup::setup_ebpf_toolchain(),
        Cmd::EbpfObject { check: false } => ebpf_object::refresh(&workspace_root()),
        Cmd::EbpfObject { check: true } => ebpf_object::check(&workspace_root()),
        Cmd::ProbeBench => benches::probe(),
        Cmd::Bench { args } => benches::ladder(&args),
        Cmd::BenchSharing { args } => benches::sharing(&args),
        Cmd::BenchPeers { args } => benches::peers(&args),
        Cmd::Fuzz { seconds, targets } => fuzz::run(seconds, &targets),
        Cmd::Volume { args } => benches::volume(&args),
        Cmd::Soak { args } => benches::soak(&args),
        Cmd::SchemaUpdate => cargo(
            &[
                "test",
                "-p",
                "memscope-tests",
                "--test",
                "schema",
                "checked_in_schemas_match_the_record_types",
            ],
            &[("MEMSCOPE_UPDATE_SCHEMA", "1")],
        ),
        Cmd::GoldenUpdate => cargo(GOLDEN_TESTS, &[("MEMSCOPE_UPDATE_GOLDEN", "1")]),
    }
}

/// The golden tests over `fixtures/proc`: the records (`once.jsonl`) and `show`'s tables
/// (`show.txt`); `golden-update` runs them with `MEMSCOPE_UPDATE_GOLDEN=1`.
const GOLDEN_TESTS: &[&str] = &[
    "test",
    "-p",
    "memscope-tests",
    "--test",
    "golden",
    "--test",
    "view",
];

/// Runs `cargo ARGS` from the workspace root with extra environment, failing on a non-zero exit.
fn cargo(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Where cargo puts the binaries of `profile` (`debug`, `release`): `CARGO_TARGET_DIR` or
/// `target/`, then the profile.
fn profile_dir(profile: &str) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), std::path::PathBuf::from)
        .join(profile)
}

/// Where `cargo build --release` puts binaries.
fn release_dir() -> std::path::PathBuf {
    profile_dir("release")
}

/// Runs the release binary `name` of the workspace with `args`, failing on a non-zero exit.
fn run_release_bin(name: &str, args: &[String]) -> Result<()> {
    run_checked(Command::new(release_dir().join(name)).args(args))
}

/// Installs Debian packages with apt-get (`apt-get update` first), non-interactively.
fn apt_install(packages: &[&str]) -> Result<()> {
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Runs `command`, failing on a non-zero exit.
fn run_checked(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or(manifest)
}

fn is_root() -> bool {
    // Effective uid from /proc/self/status (line "Uid: real effective saved fs").
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|v| v == "0"))
        })
        .unwrap_or(false)
}

fn test(skip_privileged: bool) -> Result<()> {
    // The eBPF build needs nightly's rust-src and bpf-linker: install them on a fresh machine.
    setup::setup_ebpf_toolchain()?;
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    // Unprivileged lane: unit tests, CLI tests, golden end-to-end over fixtures.
    cargo(&["test", "--workspace", "--exclude", "memscope-tests"], &[])?;
    // The tests crate's own unit tests (the bench statistics, the stream helpers).
    cargo(&["test", "-p", "memscope-tests", "--lib"], &[])?;
    cargo(GOLDEN_TESTS, &[])?;
    cargo(&["test", "-p", "memscope-tests", "--test", "schema"], &[])?;
    // Every /proc parser under libFuzzer, briefly (`cargo xtask fuzz` for a long run).
    fuzz::run(fuzz::LANE_SECONDS, &[])?;
    // The committed eBPF object must match the sources and rebuild byte for byte.
    ebpf_object::check(&workspace_root())?;
    view_lane()?;
    if skip_privileged {
        eprintln!(
            "xtask: *** privileged, packaging and pipeline lanes SKIPPED (--skip-privileged): live, eBPF, packaging and log-pipeline tests did not run ***"
        );
        return Ok(());
    }
    privileged_lane()?;
    packaging::lane(&workspace_root())?;
    pipeline::lane()
}

/// The view lane: the report opened in headless chromium (installed from Debian when missing).
fn view_lane() -> Result<()> {
    packaging::ensure_program("chromium", &["chromium"])?;
    cargo(
        &["test", "-p", "memscope-tests", "--test", "view_browser"],
        &[],
    )
}

fn privileged_lane() -> Result<()> {
    if !is_root() {
        bail!(
            "the privileged lane (live workloads, eBPF) needs root: run `sudo cargo xtask test`, or pass --skip-privileged to run only the unprivileged lane"
        );
    }
    // The live lane runs the agent binary itself as an unprivileged user (`live.rs`): build it, and
    // say where it is.
    cargo(&["build", "-p", "memscope-agent"], &[])?;
    let agent = profile_dir("debug").join("memscope-agent");
    let agent = agent.to_str().context("target directory is not UTF-8")?;
    cargo(
        &[
            "test",
            "-p",
            "memscope-tests",
            "--test",
            "live",
            "--test",
            "ebpf",
            "--test",
            "ladder",
            "--test",
            "cgroup",
            "--",
            "--test-threads=1",
        ],
        &[("MEMSCOPE_AGENT_BIN", agent)],
    )
}
