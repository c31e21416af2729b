//! Test helpers: a temporary workspace, the `pipe` binary, and readable assertions.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Ws {
    pub dir: tempfile::TempDir,
}

/// What one `pipe` invocation printed and returned.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "expected exit 0\n{self}");
        self
    }
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "expected exit {code}\n{self}");
        self
    }
    pub fn out_has(&self, s: &str) -> &Self {
        assert!(self.stdout.contains(s), "stdout lacks {s:?}\n{self}");
        self
    }
    pub fn err_has(&self, s: &str) -> &Self {
        assert!(self.stderr.contains(s), "stderr lacks {s:?}\n{self}");
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pipe"))
}

impl Ws {
    /// A new workspace holding `pipeline` as Pipeline.toml.
    pub fn new(pipeline: &str) -> Ws {
        let ws = Ws {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        ws.write("Pipeline.toml", pipeline);
        ws
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(p, text).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    /// Lines in a file (0 when missing): stages append to a file to count their runs.
    pub fn count(&self, rel: &str) -> usize {
        std::fs::read_to_string(self.path(rel))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .current_dir(self.root())
            .env_remove("PIPE_CACHE_DIR")
            .env("NO_COLOR", "1");
        c
    }

    pub fn pipe(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("run pipe").into()
    }

    /// Parsed manifest of the newest run.
    pub fn last_manifest(&self) -> serde_json::Value {
        let dir = self.last_run_dir();
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
    }

    pub fn last_run_dir(&self) -> PathBuf {
        let mut runs: Vec<PathBuf> = std::fs::read_dir(self.path(".pipe/runs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        runs.sort();
        runs.pop().expect("a run folder")
    }
}

/// A test server started by one of `tests/servers/*.sh`; stopped when dropped.
pub struct Server {
    pub script: PathBuf,
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

impl Server {
    /// Start `tests/servers/<name>.sh`. When it cannot start: fail under CI, else skip
    /// (returns None after saying why), so `cargo test` on a laptop without root still runs.
    pub fn start(name: &str) -> Option<Server> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/servers")
            .join(format!("{name}.sh"));
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir.path())
            .output()
            .expect("run server script");
        if !out.status.success() {
            let msg = format!(
                "{name} server did not start:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg}");
            }
            eprintln!("SKIPPING: {msg}");
            return None;
        }
        let env_out = Command::new("bash")
            .arg(&script)
            .arg("env")
            .arg(dir.path())
            .output()
            .expect("server env");
        let env = String::from_utf8_lossy(&env_out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.trim_matches(|c| c == '\'' || c == '"').to_string(),
                )
            })
            .collect();
        Some(Server { script, dir, env })
    }

    pub fn var(&self, k: &str) -> String {
        self.env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("server env lacks {k}"))
    }

    /// A `pipe` command with the server's environment.
    pub fn pipe(&self, ws: &Ws, args: &[&str]) -> Run {
        let mut c = ws.cmd(args);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c.output().expect("run pipe").into()
    }
}
