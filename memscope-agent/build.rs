//! Puts memscope's eBPF object (`memscope-ebpf`, bin `memscope-probes`) in `OUT_DIR` for
//! `include_bytes_aligned!`. In order:
//!
//! 1. **Toolchain present** (the nightly pinned in `memscope-ebpf/rust-toolchain.toml` with
//!    `rust-src`, and `bpf-linker`; see `memscope_build::toolchain`): build the object from source.
//!    If the committed object does not match (stale stamp, or other bytes), say so in a cargo
//!    warning naming `cargo xtask ebpf-object`.
//! 2. **No toolchain**: use the committed object (`memscope-ebpf/prebuilt/`) if its stamp matches
//!    the sources. That is how `cargo run`, `cargo install`, the .deb and the image get eBPF on
//!    stable Rust alone.
//! 3. **Neither**: a cargo warning, and the agent is built without the object
//!    (`--cfg memscope_no_ebpf`): it runs in polling mode.
//!
//! `MEMSCOPE_REQUIRE_EBPF=1` (CI) turns 3, and a failed source build, into an error.
//! The toolchain check re-runs when the toolchain appears or goes (see
//! `memscope_build::toolchain::watch_paths`).

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use memscope_build::{REFRESH_COMMAND, object, sha256_hex, stamp, toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo::rustc-check-cfg=cfg(memscope_no_ebpf)");
    println!("cargo::rerun-if-env-changed=MEMSCOPE_REQUIRE_EBPF");
    for var in toolchain::WATCH_ENV {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("memscope-agent has no parent directory")?;
    // The stamp's inputs (memscope-build is a build-dependency: cargo tracks it already).
    for watched in [
        "memscope-ebpf",
        "memscope-common",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!(
            "cargo::rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    let channel = toolchain::pinned_channel(workspace).ok();
    for path in toolchain::watch_paths(channel.as_deref()) {
        println!("cargo::rerun-if-changed={}", path.display());
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR")?);
    let dest = out_dir.join(object::BIN);
    let require = env::var("MEMSCOPE_REQUIRE_EBPF").is_ok_and(|v| v == "1");
    match provide_object(workspace, &out_dir, &dest, require) {
        Ok(()) => Ok(()),
        Err(err) if require => {
            Err(err.context("MEMSCOPE_REQUIRE_EBPF=1: the eBPF object is required"))
        }
        Err(err) => {
            warn(&format!(
                "building without eBPF (the agent will run in polling mode): {err:#}"
            ));
            warn("run `cargo xtask setup` to install the eBPF toolchain");
            println!("cargo::rustc-cfg=memscope_no_ebpf");
            Ok(())
        }
    }
}

/// Writes the object to `dest`, built from source or committed; the error says why neither works.
fn provide_object(
    workspace: &Path,
    out_dir: &Path,
    dest: &Path,
    require: bool,
) -> anyhow::Result<()> {
    let committed =
        stamp::inputs(workspace).and_then(|current| stamp::committed_object(workspace, &current));
    let no_toolchain = match toolchain::check(workspace) {
        Ok(toolchain) => match object::build(workspace, &toolchain, &out_dir.join("ebpf-target")) {
            Ok(built) => {
                let bytes =
                    fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
                compare_with_committed(&bytes, &committed, &toolchain.rustc_version);
                return write(dest, &bytes);
            }
            Err(err) if require => return Err(err),
            Err(err) => {
                warn(&format!("{err:#}"));
                anyhow!("the eBPF build from source failed")
            }
        },
        Err(err) => err,
    };
    match committed {
        Ok((_, bytes)) => write(dest, &bytes),
        Err(why) => Err(anyhow!(
            "no eBPF toolchain ({no_toolchain:#}), and the committed object cannot be used ({why:#})"
        )),
    }
}

/// Warns when the object built from source is not the committed one.
fn compare_with_committed(
    built: &[u8],
    committed: &anyhow::Result<(stamp::Stamp, Vec<u8>)>,
    rustc_version: &str,
) {
    match committed {
        Ok((stamp, _)) if stamp.object_sha256 == sha256_hex(built) => {}
        Ok((stamp, _)) => warn(&format!(
            "the eBPF object built from source differs from the committed one although its inputs match (built with {rustc_version}, committed one with {}); run `{REFRESH_COMMAND}`",
            stamp.built_with
        )),
        Err(why) => warn(&format!(
            "eBPF object built from source; the committed one does not match: {why:#}"
        )),
    }
}

fn write(dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    fs::write(dest, bytes).with_context(|| format!("writing {}", dest.display()))
}

fn warn(message: &str) {
    for line in message.lines() {
        println!("cargo::warning=memscope: {line}");
    }
}
