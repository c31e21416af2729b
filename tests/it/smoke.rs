use crate::harness::Test;

#[test]
fn builds_then_nothing_runs_on_a_noop_rebuild() {
    let done = Test::new()
        .pipeline(
            r#"
[stages.a]
cmd = "echo run >> runs_a.txt && cp in.txt a.txt"
deps = ["in.txt"]
outs = ["a.txt"]
"#,
        )
        .file("in.txt", "hello\n")
        .args(["build"])
        .run();
    assert_eq!(done.ws.count("runs_a.txt"), 1);
    done.again().ok();
    assert_eq!(done.ws.count("runs_a.txt"), 1);
    done.ws.pipe(&["status"]).ok().out_has("up to date");
}
