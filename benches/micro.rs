//! Micro-benchmarks of the hot paths, so a regression shows up in review:
//! hashing (one big file, a folder cold and through the stat cache), planning a generated
//! 1,000-stage pipeline, and `Pipeline.lock` render / parse.
//!
//! `cargo bench --bench micro` (the whole-tool comparison is `benches/run.sh`).

use criterion::{Criterion, criterion_group, criterion_main};
use pipe::cache::Cache;
use pipe::graph::{LoadOptions, Pipeline};
use pipe::hash::Hasher;
use pipe::lockfile::LockFile;
use pipe::state::StatCache;
use std::collections::BTreeSet;
use std::hint::black_box;
use std::path::Path;

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// A workspace with a 1,000-stage pipeline (chains of 10 over 100 input files) and a
/// 2,000-file data folder.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut toml = String::new();
    for c in 0..100 {
        write(
            root,
            &format!("in/{c}.txt"),
            format!("input {c}\n").as_bytes(),
        );
        for k in 0..10 {
            let dep = if k == 0 {
                format!("in/{c}.txt")
            } else {
                format!("out/{c}-{}.txt", k - 1)
            };
            toml.push_str(&format!(
                "[stages.s{c}_{k}]\ncmd = \"cp {dep} out/{c}-{k}.txt\"\ndeps = [\"{dep}\"]\nouts = [\"out/{c}-{k}.txt\"]\n\n"
            ));
        }
    }
    write(root, "Pipeline.toml", toml.as_bytes());
    for i in 0..2000 {
        write(
            root,
            &format!("data/d{}/f{i}.bin", i % 20),
            &vec![(i % 251) as u8; 1024],
        );
    }
    write(root, "big.bin", &vec![7u8; 64 << 20]);
    dir
}

fn benches(c: &mut Criterion) {
    let ws = workspace();
    let root = ws.path().canonicalize().unwrap();

    c.bench_function("hash 64 MiB file", |b| {
        b.iter(|| pipe::hash::hash_file_contents(&root.join("big.bin"), 64 << 20).unwrap())
    });
    c.bench_function("hash 2,000-file folder, cold", |b| {
        b.iter(|| {
            let stat = StatCache::default();
            black_box(Hasher::new(&root, &stat).path("data").unwrap())
        })
    });
    let warm = StatCache::default();
    Hasher::new(&root, &warm).path("data").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200)); // past the racy-mtime window
    let warm = StatCache::default();
    Hasher::new(&root, &warm).path("data").unwrap();
    c.bench_function("hash 2,000-file folder, stat cache warm", |b| {
        b.iter(|| black_box(Hasher::new(&root, &warm).path("data").unwrap()))
    });

    let file = root.join("Pipeline.toml");
    c.bench_function("load + validate 1,000 stages", |b| {
        b.iter(|| {
            black_box(
                Pipeline::load(&file, "Pipeline.toml".into(), &LoadOptions::default()).unwrap(),
            )
        })
    });
    let p = Pipeline::load(&file, "Pipeline.toml".into(), &LoadOptions::default()).unwrap();
    let all: BTreeSet<usize> = (0..p.stages.len()).collect();
    let cache = Cache::new(&p.layout.cache);
    let stat = StatCache::default();
    let planner = pipe::plan::Planner {
        hasher: Hasher::new(&p.root, &stat),
        cache: &cache,
        use_cache: true,
        remote: None,
    };
    let mut lock = LockFile::default();
    for &i in &p.order {
        let inputs = pipe::plan::inputs(&p.stages[i], &planner.hasher).unwrap();
        lock.stages.insert(p.stages[i].name.clone(), inputs.entry);
    }
    c.bench_function("plan 1,000 stages (status)", |b| {
        b.iter(|| {
            black_box(
                pipe::plan::Upfront {
                    lock: &lock,
                    planner: &planner,
                    forced: &BTreeSet::new(),
                    incomplete: &BTreeSet::new(),
                    releases: &pipe::plan::NoReleases,
                }
                .all(&p, &all)
                .unwrap(),
            )
        })
    });
    let text = lock.render();
    c.bench_function("lock render, 1,000 entries", |b| {
        b.iter(|| black_box(lock.render()))
    });
    c.bench_function("lock parse, 1,000 entries", |b| {
        b.iter(|| black_box(LockFile::parse(&text).unwrap()))
    });
}

criterion_group! {
    name = micro;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = benches
}
criterion_main!(micro);
