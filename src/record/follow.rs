//! Following a stage log as it grows: whole lines only, so parallel stages interleave by
//! line and never mid-line. Used by `pipe build --follow`, the spinners' last line, and
//! `pipe log --follow`.

use std::io::Read;
use std::path::PathBuf;

/// At most this much is read per call, so one chatty stage cannot stall the dispatcher.
const CHUNK: u64 = 1 << 20;

pub struct Tail {
    path: PathBuf,
    /// The log, open once it exists: each look is then one `read` from where the last one
    /// ended (not an open, a seek and a close).
    file: Option<std::fs::File>,
    partial: Vec<u8>,
}

impl Tail {
    pub fn new(path: PathBuf) -> Tail {
        Tail {
            path,
            file: None,
            partial: Vec::new(),
        }
    }

    /// The complete lines written since the last call (without their newline).
    pub fn lines(&mut self) -> Vec<String> {
        if self.file.is_none() {
            self.file = std::fs::File::open(&self.path).ok();
        }
        let Some(f) = &self.file else {
            return vec![];
        };
        let mut buf = Vec::new();
        if f.take(CHUNK).read_to_end(&mut buf).is_err() {
            return vec![];
        }
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
