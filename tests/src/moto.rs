//! A real S3-compatible server for tests: moto's `moto_server`, started on 127.0.0.1 with a
//! free port, one per test process, stopped when the process exits.
//!
//! Standard library only, so that other crates' tests include this file with `#[path]`
//! (the `wal` and `checkpoint` suites) without depending on this crate.
//!
//! Where the server comes from: `scripts/install-deps` installs `moto[server]` into
//! `.test-deps/venv`, and `scripts/test-all` exports that directory as `EMBER_TEST_DEPS`.
//! Without `EMBER_TEST_DEPS` the workspace's `.test-deps` is looked up. If no server is
//! installed, [`Moto::shared`] returns `None` and the callers print a skip message saying
//! how to install it; CI always installs it, so there the tests run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The bucket every test uses (each test takes its own prefix in it).
pub const BUCKET: &str = "ember-test";

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    _child: Mutex<Child>,
}

fn moto_binary() -> Option<PathBuf> {
    let deps = std::env::var_os("EMBER_TEST_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(".test-deps")
        });
    let binary = deps.join("venv").join("bin").join("moto_server");
    binary.is_file().then_some(binary)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One unsigned HTTP/1.1 request (moto accepts them); returns the status code.
fn http(endpoint_port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", endpoint_port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{endpoint_port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {response:?}")))
}

impl Moto {
    /// The process's server, started on first use; `None` (after printing why) if moto is
    /// not installed. Panics if it is installed but does not start: that is a failure,
    /// not a reason to skip.
    pub fn shared() -> Option<&'static Moto> {
        static MOTO: OnceLock<Option<Moto>> = OnceLock::new();
        MOTO.get_or_init(|| {
            let Some(binary) = moto_binary() else {
                eprintln!(
                    "SKIPPED: moto_server is not installed (run scripts/install-deps, or set \
                     EMBER_TEST_DEPS); the S3 tests against a real server did not run"
                );
                return None;
            };
            Some(
                Moto::start(&binary, false)
                    .unwrap_or_else(|e| panic!("moto_server did not start: {e}")),
            )
        })
        .as_ref()
    }

    /// A second server of the process that enforces authentication (moto's
    /// `INITIAL_NO_AUTH_ACTION_COUNT=0`): every request signed with keys it does not know
    /// is refused with `InvalidAccessKeyId`, as S3 refuses wrong credentials. `None` like
    /// [`Moto::shared`].
    pub fn with_auth() -> Option<&'static Moto> {
        static MOTO: OnceLock<Option<Moto>> = OnceLock::new();
        MOTO.get_or_init(|| {
            let binary = moto_binary()?;
            Some(
                Moto::start(&binary, true)
                    .unwrap_or_else(|e| panic!("moto_server (with auth) did not start: {e}")),
            )
        })
        .as_ref()
    }

    fn start(binary: &std::path::Path, auth: bool) -> std::io::Result<Moto> {
        let port = free_port()?;
        // The server lives as long as this process: the shell waits on its stdin, which is
        // this process's pipe; when the test process exits (even killed) the pipe closes
        // and the shell kills the server.
        let env = if auth {
            "INITIAL_NO_AUTH_ACTION_COUNT=0 "
        } else {
            ""
        };
        let script = format!(
            "{env}\"{}\" -H 127.0.0.1 -p {port} >/dev/null 2>&1 & pid=$!; read _; kill $pid",
            binary.display()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match http(port, "PUT", &format!("/{BUCKET}")) {
                Ok(200) => break,
                // With authentication, the unsigned request is refused: the server is up.
                Ok(_) if auth => break,
                Ok(code) => {
                    return Err(std::io::Error::other(format!(
                        "creating bucket {BUCKET} answered HTTP {code}"
                    )));
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(std::io::Error::other(format!(
                        "no answer on 127.0.0.1:{port} within 60 s: {e}"
                    )));
                }
            }
        }
        Ok(Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            _child: Mutex::new(child),
        })
    }

    /// The `object_store` S3 settings for this server (dummy credentials, which moto
    /// accepts), as `(key, value)` pairs for `wal::objstore::ObjectOptions::s3`.
    pub fn s3_settings(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "testing"),
            ("aws_secret_access_key", "testing"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// A fresh prefix URL in the test bucket: `s3://ember-test/<test>-<n>`.
    pub fn fresh_url(&self, test: &str) -> String {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("s3://{BUCKET}/{test}-{}-{n}", std::process::id())
    }
}
