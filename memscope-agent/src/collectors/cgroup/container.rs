//! Which container, Kubernetes pod and systemd unit a cgroup path belongs to: a pure classifier over
//! the path's components. The patterns (documented in `docs/containers.md`, tested on real paths in
//! `fixtures/cgroup/container-paths`):
//!
//! | component | gives |
//! |---|---|
//! | `docker-<id>.scope`, or `<id>` after a `docker` component | runtime `docker`, id |
//! | `cri-containerd-<id>.scope`, or `…:cri-containerd:<id>` | runtime `containerd`, id |
//! | `crio-<id>.scope`, or `…:crio:<id>` | runtime `cri-o`, id |
//! | `libpod-<id>.scope` | runtime `podman`, id (`libpod-conmon-…` is podman's monitor, not the container) |
//! | `kubepods-<qos>-pod<uid>.slice`, `kubepods-pod<uid>.slice` | pod UID (`_` back to `-`), QoS (`guaranteed` without a QoS level) |
//! | `kubepods/<qos>/pod<uid>`, `kubepods/pod<uid>` | the same, cgroupfs driver |
//! | `<id>` after a `pod<uid>` component | container id, runtime unknown |
//! | the last `*.service` or `*.scope` | systemd unit |
//!
//! An id is 12 to 128 lowercase hex digits. When several components match (a container inside a
//! container), the innermost wins.

use serde::Serialize;

use crate::procfs::escape::Name;

/// Kubernetes QoS class of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    Guaranteed,
    Burstable,
    Besteffort,
}

impl Qos {
    fn from_level(level: &[u8]) -> Option<Qos> {
        match level {
            b"burstable" => Some(Qos::Burstable),
            b"besteffort" => Some(Qos::Besteffort),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::Besteffort => "besteffort",
        }
    }
}

/// The container a cgroup path shows, as far as it shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Container {
    /// `docker`, `containerd`, `cri-o`, `podman`; `None` when the path holds only a bare id.
    pub runtime: Option<&'static str>,
    pub id: Option<String>,
    pub pod_uid: Option<String>,
    pub qos: Option<Qos>,
}

/// What a cgroup path says about its owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classified {
    /// Some when a runtime, container id or pod is known.
    pub container: Option<Container>,
    /// The innermost systemd `.service` or `.scope`.
    pub unit: Option<Name>,
}

/// Classifies a cgroup path (`/kubepods.slice/…/cri-containerd-<id>.scope`).
pub fn classify(path: &[u8]) -> Classified {
    let mut c = Container::default();
    let mut unit = None;
    let mut prev: &[u8] = b"";
    let mut under_kubepods = false;
    for comp in path.split(|&b| b == b'/').filter(|s| !s.is_empty()) {
        if comp.ends_with(b".service") || comp.ends_with(b".scope") {
            unit = Some(Name::new(comp));
        }
        if let Some((runtime, id)) = runtime_and_id(comp) {
            c.runtime = Some(runtime);
            c.id = Some(id);
        } else if prev == b"docker" && is_id(comp) {
            c.runtime = Some("docker");
            c.id = Some(ascii(comp));
        } else if prev.starts_with(b"pod") && c.pod_uid.is_some() && is_id(comp) {
            c.runtime = None;
            c.id = Some(ascii(comp));
        }
        // A `slice:prefix:name` component also names the pod slice before its first colon.
        let slice = comp.split(|&b| b == b':').next().unwrap_or(comp);
        if let Some((qos, uid)) = systemd_pod(slice) {
            c.qos = Some(qos);
            c.pod_uid = Some(uid);
        }
        if comp == b"kubepods" || comp == b"kubepods.slice" {
            under_kubepods = true;
        } else if under_kubepods && prev == b"kubepods" {
            // cgroupfs driver: kubepods/<qos>/pod<uid> or kubepods/pod<uid> (guaranteed).
            match Qos::from_level(comp) {
                Some(q) => c.qos = Some(q),
                None => {
                    if let Some(uid) = pod_uid(comp) {
                        c.qos = Some(Qos::Guaranteed);
                        c.pod_uid = Some(uid);
                    }
                }
            }
        } else if under_kubepods
            && matches!(prev, b"burstable" | b"besteffort")
            && let Some(uid) = pod_uid(comp)
        {
            c.pod_uid = Some(uid);
        }
        prev = comp;
    }
    let known = c.runtime.is_some() || c.id.is_some() || c.pod_uid.is_some();
    Classified {
        container: known.then_some(c),
        unit,
    }
}

/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`, and
/// the `slice:cri-containerd:<id>` / `slice:crio:<id>` / `slice:docker:<id>` forms.
fn runtime_and_id(comp: &[u8]) -> Option<(&'static str, String)> {
    const SCOPES: [(&[u8], &str); 4] = [
        (b"docker-", "docker"),
        (b"cri-containerd-", "containerd"),
        (b"crio-", "cri-o"),
        (b"libpod-", "podman"),
    ];
    if let Some(stem) = comp.strip_suffix(b".scope") {
        for (prefix, runtime) in SCOPES {
            if let Some(id) = stem.strip_prefix(prefix)
                && is_id(id)
            {
                return Some((runtime, ascii(id)));
            }
        }
    }
    let mut parts = comp.splitn(3, |&b| b == b':');
    let (Some(_slice), Some(prefix), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let runtime = match prefix {
        b"cri-containerd" => "containerd",
        b"crio" => "cri-o",
        b"docker" => "docker",
        _ => return None,
    };
    is_id(id).then(|| (runtime, ascii(id)))
}

/// `kubepods-burstable-pod<uid>.slice`, `kubepods-besteffort-pod<uid>.slice`,
/// `kubepods-pod<uid>.slice` (guaranteed). The UID's dashes are underscores in slice names.
fn systemd_pod(comp: &[u8]) -> Option<(Qos, String)> {
    let stem = comp.strip_suffix(b".slice")?.strip_prefix(b"kubepods-")?;
    let (qos, rest) = match stem.iter().position(|&b| b == b'-') {
        Some(i) if !stem.starts_with(b"pod") => (Qos::from_level(&stem[..i])?, stem.get(i + 1..)?),
        _ => (Qos::Guaranteed, stem),
    };
    let uid: Vec<u8> = rest
        .strip_prefix(b"pod")?
        .iter()
        .map(|&b| if b == b'_' { b'-' } else { b })
        .collect();
    is_uid(&uid).then(|| (qos, ascii(&uid)))
}

/// `pod<uid>` (cgroupfs driver).
fn pod_uid(comp: &[u8]) -> Option<String> {
    let uid = comp.strip_prefix(b"pod")?;
    is_uid(uid).then(|| ascii(uid))
}

/// A pod UID: hex digits and dashes (a UUID, or a static pod's 32-digit hash), 32 to 36 long.
fn is_uid(s: &[u8]) -> bool {
    (32..=36).contains(&s.len())
        && s.iter()
            .all(|&b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
}

/// A container id: 12 to 128 lowercase hex digits.
fn is_id(s: &[u8]) -> bool {
    (12..=128).contains(&s.len())
        && s.iter()
            .all(|&b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Only called on bytes already checked to be ASCII.
fn ascii(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(s: &str) -> Option<&str> {
        (s != "-").then_some(s)
    }

    #[test]
    fn classifies_real_paths_of_each_runtime() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/cgroup/container-paths");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut checked = 0;
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.split(" | ").map(str::trim).collect();
            assert_eq!(cols.len(), 6, "bad fixture line {line:?}");
            let got = classify(cols[0].as_bytes());
            let c = got.container.clone().unwrap_or_default();
            assert_eq!(c.runtime, opt(cols[1]), "runtime of {}", cols[0]);
            assert_eq!(c.id.as_deref(), opt(cols[2]), "id of {}", cols[0]);
            assert_eq!(c.pod_uid.as_deref(), opt(cols[3]), "pod of {}", cols[0]);
            assert_eq!(c.qos.map(Qos::as_str), opt(cols[4]), "qos of {}", cols[0]);
            assert_eq!(
                got.unit.as_ref().map(|u| u.lossy().into_owned()).as_deref(),
                opt(cols[5]),
                "unit of {}",
                cols[0]
            );
            let any = [1, 2, 3].iter().any(|&i| cols[i] != "-");
            assert_eq!(got.container.is_some(), any, "container of {}", cols[0]);
            checked += 1;
        }
        assert!(checked >= 15, "only {checked} paths checked");
    }

    #[test]
    fn innermost_container_wins_and_lookalikes_do_not_match() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let c = classify(format!("/docker/{a}/docker/{b}").as_bytes());
        assert_eq!(c.container.and_then(|c| c.id), Some(b));
        // Not hex, too short, upper case, or a pod prefix outside kubepods.
        for p in [
            "/docker/not-an-id",
            "/docker-abc.scope",
            "/system.slice/docker-ABCDEF0123456789.scope",
            "/podcast/0123456789abcdef",
            "/kubepods-gold-pod0123.slice",
        ] {
            assert_eq!(classify(p.as_bytes()).container, None, "{p}");
        }
        // Hostile bytes never panic, and a unit name keeps them losslessly.
        let c = classify(b"/\xff\xfe.service/\x00:crio:/");
        assert_eq!(c.unit, Some(Name::new(&b"\xff\xfe.service"[..])));
    }
}
