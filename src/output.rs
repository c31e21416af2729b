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

/// The version every `--json` document carries as its first key. Bump it only for a change
/// that breaks readers (a field removed or renamed, a meaning changed); adding a field is
/// not such a change.
pub const JSON_VERSION: u32 = 1;

#[derive(serde::Serialize)]
struct Versioned<'a, T: ?Sized> {
    version: u32,
    #[serde(flatten)]
    body: &'a T,
}

/// The `--json` document for `body` (a struct or map): `{"version": 1, ...body}`, pretty,
/// with `version` first. Keys keep the order `body` serializes them in.
pub fn json_document<T: serde::Serialize + ?Sized>(body: &T) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(&Versioned {
        version: JSON_VERSION,
        body,
    })
    .map_err(|e| anyhow::anyhow!("cannot write the JSON document: {e}"))?;
    text.push('\n');
    Ok(text)
}

/// Print the `--json` document for `body` on stdout (see [`json_document`]); a closed
/// stdout is a quiet end ([`Closed`]).
pub fn print_json<T: serde::Serialize + ?Sized>(body: &T) -> anyhow::Result<()> {
    write_str(&json_document(body)?)
}

/// Text for stdout, collected and then written at once through [`write_str`]; use it
/// instead of `println!` (which panics on a closed pipe).
#[derive(Default)]
pub struct Text(pub String);

impl Text {
    pub fn new() -> Text {
        Text::default()
    }
    /// Append one line.
    pub fn line(&mut self, line: impl AsRef<str>) {
        self.0.push_str(line.as_ref());
        self.0.push('\n');
    }
    /// Write everything collected to stdout.
    pub fn print(self) -> anyhow::Result<()> {
        write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comes_first_and_fields_keep_their_order() {
        #[derive(serde::Serialize)]
        struct B {
            zeta: u8,
            alpha: u8,
        }
        let t = json_document(&B { zeta: 1, alpha: 2 }).unwrap();
        let z = t.find("zeta").unwrap();
        assert!(t.find("\"version\": 1").unwrap() < z);
        assert!(z < t.find("alpha").unwrap());
        assert!(json_document(&3).is_err());
    }

    #[test]
    fn broken_pipe_anywhere_in_the_chain_is_quiet() {
        let e = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_closed_pipe(&e));
        assert!(is_closed_pipe(&anyhow::Error::new(Closed)));
        assert!(!is_closed_pipe(&anyhow::anyhow!("other")));
    }
}
