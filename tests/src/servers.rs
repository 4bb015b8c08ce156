//! Real servers for the end-to-end tests, started on 127.0.0.1 with free ports and stopped
//! when dropped: the Kafka-protocol broker `tansu` (sqlite storage) and a throwaway
//! PostgreSQL cluster. `scripts/install-deps` installs both; if a binary is still missing,
//! [`Tansu::start`] / [`Postgres::start`] return `None` after printing why, and the test
//! skips itself with that message.
//!
//! PostgreSQL refuses to run as root (CI does), so as root the cluster runs as the
//! `postgres` user (`runuser`), in a directory owned by it.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}

fn wait_listening(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn find_tansu() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/tansu"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// A tansu broker with sqlite storage in its own temporary directory.
pub struct Tansu {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Tansu {
    /// Starts a broker, or prints why it cannot and returns `None`.
    pub fn start() -> Option<Tansu> {
        let Some(bin) = find_tansu() else {
            eprintln!(
                "SKIP: `tansu` (the Kafka-protocol broker) is not installed; run scripts/install-deps"
            );
            return None;
        };
        let mut t = Tansu {
            dir: tempfile::tempdir().expect("temporary directory for tansu"),
            bin,
            port: free_port(),
            child: None,
        };
        t.launch();
        Some(t)
    }

    fn launch(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("tansu log file");
        // The sqlite URL's path is relative to the working directory.
        let child = Command::new(&self.bin)
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting tansu");
        self.child = Some(child);
        assert!(
            wait_listening(self.port, Duration::from_secs(30)),
            "tansu did not listen on port {} within 30 s; log:\n{}",
            self.port,
            self.log()
        );
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (`kill -9`); its sqlite database stays.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and database.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// The broker's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn pg_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A throwaway PostgreSQL cluster (trust authentication, user `postgres`).
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

impl Postgres {
    /// Creates and starts a cluster, or prints why it cannot and returns `None`.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = pg_bin_dir() else {
            eprintln!(
                "SKIP: PostgreSQL server binaries (initdb, pg_ctl) are not installed under \
                 /usr/lib/postgresql; run scripts/install-deps"
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("ember-pg")
            .tempdir()
            .expect("temporary directory for PostgreSQL");
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "chown of {} to postgres failed",
                dir.path().display()
            );
        }
        let pg = Postgres {
            dir,
            bin,
            port: free_port(),
            as_postgres,
            running: false,
        };
        let data = pg.data();
        let out = pg
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = pg;
        pg.start_server();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn start_server(&mut self) {
        let options = format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.dir.path().display(),
            self.port
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-o", &options, "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-w", "start"])
            .output()
            .expect("running pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        self.running = true;
    }

    /// Stops the server (`immediate`: like a crash, no shutdown checkpoint).
    pub fn stop(&mut self, immediate: bool) {
        if !self.running {
            return;
        }
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args([
                "-m",
                if immediate { "immediate" } else { "fast" },
                "-w",
                "stop",
            ])
            .output();
        self.running = false;
    }

    /// Stops (immediately) and starts the server again, same port and data.
    pub fn restart(&mut self) {
        self.stop(true);
        self.start_server();
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop(false);
    }
}
