//! memscope-agent: where the memory goes on a Linux host, continuously, as JSON lines.
//!
//! Layout: [`procfs`] (pure parsers and [`procfs::ProcFs`], the one type that reads `/proc`),
//! [`collectors`] (one per source behind [`collectors::Collector`]), [`store`] (owns the snapshot,
//! decides what to emit), [`records`] (the JSON-lines format), [`sinks`] (stdout, rotating file),
//! [`config`] (TOML), [`runtime`] (the scheduler and the store task), [`ladder`] (what to re-read
//! when), [`tracker`] (eBPF dirty tracking, or polling), [`derived`] (records built from several
//! collectors: the SysV join and the shared-memory ledger), [`view`] (`show` tables and the HTML
//! `report`, readers of the records), [`schema`] (the records' JSON Schemas).

pub mod collectors;
pub mod config;
pub mod derived;
pub mod ladder;
pub mod proc_events;
pub mod procfs;
pub mod records;
pub mod runtime;
pub mod schema;
pub mod sinks;
pub mod store;
pub mod tracker;
pub mod view;
