//! Running markers: `.pipe/state/running/<stage>` holds the run id while a stage runs. A
//! marker left behind means the stage's last run was cut off (`incomplete`), so the next
//! build reruns it even if its outs look complete.

use crate::fsutil::{Layout, marker_name, quick_write};
use crate::graph::Pipeline;
use anyhow::Result;
use std::collections::BTreeSet;

pub fn write(layout: &Layout, stage: &str, run_id: &str) -> Result<()> {
    quick_write(
        &layout.running_marker(stage),
        format!("{run_id}\n").as_bytes(),
    )
}

pub fn remove(layout: &Layout, stage: &str) {
    let _ = std::fs::remove_file(layout.running_marker(stage));
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
