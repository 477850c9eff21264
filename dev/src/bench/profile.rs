//! Where a handler's CPU goes: `perf record` samples the process while the
//! measured invocations run, and each sample's function is put in a stage
//! by the crate it belongs to. Sampling needs a binary with its symbol
//! table (`make bench` builds one, `--profile profiling`); the deployable
//! artifacts are stripped.
//!
//! A sample counts where the CPU was, not who called it: a `memcpy` on
//! behalf of hyper counts as a copy, and a function inlined into its caller
//! counts as the caller.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Where a sample landed, by what the code was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Tls,
    Http,
    SdkPipeline,
    Hashing,
    Validation,
    Telemetry,
    Allocation,
    AsyncRuntime,
    Kernel,
    Gzip,
    Other,
}

impl Stage {
    /// In the order a table shows them.
    pub const ALL: [Stage; 11] = [
        Stage::Tls,
        Stage::Http,
        Stage::SdkPipeline,
        Stage::Hashing,
        Stage::Validation,
        Stage::Telemetry,
        Stage::Allocation,
        Stage::AsyncRuntime,
        Stage::Kernel,
        Stage::Gzip,
        Stage::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Stage::Tls => "TLS (handshakes, encryption)",
            Stage::Http => "HTTP (hyper, reqwest)",
            Stage::SdkPipeline => "SDK request pipeline (smithy, SigV4)",
            Stage::Hashing => "hashing and checksums (SHA-256, CRC32, MD5)",
            Stage::Validation => "validation and parsing (terra-sink, serde_json)",
            Stage::Telemetry => "logging, metrics and traces",
            Stage::Allocation => "allocation and copies",
            Stage::AsyncRuntime => "async runtime (tokio)",
            Stage::Kernel => "kernel (syscalls, network)",
            Stage::Gzip => "gzip",
            Stage::Other => "other",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The stage a sampled function belongs to, by its (demangled) name and
/// whether perf saw it in the kernel. The first match wins, so the more
/// specific crates come first (a checksum inside the SDK is hashing).
pub fn stage_of(symbol: &str, kernel: bool) -> Stage {
    let has = |needles: &[&str]| needles.iter().any(|n| symbol.contains(n));
    if kernel {
        Stage::Kernel
    } else if has(&["sha2::", "crc", "Crc", "md5", "Md5", "aws_smithy_checksums"]) {
        Stage::Hashing
    } else if has(&[
        "rustls", "aws_lc", "aes_", "gcm_", "chacha", "x25519", "p256", "ecp_",
    ]) {
        Stage::Tls
    } else if has(&[
        "hyper",
        "h2::",
        "reqwest",
        "http::",
        "httparse",
        "http_body",
    ]) {
        Stage::Http
    } else if has(&[
        "aws_smithy",
        "aws_sdk",
        "aws_sigv4",
        "aws_runtime",
        "aws_config",
    ]) {
        Stage::SdkPipeline
    } else if has(&[
        "tracing",
        "opentelemetry",
        "terra_sink::metrics",
        "terra_sink::log",
    ]) {
        Stage::Telemetry
    } else if has(&[
        "terra_sink",
        "serde_json",
        "serde::",
        "memchr",
        "time::",
        "url::",
    ]) {
        Stage::Validation
    } else if has(&[
        "malloc", "free", "memcpy", "memmove", "memset", "alloc::", "bytes::",
    ]) {
        Stage::Allocation
    } else if has(&[
        "tokio", "mio::", "futures", "epoll", "pthread", "__lll", "syscall",
    ]) {
        Stage::AsyncRuntime
    } else if has(&["flate2", "miniz", "inflate", "zlib"]) {
        Stage::Gzip
    } else {
        Stage::Other
    }
}

/// `perf record` attached to one process until [`Recording::finish`].
pub struct Recording {
    child: Child,
    data: PathBuf,
}

impl Recording {
    /// Starts sampling process `pid` (every thread) on the CPU clock, which
    /// needs no hardware counters. `None` if perf cannot be run.
    pub fn attach(pid: u32) -> Option<Recording> {
        let data = std::env::temp_dir().join(format!("terra-sink-bench-{pid}.perf"));
        let child = Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", "4999", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // perf takes a moment to open its events; samples before it has are
        // lost, not misplaced.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Some(Recording { child, data })
    }

    /// Stops sampling and reads the samples into a [`Breakdown`].
    pub fn finish(mut self) -> Option<Breakdown> {
        // SIGINT: perf writes out what it holds and exits.
        // SAFETY: kill only sends a signal, to perf, our own child, which
        // has not been waited for, so its pid is not yet anyone else's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait().ok()?;
        let report = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "-q",
                "--no-children",
                "--percent-limit",
                "0",
                "--sort",
                "sym",
                "-F",
                "overhead,sample,sym",
                "-i",
            ])
            .arg(&self.data)
            .output()
            .ok()?;
        let _ = std::fs::remove_file(&self.data);
        let text = String::from_utf8_lossy(&report.stdout);
        let breakdown = Breakdown::from_report(&text);
        (breakdown.samples > 0).then_some(breakdown)
    }
}

/// Samples per stage, and the functions that took the most.
#[derive(Debug, Clone, Default)]
pub struct Breakdown {
    pub samples: u64,
    pub by_stage: BTreeMap<Stage, u64>,
    /// (samples, function, stage), most first.
    pub top: Vec<(u64, String, Stage)>,
}

impl Breakdown {
    /// Reads `perf report -F overhead,sample,sym` lines:
    /// `  12.34%  567  [.] some::function` (`[k]` for the kernel).
    pub fn from_report(report: &str) -> Breakdown {
        let mut breakdown = Breakdown::default();
        for line in report.lines() {
            let mut fields = line.split_whitespace();
            let (Some(_percent), Some(samples), Some(kind)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(samples) = samples.parse::<u64>() else {
                continue;
            };
            let symbol = fields.collect::<Vec<_>>().join(" ");
            let stage = stage_of(&symbol, kind == "[k]");
            breakdown.samples += samples;
            *breakdown.by_stage.entry(stage).or_default() += samples;
            breakdown.top.push((samples, symbol, stage));
        }
        breakdown.top.sort_by_key(|top| std::cmp::Reverse(top.0));
        breakdown.top.truncate(TOP_FUNCTIONS);
        breakdown
    }

    pub fn share(&self, stage: Stage) -> f64 {
        self.by_stage.get(&stage).copied().unwrap_or(0) as f64 / self.samples.max(1) as f64
    }
}

const TOP_FUNCTIONS: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_put_in_stages_by_crate() {
        let report = "\
    40.00%  400  [.] sha2::sha256::x86::digest_blocks
    20.00%  200  [.] <rustls::conn::ConnectionCommon<T>>::read_tls
    10.00%  100  [k] tcp_sendmsg
    10.00%  100  [.] __memmove_avx_unaligned_erms
    10.00%  100  [.] terra_sink::payload::incremental::Scanner::feed
    10.00%  100  [.] aws_smithy_runtime::client::orchestrator::invoke
";
        let breakdown = Breakdown::from_report(report);
        assert_eq!(breakdown.samples, 1000);
        assert_eq!(breakdown.share(Stage::Hashing), 0.4);
        assert_eq!(breakdown.share(Stage::Tls), 0.2);
        assert_eq!(breakdown.share(Stage::Kernel), 0.1);
        assert_eq!(breakdown.share(Stage::Allocation), 0.1);
        assert_eq!(breakdown.share(Stage::Validation), 0.1);
        assert_eq!(breakdown.share(Stage::SdkPipeline), 0.1);
        assert_eq!(breakdown.top[0].1, "sha2::sha256::x86::digest_blocks");
    }
}
