//! The build's event vocabulary: the only way a build reports what happened. The dispatcher
//! emits each fact once on a [`Bus`]; sinks consume it: the terminal reporter, the event log
//! (`events.jsonl`, whose schema is this enum), and the ledger (`Pipeline.lock`, the run
//! manifest, gate files, release manifests, running markers).

use crate::cache::CachedOut;
use crate::failure::StageFailure;
use crate::gate::GateResult;
use crate::lockfile::LockEntry;
use crate::plan::Reason;
use crate::release::ReleaseManifest;
use crate::stage_state::{RunStatus, StageState};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStart {
        run_id: String,
        /// The run folder (`PIPE_RUN_DIR`).
        run_dir: PathBuf,
        stages: usize,
    },
    /// A stage was judged when its upstream was done (this is where early cutoff happens).
    StageJudged {
        stage: String,
        state: StageState,
        reasons: Vec<Reason>,
        fingerprint: Option<String>,
        /// What the lock entry will hold if the stage succeeds (outs filled in then).
        #[serde(skip)]
        inputs: Option<Box<LockEntry>>,
    },
    StageStart {
        stage: String,
        reasons: Vec<Reason>,
        /// Seconds its last successful run took, when history knows.
        #[serde(skip_serializing_if = "Option::is_none")]
        expected_s: Option<f64>,
    },
    /// A line a running stage wrote to its log (not kept in events.jsonl: the log has it).
    StageOutput {
        stage: String,
        line: String,
    },
    StageRetry {
        stage: String,
        attempt: u32,
        delay_s: f64,
        error: String,
    },
    StageOk {
        stage: String,
        duration_s: f64,
        attempts: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        job_id: Option<String>,
        outs: BTreeMap<String, CachedOut>,
    },
    StageRestored {
        stage: String,
        duration_s: f64,
        outs: BTreeMap<String, CachedOut>,
    },
    StageFail {
        stage: String,
        /// The sentence; `failure` is the same as an object (absent when interrupted).
        error: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        failure: Option<StageFailure>,
        exit_code: Option<i32>,
        attempts: u32,
        duration_s: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        job_id: Option<String>,
        /// Stopped by Ctrl-C / SIGTERM rather than failing on its own.
        interrupted: bool,
    },
    /// A cache object was bad; the stage runs instead.
    CacheCorrupt {
        stage: String,
        error: String,
    },
    StageSkipped {
        stage: String,
        reason: Reason,
    },
    StageBlocked {
        stage: String,
        reason: Reason,
    },
    GatePass {
        #[serde(flatten)]
        result: GateResult,
        /// The stage was up to date: its gate was re-checked, not newly produced.
        #[serde(skip)]
        fresh: bool,
    },
    GateFail {
        #[serde(flatten)]
        result: GateResult,
    },
    Release {
        stage: String,
        artifacts: usize,
        #[serde(skip)]
        manifest: Box<ReleaseManifest>,
    },
    Warning {
        #[serde(skip_serializing_if = "Option::is_none")]
        stage: Option<String>,
        message: String,
    },
    Interrupt,
    /// `pipe rollback` (its own run): about to put back the release of run `to`.
    RollbackStart {
        to: String,
    },
    Rollback {
        to: String,
        artifacts: usize,
    },
    RunDone {
        status: RunStatus,
        exit_code: i32,
    },
}

/// Something that consumes the build's events.
pub trait Sink {
    fn on(&mut self, event: &Event) -> Result<()>;
    /// Called on every dispatcher tick (about every 50 ms) for coalesced work.
    fn tick(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Fans each event out to every sink. A failing sink does not stop the others; the first
/// error is returned.
#[derive(Default)]
pub struct Bus<'a> {
    sinks: Vec<&'a mut dyn Sink>,
}

impl<'a> Bus<'a> {
    pub fn new() -> Bus<'a> {
        Bus { sinks: Vec::new() }
    }

    pub fn with(mut self, sink: &'a mut dyn Sink) -> Bus<'a> {
        self.sinks.push(sink);
        self
    }

    pub fn emit(&mut self, event: Event) -> Result<()> {
        let mut first = Ok(());
        for s in &mut self.sinks {
            let r = s.on(&event);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    pub fn tick(&mut self) -> Result<()> {
        let mut first = Ok(());
        for s in &mut self.sinks {
            let r = s.tick();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_with_spec_names() {
        let e = Event::StageSkipped {
            stage: "b".into(),
            reason: Reason::UpstreamFailed { stage: "a".into() },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "stage_skipped");
        assert_eq!(v["stage"], "b");
        assert_eq!(v["reason"]["kind"], "upstream_failed");
        let v = serde_json::to_value(Event::Interrupt).unwrap();
        assert_eq!(v, serde_json::json!({"event": "interrupt"}));
        let v = serde_json::to_value(Event::RunDone {
            status: RunStatus::GateFailed,
            exit_code: 3,
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "run_done", "status": "gate_failed", "exit_code": 3})
        );
    }

    struct Count(usize);
    impl Sink for Count {
        fn on(&mut self, _: &Event) -> Result<()> {
            self.0 += 1;
            anyhow::bail!("sink {} fails", self.0)
        }
    }

    #[test]
    fn every_sink_sees_every_event_even_when_one_fails() {
        let (mut a, mut b) = (Count(0), Count(10));
        let r = Bus::new().with(&mut a).with(&mut b).emit(Event::Interrupt);
        assert_eq!(r.unwrap_err().to_string(), "sink 1 fails");
        assert_eq!((a.0, b.0), (1, 11));
    }
}
