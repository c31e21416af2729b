use crate::harness::Ws;

#[test]
fn builds_then_nothing_runs_on_a_noop_rebuild() {
    let ws = Ws::new(
        r#"
[stages.a]
cmd = "echo run >> runs_a.txt && cp in.txt a.txt"
deps = ["in.txt"]
outs = ["a.txt"]
"#,
    );
    ws.write("in.txt", "hello\n");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_a.txt"), 1);
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_a.txt"), 1);
    ws.pipe(&["status"]).ok().out_has("up to date");
}
