//! Resource pools: named capacities whose units carry indices (GPU device numbers).

use crate::graph::Pipeline;
use std::collections::BTreeMap;

/// Resource pools: each unit has an index (GPU device numbers for `gpu`).
pub(super) struct Pools {
    pub(super) free: BTreeMap<String, Vec<u32>>,
}

impl Pools {
    pub(super) fn new(p: &Pipeline) -> Pools {
        Pools {
            free: p
                .resources
                .iter()
                .map(|(k, &n)| (k.clone(), (0..n).collect()))
                .collect(),
        }
    }
    pub(super) fn try_take(
        &mut self,
        want: &BTreeMap<String, u32>,
    ) -> Option<BTreeMap<String, Vec<u32>>> {
        for (k, &n) in want {
            if let Some(free) = self.free.get(k)
                && free.len() < n as usize
            {
                return None;
            }
        }
        let mut got = BTreeMap::new();
        for (k, &n) in want {
            if let Some(free) = self.free.get_mut(k) {
                got.insert(k.clone(), free.drain(..n as usize).collect());
            }
        }
        Some(got)
    }
    pub(super) fn give_back(&mut self, got: BTreeMap<String, Vec<u32>>) {
        for (k, units) in got {
            if let Some(free) = self.free.get_mut(&k) {
                free.extend(units);
                free.sort_unstable();
            }
        }
    }
}
