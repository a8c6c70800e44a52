//! `cargo xtask setup`: installs what the eBPF build needs on a fresh machine.
//!
//! - the `nightly` toolchain's `rust-src` component (the programs are built with `-Z build-std=core`);
//! - `bpf-linker` built against the nightly's own LLVM (no system LLVM of that version exists here):
//!   the nightly sysroot's `libLLVM.so.NN*` is symlinked into `$CARGO_HOME/bpf-linker-llvm/lib`, and
//!   `LLVM_PREFIX=… cargo install bpf-linker --no-default-features --features llvm-NN` links to it.
//!
//! Idempotent: when everything is in place it only runs `rustc +nightly -vV` and `bpf-linker --version`.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

const NIGHTLY: &str = "nightly";

/// Installs (when missing or stale) the nightly `rust-src` and an LLVM-matched `bpf-linker`.
pub fn setup_ebpf_toolchain() -> anyhow::Result<()> {
    let version = nightly_version()?;
    let llvm_major = llvm_major(&version)?;
    let sysroot = nightly_sysroot()?;
    eprintln!(
        "setup: nightly toolchain at {} (LLVM {llvm_major})",
        sysroot.display()
    );

    let core = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core.is_file() {
        eprintln!("setup: rust-src for {NIGHTLY}: present");
    } else {
        eprintln!(
            "setup: rust-src for {NIGHTLY}: missing, running `rustup component add rust-src --toolchain {NIGHTLY}`"
        );
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }

    let cargo_home = cargo_home()?;
    match bpf_linker_state(&cargo_home, llvm_major) {
        Ok(()) => {
            eprintln!("setup: bpf-linker built for LLVM {llvm_major}: present");
            return Ok(());
        }
        Err(why) => eprintln!("setup: bpf-linker needs (re)installing: {why:#}"),
    }
    install_bpf_linker(&cargo_home, &sysroot, llvm_major)
}

fn nightly_version() -> anyhow::Result<String> {
    let output = Command::new("rustc")
        .args([&format!("+{NIGHTLY}"), "-vV"])
        .output()
        .context("running `rustc +nightly -vV` (is rustup installed?)")?;
    if !output.status.success() {
        eprintln!(
            "setup: no usable {NIGHTLY} toolchain, running `rustup toolchain install {NIGHTLY} --profile minimal`"
        );
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
        return nightly_version_once();
    }
    String::from_utf8(output.stdout).context("`rustc +nightly -vV` printed non-UTF-8")
}

fn nightly_version_once() -> anyhow::Result<String> {
    let output = Command::new("rustc")
        .args([&format!("+{NIGHTLY}"), "-vV"])
        .output()
        .context("running `rustc +nightly -vV`")?;
    if !output.status.success() {
        bail!(
            "`rustc +nightly -vV` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).context("`rustc +nightly -vV` printed non-UTF-8")
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

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let output = Command::new("rustc")
        .args([&format!("+{NIGHTLY}"), "--print", "sysroot"])
        .output()
        .context("running `rustc +nightly --print sysroot`")?;
    if !output.status.success() {
        bail!(
            "`rustc +nightly --print sysroot` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}

/// `Ok` when an installed bpf-linker was built with `llvm-NN` for this LLVM major and runs.
fn bpf_linker_state(cargo_home: &Path, llvm_major: u32) -> anyhow::Result<()> {
    let record = cargo_home.join(".crates2.json");
    let text =
        fs::read_to_string(&record).with_context(|| format!("reading {}", record.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", record.display()))?;
    let installs = json
        .get("installs")
        .and_then(serde_json::Value::as_object)
        .with_context(|| format!("{} has no installs", record.display()))?;
    let (_, install) = installs
        .iter()
        .find(|(key, _)| key.starts_with("bpf-linker "))
        .context("bpf-linker is not installed by cargo")?;
    let feature = format!("llvm-{llvm_major}");
    let built_for = install
        .get("features")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|features| {
            features
                .iter()
                .any(|f| f.as_str() == Some(feature.as_str()))
        });
    if !built_for {
        bail!("installed bpf-linker was not built with feature {feature}");
    }
    let linker = cargo_home.join("bin/bpf-linker");
    let output = Command::new(&linker)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", linker.display()))?;
    if !output.status.success() {
        bail!(
            "{} --version failed (its libLLVM may be gone after a nightly update): {}",
            linker.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The `libLLVM.so.NN*` shipped in the nightly sysroot (file name varies with the nightly).
fn find_libllvm(sysroot_lib: &Path, llvm_major: u32) -> anyhow::Result<PathBuf> {
    let prefix = format!("libLLVM.so.{llvm_major}");
    let mut found: Vec<PathBuf> = fs::read_dir(sysroot_lib)
        .with_context(|| format!("listing {}", sysroot_lib.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("no {prefix}* in {}", sysroot_lib.display()))
}

fn install_bpf_linker(cargo_home: &Path, sysroot: &Path, llvm_major: u32) -> anyhow::Result<()> {
    let libllvm = find_libllvm(&sysroot.join("lib"), llvm_major)?;
    let file_name = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    let prefix = cargo_home.join("bpf-linker-llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for link in [lib.join("libLLVM.so"), lib.join(file_name)] {
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        symlink(&libllvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
        eprintln!("setup: {} -> {}", link.display(), libllvm.display());
    }
    let feature = format!("llvm-{llvm_major}");
    eprintln!(
        "setup: LLVM_PREFIX={} cargo install bpf-linker --no-default-features --features {feature} --force (about a minute)",
        prefix.display()
    );
    run(Command::new("cargo").env("LLVM_PREFIX", &prefix).args([
        "install",
        "bpf-linker",
        "--no-default-features",
        "--features",
        &feature,
        "--force",
    ]))?;
    bpf_linker_state(cargo_home, llvm_major).context("bpf-linker still unusable after installing")
}

pub(crate) fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc_vv() -> anyhow::Result<()> {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv)?, 22);
        assert!(llvm_major("rustc 1.0\n").is_err());
        Ok(())
    }

    #[test]
    fn finds_libllvm_by_major() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("librustc_driver.so"), b"")?;
        fs::write(dir.path().join("libLLVM.so.22.1-rust-1.97.0-nightly"), b"")?;
        assert_eq!(
            find_libllvm(dir.path(), 22)?
                .file_name()
                .and_then(|n| n.to_str()),
            Some("libLLVM.so.22.1-rust-1.97.0-nightly")
        );
        assert!(find_libllvm(dir.path(), 23).is_err());
        Ok(())
    }
}
