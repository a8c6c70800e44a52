//! Where the JSON lines go. A sink takes whole emissions (a batch of complete lines) and never
//! splits a line. Sinks are generic over the writer, so they are tested against a `Vec<u8>`.
//! A write that fails says how many lines were lost ([`WriteError::dropped_lines`]), so the store
//! can report them in the next `agent` record.

use std::{io, path::Path};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::config::{ConfigError, OutputConfig, SinkKind};

pub mod file;

/// A batch (or part of one) that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{source} ({dropped_lines} line(s) dropped)")]
pub struct WriteError {
    /// Lines of the batch that were not written.
    pub dropped_lines: u64,
    pub source: io::Error,
}

impl WriteError {
    /// The reader of stdout went away: nothing will ever be read again.
    pub fn is_broken_pipe(&self) -> bool {
        self.source.kind() == io::ErrorKind::BrokenPipe
    }
}

/// Lines in `buf` (a final line without its `\n` counts too).
pub fn count_lines(buf: &[u8]) -> u64 {
    buf.split_inclusive(|b| *b == b'\n').count() as u64
}

/// Checks the output the config asks for, creating nothing (for `check-config` and the start):
/// for a file sink, the rules of [`file::check_path`]. `src` is the config text, for the error's
/// line.
pub fn check_output(
    output: &OutputConfig,
    src: Option<&str>,
    origin: &str,
) -> Result<(), ConfigError> {
    let (SinkKind::File, Some(path)) = (output.sink, &output.path) else {
        return Ok(());
    };
    file::check_path(path, file::Trust::current()).map_err(|e| {
        ConfigError::at_key(
            origin,
            src,
            "output.path",
            format!("cannot open the output for writing: {e}"),
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
            SinkKind::File => Ok(Sink::File(file::RotatingFile::open(
                file_path(output)?.to_path_buf(),
                output.max_bytes.0,
                output.keep.0,
            )?)),
        }
    }

    /// Writes one emission: `lines` holds complete lines, each ending in `\n`.
    pub async fn write_batch(&mut self, lines: &[u8]) -> Result<(), WriteError> {
        match self {
            Sink::Writer(w) => w.write_batch(lines).await,
            Sink::File(f) => off_the_workers(|| f.write_batch(lines)),
        }
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Writer(w) => w.flush().await,
            // Every batch went out in whole `write` calls: nothing is buffered.
            Sink::File(_) => Ok(()),
        }
    }
}

fn file_path(output: &OutputConfig) -> io::Result<&Path> {
    output
        .path
        .as_deref()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "output.path is not set"))
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

/// Bytes handed to a [`WriterSink`]'s writer at a time: tokio's stdout copies each write into a
/// buffer of its own that keeps its size (up to 2 MiB), so one large emission written at once would
/// hold that much memory for good.
const WRITE_CHUNK: usize = 64 << 10;

/// A sink over any async writer (stdout, a pipe, a `Vec<u8>` in tests). Each batch is written whole
/// and flushed, so a consumer never sees half an emission sitting in a buffer.
pub struct WriterSink<W> {
    writer: W,
}

impl<W: AsyncWrite + Unpin> WriterSink<W> {
    pub fn new(writer: W) -> Self {
        WriterSink { writer }
    }

    pub async fn write_batch(&mut self, lines: &[u8]) -> Result<(), WriteError> {
        let mut written = Ok(());
        for chunk in lines.chunks(WRITE_CHUNK) {
            written = self.writer.write_all(chunk).await;
            if written.is_err() {
                break;
            }
        }
        if written.is_ok() {
            written = self.writer.flush().await;
        }
        written.map_err(|source| WriteError {
            dropped_lines: count_lines(lines),
            source,
        })
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

    /// A writer that keeps what it is given and the largest single write.
    #[derive(Default)]
    struct Recording {
        out: Vec<u8>,
        largest_write: usize,
    }

    impl AsyncWrite for Recording {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.largest_write = self.largest_write.max(buf.len());
            self.out.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_large_batch_reaches_the_writer_in_bounded_writes() {
        let line = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(1000));
        let batch = line.repeat(1000);
        let mut sink = WriterSink::new(Recording::default());
        sink.write_batch(batch.as_bytes()).await.expect("write");
        let w = sink.into_inner();
        assert_eq!(w.out, batch.as_bytes(), "every byte, in order");
        assert!(
            w.largest_write <= WRITE_CHUNK,
            "a write of {} bytes",
            w.largest_write
        );
    }

    #[tokio::test]
    async fn a_closed_pipe_is_a_broken_pipe_with_every_line_counted() {
        let (reader, writer) = tokio::io::duplex(64);
        drop(reader);
        let mut sink = WriterSink::new(writer);
        let e = sink
            .write_batch(b"{\"a\":1}\n{\"b\":2}\n")
            .await
            .expect_err("no reader");
        assert!(e.is_broken_pipe(), "{e}");
        assert_eq!(e.dropped_lines, 2);
    }

    #[test]
    fn lines_are_counted() {
        assert_eq!(count_lines(b""), 0);
        assert_eq!(count_lines(b"a\nb\n"), 2);
        assert_eq!(count_lines(b"a\nb"), 2);
    }
}
