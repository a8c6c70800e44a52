//! memscope-agent: where the memory goes on a Linux host, continuously, as JSON lines.
//!
//! See the crate README for the record reference and the configuration. Layout:
//! [`procfs`] (parsers and the one I/O type), [`collectors`] (one per source behind the
//! [`collectors::Collector`] trait), [`store`] (owns the snapshot, decides what to emit),
//! [`sinks`] (stdout, rotating file), [`config`] (TOML), [`tracker`] (eBPF dirty tracking or polling).

pub mod procfs;
pub mod tracker;
