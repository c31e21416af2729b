//! stdout for what the user asked for (listings, JSON documents, completions): written
//! through one writer that treats a closed pipe (`pipe runs | head -1`) as a quiet end.
//!
//! `println!` panics when stdout is a closed pipe; everything here returns
//! [`Closed`] instead, which `main` turns into the command's normal exit code with no
//! message.

use std::io::{self, Write};

/// stdout was closed by the reader: stop writing, say nothing.
#[derive(Debug)]
pub struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout closed")
    }
}

impl std::error::Error for Closed {}

/// Is this error (anywhere in its chain) a closed stdout / broken pipe?
pub fn is_closed_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.is::<Closed>()
            || e.downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn map(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Closed.into()
    } else {
        anyhow::Error::new(e).context("cannot write to stdout")
    }
}

/// Write bytes to stdout and flush.
pub fn write_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes).map_err(map)?;
    out.flush().map_err(map)
}

/// Write text to stdout and flush.
pub fn write_str(text: &str) -> anyhow::Result<()> {
    write_bytes(text.as_bytes())
}
