//! The systemd unit, as the .deb installs it: `systemd-analyze verify` (no warnings allowed) and
//! the offline `systemd-analyze security` exposure, both against a scratch root holding the
//! package's files, this host's stock units (verify resolves `sysinit.target` and friends) and
//! `/bin/kill` (procps, a Depends: the unit's ExecReload).
//! Neither needs systemd as PID 1.

use std::{path::Path, process::Command};

use anyhow::{Context as _, ensure};

/// Levels `systemd-analyze security` may give the unit ("OK" or better).
const ACCEPTED: [&str; 3] = ["PERFECT", "SAFE", "OK"];

pub fn check(deb: &Path, dir: &Path) -> anyhow::Result<()> {
    super::ensure_program("systemd-analyze", &["systemd"])?;
    let root = dir.join("unit-root");
    crate::run_checked(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    let units = root.join("lib/systemd/system");
    crate::run_checked(
        Command::new("cp")
            .args(["-a", "--no-clobber", "/lib/systemd/system/."])
            .arg(&units),
    )?;
    // The unit's ExecReload runs /bin/kill, from procps (a Depends of the package).
    std::fs::create_dir_all(root.join("bin")).context("creating the scratch root's /bin")?;
    std::fs::copy("/bin/kill", root.join("bin/kill")).context("copying /bin/kill (procps)")?;
    let root_arg = format!("--root={}", root.display());

    let verify = Command::new("systemd-analyze")
        .args(["verify", &root_arg, "memscope.service"])
        .output()
        .context("running systemd-analyze verify")?;
    let complaints = String::from_utf8_lossy(&verify.stderr);
    ensure!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify memscope.service ({}):\n{complaints}",
        verify.status
    );

    let security = Command::new("systemd-analyze")
        .args([
            "security",
            "--offline=yes",
            &root_arg,
            "--no-pager",
            "memscope.service",
        ])
        .output()
        .context("running systemd-analyze security")?;
    let text = String::from_utf8_lossy(&security.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .with_context(|| format!("no exposure line in:\n{text}"))?;
    let (score, level) = parse_exposure(line)?;
    ensure!(
        ACCEPTED.contains(&level.as_str()),
        "exposure {score} {level} for memscope.service (wanted {ACCEPTED:?}):\n{text}"
    );
    eprintln!("packaging: systemd-analyze verify clean; security exposure {score} {level}");
    Ok(())
}

/// `→ Overall exposure level for memscope.service: 1.9 OK 🙂` → (1.9, "OK").
fn parse_exposure(line: &str) -> anyhow::Result<(f64, String)> {
    let rest = line
        .rsplit_once(": ")
        .map(|(_, r)| r)
        .with_context(|| format!("unexpected exposure line {line:?}"))?;
    let mut words = rest.split_whitespace();
    let score = words
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no score in {line:?}"))?;
    let level = words
        .next()
        .with_context(|| format!("no level in {line:?}"))?
        .to_owned();
    Ok((score, level))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_line_parses() -> anyhow::Result<()> {
        let (score, level) =
            parse_exposure("→ Overall exposure level for memscope.service: 1.9 OK 🙂")?;
        assert!((score - 1.9).abs() < 1e-9);
        assert_eq!(level, "OK");
        assert!(parse_exposure("nothing here").is_err());
        Ok(())
    }
}
