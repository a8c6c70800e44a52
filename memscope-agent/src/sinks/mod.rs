//! Where the JSON lines go. A sink takes whole emissions (a batch of complete lines) and never
//! splits a line. Sinks are generic over the writer, so they are tested against a `Vec<u8>`.

use std::io;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::config::{ConfigError, OutputConfig, SinkKind};

pub mod file;

/// Checks what the config cannot check alone: the output file can be opened for appending (it is
/// created if missing, never truncated). `src` is the config text, for the error's line.
pub fn check_output(
    output: &OutputConfig,
    src: Option<&str>,
    origin: &str,
) -> Result<(), ConfigError> {
    let (SinkKind::File, Some(path)) = (output.sink, &output.path) else {
        return Ok(());
    };
    file::open_append(path).map(drop).map_err(|e| {
        ConfigError::at_key(
            origin,
            src,
            "output.path",
            format!("cannot open {} for writing: {e}", path.display()),
        )
    })
}

/// A destination for JSON lines.
pub enum Sink {
    Writer(WriterSink<Box<dyn AsyncWrite + Send + Unpin>>),
    File(file::RotatingFile),
}

impl Sink {
    /// Opens the sink the config asks for. For a file sink the file is opened (created, appended to)
    /// now, so a bad path fails before anything is collected.
    pub fn open(output: &OutputConfig) -> io::Result<Sink> {
        match output.sink {
            SinkKind::Stdout => Ok(Sink::Writer(WriterSink::new(Box::new(tokio::io::stdout())))),
            SinkKind::File => {
                let path = output.path.clone().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "output.path is not set")
                })?;
                Ok(Sink::File(file::RotatingFile::open(
                    path,
                    output.max_bytes.0,
                    output.keep.0,
                )?))
            }
        }
    }

    /// Writes one emission: `lines` holds complete lines, each ending in `\n`.
    pub async fn write_batch(&mut self, lines: &[u8]) -> io::Result<()> {
        match self {
            Sink::Writer(w) => w.write_batch(lines).await,
            Sink::File(f) => off_the_workers(|| f.write_batch(lines)),
        }
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Writer(w) => w.flush().await,
            Sink::File(f) => off_the_workers(|| f.flush()),
        }
    }
}

/// Runs blocking file I/O without stalling the async workers: on a multi-threaded runtime the
/// worker hands its other tasks off first (`block_in_place`); elsewhere it just runs.
fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A sink over any async writer (stdout, a pipe, a `Vec<u8>` in tests). Each batch is written whole
/// and flushed, so a consumer never sees half an emission sitting in a buffer.
pub struct WriterSink<W> {
    writer: W,
}

impl<W: AsyncWrite + Unpin> WriterSink<W> {
    pub fn new(writer: W) -> Self {
        WriterSink { writer }
    }

    pub async fn write_batch(&mut self, lines: &[u8]) -> io::Result<()> {
        self.writer.write_all(lines).await?;
        self.writer.flush().await
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        self.writer.flush().await
    }

    pub fn into_inner(self) -> W {
        self.writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritable_file_path_is_found_by_the_output_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("a-file");
        std::fs::write(&blocker, b"x").expect("write");
        // A path under a regular file cannot be created, even by root.
        let src = format!(
            "[output]\nsink = \"file\"\npath = \"{}\"\n",
            blocker.join("out.jsonl").display()
        );
        let c = crate::config::Config::parse(&src, "t.toml").expect("syntactically fine");
        let e = check_output(&c.output, Some(&src), "t.toml").expect_err("must fail");
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("output.path")));
        assert!(e.message.contains("cannot open"), "{e}");
    }

    #[tokio::test]
    async fn writer_sink_writes_batches_whole() {
        let mut sink = WriterSink::new(Vec::<u8>::new());
        sink.write_batch(b"{\"a\":1}\n{\"b\":2}\n")
            .await
            .expect("write");
        sink.write_batch(b"{\"c\":3}\n").await.expect("write");
        let out = sink.into_inner();
        assert_eq!(out, b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");
    }
}
