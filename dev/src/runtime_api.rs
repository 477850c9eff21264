//! A Lambda Runtime API emulator, and the compiled handler binaries running
//! against it exactly as they run in Lambda.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

struct Invocation {
    id: String,
    event: Vec<u8>,
    deadline_ms: u64,
    /// The X-Ray trace header Lambda gives each invocation.
    trace_id: String,
}

/// An X-Ray trace header of Lambda's form, distinct per invocation `n`.
fn trace_header(n: u64) -> String {
    let seconds = crate::now_ms() / 1000;
    let unique = u64::from(std::process::id()) << 32 | n;
    format!(
        "Root=1-{seconds:08x}-{:08x}{unique:016x};Parent={n:016x};Sampled=1",
        n as u32
    )
}

#[derive(Debug, Clone, PartialEq)]
pub enum InvocationResult {
    /// The handler's response body.
    Response(Value),
    /// The error the runtime reported for the invocation.
    Error(Value),
}

#[derive(Clone)]
struct Shared {
    pending: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Invocation>>>,
    /// Puts back an invocation whose runtime died while asking for it.
    requeue: mpsc::UnboundedSender<Invocation>,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<InvocationResult>>>>,
    first_poll: Arc<OnceLock<Instant>>,
    handed_out: Arc<Mutex<HandedOut>>,
}

/// Invocations a runtime has taken and not yet answered (nor timed out),
/// and the most there have been at once.
#[derive(Default)]
struct HandedOut {
    ids: HashSet<String>,
    peak: usize,
}

impl HandedOut {
    fn take(&mut self, id: &str) {
        self.ids.insert(id.to_owned());
        self.peak = self.peak.max(self.ids.len());
    }

    /// Answered, or given up on.
    fn settle(&mut self, id: &str) {
        self.ids.remove(id);
    }
}

pub struct RuntimeApi {
    pub addr: SocketAddr,
    queue: mpsc::UnboundedSender<Invocation>,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<InvocationResult>>>>,
    counter: Mutex<u64>,
    /// Every trace header handed out, in order.
    trace_headers: Mutex<Vec<String>>,
    first_poll: Arc<OnceLock<Instant>>,
    handed_out: Arc<Mutex<HandedOut>>,
    task: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    pub async fn start() -> RuntimeApi {
        let (queue, pending) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(HashMap::new()));
        let first_poll = Arc::new(OnceLock::new());
        let handed_out = Arc::new(Mutex::new(HandedOut::default()));
        let shared = Shared {
            pending: Arc::new(tokio::sync::Mutex::new(pending)),
            requeue: queue.clone(),
            waiting: Arc::clone(&waiting),
            first_poll: Arc::clone(&first_poll),
            handed_out: Arc::clone(&handed_out),
        };
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(fail))
            .with_state(shared);
        let (addr, task) = serve_with_peers(app).await;
        RuntimeApi {
            addr,
            queue,
            waiting,
            counter: Mutex::new(0),
            trace_headers: Mutex::new(Vec::new()),
            first_poll,
            handed_out,
            task,
        }
    }

    /// When a handler first asked for an event: the end of its cold start.
    pub fn first_poll(&self) -> Option<Instant> {
        self.first_poll.get().copied()
    }

    /// The most invocations runtimes had taken and not yet answered at one
    /// time: with one handler process, how many it ran at once.
    pub fn peak_at_once(&self) -> usize {
        self.handed_out.lock().expect("not poisoned").peak
    }

    /// The X-Ray trace header of each invocation so far, in order.
    pub fn trace_headers(&self) -> Vec<String> {
        self.trace_headers.lock().expect("not poisoned").clone()
    }

    /// Delivers `event` to the next `/next` call and waits for its result.
    pub async fn invoke(&self, event: &Value, timeout: Duration) -> InvocationResult {
        self.try_invoke(event, timeout)
            .await
            .unwrap_or_else(|| panic!("invocation: no response within {timeout:?} + 5 s"))
    }

    /// As [`RuntimeApi::invoke`], but `None` when no answer came in time (as
    /// Lambda, which then counts the invocation as timed out).
    pub async fn try_invoke(&self, event: &Value, timeout: Duration) -> Option<InvocationResult> {
        let (id, trace_id) = {
            let mut counter = self.counter.lock().expect("not poisoned");
            *counter += 1;
            (format!("req-{counter}"), trace_header(*counter))
        };
        self.trace_headers
            .lock()
            .expect("not poisoned")
            .push(trace_id.clone());
        let (sender, receiver) = oneshot::channel();
        self.waiting
            .lock()
            .expect("not poisoned")
            .insert(id.clone(), sender);
        let deadline_ms = crate::now_ms() + timeout.as_millis() as u64;
        self.queue
            .send(Invocation {
                id: id.clone(),
                event: serde_json::to_vec(event).expect("serialisable event"),
                deadline_ms,
                trace_id,
            })
            .expect("emulator running");
        match tokio::time::timeout(timeout + Duration::from_secs(5), receiver).await {
            Ok(Ok(result)) => Some(result),
            Ok(Err(_)) => panic!("invocation {id} was dropped"),
            Err(_) => {
                self.waiting.lock().expect("not poisoned").remove(&id);
                self.handed_out.lock().expect("not poisoned").settle(&id);
                None
            }
        }
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn next(
    State(shared): State<Shared>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> impl IntoResponse {
    shared.first_poll.get_or_init(Instant::now);
    let invocation = shared.pending.lock().await.recv().await;
    let Some(invocation) = invocation else {
        return (StatusCode::GONE, HeaderMap::new(), Vec::new());
    };
    if peer.is_gone() {
        // A handler killed while it waited here (tests replace instances):
        // the server has not dropped its request yet, and the invocation
        // would go nowhere. The next runtime to ask gets it.
        let _ = shared.requeue.send(invocation);
        return (StatusCode::GONE, HeaderMap::new(), Vec::new());
    }
    shared
        .handed_out
        .lock()
        .expect("not poisoned")
        .take(&invocation.id);
    let mut headers = HeaderMap::new();
    let header = |v: &str| HeaderValue::from_str(v).expect("valid header");
    headers.insert("lambda-runtime-aws-request-id", header(&invocation.id));
    headers.insert(
        "lambda-runtime-deadline-ms",
        header(&invocation.deadline_ms.to_string()),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        header("arn:aws:lambda:us-east-1:123456789012:function:terra-sink"),
    );
    headers.insert("lambda-runtime-trace-id", header(&invocation.trace_id));
    headers.insert("content-type", header("application/json"));
    (StatusCode::OK, headers, invocation.event)
}

/// The socket of the runtime that made a request, to see whether it is
/// still there.
#[derive(Clone)]
struct Peer(Option<Arc<std::net::TcpStream>>);

impl Peer {
    /// The runtime closed its end: it exited or was killed.
    fn is_gone(&self) -> bool {
        let Some(socket) = &self.0 else {
            return false;
        };
        match socket.peek(&mut [0u8; 1]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        use std::os::fd::AsFd;
        let socket = stream
            .io()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(std::net::TcpStream::from)
            .filter(|socket| socket.set_nonblocking(true).is_ok());
        if let Some(socket) = &socket {
            // The same socket: as `crate::serve_on_loopback` does.
            let _ = socket.set_nodelay(true);
        }
        Peer(socket.map(Arc::new))
    }
}

/// As [`crate::serve_on_loopback`], with each request's [`Peer`].
async fn serve_with_peers(app: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the runtime API");
    let addr = listener.local_addr().expect("bound address");
    let task = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
            .await
            .unwrap_or_else(|e| panic!("runtime API stopped: {e}"));
    });
    (addr, task)
}

fn finish(shared: &Shared, id: &str, result: InvocationResult) -> StatusCode {
    shared.handed_out.lock().expect("not poisoned").settle(id);
    match shared.waiting.lock().expect("not poisoned").remove(id) {
        Some(sender) => {
            let _ = sender.send(result);
            StatusCode::ACCEPTED
        }
        None => StatusCode::NOT_FOUND,
    }
}

fn json_or_text(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

async fn respond(State(shared): State<Shared>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    finish(
        &shared,
        &id,
        InvocationResult::Response(json_or_text(&body)),
    )
}

async fn fail(State(shared): State<Shared>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    finish(&shared, &id, InvocationResult::Error(json_or_text(&body)))
}

/// A handler binary running against a [`RuntimeApi`], its output collected.
/// Like Lambda, the harness kills it once its memory passes the function's
/// (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE` in its environment).
pub struct HandlerProcess {
    child: Child,
    output: Arc<Mutex<String>>,
    killed_for_memory: Arc<AtomicBool>,
    /// The highest peak resident memory its watcher saw, in KiB.
    peak_memory_kib: Arc<AtomicU64>,
    /// Set before the process is reaped, so its watcher stops first.
    exited: Arc<AtomicBool>,
}

/// The line the harness writes into a handler's output when it kills it for
/// memory, as Lambda reports `Runtime exited ... signal: killed` with
/// `Max Memory Used` at the limit.
pub const KILLED_FOR_MEMORY: &str = "harness: killed for exceeding the function's memory";

/// The variables Lambda sets for every function, plus test credentials.
pub fn lambda_environment(runtime_api: SocketAddr) -> Vec<(String, String)> {
    [
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", "terra-sink".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
        // Lambda names its X-Ray daemon; here the daemon's usual local
        // address, where nothing listens unless a test starts an
        // `XrayDaemon` and names that instead.
        ("AWS_XRAY_DAEMON_ADDRESS", "127.0.0.1:2000".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// How a handler binary is started: directly, or under a user-mode emulator
/// when it was built for another architecture (the arm64 artifact on an
/// x86_64 machine).
#[derive(Debug, Clone)]
pub struct Executable {
    binary: String,
    emulator: Option<String>,
}

impl Executable {
    pub fn native(binary: &str) -> Executable {
        Executable {
            binary: binary.to_owned(),
            emulator: None,
        }
    }

    /// `binary` run by `emulator` (e.g. `qemu-aarch64-static`). No `-L`
    /// sysroot is passed: the binary's loader and libc are found at `/`
    /// (Debian's `libc6:arm64`), one glibc build, as on Lambda. A cross
    /// sysroot's loader beside the multiarch libc mixes two builds and hangs
    /// in the first `pthread_create`.
    pub fn emulated(emulator: &str, binary: &str) -> Executable {
        Executable {
            binary: binary.to_owned(),
            emulator: Some(emulator.to_owned()),
        }
    }

    fn command(&self) -> Command {
        match &self.emulator {
            None => Command::new(&self.binary),
            Some(emulator) => {
                let mut command = Command::new(emulator);
                command.arg(&self.binary);
                command
            }
        }
    }
}

impl HandlerProcess {
    /// Starts `binary` with only `env` set (nothing leaks in from the test's
    /// own environment).
    pub fn spawn(binary: &str, env: &[(String, String)]) -> HandlerProcess {
        HandlerProcess::start(&Executable::native(binary), env)
    }

    /// As [`HandlerProcess::spawn`], for a binary that may need an emulator.
    pub fn start(executable: &Executable, env: &[(String, String)]) -> HandlerProcess {
        HandlerProcess::spawn_into(executable, env, Arc::new(Mutex::new(String::new())))
    }

    /// The same, its output lines appended to `output` as they come.
    fn spawn_into(
        executable: &Executable,
        env: &[(String, String)],
        output: Arc<Mutex<String>>,
    ) -> HandlerProcess {
        let binary = &executable.binary;
        let mut child = executable
            .command()
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e}"));
        collect(
            child.stdout.take().expect("piped stdout"),
            Arc::clone(&output),
        );
        collect(
            child.stderr.take().expect("piped stderr"),
            Arc::clone(&output),
        );
        let killed_for_memory = Arc::new(AtomicBool::new(false));
        let exited = Arc::new(AtomicBool::new(false));
        let peak_memory_kib = Arc::new(AtomicU64::new(0));
        let memory_mib = env
            .iter()
            .find(|(name, _)| name == "AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
            .and_then(|(_, mb)| mb.parse::<u64>().ok());
        if let Some(memory_mib) = memory_mib {
            watch_memory(
                child.id(),
                memory_mib,
                Watch {
                    killed: Arc::clone(&killed_for_memory),
                    peak_kib: Arc::clone(&peak_memory_kib),
                    exited: Arc::clone(&exited),
                    output: Arc::clone(&output),
                },
            );
        }
        HandlerProcess {
            child,
            output,
            killed_for_memory,
            peak_memory_kib,
            exited,
        }
    }

    /// Whether the harness killed it for passing the function's memory.
    pub fn killed_for_memory(&self) -> bool {
        self.killed_for_memory.load(Ordering::SeqCst)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far, stdout and stderr interleaved.
    pub fn output(&self) -> String {
        self.output.lock().expect("not poisoned").clone()
    }

    /// Kills the process, as Lambda does with an instance that crashed or ran
    /// out of memory; its output stays readable.
    pub fn kill(&mut self) {
        self.exited.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let started = std::time::Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Handler processes sharing one Runtime API, as a function's instances do.
pub struct HandlerPool {
    executable: Executable,
    env: Vec<(String, String)>,
    processes: Mutex<Vec<HandlerProcess>>,
    /// Every instance's lines in the order they came, so that the last line
    /// about a message is the latest, whichever instance wrote it.
    output: Arc<Mutex<String>>,
}

impl HandlerPool {
    pub fn spawn(binary: &str, env: &[(String, String)], instances: usize) -> HandlerPool {
        let output = Arc::new(Mutex::new(String::new()));
        let executable = Executable::native(binary);
        HandlerPool {
            env: env.to_vec(),
            processes: Mutex::new(
                (0..instances.max(1))
                    .map(|_| HandlerProcess::spawn_into(&executable, env, Arc::clone(&output)))
                    .collect(),
            ),
            executable,
            output,
        }
    }

    /// Kills the first instance, mid-batch if it is working on one, and
    /// starts a new one in its place.
    pub fn kill_and_replace_one(&self) {
        let mut processes = self.processes.lock().expect("not poisoned");
        processes[0].kill();
        processes.push(HandlerProcess::spawn_into(
            &self.executable,
            &self.env,
            Arc::clone(&self.output),
        ));
    }

    /// Instances the harness killed for passing the function's memory.
    pub fn killed_for_memory(&self) -> usize {
        self.processes
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|p| p.killed_for_memory())
            .count()
    }

    /// The highest peak resident memory of any instance, in MiB, as far as
    /// their memory watchers saw (they poll every 5 ms).
    pub fn peak_memory_mib(&self) -> u64 {
        self.processes
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|p| p.peak_memory_kib.load(Ordering::SeqCst) / 1024)
            .max()
            .unwrap_or(0)
    }

    /// Everything every instance printed, killed ones included, in the
    /// order it came.
    pub fn output(&self) -> String {
        self.output.lock().expect("not poisoned").clone()
    }
}

/// What a memory watcher shares with its process's owner.
struct Watch {
    killed: Arc<AtomicBool>,
    peak_kib: Arc<AtomicU64>,
    exited: Arc<AtomicBool>,
    output: Arc<Mutex<String>>,
}

/// Polls the process's peak resident set (VmHWM, a high-water mark, so no
/// peak between two polls is missed) and kills it once it passes
/// `memory_mib`, as Lambda does with a function over its memory size.
fn watch_memory(pid: u32, memory_mib: u64, watch: Watch) {
    let limit_kib = memory_mib * 1024;
    let Watch {
        killed,
        peak_kib: peak,
        exited,
        output,
    } = watch;
    std::thread::spawn(move || {
        let status = format!("/proc/{pid}/status");
        while let Ok(text) = std::fs::read_to_string(&status) {
            if exited.load(Ordering::SeqCst) {
                return;
            }
            // A zombie has no memory lines: it has exited.
            let Some(peak_kib) = proc_field_kib(&text, "VmHWM:") else {
                return;
            };
            peak.fetch_max(peak_kib, Ordering::SeqCst);
            if peak_kib > limit_kib {
                // SAFETY: kill(2) with a pid this harness spawned and still
                // owns (the Child is not yet reaped, so the pid is not reused).
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                killed.store(true, Ordering::SeqCst);
                let mut output = output.lock().expect("not poisoned");
                output.push_str(&format!(
                    "{KILLED_FOR_MEMORY}: peak {} MiB, memory {memory_mib} MiB\n",
                    peak_kib / 1024
                ));
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

/// A `kB` figure from `/proc/<pid>/status`.
pub fn proc_field_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find(|line| line.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn collect(stream: impl Read + Send + 'static, output: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut output = output.lock().expect("not poisoned");
            output.push_str(&line);
            output.push('\n');
        }
    });
}

impl Drop for HandlerProcess {
    fn drop(&mut self) {
        // The watcher must not outlive the pid it watches.
        self.exited.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// The harness kills a process whose memory passes the function's, and
    /// only such a process.
    #[test]
    fn a_handler_over_its_memory_size_is_killed() {
        let hungry = |mib: u64| {
            let script = format!(
                "import time; held = bytearray({mib} * 1024 * 1024); time.sleep(1.5); print('done')"
            );
            let mut child = Command::new("/usr/bin/python3")
                .args(["-c", &script])
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 runs");
            let output = Arc::new(Mutex::new(String::new()));
            collect(child.stdout.take().expect("piped"), Arc::clone(&output));
            let killed = Arc::new(AtomicBool::new(false));
            let peak = Arc::new(AtomicU64::new(0));
            watch_memory(
                child.id(),
                128,
                Watch {
                    killed: Arc::clone(&killed),
                    peak_kib: Arc::clone(&peak),
                    exited: Arc::new(AtomicBool::new(false)),
                    output: Arc::clone(&output),
                },
            );
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            let output = output.lock().expect("not poisoned").clone();
            (
                killed.load(Ordering::SeqCst),
                peak.load(Ordering::SeqCst) / 1024,
                output,
            )
        };
        let (killed, peak_mib, output) = hungry(256);
        assert!(killed, "peak {peak_mib} MiB: {output}");
        assert!(
            output.contains(KILLED_FOR_MEMORY) && !output.contains("done"),
            "{output}"
        );
        let (killed, peak_mib, output) = hungry(32);
        assert!(!killed, "peak {peak_mib} MiB: {output}");
        assert!(output.contains("done") && peak_mib >= 32, "{output}");
    }

    /// A runtime killed while it waits on `/next` (as tests kill handlers)
    /// must not take the next invocation with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_invocation_is_not_lost_to_a_runtime_that_died_waiting() {
        let runtime = RuntimeApi::start().await;
        let base = format!("http://{}/2018-06-01/runtime/invocation", runtime.addr);
        for _ in 0..20 {
            let mut dead = tokio::net::TcpStream::connect(runtime.addr)
                .await
                .expect("connect");
            dead.write_all(
                b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nhost: runtime\r\n\r\n",
            )
            .await
            .expect("ask for work");
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(dead);
            let live = {
                let base = base.clone();
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let next = client
                        .get(format!("{base}/next"))
                        .send()
                        .await
                        .expect("next");
                    let id = next.headers()["lambda-runtime-aws-request-id"]
                        .to_str()
                        .expect("request id")
                        .to_owned();
                    let event = next.bytes().await.expect("event");
                    client
                        .post(format!("{base}/{id}/response"))
                        .body(event)
                        .send()
                        .await
                        .expect("respond");
                })
            };
            let answer = runtime
                .try_invoke(&serde_json::json!({"n": 1}), Duration::from_secs(2))
                .await;
            assert_eq!(
                answer,
                Some(InvocationResult::Response(serde_json::json!({"n": 1})))
            );
            live.await.expect("live runtime");
        }
    }
}
