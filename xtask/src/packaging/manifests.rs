//! The Kubernetes manifests and the Containerfile: what the agent needs is in them.
//!
//! - DaemonSet: hostPID; the host's /proc, /sys/fs/cgroup, /sys/kernel/btf and tracefs mounted
//!   read-only; exactly the capabilities the caps check proved ([`super::caps::CAPS`]), all
//!   others dropped, not privileged, non-root; the node name passed as `--host`; tolerations for
//!   every taint; a memory limit at least twice the peak RSS measured in this run.
//! - ConfigMap: its memscope.toml passes the agent's own `check-config`, and its `proc_root` and
//!   cgroup `root` are where the DaemonSet mounts the host's /proc and /sys/fs/cgroup.
//! - Containerfile: multi-stage, the final user is the DaemonSet's, and the file capabilities
//!   are the same four.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use super::caps::CAPS;

/// Host paths the agent reads, and where the DaemonSet must mount them (read-only).
const HOST_MOUNTS: [(&str, &str); 4] = [
    ("/proc", "/host/proc"),
    ("/sys/fs/cgroup", "/host/sys/fs/cgroup"),
    ("/sys/kernel/btf", "/sys/kernel/btf"),
    ("/sys/kernel/tracing", "/sys/kernel/tracing"),
];

/// Returns the ConfigMap's memscope.toml.
pub fn check(workspace: &Path, agent: &Path, dir: &Path, peak_rss: u64) -> anyhow::Result<String> {
    let daemonset = load_yaml(&workspace.join("deploy/kubernetes/daemonset.yaml"))?;
    let configmap = load_yaml(&workspace.join("deploy/kubernetes/configmap.yaml"))?;
    let user = check_daemonset(&daemonset, peak_rss)?;
    let config = check_configmap(&configmap, agent, dir)?;
    let containerfile = workspace.join("Containerfile");
    let text = fs::read_to_string(&containerfile)
        .with_context(|| format!("reading {}", containerfile.display()))?;
    check_containerfile(&text, user)?;
    eprintln!(
        "packaging: DaemonSet, ConfigMap and Containerfile have what the agent needs (uid {user}, caps {CAPS:?}, memory limit >= 2 x peak RSS {peak_rss})"
    );
    Ok(config)
}

fn load_yaml(path: &Path) -> anyhow::Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The container's uid when everything holds.
fn check_daemonset(ds: &Value, peak_rss: u64) -> anyhow::Result<u64> {
    ensure!(ds["kind"] == "DaemonSet", "kind is {}", ds["kind"]);
    let pod = &ds["spec"]["template"]["spec"];
    ensure!(pod["hostPID"] == true, "hostPID is not true");
    ensure!(
        pod["tolerations"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none())),
        "no toleration with operator Exists and no key (every taint)"
    );
    let containers = pod["containers"].as_array().context("no containers")?;
    ensure!(containers.len() == 1, "{} containers", containers.len());
    let c = &containers[0];

    let sc = &c["securityContext"];
    ensure!(sc["privileged"] != true, "the container is privileged");
    ensure!(sc["runAsNonRoot"] == true, "runAsNonRoot is not true");
    let uid = sc["runAsUser"].as_u64().context("no numeric runAsUser")?;
    ensure!(uid != 0, "runAsUser is 0");
    ensure!(
        sc["readOnlyRootFilesystem"] == true,
        "root filesystem is writable"
    );
    ensure!(
        sc["seccompProfile"]["type"].is_string(),
        "no seccompProfile (the agent needs bpf and perf_event_open)"
    );
    let mut added: Vec<String> = strings(&sc["capabilities"]["add"])?;
    added.sort();
    let mut wanted: Vec<String> = CAPS.iter().map(|c| c.to_uppercase()).collect();
    wanted.sort();
    ensure!(
        added == wanted,
        "capabilities.add is {added:?}, wanted {wanted:?}"
    );
    ensure!(
        strings(&sc["capabilities"]["drop"])? == ["ALL"],
        "capabilities.drop is not [ALL]"
    );

    let volumes = pod["volumes"].as_array().context("no volumes")?;
    let mounts = c["volumeMounts"].as_array().context("no volumeMounts")?;
    for (host, target) in HOST_MOUNTS {
        let volume = volumes
            .iter()
            .find(|v| v["hostPath"]["path"] == host)
            .with_context(|| format!("no hostPath volume for {host}"))?;
        let mount = mounts
            .iter()
            .find(|m| m["name"] == volume["name"])
            .with_context(|| format!("hostPath {host} is not mounted"))?;
        ensure!(
            mount["mountPath"] == target && mount["readOnly"] == true,
            "{host} must be mounted read-only at {target}: {mount}"
        );
    }

    let args = strings(&c["args"])?;
    let host_arg = args
        .iter()
        .position(|a| a == "--host")
        .and_then(|i| args.get(i + 1))
        .context("no --host argument")?;
    let var = host_arg
        .strip_prefix("$(")
        .and_then(|v| v.strip_suffix(')'))
        .with_context(|| format!("--host {host_arg} is not an env reference"))?;
    let env = c["env"].as_array().context("no env")?;
    ensure!(
        env.iter()
            .any(|e| e["name"] == var && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
        "env {var} does not come from spec.nodeName"
    );

    let limit = quantity(&c["resources"]["limits"]["memory"])?;
    let request = quantity(&c["resources"]["requests"]["memory"])?;
    ensure!(
        limit >= 2 * peak_rss,
        "memory limit {limit} is below twice the measured peak RSS {peak_rss}"
    );
    ensure!(
        request >= peak_rss && request <= limit,
        "memory request {request} should cover the peak RSS {peak_rss} and stay under the limit"
    );
    ensure!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["limits"]["cpu"].is_string(),
        "cpu request/limit missing"
    );
    Ok(uid)
}

fn check_configmap(cm: &Value, agent: &Path, dir: &Path) -> anyhow::Result<String> {
    ensure!(cm["kind"] == "ConfigMap", "kind is {}", cm["kind"]);
    let toml = cm["data"]["memscope.toml"]
        .as_str()
        .context("no data.memscope.toml")?;
    // check-config also checks that the directories it reads exist. In the pod they are the
    // DaemonSet's host mounts under /host; here a stand-in /host links them to this host's.
    let host = dir.join("host");
    std::fs::create_dir_all(host.join("sys/fs"))
        .with_context(|| format!("creating {}", host.display()))?;
    for (link, target) in [("proc", "/proc"), ("sys/fs/cgroup", "/sys/fs/cgroup")] {
        let link = host.join(link);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(target, &link)
                .with_context(|| format!("linking {} to {target}", link.display()))?;
        }
    }
    let rooted = toml.replace("\"/host/", &format!("\"{}/", host.display()));
    let path = dir.join("configmap-memscope.toml");
    super::write_world_readable(&path, &rooted)?;
    let out = Command::new(agent)
        .arg("check-config")
        .arg(&path)
        .output()
        .with_context(|| format!("running {} check-config", agent.display()))?;
    ensure!(
        out.status.success(),
        "the ConfigMap's memscope.toml is rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (line, mount) in [
        ("proc_root = \"/host/proc\"", "/proc"),
        ("root = \"/host/sys/fs/cgroup\"", "/sys/fs/cgroup"),
    ] {
        ensure!(
            toml.lines().any(|l| l.trim() == line),
            "the ConfigMap lacks `{line}` (where the DaemonSet mounts the host's {mount})"
        );
    }
    Ok(toml.to_owned())
}

fn check_containerfile(text: &str, uid: u64) -> anyhow::Result<()> {
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    ensure!(
        froms >= 2,
        "the Containerfile is not multi-stage ({froms} FROM)"
    );
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .context("no USER in the Containerfile")?;
    ensure!(
        user.split(':').next() == Some(uid.to_string().as_str()),
        "the image's USER {user} is not the DaemonSet's runAsUser {uid}"
    );
    let caps: Vec<String> = CAPS.iter().map(|c| format!("cap_{c}")).collect();
    let setcap = format!("setcap {}+ep", caps.join(","));
    ensure!(
        text.contains(&setcap),
        "the Containerfile does not run `{setcap}`"
    );
    Ok(())
}

fn strings(value: &Value) -> anyhow::Result<Vec<String>> {
    value
        .as_array()
        .with_context(|| format!("{value} is not a list"))?
        .iter()
        .map(|v| v.as_str().map(str::to_owned).context("not a string"))
        .collect()
}

/// A Kubernetes memory quantity (`64Mi`, `1Gi`, `500M`, plain bytes) in bytes.
fn quantity(value: &Value) -> anyhow::Result<u64> {
    let text = value
        .as_str()
        .with_context(|| format!("{value} is not a quantity"))?;
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .with_context(|| format!("bad quantity {text}"))?;
    let factor: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        other => bail!("unknown quantity unit {other:?} in {text}"),
    };
    number
        .checked_mul(factor)
        .with_context(|| format!("quantity {text} overflows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifests() -> anyhow::Result<(Value, Value)> {
        let root = crate::workspace_root();
        Ok((
            load_yaml(&root.join("deploy/kubernetes/daemonset.yaml"))?,
            load_yaml(&root.join("deploy/kubernetes/configmap.yaml"))?,
        ))
    }

    #[test]
    fn quantities() -> anyhow::Result<()> {
        assert_eq!(quantity(&"64Mi".into())?, 64 << 20);
        assert_eq!(quantity(&"500M".into())?, 500_000_000);
        assert_eq!(quantity(&"1024".into())?, 1024);
        assert!(quantity(&"1Ti".into()).is_err());
        assert!(quantity(&Value::Null).is_err());
        Ok(())
    }

    #[test]
    fn committed_daemonset_passes_and_each_requirement_can_fail() -> anyhow::Result<()> {
        let (ds, _) = manifests()?;
        check_daemonset(&ds, 20 << 20)?;
        type Breaker = (&'static str, fn(&mut Value));
        let breakers: [Breaker; 6] = [
            ("hostPID", |d| {
                d["spec"]["template"]["spec"]["hostPID"] = false.into()
            }),
            ("privileged", |d| {
                d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] =
                    true.into();
            }),
            ("a cap", |d| {
                d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
                    ["add"] = serde_json::json!(["BPF", "PERFMON", "SYS_PTRACE"]);
            }),
            ("read-only /proc", |d| {
                d["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][1]["readOnly"] =
                    false.into();
            }),
            ("tolerations", |d| {
                d["spec"]["template"]["spec"]["tolerations"] = serde_json::json!([]);
            }),
            ("node name", |d| {
                d["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["fieldRef"]
                    ["fieldPath"] = "metadata.name".into();
            }),
        ];
        for (what, breaker) in breakers {
            let mut broken = ds.clone();
            breaker(&mut broken);
            assert!(check_daemonset(&broken, 20 << 20).is_err(), "{what}");
        }
        assert!(
            check_daemonset(&ds, 1 << 30).is_err(),
            "a peak RSS above half the limit must fail"
        );
        Ok(())
    }

    #[test]
    fn committed_containerfile_matches_the_daemonset() -> anyhow::Result<()> {
        let text = fs::read_to_string(crate::workspace_root().join("Containerfile"))?;
        check_containerfile(&text, 65532)?;
        assert!(check_containerfile(&text, 1000).is_err());
        assert!(check_containerfile(&text.replace("cap_sys_ptrace", "x"), 65532).is_err());
        Ok(())
    }
}
