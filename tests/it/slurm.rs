//! Stages on a real one-node Slurm (started by tests/servers/slurm.sh): success with its log
//! and job id, a failing job, a time limit that Slurm enforces, Ctrl-C cancelling the job.
use crate::harness::{Run, Server, Ws, finish, signal, start, wait_for};
use std::process::Command;
use std::time::Duration;

fn pipeline(partition: &str, body: &str) -> String {
    format!(
        r#"
[executor]
kind = "slurm"
[executor.slurm]
partition = "{partition}"
poll_interval = 0.1

{body}
"#
    )
}

fn squeue(s: &Server, job: &str) -> String {
    let out = Command::new("squeue")
        .args(["-h", "-j", job, "-o", "%T"])
        .envs(s.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn scontrol(s: &Server, job: &str) -> String {
    let out = Command::new("scontrol")
        .args(["show", "job", job])
        .envs(s.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn stages_run_on_slurm() {
    let Some(slurm) = Server::start("slurm") else {
        return;
    };
    let part = slurm.var("PIPE_TEST_SLURM_PARTITION");

    // A time limit holds at the stated time: pipe cancels the job itself (Slurm alone would
    // take 60-90 s). Started first, in the background.
    let slow = Ws::new(&pipeline(
        &part,
        "[stages.slow]\ncmd = \"sleep 300\"\nouts = [\"never.txt\"]\ntimeout = \"1s\"\n",
    ));
    let mut slow_cmd = slow.cmd(&["build"]);
    slow_cmd.envs(slurm.env.iter().map(|(k, v)| (k, v)));
    let slow_child = start(slow_cmd);

    // Success: outs, log and exit code come back; the manifest has the job id.
    let ws = Ws::new(&pipeline(
        &part,
        r#"
[stages.prep]
cmd = "echo local > prep.txt"
outs = ["prep.txt"]
executor = "local"

[stages.train]
cmd = ["echo training on $(hostname) with $PIPE_PARAM_LR", "cp prep.txt model.bin && echo trained >> model.bin"]
deps = ["prep.txt"]
outs = ["model.bin"]
params = ["lr"]
resources = { cpus = 1 }

[params]
lr = 0.5
"#,
    ));
    let t0 = std::time::Instant::now();
    slurm.pipe(&ws, &["build"]).ok();
    eprintln!("slurm stage build took {:?}", t0.elapsed());
    assert_eq!(ws.read("model.bin"), "local\ntrained\n");
    let m = ws.last_manifest();
    let job = m["stages"]["train"]["job_id"]
        .as_str()
        .expect("job id in manifest")
        .to_string();
    assert_eq!(m["stages"]["train"]["exit_code"], serde_json::json!(0));
    let log = std::fs::read_to_string(ws.last_run_dir().join("logs/train.log")).unwrap();
    assert!(
        log.contains("training on") && log.contains("with 0.5"),
        "{log}"
    );
    assert!(log.contains(&format!("submitted Slurm job {job}")), "{log}");
    // No-op: nothing is submitted again.
    slurm.pipe(&ws, &["build"]).ok().err_has("0 ran");

    // A failing job fails the stage with its exit code; the lock gets no entry.
    let bad = Ws::new(&pipeline(
        &part,
        "[stages.bad]\ncmd = \"echo oops; exit 3\"\nouts = [\"x.txt\"]\n",
    ));
    let r = slurm.pipe(&bad, &["build"]);
    r.code(1).err_has("exit code 3").err_has("oops");
    assert_eq!(
        bad.last_manifest()["stages"]["bad"]["exit_code"],
        serde_json::json!(3)
    );
    assert!(!bad.exists("Pipeline.lock") || !bad.read("Pipeline.lock").contains("[stages.bad]"));

    // Ctrl-C cancels the submitted job: nothing is left in squeue.
    let int = Ws::new(&pipeline(
        &part,
        "[stages.long]\ncmd = \"sleep 120\"\nouts = [\"y.txt\"]\n",
    ));
    let mut c = int.cmd(&["build"]);
    c.envs(slurm.env.iter().map(|(k, v)| (k, v)));
    let child = start(c);
    let mut job = String::new();
    wait_for("the job to be RUNNING", Duration::from_secs(60), || {
        let marker = int.path(".pipe/runs");
        let log = std::fs::read_dir(&marker)
            .ok()
            .and_then(|mut rd| rd.next())
            .and_then(|e| std::fs::read_to_string(e.unwrap().path().join("logs/long.log")).ok());
        let id = log.and_then(|l| {
            l.lines().find_map(|x| {
                x.strip_prefix("[pipe] submitted Slurm job ")
                    .map(str::to_string)
            })
        });
        match id {
            Some(id) if squeue(&slurm, &id) == "RUNNING" => {
                job = id;
                true
            }
            _ => false,
        }
    });
    signal(&child, libc::SIGINT);
    finish(child, Duration::from_secs(60)).code(130);
    wait_for(
        "the job to leave the queue",
        Duration::from_secs(30),
        || {
            let st = squeue(&slurm, &job);
            st.is_empty() || st == "CANCELLED"
        },
    );
    assert!(
        scontrol(&slurm, &job).contains("JobState=CANCELLED"),
        "{}",
        scontrol(&slurm, &job)
    );

    // The time limit: pipe cancels the job at 1 s itself (Slurm alone checks only every
    // 30 s) and reports it as timed out.
    let run = finish(slow_child, Duration::from_secs(300));
    run.code(1)
        .err_has("timed out after 1s")
        .err_has("cancelled");
    let m = slow.last_manifest();
    assert!(
        m["stages"]["slow"]["duration_s"].as_f64().unwrap() < 60.0,
        "cancelled at the stated time, not at Slurm's next check: {m:#}"
    );
}

#[test]
fn missing_or_rejecting_sbatch_is_a_clear_error_naming_the_stage() {
    let ws = Ws::new(
        "[stages.train]\ncmd = \"echo hi > m.txt\"\nouts = [\"m.txt\"]\nexecutor = \"slurm\"\n",
    );
    // No sbatch anywhere on PATH.
    let empty = tempfile::tempdir().unwrap();
    let r: Run = ws
        .cmd(&["build"])
        .env("PATH", empty.path())
        .output()
        .unwrap()
        .into();
    r.code(1).err_has("train: cannot run `sbatch`");

    // An sbatch that refuses the job.
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("sbatch");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpu' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let r: Run = ws
        .cmd(&["build"])
        .env("PATH", path)
        .output()
        .unwrap()
        .into();
    r.code(1)
        .err_has("train: Slurm rejected the job")
        .err_has("invalid partition");
    assert!(!ws.exists("m.txt"));
}
