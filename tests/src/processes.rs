//! Real `ember` processes for the crash tests: finding (and building) the binary, starting
//! an `ember executor` and waiting for its READY line, and signalling it (`kill -9`,
//! SIGTERM, SIGSTOP/SIGCONT).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `ember` binary of this workspace, built once per test process.
///
/// `EMBER_BIN` overrides the path. Otherwise `cargo build -p engine --bin ember` runs (a
/// no-op when it is up to date) in the profile of the running test binary, so a test never
/// runs a stale executor. Panics with the build's output if the build fails: nothing in
/// this suite can run without the binary.
pub fn ember_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("EMBER_BIN") {
            return PathBuf::from(path);
        }
        // target/<profile>/deps/<test binary> -> target/<profile>
        let exe = std::env::current_exe().expect("path of the running test binary");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binaries live in target/<profile>/deps")
            .to_owned();
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(workspace)
            .args(["build", "--quiet", "-p", "engine", "--bin", "ember"])
            .args(match profile {
                "debug" => vec![],
                "release" => vec!["--release".to_owned()],
                other => vec!["--profile".to_owned(), other.to_owned()],
            })
            .env(
                "CARGO_TARGET_DIR",
                profile_dir.parent().expect("target dir"),
            );
        let output = build
            .output()
            .expect("run cargo build for the ember binary");
        assert!(
            output.status.success(),
            "building ember failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let bin = profile_dir.join("ember");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
}

/// A running `ember executor`. Killed with SIGKILL when dropped, if still running.
pub struct Executor {
    child: Child,
    /// The address it listens on, from its READY line.
    pub addr: String,
    args: Vec<String>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    /// Collects stderr; joined once the process is gone, so the log is complete.
    log_reader: Option<std::thread::JoinHandle<()>>,
}

impl Executor {
    /// Starts `ember executor --listen <listen> <extra...>` and waits (at most 20 s) for
    /// its READY line. Its stderr is collected (see [`Executor::log`]).
    pub fn start(listen: &str, extra: &[&str]) -> Executor {
        let mut args = vec![
            "executor".to_owned(),
            "--listen".to_owned(),
            listen.to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::start_with(args)
    }

    fn start_with(args: Vec<String>) -> Executor {
        let mut child = Command::new(ember_bin())
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ember executor");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log_reader = {
            let log = std::sync::Arc::clone(&log);
            let mut stderr = child.stderr.take().expect("piped stderr");
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    log.lock()
                        .expect("log lock")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("READY ") {
                        break addr.trim().to_owned();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait();
                    panic!(
                        "ember {} printed no READY line ({status:?}); stderr:\n{}",
                        args.join(" "),
                        log.lock().expect("log lock")
                    );
                }
            }
        };
        Executor {
            child,
            addr,
            args,
            log,
            log_reader: Some(log_reader),
        }
    }

    /// Starts a new executor with the same arguments, listening on the address this one
    /// had (so clients reconnect to it), after this one is gone.
    pub fn restart(&mut self) {
        assert!(
            self.child.try_wait().expect("poll child").is_some(),
            "restart a running executor"
        );
        let mut args = self.args.clone();
        if let Some(i) = args.iter().position(|a| a == "--listen") {
            args[i + 1] = self.addr.clone();
        }
        let addr = self.addr.clone();
        *self = Self::start_with(args);
        assert_eq!(self.addr, addr);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.finish_log();
    }

    fn finish_log(&mut self) {
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
    }

    /// Sends a signal by name (`TERM`, `INT`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// SIGSTOP, then waits until every thread of the process is stopped (a thread already
    /// running in user space finishes its time slice first, and could still answer a
    /// request sent right after the signal).
    pub fn stop(&self) {
        self.signal("STOP");
        let deadline = Instant::now() + Duration::from_secs(10);
        let task_dir = format!("/proc/{}/task", self.pid());
        loop {
            let all_stopped = std::fs::read_dir(&task_dir)
                .map(|tasks| {
                    tasks.flatten().all(|task| {
                        let stat =
                            std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                        // The state is the first field after the parenthesised name.
                        stat.rsplit_once(')')
                            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
                    })
                })
                .unwrap_or(false);
            if all_stopped {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "executor {} did not stop",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                self.finish_log();
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the executor logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Resume a stopped process first so the kill is not left pending.
            let _ = Command::new("kill")
                .args(["-CONT", &self.pid().to_string()])
                .status();
            self.kill9();
        }
    }
}

/// Runs `ember <args>` to completion (at most `timeout`) and returns its exit status,
/// stdout and stderr.
pub fn run_ember(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = Command::new(ember_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ember");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll ember") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("ember {} did not finish within {timeout:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    (status, out, err)
}
