//! Child processes of the whole-system benchmark: the router, the load generator,
//! `redis-server` and `redis-benchmark`. Each is started by us on loopback, waited
//! for with a deadline, stopped by its own pid (SIGTERM, then SIGKILL when it does
//! not stop in time) and reaped with `wait4`, which gives that one child's resource
//! usage (user + system CPU time, all its threads) as `getrusage` would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a child ended and what it cost.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Usage {
    pub user_s: f64,
    pub sys_s: f64,
    /// Exited with status 0.
    pub success: bool,
    /// Exit code when it exited (not killed by a signal).
    pub code: Option<i32>,
    /// We had to SIGKILL it.
    pub killed: bool,
    pub wall_s: f64,
}

impl Usage {
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }
}

fn timeval_s(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Reaps `pid` without blocking: its status and usage, once it has exited.
fn try_reap(pid: u32, block: bool) -> Option<(libc::c_int, libc::rusage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid out-parameter; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: wait4 on our own child with pointers to locals.
        let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, flags, &mut usage) };
        if rc == pid as libc::pid_t {
            return Some((status, usage));
        }
        if rc == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// A child we own: killed and reaped on drop unless it was waited for. Unlike the
/// tests' `yellowstone_tests::KillOnDrop` it reaps with `wait4` to read the child's
/// CPU time (`Usage`), which is what the benchmark measures; std's `Child::wait`
/// discards the rusage.
pub struct Owned {
    child: Child,
    started: Instant,
    reaped: bool,
}

impl Owned {
    pub fn spawn(command: &mut Command) -> Result<Owned, String> {
        let child = command
            .spawn()
            .map_err(|e| format!("spawn {:?}: {e}", command.get_program()))?;
        Ok(Owned {
            child,
            started: Instant::now(),
            reaped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits up to `timeout` for it to exit by itself; then SIGTERM, `grace`, SIGKILL.
    pub fn wait(mut self, timeout: Duration, grace: Duration) -> Usage {
        let usage = self.wait_inner(timeout, grace);
        self.reaped = true;
        usage
    }

    /// SIGTERM now, then waits up to `grace` before SIGKILL.
    pub fn terminate(mut self, grace: Duration) -> Usage {
        signal(self.pid(), libc::SIGTERM);
        let usage = self.wait_inner(Duration::ZERO, grace);
        self.reaped = true;
        usage
    }

    fn wait_inner(&mut self, timeout: Duration, grace: Duration) -> Usage {
        let pid = self.pid();
        let mut killed = false;
        let poll = |until: Instant| -> Option<(libc::c_int, libc::rusage)> {
            loop {
                if let Some(done) = try_reap(pid, false) {
                    return Some(done);
                }
                if Instant::now() >= until {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let mut done = poll(Instant::now() + timeout);
        if done.is_none() {
            signal(pid, libc::SIGTERM);
            done = poll(Instant::now() + grace);
        }
        if done.is_none() {
            killed = true;
            signal(pid, libc::SIGKILL);
            done = try_reap(pid, true);
        }
        let wall_s = self.started.elapsed().as_secs_f64();
        match done {
            Some((status, usage)) => {
                let exited = libc::WIFEXITED(status);
                let code = exited.then(|| libc::WEXITSTATUS(status));
                Usage {
                    user_s: timeval_s(usage.ru_utime),
                    sys_s: timeval_s(usage.ru_stime),
                    success: code == Some(0),
                    code,
                    killed,
                    wall_s,
                }
            }
            None => Usage {
                killed,
                wall_s,
                ..Usage::default()
            },
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if !self.reaped {
            signal(self.pid(), libc::SIGKILL);
            let _ = try_reap(self.pid(), true);
        }
    }
}

/// CPU seconds (user + system, all threads) a live process has used, from
/// /proc/PID/stat.
pub fn proc_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) / ticks)
}

/// `PATH` lookup.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A free loopback TCP port (bound then released; the caller retries on a race).
pub fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a command to completion with a deadline (killed by pid past it); returns
/// its stdout, or an error with its stderr.
pub fn run_capture(command: &mut Command, timeout: Duration) -> Result<String, String> {
    let out = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let err = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    command
        .stdin(Stdio::null())
        .stdout(out.reopen().map_err(|e| e.to_string())?)
        .stderr(err.reopen().map_err(|e| e.to_string())?);
    let program = format!("{:?}", command.get_program());
    let usage = Owned::spawn(command)?.wait(timeout, Duration::from_secs(2));
    let stdout = std::fs::read_to_string(out.path()).unwrap_or_default();
    if usage.success {
        Ok(stdout)
    } else {
        Err(format!(
            "{program} failed ({}): {}",
            if usage.killed {
                format!("killed after {timeout:?}")
            } else {
                format!("exit {:?}", usage.code)
            },
            tail(err.path(), 20)
        ))
    }
}

/// The router's READY line.
#[derive(Clone, Debug)]
pub struct Ready {
    pub listen: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub router: String,
}

/// The router's READY line, through the one READY-line parser
/// (`yellowstone_tests::ready_fields`).
pub fn parse_ready(line: &str) -> Option<Ready> {
    let mut listen = None;
    let mut metrics = None;
    let mut router = String::new();
    for (key, value) in yellowstone_tests::ready_fields(line)? {
        match key {
            "listen" => listen = value.parse().ok(),
            "metrics" => metrics = value.parse().ok(),
            "router" => router = value.to_string(),
            _ => {}
        }
    }
    Some(Ready {
        listen: listen?,
        metrics,
        router,
    })
}

/// What a router child is started with.
#[derive(Clone, Debug)]
pub struct RouterSpec {
    pub backend: String,
    pub durability: String,
    pub operator: String,
    /// market.genesis_ms (Unix ms of block 0).
    pub genesis_ms: u64,
    /// More configuration, appended to the router's TOML file after `[market]`
    /// (whole sections, e.g. `[journal]\nsnapshot_every_blocks = 1\n`).
    pub extra_toml: String,
}

/// A running `yellowstone-router run` on loopback with its own data directory.
pub struct RouterChild {
    process: Owned,
    pub ready: Ready,
    stderr_path: PathBuf,
    /// Removed after the router stops (field order: dropped after `process`).
    _dir: tempfile::TempDir,
}

/// How long a router may take to print READY.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

impl RouterChild {
    pub fn start(bin: &Path, spec: &RouterSpec, work: &Path) -> Result<RouterChild, String> {
        let dir = tempfile::Builder::new()
            .prefix("router-")
            .tempdir_in(work)
            .map_err(|e| format!("router directory: {e}"))?;
        let config = dir.path().join("router.toml");
        std::fs::write(
            &config,
            // R-SESSION-1: the loadgen's users are application gateways with many
            // sessions each (loadgen's SIM_USER_SESSIONS_OPEN_MAX).
            format!(
                "[market]\ngenesis_ms = {}\nuser_sessions_open_max = 4096\n{}",
                spec.genesis_ms, spec.extra_toml
            ),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        let data_dir = dir.path().join("data");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
        let mut command = Command::new(bin);
        command
            .arg("run")
            .args(["--config".as_ref(), config.as_os_str()])
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--backend", &spec.backend, "--durability", &spec.durability])
            .args(["--operator", &spec.operator])
            .args(["--data-dir".as_ref(), data_dir.as_os_str()])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut process = Owned::spawn(&mut command)?;
        let stdout = process
            .child_mut()
            .stdout
            .take()
            .ok_or("router stdout not piped")?;
        let receive = yellowstone_tests::forward_lines(stdout);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match receive.recv_timeout(left) {
                Ok(line) => {
                    if let Some(ready) = parse_ready(&line) {
                        return Ok(RouterChild {
                            process,
                            ready,
                            stderr_path,
                            _dir: dir,
                        });
                    }
                }
                Err(_) => {
                    let usage = process.terminate(Duration::from_secs(2));
                    return Err(format!(
                        "router did not print READY within {READY_TIMEOUT:?} (exit {:?}): {}",
                        usage.code,
                        tail(&stderr_path, 20)
                    ));
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// CPU seconds used so far (from /proc).
    pub fn cpu_s(&self) -> Option<f64> {
        proc_cpu_s(self.pid())
    }

    /// The Prometheus text at /metrics (the shared scraper,
    /// `yellowstone_tests::try_metrics_text`); None without metrics or on an error.
    pub fn metrics_text(&self) -> Option<String> {
        yellowstone_tests::try_metrics_text(self.ready.metrics?).ok()
    }

    /// A sample's value from the Prometheus text (`yellowstone_tests::metric_value`).
    pub fn metric(text: &str, name: &str) -> Option<f64> {
        yellowstone_tests::metric_value(text, name)
    }

    /// SIGTERM (graceful: the router seals its block and stops), reaped with its
    /// resource usage; SIGKILL if it has not stopped within `grace`.
    pub fn stop(self, grace: Duration) -> (Usage, String) {
        let usage = self.process.terminate(grace);
        let stderr = tail(&self.stderr_path, 10);
        (usage, stderr)
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A genesis at or before `now_ms` that puts a block boundary `ahead_ms` after it,
/// so a run's credit batch is sealed right after its last report.
pub fn genesis_with_boundary_in(now_ms: u64, ahead_ms: u64, block_ms: u64) -> u64 {
    let boundary = now_ms + ahead_ms;
    boundary - block_ms * ahead_ms.div_ceil(block_ms).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_and_metrics_parse() {
        let ready = parse_ready(
            "READY listen=127.0.0.1:4000 metrics=127.0.0.1:4001 router=0xAb network_id=1",
        )
        .unwrap();
        assert_eq!(ready.listen.port(), 4000);
        assert_eq!(ready.metrics.unwrap().port(), 4001);
        assert_eq!(ready.router, "0xAb");
        assert!(parse_ready("hello").is_none());
        let text = "# HELP x\nyellowstone_batches 3\nyellowstone_block 7\nx{a=\"b\"} 1\n";
        assert_eq!(RouterChild::metric(text, "yellowstone_batches"), Some(3.0));
        assert_eq!(RouterChild::metric(text, "yellowstone_block"), Some(7.0));
        assert_eq!(RouterChild::metric(text, "missing"), None);
    }

    #[test]
    fn genesis_puts_a_boundary_ahead() {
        let now = 1_700_000_000_123;
        for ahead in [1u64, 5_000, 12_000, 30_000] {
            let genesis = genesis_with_boundary_in(now, ahead, 12_000);
            assert!(genesis <= now, "{ahead}");
            assert_eq!((now + ahead - genesis) % 12_000, 0, "{ahead}");
            assert!(now - genesis < 12_000, "{ahead}");
        }
    }

    #[test]
    fn a_child_is_reaped_with_its_usage_and_killed_past_its_deadline() {
        let usage = Owned::spawn(Command::new("true").stdout(Stdio::null()))
            .unwrap()
            .wait(Duration::from_secs(10), Duration::from_secs(1));
        assert!(usage.success && !usage.killed);
        let usage = Owned::spawn(Command::new("sleep").arg("30"))
            .unwrap()
            .wait(Duration::from_millis(50), Duration::from_millis(200));
        assert!(!usage.success && usage.code.is_none());
        assert!(usage.wall_s < 10.0);
        assert!(proc_cpu_s(std::process::id()).is_some());
    }
}
