//! Fingerprints and verdicts: for each stage, what it would run with now, compared with
//! what `Pipeline.lock` says it last ran with. Every difference becomes a [`Reason`].

use crate::cache::{Cache, RunEntry};
use crate::graph::Stage;
use crate::hash::{Hasher, PathHash};
use crate::lockfile::LockEntry;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Why a stage is stale. Displayed exactly as SPEC words them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    NeverRun,
    CommandChanged,
    WdirChanged,
    DepChanged(String),
    DepAdded(String),
    DepRemoved(String),
    ParamChanged {
        key: String,
        old: String,
        new: String,
    },
    EnvChanged(String),
    OutsChanged,
    OutMissing(String),
    OutModified(String),
    UpstreamStale(String),
    Always,
    Forced,
    Incomplete,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NeverRun => write!(f, "never run"),
            Reason::CommandChanged => write!(f, "command changed"),
            Reason::WdirChanged => write!(f, "command changed (wdir)"),
            Reason::DepChanged(p) => write!(f, "dep changed: {p}"),
            Reason::DepAdded(p) => write!(f, "dep added: {p}"),
            Reason::DepRemoved(p) => write!(f, "dep removed: {p}"),
            Reason::ParamChanged { key, old, new } => {
                write!(f, "param changed: {key} ({old} -> {new})")
            }
            Reason::EnvChanged(n) => write!(f, "env changed: {n}"),
            Reason::OutsChanged => write!(f, "outs changed"),
            Reason::OutMissing(p) => write!(f, "out missing: {p}"),
            Reason::OutModified(p) => write!(f, "out modified: {p}"),
            Reason::UpstreamStale(s) => write!(f, "upstream stale: {s}"),
            Reason::Always => write!(f, "always"),
            Reason::Forced => write!(f, "forced"),
            Reason::Incomplete => write!(f, "incomplete: the last run was interrupted"),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone)]
pub enum Verdict {
    UpToDate,
    Frozen,
    /// Stale; `restore` holds the run-cache entry when the outs can come from the cache.
    Stale {
        reasons: Vec<Reason>,
        restore: Option<RunEntry>,
    },
}

impl Verdict {
    pub fn is_up_to_date(&self) -> bool {
        matches!(self, Verdict::UpToDate | Verdict::Frozen)
    }
    pub fn reasons(&self) -> &[Reason] {
        match self {
            Verdict::Stale { reasons, .. } => reasons,
            _ => &[],
        }
    }
}

/// What a stage would run with now: the lock entry it would write (outs filled in after
/// the run) and its fingerprint.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub entry: LockEntry,
    pub deps: BTreeMap<String, PathHash>,
}

#[derive(Serialize)]
struct FingerprintKey<'a> {
    v: u32,
    cmd: &'a [String],
    wdir: &'a Option<String>,
    env: &'a BTreeMap<String, String>,
    outs: Vec<(&'a str, bool)>,
    params: &'a BTreeMap<String, toml::Value>,
    deps: &'a BTreeMap<String, String>,
}

/// Hash a stage's deps and compute its fingerprint.
pub fn inputs(stage: &Stage, hasher: &Hasher) -> Result<Inputs> {
    let mut deps = BTreeMap::new();
    for d in &stage.deps {
        deps.insert(d.path.clone(), hasher.dep(d)?);
    }
    let dep_text: BTreeMap<String, String> =
        deps.iter().map(|(k, v)| (k.clone(), v.text())).collect();
    let key = FingerprintKey {
        v: 1,
        cmd: &stage.cmds,
        wdir: &stage.wdir,
        env: &stage.env,
        outs: stage
            .outs
            .iter()
            .map(|o| (o.path.as_str(), o.dir_hint))
            .collect(),
        params: &stage.params,
        deps: &dep_text,
    };
    let fingerprint = blake3::hash(&serde_json::to_vec(&key)?)
        .to_hex()
        .to_string();
    let entry = LockEntry {
        fingerprint,
        cmd: stage.cmd_template.clone(),
        wdir: stage.wdir.clone(),
        params: stage.params.clone(),
        env: stage
            .env
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    blake3::hash(v.as_bytes()).to_hex()[..16].to_string(),
                )
            })
            .collect(),
        deps: dep_text,
        outs: BTreeMap::new(),
    };
    Ok(Inputs { entry, deps })
}

/// Options that change verdicts.
#[derive(Debug, Clone, Copy, Default)]
pub struct JudgeOpts {
    pub forced: bool,
    pub incomplete: bool,
    pub use_cache: bool,
}

/// Judge one stage against its lock entry. Upstream staleness is the caller's business.
pub fn judge(
    stage: &Stage,
    inputs: &Inputs,
    last: Option<&LockEntry>,
    hasher: &Hasher,
    cache: &Cache,
    opts: JudgeOpts,
) -> Result<Verdict> {
    if stage.frozen {
        return Ok(Verdict::Frozen);
    }
    let now = &inputs.entry;
    let mut reasons = Vec::new();
    if opts.forced {
        reasons.push(Reason::Forced);
    }
    if stage.runs_every_time() {
        reasons.push(Reason::Always);
    }
    if opts.incomplete {
        reasons.push(Reason::Incomplete);
    }
    match last {
        None => reasons.push(Reason::NeverRun),
        Some(last) => {
            if last.cmd != now.cmd {
                reasons.push(Reason::CommandChanged);
            }
            if last.wdir != now.wdir {
                reasons.push(Reason::WdirChanged);
            }
            for name in union(&last.env, &now.env) {
                if last.env.get(name) != now.env.get(name) {
                    reasons.push(Reason::EnvChanged(name.clone()));
                }
            }
            for key in union(&last.params, &now.params) {
                let (old, new) = (last.params.get(key), now.params.get(key));
                if !crate::params::same(old, new) {
                    let show = |v: Option<&toml::Value>| {
                        v.map_or_else(|| "unset".to_string(), |v| v.to_string())
                    };
                    reasons.push(Reason::ParamChanged {
                        key: key.clone(),
                        old: show(old),
                        new: show(new),
                    });
                }
            }
            for path in union(&last.deps, &now.deps) {
                match (last.deps.get(path), now.deps.get(path)) {
                    (None, Some(_)) => reasons.push(Reason::DepAdded(path.clone())),
                    (Some(_), None) => reasons.push(Reason::DepRemoved(path.clone())),
                    (Some(a), Some(b)) if a != b => reasons.push(Reason::DepChanged(path.clone())),
                    _ => {}
                }
            }
            let declared: Vec<&String> = stage.outs.iter().map(|o| &o.path).collect();
            let recorded: Vec<&String> = last.outs.keys().collect();
            let mut sorted = declared.clone();
            sorted.sort();
            if sorted != recorded {
                reasons.push(Reason::OutsChanged);
            }
            for o in &stage.outs {
                let Some(rec) = last.outs.get(&o.path) else {
                    continue;
                };
                match hasher.path(&o.path)? {
                    PathHash::Missing => reasons.push(Reason::OutMissing(o.path.clone())),
                    h if h.text() != rec.hash => reasons.push(Reason::OutModified(o.path.clone())),
                    _ => {}
                }
            }
            if reasons.is_empty() && last.fingerprint != now.fingerprint {
                // Same visible inputs, different fingerprint (e.g. an out now declared as a folder).
                reasons.push(Reason::OutsChanged);
            }
        }
    }
    if reasons.is_empty() {
        return Ok(Verdict::UpToDate);
    }
    let restore = if opts.use_cache && !opts.forced && stage.cacheable() {
        cache.get_run(&now.fingerprint).filter(|e| cache.has_all(e))
    } else {
        None
    };
    Ok(Verdict::Stale { reasons, restore })
}

fn union<'a, V>(a: &'a BTreeMap<String, V>, b: &'a BTreeMap<String, V>) -> Vec<&'a String> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// One stage's place in a static plan (`pipe status`, `pipe build --dry-run`).
#[derive(Debug, Clone)]
pub struct Planned {
    pub stage: usize,
    pub inputs: Option<Inputs>,
    pub verdict: Verdict,
}

/// Judge every selected stage in topological order; a stage downstream of one that is not
/// up to date also gets `upstream stale` (it may run: the build re-checks it).
#[allow(clippy::too_many_arguments)]
pub fn plan_all(
    p: &crate::graph::Pipeline,
    selected: &std::collections::BTreeSet<usize>,
    lock: &crate::lockfile::LockFile,
    hasher: &Hasher,
    cache: &Cache,
    forced: &std::collections::BTreeSet<usize>,
    incomplete: &std::collections::BTreeSet<String>,
    use_cache: bool,
) -> Result<Vec<Planned>> {
    let mut out: Vec<Planned> = Vec::new();
    let mut pos = std::collections::HashMap::new();
    for &i in &p.order {
        if !selected.contains(&i) {
            continue;
        }
        let stage = &p.stages[i];
        let inputs = if stage.frozen {
            None
        } else {
            Some(inputs(stage, hasher)?)
        };
        let opts = JudgeOpts {
            forced: forced.contains(&i),
            incomplete: incomplete.contains(&stage.name),
            use_cache,
        };
        let mut verdict = match &inputs {
            Some(inp) => judge(
                stage,
                inp,
                lock.stages.get(&stage.name),
                hasher,
                cache,
                opts,
            )?,
            None => Verdict::Frozen,
        };
        let stale_up: Vec<Reason> = stage
            .upstream
            .iter()
            .filter_map(|u| pos.get(u).map(|&k: &usize| &out[k]))
            .filter(|u: &&Planned| !u.verdict.is_up_to_date())
            .map(|u| Reason::UpstreamStale(p.stages[u.stage].name.clone()))
            .collect();
        if !stale_up.is_empty() && !stage.frozen {
            verdict = match verdict {
                Verdict::Stale {
                    mut reasons,
                    restore,
                } => {
                    reasons.extend(stale_up);
                    Verdict::Stale { reasons, restore }
                }
                _ => Verdict::Stale {
                    reasons: stale_up,
                    restore: None,
                },
            };
        }
        pos.insert(i, out.len());
        out.push(Planned {
            stage: i,
            inputs,
            verdict,
        });
    }
    Ok(out)
}
