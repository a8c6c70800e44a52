//! The bench commands: each builds benchmark binaries of `memscope-tests` (`tests/src/bin/`) in
//! release and runs one with the command's extra arguments, its tables on stdout. What a bench
//! measures is said in its binary's header. Benchmarks print figures; none is part of `cargo xtask
//! test`, and none is a timed test.

use anyhow::{Result, bail};
use memscope_build::toolchain::find_on_path;

/// A benchmark binary of `memscope-tests` and how to launch it.
struct Bench<'a> {
    /// `cargo xtask COMMAND`, for the messages.
    command: &'a str,
    /// Why it needs root, when it does: said before anything is built.
    root: Option<&'a str>,
    /// The bench binary.
    bench: &'a str,
    /// The binaries it starts or that run after it (`memhog`, `probe_bench`), built with it.
    with: &'a [&'a str],
    /// It runs the agent binary: `--agent PATH` of a fresh release build goes first in its
    /// arguments, unless they name an agent themselves (then nothing of the agent is built).
    agent: bool,
    /// It measures the eBPF programs: build with `MEMSCOPE_REQUIRE_EBPF=1`, so that a missing eBPF
    /// object is a build error, never a polling-only figure.
    require_ebpf: bool,
}

impl Bench<'_> {
    /// Fails, before anything is built or installed, when the bench needs root and this is not
    /// root (`--help` needs nothing).
    fn check_root(&self, args: &[String]) -> Result<()> {
        let help = args.iter().any(|a| a == "--help" || a == "-h");
        if let Some(why) = self.root
            && !help
            && !crate::is_root()
        {
            bail!(
                "cargo xtask {} needs root ({why}): run it as root",
                self.command
            );
        }
        Ok(())
    }

    /// Checks root when needed, builds, then runs the bench with `args`.
    fn run(&self, args: &[String]) -> Result<()> {
        self.check_root(args)?;
        let build_agent = self.agent && !args.iter().any(|a| a == "--agent");
        let mut build = vec!["build", "--release", "--package", "memscope-tests"];
        if build_agent {
            build.extend(["--package", "memscope-agent", "--bin", "memscope-agent"]);
        }
        for bin in std::iter::once(&self.bench).chain(self.with) {
            build.extend(["--bin", bin]);
        }
        let env: &[(&str, &str)] = if self.require_ebpf {
            &[("MEMSCOPE_REQUIRE_EBPF", "1")]
        } else {
            &[]
        };
        crate::cargo(&build, env)?;
        let mut bench_args = Vec::new();
        if build_agent {
            let agent = crate::release_dir().join("memscope-agent");
            bench_args.extend(["--agent".to_string(), agent.display().to_string()]);
        }
        bench_args.extend_from_slice(args);
        crate::run_release_bin(self.bench, &bench_args)
    }
}

/// `cargo xtask bench`: the cost ladder's steady-state tick in polling and eBPF mode against a
/// full smaps pass of the same workload (several hundred `memhog worker` processes, ~1 % changing
/// per tick, or the workload the arguments choose), how many ticks each mode takes to show a change
/// `statm` does not see (`ladder_bench`), then the host-wide syscall overhead of the programs
/// (`probe_bench`: getppid and mmap+munmap with and without them), in one run. Extra arguments go
/// to `ladder_bench` (`-- --workers 500`).
pub fn ladder(args: &[String]) -> Result<()> {
    Bench {
        command: "bench",
        root: Some("eBPF tracepoints, every process's smaps"),
        bench: "ladder_bench",
        with: &["probe_bench", "memhog"],
        agent: false,
        require_ebpf: true,
    }
    .run(args)?;
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(());
    }
    crate::run_release_bin("probe_bench", &[])
}

/// `cargo xtask probe-bench`: the programs' overhead on a 4 KiB mmap+munmap loop and on getppid,
/// without and with the programs attached, in one run.
pub fn probe() -> Result<()> {
    Bench {
        command: "probe-bench",
        root: Some("it attaches the eBPF programs"),
        bench: "probe_bench",
        with: &[],
        agent: false,
        require_ebpf: true,
    }
    .run(&[])
}

/// `cargo xtask bench-sharing`: one exit among 1000 sharers against a normal tick, and start-up at
/// 3000 sharers against `--once`.
pub fn sharing(args: &[String]) -> Result<()> {
    Bench {
        command: "bench-sharing",
        root: Some("every process's smaps"),
        bench: "sharing_bench",
        with: &["memhog"],
        agent: false,
        require_ebpf: false,
    }
    .run(args)
}

/// The peers' programs and the Debian packages that hold them.
const PEERS: [(&str, &str); 3] = [
    ("smem", "smem"),
    ("smemstat", "smemstat"),
    ("prometheus-process-exporter", "prometheus-process-exporter"),
];

/// `cargo xtask bench-peers`: memscope against smem, smemstat and prometheus-process-exporter on
/// one shared-memory workload (`tests/src/bin/peers_bench.rs`, BENCHMARKS.md). Installs the three
/// from Debian when any is missing (one `apt-get update`).
pub fn peers(args: &[String]) -> Result<()> {
    let bench = Bench {
        command: "bench-peers",
        root: Some("every process's smaps, eBPF, apt-get"),
        bench: "peers_bench",
        with: &["memhog"],
        agent: true,
        require_ebpf: false,
    };
    bench.check_root(args)?;
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
    bench.run(args)
}

/// `cargo xtask view-bench`: what `memscope-agent show` costs against the agent's own `--once`,
/// and how long `memscope-agent report` takes on a day-sized stream (8640 emissions at 10 s).
pub fn view(args: &[String]) -> Result<()> {
    Bench {
        command: "view-bench",
        root: None,
        bench: "view_bench",
        with: &[],
        agent: true,
        require_ebpf: false,
    }
    .run(args)
}

/// `cargo xtask volume`: how many bytes a day the agent writes on this host, in each emit mode
/// (`cargo xtask volume -- --seconds 120 --workers 300 --pid-namespace`; root only for
/// `--pid-namespace`).
pub fn volume(args: &[String]) -> Result<()> {
    Bench {
        command: "volume",
        root: None,
        bench: "volume_bench",
        with: &["memhog"],
        agent: true,
        require_ebpf: false,
    }
    .run(args)
}

/// `cargo xtask soak`: the agent's RSS over time with 1000 and 3000 idle processes
/// (`cargo xtask soak -- --pid-namespace --processes 3000 --minutes 60 --every 60`).
pub fn soak(args: &[String]) -> Result<()> {
    Bench {
        command: "soak",
        root: Some("the agent reads every process and attaches eBPF"),
        bench: "soak_bench",
        with: &[],
        agent: true,
        require_ebpf: false,
    }
    .run(args)
}
