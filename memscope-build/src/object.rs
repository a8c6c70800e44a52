//! The one command that builds the eBPF object (`memscope-ebpf`, bin `memscope-probes`).
//!
//! It is aya-build's command (`cargo build --target bpfel-unknown-none -Z build-std=core` with
//! `-Cdebuginfo=2 -Clink-arg=--btf`), run here rather than through `aya_build::build_ebpf` for two
//! reasons, both about the committed object being rebuildable byte for byte:
//!
//! - aya-build sets the whole `RUSTFLAGS`, so paths cannot be remapped, and the object's debug
//!   info (BTF line info) would carry the checkout, `CARGO_HOME` and rustup paths;
//! - aya-build passes the host's `bpf_target_arch`. These programs are tracepoints only and read
//!   no `pt_regs`, so that cfg changes only debug names: the program, map and relocation sections
//!   built for x86_64 and aarch64 are byte-identical (checked with `llvm-objcopy --dump-section`).
//!   A fixed value keeps one object for every little-endian host. A kprobe reading `pt_regs`
//!   would need one object per architecture.
//!
//! The stamp ([`crate::stamp`]) hashes this file: changing the recipe invalidates the object.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::toolchain::{Toolchain, rustup_run};

/// The eBPF package and its bin.
pub const PACKAGE: &str = "memscope-ebpf";
/// The object's file name as cargo writes it.
pub const BIN: &str = "memscope-probes";
/// Little-endian BPF: the byte order of x86_64 and arm64.
pub const TARGET: &str = "bpfel-unknown-none";
/// See the module docs.
const BPF_TARGET_ARCH: &str = "x86_64";

/// Builds the object with `toolchain` into `target_dir` and returns its path. On failure the
/// error carries the nested cargo's stderr.
pub fn build(
    workspace: &Path,
    toolchain: &Toolchain,
    target_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let cargo_home = crate::toolchain::cargo_home()?;
    let mut command = rustup_run(&toolchain.channel, "cargo");
    command
        .current_dir(workspace)
        .args([
            "build",
            "--locked",
            "--release",
            "--package",
            PACKAGE,
            "--bin",
            BIN,
        ])
        .args(["--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            rustflags(workspace, &cargo_home, &toolchain.sysroot),
        );
    // The outer cargo's compiler and wrappers are for the host toolchain (aya-build does the same).
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
    ] {
        command.env_remove(key);
    }
    let output = run_quiet(&mut command)?;
    let object = target_dir.join(TARGET).join("release").join(BIN);
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but left no {} (stderr: {})",
            object.display(),
            tail(&output)
        );
    }
    Ok(object)
}

/// `CARGO_ENCODED_RUSTFLAGS` (0x1f-separated).
fn rustflags(workspace: &Path, cargo_home: &Path, sysroot: &Path) -> OsString {
    let mut flags = vec![
        OsString::from(format!("--cfg=bpf_target_arch=\"{BPF_TARGET_ARCH}\"")),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ];
    for (from, to) in [
        (workspace, "/memscope"),
        (cargo_home, "/cargo"),
        (sysroot, "/rust"),
    ] {
        let mut flag = OsString::from("--remap-path-prefix=");
        flag.push(from);
        flag.push("=");
        flag.push(to);
        flags.push(flag);
    }
    flags.join(&OsString::from("\u{1f}"))
}

/// Runs `command`, returning its stderr; on failure the error carries the end of it.
fn run_quiet(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        bail!(
            "the eBPF build failed ({}): {}",
            output.status,
            tail(&stderr)
        );
    }
    Ok(stderr)
}

/// The last lines of a compiler's stderr (the error is at the end).
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(20);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustflags_remap_every_local_path() {
        let flags = rustflags(
            Path::new("/src/ms"),
            Path::new("/home/u/.cargo"),
            Path::new("/home/u/.rustup/tc"),
        );
        let flags = flags.to_string_lossy();
        let parts: Vec<&str> = flags.split('\u{1f}').collect();
        assert_eq!(parts[0], "--cfg=bpf_target_arch=\"x86_64\"");
        assert!(parts.contains(&"-Clink-arg=--btf"));
        assert!(parts.contains(&"--remap-path-prefix=/src/ms=/memscope"));
        assert!(parts.contains(&"--remap-path-prefix=/home/u/.cargo=/cargo"));
        assert!(parts.contains(&"--remap-path-prefix=/home/u/.rustup/tc=/rust"));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (0..30).map(|i| format!("line {i}\n\n")).collect();
        let kept = tail(&text);
        assert!(kept.starts_with("line 10"), "{kept}");
        assert!(kept.ends_with("line 29"), "{kept}");
    }
}
