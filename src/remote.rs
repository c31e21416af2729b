//! The remote cache (S3 or a shared folder): push and pull objects and run-cache entries.

use crate::cache::{Cache, RunEntry};
use crate::spec::RawRemote;
use anyhow::Result;
use std::path::Path;

pub struct Remote {
    url: String,
}

impl Remote {
    pub fn open(cfg: &RawRemote, _root: &Path) -> Result<Remote> {
        Err(crate::error::failed(format!(
            "remote cache `{}`: not available in this build",
            cfg.url
        )))
    }
    pub fn fetch_run(&self, _cache: &Cache, _fingerprint: &str) -> Result<Option<RunEntry>> {
        anyhow::bail!("remote `{}` unavailable", self.url)
    }
    pub fn push_entry(&self, _cache: &Cache, _entry: &RunEntry) -> Result<()> {
        anyhow::bail!("remote `{}` unavailable", self.url)
    }
}

/// Counts of one transfer.
#[derive(Debug, Default)]
pub struct TransferStats {
    pub sent: usize,
    pub skipped: usize,
    pub bytes: u64,
}

impl std::fmt::Display for TransferStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files ({:.1} MiB), {} already there",
            self.sent,
            self.bytes as f64 / (1 << 20) as f64,
            self.skipped
        )
    }
}

impl Remote {
    pub fn push(
        &self,
        _cache: &Cache,
        _fps: Option<&Vec<String>>,
        _jobs: usize,
        _rep: &crate::report::Reporter,
    ) -> Result<TransferStats> {
        anyhow::bail!("remote `{}` unavailable", self.url)
    }
    pub fn pull(
        &self,
        _cache: &Cache,
        _fps: Option<&Vec<String>>,
        _jobs: usize,
        _rep: &crate::report::Reporter,
    ) -> Result<TransferStats> {
        anyhow::bail!("remote `{}` unavailable", self.url)
    }
}
