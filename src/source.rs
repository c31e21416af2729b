//! The text of `Pipeline.toml` with its spans, so every error can name file, line and column.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// One segment of a path into the TOML document.
#[derive(Clone, Copy, Debug)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// A pipeline file's text, its display name and a span-keeping parse of it.
pub struct Source {
    pub path: PathBuf,
    pub display: String,
    pub text: String,
    /// Parsed on first use: spans are only needed to place a diagnostic, and a pipeline
    /// without problems never pays for a second, span-keeping parse.
    doc: std::sync::OnceLock<Option<toml_edit::ImDocument<String>>>,
}

/// A located problem in the pipeline file: formats as `file:line:col: stage `s`: message`.
#[derive(Debug, Clone)]
pub struct Diag {
    pub location: String,
    pub snippet: Option<(usize, String)>,
    pub stage: Option<String>,
    pub message: String,
    pub help: Option<String>,
}

impl std::fmt::Display for Diag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.location)?;
        if let Some(stage) = &self.stage {
            write!(f, "stage `{stage}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some((line, text)) = &self.snippet {
            write!(f, "\n  {line:>4} | {text}")?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl Source {
    pub fn read(path: &Path, display: String) -> anyhow::Result<Source> {
        let bytes = std::fs::read(path).map_err(|e| {
            crate::error::invalid(format!("cannot read pipeline file {display}: {e}"))
        })?;
        let text = utf8(&display, bytes).map_err(crate::error::invalid)?;
        Ok(Source::new(path.to_path_buf(), display, text))
    }

    pub fn new(path: PathBuf, display: String, text: String) -> Source {
        Source {
            path,
            display,
            text,
            doc: std::sync::OnceLock::new(),
        }
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (line, col)
    }

    /// The span of the key (or array item) at `path`, falling back to the closest parent found.
    pub fn span(&self, path: &[Seg]) -> Option<Range<usize>> {
        let doc = self
            .doc
            .get_or_init(|| toml_edit::ImDocument::parse(self.text.clone()).ok())
            .as_ref()?;
        let mut item: &toml_edit::Item = doc.as_item();
        let mut best = None;
        for seg in path {
            match seg {
                Seg::Key(k) => {
                    let (key, next) = item.as_table_like()?.get_key_value(k)?;
                    best = key.span().or(best);
                    item = next;
                }
                Seg::Index(i) => {
                    let value = item.as_array()?.get(*i)?;
                    best = value.span().or(best);
                    return best;
                }
            }
        }
        best
    }

    /// A diagnostic located at `path` (or the file's start when the path has no span).
    pub fn diag(&self, path: &[Seg], stage: Option<&str>, message: impl Into<String>) -> Diag {
        let mut span = None;
        // Walk up the path until something has a span.
        for end in (0..=path.len()).rev() {
            if let Some(s) = self.span(&path[..end]) {
                span = Some(s);
                break;
            }
        }
        self.diag_at(span.map(|s| s.start), stage, message)
    }

    pub fn diag_at(
        &self,
        offset: Option<usize>,
        stage: Option<&str>,
        message: impl Into<String>,
    ) -> Diag {
        let (location, snippet) = match offset {
            Some(off) => {
                let (line, col) = self.line_col(off);
                let text = self
                    .text
                    .lines()
                    .nth(line - 1)
                    .unwrap_or("")
                    .trim_end()
                    .to_string();
                (format!("{}:{line}:{col}", self.display), Some((line, text)))
            }
            None => (self.display.clone(), None),
        };
        Diag {
            location,
            snippet,
            stage: stage.map(str::to_string),
            message: message.into(),
            help: None,
        }
    }
}

/// The 1-based line and column of byte `offset` in `bytes` (columns count bytes).
pub fn line_col_bytes(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

/// A file's bytes as text; invalid UTF-8 is an error naming the file, line and column.
pub fn utf8(display: &str, bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let (line, col) = line_col_bytes(bytes, at);
        format!(
            "{display}:{line}:{col}: not valid UTF-8 (byte 0x{:02x}); pipe files must be UTF-8 text",
            bytes.get(at).copied().unwrap_or(0)
        )
    })
}

impl Diag {
    pub fn help(mut self, help: Option<String>) -> Diag {
        self.help = help;
        self
    }
}

/// Turn a list of diagnostics into one exit-2 error listing them all.
pub fn diags_error(diags: Vec<Diag>) -> anyhow::Error {
    let n = diags.len();
    let mut msg = diags
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    if n > 1 {
        msg.push_str(&format!("\n{n} problems found in the pipeline"));
    }
    crate::error::invalid(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_names_the_line() {
        let e = utf8("P.toml", b"a = 1\nb = \"x\xffy\"\n".to_vec()).unwrap_err();
        assert!(
            e.starts_with("P.toml:2:7: not valid UTF-8 (byte 0xff)"),
            "{e}"
        );
    }

    #[test]
    fn locates_keys_in_tables_and_arrays() {
        let text = "[params]\nx = 1\n\n[stages.train]\ncmd = \"a\"\ndeps = [\"a\", \"b\"]\n";
        let src = Source::new("P.toml".into(), "P.toml".into(), text.into());
        let s = src
            .span(&[
                Seg::Key("stages"),
                Seg::Key("train"),
                Seg::Key("deps"),
                Seg::Index(1),
            ])
            .unwrap();
        assert_eq!(src.line_col(s.start), (6, 14));
        let d = src.diag(
            &[Seg::Key("stages"), Seg::Key("train"), Seg::Key("nope")],
            Some("train"),
            "bad",
        );
        assert!(
            d.to_string().starts_with("P.toml:4:9: stage `train`: bad"),
            "{d}"
        );
    }
}
