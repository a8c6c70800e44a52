//! `cargo xtask test-packaging` (root): the deployment path, end to end.
//!
//! 1. The release agent is built with the eBPF toolchain hidden (`PATH` without `~/.cargo/bin`,
//!    so neither `rustup` nor `bpf-linker` exists) and `MEMSCOPE_REQUIRE_EBPF=1`: it must embed
//!    the committed object, byte for byte, and attach as root.
//! 2. Least privilege ([`caps`]): as uid 65534 with only the documented capabilities.
//! 3. The systemd unit ([`systemd`]): `systemd-analyze verify` and the `security` exposure.
//! 4. The .deb ([`deb`]): built by cargo-deb from that binary, contents, install and removal in a
//!    scratch Debian root.
//! 5. The Kubernetes manifests ([`manifests`]): what the agent needs is in them.
//! 6. The container ([`container`]): the image's final stage on a local base, run like the
//!    DaemonSet runs it.
//!
//! Every package the checks need is installed here (CI runs on a fresh machine).

mod agent_run;
mod caps;
mod container;
mod deb;
mod manifests;
mod systemd;

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use memscope_build::{
    PREBUILT_OBJECT,
    toolchain::{find_in, find_on_path},
};

/// The whole lane.
pub fn lane(workspace: &Path) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!(
            "the packaging lane runs the agent as root and as uid 65534 with capabilities, and installs packages: run it as root"
        );
    }
    let agent = build_without_toolchain(workspace)?;
    let dir = tempfile::Builder::new()
        .prefix("memscope-packaging-")
        .tempdir()
        .context("creating a scratch directory")?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", dir.path().display()))?;
    // A copy every uid can execute (the worktree's parents may not be).
    let staged = dir.path().join("memscope-agent");
    fs::copy(&agent, &staged).with_context(|| format!("copying {}", agent.display()))?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", staged.display()))?;

    let peak_rss = attaches_as_root(&staged, dir.path())?;
    caps::check(&staged, dir.path())?;
    let rootfs = debian_rootfs(workspace)?;
    let deb = deb::check(workspace, &rootfs, dir.path())?;
    systemd::check(&deb, dir.path())?;
    let config = manifests::check(workspace, &staged, dir.path(), peak_rss)?;
    container::check(&rootfs, &staged, &config, dir.path())?;
    eprintln!("packaging: all checks passed");
    Ok(())
}

/// `cargo build --release -p memscope-agent` with the stable toolchain's own `bin/` as the only
/// Rust directory on `PATH`; returns the binary after checking it embeds the committed object.
fn build_without_toolchain(workspace: &Path) -> anyhow::Result<PathBuf> {
    let output = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running `rustc --print sysroot`")?;
    ensure!(output.status.success(), "`rustc --print sysroot` failed");
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let bin = sysroot.join("bin");
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display());
    for tool in ["rustup", "bpf-linker"] {
        if let Some(found) = find_in(path.as_ref(), tool) {
            bail!(
                "cannot hide the eBPF toolchain: {} is on the reduced PATH {path}",
                found.display()
            );
        }
    }
    eprintln!(
        "packaging: building the release agent with PATH={path} (no rustup, no bpf-linker) and MEMSCOPE_REQUIRE_EBPF=1"
    );
    let status = Command::new(bin.join("cargo"))
        .args(["build", "--release", "--locked", "-p", "memscope-agent"])
        .current_dir(workspace)
        .env("PATH", &path)
        .env("MEMSCOPE_REQUIRE_EBPF", "1")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .status()
        .context("running cargo build with the toolchain hidden")?;
    ensure!(
        status.success(),
        "the agent does not build without the eBPF toolchain ({status})"
    );
    let agent = workspace.join("target/release/memscope-agent");
    let binary = fs::read(&agent).with_context(|| format!("reading {}", agent.display()))?;
    let object_path = workspace.join(PREBUILT_OBJECT);
    let object =
        fs::read(&object_path).with_context(|| format!("reading {}", object_path.display()))?;
    ensure!(
        contains(&binary, &object),
        "{} does not embed {}",
        agent.display(),
        object_path.display()
    );
    eprintln!(
        "packaging: {} embeds the committed eBPF object ({} bytes)",
        agent.display(),
        object.len()
    );
    Ok(agent)
}

/// Runs the binary as root with `tracker = "ebpf"`: the first snapshot must say `ebpf`. Returns
/// the agent's peak RSS over that first (full) emission, from its `agent` record.
fn attaches_as_root(agent: &Path, dir: &Path) -> anyhow::Result<u64> {
    let config = dir.join("root-ebpf.toml");
    write_world_readable(&config, "[agent]\ninterval = \"1s\"\ntracker = \"ebpf\"\n")?;
    let run = agent_run::first_emission(
        Command::new(agent).arg("--config").arg(&config),
        Duration::from_secs(120),
    )?;
    ensure!(
        run.exit.is_none() && run.tracker_mode()? == "ebpf",
        "the agent built without the toolchain did not attach as root: exit {:?}\n{}",
        run.exit,
        run.stderr
    );
    let agent_record = run.first("agent")?;
    let peak_rss = agent_record["max_rss_bytes"]
        .as_u64()
        .context("agent record has no max_rss_bytes")?;
    eprintln!(
        "packaging: built without the toolchain, the agent attaches as root: \"tracker\":{}; first emission: {} processes, cpu {} us, peak RSS {peak_rss} bytes",
        run.first("snapshot")?["tracker"],
        run.records
            .iter()
            .filter(|r| r["kind"] == "process")
            .count(),
        agent_record["cpu_user_us"].as_u64().unwrap_or(0)
            + agent_record["cpu_system_us"].as_u64().unwrap_or(0)
    );
    Ok(peak_rss)
}

/// The Debian suite of the scratch root (the .deb install test, the container check's base).
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// What the maintainer scripts and the container check call, beyond minbase.
const INCLUDE: &str = "adduser,init-system-helpers,libcap2-bin,procps";

/// A `debootstrap --variant=minbase` root, cached under target/packaging/ (about 2 minutes to
/// create, 200 MB).
fn debian_rootfs(workspace: &Path) -> anyhow::Result<PathBuf> {
    ensure_program("debootstrap", &["debootstrap"])?;
    let cache = workspace.join(format!(
        "target/packaging/{SUITE}-minbase-{}",
        INCLUDE.replace(',', "+")
    ));
    if cache.join("var/lib/dpkg/status").is_file() {
        return Ok(cache);
    }
    let partial = cache.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    eprintln!(
        "packaging: debootstrap {SUITE} minbase (+{INCLUDE}) into {}",
        partial.display()
    );
    crate::run_checked(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
            .arg(&partial)
            .arg(MIRROR),
    )?;
    let _ = fs::remove_dir_all(&cache);
    fs::rename(&partial, &cache)
        .with_context(|| format!("renaming {} to {}", partial.display(), cache.display()))?;
    Ok(cache)
}

/// Writes `text` to `path`, mode 0644.
fn write_world_readable(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Whether `haystack` contains `needle` (a prefix search, then a full compare).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some(head) = needle.get(..needle.len().min(64)) else {
        return false;
    };
    if head.is_empty() {
        return false;
    }
    haystack
        .windows(head.len())
        .enumerate()
        .filter(|(_, w)| *w == head)
        .any(|(i, _)| haystack.get(i..i + needle.len()) == Some(needle))
}

/// Installs Debian packages when `program` is missing (`apt-get update` first, once per call).
pub(crate) fn ensure_program(program: &str, packages: &[&str]) -> anyhow::Result<()> {
    if find_on_path(program).is_some() {
        return Ok(());
    }
    eprintln!(
        "packaging: {program} missing, installing {}",
        packages.join(" ")
    );
    crate::apt_install(packages)?;
    ensure!(
        find_on_path(program).is_some(),
        "{program} still missing after installing {packages:?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_finds_a_needle_longer_than_the_prefix() {
        let needle: Vec<u8> = (0..200u8).collect();
        let mut hay = vec![7u8; 1000];
        hay.extend_from_slice(&needle);
        hay.extend_from_slice(&[9; 10]);
        assert!(contains(&hay, &needle));
        let mut broken = needle.clone();
        broken[150] ^= 1;
        assert!(!contains(&hay, &broken));
        assert!(!contains(&hay, &[]));
    }

    #[test]
    fn find_in_searches_only_the_given_path() {
        assert!(find_in("/nonexistent-dir".as_ref(), "sh").is_none());
        assert!(find_in("/bin:/usr/bin".as_ref(), "sh").is_some());
    }
}
