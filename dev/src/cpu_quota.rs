//! Lambda's CPU share for a handler process: Lambda gives a function CPU in
//! proportion to its memory, one vCPU at 1,769 MB, so a 512 MB function runs
//! on about 0.29 of a core. A cgroup CPU quota (v1 `cpu.cfs_quota_us`, v2
//! `cpu.max`) holds the process to the same share, so that a benchmark's
//! wall times are what the deployed function would see.

use std::path::{Path, PathBuf};

/// The memory at which Lambda gives a function one whole vCPU.
pub const MB_PER_VCPU: u32 = 1769;
/// The scheduler period the quota is given over (the kernel's default).
const PERIOD_US: u64 = 100_000;

/// A cgroup of its own, limited to `cores` of CPU; removed when dropped.
#[derive(Debug)]
pub struct CpuQuota {
    dir: PathBuf,
    pub cores: f64,
}

#[derive(Debug, Clone, Copy)]
enum CgroupVersion {
    V1,
    V2,
}

/// How the quota bit: the periods it was enforced over and those in which
/// it held the process back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throttling {
    pub periods: u64,
    pub throttled: u64,
}

impl CpuQuota {
    /// Lambda's share for a function of `memory_mb`.
    pub fn for_memory(memory_mb: u32) -> Result<CpuQuota, String> {
        CpuQuota::of_cores(f64::from(memory_mb) / f64::from(MB_PER_VCPU))
    }

    /// A quota of `cores` (1.5: one and a half cores' time per period).
    pub fn of_cores(cores: f64) -> Result<CpuQuota, String> {
        let (root, version) = if Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() {
            (PathBuf::from("/sys/fs/cgroup/cpu"), CgroupVersion::V1)
        } else if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            (PathBuf::from("/sys/fs/cgroup"), CgroupVersion::V2)
        } else {
            return Err("no cgroup CPU controller mounted at /sys/fs/cgroup".into());
        };
        let dir = root.join(format!(
            "terra-sink-bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).map_err(|e| {
            format!(
                "could not create the cgroup {} (CPU quotas need root): {e}",
                dir.display()
            )
        })?;
        let quota = CpuQuota { dir, cores };
        let quota_us = (cores * PERIOD_US as f64).round() as u64;
        match version {
            CgroupVersion::V1 => {
                quota.write("cpu.cfs_period_us", &PERIOD_US.to_string())?;
                quota.write("cpu.cfs_quota_us", &quota_us.to_string())?;
            }
            CgroupVersion::V2 => quota.write("cpu.max", &format!("{quota_us} {PERIOD_US}"))?,
        }
        Ok(quota)
    }

    /// Moves process `pid`, every thread of it, under the quota. Threads it
    /// starts later are born there.
    pub fn admit(&self, pid: u32) -> Result<(), String> {
        self.write("cgroup.procs", &pid.to_string())
    }

    pub fn throttling(&self) -> Throttling {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
        let field = |name: &str| {
            stat.lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0)
        };
        // v1 and v2 name these two counters alike.
        Throttling {
            periods: field("nr_periods "),
            throttled: field("nr_throttled "),
        }
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        std::fs::write(self.dir.join(file), value)
            .map_err(|e| format!("{}/{file} <- {value}: {e}", self.dir.display()))
    }
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for CpuQuota {
    /// The cgroup can only go once its processes have; a handler still
    /// running leaves it behind, empty of anything but a name.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}
