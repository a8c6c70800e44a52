//! The eBPF toolchain check shared by `build.rs` and `cargo xtask setup`.
//!
//! The eBPF programs need the nightly pinned in `memscope-ebpf/rust-toolchain.toml` (for
//! `-Z build-std=core`), its `rust-src` component, and `bpf-linker` on `PATH`. Each piece is a
//! function here; [`check`] runs them in order and says which one is missing. `xtask setup` calls
//! the same functions and installs whatever fails.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The eBPF crate's toolchain file, relative to the workspace root.
pub const TOOLCHAIN_FILE: &str = "memscope-ebpf/rust-toolchain.toml";

/// A usable eBPF toolchain.
#[derive(Clone, Debug)]
pub struct Toolchain {
    /// The pinned channel, e.g. `nightly-2026-05-20`.
    pub channel: String,
    /// `rustc --print sysroot` of that channel.
    pub sysroot: PathBuf,
    /// The first line of `rustc -vV` (`rustc 1.97.0-nightly (e50aa6fba 2026-05-19)`).
    pub rustc_version: String,
    /// `bpf-linker` as found on `PATH`.
    pub linker: PathBuf,
}

/// The channel pinned in [`TOOLCHAIN_FILE`].
pub fn pinned_channel(workspace: &Path) -> anyhow::Result<String> {
    let path = workspace.join(TOOLCHAIN_FILE);
    let text = String::from_utf8(crate::read(&path)?)
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    channel_from_toml(&text).with_context(|| format!("in {}", path.display()))
}

/// `[toolchain] channel` of a `rust-toolchain.toml`.
pub fn channel_from_toml(text: &str) -> anyhow::Result<String> {
    let value: toml::Table = toml::from_str(text).context("parsing TOML")?;
    let channel = value
        .get("toolchain")
        .and_then(|t| t.get("channel"))
        .and_then(toml::Value::as_str)
        .context("no string `[toolchain] channel`")?;
    if !channel.starts_with("nightly") {
        bail!("channel {channel:?} is not a nightly: the eBPF build needs -Z build-std");
    }
    Ok(channel.to_owned())
}

/// `rustup run CHANNEL PROGRAM`, never installing the toolchain on the fly (a build script must
/// not download a toolchain; `xtask setup` installs it on purpose).
pub fn rustup_run(channel: &str, program: &str) -> Command {
    let mut command = Command::new("rustup");
    command
        .env("RUSTUP_AUTO_INSTALL", "0")
        .args(["run", channel, program]);
    command
}

/// Output of `rustup run CHANNEL rustc ARGS`, or why the channel is not usable.
fn rustc_output(channel: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = rustup_run(channel, "rustc")
        .args(args)
        .output()
        .with_context(|| format!("running `rustup run {channel} rustc` (is rustup on PATH?)"))?;
    if !output.status.success() {
        bail!(
            "the {channel} toolchain is not usable: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| {
        format!(
            "`rustup run {channel} rustc {}` printed non-UTF-8",
            args.join(" ")
        )
    })
}

/// The channel's sysroot; fails when the toolchain is not installed.
pub fn sysroot(channel: &str) -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(
        rustc_output(channel, &["--print", "sysroot"])?.trim(),
    ))
}

/// `rustc -vV` of the channel.
pub fn rustc_vv(channel: &str) -> anyhow::Result<String> {
    rustc_output(channel, &["-vV"])
}

/// The LLVM major version from `rustc -vV` output (`LLVM version: 22.1.4` → 22).
pub fn llvm_major(rustc_vv: &str) -> anyhow::Result<u32> {
    let version = rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .context("`rustc -vV` printed no `LLVM version:` line")?
        .trim();
    let major = version.split('.').next().unwrap_or_default();
    major
        .parse()
        .with_context(|| format!("unexpected LLVM version {version:?}"))
}

/// The file whose presence shows `rust-src` is installed in `sysroot`.
pub fn rust_src_marker(sysroot: &Path) -> PathBuf {
    sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml")
}

/// Fails when the sysroot has no `rust-src`.
pub fn check_rust_src(channel: &str, sysroot: &Path) -> anyhow::Result<()> {
    let marker = rust_src_marker(sysroot);
    if !marker.is_file() {
        bail!(
            "the {channel} toolchain has no rust-src component ({} missing)",
            marker.display()
        );
    }
    Ok(())
}

/// `bpf-linker` on `PATH` that runs (`--version`); a linker whose libLLVM is gone fails here.
pub fn check_linker() -> anyhow::Result<PathBuf> {
    let linker = find_on_path("bpf-linker").context("bpf-linker is not on PATH")?;
    let output = Command::new(&linker)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", linker.display()))?;
    if !output.status.success() {
        bail!(
            "{} --version failed (its libLLVM may be gone after a toolchain update): {}",
            linker.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(linker)
}

/// The whole check: pinned nightly installed, with `rust-src`, and a working `bpf-linker`.
pub fn check(workspace: &Path) -> anyhow::Result<Toolchain> {
    let channel = pinned_channel(workspace)?;
    let sysroot = sysroot(&channel)?;
    check_rust_src(&channel, &sysroot)?;
    let vv = rustc_vv(&channel)?;
    let rustc_version = vv.lines().next().unwrap_or_default().trim().to_owned();
    let linker = check_linker()?;
    Ok(Toolchain {
        channel,
        sysroot,
        rustc_version,
        linker,
    })
}

/// Paths whose change can turn [`check`]'s answer around, for `cargo::rerun-if-changed`: without
/// them cargo keeps a "toolchain missing" result after the toolchain has been installed.
///
/// - `bpf-linker` found: that file (removed, rebuilt). Not found: every absolute directory on
///   `PATH` (cargo compares their entries' mtimes, so a new `bpf-linker` anywhere on `PATH` counts).
/// - Toolchain installed: its `lib/rustlib/components` (rewritten by `rustup component add`).
///   Not installed: `$RUSTUP_HOME/update-hashes` (rustup writes a file there per installed
///   toolchain).
///
/// Only existing paths are returned: cargo treats a missing path as always changed.
pub fn watch_paths(channel: Option<&str>) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    match find_on_path("bpf-linker") {
        Some(linker) => paths.push(linker),
        None => {
            if let Some(path) = env::var_os("PATH") {
                paths.extend(env::split_paths(&path).filter(|dir| dir.is_absolute()));
            }
        }
    }
    match channel.map(sysroot) {
        Some(Ok(sysroot)) => paths.push(sysroot.join("lib/rustlib/components")),
        _ => {
            if let Some(home) = rustup_home() {
                paths.push(home.join("update-hashes"));
            }
        }
    }
    paths.retain(|p| p.exists());
    paths.sort();
    paths.dedup();
    paths
}

/// Environment variables that change what [`check`] finds.
pub const WATCH_ENV: [&str; 4] = ["PATH", "RUSTUP_HOME", "CARGO_HOME", "RUSTUP_TOOLCHAIN"];

fn rustup_home() -> Option<PathBuf> {
    env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".rustup")))
}

/// `CARGO_HOME`, else `~/.cargo`.
pub fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}

/// The first `program` file in a `PATH` directory.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    find_in(&env::var_os("PATH")?, program)
}

/// The first `program` file in a directory of the `:`-separated `path`.
pub fn find_in(path: &std::ffi::OsStr, program: &str) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc_vv() -> anyhow::Result<()> {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv)?, 22);
        assert!(llvm_major("rustc 1.0\n").is_err());
        assert!(llvm_major("LLVM version: x.1\n").is_err());
        Ok(())
    }

    #[test]
    fn channel_must_be_a_nightly() -> anyhow::Result<()> {
        assert_eq!(
            channel_from_toml("[toolchain]\nchannel = \"nightly-2026-05-20\"\n")?,
            "nightly-2026-05-20"
        );
        assert!(channel_from_toml("[toolchain]\nchannel = \"stable\"\n").is_err());
        assert!(channel_from_toml("[toolchain]\n").is_err());
        assert!(channel_from_toml("toolchain = 3").is_err());
        Ok(())
    }

    #[test]
    fn the_committed_pin_parses() -> anyhow::Result<()> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("no workspace")?;
        assert!(pinned_channel(workspace)?.starts_with("nightly-"));
        Ok(())
    }

    #[test]
    fn missing_rust_src_is_named() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let err = check_rust_src("nightly-x", dir.path())
            .err()
            .context("no error")?;
        assert!(err.to_string().contains("rust-src"), "{err}");
        let marker = rust_src_marker(dir.path());
        std::fs::create_dir_all(marker.parent().context("no parent")?)?;
        std::fs::write(&marker, b"")?;
        check_rust_src("nightly-x", dir.path())
    }
}
