//! The Tokio runtime the handlers run on, sized to the CPU Lambda grants.
//!
//! Lambda gives a function CPU in proportion to its memory, one vCPU per
//! 1,769 MB, while the process sees two cores or more whatever it is given.
//! A worker thread per visible core then only hands tasks between threads
//! that take turns on a fraction of one: at the template's 512 MB (0.29 of a
//! vCPU), side-by-side runs of `make bench`'s S3 workload measured 15 to
//! 20 % more CPU per record with two workers than with one. So the runtime
//! has one worker per vCPU the memory buys, at least one and at most the
//! cores visible; on Lambda Managed Instances (a vCPU per 2 GiB or more)
//! that is every visible core.

/// Memory that buys one vCPU, in MB.
const MB_PER_VCPU: u64 = 1769;

/// Worker threads for a function of `memory_mb` on `cores` visible cores.
pub fn worker_threads(memory_mb: Option<u64>, cores: usize) -> usize {
    let cores = cores.max(1);
    match memory_mb {
        Some(memory_mb) => {
            usize::try_from(memory_mb.div_ceil(MB_PER_VCPU)).map_or(cores, |n| n.clamp(1, cores))
        }
        None => cores,
    }
}

/// The multi-threaded runtime for this process: workers as
/// [`worker_threads`] has them for `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`. An
/// unreadable value leaves one per core; the configuration, loaded next,
/// reports it by name.
pub fn for_the_process() -> std::io::Result<tokio::runtime::Runtime> {
    let memory_mb = std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        .ok()
        .and_then(|mb| mb.parse().ok());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads(memory_mb, cores))
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_per_vcpu_the_memory_buys_within_the_cores_visible() {
        // Below one vCPU, and at exactly one.
        assert_eq!(worker_threads(Some(128), 2), 1);
        assert_eq!(worker_threads(Some(512), 2), 1);
        assert_eq!(worker_threads(Some(1769), 2), 1);
        // Past one vCPU, and capped by what the process sees.
        assert_eq!(worker_threads(Some(1770), 6), 2);
        assert_eq!(worker_threads(Some(10240), 6), 6);
        assert_eq!(worker_threads(Some(10240), 2), 2);
        // Managed Instances: 4 GiB of 2 vCPUs.
        assert_eq!(worker_threads(Some(4096), 2), 2);
        // Not announced: every core.
        assert_eq!(worker_threads(None, 4), 4);
        assert_eq!(worker_threads(Some(512), 0), 1);
    }
}
