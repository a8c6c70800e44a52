//! `cargo xtask setup`: installs what the eBPF build needs on a fresh machine.
//!
//! - the nightly pinned in `memscope-ebpf/rust-toolchain.toml`, with `rust-src` (the programs are
//!   built with `-Z build-std=core`);
//! - `bpf-linker` built against the nightly's own LLVM (no system LLVM of that version exists here):
//!   the nightly sysroot's `libLLVM.so.NN*` is symlinked into `$CARGO_HOME/bpf-linker-llvm/lib`, and
//!   `LLVM_PREFIX=… cargo install bpf-linker --no-default-features --features llvm-NN` links to it.
//!
//! Each step is the shared check of `memscope_build::toolchain` (the one memscope-agent's build.rs
//! runs), followed by the fix when it fails. Idempotent: when everything is in place it only runs
//! the checks.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use memscope_build::toolchain;

/// Installs (when missing or stale) the pinned nightly with `rust-src` and an LLVM-matched
/// `bpf-linker`, then runs the same check as memscope-agent's build.rs.
pub fn setup_ebpf_toolchain() -> anyhow::Result<()> {
    let workspace = crate::workspace_root();
    let channel = toolchain::pinned_channel(&workspace)?;
    let sysroot = match toolchain::sysroot(&channel) {
        Ok(sysroot) => sysroot,
        Err(why) => {
            eprintln!(
                "setup: {why:#}; running `rustup toolchain install {channel} --profile minimal --component rust-src`"
            );
            crate::run_checked(Command::new("rustup").args([
                "toolchain",
                "install",
                &channel,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
            toolchain::sysroot(&channel)?
        }
    };
    if let Err(why) = toolchain::check_rust_src(&channel, &sysroot) {
        eprintln!("setup: {why:#}; running `rustup component add rust-src --toolchain {channel}`");
        crate::run_checked(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            &channel,
        ]))?;
        toolchain::check_rust_src(&channel, &sysroot)?;
    }
    let llvm_major = toolchain::llvm_major(&toolchain::rustc_vv(&channel)?)?;
    eprintln!(
        "setup: {channel} at {} (LLVM {llvm_major}) with rust-src",
        sysroot.display()
    );

    let cargo_home = toolchain::cargo_home()?;
    // Point bpf-linker's libLLVM at the pinned toolchain, so updating another nightly cannot
    // pull it away (a different LLVM makes `bpf-linker --version` fail below: reinstall).
    link_libllvm(&cargo_home, &sysroot, llvm_major)?;
    match bpf_linker_state(&cargo_home, llvm_major) {
        Ok(()) => eprintln!("setup: bpf-linker built for LLVM {llvm_major}: present"),
        Err(why) => {
            eprintln!("setup: bpf-linker needs (re)installing: {why:#}");
            install_bpf_linker(&cargo_home, llvm_major)?;
        }
    }
    let found = toolchain::check(&workspace)
        .context("the eBPF toolchain check (the one build.rs runs) still fails after setup")?;
    eprintln!(
        "setup: eBPF toolchain ready: {} ({}), {}",
        found.channel,
        found.rustc_version,
        found.linker.display()
    );
    Ok(())
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

/// Symlinks `$CARGO_HOME/bpf-linker-llvm/lib/{libLLVM.so, libLLVM.so.NN*}` to the sysroot's libLLVM
/// (bpf-linker's RUNPATH). Each link is replaced atomically (rename), since other builds may be
/// running bpf-linker at this moment.
fn link_libllvm(cargo_home: &Path, sysroot: &Path, llvm_major: u32) -> anyhow::Result<PathBuf> {
    let libllvm = find_libllvm(&sysroot.join("lib"), llvm_major)?;
    let file_name = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    let prefix = cargo_home.join("bpf-linker-llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for link in [lib.join("libLLVM.so"), lib.join(file_name)] {
        if fs::read_link(&link).is_ok_and(|target| target == libllvm) {
            continue;
        }
        let tmp = lib.join(format!(".link-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        symlink(&libllvm, &tmp)
            .with_context(|| format!("linking {} -> {}", tmp.display(), libllvm.display()))?;
        fs::rename(&tmp, &link)
            .with_context(|| format!("renaming {} to {}", tmp.display(), link.display()))?;
        eprintln!("setup: {} -> {}", link.display(), libllvm.display());
    }
    Ok(prefix)
}

fn install_bpf_linker(cargo_home: &Path, llvm_major: u32) -> anyhow::Result<()> {
    let prefix = cargo_home.join("bpf-linker-llvm");
    let feature = format!("llvm-{llvm_major}");
    eprintln!(
        "setup: LLVM_PREFIX={} cargo install bpf-linker --no-default-features --features {feature} --force (about a minute)",
        prefix.display()
    );
    crate::run_checked(Command::new("cargo").env("LLVM_PREFIX", &prefix).args([
        "install",
        "bpf-linker",
        "--no-default-features",
        "--features",
        &feature,
        "--force",
    ]))?;
    bpf_linker_state(cargo_home, llvm_major).context("bpf-linker still unusable after installing")
}

#[cfg(test)]
mod tests {
    use super::*;

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
