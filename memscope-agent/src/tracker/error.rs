//! Why the eBPF tracker could not start.

use std::{io, path::PathBuf};

/// Why the eBPF tracker could not start; the agent then polls. aya's errors are boxed: they are
/// large and this is returned through every step of the start-up.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error(
        "this agent was built without the eBPF object (toolchain missing at build time; run `cargo xtask setup` and rebuild)"
    )]
    NotBuilt,
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing or /sys/kernel/debug/tracing, and mounting it failed"
    )]
    NoTracefs(#[source] io::Error),
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing or /sys/kernel/debug/tracing, and agent.mount_tracefs = false forbids mounting it"
    )]
    TracefsNotMounted,
    #[error("tracefs at {path} is not readable")]
    TracefsUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read tracepoint format {path}")]
    Format {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("tracepoint format {path}: {problem}")]
    FormatField { path: PathBuf, problem: String },
    #[error("cannot read the kernel's BTF {path} (the fork program needs it)")]
    BtfRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("kernel BTF {path}")]
    BtfParse {
        path: PathBuf,
        #[source]
        source: super::btf::BtfError,
    },
    #[error("loading the kernel's BTF for tp_btf programs failed")]
    BtfLoad(#[source] Box<aya::BtfError>),
    #[error("loading the eBPF object failed")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("eBPF program {name} is missing from the object")]
    MissingProgram { name: &'static str },
    #[error("eBPF program {name} ({category}:{tracepoint})")]
    Program {
        name: &'static str,
        category: &'static str,
        tracepoint: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF map {name} is missing from the object")]
    MissingMap { name: &'static str },
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("starting the lifecycle event thread")]
    Thread(#[source] io::Error),
}
