//! `cargo xtask`: what cargo cannot do. (Temporary main of the `ebpf` branch: the integrator merges
//! these subcommands into the real one; the logic lives in the modules.)

mod probe_bench;
mod setup;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain (nightly rust-src, bpf-linker for the nightly's LLVM).
    Setup,
    /// Measure the tracepoint programs' overhead on a 4 KiB mmap+munmap loop (root).
    ProbeBench,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::setup_ebpf_toolchain(),
        Cmd::ProbeBench => probe_bench::run(),
    }
}
