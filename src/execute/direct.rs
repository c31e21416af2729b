//! Commands the shell would run as one program: started directly, without `sh`.
//!
//! `sh -c 'tr a-z A-Z < in.txt > out.txt'` execs `sh`, which forks and execs `tr`: two
//! programs loaded and a fork per stage, where only `tr` does the work. GNU make starts a
//! recipe line without a shell when it has no shell metacharacter; pipe does the same and
//! also takes plain `<`, `>` and `>>` redirections, which it opens itself, in the order
//! written, as the shell would. Anything else — a quote, `$`, a glob, a pipe, `;`, `&&`, a
//! variable assignment, a builtin or keyword (`echo`, `cd`, `exit`, `true`, `[` ...), a
//! relative path with a `/`, a stage `env` that sets `PATH` — goes through `sh -c` as
//! before. When a direct start fails (a redirection that cannot be opened, a program that
//! cannot be executed), the command goes through `sh -c` after all, which says why in the
//! shell's own words and exits as the shell would: no command ever runs twice, since a
//! failed start runs nothing.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A command line as one program with plain words and simple redirections.
#[derive(Debug, PartialEq, Eq)]
pub struct Direct<'a> {
    /// The program (as written) and its arguments.
    pub words: Vec<&'a str>,
    /// Redirections in the order written.
    pub redirects: Vec<Redirect<'a>>,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Redirect<'a> {
    /// `< FILE`: standard input from FILE.
    In(&'a str),
    /// `> FILE` (`append: false`) or `>> FILE`: standard output to FILE.
    Out { file: &'a str, append: bool },
}

/// Shell builtins and keywords (POSIX's, dash's, and bash's for a `/bin/sh` that is bash):
/// these mean something else, or exist only, inside a shell, so their lines always go
/// through `sh`.
#[rustfmt::skip]
const SHELL_WORDS: &[&str] = &[
    "!", ".", ":", "[", "[[", "alias", "bg", "break", "builtin", "caller", "case", "cd",
    "command", "continue", "coproc", "declare", "dirs", "disown", "do", "done", "echo", "elif",
    "else", "enable", "esac", "eval", "exec", "exit", "export", "false", "fc", "fg", "fi",
    "for", "function", "getopts", "hash", "help", "history", "if", "in", "jobs", "kill", "let",
    "local", "logout", "mapfile", "popd", "printf", "pushd", "pwd", "read", "readarray",
    "readonly", "return", "select", "set", "shift", "shopt", "source", "suspend", "test",
    "then", "time", "times", "trap", "true", "type", "typeset", "ulimit", "umask", "unalias",
    "unset", "until", "wait", "while",
];

/// A byte the shell takes literally in an unquoted word, in every position.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-./,:+@%=".contains(&b)
}

fn plain_word(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(plain)
}

/// The line as one program with plain words and simple redirections, or `None` when only a
/// shell can run it as written.
pub fn parse(cmd: &str) -> Option<Direct<'_>> {
    if cmd.contains('\n') {
        return None;
    }
    let mut words = Vec::new();
    let mut redirects = Vec::new();
    let mut tokens = cmd.split([' ', '\t']).filter(|t| !t.is_empty());
    while let Some(t) = tokens.next() {
        let (op, rest) = if let Some(r) = t.strip_prefix(">>") {
            (Some(">>"), r)
        } else if let Some(r) = t.strip_prefix('>') {
            (Some(">"), r)
        } else if let Some(r) = t.strip_prefix('<') {
            (Some("<"), r)
        } else {
            (None, t)
        };
        let Some(op) = op else {
            if !plain_word(t) {
                return None;
            }
            words.push(t);
            continue;
        };
        let file = if rest.is_empty() {
            tokens.next()?
        } else {
            rest
        };
        if !plain_word(file) {
            return None;
        }
        redirects.push(match op {
            "<" => Redirect::In(file),
            ">>" => Redirect::Out { file, append: true },
            _ => Redirect::Out {
                file,
                append: false,
            },
        });
    }
    let program = *words.first()?;
    // `NAME=value cmd` sets a variable; a builtin or keyword is the shell's own; a relative
    // path with a `/` is the shell's to look up from its folder.
    if program.contains('=')
        || SHELL_WORDS.contains(&program)
        || (program.contains('/') && !program.starts_with('/'))
    {
        return None;
    }
    // One redirection per stream, as a plain line has.
    let ins = redirects
        .iter()
        .filter(|r| matches!(r, Redirect::In(_)))
        .count();
    if ins > 1 || redirects.len() - ins > 1 {
        return None;
    }
    Some(Direct { words, redirects })
}

/// Where the shell would find `program` on `path` (the first regular file of that name in
/// the folders of `PATH`, in order), if it can be executed; `None` when `PATH` has a
/// relative or empty entry (looked up from the stage's folder) or the first file found is
/// not executable (the shell then reports it).
pub fn lookup(program: &str, path: Option<&OsString>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.starts_with('/') {
        return Some(PathBuf::from(program));
    }
    static FOUND: Mutex<Option<HashMap<(String, OsString), PathBuf>>> = Mutex::new(None);
    let path = path?;
    let key = (program.to_string(), path.clone());
    if let Some(p) = FOUND
        .lock()
        .ok()
        .and_then(|m| m.as_ref().and_then(|m| m.get(&key).cloned()))
    {
        return Some(p);
    }
    for dir in std::env::split_paths(path) {
        if !dir.is_absolute() {
            return None;
        }
        let candidate = dir.join(program);
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return None;
        }
        if let Ok(mut m) = FOUND.lock() {
            m.get_or_insert_with(Default::default)
                .insert(key, candidate.clone());
        }
        return Some(candidate);
    }
    None
}

/// Open a redirection's file as the shell would (`<` read; `>` create or truncate; `>>`
/// create or append; new files 0666 less the umask), relative to the command's folder.
/// A FIFO is refused: opening one waits for its other end, here before the stage has a
/// process that a timeout or Ctrl-C could stop; the shell opens it inside the stage.
pub fn open(r: Redirect<'_>, cwd: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::FileTypeExt;
    let (Redirect::In(file) | Redirect::Out { file, .. }) = r;
    let path = cwd.join(file);
    if std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_fifo()) {
        return Err(std::io::Error::other("a FIFO: opened by the shell"));
    }
    match r {
        Redirect::In(_) => std::fs::File::open(path),
        Redirect::Out { append, .. } => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .append(append)
            .truncate(!append)
            .open(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_programs_and_simple_redirections_run_directly() {
        assert_eq!(
            parse("tr a-z A-Z < in/0001.txt > out/0001.txt"),
            Some(Direct {
                words: vec!["tr", "a-z", "A-Z"],
                redirects: vec![
                    Redirect::In("in/0001.txt"),
                    Redirect::Out {
                        file: "out/0001.txt",
                        append: false
                    }
                ],
            })
        );
        assert_eq!(
            parse("  python3\ttrain.py --lr=0.1 --out=model.bin >>log.txt"),
            Some(Direct {
                words: vec!["python3", "train.py", "--lr=0.1", "--out=model.bin"],
                redirects: vec![Redirect::Out {
                    file: "log.txt",
                    append: true
                }],
            })
        );
        assert_eq!(
            parse("/usr/bin/du -sb data").map(|d| d.words),
            Some(vec!["/usr/bin/du", "-sb", "data"])
        );
    }

    #[test]
    fn anything_only_a_shell_can_run_goes_through_sh() {
        for cmd in [
            "",
            "   ",
            "echo hi > out.txt",
            "true",
            "time python3 train.py",
            "source env.sh",
            "exit 3",
            "cd sub",
            "[ -f x ]",
            "X=1 python3 run.py",
            "cat out/*.txt > all.txt",
            "cat a.txt | wc -l",
            "make && make install",
            "a; b",
            "sleep 5 &",
            "cp \"a b\" c",
            "cp 'a' b",
            "echo $HOME",
            "echo `date`",
            "ls ~",
            "ls # comment",
            "cp a\\ b c",
            "tr a b < in > out > out2",
            "tr a b < in < in2",
            "cmd 2> err.txt",
            "cmd 2>&1",
            "cmd >",
            "cmd < ",
            "> out.txt",
            "./train.sh",
            "scripts/train.py",
            "python3 x.py\npython3 y.py",
            "(cd a && b)",
            "{ a; }",
            "ls [ab]",
            "ls a?",
            "grep é x",
        ] {
            assert_eq!(parse(cmd), None, "{cmd:?}");
        }
    }

    #[test]
    fn a_fifo_is_left_to_the_shell_instead_of_blocking_the_open() {
        let d = tempfile::tempdir().unwrap();
        let fifo = std::ffi::CString::new(d.path().join("f").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        // Without the check either open would wait for a writer / reader forever.
        assert!(open(Redirect::In("f"), d.path()).is_err());
        let out = Redirect::Out {
            file: "f",
            append: false,
        };
        assert!(open(out, d.path()).is_err());
        std::fs::write(d.path().join("plain"), "x").unwrap();
        assert!(open(Redirect::In("plain"), d.path()).is_ok());
    }

    #[test]
    fn lookup_finds_the_first_regular_file_on_path_and_refuses_relative_entries() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir_all(a.join("tool")).unwrap(); // a folder is passed over
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([&a, &b]).unwrap();
        assert_eq!(lookup("tool", Some(&path)), Some(b.join("tool")));
        assert_eq!(lookup("missing-tool", Some(&path)), None);
        assert_eq!(lookup("/bin/sh", None), Some(PathBuf::from("/bin/sh")));
        let relative = std::env::join_paths([Path::new("bin"), &b]).unwrap();
        assert_eq!(lookup("tool", Some(&relative)), None);
        // Not executable: the shell must say so.
        std::fs::write(a.join("plain"), "x").unwrap();
        std::fs::set_permissions(a.join("plain"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(lookup("plain", Some(&path)), None);
    }
}
