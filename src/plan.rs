//! Fingerprints and verdicts. Two steps: [`observe`] does the I/O (hash deps and outs);
//! [`judge`] is a pure function from what was observed and the lock entry to the list of
//! [`Reason`]s. A [`Planner`] adds the cache lookup (and the remote, with `--pull`) for
//! stale stages, and [`Upfront`] judges a whole selection at once for `status` and
//! `build --dry-run`, so the two can never disagree.

use crate::cache::{Cache, RunEntry};
use crate::graph::{Pipeline, Stage};
use crate::hash::{Hasher, PathHash};
use crate::lockfile::{LockEntry, LockFile};
use crate::stage_state::StageState;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// Why a stage is (or was) not simply up to date. Displayed exactly as SPEC words them;
/// serialised as `{"kind": ..., <fields>, "text": <the sentence>}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    NeverRun,
    CommandChanged,
    WdirChanged,
    DepChanged {
        path: String,
    },
    DepAdded {
        path: String,
    },
    DepRemoved {
        path: String,
    },
    ParamChanged {
        key: String,
        old: Option<toml::Value>,
        new: Option<toml::Value>,
    },
    EnvChanged {
        name: String,
    },
    OutsChanged,
    OutMissing {
        path: String,
    },
    OutModified {
        path: String,
    },
    UpstreamStale {
        stage: String,
    },
    Always,
    Forced,
    Incomplete,
    /// A frozen stage: never runs, its lock entry stands.
    Frozen,
    /// A gate upstream failed (the stage is blocked).
    GateFailed {
        gate: String,
        stage: String,
    },
    UpstreamBlocked {
        stage: String,
    },
    UpstreamFailed {
        stage: String,
    },
    /// The upstream stage was skipped (so this one was not built either).
    UpstreamNotBuilt {
        stage: String,
    },
    /// `--keep-going` was not given and a stage failed.
    BuildStopped,
    BuildInterrupted,
    /// A release stage held back: `pipe rollback` moved away from a release with these
    /// inputs; `run_id` is the current release.
    RolledBack {
        run_id: String,
    },
    /// A reason recorded as text by an older pipe.
    Note {
        text: String,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<toml::Value>| v.as_ref().map_or("unset".into(), |v| v.to_string());
        match self {
            Reason::NeverRun => write!(f, "never run"),
            Reason::CommandChanged => write!(f, "command changed"),
            Reason::WdirChanged => write!(f, "command changed (wdir)"),
            Reason::DepChanged { path } => write!(f, "dep changed: {path}"),
            Reason::DepAdded { path } => write!(f, "dep added: {path}"),
            Reason::DepRemoved { path } => write!(f, "dep removed: {path}"),
            Reason::ParamChanged { key, old, new } => {
                write!(f, "param changed: {key} ({} -> {})", show(old), show(new))
            }
            Reason::EnvChanged { name } => write!(f, "env changed: {name}"),
            Reason::OutsChanged => write!(f, "outs changed"),
            Reason::OutMissing { path } => write!(f, "out missing: {path}"),
            Reason::OutModified { path } => write!(f, "out modified: {path}"),
            Reason::UpstreamStale { stage } => write!(f, "upstream stale: {stage}"),
            Reason::Always => write!(f, "always"),
            Reason::Forced => write!(f, "forced"),
            Reason::Incomplete => write!(f, "incomplete: the last run was interrupted"),
            Reason::Frozen => write!(f, "frozen"),
            Reason::GateFailed { gate, stage } => write!(f, "gate failed: {gate} (stage {stage})"),
            Reason::UpstreamBlocked { stage } => write!(f, "upstream blocked: {stage}"),
            Reason::UpstreamFailed { stage } => write!(f, "upstream failed: {stage}"),
            Reason::UpstreamNotBuilt { stage } => write!(f, "upstream not built: {stage}"),
            Reason::BuildStopped => write!(f, "build stopped after a failure"),
            Reason::BuildInterrupted => write!(f, "build interrupted"),
            Reason::RolledBack { run_id } => write!(
                f,
                "rolled back to release {run_id}; not released again until its inputs change"
            ),
            Reason::Note { text } => f.write_str(text),
        }
    }
}

impl Reason {
    /// The `kind` word and the fields of the JSON object (without `text`).
    fn parts(&self) -> (&'static str, Vec<(&'static str, serde_json::Value)>) {
        use serde_json::Value as V;
        let s = |x: &String| V::String(x.clone());
        let val = |v: &Option<toml::Value>| {
            v.as_ref()
                .and_then(|v| serde_json::to_value(v).ok())
                .unwrap_or(V::Null)
        };
        match self {
            Reason::NeverRun => ("never_run", vec![]),
            Reason::CommandChanged => ("command_changed", vec![]),
            Reason::WdirChanged => ("wdir_changed", vec![]),
            Reason::DepChanged { path } => ("dep_changed", vec![("path", s(path))]),
            Reason::DepAdded { path } => ("dep_added", vec![("path", s(path))]),
            Reason::DepRemoved { path } => ("dep_removed", vec![("path", s(path))]),
            Reason::ParamChanged { key, old, new } => (
                "param_changed",
                vec![("key", s(key)), ("old", val(old)), ("new", val(new))],
            ),
            Reason::EnvChanged { name } => ("env_changed", vec![("name", s(name))]),
            Reason::OutsChanged => ("outs_changed", vec![]),
            Reason::OutMissing { path } => ("out_missing", vec![("path", s(path))]),
            Reason::OutModified { path } => ("out_modified", vec![("path", s(path))]),
            Reason::UpstreamStale { stage } => ("upstream_stale", vec![("stage", s(stage))]),
            Reason::Always => ("always", vec![]),
            Reason::Forced => ("forced", vec![]),
            Reason::Incomplete => ("incomplete", vec![]),
            Reason::Frozen => ("frozen", vec![]),
            Reason::GateFailed { gate, stage } => {
                ("gate_failed", vec![("gate", s(gate)), ("stage", s(stage))])
            }
            Reason::UpstreamBlocked { stage } => ("upstream_blocked", vec![("stage", s(stage))]),
            Reason::UpstreamFailed { stage } => ("upstream_failed", vec![("stage", s(stage))]),
            Reason::UpstreamNotBuilt { stage } => ("upstream_not_built", vec![("stage", s(stage))]),
            Reason::BuildStopped => ("build_stopped", vec![]),
            Reason::BuildInterrupted => ("build_interrupted", vec![]),
            Reason::RolledBack { run_id } => ("rolled_back", vec![("run_id", s(run_id))]),
            Reason::Note { text } => ("note", vec![("text", s(text))]),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (kind, fields) = self.parts();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("kind", kind)?;
        for (k, v) in &fields {
            m.serialize_entry(k, v)?;
        }
        if !matches!(self, Reason::Note { .. }) {
            m.serialize_entry("text", &self.to_string())?;
        }
        m.end()
    }
}

/// Reasons as recorded: objects, or plain sentences from manifests an older pipe wrote.
pub fn deserialize_reasons<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<Reason>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Obj(Reason),
    }
    let v: Vec<Repr> = Vec::deserialize(d)?;
    Ok(v.into_iter()
        .map(|r| match r {
            Repr::Text(text) => Reason::Note { text },
            Repr::Obj(r) => r,
        })
        .collect())
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
    pub fn state(&self) -> StageState {
        match self {
            Verdict::UpToDate => StageState::UpToDate,
            Verdict::Frozen => StageState::Frozen,
            Verdict::Stale {
                restore: Some(_), ..
            } => StageState::Restorable,
            Verdict::Stale { .. } => StageState::Stale,
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

/// What [`observe`] saw on disk for one stage.
#[derive(Debug, Clone)]
pub struct Observed {
    pub inputs: Inputs,
    /// The current hash of each declared out the lock has a record of (`None`: missing).
    pub outs: BTreeMap<String, Option<String>>,
}

/// The I/O half of judging: hash the deps (fingerprint) and the outs the lock knows.
pub fn observe(stage: &Stage, hasher: &Hasher, last: Option<&LockEntry>) -> Result<Observed> {
    let inputs = inputs(stage, hasher)?;
    let mut outs = BTreeMap::new();
    if let Some(last) = last {
        for o in &stage.outs {
            if last.outs.contains_key(&o.path) {
                let h = match hasher.path(&o.path)? {
                    PathHash::Missing => None,
                    h => Some(h.text()),
                };
                outs.insert(o.path.clone(), h);
            }
        }
    }
    Ok(Observed { inputs, outs })
}

/// Options that change verdicts.
#[derive(Debug, Clone, Copy, Default)]
pub struct JudgeOpts {
    pub forced: bool,
    pub incomplete: bool,
}

/// The pure half: every reason the stage is stale (empty: up to date). Upstream staleness
/// is the caller's business.
pub fn judge(
    stage: &Stage,
    seen: &Observed,
    last: Option<&LockEntry>,
    opts: JudgeOpts,
) -> Vec<Reason> {
    let now = &seen.inputs.entry;
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
    let Some(last) = last else {
        reasons.push(Reason::NeverRun);
        return reasons;
    };
    if last.cmd != now.cmd {
        reasons.push(Reason::CommandChanged);
    }
    if last.wdir != now.wdir {
        reasons.push(Reason::WdirChanged);
    }
    for name in union(&last.env, &now.env) {
        if last.env.get(name) != now.env.get(name) {
            reasons.push(Reason::EnvChanged { name: name.clone() });
        }
    }
    for key in union(&last.params, &now.params) {
        let (old, new) = (last.params.get(key), now.params.get(key));
        if !crate::params::same(old, new) {
            reasons.push(Reason::ParamChanged {
                key: key.clone(),
                old: old.cloned(),
                new: new.cloned(),
            });
        }
    }
    for path in union(&last.deps, &now.deps) {
        let path_ = || path.clone();
        match (last.deps.get(path), now.deps.get(path)) {
            (None, Some(_)) => reasons.push(Reason::DepAdded { path: path_() }),
            (Some(_), None) => reasons.push(Reason::DepRemoved { path: path_() }),
            (Some(a), Some(b)) if a != b => reasons.push(Reason::DepChanged { path: path_() }),
            _ => {}
        }
    }
    let mut declared: Vec<&String> = stage.outs.iter().map(|o| &o.path).collect();
    declared.sort();
    if declared != last.outs.keys().collect::<Vec<_>>() {
        reasons.push(Reason::OutsChanged);
    }
    for o in &stage.outs {
        let (Some(rec), Some(now)) = (last.outs.get(&o.path), seen.outs.get(&o.path)) else {
            continue;
        };
        match now {
            None => reasons.push(Reason::OutMissing {
                path: o.path.clone(),
            }),
            Some(h) if *h != rec.hash => reasons.push(Reason::OutModified {
                path: o.path.clone(),
            }),
            _ => {}
        }
    }
    if reasons.is_empty() && last.fingerprint != now.fingerprint {
        // Same visible inputs, different fingerprint (e.g. an out now declared as a folder).
        reasons.push(Reason::OutsChanged);
    }
    reasons
}

fn union<'a, V>(a: &'a BTreeMap<String, V>, b: &'a BTreeMap<String, V>) -> Vec<&'a String> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// What the release lifecycle says about a plan: rollbacks that hold release stages back,
/// and gate overrides that stick (implemented by the recorded release state).
pub trait Releases {
    /// For a release stage at `fingerprint` that a rollback moved away from: the current
    /// release it stays at.
    fn held_at(&self, stage: &str, fingerprint: &str) -> Option<String>;
    /// A person overrode this gate for a file with this content.
    fn overridden(&self, gate: &str, file_hash: Option<&str>) -> bool;
}

/// No rollbacks, no overrides.
pub struct NoReleases;

impl Releases for NoReleases {
    fn held_at(&self, _: &str, _: &str) -> Option<String> {
        None
    }
    fn overridden(&self, _: &str, _: Option<&str>) -> bool {
        false
    }
}

/// A release stage that must not release again: stale, and its fingerprint is one a
/// rollback moved away from.
pub fn held_back(stage: &Stage, j: &Judgement, releases: &dyn Releases) -> Option<Reason> {
    if !stage.release || j.verdict.is_up_to_date() {
        return None;
    }
    let fp = &j.inputs.as_ref()?.entry.fingerprint;
    releases
        .held_at(&stage.name, fp)
        .map(|run_id| Reason::RolledBack { run_id })
}

/// One stage judged by a [`Planner`].
#[derive(Debug, Clone)]
pub struct Judgement {
    /// `None` for a frozen stage (nothing is hashed).
    pub inputs: Option<Inputs>,
    pub verdict: Verdict,
    /// Something the user should know that did not stop the judgement (remote unreachable).
    pub warning: Option<String>,
}

/// Judges stages against the lock, looking up the cache (and the remote with `pull`) only
/// for stale ones. Shared by `status`, `build --dry-run` and `build`.
pub struct Planner<'a> {
    pub hasher: Hasher<'a>,
    pub cache: &'a Cache,
    pub use_cache: bool,
    /// Fetch run-cache entries from this remote for stale stages the local cache lacks.
    pub remote: Option<&'a crate::remote::Remote>,
}

impl Planner<'_> {
    /// Judge one stage; `restore_ok: false` never offers a restore (its cache entry was bad).
    pub fn judge(
        &self,
        stage: &Stage,
        last: Option<&LockEntry>,
        opts: JudgeOpts,
        restore_ok: bool,
    ) -> Result<Judgement> {
        if stage.frozen {
            return Ok(Judgement {
                inputs: None,
                verdict: Verdict::Frozen,
                warning: None,
            });
        }
        let seen = observe(stage, &self.hasher, last)?;
        let reasons = judge(stage, &seen, last, opts);
        let mut warning = None;
        let verdict = if reasons.is_empty() {
            Verdict::UpToDate
        } else {
            let fp = &seen.inputs.entry.fingerprint;
            let mut restore = None;
            if self.use_cache && restore_ok && !opts.forced && stage.cacheable() {
                restore = self.cache.get_run(fp).filter(|e| self.cache.has_all(e));
                if restore.is_none()
                    && let Some(remote) = self.remote
                {
                    match remote.fetch_run(self.cache, fp) {
                        Ok(found) => restore = found,
                        Err(e) => {
                            warning = Some(format!("cannot fetch from the remote cache: {e:#}"))
                        }
                    }
                }
            }
            Verdict::Stale { reasons, restore }
        };
        Ok(Judgement {
            inputs: Some(seen.inputs),
            verdict,
            warning,
        })
    }
}

/// The declared outs of a frozen stage that are not on disk (a frozen stage never runs, so
/// its downstream would fail on them).
pub fn frozen_missing(p: &Pipeline, stage: &Stage) -> Vec<String> {
    if !stage.frozen {
        return vec![];
    }
    stage
        .outs
        .iter()
        .filter(|o| std::fs::symlink_metadata(p.root.join(&o.path)).is_err())
        .map(|o| o.path.clone())
        .collect()
}

/// One stage's place in a plan made up front (`pipe status`, `pipe build --dry-run`).
#[derive(Debug, Clone)]
pub struct Planned {
    pub stage: usize,
    pub state: StageState,
    pub reasons: Vec<Reason>,
}

impl Planned {
    /// Something is to do or to fix here (a frozen stage with a missing out counts).
    pub fn needs_attention(&self) -> bool {
        !self.state.is_fresh() || (self.state == StageState::Frozen && !self.reasons.is_empty())
    }
}

/// What judging a whole selection up front needs besides the pipeline: the lock, the
/// planner, the stages forced, those cut off last time and the release state.
pub struct Upfront<'a> {
    pub lock: &'a LockFile,
    pub planner: &'a Planner<'a>,
    pub forced: &'a BTreeSet<usize>,
    pub incomplete: &'a BTreeSet<String>,
    pub releases: &'a dyn Releases,
}

impl Upfront<'_> {
    /// Judge every selected stage in topological order. A stage downstream of one that is
    /// not up to date also gets `upstream stale` (it may run: the build re-checks it); a
    /// stage downstream of an up-to-date stage whose gate fails now is `blocked`.
    pub fn all(&self, p: &Pipeline, selected: &BTreeSet<usize>) -> Result<Vec<Planned>> {
        Ok(self.judge(p, selected, false)?.unwrap_or_default())
    }

    /// [`all`](Self::all), or `None` as soon as a selected stage needs attention, without
    /// judging the rest (is a build a no-op?).
    pub fn until_attention(
        &self,
        p: &Pipeline,
        selected: &BTreeSet<usize>,
    ) -> Result<Option<Vec<Planned>>> {
        self.judge(p, selected, true)
    }

    fn judge(
        &self,
        p: &Pipeline,
        selected: &BTreeSet<usize>,
        stop_at_attention: bool,
    ) -> Result<Option<Vec<Planned>>> {
        let Upfront {
            lock,
            planner,
            forced,
            incomplete,
            releases,
        } = *self;
        let mut out: Vec<Planned> = Vec::new();
        let mut pos: HashMap<usize, usize> = HashMap::new();
        // Stage → the reason its downstream is blocked.
        let mut blocks: HashMap<usize, Reason> = HashMap::new();
        for &i in &p.order {
            if !selected.contains(&i) {
                continue;
            }
            let stage = &p.stages[i];
            let upstream_block = stage.upstream.iter().find_map(|u| blocks.get(u).cloned());
            let planned = if let Some(why) = upstream_block {
                blocks.insert(i, why.clone());
                Planned {
                    stage: i,
                    state: StageState::Blocked,
                    reasons: vec![why],
                }
            } else {
                let opts = JudgeOpts {
                    forced: forced.contains(&i),
                    incomplete: incomplete.contains(&stage.name),
                };
                let j = planner.judge(stage, lock.stages.get(&stage.name), opts, true)?;
                let (mut state, mut reasons) = match held_back(stage, &j, releases) {
                    Some(why) => (StageState::RolledBack, vec![why]),
                    None => (j.verdict.state(), j.verdict.reasons().to_vec()),
                };
                for path in frozen_missing(p, stage) {
                    reasons.push(Reason::OutMissing { path });
                }
                let stale_up: Vec<Reason> = stage
                    .upstream
                    .iter()
                    .filter_map(|u| pos.get(u).map(|&k| &out[k]))
                    .filter(|u| !u.state.is_fresh())
                    .map(|u| Reason::UpstreamStale {
                        stage: p.stages[u.stage].name.clone(),
                    })
                    .collect();
                if !stale_up.is_empty() && !stage.frozen {
                    reasons.extend(stale_up);
                    if state.is_fresh() {
                        state = StageState::Stale;
                    }
                }
                if state.is_fresh()
                    && let Some(spec) = &stage.gate
                    && let g = crate::gate::evaluate(spec, &stage.name, &p.root, false)
                    && !g.passed
                    && !releases.overridden(&spec.name, g.file_hash.as_deref())
                {
                    blocks.insert(
                        i,
                        Reason::GateFailed {
                            gate: spec.name.clone(),
                            stage: stage.name.clone(),
                        },
                    );
                }
                Planned {
                    stage: i,
                    state,
                    reasons,
                }
            };
            if stop_at_attention && planned.needs_attention() {
                return Ok(None);
            }
            pos.insert(i, out.len());
            out.push(planned);
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lockfile::OutRecord;

    fn stage(toml_text: &str) -> Stage {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("Pipeline.toml");
        std::fs::write(&file, format!("[stages.s]\n{toml_text}\n")).expect("write");
        std::fs::write(dir.path().join("d"), "dep").expect("write");
        let p = Pipeline::load(&file, "Pipeline.toml".into(), &Default::default())
            .expect("valid pipeline");
        p.stages.into_iter().next().expect("one stage")
    }

    fn seen(entry: LockEntry, outs: &[(&str, Option<&str>)]) -> Observed {
        Observed {
            inputs: Inputs {
                entry,
                deps: BTreeMap::new(),
            },
            outs: outs
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
        }
    }

    fn entry(fp: &str, deps: &[(&str, &str)], outs: &[(&str, &str)]) -> LockEntry {
        LockEntry {
            fingerprint: fp.into(),
            cmd: vec!["echo hi > o".into()],
            deps: deps
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            outs: outs
                .iter()
                .map(|(k, h)| {
                    (
                        k.to_string(),
                        OutRecord {
                            hash: h.to_string(),
                            size: 1,
                            dir: false,
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    fn texts(r: &[Reason]) -> Vec<String> {
        r.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn reason_table() {
        let s = stage("cmd = \"echo hi > o\"\ndeps = [\"d\"]\nouts = [\"o\"]");
        let last = entry("f1", &[("d", "h1")], &[("o", "ho")]);
        let opts = JudgeOpts::default();
        type Case<'a> = (
            LockEntry,
            Vec<(&'a str, Option<&'a str>)>,
            Option<&'a LockEntry>,
            Vec<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (last.clone(), vec![("o", Some("ho"))], Some(&last), vec![]),
            (last.clone(), vec![], None, vec!["never run"]),
            (
                entry("f2", &[("d", "h2")], &[]),
                vec![("o", Some("ho"))],
                Some(&last),
                vec!["dep changed: d"],
            ),
            (
                entry("f2", &[("d", "h1"), ("e", "x")], &[]),
                vec![("o", Some("ho"))],
                Some(&last),
                vec!["dep added: e"],
            ),
            (
                entry("f2", &[], &[]),
                vec![("o", Some("ho"))],
                Some(&last),
                vec!["dep removed: d"],
            ),
            (
                last.clone(),
                vec![("o", None)],
                Some(&last),
                vec!["out missing: o"],
            ),
            (
                last.clone(),
                vec![("o", Some("other"))],
                Some(&last),
                vec!["out modified: o"],
            ),
            (
                entry("f9", &[("d", "h1")], &[]),
                vec![("o", Some("ho"))],
                Some(&last),
                vec!["outs changed"],
            ),
        ];
        for (now, outs, last, want) in cases {
            let got = judge(&s, &seen(now, &outs), last, opts);
            assert_eq!(texts(&got), want);
        }
    }

    #[test]
    fn params_show_old_and_new_and_cmd_template_is_compared() {
        let s = stage("cmd = \"echo hi > o\"\nouts = [\"o\"]");
        let mut last = entry("f1", &[], &[("o", "ho")]);
        last.params.insert("lr".into(), toml::Value::Float(0.1));
        let mut now = last.clone();
        now.params.insert("lr".into(), toml::Value::Float(0.2));
        now.params.insert("seed".into(), toml::Value::Integer(1));
        now.fingerprint = "f2".into();
        let got = judge(
            &s,
            &seen(now.clone(), &[("o", Some("ho"))]),
            Some(&last),
            JudgeOpts::default(),
        );
        assert_eq!(
            texts(&got),
            [
                "param changed: lr (0.1 -> 0.2)",
                "param changed: seed (unset -> 1)"
            ]
        );
        now.cmd = vec!["other".into()];
        let forced = JudgeOpts {
            forced: true,
            incomplete: true,
        };
        let got = judge(&s, &seen(now, &[("o", Some("ho"))]), Some(&last), forced);
        assert_eq!(
            texts(&got)[..4],
            [
                "forced",
                "incomplete: the last run was interrupted",
                "command changed",
                "param changed: lr (0.1 -> 0.2)"
            ]
        );
    }

    #[test]
    fn reasons_serialise_as_objects_with_their_sentence() {
        let r = Reason::ParamChanged {
            key: "train.lr".into(),
            old: Some(toml::Value::Float(0.1)),
            new: Some(toml::Value::Float(0.05)),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind": "param_changed", "key": "train.lr", "old": 0.1, "new": 0.05,
                "text": "param changed: train.lr (0.1 -> 0.05)"})
        );
        let back: Reason = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        let d = Reason::DepChanged { path: "a b".into() };
        let back: Reason = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }
}
