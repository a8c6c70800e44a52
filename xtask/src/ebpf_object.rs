//! `cargo xtask ebpf-object`: rebuilds the committed eBPF object (`memscope-ebpf/prebuilt/`) and
//! its stamp, in one command. `--check` (test lane) fails when the committed object is stale for
//! the sources, or when the pinned toolchain does not rebuild it byte for byte.

use std::{fs, path::Path};

use anyhow::{Context as _, bail};
use memscope_build::{
    PREBUILT_OBJECT, PREBUILT_STAMP, REFRESH_COMMAND, object, sha256_hex,
    stamp::{self, Stamp},
    toolchain,
};

/// Where the object is built (inside the workspace's target dir, so it is cached between runs).
const TARGET_SUBDIR: &str = "target/ebpf-object";

/// Builds the object with the pinned toolchain and returns (bytes, compiler version).
fn build(workspace: &Path) -> anyhow::Result<(Vec<u8>, String)> {
    let toolchain = toolchain::check(workspace)
        .context("the eBPF toolchain is missing: run `cargo xtask setup`")?;
    eprintln!(
        "ebpf-object: building {} with {} ({})",
        object::BIN,
        toolchain.channel,
        toolchain.rustc_version
    );
    let built = object::build(workspace, &toolchain, &workspace.join(TARGET_SUBDIR))?;
    let bytes = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    Ok((bytes, toolchain.rustc_version))
}

/// Rebuilds and rewrites the committed object and stamp.
pub fn refresh(workspace: &Path) -> anyhow::Result<()> {
    let inputs = stamp::inputs(workspace)?;
    let (bytes, built_with) = build(workspace)?;
    let stamp = Stamp {
        object_sha256: sha256_hex(&bytes),
        built_with,
        inputs,
    };
    let object_path = workspace.join(PREBUILT_OBJECT);
    if let Some(dir) = object_path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&object_path, &bytes)
        .with_context(|| format!("writing {}", object_path.display()))?;
    let stamp_path = workspace.join(PREBUILT_STAMP);
    fs::write(&stamp_path, stamp.render())
        .with_context(|| format!("writing {}", stamp_path.display()))?;
    eprintln!(
        "ebpf-object: wrote {} ({} bytes, sha256 {}) and {} ({} inputs); commit both",
        PREBUILT_OBJECT,
        bytes.len(),
        stamp.object_sha256,
        PREBUILT_STAMP,
        stamp.inputs.len()
    );
    Ok(())
}

/// Fails when the committed object is stale or not reproducible.
pub fn check(workspace: &Path) -> anyhow::Result<()> {
    let current = stamp::inputs(workspace)?;
    let (stamp, _) = stamp::committed_object(workspace, &current)?;
    eprintln!(
        "ebpf-object: {PREBUILT_OBJECT} matches its stamp ({} inputs)",
        stamp.inputs.len()
    );
    let (bytes, built_with) = build(workspace)?;
    let built = sha256_hex(&bytes);
    if built != stamp.object_sha256 {
        bail!(
            "the committed eBPF object is not what the sources build to: {built_with} built sha256 {built}, the committed one (built with {}) is {}; run `{REFRESH_COMMAND}` and commit memscope-ebpf/prebuilt/",
            stamp.built_with,
            stamp.object_sha256
        );
    }
    eprintln!("ebpf-object: the pinned toolchain rebuilds it byte for byte (sha256 {built})");
    Ok(())
}
