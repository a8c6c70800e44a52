//! A file sink with size-based rotation: before a line would push the live file past `max_bytes`,
//! `path` becomes `path.1`, `path.1` becomes `path.2`, … and `path.keep` is dropped. Lines are never
//! split across files. Writes are synchronous (a local file); the store calls this from its own task.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

/// Opens `path` for appending, creating it if needed (never truncating).
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: BufWriter<File>,
    size: u64,
}

impl RotatingFile {
    pub fn open(path: PathBuf, max_bytes: u64, keep: u32) -> io::Result<RotatingFile> {
        let file = open_append(&path).map_err(|e| with_path(&path, e))?;
        let size = file.metadata().map_err(|e| with_path(&path, e))?.len();
        Ok(RotatingFile {
            path,
            max_bytes,
            keep,
            file: BufWriter::new(file),
            size,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes complete lines, rotating between lines when needed, then flushes.
    pub fn write_batch(&mut self, lines: &[u8]) -> io::Result<()> {
        for line in lines.split_inclusive(|b| *b == b'\n') {
            let n = line.len() as u64;
            if self.size > 0 && self.size + n > self.max_bytes {
                self.rotate()?;
            }
            self.file
                .write_all(line)
                .map_err(|e| with_path(&self.path, e))?;
            self.size += n;
        }
        self.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush().map_err(|e| with_path(&self.path, e))
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.flush()?;
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1)).map_err(|e| with_path(&from, e))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1)).map_err(|e| with_path(&self.path, e))?;
        let file = open_append(&self.path).map_err(|e| with_path(&self.path, e))?;
        self.file = BufWriter::new(file);
        self.size = 0;
        Ok(())
    }
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn rotates_by_size_keeps_n_and_never_splits_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        let mut f = RotatingFile::open(path.clone(), 20, 2).expect("open");
        // 10-byte lines: two fit per file.
        for i in 0..7 {
            f.write_batch(format!("{{\"n\":{i:03}}}\n").as_bytes())
                .expect("write");
        }
        assert_eq!(read(&path), "{\"n\":006}\n");
        assert_eq!(
            read(&dir.path().join("m.jsonl.1")),
            "{\"n\":004}\n{\"n\":005}\n"
        );
        assert_eq!(
            read(&dir.path().join("m.jsonl.2")),
            "{\"n\":002}\n{\"n\":003}\n"
        );
        assert!(
            !dir.path().join("m.jsonl.3").exists(),
            "keep = 2 drops older files"
        );
    }

    #[test]
    fn appends_to_an_existing_file_and_counts_its_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        std::fs::write(&path, "0123456789012345678\n").expect("seed");
        let mut f = RotatingFile::open(path.clone(), 25, 1).expect("open");
        f.write_batch(b"abcdefghi\n").expect("write");
        assert_eq!(read(&path), "abcdefghi\n");
        assert_eq!(read(&dir.path().join("m.jsonl.1")), "0123456789012345678\n");
    }

    #[test]
    fn a_line_larger_than_max_is_written_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        let mut f = RotatingFile::open(path.clone(), 4, 1).expect("open");
        f.write_batch(b"0123456789\n").expect("write");
        assert_eq!(read(&path), "0123456789\n");
    }

    #[test]
    fn open_error_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing-dir").join("m.jsonl");
        let e = RotatingFile::open(path.clone(), 10, 1)
            .err()
            .expect("fails");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}
