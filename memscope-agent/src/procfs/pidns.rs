//! Whether the eBPF tracker's pids name the processes of `proc_root`.
//!
//! The kernel side of the tracker reports every process by its pid in the *initial* pid namespace
//! (`bpf_get_current_pid_tgid`). Its marks and exits therefore name the processes of `proc_root`
//! only when `proc_root` is a proc filesystem of that namespace: the host's `/proc`, or the host's
//! `/proc` mounted elsewhere (`/host/proc` in a DaemonSet). Over anything else (a fixture tree, a
//! copy, the `/proc` of a container's pid namespace) the tracker's pids are other processes' pids:
//! it would mark the wrong processes and send `exit` records of host processes into the stream. So
//! the agent then polls, and [`ebpf_pids`] says why.

use std::path::Path;

/// The inode of the initial pid namespace (`PROC_PID_INIT_INO` in the kernel's
/// `include/linux/proc_ns.h`, fixed since Linux 3.8): `readlink /proc/1/ns/pid` on the host says
/// `pid:[4026531836]`.
pub const INIT_PID_NS_LINK: &str = "pid:[4026531836]";

/// What was found under a proc root, for [`judge`].
#[derive(Debug)]
pub struct Probe {
    /// Whether `proc_root` is the root of a proc filesystem (statfs `PROC_SUPER_MAGIC`).
    pub procfs: Result<bool, std::io::Error>,
    /// `readlink <proc_root>/self`: the agent's own pid as the tree numbers it. A proc filesystem
    /// has no `self` for a process outside its pid namespace (and that namespace's descendants).
    pub own_pid: Result<String, std::io::Error>,
    /// `readlink <proc_root>/self/ns/pid`: the agent's own pid namespace (always readable).
    pub own_ns: Result<String, std::io::Error>,
    /// `readlink <proc_root>/1/ns/pid`: the namespace the tree shows (its pid 1 is in it); needs
    /// root or CAP_SYS_PTRACE. Asked only when the agent is not in the initial namespace itself.
    pub pid1_ns: Result<String, std::io::Error>,
}

impl Probe {
    /// Looks at `proc_root` (a statfs and up to three readlinks; no file is read).
    pub fn of(proc_root: &Path) -> Probe {
        let link = |p: &str| {
            std::fs::read_link(proc_root.join(p)).map(|t| t.to_string_lossy().into_owned())
        };
        let own_ns = link("self/ns/pid");
        let in_init = own_ns.as_deref().is_ok_and(|ns| ns == INIT_PID_NS_LINK);
        Probe {
            procfs: rustix::fs::statfs(proc_root)
                .map(|s| s.f_type == rustix::fs::PROC_SUPER_MAGIC)
                .map_err(std::io::Error::from),
            own_pid: link("self"),
            own_ns,
            pid1_ns: if in_init {
                Err(std::io::ErrorKind::Unsupported.into())
            } else {
                link("1/ns/pid")
            },
        }
    }
}

/// The agent's own pid in the initial pid namespace (the tgid the kernel side must ignore) when
/// the tracker's pids are those of `proc_root`; else why not, naming `proc_root`.
pub fn ebpf_pids(proc_root: &Path) -> Result<u32, String> {
    judge(proc_root, Probe::of(proc_root))
}

/// The decision of [`ebpf_pids`] from what was found. The tree shows the initial namespace when
/// the agent is in it and sees itself in the tree (a proc filesystem shows no process of an
/// ancestor namespace), or else when the tree's pid 1 is in it.
pub fn judge(proc_root: &Path, probe: Probe) -> Result<u32, String> {
    let root = proc_root.display();
    let why = "the eBPF tracker's pids are the initial pid namespace's";
    match probe.procfs {
        Ok(true) => {}
        Ok(false) => {
            return Err(format!(
                "proc_root {root} is not a proc filesystem (a fixture tree or a copy): {why}"
            ));
        }
        Err(e) => return Err(format!("proc_root {root}: statfs: {e}")),
    }
    let own = match probe.own_pid {
        Ok(own) => own
            .parse::<u32>()
            .map_err(|_| format!("proc_root {root}: {root}/self points at {own:?}, not a pid"))?,
        Err(e) => {
            return Err(format!(
                "proc_root {root} does not show the agent ({root}/self: {e}): another pid namespace than the host's; {why}"
            ));
        }
    };
    if probe
        .own_ns
        .as_deref()
        .is_ok_and(|ns| ns == INIT_PID_NS_LINK)
    {
        return Ok(own);
    }
    match probe.pid1_ns {
        Ok(ns) if ns == INIT_PID_NS_LINK => Ok(own),
        Ok(ns) => Err(format!(
            "proc_root {root} shows another pid namespace ({ns}) than the host's: {why}"
        )),
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (another process's namespace link needs root or CAP_SYS_PTRACE)"
            } else {
                ""
            };
            Err(format!(
                "proc_root {root}: cannot tell its pid namespace: {root}/1/ns/pid: {e}{hint}"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use super::*;

    const OTHER: &str = "pid:[4026532301]";

    fn probe(
        procfs: bool,
        own: Result<&str, ErrorKind>,
        own_ns: &str,
        pid1_ns: Result<&str, ErrorKind>,
    ) -> Probe {
        let text = |r: Result<&str, ErrorKind>| r.map(str::to_string).map_err(Error::from);
        Probe {
            procfs: Ok(procfs),
            own_pid: text(own),
            own_ns: Ok(own_ns.to_string()),
            pid1_ns: text(pid1_ns),
        }
    }

    #[test]
    fn only_a_proc_filesystem_of_the_initial_pid_namespace_gives_ebpf() {
        let root = Path::new("/host/proc");
        let judged = |p| judge(root, p);
        let unasked = Err(ErrorKind::Unsupported);
        // The host's /proc, the agent on the host: its own link says so, no ptrace needed.
        assert_eq!(
            judged(probe(true, Ok("4242"), INIT_PID_NS_LINK, unasked)),
            Ok(4242)
        );
        // The agent in a container's pid namespace, the host's /proc mounted: pid 1 tells.
        assert_eq!(
            judged(probe(true, Ok("4242"), OTHER, Ok(INIT_PID_NS_LINK))),
            Ok(4242)
        );
        let e = judged(probe(false, Ok("4242"), INIT_PID_NS_LINK, unasked)).expect_err("a tree");
        assert!(
            e.contains("/host/proc") && e.contains("not a proc filesystem"),
            "{e}"
        );
        // A container's own /proc, the agent inside: pid 1 is the container's init.
        let e = judged(probe(true, Ok("7"), OTHER, Ok(OTHER))).expect_err("a container's /proc");
        assert!(e.contains(OTHER), "{e}");
        // A child namespace's /proc, the agent on the host: it has no `self` there.
        let e = judged(probe(
            true,
            Err(ErrorKind::NotFound),
            INIT_PID_NS_LINK,
            unasked,
        ))
        .expect_err("a child namespace's /proc");
        assert!(e.contains("/host/proc/self"), "{e}");
        let e = judged(probe(
            true,
            Ok("7"),
            OTHER,
            Err(ErrorKind::PermissionDenied),
        ))
        .expect_err("unknown namespace");
        assert!(
            e.contains("/host/proc/1/ns/pid") && e.contains("CAP_SYS_PTRACE"),
            "{e}"
        );
        let e = judged(probe(true, Ok("self"), INIT_PID_NS_LINK, unasked)).expect_err("no pid");
        assert!(e.contains("not a pid"), "{e}");
    }

    #[test]
    fn the_fixture_tree_is_not_the_host() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/proc");
        let e = ebpf_pids(&fixtures).expect_err("fixtures are not a proc filesystem");
        assert!(e.contains("not a proc filesystem"), "{e}");
        let e = ebpf_pids(Path::new("/nonexistent/proc")).expect_err("missing");
        assert!(e.contains("/nonexistent/proc"), "{e}");
    }
}
