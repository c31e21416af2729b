//! Running markers: `.pipe/state/running/<stage>` exists while a stage runs and holds the run
//! id and, once its command started, the process group and its leader's start time
//! (`RUN_ID PGID START`). A marker left behind means the stage's last run was cut off
//! (`incomplete`), and names the group a later build must stop before running it again.

use crate::fsutil::{Layout, marker_name};
use crate::graph::Pipeline;
use crate::process_group::Recorded;
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::time::SystemTime;

/// What a marker says.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub run_id: String,
    pub group: Option<Recorded>,
    /// When the marker was last written (the stage, or its current command, started).
    pub since: Option<SystemTime>,
}

/// Written in place, not through a temporary file and a rename: a marker is a few bytes
/// written at once, and a torn one still reads as a marker (of no live run), which is all
/// `incomplete` needs. One file a stage, instead of two creates and two renames.
pub fn write(layout: &Layout, stage: &str, run_id: &str, group: Option<Recorded>) -> Result<()> {
    let text = match group {
        Some(g) => format!("{run_id} {} {}\n", g.pgid, g.start),
        None => format!("{run_id}\n"),
    };
    let path = layout.running_marker(stage);
    let dir = layout.running_dir();
    crate::fsutil::remaking_dirs(&[&dir], || {
        crate::fsutil::ensure_dir(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))
    })
}

pub fn remove(layout: &Layout, stage: &str) {
    let _ = std::fs::remove_file(layout.running_marker(stage));
}

pub fn read(layout: &Layout, stage: &str) -> Option<Marker> {
    let path = layout.running_marker(stage);
    let text = std::fs::read_to_string(&path).ok()?;
    let mut words = text.split_whitespace();
    let run_id = words.next().unwrap_or_default().to_string();
    let group = match (
        words.next().and_then(|w| w.parse().ok()),
        words.next().and_then(|w| w.parse().ok()),
    ) {
        (Some(pgid), Some(start)) => Some(Recorded { pgid, start }),
        _ => None,
    };
    let since = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    Some(Marker {
        run_id,
        group,
        since,
    })
}

/// Stage names whose last run was cut off.
pub fn incomplete(p: &Pipeline) -> BTreeSet<String> {
    let Ok(rd) = std::fs::read_dir(p.layout.running_dir()) else {
        return BTreeSet::new();
    };
    let names: BTreeSet<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    p.stages
        .iter()
        .filter(|s| names.contains(&marker_name(&s.name)))
        .map(|s| s.name.clone())
        .collect()
}
