//! The agent in a container, as the DaemonSet runs it: uid 65532, the four capabilities and no
//! others, the host's pids and `/proc` (read-only), tracefs, BTF and cgroupfs read-only.
//!
//! No image registry is reachable here, so the shipped `Containerfile` (rust and distroless
//! bases) cannot be built. This check builds the same final stage on a local base instead: the
//! cached debootstrap root imported into podman, plus the release binary given the same file
//! capabilities and the ConfigMap's config. It runs `--once` with the host's `/proc` and then
//! the tracker, which must attach.
//!
//! podman runs with its own `CONTAINERS_CONF` (this host's settings are left alone): runc with
//! cgroupfs (crun refuses this host's hybrid cgroup layout) and no default ulimits (root here
//! lacks CAP_SYS_RESOURCE, so raising RLIMIT_NOFILE fails).

use std::{fs, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use serde_json::Value;

use super::caps::CAPS;

const BASE: &str = "localhost/memscope-packaging-base:bookworm";
const IMAGE: &str = "localhost/memscope-packaging:check";
const CONTAINERS_CONF: &str = "[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\n";

pub fn check(rootfs: &Path, agent: &Path, config_toml: &str, dir: &Path) -> anyhow::Result<()> {
    super::ensure_program("podman", &["podman", "runc"])?;
    super::ensure_program("runc", &["runc"])?;
    let conf = dir.join("containers.conf");
    fs::write(&conf, CONTAINERS_CONF).with_context(|| format!("writing {}", conf.display()))?;
    let podman = || {
        let mut command = Command::new("podman");
        command.env("CONTAINERS_CONF", &conf);
        command
    };

    let exists = podman()
        .args(["image", "exists", BASE])
        .status()
        .context("running podman image exists")?;
    if !exists.success() {
        eprintln!("packaging: importing {} as {BASE}", rootfs.display());
        let tar = dir.join("rootfs.tar");
        crate::run_checked(
            Command::new("tar")
                .arg("-C")
                .arg(rootfs)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        )?;
        crate::run_checked(podman().arg("import").arg(&tar).arg(BASE))?;
        fs::remove_file(&tar).with_context(|| format!("removing {}", tar.display()))?;
    }

    let context = dir.join("image");
    fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    fs::copy(agent, context.join("memscope-agent"))
        .with_context(|| format!("copying {}", agent.display()))?;
    fs::write(context.join("memscope.toml"), config_toml).context("writing the image config")?;
    let caps: Vec<String> = CAPS.iter().map(|c| format!("cap_{c}")).collect();
    let containerfile = format!(
        "FROM {BASE}\n\
         COPY memscope-agent /usr/bin/memscope-agent\n\
         COPY memscope.toml /etc/memscope/memscope.toml\n\
         RUN chmod 0755 /usr/bin/memscope-agent && setcap {}+ep /usr/bin/memscope-agent\n\
         USER 65532:65532\n\
         ENTRYPOINT [\"/usr/bin/memscope-agent\"]\n",
        caps.join(",")
    );
    fs::write(context.join("Containerfile"), containerfile).context("writing the Containerfile")?;
    crate::run_checked(
        podman()
            .args(["build", "--network", "none", "-q", "-t", IMAGE])
            .arg(&context),
    )?;

    let test_config = dir.join("container-ebpf.toml");
    super::write_world_readable(
        &test_config,
        "[agent]\ninterval = \"1s\"\nproc_root = \"/host/proc\"\ntracker = \"ebpf\"\n[collectors.cgroup]\nroot = \"/host/sys/fs/cgroup\"\n[collectors.tmpfs]\nenabled = false\n",
    )?;
    let name = format!("memscope-packaging-{}", std::process::id());
    let run = |extra: &[&str]| {
        let mut command = podman();
        command
            .args([
                "run",
                "--rm",
                "--name",
                &name,
                "--network",
                "none",
                "--pid",
                "host",
            ])
            .args(["--user", "65532:65532", "--read-only", "--cap-drop", "all"])
            // As the DaemonSet: podman's default profile denies bpf() without CAP_SYS_ADMIN.
            .args(["--security-opt", "seccomp=unconfined"])
            .args(["--cap-add", &CAPS.map(str::to_uppercase).join(",")])
            .args([
                "-v",
                "/proc:/host/proc:ro",
                "-v",
                "/sys/fs/cgroup:/host/sys/fs/cgroup:ro",
            ])
            .args(["-v", "/sys/kernel/btf:/sys/kernel/btf:ro"])
            .args(["-v", "/sys/kernel/tracing:/sys/kernel/tracing:ro"])
            .arg("-v")
            .arg(format!(
                "{}:/etc/memscope-test.toml:ro",
                test_config.display()
            ))
            .arg(IMAGE)
            .args(extra);
        command
    };

    // --once with the ConfigMap's config: the host's processes, exact.
    let output = run(&[
        "--config",
        "/etc/memscope/memscope.toml",
        "--once",
        "--host",
        "node-x",
    ])
    .output()
    .context("running the image --once")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "the image's --once run failed: {stderr}"
    );
    let records: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        records.iter().all(|r| r["host"] == "node-x"),
        "--host did not name every record"
    );
    let me = std::process::id();
    let mine = records
        .iter()
        .find(|r| r["kind"] == "process" && r["pid"] == me)
        .with_context(|| {
            format!("the host's pid {me} (this xtask) is not in the container's output")
        })?;
    ensure!(
        mine["numbers"] == "exact" && mine["uid"] == 0,
        "a root process of the host is not exact from the container: {mine}"
    );
    let processes = records.iter().filter(|r| r["kind"] == "process").count();

    // The tracker attaches inside the container.
    let attach = super::agent_run::first_emission(
        &mut run(&["--config", "/etc/memscope-test.toml"]),
        Duration::from_secs(120),
    );
    let _ = podman().args(["rm", "-f", "-i", &name]).output();
    let attach = attach?;
    ensure!(
        attach.exit.is_none() && attach.tracker_mode()? == "ebpf",
        "the tracker did not attach in the container: {:?}\n{}",
        attach.exit,
        attach.stderr
    );
    eprintln!(
        "packaging: container (uid 65532, caps {CAPS:?}, host pids and /proc read-only): --once saw {processes} host processes, root's exact; tracker ebpf"
    );
    Ok(())
}
