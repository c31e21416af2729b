//! Hostile input never panics: property tests over generated and mutated `Pipeline.toml` and
//! `Pipeline.lock` text. Most cases call the library directly (cheap); a smaller number go
//! through the real binary (`pipe validate`, `pipe status`, `pipe dag`), where a panic would
//! show as exit 101 and "panicked" on stderr.
//!
//! Cases per property: `PIPE_FUZZ_CASES`, default 64 so the suite stays quick; the properties
//! that run the binary (a process per command) run a quarter of it, 16 by default. For a
//! deeper search: `PIPE_FUZZ_CASES=2000 cargo test --test it fuzz::` (see docs/ci.md).

use crate::harness::{Run, Ws};

use pipe::graph::{LoadOptions, Pipeline};
use pipe::lockfile::{LockEntry, LockFile, OutRecord};
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::path::Path;

/// Cases per property when `PIPE_FUZZ_CASES` is not set.
const DEFAULT_CASES: u32 = 64;

/// `PIPE_FUZZ_CASES` (or [`DEFAULT_CASES`]) divided by `divisor`, at least 1.
fn config(divisor: u32) -> Config {
    let cases = std::env::var("PIPE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases: (cases / divisor).max(1),
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    }
}

// ---------------------------------------------------------------- bases

/// A valid pipeline that uses most keys (with the files below it validates cleanly).
const BASE_PIPELINE: &str = r#"params_file = "params.toml"

[pipeline]
name = "fuzz"
jobs = 2
cache_dir = ".pipe/cache"
runs_dir = ".pipe/runs"
keep_runs = 5

[resources]
gpu = 2
cpus = 8

[params]
board = "hex8"
seed = 42
[params.train]
lr = 0.001
epochs = 10
[params.train.optimizer]
name = "adam"

[stages.fetch]
cmd = "echo fetch > data/games/g.txt"
outs = ["data/games/"]
cache = false

[stages.export]
cmd = "echo ${params.board} ${params.seed} > data/train.jsonl; cp data/train.jsonl data/test.jsonl"
deps = ["scripts/export.py", "data/games/", "configs/**/*.yaml"]
outs = ["data/train.jsonl", "data/test.jsonl"]
params = ["board", "seed"]

[stages.features]
cmd = "mkdir -p ../data/features && cp featurize.py ../data/features/"
wdir = "tools"
deps = ["tools/featurize.py", "data/train.jsonl"]
outs = ["data/features/"]

[stages.train]
cmd = ["echo ${params.train.lr} ${params.train.optimizer.name} > models/candidate.bin", "mkdir -p checkpoints"]
deps = ["scripts/train.py", "data/features/"]
outs = ["models/candidate.bin", "checkpoints/"]
params = ["train"]
env = { OMP_NUM_THREADS = "2" }
after = ["check_data"]
resources = { gpu = 1, cpus = 4 }
retries = 2
retry_delay = "5s"
timeout = "2h"
persist = true
executor = "local"

[stages.check_data]
cmd = "echo '{\"bad_rows\": 0, \"rows\": 1000}' > metrics/data_check.json"
deps = ["data/train.jsonl", "data/test.jsonl"]
outs = ["metrics/data_check.json"]
[stages.check_data.gate]
name = "dataset_quality_gate"
file = "metrics/data_check.json"
checks = ["bad_rows == 0", "rows >= 1000"]

[stages.evaluate]
cmd = "echo '{}' > metrics/eval.json"
deps = ["models/candidate.bin", "data/test.jsonl"]
outs = ["metrics/eval.json"]
metrics = ["metrics/eval.json"]
[stages.evaluate.gate]
file = "metrics/eval.json"
checks = ["win_rate >= 0.55", "games >= 50", "loss < 0.7", "folds.0.acc > 0.5"]

[stages.sweep]
cmd = "mkdir -p sweeps/lr${matrix.lr}-s${matrix.seed}"
deps = ["scripts/train.py", "data/features/"]
outs = ["sweeps/lr${matrix.lr}-s${matrix.seed}/"]
matrix = { lr = [0.01, 0.1], seed = [1, 2] }

[stages.each]
cmd = "echo ${item} > each/${key}.txt"
outs = ["each/${key}.txt"]
foreach = { a = 1, b = 2 }

[stages.promote]
cmd = "cp models/candidate.bin release/model.bin"
deps = ["models/candidate.bin", "metrics/eval.json"]
outs = ["release/model.bin"]
release = true

[stages.report]
cmd = "echo report > reports/summary.html"
deps = ["metrics/eval.json"]
outs = ["reports/summary.html"]
always = true

[stages.baseline]
cmd = "echo base > models/baseline.bin"
deps = ["data/train.jsonl"]
outs = ["models/baseline.bin"]
frozen = true

[remote]
url = "file:///nonexistent/pipe-fuzz-cache"

[executor]
kind = "local"
[executor.slurm]
partition = "gpu"
extra_args = ["--account=ml"]
"#;

/// The files the base pipeline's deps name.
fn seed_workspace(root: &Path) {
    for (rel, text) in [
        ("params.toml", "extra = 1\n[train]\nwarmup = 3\n"),
        ("scripts/export.py", "print(1)\n"),
        ("scripts/train.py", "print(2)\n"),
        ("tools/featurize.py", "print(3)\n"),
        ("configs/a.yaml", "a: 1\n"),
        ("configs/sub/b.yaml", "b: 2\n"),
        ("in.txt", "in\n"),
        ("data/x.txt", "x\n"),
    ] {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// A lock file as pipe writes it, with every kind of value in it.
fn base_lock() -> String {
    let mut lf = LockFile::default();
    for (name, n) in [("export", 1), ("train", 2), ("sweep@lr=0.1,seed=1", 3)] {
        let mut e = LockEntry {
            fingerprint: format!("{:064x}", n),
            cmd: (0..n).map(|k| format!("echo {k} > out{k}.txt")).collect(),
            wdir: (n == 2).then(|| "tools".to_string()),
            ..Default::default()
        };
        e.params
            .insert("train.lr".into(), toml::Value::Float(0.001));
        e.params.insert("seed".into(), toml::Value::Integer(42));
        e.params
            .insert("board".into(), toml::Value::String("hex8".into()));
        e.params.insert(
            "list".into(),
            toml::Value::Array(vec![toml::Value::Boolean(true), toml::Value::Integer(-1)]),
        );
        e.env.insert("OMP_NUM_THREADS".into(), "ab".repeat(32));
        e.deps.insert("data/train.jsonl".into(), "cd".repeat(32));
        e.deps.insert("configs/**/*.yaml".into(), "ef".repeat(32));
        e.outs.insert(
            "models/candidate.bin".into(),
            OutRecord {
                hash: "01".repeat(32),
                size: 1234,
                dir: false,
            },
        );
        e.outs.insert(
            "data/features".into(),
            OutRecord {
                hash: "23".repeat(32),
                size: 99,
                dir: true,
            },
        );
        lf.stages.insert(name.into(), e);
    }
    lf.render()
}

#[test]
fn the_bases_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    seed_workspace(dir.path());
    let file = dir.path().join("Pipeline.toml");
    std::fs::write(&file, BASE_PIPELINE).unwrap();
    let p = Pipeline::load(&file, "Pipeline.toml".into(), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("base pipeline is invalid: {e:#}"));
    assert!(p.stages.len() >= 12);
    let lock = LockFile::parse(&base_lock()).unwrap();
    assert_eq!(lock.stages.len(), 3);
}

// ---------------------------------------------------------------- generators

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Strings that poke at paths, substitution, durations, gate checks and names.
fn tricky() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "",
        " ",
        ".",
        "..",
        "../x",
        "/etc/passwd",
        "/",
        "a/../../b",
        "~/x",
        "./",
        "//",
        "data/",
        "data",
        "data/x.txt",
        "data/*.txt",
        "data/**",
        "**",
        "*",
        "[",
        "{a,b",
        "data/[z-a]",
        ".pipe/cache",
        ".git/x",
        "in.txt",
        "out/a",
        "out/",
        "link/o",
        "${params.board}",
        "${params.train}",
        "${params.train.lr}",
        "${params.nope}",
        "${params.",
        "${params}",
        "${matrix.lr}",
        "${matrix.}",
        "${item}",
        "${item.x}",
        "${key}",
        "${",
        "}",
        "$${params.board}",
        "1s",
        "0s",
        "-1s",
        "1ms",
        "1000000000000h",
        "99999999999999999999s",
        "18446744073709551615s",
        "2h 30m",
        "5 parsecs",
        "win_rate >= 0.55",
        "x >=",
        ">= 1",
        "a.0.b != nan",
        "a == inf",
        "folds.99999999999999999999.acc > 1",
        "a.b.c <= -1e400",
        "== == ==",
        "gpu",
        "cpus",
        "mem",
        "slurm",
        "local",
        "s3://",
        "s3://b/p",
        "file:///nonexistent/x",
        "http://[::1",
        "ünïcødé/ファイル",
        "\u{0}",
        "\u{7f}",
        "a\nb",
        "\r\n",
        "stage.with.dots",
        "x@y=1,z",
        "@",
        "-",
        "train",
        "a",
        "b",
    ])
    .prop_map(String::from)
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        prop::sample::select(vec![
            "0",
            "-1",
            "1",
            "2",
            "3",
            "4294967295",
            "4294967296",
            "18446744073709551616",
            "1e308",
            "1e999",
            "-0.0",
            "nan",
            "inf",
            "-inf",
            "true",
            "false",
            "1979-05-27T07:32:00Z",
            "07:32:00",
            "1979-05-27",
            "0x10",
            "1_000",
        ])
        .prop_map(String::from),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        tricky().prop_map(|s| quote(&s)),
        "[a-z0-9_./*${}@=, -]{0,12}".prop_map(|s| quote(&s)),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(&[
            // Stage keys.
            "cmd", "deps", "outs", "params", "env", "wdir", "after", "resources", "retries",
            "retry_delay", "timeout", "gate", "release", "cache", "always", "frozen", "persist",
            "metrics", "matrix", "foreach", "executor",
            // Other tables' keys and names.
            "name", "jobs", "cache_dir", "runs_dir", "keep_runs", "file", "checks", "url",
            "endpoint", "region", "allow_http", "kind", "partition", "extra_args",
            "poll_interval", "params_file", "gpu", "lr", "seed", "board", "train",
            "pipeline", "stages", "resources", "remote", "executor",
        ][..])
        .prop_map(String::from),
        1 => "[a-z_]{1,8}",
        1 => tricky().prop_map(|s| quote(&s)),
        1 => Just("a.b".to_string()),
        1 => Just("stages.a.cmd".to_string()),
    ]
}

fn value() -> impl Strategy<Value = String> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((key(), inner), 0..3).prop_map(|kv| {
                let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", body.join(", "))
            }),
        ]
    })
}

fn stage_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a", "b", "c", "d", "train", "sweep", "\"a.b\"", "\"x y\"",
    ])
    .prop_map(String::from)
}

fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "[pipeline]",
            "[resources]",
            "[params]",
            "[params.train]",
            "[params.train.lr]",
            "[stages]",
            "[remote]",
            "[executor]",
            "[executor.slurm]",
            "[[stages]]",
            "[[params.x]]",
            "[stages.a.b.c.d]",
            "[]",
            "[",
            "[[",
        ])
        .prop_map(String::from),
        (
            stage_name(),
            prop::sample::select(vec![
                "",
                ".gate",
                ".matrix",
                ".env",
                ".resources",
                ".foreach",
                ".cmd"
            ])
        )
            .prop_map(|(n, sub)| format!("[stages.{n}{sub}]")),
        stage_name().prop_map(|n| format!("[[stages.{n}]]")),
    ]
}

/// One line of TOML-ish text: a key/value, a header, or garbage.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => (key(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => header(),
        1 => prop_oneof![
            "[ -~]{0,30}",
            any::<String>().prop_map(|s| s.chars().take(30).collect()),
        ],
        1 => Just(String::new()),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Insert(usize, String),
    /// Keep `key =` of a line, give it another value.
    SetValue(usize, String),
    /// Keep the value of a line, give it another key.
    SetKey(usize, String),
    Byte(usize, u8),
    DeleteBytes(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let ix = any::<usize>();
    prop_oneof![
        3 => ix.prop_map(Mutation::Delete),
        2 => ix.prop_map(Mutation::Duplicate),
        2 => (ix, ix).prop_map(|(a, b)| Mutation::Swap(a, b)),
        3 => (ix, line()).prop_map(|(i, l)| Mutation::Insert(i, l)),
        4 => (ix, value()).prop_map(|(i, v)| Mutation::SetValue(i, v)),
        2 => (ix, key()).prop_map(|(i, k)| Mutation::SetKey(i, k)),
        1 => (ix, prop_oneof![9 => 0x20u8..0x7f, 1 => any::<u8>()])
            .prop_map(|(i, b)| Mutation::Byte(i, b)),
        1 => (ix, 1usize..40).prop_map(|(i, n)| Mutation::DeleteBytes(i, n)),
        1 => ix.prop_map(Mutation::Truncate),
    ]
}

fn mutate(base: &str, muts: &[Mutation]) -> Vec<u8> {
    let mut lines: Vec<String> = base.lines().map(String::from).collect();
    let mut bytes: Option<Vec<u8>> = None;
    for m in muts {
        // Byte-level mutations switch to bytes for the rest of the list.
        if let Some(b) = bytes.as_mut() {
            let n = b.len().max(1);
            match m {
                Mutation::Byte(i, x) => {
                    if b.is_empty() {
                        b.push(*x)
                    } else {
                        b[i % n] = *x
                    }
                }
                Mutation::DeleteBytes(i, k) => {
                    let s = (i % n).min(b.len());
                    let e = (s + k).min(b.len());
                    b.drain(s..e);
                }
                Mutation::Truncate(i) => b.truncate(i % n),
                _ => {}
            }
            continue;
        }
        let n = lines.len().max(1);
        match m {
            Mutation::Delete(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Mutation::Duplicate(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Mutation::Swap(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
            Mutation::Insert(i, l) => lines.insert(i % (lines.len() + 1), l.clone()),
            Mutation::SetValue(i, v) if !lines.is_empty() => {
                let l = &mut lines[i % n];
                if let Some((k, _)) = l.split_once('=') {
                    *l = format!("{k}= {v}");
                }
            }
            Mutation::SetKey(i, k) if !lines.is_empty() => {
                let l = &mut lines[i % n];
                if let Some((_, v)) = l.split_once('=') {
                    *l = format!("{k} ={v}");
                }
            }
            Mutation::Byte(..) | Mutation::DeleteBytes(..) | Mutation::Truncate(..) => {
                let mut b = lines.join("\n").into_bytes();
                b.push(b'\n');
                bytes = Some(b);
                // Apply this one too.
                let b = bytes.as_mut().unwrap();
                let n = b.len().max(1);
                match m {
                    Mutation::Byte(i, x) => b[i % n] = *x,
                    Mutation::DeleteBytes(i, k) => {
                        let s = i % n;
                        let e = (s + k).min(b.len());
                        b.drain(s..e);
                    }
                    Mutation::Truncate(i) => b.truncate(i % n),
                    _ => unreachable!(),
                }
            }
            _ => {}
        }
    }
    bytes.unwrap_or_else(|| {
        let mut s = lines.join("\n");
        s.push('\n');
        s.into_bytes()
    })
}

fn mutated_pipeline() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(mutation(), 1..8).prop_map(|m| mutate(BASE_PIPELINE, &m))
}

fn mutated_lock() -> impl Strategy<Value = Vec<u8>> {
    let base = base_lock();
    prop::collection::vec(mutation(), 1..8).prop_map(move |m| mutate(&base, &m))
}

/// Random sections of random keys and values.
fn random_toml() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(line(), 0..4),
        prop::collection::vec((header(), prop::collection::vec(line(), 0..6)), 0..8),
    )
        .prop_map(|(top, sections)| {
            let mut s = top.join("\n");
            for (h, body) in sections {
                s.push('\n');
                s.push_str(&h);
                for l in body {
                    s.push('\n');
                    s.push_str(&l);
                }
            }
            s.push('\n');
            s.into_bytes()
        })
}

/// Paths that make edges, cycles, duplicate outs and escapes among a few stages.
fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "in.txt",
            "data/",
            "data/x.txt",
            "data/*.txt",
            "a.txt",
            "b.txt",
            "c.txt",
            "out/",
            "out/a.txt",
            "m.json",
            "sweeps/${matrix.lr}/",
            "each/${key}.txt",
            "${item}.txt",
            "missing.txt",
        ])
        .prop_map(String::from),
        1 => tricky(),
    ]
}

fn list(s: impl Strategy<Value = String>, max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(s, 0..max).prop_map(|v| {
        let q: Vec<String> = v.iter().map(|x| quote(x)).collect();
        format!("[{}]", q.join(", "))
    })
}

/// A key with a value of mostly the right type for it, sometimes a random value.
fn stage_kv() -> impl Strategy<Value = String> {
    let typed = prop_oneof![
        tricky().prop_map(|s| format!("cmd = {}", quote(&format!("echo {s}")))),
        list(tricky(), 3).prop_map(|l| format!("cmd = {l}")),
        list(path(), 4).prop_map(|l| format!("deps = {l}")),
        list(path(), 3).prop_map(|l| format!("outs = {l}")),
        list(
            prop::sample::select(vec!["board", "train", "train.lr", "nope", "", "a.b.c"])
                .prop_map(String::from),
            3
        )
        .prop_map(|l| format!("params = {l}")),
        list(
            prop::sample::select(vec!["a", "b", "c", "train", "sweep", "nope", ""])
                .prop_map(String::from),
            3
        )
        .prop_map(|l| format!("after = {l}")),
        list(path(), 2).prop_map(|l| format!("metrics = {l}")),
        (
            prop::sample::select(vec!["gpu", "cpus", "mem", "tpu"]),
            0u32..5
        )
            .prop_map(|(r, n)| format!("resources = {{ {r} = {n} }}")),
        (0u32..4).prop_map(|n| format!("retries = {n}")),
        tricky().prop_map(|s| format!("retry_delay = {}", quote(&s))),
        tricky().prop_map(|s| format!("timeout = {}", quote(&s))),
        tricky().prop_map(|s| format!("wdir = {}", quote(&s))),
        (
            prop::sample::select(vec!["lr", "seed", "x"]),
            prop::collection::vec(scalar(), 0..4)
        )
            .prop_map(|(k, v)| format!("matrix = {{ {k} = [{}] }}", v.join(", "))),
        prop::collection::vec(scalar(), 0..4).prop_map(|v| format!("foreach = [{}]", v.join(", "))),
        (tricky(), list(tricky(), 3))
            .prop_map(|(f, c)| format!("gate = {{ file = {}, checks = {c} }}", quote(&f))),
        prop::sample::select(vec![
            "release = true",
            "cache = false",
            "always = true",
            "frozen = true",
            "persist = true",
            "executor = \"slurm\"",
            "executor = \"mars\"",
            "env = { A = \"1\", B = 2 }",
        ])
        .prop_map(String::from),
    ];
    prop_oneof![12 => typed, 1 => (key(), value()).prop_map(|(k, v)| format!("{k} = {v}"))]
}

/// A pipeline of a few stages whose keys mostly have the right types, so generation gets
/// past parsing into graph validation (cycles, duplicates, matrix, gates, resources).
fn typed_pipeline() -> impl Strategy<Value = Vec<u8>> {
    let names = vec!["a", "b", "c", "d", "train", "sweep", "\"a.b\"", "\"x y\""];
    (
        prop::option::of((0u32..4).prop_map(|n| format!("[resources]\ngpu = {n}\n"))),
        prop::sample::subsequence(names, 0..5).prop_flat_map(|names| {
            let n = names.len();
            (
                Just(names),
                prop::collection::vec(
                    (
                        prop::bool::weighted(0.9),
                        prop::collection::vec(stage_kv(), 0..7),
                    ),
                    n,
                ),
            )
        }),
    )
        .prop_map(|(res, (names, stages))| {
            let mut s = String::from("[params]\nboard = \"hex8\"\n[params.train]\nlr = 0.1\n");
            if let Some(r) = res {
                s.push_str(&r);
            }
            for (name, (with_cmd, kvs)) in names.iter().zip(stages) {
                s.push_str(&format!("\n[stages.{name}]\n"));
                // One line per key (a duplicate key is only a parse error).
                let mut seen = std::collections::BTreeSet::new();
                if with_cmd {
                    s.push_str("cmd = \"echo hi\"\n");
                    seen.insert("cmd".to_string());
                }
                for kv in kvs {
                    let k = kv.split('=').next().unwrap_or("").trim().to_string();
                    if seen.insert(k) {
                        s.push_str(&kv);
                        s.push('\n');
                    }
                }
            }
            s.into_bytes()
        })
}

fn any_pipeline() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => mutated_pipeline(),
        2 => typed_pipeline(),
        1 => random_toml(),
        1 => prop::collection::vec(any::<u8>(), 0..300),
    ]
}

fn any_lock() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => mutated_lock(),
        1 => random_toml(),
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => Just(base_lock().into_bytes()),
    ]
}

// ---------------------------------------------------------------- the library, many cases

/// A workspace for library-level cases: seeded once, Pipeline.toml rewritten per case.
struct LibWs {
    dir: tempfile::TempDir,
}

impl LibWs {
    fn new() -> LibWs {
        let dir = tempfile::tempdir().unwrap();
        seed_workspace(dir.path());
        LibWs { dir }
    }
    /// Load `text` as Pipeline.toml: whatever happens, an error must be a worded exit-2 error.
    fn load(&self, text: &[u8]) -> Result<(), TestCaseError> {
        let file = self.dir.path().join("Pipeline.toml");
        std::fs::write(&file, text).unwrap();
        match Pipeline::load(&file, "Pipeline.toml".into(), &LoadOptions::default()) {
            Ok(p) => {
                // A pipeline that loads has a consistent graph.
                prop_assert_eq!(p.order.len(), p.stages.len());
            }
            Err(e) => {
                let msg = format!("{e:#}");
                prop_assert_eq!(
                    pipe::error::exit_code(&e),
                    2,
                    "a bad pipeline is exit 2, got: {}",
                    msg
                );
                prop_assert!(!msg.trim().is_empty());
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn loading_random_bytes_never_panics(text in prop::collection::vec(any::<u8>(), 0..400)) {
        thread_local!(static WS: LibWs = LibWs::new());
        WS.with(|ws| ws.load(&text))?;
    }

    #[test]
    fn loading_mutated_pipelines_never_panics(text in mutated_pipeline()) {
        thread_local!(static WS: LibWs = LibWs::new());
        WS.with(|ws| ws.load(&text))?;
    }

    #[test]
    fn loading_random_toml_never_panics(text in random_toml()) {
        thread_local!(static WS: LibWs = LibWs::new());
        WS.with(|ws| ws.load(&text))?;
    }

    #[test]
    fn loading_generated_pipelines_never_panics(text in typed_pipeline()) {
        thread_local!(static WS: LibWs = LibWs::new());
        WS.with(|ws| ws.load(&text))?;
    }

    #[test]
    fn parsing_lock_files_never_panics_and_what_is_read_can_be_written_back(text in any_lock()) {
        let text = String::from_utf8_lossy(&text);
        if let Ok(lock) = LockFile::parse(&text) {
            let again = lock.render();
            let back = LockFile::parse(&again);
            prop_assert!(back.is_ok(), "pipe cannot read the lock it wrote: {:?}\n{}", back.err(), again);
            // Rendering is deterministic and stable.
            prop_assert_eq!(back.unwrap().render(), again);
        }
    }
}

// ---------------------------------------------------------------- the binary, fewer cases

fn no_panic(r: &Run, allowed: &[i32], what: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        !r.stderr.contains("panicked") && r.code != 101,
        "`pipe {}` panicked\n{}",
        what,
        r
    );
    prop_assert!(
        allowed.contains(&r.code),
        "`pipe {}` exit {} not in {:?}\n{}",
        what,
        r.code,
        allowed,
        r
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(4))]

    #[test]
    fn the_binary_never_panics_on_hostile_pipelines_and_locks(
        pipeline in any_pipeline(),
        lock in prop::option::of(any_lock()),
    ) {
        let ws = Ws::new("");
        seed_workspace(ws.root());
        std::fs::write(ws.path("Pipeline.toml"), &pipeline).unwrap();
        if let Some(lock) = &lock {
            std::fs::write(ws.path("Pipeline.lock"), lock).unwrap();
        }
        no_panic(&ws.pipe(&["validate"]), &[0, 2], "validate")?;
        no_panic(&ws.pipe(&["status"]), &[0, 1, 2], "status")?;
        no_panic(&ws.pipe(&["dag"]), &[0, 2], "dag")?;
    }

    #[test]
    fn the_binary_never_panics_on_a_hostile_lock_beside_a_valid_pipeline(lock in any_lock()) {
        let ws = Ws::new(BASE_PIPELINE);
        seed_workspace(ws.root());
        std::fs::write(ws.path("Pipeline.lock"), &lock).unwrap();
        let r = ws.pipe(&["status"]);
        no_panic(&r, &[1, 2], "status")?;
        if r.code == 2 {
            prop_assert!(r.stderr.contains("Pipeline.lock"), "the error names the lock file\n{}", r);
        }
        no_panic(&ws.pipe(&["build", "--dry-run"]), &[0, 2], "build --dry-run")?;
    }
}
