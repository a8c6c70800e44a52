//! What memscope-agent's `build.rs` and `xtask` share about the eBPF object, so both apply one rule:
//!
//! - [`toolchain`]: the eBPF toolchain check (the nightly pinned in
//!   `memscope-ebpf/rust-toolchain.toml`, its `rust-src`, `bpf-linker`). `build.rs` uses it to
//!   decide between building from source and the committed object; `cargo xtask setup` uses the
//!   same pieces to install what is missing.
//! - [`object`]: the one command that builds `memscope-probes` for `bpfel-unknown-none`.
//! - [`stamp`]: the inputs the committed object (`memscope-ebpf/prebuilt/`) was built from, so a
//!   build without the toolchain can tell whether the committed object still matches the sources.

pub mod object;
pub mod stamp;
pub mod toolchain;

use std::path::Path;

/// The committed object and its stamp, relative to the workspace root.
pub const PREBUILT_OBJECT: &str = "memscope-ebpf/prebuilt/memscope-probes.bpfel.o";
/// See [`stamp`].
pub const PREBUILT_STAMP: &str = "memscope-ebpf/prebuilt/memscope-probes.stamp";
/// The command that rebuilds [`PREBUILT_OBJECT`] and [`PREBUILT_STAMP`].
pub const REFRESH_COMMAND: &str = "cargo xtask ebpf-object";

/// `sha256` of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a file, with the path in the error.
fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
