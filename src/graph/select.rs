//! Which stages a command covers: named targets (stages or matrix groups) with their
//! upstream, `--downstream`, and which of them `--force` / `--force-all` rerun.

use super::Pipeline;
use anyhow::Result;
use std::collections::BTreeSet;

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub names: Vec<String>,
    pub downstream: bool,
    pub force: bool,
    pub force_all: bool,
}

/// The stages a command covers and those it forces.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub selected: BTreeSet<usize>,
    pub forced: BTreeSet<usize>,
}

impl Pipeline {
    pub fn select(&self, t: &Targets) -> Result<Selection> {
        let named = if t.names.is_empty() {
            (0..self.stages.len()).collect()
        } else {
            self.resolve_targets(&t.names)?
        };
        let mut wanted = named.clone();
        if t.downstream {
            wanted = self.with_downstream(&wanted);
        }
        let selected = self.with_upstream(&wanted);
        let forced = if t.force_all {
            self.with_upstream(&named)
        } else if t.force {
            named
        } else {
            BTreeSet::new()
        };
        Ok(Selection { selected, forced })
    }
}
