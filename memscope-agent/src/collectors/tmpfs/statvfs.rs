//! `statvfs(3)` of a mounted filesystem: its block and inode limits and usage.

use std::{os::fd::AsFd, path::Path};

/// What `statvfs` says of a tmpfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStat {
    /// `None` for an unlimited tmpfs (`size=0`): the kernel then reports no block counts.
    pub limit_bytes: Option<u64>,
    pub allocated_bytes: Option<u64>,
    pub inodes_used: Option<u64>,
    pub inodes_limit: Option<u64>,
}

/// `fstatvfs` of an open directory of the filesystem; errors name `path` (what it was opened as).
pub fn statvfs(dir: impl AsFd, path: &Path) -> Result<FsStat, String> {
    let st = rustix::fs::fstatvfs(dir)
        .map_err(|e| format!("{}: statvfs: {}", path.display(), std::io::Error::from(e)))?;
    let frsize = st.f_frsize;
    let blocks = st.f_blocks;
    let files = st.f_files;
    let (limit_bytes, allocated_bytes) = if blocks > 0 {
        (
            Some(blocks.saturating_mul(frsize)),
            Some(blocks.saturating_sub(st.f_bfree).saturating_mul(frsize)),
        )
    } else {
        (None, None)
    };
    let (inodes_used, inodes_limit) = if files > 0 {
        (Some(files.saturating_sub(st.f_ffree)), Some(files))
    } else {
        (None, None)
    };
    Ok(FsStat {
        limit_bytes,
        allocated_bytes,
        inodes_used,
        inodes_limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_has_inode_counts_or_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = std::fs::File::open(dir.path()).expect("open");
        let st = statvfs(&f, dir.path()).expect("statvfs of an open directory");
        assert_eq!(st.limit_bytes.is_some(), st.allocated_bytes.is_some());
        assert!(st.allocated_bytes <= st.limit_bytes);
    }
}
