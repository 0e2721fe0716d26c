//! Child processes of a chaos run: finding the binaries, starting a process with its log in
//! a file, SIGKILL, SIGTERM with a grace period, and the tansu broker on a fixed port with
//! sqlite storage (so it can be killed and restarted with its data).

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Errors of process handling.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// A binary was not found.
    #[error("cannot find {name}: looked at {tried}; {hint}")]
    NotFound {
        /// Binary name.
        name: String,
        /// Paths tried.
        tried: String,
        /// What to do.
        hint: String,
    },
    /// Spawning or signalling failed.
    #[error("{what} {name}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// Process name.
        name: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The broker did not accept connections in time.
    #[error("the broker did not listen on {addr} within {secs} s; its log: {log}")]
    BrokerNotReady {
        /// Its address.
        addr: SocketAddr,
        /// Seconds waited.
        secs: u64,
        /// Log file.
        log: String,
    },
}

/// Finds `name`: `explicit` if given, else next to the running executable, else in its
/// parent folder (an integration test runs from `target/<profile>/deps`).
pub fn find_binary(name: &str, explicit: Option<&Path>) -> Result<PathBuf, ProcError> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        return Err(ProcError::NotFound {
            name: name.to_owned(),
            tried: p.display().to_string(),
            hint: "the path given does not name a file".to_owned(),
        });
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(Path::to_path_buf);
        for _ in 0..2 {
            let Some(d) = dir else { break };
            let candidate = d.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
            tried.push(candidate.display().to_string());
            dir = d.parent().map(Path::to_path_buf);
        }
    }
    Err(ProcError::NotFound {
        name: name.to_owned(),
        tried: tried.join(", "),
        hint: "build it first (cargo build -p m365-producer -p m365-consumer -p m365-forwarder -p m365-sim, with --release for a release run) or pass its path".to_owned(),
    })
}

/// Finds the tansu broker: `explicit`, else `tansu` on `PATH`, else `~/.cargo/bin/tansu`.
pub fn find_tansu(explicit: Option<&Path>) -> Result<PathBuf, ProcError> {
    if explicit.is_some() {
        return find_binary("tansu", explicit);
    }
    let mut tried = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("tansu");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        tried.push("tansu on PATH".to_owned());
    }
    if let Some(home) = std::env::var_os("HOME") {
        let candidate = PathBuf::from(home).join(".cargo/bin/tansu");
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    Err(ProcError::NotFound {
        name: "tansu".to_owned(),
        tried: tried.join(", "),
        hint: "install it (cargo install tansu --locked --features dynostore,libsql) or pass --broker-bin".to_owned(),
    })
}

/// A free loopback port (bound and released; good enough on a quiet test machine).
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// One managed process: how to start it, and the running child if any.
#[derive(Debug)]
pub struct Managed {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    log_dir: PathBuf,
    child: Option<Child>,
    runs: u32,
}

impl Managed {
    /// A process named `name` (used for its log files `<log_dir>/<name>-<run>.log`).
    pub fn new(name: &str, program: &Path, log_dir: &Path) -> Managed {
        Managed {
            name: name.to_owned(),
            program: program.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            log_dir: log_dir.to_path_buf(),
            child: None,
            runs: 0,
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Managed
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Managed {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs it in `dir`.
    pub fn cwd(mut self, dir: &Path) -> Managed {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many times it was started.
    pub fn runs(&self) -> u32 {
        self.runs
    }

    /// Log file of the current (or last) run.
    pub fn log_path(&self) -> PathBuf {
        self.log_dir
            .join(format!("{}-{:03}.log", self.name, self.runs.max(1)))
    }

    /// Starts it (stdout and stderr to its log file) unless it is running.
    pub fn start(&mut self) -> Result<(), ProcError> {
        if self.child.is_some() {
            return Ok(());
        }
        self.runs += 1;
        let io = |what, source| ProcError::Io {
            what,
            name: self.name.clone(),
            source,
        };
        let log =
            std::fs::File::create(self.log_path()).map_err(|e| io("creating the log of", e))?;
        let log2 = log.try_clone().map_err(|e| io("opening the log of", e))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let child = cmd.spawn().map_err(|e| io("starting", e))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether a child is running (and not yet reaped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// If the child ended on its own, reaps it and returns how it ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Result<(), ProcError> {
        if let Some(mut child) = self.child.take() {
            // An error means it already ended; `wait` reaps it either way.
            let _ = child.kill();
            child.wait().map_err(|source| ProcError::Io {
                what: "reaping",
                name: self.name.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// SIGTERM, wait up to `grace` for a clean exit, then SIGKILL. Returns the exit status
    /// of a clean stop.
    pub fn terminate(&mut self, grace: Duration) -> Result<Option<ExitStatus>, ProcError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if sent.is_ok_and(|s| s.success()) {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Ok(Some(status));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.kill()?;
        Ok(None)
    }

    /// Operating-system id of the running child.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        // Never leave a child behind.
        let _ = self.kill();
    }
}

/// The tansu broker of a run: fixed port, sqlite storage in its folder.
#[derive(Debug)]
pub struct Broker {
    proc: Managed,
    addr: SocketAddr,
}

impl Broker {
    /// A broker on 127.0.0.1:`port` keeping its data in `dir/broker.db`.
    pub fn new(bin: &Path, dir: &Path, log_dir: &Path, port: u16) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let proc = Managed::new("broker", bin, log_dir)
            .args([
                "broker",
                // tansu resolves the path relative to its working directory.
                "--storage-engine",
                "sqlite://broker.db",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .cwd(dir)
            // Its group coordinator's membership changes, for the investigation.
            .env("RUST_LOG", "error,tansu_broker::coordinator=info");
        Broker {
            proc,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// `host:port` for the stages' `bootstrap_servers`.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// Whether the broker process is running.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// How many times it was started.
    pub fn runs(&self) -> u32 {
        self.proc.runs()
    }

    /// The managed process (to detect exits).
    pub fn process(&mut self) -> &mut Managed {
        &mut self.proc
    }

    /// Starts it and waits until it accepts connections (the port may still be held for
    /// a moment after a kill, so a failed start is retried).
    pub fn start(&mut self, timeout: Duration) -> Result<(), ProcError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.proc.start()?;
            while Instant::now() < deadline {
                if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                    return Ok(());
                }
                if self.proc.exited().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if Instant::now() >= deadline {
                return Err(ProcError::BrokerNotReady {
                    addr: self.addr,
                    secs: timeout.as_secs(),
                    log: self.proc.log_path().display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) -> Result<(), ProcError> {
        self.proc.kill()
    }
}
