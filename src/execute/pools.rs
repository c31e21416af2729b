//! Resource pools: named capacities whose units carry indices (GPU device numbers), so two
//! stages never share a unit.

use std::collections::BTreeMap;

/// Units held from each pool: pool name → unit indices.
pub type Units = BTreeMap<String, Vec<u32>>;

pub struct Pools {
    free: Units,
}

impl Pools {
    pub fn new(sizes: &BTreeMap<String, u32>) -> Pools {
        Pools {
            free: sizes
                .iter()
                .map(|(k, &n)| (k.clone(), (0..n).collect()))
                .collect(),
        }
    }

    /// Take `want` units from each pool, lowest indices first, or nothing if any pool is
    /// short. Requests for names that are not pools (`cpus`, `mem` for Slurm) take nothing.
    pub fn try_take(&mut self, want: &BTreeMap<String, u32>) -> Option<Units> {
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

    pub fn give_back(&mut self, got: Units) {
        for (k, units) in got {
            if let Some(free) = self.free.get_mut(&k) {
                free.extend(units);
                free.sort_unstable();
            }
        }
    }
}
