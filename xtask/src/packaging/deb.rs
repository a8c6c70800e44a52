//! The .deb: built by cargo-deb from the release binary, then its contents, control data and
//! conffiles checked, and installed, removed and purged in a scratch Debian root (a debootstrap
//! minbase chroot, so the maintainer scripts run against a real dpkg database and never touch
//! this host).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

/// cargo-deb version installed when missing (pinned: the metadata is checked against it).
const CARGO_DEB: &str = "3.8.0";
/// Builds and checks the package; returns its path.
pub fn check(workspace: &Path, rootfs: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    ensure_cargo_deb()?;
    let deb = dir.join("memscope-agent.deb");
    crate::run_checked(
        Command::new("cargo")
            .args(["deb", "-p", "memscope-agent", "--no-build", "--output"])
            .arg(&deb)
            .current_dir(workspace),
    )?;

    let listing = stdout(Command::new("dpkg-deb").arg("--contents").arg(&deb))?;
    for (path, mode) in [
        ("./usr/bin/memscope-agent", "-rwxr-xr-x"),
        ("./etc/memscope/memscope.toml", "-rw-r--r--"),
        ("./lib/systemd/system/memscope.service", "-rw-r--r--"),
        ("./usr/share/doc/memscope-agent/deploy.md", "-rw-r--r--"),
    ] {
        ensure!(
            listing
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(path)),
            "{path} ({mode}) is not in the package:\n{listing}"
        );
    }
    let conffiles = stdout(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .arg("conffiles"),
    )?;
    ensure!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/memscope/memscope.toml"),
        "/etc/memscope/memscope.toml is not a conffile: {conffiles:?}"
    );
    let depends = stdout(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .arg("Depends"),
    )?;
    // procps: /bin/kill, for the unit's ExecReload (SIGHUP reloads the config).
    for needed in ["libc6", "adduser", "init-system-helpers", "procps"] {
        ensure!(
            depends.contains(needed),
            "Depends lacks {needed}: {depends}"
        );
    }
    eprintln!(
        "packaging: .deb contents, conffile and Depends ({}) ok",
        depends.trim()
    );

    install_in_scratch_root(rootfs, dir, &deb)?;
    Ok(deb)
}

/// `cargo deb --version`, installing the pinned cargo-deb when missing.
fn ensure_cargo_deb() -> anyhow::Result<()> {
    let found = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Ok(());
    }
    eprintln!("packaging: cargo-deb missing, installing {CARGO_DEB} (a few minutes)");
    crate::run_checked(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB,
    ]))
}

/// Copies the Debian root, then `dpkg -i`, `-r`, `-P` inside it.
fn install_in_scratch_root(rootfs: &Path, dir: &Path, deb: &Path) -> anyhow::Result<()> {
    let root = dir.join("debian-root");
    crate::run_checked(Command::new("cp").arg("-a").arg(rootfs).arg(&root))?;
    let inside = root.join("tmp/memscope-agent.deb");
    fs::copy(deb, &inside).with_context(|| format!("copying into {}", inside.display()))?;

    chroot(&root, &["dpkg", "-i", "/tmp/memscope-agent.deb"])?;
    let passwd = chroot(&root, &["getent", "passwd", "memscope"])?;
    let uid: u32 = passwd
        .split(':')
        .nth(2)
        .and_then(|u| u.parse().ok())
        .with_context(|| format!("bad passwd line {passwd:?}"))?;
    ensure!(uid < 1000, "memscope is not a system user: {passwd}");
    let log_dir = chroot(&root, &["stat", "-c", "%U:%G %a", "/var/log/memscope"])?;
    ensure!(
        log_dir.trim() == "memscope:adm 2750",
        "/var/log/memscope is {log_dir}"
    );
    let checked = chroot(
        &root,
        &[
            "/usr/bin/memscope-agent",
            "check-config",
            "/etc/memscope/memscope.toml",
        ],
    );
    checked.context("the installed binary rejects the installed default config")?;

    chroot(&root, &["dpkg", "-r", "memscope-agent"])?;
    ensure!(
        !root.join("usr/bin/memscope-agent").exists(),
        "dpkg -r left the binary"
    );
    ensure!(
        root.join("etc/memscope/memscope.toml").is_file(),
        "dpkg -r removed the conffile (it must stay until purge)"
    );
    chroot(&root, &["dpkg", "-P", "memscope-agent"])?;
    for gone in ["etc/memscope/memscope.toml", "var/log/memscope"] {
        ensure!(!root.join(gone).exists(), "dpkg -P left /{gone}");
    }
    let status = Command::new("chroot")
        .arg(&root)
        .args(["dpkg-query", "-W", "memscope-agent"])
        .output()
        .context("running dpkg-query in the chroot")?;
    ensure!(
        !status.status.success(),
        "dpkg still knows memscope-agent after purge"
    );
    eprintln!(
        "packaging: .deb installs in a Debian {} root (system user uid {uid}, /var/log/memscope memscope:adm 2750, config accepted), removes (conffile kept) and purges cleanly",
        super::SUITE
    );
    fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    Ok(())
}

/// `chroot ROOT ARGS`, failing with its output; returns stdout.
fn chroot(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    stdout(Command::new("chroot").arg(root).args(args))
        .with_context(|| format!("in the scratch root {}", root.display()))
}

/// Runs `command` and returns its stdout; on failure the error has stdout and stderr.
fn stdout(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}):\n{out}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(out)
}
