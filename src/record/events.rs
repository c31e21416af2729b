//! `events.jsonl`: every event of a run, one JSON object a line with `ts` and `event`,
//! appended and flushed as it happens so a crashed run still shows how far it got.
//! Verdicts (`stage_judged`) stay out of it: the manifest records them.

use super::{Recorder, now_rfc3339_ms};
use crate::event::{Event, Sink};
use anyhow::{Context, Result};
use std::io::Write;

pub struct EventLog {
    file: std::fs::File,
}

impl EventLog {
    pub fn open(rec: &Recorder) -> Result<EventLog> {
        let path = rec.dir.join("events.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(EventLog { file })
    }
}

impl Sink for EventLog {
    fn on(&mut self, event: &Event) -> Result<()> {
        // A verdict is in the manifest; the log keeps what happened, as SPEC lists it.
        if matches!(event, Event::StageJudged { .. } | Event::StageOutput { .. }) {
            return Ok(());
        }
        let mut obj = serde_json::Map::new();
        obj.insert("ts".into(), now_rfc3339_ms().into());
        if let serde_json::Value::Object(m) = serde_json::to_value(event)? {
            obj.extend(m);
        }
        let mut line = serde_json::Value::Object(obj).to_string();
        line.push('\n');
        // A lost event line must not fail the build: the manifest is the record of truth.
        let _ = self.file.write_all(line.as_bytes());
        Ok(())
    }
}
