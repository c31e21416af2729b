//! Test helpers, shared by every module of the `it` binary:
//!
//! - [`Ws`], a temporary workspace, and [`Run`], what one `pipe` invocation printed and
//!   returned, with readable assertions (`ws.pipe(&["build"]).ok().err_has("...")`);
//! - [`Test`], a builder for a one-command test:
//!   `Test::new().pipeline(P).file("in.txt", "x").args(["build"]).code(1).run()`;
//! - child processes with a deadline ([`Ws::spawn`], [`start`], [`finish`], [`signal`],
//!   [`kill9`], [`alive`]) and polling ([`wait_until`], [`wait_for`]);
//! - run records ([`events`]);
//! - stage commands that make scheduling observable without a clock ([`rendezvous`],
//!   [`serial`], [`assert_serial`], [`wait_for_event`]);
//! - snapshot redaction ([`snapshot!`](crate::snapshot), [`redact`]);
//! - the test servers of `tests/servers/` ([`Server`]).
//!
//! No helper measures time to decide a result: deadlines only turn a hang into a failure.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

    /// Start `pipe ARGS` in the background; its stderr goes to `err_file` (inside the
    /// workspace, never a dep of any stage) so a test can watch it while it runs.
    pub fn spawn(&self, args: &[&str], err_file: &str) -> Child {
        let err = std::fs::File::create(self.path(err_file)).unwrap();
        self.cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start pipe")
    }
}

// ---------------------------------------------------------------- the Test builder

/// A one-command test: a workspace, one `pipe` invocation and its expected exit code.
///
/// ```ignore
/// let done = Test::new()
///     .pipeline("[stages.a]\ncmd = \"exit 3\"\n")
///     .args(["build"])
///     .code(1)
///     .run();
/// done.err_has("exit code 3");
/// done.ws.pipe(&["status"]).code(1);
/// ```
#[must_use]
pub struct Test {
    ws: Ws,
    args: Vec<String>,
    env: Vec<(String, String)>,
    code: i32,
}

/// A finished [`Test`]: its workspace (for more commands) and its [`Run`] (`Deref`).
pub struct Done {
    pub ws: Ws,
    pub run: Run,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Test {
    /// An empty workspace (an empty Pipeline.toml), `pipe` with no arguments, exit 0 expected.
    pub fn new() -> Test {
        Test {
            ws: Ws::new(""),
            args: vec![],
            env: vec![],
            code: 0,
        }
    }

    /// The text of Pipeline.toml.
    pub fn pipeline(self, text: &str) -> Test {
        self.file("Pipeline.toml", text)
    }

    /// Any other file of the workspace (folders are created).
    pub fn file(self, rel: &str, text: &str) -> Test {
        self.ws.write(rel, text);
        self
    }

    pub fn args<const N: usize>(mut self, args: [&str; N]) -> Test {
        self.args = args.iter().map(|a| (*a).to_string()).collect();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Test {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The exit code the run must end with (default 0).
    pub fn code(mut self, code: i32) -> Test {
        self.code = code;
        self
    }

    /// Run `pipe ARGS` in the workspace and check the exit code.
    pub fn run(self) -> Done {
        let run = invoke(&self.ws, &self.args, &self.env);
        run.code(self.code);
        Done {
            ws: self.ws,
            run,
            args: self.args,
            env: self.env,
        }
    }
}

impl Done {
    /// The same command once more, in the same workspace (exit code not checked).
    pub fn again(&self) -> Run {
        invoke(&self.ws, &self.args, &self.env)
    }
}

impl std::ops::Deref for Done {
    type Target = Run;
    fn deref(&self) -> &Run {
        &self.run
    }
}

fn invoke(ws: &Ws, args: &[String], env: &[(String, String)]) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = ws.cmd(&args);
    c.envs(env.iter().map(|(k, v)| (k, v)));
    c.output().expect("run pipe").into()
}

// ---------------------------------------------------------------- child processes and polling

/// Poll `cond` until it holds; a generous cap (30 s) turns a hang into a clear failure.
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_for(what, Duration::from_secs(30), cond);
}

/// Poll `cond` every 10 ms until it holds, failing after `cap`. The cap is a safety net,
/// never the thing tested: pick one far above what a loaded machine needs.
pub fn wait_for(what: &str, cap: Duration, mut cond: impl FnMut() -> bool) {
    let limit = Instant::now() + cap;
    while !cond() {
        assert!(
            Instant::now() < limit,
            "gave up after {cap:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Start a command with stdin closed and stdout / stderr captured for [`finish`].
pub fn start(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start command")
}

/// Wait for a child to exit and collect what it printed; after `cap` it is killed and the
/// test fails, so a hang never blocks the suite.
pub fn finish(child: Child, cap: Duration) -> Run {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(cap) {
        Ok(out) => out.expect("wait for child").into(),
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("process {pid} did not exit within {cap:?}");
        }
    }
}

pub fn signal(child: &Child, sig: i32) {
    let r = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(r, 0, "kill({}, {sig}) failed", child.id());
}

/// `kill -9` a child and reap it.
pub fn kill9(mut child: Child) {
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
}

pub fn still_running(child: &mut Child) -> bool {
    child.try_wait().unwrap().is_none()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            // "pid (comm) S ..." — the state follows the last ')'.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("");
            state != "Z" && state != "X"
        }
    }
}

// ---------------------------------------------------------------- run records

/// Each line of a run folder's events.jsonl, parsed.
pub fn events(run_dir: &Path) -> Vec<serde_json::Value> {
    let file = run_dir.join("events.jsonl");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}")))
        .collect()
}

// ---------------------------------------------------------------- scheduling without a clock

/// Shell (for a stage's `cmd`) that returns only once `n` processes have reached it: each
/// one leaves a file named after its pid in the folder `dir`, then waits (20 s at most) until
/// `n` files are there, and fails if they never are. A stage using it therefore succeeds only
/// if it ran at the same time as `n - 1` others. Plain sh, no double quotes (it goes inside
/// a TOML string).
pub fn rendezvous(dir: &str, n: usize) -> String {
    format!(
        "{{ mkdir -p {dir} && touch {dir}/$$; i=0; while [ $(ls {dir} | wc -l) -lt {n} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; [ $(ls {dir} | wc -l) -ge {n} ]; }}"
    )
}

/// Shell that appends `start NAME` and `end NAME` to `order.log`, with a pause between them
/// that widens the window in which a wrong scheduler would interleave two stages; the
/// verdict ([`assert_serial`]) reads only the order of the lines, never a clock.
pub fn serial(name: &str) -> String {
    format!("echo start {name} >> order.log; sleep 0.2; echo end {name} >> order.log")
}

/// The stage names in `order.log` (see [`serial`]), after checking that every `start X` is
/// directly followed by its `end X`: no two stages were ever running at once.
pub fn assert_serial(ws: &Ws) -> Vec<String> {
    let log = ws.read("order.log");
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.len().is_multiple_of(2),
        "unfinished stage in order.log:\n{log}"
    );
    lines
        .chunks(2)
        .map(|pair| {
            let name = pair[0]
                .strip_prefix("start ")
                .unwrap_or_else(|| panic!("two stages ran at once:\n{log}"));
            assert_eq!(
                pair[1],
                format!("end {name}"),
                "two stages ran at once:\n{log}"
            );
            name.to_string()
        })
        .collect()
}

/// Shell that waits (20 s at most) until the current run's events.jsonl holds `event`, e.g.
/// to keep a stage running until pipe has recorded another stage's failure.
pub fn wait_for_event(event: &str) -> String {
    format!(
        "i=0; while ! grep -qs {event} $PIPE_RUN_DIR/events.jsonl && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done"
    )
}

// ---------------------------------------------------------------- snapshots

/// Replace what changes from run to run with placeholders: the workspace's path (`[WS]`);
/// the duration filters and run ids are insta filters, see [`snapshot!`](crate::snapshot).
pub fn redact(ws: &Ws, text: &str) -> String {
    let mut text = text.to_string();
    if let Ok(real) = ws.root().canonicalize() {
        text = text.replace(&*real.to_string_lossy(), "[WS]");
    }
    text.replace(&*ws.root().to_string_lossy(), "[WS]")
}

/// Insta settings for `pipe` output: durations (`0.0s`, `12.3s`) become `[TIME]` and run
/// ids (`20261201-153000-123`) become `[RUN]`.
pub fn snapshot_settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.add_filter(r"\b\d+\.\d+s\b", "[TIME]");
    s.add_filter(r"\b\d{8}-\d{6}-\d{3}\b", "[RUN]");
    s.set_prepend_module_to_snapshot(false);
    s
}

/// `snapshot!(name, ws, text)`: `text` (anything `Display`, e.g. a [`Run`], which shows its
/// exit code, stdout and stderr), redacted, must equal the stored snapshot
/// `tests/it/snapshots/NAME.snap` (review changes with `cargo insta review`, or
/// `INSTA_UPDATE=always cargo test --test it output::` and `git diff`).
#[macro_export]
macro_rules! snapshot {
    ($name:expr, $ws:expr, $text:expr) => {{
        let text = $crate::harness::redact($ws, &($text).to_string());
        $crate::harness::snapshot_settings()
            .bind(|| insta::assert_snapshot!($name, text, stringify!($text)));
    }};
}

// ---------------------------------------------------------------- every test file is built

/// With `autotests = false` a test file outside tests/it/, or one without a `mod` line in
/// main.rs, is silently never compiled: fail instead, naming the file.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = std::fs::read_to_string(tests.join("it/main.rs")).unwrap();
    let mut stray = vec![];
    for dir in [tests.clone(), tests.join("it")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let Some(stem) = p.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                continue;
            };
            if p.extension().is_none_or(|x| x != "rs") || stem == "main" {
                continue;
            }
            if dir == tests || !main.lines().any(|l| l.trim() == format!("mod {stem};")) {
                stray.push(p.display().to_string());
            }
        }
    }
    assert!(
        stray.is_empty(),
        "not built: move each into tests/it/ with a `mod` line in tests/it/main.rs \
         (and `use crate::harness::*;` for `mod common; use common::*;`): {stray:?}"
    );
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

/// Every file under a folder, sorted (none when it is missing).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The pid a stage wrote into `rel`, once it is there.
pub fn pid_in(ws: &Ws, rel: &str) -> Option<i32> {
    std::fs::read_to_string(ws.path(rel))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Wait for a stage to write its pid into `rel`, and return it.
pub fn wait_pid(ws: &Ws, rel: &str) -> i32 {
    wait_until(&format!("{rel} to be written"), || {
        pid_in(ws, rel).is_some()
    });
    pid_in(ws, rel).unwrap()
}
