//! Following a stage log as it grows: whole lines only, so parallel stages interleave by
//! line and never mid-line. Used by `pipe build --follow`, the spinners' last line, and
//! `pipe log --follow`.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// At most this much is read per call, so one chatty stage cannot stall the dispatcher.
const CHUNK: u64 = 1 << 20;

pub struct Tail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl Tail {
    pub fn new(path: PathBuf) -> Tail {
        Tail {
            path,
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// The complete lines written since the last call (without their newline).
    pub fn lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return vec![];
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return vec![];
        }
        let mut buf = Vec::new();
        let Ok(n) = f.take(CHUNK).read_to_end(&mut buf) else {
            return vec![];
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        let mut out = Vec::new();
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            out.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        out
    }

    /// Everything left, the last line without its newline included (the writer is done).
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let more = self.lines();
            if more.is_empty() {
                break;
            }
            out.extend(more);
        }
        if !self.partial.is_empty() {
            out.push(String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gives_whole_lines_as_they_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut t = Tail::new(path.clone());
        assert!(t.lines().is_empty(), "no file yet");
        let mut f = std::fs::File::create(&path).unwrap();
        write!(f, "one\ntw").unwrap();
        assert_eq!(t.lines(), ["one"]);
        write!(f, "o\nthree").unwrap();
        assert_eq!(t.lines(), ["two"]);
        assert_eq!(t.finish(), ["three"]);
        assert!(t.finish().is_empty());
    }
}
