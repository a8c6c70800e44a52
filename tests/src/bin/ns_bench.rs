//! Mount-namespace discovery benchmark (root): starts N processes, each in a mount namespace of its
//! own (`unshare -m sleep`), then times one agent tick's discovery (the smaps and the tmpfs
//! collector each ask once) without the cache (two full discoveries, as before the cache) and with
//! the shared cache in its steady state. Prints the median and the minimum of the rounds.
//!
//! `cargo run --release -p memscope-tests --bin ns_bench [N]` (default 100). The processes are
//! this run's children and are killed at the end. Figures depend on the host's load: quote them
//! with the load average printed beside them.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use memscope_agent::procfs::{
    ProcFs,
    mountinfo::{SharedNamespaces, discover},
};
use memscope_tests::bench::{Children, ensure_root};

const ROUNDS: usize = 21;

fn median_min(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[expect(clippy::print_stdout, reason = "the figures are this binary's output")]
fn main() -> anyhow::Result<()> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().with_context(|| format!("N: {a:?}"))?,
        None => 100,
    };
    ensure_root("ns_bench needs root (unshare -m, and reading other processes' ns links)")?;
    let procfs = ProcFs::new("/proc");
    let own = procfs.mount_ns("self").context("own mount namespace")?;
    let mut children = Children(Vec::with_capacity(n));
    for _ in 0..n {
        let child = Command::new("unshare")
            .args(["-m", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .context("unshare -m sleep (util-linux)")?;
        children.0.push(child);
    }
    // Wait (bounded) until every child is in a namespace of its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let moved = children
            .0
            .iter()
            .filter(|c| procfs.mount_ns(&c.id().to_string()).is_ok_and(|i| i != own))
            .count();
        if moved == n {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {moved} of {n} children in their own mount namespace after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let max = u32::try_from(n + 64).unwrap_or(u32::MAX);
    let mut buf = Vec::new();
    let found = discover(&procfs, max as usize, &mut buf)?.namespaces.len();
    let pids = procfs.pids()?.len();

    let shared = SharedNamespaces::new(max);
    shared.discover(&procfs, &mut buf)?; // the first run reads everything
    shared.discover(&procfs, &mut buf)?; // and the second every link once more
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        // One tick as before the cache: smaps and tmpfs each discover everything.
        let t = Instant::now();
        discover(&procfs, max as usize, &mut buf)?;
        discover(&procfs, max as usize, &mut buf)?;
        before.push(t.elapsed());
        // One tick with the shared cache.
        let t = Instant::now();
        let a = shared.discover(&procfs, &mut buf)?;
        let b = shared.discover(&procfs, &mut buf)?;
        after.push(t.elapsed());
        if a.namespaces.len() != found || b.namespaces.len() != found {
            bail!(
                "the cache found {} and {} namespaces, a full discovery {found}",
                a.namespaces.len(),
                b.namespaces.len()
            );
        }
    }
    let (b_med, b_min) = median_min(before);
    let (a_med, a_min) = median_min(after);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "mount namespaces: {found} (incl. the agent's own), processes: {pids}, rounds: {ROUNDS}"
    );
    println!(
        "per tick (smaps + tmpfs), uncached: median {:.2} ms, min {:.2} ms",
        ms(b_med),
        ms(b_min)
    );
    println!(
        "per tick (smaps + tmpfs), cached:   median {:.2} ms, min {:.2} ms",
        ms(a_med),
        ms(a_min)
    );
    println!(
        "load average: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}
