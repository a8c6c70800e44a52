//! Builds memscope's eBPF programs (`memscope-ebpf`, bin `memscope-probes`) with `aya-build` and
//! leaves the object in `OUT_DIR` for `include_bytes_aligned!`.
//!
//! The eBPF build needs the `nightly` toolchain with `rust-src` and `bpf-linker` on `PATH`
//! (`cargo xtask setup` installs them). Without them the agent is built without the object
//! (`--cfg memscope_no_ebpf`) and runs in polling mode, after a cargo warning.
//! `MEMSCOPE_REQUIRE_EBPF=1` (CI) turns a missing toolchain or a failed eBPF build into an error;
//! `MEMSCOPE_NO_EBPF=1` (the fuzz build) skips the eBPF object on purpose.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

const EBPF_PACKAGE: &str = "memscope-ebpf";
const EBPF_BIN: &str = "memscope-probes";
const NIGHTLY: &str = "nightly";

fn main() -> anyhow::Result<()> {
    println!("cargo::rustc-check-cfg=cfg(memscope_no_ebpf)");
    println!("cargo::rerun-if-env-changed=MEMSCOPE_REQUIRE_EBPF");
    println!("cargo::rerun-if-env-changed=PATH");

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("memscope-agent has no parent directory")?;
    // aya-build watches only the eBPF crate's folder; the ABI and the locked versions matter too.
    for watched in ["memscope-common", "Cargo.lock"] {
        println!(
            "cargo::rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }

    let require = env::var("MEMSCOPE_REQUIRE_EBPF").is_ok_and(|v| v == "1");
    // Builds that only need the parsers (the fuzz targets) skip the eBPF object.
    println!("cargo::rerun-if-env-changed=MEMSCOPE_NO_EBPF");
    if !require && env::var("MEMSCOPE_NO_EBPF").is_ok_and(|v| v == "1") {
        println!("cargo::rustc-cfg=memscope_no_ebpf");
        return Ok(());
    }
    match build(workspace) {
        Ok(()) => Ok(()),
        Err(err) if require => {
            Err(err.context("MEMSCOPE_REQUIRE_EBPF=1: the eBPF object is required"))
        }
        Err(err) => {
            println!(
                "cargo::warning=memscope: building without eBPF (the agent will run in polling mode): {err:#}"
            );
            println!(
                "cargo::warning=memscope: run `cargo xtask setup` to install the eBPF toolchain"
            );
            println!("cargo::rustc-cfg=memscope_no_ebpf");
            Ok(())
        }
    }
}

fn build(workspace: &Path) -> anyhow::Result<()> {
    check_toolchain()?;
    // aya-build relays every line of the nested cargo's stderr as a cargo warning; keep only
    // real diagnostics by silencing its progress lines ("Compiling …").
    // SAFETY: build scripts are single-threaded here; nothing reads the environment concurrently.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    let root_dir = workspace.join(EBPF_PACKAGE);
    let root_dir = root_dir
        .to_str()
        .with_context(|| format!("{} is not UTF-8", root_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF programs failed")?;
    let out_dir = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR")?);
    let object = out_dir.join(EBPF_BIN);
    if !object.is_file() {
        // AYA_BUILD_SKIP=1 makes aya-build return without building.
        bail!("the eBPF build left no {}", object.display());
    }
    Ok(())
}

/// Fails with a readable reason when the nightly toolchain, its `rust-src` or `bpf-linker` is missing.
fn check_toolchain() -> anyhow::Result<()> {
    let linker = find_on_path("bpf-linker").ok_or_else(|| anyhow!("bpf-linker is not on PATH"))?;
    println!("cargo::rerun-if-changed={}", linker.display());

    let output = Command::new("rustup")
        .args(["run", NIGHTLY, "rustc", "--print", "sysroot"])
        .output()
        .context("running `rustup run nightly rustc --print sysroot`")?;
    if !output.status.success() {
        bail!(
            "the {NIGHTLY} toolchain is not usable: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let core = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if !core.is_file() {
        bail!(
            "the {NIGHTLY} toolchain has no rust-src component ({} missing)",
            core.display()
        );
    }
    Ok(())
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
