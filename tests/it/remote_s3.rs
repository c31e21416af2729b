//! The remote cache against a real S3-compatible server (SeaweedFS on 127.0.0.1, started by
//! tests/servers/s3.sh): push from one clone, pull into another, tampering, bad credentials,
//! a dead server.
use crate::harness::{Run, Server, Ws, finish, start};
use std::time::Duration;

fn pipeline(endpoint: &str, bucket: &str, prefix: &str) -> String {
    format!(
        r#"
[remote]
url = "s3://{bucket}/{prefix}"
endpoint = "{endpoint}"

[stages.prep]
cmd = "echo prep >> ../runs.txt && mkdir -p data && cp in.txt data/a.txt && printf 'x%.0s' $(seq 1 5000) > data/big.txt"
deps = ["in.txt"]
outs = ["data/"]

[stages.model]
cmd = "echo model >> ../runs.txt && cat data/a.txt data/a.txt > model.bin"
deps = ["data/"]
outs = ["model.bin"]
"#
    )
}

/// Run pipe with a hard deadline, so a hang fails the test instead of blocking it.
fn bounded(s: &Server, ws: &Ws, args: &[&str], extra: &[(&str, &str)]) -> Run {
    let mut c = ws.cmd(args);
    c.envs(s.env.iter().map(|(k, v)| (k, v)));
    c.envs(extra.iter().copied());
    finish(start(c), Duration::from_secs(90))
}

fn runs(ws: &Ws) -> usize {
    std::fs::read_to_string(ws.root().parent().unwrap().join("runs.txt"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn s3_remote_cache_end_to_end() {
    let Some(s3) = Server::start("s3") else {
        return;
    };
    let endpoint = s3.var("PIPE_TEST_S3_ENDPOINT");
    let bucket = s3.var("PIPE_TEST_S3_BUCKET");
    // A prefix of our own so reruns and parallel tests never see each other's objects.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("t{}-{nanos}", std::process::id());

    // Workspace A builds and pushes what it built.
    let root_a = tempfile::tempdir().unwrap();
    let a = Ws {
        dir: tempfile::tempdir_in(root_a.path()).unwrap(),
    };
    a.write("Pipeline.toml", &pipeline(&endpoint, &bucket, &prefix));
    a.write("in.txt", "v1\n");
    bounded(&s3, &a, &["build", "--push"], &[]).ok();
    assert_eq!(runs(&a), 2);
    bounded(&s3, &a, &["push"], &[])
        .ok()
        .err_has("already there");

    // Clone B (own cache) pulls instead of running: no command, identical bytes.
    let root_b = tempfile::tempdir().unwrap();
    let b = Ws {
        dir: tempfile::tempdir_in(root_b.path()).unwrap(),
    };
    b.write("Pipeline.toml", &a.read("Pipeline.toml"));
    b.write("in.txt", "v1\n");
    b.write("Pipeline.lock", &a.read("Pipeline.lock"));
    bounded(&s3, &b, &["build", "--pull"], &[])
        .ok()
        .err_has("2 restored");
    assert_eq!(runs(&b), 0, "clone B ran a command");
    assert_eq!(
        std::fs::read(b.path("model.bin")).unwrap(),
        std::fs::read(a.path("model.bin")).unwrap()
    );
    assert_eq!(b.read("data/big.txt"), a.read("data/big.txt"));

    // `pipe pull` alone fills the cache; a later plain build restores.
    let root_c = tempfile::tempdir().unwrap();
    let c = Ws {
        dir: tempfile::tempdir_in(root_c.path()).unwrap(),
    };
    for f in ["Pipeline.toml", "in.txt", "Pipeline.lock"] {
        c.write(f, &a.read(f));
    }
    bounded(&s3, &c, &["pull"], &[]).ok().err_has("Pulled");
    c.pipe(&["build"]).ok().err_has("2 restored");
    assert_eq!(runs(&c), 0);

    // A wrong secret key is a clear error, not a hang; the local build still works. (moto,
    // the fallback server, checks no signatures: a missing key stands in for a wrong one.)
    let checked = s3.var("PIPE_TEST_S3_SIGNATURES_CHECKED") == "1";
    let bad_key = if checked { "wrong-secret" } else { "" };
    if checked {
        bounded(&s3, &c, &["push"], &[("AWS_SECRET_ACCESS_KEY", bad_key)])
            .code(1)
            .err_has("access denied");
    } else {
        eprintln!("NOTE: the S3 server checks no signatures; not testing a wrong key");
    }
    bounded(&s3, &c, &["push"], &[("AWS_SECRET_ACCESS_KEY", "")])
        .code(1)
        .err_has("no S3 credentials: set AWS_SECRET_ACCESS_KEY (");
    let root_d = tempfile::tempdir().unwrap();
    let d = Ws {
        dir: tempfile::tempdir_in(root_d.path()).unwrap(),
    };
    for f in ["Pipeline.toml", "in.txt", "Pipeline.lock"] {
        d.write(f, &a.read(f));
    }
    let r = bounded(
        &s3,
        &d,
        &["build", "--pull"],
        &[("AWS_SECRET_ACCESS_KEY", bad_key)],
    );
    r.ok().err_has("cannot fetch from the remote cache");
    assert_eq!(runs(&d), 2, "the local build must still run");

    // A tampered remote object is refused: the stage runs instead, with correct bytes.
    let lock = a.read("Pipeline.lock");
    let model_hash = lock.split("\"model.bin\" = { hash = \"").nth(1).unwrap()[..64].to_string();
    tamper(
        &s3,
        &bucket,
        &format!("{prefix}/objects/{}/{}", &model_hash[..2], &model_hash[2..]),
    );
    let root_e = tempfile::tempdir().unwrap();
    let e = Ws {
        dir: tempfile::tempdir_in(root_e.path()).unwrap(),
    };
    for f in ["Pipeline.toml", "in.txt", "Pipeline.lock"] {
        e.write(f, &a.read(f));
    }
    let r = bounded(&s3, &e, &["build", "--pull"], &[]);
    r.ok().err_has("does not match its hash");
    assert_eq!(
        runs(&e),
        1,
        "model must run after its remote object was refused"
    );
    assert_eq!(
        std::fs::read(e.path("model.bin")).unwrap(),
        std::fs::read(a.path("model.bin")).unwrap()
    );

    // The server stopped: a clear error, not a hang.
    let _ = std::process::Command::new("bash")
        .arg(&s3.script)
        .arg("stop")
        .arg(s3.dir.path())
        .status();
    let r = bounded(&s3, &a, &["push"], &[]);
    r.code(1).err_has("remote cache s3://");
    let r = bounded(&s3, &e, &["build", "--pull", "--force"], &[]);
    r.ok();
}

/// Requests to the bucket behind pipe's back, signed with rusty-s3 and sent with ureq like
/// pipe's own.
struct Bucket {
    bucket: rusty_s3::Bucket,
    creds: rusty_s3::Credentials,
}

impl Bucket {
    fn new(s3: &Server, bucket: &str) -> Bucket {
        Bucket {
            bucket: rusty_s3::Bucket::new(
                s3.var("PIPE_TEST_S3_ENDPOINT").parse().unwrap(),
                rusty_s3::UrlStyle::Path,
                bucket.to_string(),
                "us-east-1",
            )
            .unwrap(),
            creds: rusty_s3::Credentials::new(
                s3.var("AWS_ACCESS_KEY_ID"),
                s3.var("AWS_SECRET_ACCESS_KEY"),
            ),
        }
    }

    /// A plain, unconditional PUT.
    fn put(&self, key: &str, body: &[u8]) {
        use rusty_s3::S3Action;
        let url = self
            .bucket
            .put_object(Some(&self.creds), key)
            .sign(Duration::from_secs(600));
        let r = ureq::put(url.as_str()).send(body).unwrap();
        assert!(r.status().is_success(), "PUT {key}: {}", r.status());
    }

    /// The object's ETag and size.
    fn head(&self, key: &str) -> (String, u64) {
        use rusty_s3::S3Action;
        let url = self
            .bucket
            .head_object(Some(&self.creds), key)
            .sign(Duration::from_secs(600));
        let r = ureq::head(url.as_str()).call().unwrap();
        let h = |n: &str| r.headers()[n].to_str().unwrap().to_string();
        (h("etag"), h("content-length").parse().unwrap())
    }
}

/// Overwrite an object in the bucket behind pipe's back (a plain, unconditional PUT).
fn tamper(s3: &Server, bucket: &str, key: &str) {
    Bucket::new(s3, bucket).put(key, b"evil bytes");
}

fn unique_prefix(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}{}-{nanos}", std::process::id())
}

/// An object over 64 MiB goes up in parts (looked up first, so a second push skips it) and
/// comes back whole into a clone.
#[test]
fn s3_a_big_object_goes_up_in_parts_and_comes_back_whole() {
    let Some(s3) = Server::start("s3") else {
        return;
    };
    let bucket = s3.var("PIPE_TEST_S3_BUCKET");
    let prefix = unique_prefix("big");
    let size: u64 = (70 << 20) + 12345;
    let text = format!(
        r#"
[remote]
url = "s3://{bucket}/{prefix}"
endpoint = "{}"

[stages.big]
cmd = "head -c {size} /dev/urandom > big.bin"
outs = ["big.bin"]
"#,
        s3.var("PIPE_TEST_S3_ENDPOINT")
    );
    let a = Ws::new(&text);
    a.pipe(&["build"]).ok();
    let pushed = bounded(&s3, &a, &["push", "--json"], &[]).ok().json();
    assert_eq!(pushed["transferred"], 2, "{pushed}"); // the object and the run entry
    assert!(pushed["bytes"].as_u64().unwrap() > size, "{pushed}");
    let lock = a.read("Pipeline.lock");
    let hash = &lock.split("hash = \"").nth(1).unwrap()[..64];
    let (etag, len) =
        Bucket::new(&s3, &bucket).head(&format!("{prefix}/objects/{}/{}", &hash[..2], &hash[2..]));
    assert_eq!(len, size);
    // A multipart object's ETag ends with its number of parts: 9 parts of 8 MiB.
    assert!(
        etag.trim_matches('"').ends_with("-9"),
        "not multipart: {etag}"
    );
    let again = bounded(&s3, &a, &["push", "--json"], &[]).ok().json();
    assert_eq!(again["transferred"], 0, "{again}");
    assert_eq!(again["skipped"], 2, "{again}");

    let b = Ws::new(&text);
    b.write("Pipeline.lock", &lock);
    let pulled = bounded(&s3, &b, &["pull", "--json"], &[]).ok().json();
    assert_eq!(pulled["transferred"], 1, "{pulled}");
    b.pipe(&["build"]).ok().err_has("1 restored");
    assert!(
        std::fs::read(b.path("big.bin")).unwrap() == std::fs::read(a.path("big.bin")).unwrap(),
        "the pulled object differs"
    );
}

/// `pull --all` lists every run entry, past the 1,000 keys of one ListObjectsV2 page.
#[test]
fn s3_pull_all_lists_more_than_1000_run_entries() {
    let Some(s3) = Server::start("s3") else {
        return;
    };
    let bucket = s3.var("PIPE_TEST_S3_BUCKET");
    let prefix = unique_prefix("list");
    let n = 1001;
    let client = Bucket::new(&s3, &bucket);
    std::thread::scope(|sc| {
        for t in 0..8 {
            let (client, prefix) = (&client, &prefix);
            sc.spawn(move || {
                for i in (t..n).step_by(8) {
                    let fp = blake3::hash(format!("entry {i}").as_bytes()).to_hex();
                    let entry = serde_json::json!({
                        "version": 1, "stage": "s", "fingerprint": fp.as_str(),
                        "created_at": "2026-01-01T00:00:00Z", "outs": {}
                    });
                    client.put(
                        &format!("{prefix}/runs/{fp}.json"),
                        entry.to_string().as_bytes(),
                    );
                }
            });
        }
    });
    let ws = Ws::new(&format!(
        "[remote]\nurl = \"s3://{bucket}/{prefix}\"\nendpoint = \"{}\"\n\n[stages.s]\ncmd = \"true\"\n",
        s3.var("PIPE_TEST_S3_ENDPOINT")
    ));
    // SeaweedFS, like S3, answers 1,000 keys a page: this takes two.
    let pulled = bounded(&s3, &ws, &["pull", "--all", "--json"], &[])
        .ok()
        .json();
    assert_eq!(pulled["transferred"], n, "{pulled}");
    assert_eq!(pulled["missing"], 0, "{pulled}");
}
