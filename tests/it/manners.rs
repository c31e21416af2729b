//! Manners (issue 16): completions, man page, version, help examples, JSON schema,
//! versioned JSON documents, closed pipes, upward search, `pipe import dvc`.

use crate::harness::*;
use clap::CommandFactory;
use std::process::Command;

const SIMPLE: &str = r#"
[params]
n = 1
[stages.a]
cmd = "echo ${params.n} > a.txt"
outs = ["a.txt"]
[stages.b]
cmd = "cat a.txt > b.txt"
deps = ["a.txt"]
outs = ["b.txt"]
"#;

// ---- 1. completions, man page, version, help ----

#[test]
fn completions_for_every_shell() {
    let ws = Ws::new(SIMPLE);
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let r = ws.pipe(&["completions", shell]);
        r.ok();
        assert!(r.stdout.contains("pipe"), "{shell}: {r}");
        assert!(r.stderr.is_empty(), "{shell}: {r}");
    }
    ws.pipe(&["completions", "tcsh"])
        .code(2)
        .err_has("invalid value");
}

#[test]
fn bash_completions_source_and_complete() {
    let ws = Ws::new(SIMPLE);
    let r = ws.pipe(&["completions", "bash"]);
    r.ok();
    ws.write("pipe.bash", &r.stdout);
    // Source it, then ask the completion function what follows `pipe bu`.
    let script = r#"set -e
source ./pipe.bash
complete -p pipe
COMP_WORDS=(pipe bu); COMP_CWORD=1; COMP_LINE="pipe bu"; COMP_POINT=7
_pipe pipe bu pipe
printf '%s\n' "${COMPREPLY[@]}""#;
    let out = Command::new("bash")
        .args(["--norc", "-c", script])
        .current_dir(ws.root())
        .output()
        .unwrap();
    let run: Run = out.into();
    run.ok().out_has("build");
    assert!(run.stderr.is_empty(), "{run}");
}

#[test]
fn man_page_is_roff_opening_with_th() {
    let ws = Ws::new(SIMPLE);
    let r = ws.pipe(&["man"]);
    r.ok();
    assert!(r.stdout.starts_with(".TH pipe 1"), "{}", &r.stdout[..200]);
    assert!(r.stdout.contains("completions"));
    let r = ws.pipe(&["man", "build"]);
    r.ok();
    assert!(r.stdout.starts_with(".TH pipe-build 1"), "{r}");
    assert!(r.stdout.contains("dry"));
    ws.pipe(&["man", "biuld"])
        .code(2)
        .err_has("did you mean `build`");
}

#[test]
fn version_names_the_commit() {
    let r = Ws::new(SIMPLE).pipe(&["--version"]);
    r.ok();
    let line = r.stdout.trim();
    assert!(
        line.starts_with(&format!("pipe {}", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    // "(abc1234def)" from git, or "(unknown commit)" outside a checkout.
    assert!(line.ends_with(')') && line.contains(" ("), "{line}");
}

#[test]
fn every_subcommand_help_has_examples() {
    let ws = Ws::new(SIMPLE);
    let root = pipe::cli::Cli::command();
    let mut paths: Vec<Vec<String>> = Vec::new();
    for sub in root.get_subcommands() {
        paths.push(vec![sub.get_name().to_string()]);
        for subsub in sub.get_subcommands() {
            paths.push(vec![
                sub.get_name().to_string(),
                subsub.get_name().to_string(),
            ]);
        }
    }
    assert!(paths.len() >= 15, "{paths:?}");
    for p in paths {
        let mut args: Vec<&str> = p.iter().map(String::as_str).collect();
        args.push("--help");
        let r = ws.pipe(&args);
        r.ok();
        assert!(r.stdout.contains("Examples:"), "pipe {args:?}: {r}");
    }
}

#[test]
fn every_flag_and_argument_is_described() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(format!("{path} {} (no about)", sub.get_name()));
            }
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&pipe::cli::Cli::command(), "pipe", &mut missing);
    assert!(missing.is_empty(), "undocumented: {missing:?}");
}

// ---- 2. JSON Schema of Pipeline.toml ----

/// A small JSON Schema (draft-07 subset) checker: enough for the keywords `pipe schema`
/// uses, so a missing or misspelt key in the schema or the example shows up here.
fn check(
    schema: &serde_json::Value,
    root: &serde_json::Value,
    v: &serde_json::Value,
    at: &str,
    errs: &mut Vec<String>,
) {
    use serde_json::Value as J;
    let s = match schema.get("$ref").and_then(J::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/definitions/");
            &root["definitions"][name]
        }
        None => schema,
    };
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            J::String(x) => vec![x.as_str()],
            J::Array(a) => a.iter().filter_map(J::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            errs.push(format!("{at}: {v} is not {types:?}"));
            return;
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = s.get(key).and_then(J::as_array) {
            let mut inner = Vec::new();
            let n = alts
                .iter()
                .filter(|a| {
                    let mut e = Vec::new();
                    check(a, root, v, at, &mut e);
                    inner.extend(e.iter().cloned());
                    e.is_empty()
                })
                .count();
            if n == 0 || (key == "oneOf" && n > 1) {
                errs.push(format!("{at}: {key} matched {n} alternatives ({inner:?})"));
            }
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(J::as_object);
        for req in s
            .get("required")
            .and_then(J::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(req.as_str().unwrap()) {
                errs.push(format!("{at}: missing required {req}"));
            }
        }
        for (k, val) in obj {
            let sub = props.and_then(|p| p.get(k));
            match (sub, s.get("additionalProperties")) {
                (Some(sub), _) => check(sub, root, val, &format!("{at}.{k}"), errs),
                (None, Some(J::Bool(false))) => errs.push(format!("{at}: unknown key {k}")),
                (None, Some(extra @ J::Object(_))) => {
                    check(extra, root, val, &format!("{at}.{k}"), errs)
                }
                _ => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            check(items, root, x, &format!("{at}[{i}]"), errs);
        }
    }
}

fn schema_errors(schema: &serde_json::Value, toml_text: &str) -> Vec<String> {
    let doc: toml::Value = toml::from_str(toml_text).unwrap();
    let json = serde_json::to_value(doc).unwrap();
    let mut errs = Vec::new();
    check(schema, schema, &json, "", &mut errs);
    errs
}

#[test]
fn schema_covers_pipeline_toml_and_validates_the_examples() {
    let ws = Ws::new(SIMPLE);
    let r = ws.pipe(&["schema"]);
    r.ok();
    let schema = r.json();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    let top = schema["properties"].as_object().unwrap();
    for k in [
        "pipeline",
        "params",
        "params_file",
        "resources",
        "stages",
        "remote",
        "executor",
    ] {
        assert!(top.contains_key(k), "top-level key {k} missing");
    }
    let stage = &schema["definitions"]["RawStage"]["properties"];
    for k in [
        "cmd",
        "deps",
        "outs",
        "params",
        "env",
        "wdir",
        "after",
        "resources",
        "retries",
        "retry_delay",
        "timeout",
        "gate",
        "release",
        "cache",
        "always",
        "frozen",
        "persist",
        "metrics",
        "matrix",
        "foreach",
        "executor",
    ] {
        assert!(stage.get(k).is_some(), "stage key {k} missing");
        assert!(
            stage[k].get("description").is_some(),
            "stage key {k} has no description"
        );
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in [
        "examples/ml-pipeline/Pipeline.toml",
        "Pipeline.toml.example",
    ] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        let errs = schema_errors(&schema, &text);
        assert!(errs.is_empty(), "{f}: {errs:?}");
    }
    assert!(schema_errors(&schema, SIMPLE).is_empty());
    // What pipe refuses, the schema flags too.
    let errs = schema_errors(&schema, "[stages.a]\ncmdd = \"x\"\n");
    assert!(
        errs.iter().any(|e| e.contains("unknown key cmdd")),
        "{errs:?}"
    );
    let errs = schema_errors(&schema, "[stages.a]\ncmd = 3\n");
    assert!(!errs.is_empty());
    let errs = schema_errors(
        &schema,
        "[stages.a]\ncmd = \"x\"\n[stages.a.gate]\nchecks = []\n",
    );
    assert!(errs.iter().any(|e| e.contains("required")), "{errs:?}");
}

// ---- 3. versioned JSON documents and closed pipes ----

const JSONY: &str = r#"
[pipeline]
name = "jsony"
[params]
n = 1
[stages.a]
cmd = "echo ${params.n} > a.txt; echo '{\"acc\": 0.5, \"f1\": {\"x\": 1}}' > m.json"
outs = ["a.txt", "m.json"]
metrics = ["m.json"]
[stages.b]
cmd = "cat a.txt > b.txt"
deps = ["a.txt"]
outs = ["b.txt"]
release = true
"#;

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// A `--json` document: `"version": 1` is the first key, and the top-level keys are exactly `expected`.
fn doc(r: &Run, expected: &[&str]) -> serde_json::Value {
    assert!(
        r.stdout.trim_start().starts_with("{\n  \"version\": 1,"),
        "version is not the first key\n{r}"
    );
    let v = r.json();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.push("version".into());
    want.sort();
    assert_eq!(keys(&v), want, "{r}");
    v
}

fn same_keys(v: &serde_json::Value, expected: &[&str]) {
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(keys(v), want, "{v}");
}

fn built() -> Ws {
    let ws = Ws::new(JSONY);
    ws.pipe(&["build"]).ok();
    ws.pipe(&["build", "--set", "n=2"]).ok();
    ws
}

#[test]
fn json_runs_and_stats() {
    let ws = built();
    let v = doc(ws.pipe(&["runs", "--json"]).ok(), &["runs"]);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    same_keys(
        &runs[0],
        &[
            "run_id",
            "started_at",
            "finished_at",
            "duration_s",
            "status",
            "ran",
            "restored",
            "up_to_date",
            "failed",
            "blocked",
            "command",
        ],
    );
    assert_eq!(runs[0]["ran"], 2);
    let v = doc(ws.pipe(&["runs", "--stats", "--json"]).ok(), &["stages"]);
    same_keys(
        &v["stages"][0],
        &["stage", "runs", "success_rate", "mean_s", "last_s"],
    );
    // No runs yet is an empty list, still a document.
    let v = doc(Ws::new(JSONY).pipe(&["runs", "--json"]).ok(), &["runs"]);
    assert_eq!(v["runs"], serde_json::json!([]));
}

#[test]
fn json_releases_metrics_params_diff() {
    let ws = built();
    let v = doc(ws.pipe(&["releases", "--json"]).ok(), &["releases"]);
    let rel = &v["releases"][0];
    assert_eq!(rel["stage"], "b");
    for k in [
        "run_id",
        "created_at",
        "stage",
        "artifacts",
        "gates",
        "status",
    ] {
        assert!(rel.get(k).is_some(), "release lacks {k}: {rel}");
    }

    let v = doc(ws.pipe(&["metrics", "--json"]).ok(), &["sources"]);
    let src = &v["sources"][0];
    same_keys(src, &["label", "stage", "file", "run_id", "values"]);
    assert_eq!(src["values"]["acc"], 0.5);
    assert_eq!(src["values"]["f1.x"], 1);

    let runs = ws.pipe(&["runs", "--json"]).json();
    let (new, old) = (
        runs["runs"][0]["run_id"].as_str().unwrap().to_string(),
        runs["runs"][1]["run_id"].as_str().unwrap().to_string(),
    );
    let v = doc(
        ws.pipe(&["params", "diff", &old, &new, "--json"]).ok(),
        &["a", "b", "params"],
    );
    assert_eq!(
        v["params"],
        serde_json::json!([{"key": "n", "a": 1, "b": 2}])
    );
}

#[test]
fn json_dag_validate_gc() {
    let ws = built();
    let v = doc(
        ws.pipe(&["dag", "--json"]).ok(),
        &["pipeline", "stages", "edges"],
    );
    assert_eq!(v["pipeline"], "jsony");
    same_keys(
        &v["stages"][1],
        &[
            "name", "group", "upstream", "frozen", "always", "gate", "release",
        ],
    );
    assert_eq!(v["stages"][1]["upstream"], serde_json::json!(["a"]));
    assert_eq!(v["edges"], serde_json::json!([{"from": "a", "to": "b"}]));
    let svg = ws.pipe(&["dag", "--format", "svg"]);
    svg.ok();
    assert!(
        svg.stdout
            .starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(
        svg.stdout.contains(">a</text>") && svg.stdout.contains("<path"),
        "{svg}"
    );
    assert!(svg.stdout.trim_end().ends_with("</svg>"));

    let v = doc(
        ws.pipe(&["validate", "--json"]).ok(),
        &["valid", "file", "stages", "edges", "dag", "errors"],
    );
    assert_eq!(v["valid"], true);
    assert_eq!(v["stages"], 2);

    ws.write(
        "bad.toml",
        "[stages.a]\ncmd = \"x\"\n\n[stages.b]\ncmdd = 1\n",
    );
    let r = ws.pipe(&["-f", "bad.toml", "validate", "--json"]);
    r.code(2);
    assert!(r.stderr.is_empty(), "{r}");
    let v = doc(&r, &["valid", "file", "errors"]);
    assert_eq!(v["valid"], false);
    let e = &v["errors"][0];
    same_keys(
        e,
        &["file", "line", "column", "stage", "message", "help", "text"],
    );
    assert_eq!(e["line"], 5);
    assert_eq!(e["stage"], "b");
    assert_eq!(e["file"], "bad.toml");

    let v = doc(
        ws.pipe(&["gc", "--dry-run", "--json"]).ok(),
        &[
            "dry_run",
            "removed_files",
            "removed_bytes",
            "kept_objects",
            "keep_runs",
        ],
    );
    assert_eq!(v["dry_run"], true);
    let v = doc(
        ws.pipe(&["gc", "--keep-runs", "0", "--json"]).ok(),
        &[
            "dry_run",
            "removed_files",
            "removed_bytes",
            "kept_objects",
            "keep_runs",
        ],
    );
    assert!(v["removed_files"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn json_push_pull_with_a_folder_remote() {
    let remote = tempfile::tempdir().unwrap();
    let text = format!(
        "{JSONY}\n[remote]\nurl = \"file://{}\"\n",
        remote.path().display()
    );
    let ws = Ws::new(&text);
    ws.pipe(&["build"]).ok();
    let fields = [
        "all",
        "transferred",
        "skipped",
        "bytes",
        "missing",
        "releases",
    ];
    let v = doc(ws.pipe(&["push", "--json"]).ok(), &fields);
    assert!(v["transferred"].as_u64().unwrap() > 0, "{v}");
    let v = doc(ws.pipe(&["push", "--json"]).ok(), &fields);
    assert_eq!(v["transferred"], 0);
    let v = doc(ws.pipe(&["pull", "--json"]).ok(), &fields);
    assert_eq!(v["all"], false);
}

/// Run pipe with stdout to a pipe whose reader takes at most one line and goes away.
fn closed_after_one_line(ws: &Ws, args: &[&str], read_first: bool) -> Run {
    use std::io::BufRead;
    let mut child = ws
        .cmd(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut first = String::new();
    if read_first {
        std::io::BufReader::new(stdout)
            .read_line(&mut first)
            .unwrap();
    } else {
        drop(stdout);
    }
    let out = child.wait_with_output().unwrap();
    let mut run: Run = out.into();
    run.stdout = first;
    run
}

#[test]
fn closed_pipe_ends_quietly() {
    let ws = Ws::new(
        r#"
[stages.loud]
cmd = "seq 1 200000; echo done > loud.txt"
outs = ["loud.txt"]
[stages.quiet]
cmd = "cat loud.txt > q.txt"
deps = ["loud.txt"]
outs = ["q.txt"]
release = true
"#,
    );
    ws.pipe(&["build"]).ok();
    for args in [
        &["runs"][..],
        &["runs", "--json"],
        &["releases"],
        &["releases", "--json"],
        &["log"],
        &["log", "loud"],
        &["dag"],
        &["dag", "--json"],
        &["schema"],
        &["completions", "bash"],
        &["man"],
    ] {
        for read_first in [true, false] {
            let r = closed_after_one_line(&ws, args, read_first);
            assert_eq!(r.code, 0, "pipe {args:?}\n{r}");
            assert!(r.stderr.is_empty(), "pipe {args:?}\n{r}");
            if read_first {
                assert!(!r.stdout.is_empty(), "pipe {args:?}\n{r}");
            }
        }
    }
}

// ---- 4. upward search for Pipeline.toml ----

fn pipe_in(dir: &std::path::Path, args: &[&str]) -> Run {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_remove("PIPE_CACHE_DIR")
        .env("NO_COLOR", "1")
        .output()
        .expect("run pipe")
        .into()
}

#[test]
fn finds_pipeline_toml_in_a_parent_folder() {
    let ws = Ws::new(SIMPLE);
    let deep = ws.path("src/models/deep");
    std::fs::create_dir_all(&deep).unwrap();
    pipe_in(&deep, &["validate"]).ok();
    pipe_in(&deep, &["build"]).ok();
    // The stages ran at the workspace root, not in the subfolder.
    assert_eq!(ws.read("b.txt").trim(), "1");
    assert!(!deep.join("a.txt").exists());
    assert!(ws.exists(".pipe"));
    assert!(!deep.join(".pipe").exists());
    pipe_in(&deep, &["status"]).ok();
    let v = pipe_in(&deep, &["dag", "--json"]).json();
    assert_eq!(v["stages"][0]["name"], "a");
    // The nearest one wins.
    std::fs::write(
        ws.path("src/Pipeline.toml"),
        "[stages.inner]\ncmd = \"echo x > x.txt\"\nouts = [\"x.txt\"]\n",
    )
    .unwrap();
    pipe_in(&deep, &["build"]).ok();
    assert!(ws.exists("src/x.txt"));
}

#[test]
fn no_pipeline_anywhere_names_the_folder_and_suggests_init() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("a/b");
    std::fs::create_dir_all(&sub).unwrap();
    if common_ancestor_has_pipeline(&sub) {
        eprintln!("SKIPPING: a parent of the temp folder holds a Pipeline.toml");
        return;
    }
    let r = pipe_in(&sub, &["status"]);
    r.code(2).err_has("pipe init");
    let shown = sub.canonicalize().unwrap();
    assert!(
        r.stderr.contains(&shown.display().to_string())
            || r.stderr.contains(&sub.display().to_string()),
        "{r}"
    );
    // `pipe init` still writes here, not in a parent.
    pipe_in(&sub, &["init"]).ok();
    assert!(sub.join("Pipeline.toml").exists());
}

fn common_ancestor_has_pipeline(dir: &std::path::Path) -> bool {
    dir.ancestors().any(|d| d.join("Pipeline.toml").is_file())
}

#[test]
fn dash_c_does_not_search_upward() {
    let ws = Ws::new(SIMPLE);
    std::fs::create_dir_all(ws.path("sub")).unwrap();
    ws.pipe(&["-C", "sub", "status"])
        .code(2)
        .err_has("pipe init");
    ws.pipe(&["-C", ".", "validate"]).ok();
}

// ---- 5. pipe import dvc ----

/// Every construct `pipe import dvc` converts, with shell commands so the result builds.
const DVC_ALL: &str = r#"
vars:
  - config.yaml
  - greeting: hello
  - extra.json:lang
stages:
  gen:
    cmd: mkdir -p data && echo ${greeting} ${target} ${lang} ${data.size} > data/raw.txt
    params:
      - data.size
      - other2.yaml:
          - data.size
    outs:
      - data/raw.txt
  listcmd:
    desc: A command given as a list.
    cmd:
      - echo one > list.txt
      - echo two >> list.txt
    deps: [data/raw.txt]
    outs:
      - list.txt:
          cache: false
    always_changed: true
  per_model:
    foreach: ${models}
    do:
      cmd: mkdir -p models && echo ${item} > models/${item}.txt
      outs:
        - models/${item}.txt
  per_dataset:
    foreach:
      small: {rows: 10}
      large: {rows: 1000}
    do:
      cmd: mkdir -p sets && echo ${key} ${item.rows} > sets/${key}.txt
      outs:
        - sets/${key}.txt
  per_obj:
    foreach:
      - {name: a, n: 1}
      - {name: b, n: 2}
    do:
      cmd: mkdir -p objs && echo ${item.n} > objs/${item.name}.txt
      outs:
        - objs/${item.name}.txt
  grid:
    matrix:
      lr: [0.1, 0.01]
      seed: [1, 2]
    cmd: mkdir -p grid && echo ${item.lr} ${item.seed} > grid/${item.lr}-${item.seed}.txt
    outs:
      - grid/${item.lr}-${item.seed}.txt
  grid_keyed:
    matrix:
      model: [cnn, rnn]
      cfg: [{depth: 1}, {depth: 2}]
    cmd: mkdir -p gk && echo ${key} ${item.cfg.depth} > gk/${key}.txt
    outs:
      - gk/${key}.txt
  in_sub:
    wdir: sub
    cmd: 'cat ../data/raw.txt > out.txt && echo ''{"acc": 0.9}'' > metrics.json && echo step > plot.csv'
    deps: [../data/raw.txt]
    outs:
      - out.txt:
          persist: true
    metrics:
      - metrics.json:
          cache: false
    plots:
      - plot.csv:
          x: step
    params:
      - train.lr
      - other.yaml:
          - batch
  unpack:
    cmd: echo ${train} > unpack.txt
    outs: [unpack.txt]
  old:
    cmd: echo frozen > old.txt
    outs: [old.txt]
    frozen: true
    meta: {owner: me}
  local_vars:
    vars:
      - suffix: xyz
    cmd: echo ${suffix} > local.txt
    outs: [local.txt]
plots:
  - plot.csv
"#;

const DVC_ALL_PARAMS: &str =
    "data:\n  size: 5\nmodels: [linear, forest]\ntrain:\n  lr: 0.1\n  epochs: 3\n  fast: true\n";

fn dvc_all_project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let w = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w("dvc.yaml", DVC_ALL);
    w("params.yaml", DVC_ALL_PARAMS);
    w("config.yaml", "target: world\n");
    w("extra.json", "{\"lang\": \"en\", \"unused\": 1}\n");
    w("sub/other.yaml", "batch: 32\n"); // params files are relative to the stage's wdir
    w("other2.yaml", "data:\n  size: 7\n");
    w("dvc.lock", "schema: '2.0'\nstages: {}\n");
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    dir
}

#[test]
fn import_dvc_converts_every_construct_and_builds() {
    let dir = dvc_all_project();
    let r = pipe_in(dir.path(), &["import", "dvc"]);
    r.ok();
    for said in ["plots", "dvc.lock", "meta", "[params.other2]"] {
        assert!(r.stderr.contains(said), "stderr lacks {said:?}\n{r}");
    }
    assert!(!r.stderr.contains("does not pass"), "{r}");
    let text = std::fs::read_to_string(dir.path().join("Pipeline.toml")).unwrap();
    let p: toml::Table = toml::from_str(&text).unwrap();
    let st = |n: &str| p["stages"][n].clone();
    // params.yaml and vars under [params]; ${name} -> ${params.name}
    assert_eq!(p["params"]["data"]["size"].as_integer(), Some(5));
    assert_eq!(p["params"]["greeting"].as_str(), Some("hello"));
    assert_eq!(p["params"]["target"].as_str(), Some("world"));
    assert_eq!(p["params"]["lang"].as_str(), Some("en"));
    assert!(p["params"].get("unused").is_none());
    assert_eq!(p["params"]["other2"]["data"]["size"].as_integer(), Some(7));
    assert_eq!(
        st("gen")["cmd"].as_str().unwrap(),
        "mkdir -p data && echo ${params.greeting} ${params.target} ${params.lang} ${params.data.size} > data/raw.txt"
    );
    assert_eq!(
        st("gen")["params"],
        toml::Value::from(vec!["data.size", "other2.data.size"])
    );
    // cmd list, cache: false, always_changed, desc as a comment
    assert_eq!(st("listcmd")["cmd"].as_array().unwrap().len(), 2);
    assert_eq!(st("listcmd")["cache"].as_bool(), Some(false));
    assert_eq!(st("listcmd")["always"].as_bool(), Some(true));
    assert!(text.contains("# A command given as a list."));
    // foreach: list from params, mapping, list of mappings
    assert_eq!(
        st("per_model")["foreach"],
        toml::Value::from(vec!["linear", "forest"])
    );
    assert_eq!(
        st("per_dataset")["foreach"]["large"]["rows"].as_integer(),
        Some(1000)
    );
    assert!(st("per_obj")["foreach"].get("1").is_some());
    // matrix of plain values: pipe's matrix; with ${key} / mappings: a foreach table
    assert!(
        st("grid")["cmd"]
            .as_str()
            .unwrap()
            .contains("${matrix.lr} ${matrix.seed}")
    );
    assert_eq!(st("grid")["matrix"]["seed"], toml::Value::from(vec![1, 2]));
    assert!(st("grid_keyed")["foreach"].get("rnn-cfg1").is_some());
    // wdir: paths rebased on the workspace root; persist, metrics, plots, params files
    let sub = st("in_sub");
    assert_eq!(sub["wdir"].as_str(), Some("sub"));
    assert_eq!(sub["deps"], toml::Value::from(vec!["data/raw.txt"]));
    assert_eq!(
        sub["outs"],
        toml::Value::from(vec!["sub/out.txt", "sub/metrics.json", "sub/plot.csv"])
    );
    assert_eq!(sub["metrics"], toml::Value::from(vec!["sub/metrics.json"]));
    assert_eq!(sub["persist"].as_bool(), Some(true));
    assert!(sub.get("cache").is_none());
    assert_eq!(sub["params"], toml::Value::from(vec!["train.lr", "batch"]));
    // dict unpacking, frozen, stage vars
    let unpack = st("unpack")["cmd"].as_str().unwrap().to_string();
    assert!(
        unpack.contains("--lr ${params.train.lr}") && unpack.contains("--fast"),
        "{unpack}"
    );
    assert_eq!(st("old")["frozen"].as_bool(), Some(true));
    assert_eq!(
        st("local_vars")["cmd"].as_str(),
        Some("echo xyz > local.txt")
    );

    pipe_in(dir.path(), &["validate"]).ok();
    let targets = [
        "gen",
        "listcmd",
        "per_model",
        "per_dataset",
        "per_obj",
        "grid",
        "grid_keyed",
        "in_sub",
        "unpack",
        "local_vars",
    ];
    let mut args = vec!["build"];
    args.extend(targets);
    pipe_in(dir.path(), &args).ok();
    let read = |rel: &str| {
        std::fs::read_to_string(dir.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    assert_eq!(read("data/raw.txt").trim(), "hello world en 5");
    assert_eq!(read("models/forest.txt").trim(), "forest");
    assert_eq!(read("sets/large.txt").trim(), "large 1000");
    assert_eq!(read("objs/b.txt").trim(), "2");
    assert_eq!(read("grid/0.01-2.txt").trim(), "0.01 2");
    assert_eq!(read("gk/rnn-cfg0.txt").trim(), "rnn-cfg0 1");
    assert_eq!(read("sub/out.txt").trim(), "hello world en 5");
    assert_eq!(read("local.txt").trim(), "xyz");
    assert!(read("unpack.txt").contains("--epochs 3"));

    // Never overwrites.
    let before = std::fs::read_to_string(dir.path().join("Pipeline.toml")).unwrap();
    pipe_in(dir.path(), &["import", "dvc"])
        .code(2)
        .err_has("already exists");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("Pipeline.toml")).unwrap(),
        before
    );
}

#[test]
fn import_dvc_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    pipe_in(dir.path(), &["import", "dvc"])
        .code(2)
        .err_has("dvc.yaml");
    pipe_in(dir.path(), &["import", "dvc", "nowhere"])
        .code(2)
        .err_has("nowhere/dvc.yaml");
    std::fs::write(dir.path().join("dvc.yaml"), "stages: [unclosed\n").unwrap();
    pipe_in(dir.path(), &["import", "dvc"])
        .code(2)
        .err_has("not valid YAML");
    assert!(!dir.path().join("Pipeline.toml").exists());
}

/// Modelled on DVC's public example-get-started project: prepare / featurize / train /
/// evaluate with params.yaml, metrics, plots, and data tracked by a .dvc file.
const GET_STARTED: &str = r#"stages:
  prepare:
    cmd: python src/prepare.py data/data.xml
    deps:
    - data/data.xml
    - src/prepare.py
    params:
    - prepare.seed
    - prepare.split
    outs:
    - data/prepared
  featurize:
    cmd: python src/featurization.py data/prepared data/features
    deps:
    - data/prepared
    - src/featurization.py
    params:
    - featurize.max_features
    - featurize.ngrams
    outs:
    - data/features
  train:
    cmd: python src/train.py data/features model.pkl
    deps:
    - data/features
    - src/train.py
    params:
    - train.min_split
    - train.n_est
    - train.seed
    outs:
    - model.pkl
  evaluate:
    cmd: python src/evaluate.py model.pkl data/features
    deps:
    - data/features
    - model.pkl
    - src/evaluate.py
    outs:
    - eval/importance.png
    metrics:
    - eval/metrics.json:
        cache: false
    plots:
    - eval/plots/prc.json:
        cache: false
        x: recall
        y: precision
metrics:
- eval/metrics.json
plots:
- ROC:
    template: simple
    x: fpr
    y:
      eval/plots/sklearn/roc/train.json: tpr
- eval/importance.png
artifacts:
  stackoverflow-model:
    path: model.pkl
    type: model
"#;

#[test]
fn import_dvc_get_started_project() {
    let dir = tempfile::tempdir().unwrap();
    let w = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w("project/dvc.yaml", GET_STARTED);
    w(
        "project/params.yaml",
        "prepare:\n  split: 0.20\n  seed: 20170428\n\nfeaturize:\n  max_features: 100\n  ngrams: 1\n\ntrain:\n  seed: 20170428\n  n_est: 50\n  min_split: 0.01\n",
    );
    w(
        "project/data/data.xml.dvc",
        "outs:\n- md5: a304afb96060aad90176268345e10355\n  size: 37891850\n  hash: md5\n  path: data.xml\n",
    );
    for s in ["prepare", "featurization", "train", "evaluate"] {
        w(&format!("project/src/{s}.py"), "print('hi')\n");
    }
    // DIR given: the project is elsewhere.
    let r = pipe_in(dir.path(), &["import", "dvc", "project"]);
    r.ok().err_has("project/Pipeline.toml");
    for said in ["plots", "artifacts", "dvc pull"] {
        assert!(r.stderr.contains(said), "stderr lacks {said:?}\n{r}");
    }
    let p: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.path().join("project/Pipeline.toml")).unwrap())
            .unwrap();
    let names: Vec<&String> = p["stages"].as_table().unwrap().keys().collect();
    assert_eq!(
        names,
        [
            "dvc_pull_data_data_xml",
            "prepare",
            "featurize",
            "train",
            "evaluate"
        ]
    );
    assert_eq!(
        p["stages"]["dvc_pull_data_data_xml"]["outs"],
        toml::Value::from(vec!["data/data.xml"])
    );
    assert_eq!(p["params"]["train"]["n_est"].as_integer(), Some(50));
    let ev = &p["stages"]["evaluate"];
    assert_eq!(ev["metrics"], toml::Value::from(vec!["eval/metrics.json"]));
    assert_eq!(
        ev["outs"],
        toml::Value::from(vec![
            "eval/importance.png",
            "eval/metrics.json",
            "eval/plots/prc.json"
        ])
    );
    assert!(
        ev.get("cache").is_none(),
        "only metrics/plots are uncached: {ev}"
    );
    pipe_in(&dir.path().join("project"), &["validate"]).ok();
    let dag = pipe_in(&dir.path().join("project"), &["dag", "--json"]).json();
    assert!(
        dag["edges"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"from": "train", "to": "evaluate"})),
        "{dag}"
    );
}

// ---- 7. publishing: rust-version ----

/// `rust-version` in Cargo.toml is at least what every dependency declares (so CI, which
/// runs this, catches a dependency bump that raises the MSRV) and at least 1.88 (the
/// edition-2024 let-chains pipe uses).
#[test]
fn rust_version_covers_every_dependency() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parse = |v: &str| -> (u64, u64) {
        let mut it = v.split('.').map(|x| x.parse::<u64>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    };
    let packages: std::collections::HashMap<&str, &serde_json::Value> = m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let root = m["resolve"]["root"].as_str().unwrap();
    let ours = parse(
        packages[root]["rust_version"]
            .as_str()
            .expect("rust-version is set"),
    );
    assert!(
        ours >= (1, 88),
        "let-chains need 1.88, rust-version says {ours:?}"
    );
    let nodes: std::collections::HashMap<&str, &serde_json::Value> = m["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root];
    let mut too_new = Vec::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        if let Some(v) = packages[id]["rust_version"].as_str()
            && parse(v) > ours
        {
            too_new.push(format!("{} needs {v}", packages[id]["name"]));
        }
        for d in nodes[id]["deps"].as_array().unwrap() {
            let normal = d["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if normal {
                stack.push(d["pkg"].as_str().unwrap());
            }
        }
    }
    assert!(
        too_new.is_empty(),
        "raise rust-version in Cargo.toml: {too_new:?}"
    );
}

// ---- terminal manners of what main.rs and clap print ----

/// Run pipe under a pseudo-terminal (`script`), returning everything it wrote.
fn under_pty(ws: &Ws, args: &str, env: &[(&str, &str)]) -> Option<String> {
    let has_script = Command::new("script").arg("--version").output().is_ok();
    if !has_script {
        eprintln!("SKIPPING: no `script` to make a pseudo-terminal");
        return None;
    }
    let mut c = Command::new("script");
    c.args(["-qec", &format!("{} {args}", bin().display()), "/dev/null"])
        .current_dir(ws.root())
        .env_remove("NO_COLOR")
        .env_remove("CI")
        .env("TERM", "xterm-256color");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn no_escape_codes_with_any_no_colour_setting() {
    let ws = Ws::new("[stages.a]\ncmdd = \"x\"\n");
    for args in ["--help", "build --help", "bogus", "validate"] {
        // Colour on a terminal with nothing said, so the check below can fail.
        if args == "--help" {
            let coloured = under_pty(&ws, "--color always --help", &[]);
            if let Some(out) = coloured {
                assert!(
                    out.contains('\x1b'),
                    "expected colour with --color always: {out:?}"
                );
            }
        }
        for env in [
            vec![("NO_COLOR", "1")],
            vec![("TERM", "dumb")],
            vec![("CI", "true")],
        ] {
            let Some(out) = under_pty(&ws, args, &env) else {
                return;
            };
            assert!(
                !out.contains('\x1b'),
                "pipe {args} with {env:?} wrote escape codes: {out:?}"
            );
        }
        if let Some(out) = under_pty(&ws, &format!("--color never {args}"), &[]) {
            assert!(!out.contains('\x1b'), "pipe --color never {args}: {out:?}");
        }
    }
}

#[test]
fn no_progress_bars_or_colour_in_a_build_with_any_plain_setting() {
    let pipeline = "[stages.a]\ncmd = \"sleep 0.5; echo a\"\nalways = true\n";
    let ws = Ws::new(pipeline);
    // On a terminal with nothing said, the bars draw (escape codes), so the check can fail.
    let Some(fancy) = under_pty(&ws, "build", &[]) else {
        return;
    };
    assert!(
        fancy.contains('\x1b'),
        "expected bars on a terminal: {fancy:?}"
    );
    for env in [
        vec![("NO_COLOR", "1")],
        vec![("TERM", "dumb")],
        vec![("CI", "true")],
    ] {
        let out = under_pty(&ws, "build", &env).unwrap();
        assert!(
            !out.contains('\x1b'),
            "build with {env:?} wrote escape codes: {out:?}"
        );
        assert!(out.contains("Finished"), "{out:?}");
    }
    let out = under_pty(&ws, "--color never build", &[]).unwrap();
    assert!(!out.contains('\x1b'), "--color never: {out:?}");
}
