//! Operating-system processes: starting one with its environment, forwarding its output,
//! signalling its process group, reading its memory.

use std::process::Stdio;
use std::time::Duration;

use async_nats::Client;
use drover_protocol::{encode, subject, LogLevel, LogLine, PoolId, WorkerId};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::config::GroupConfig;
use crate::group::ExitStatus;
use crate::output::{Gate, Outbox};

/// The longest output line shipped as one log line; the rest is cut off.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// Lines read but not yet taken by the shipper; past this, reading the output waits.
const LINES_IN_FLIGHT: usize = 256;

/// A process that ended: its group, its pid and how.
#[derive(Debug)]
pub struct Exit {
    /// The group's position in the pool.
    pub group: usize,
    /// Its pid.
    pub pid: u32,
    /// How it ended.
    pub status: ExitStatus,
}

/// What a started process needs to know about its pool.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    /// The pool.
    pub pool: &'a PoolId,
    /// The NATS URL handed to the process.
    pub nats_url: &'a str,
    /// The pool's credentials, as `DROVER_NATS_*` variables, handed to the process: it
    /// connects with the pool's credential.
    pub auth_env: &'a [(&'static str, String)],
    /// The connection its output is shipped through.
    pub nats: &'a Client,
    /// Where its end is reported.
    pub exits: &'a mpsc::UnboundedSender<Exit>,
}

/// A process just started.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid.
    pub pid: u32,
    /// Whether its output may be shipped; held until told (see [`crate::output`]).
    pub gate: watch::Sender<Gate>,
}

/// Starts process `worker_id` of `group` in its own process group.
pub fn spawn(
    launch: &Launch<'_>,
    group_index: usize,
    group: &GroupConfig,
    worker_id: &WorkerId,
) -> std::io::Result<Spawned> {
    let mut command = tokio::process::Command::new(&group.command);
    command
        .args(&group.args)
        .current_dir(&group.cwd)
        .envs(&group.env)
        .env("DROVER_WORKER_ID", worker_id.as_str())
        .env("DROVER_NATS_URL", launch.nats_url)
        .envs(launch.auth_env.iter().map(|(name, value)| (*name, value)))
        .env("DROVER_POOL_ID", launch.pool.as_str())
        .env("DROVER_POOL_GROUP", group.name.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a terminal's Ctrl-C reaches the pool only, and a stop
        // reaches whatever the command started (a shell's children too).
        .process_group(0);
    let mut child = command.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("the process ended before its pid was read"))?;
    let (gate, gate_rx) = watch::channel(Gate::Hold);
    let (lines, lines_rx) = mpsc::channel(LINES_IN_FLIGHT);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward(
            stdout,
            OutputStream::Stdout,
            worker_id.clone(),
            lines.clone(),
        ));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward(
            stderr,
            OutputStream::Stderr,
            worker_id.clone(),
            lines,
        ));
    }
    tokio::spawn(ship(
        lines_rx,
        gate_rx,
        worker_id.clone(),
        launch.nats.clone(),
    ));
    let exits = launch.exits.clone();
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                ExitStatus {
                    code: status.code(),
                    signal: status.signal(),
                }
            }
            Err(error) => {
                debug!(%error, pid, "waiting for a process failed");
                ExitStatus {
                    code: None,
                    signal: None,
                }
            }
        };
        let _ = exits.send(Exit {
            group: group_index,
            pid,
            status,
        });
    });
    Ok(Spawned { pid, gate })
}

#[derive(Debug, Clone, Copy)]
enum OutputStream {
    Stdout,
    Stderr,
}

/// Prints each line at once, prefixed with the workerID, and hands it on to be shipped.
async fn forward(
    output: impl AsyncRead + Unpin,
    stream: OutputStream,
    worker_id: WorkerId,
    lines: mpsc::Sender<LogLine>,
) {
    let mut reader = BufReader::new(output);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut line = String::from_utf8_lossy(&buffer)
            .trim_end_matches(['\n', '\r'])
            .to_owned();
        if line.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        // Both at info: most programs log everything to stderr, so the stream says
        // nothing about severity; the `stream` field keeps which one it was.
        let name = match stream {
            OutputStream::Stdout => {
                println!("[{worker_id}] {line}");
                "stdout"
            }
            OutputStream::Stderr => {
                eprintln!("[{worker_id}] {line}");
                "stderr"
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = serde_json::Map::new();
        fields.insert("stream".to_owned(), name.into());
        let log = LogLine {
            level: LogLevel::Info,
            message: line,
            run_id: None,
            fields: Some(fields),
            timestamp: Some(drover_protocol::Timestamp::now()),
        };
        // The shipper only goes once the pool has ended; keep printing until the output does.
        let _ = lines.send(log).await;
    }
}

/// Ships a process's lines as `v1.log.<workerID>`, in the order it wrote them, as its gate
/// allows: held until the pool has seen it registered, dropped if it ended without.
async fn ship(
    mut lines: mpsc::Receiver<LogLine>,
    mut gate: watch::Receiver<Gate>,
    worker_id: WorkerId,
    nats: Client,
) {
    let subject = subject::from_worker(drover_protocol::subject::keys::LOG, &worker_id);
    let mut outbox = Outbox::default();
    // The pool drops the sender once it has decided, or when it ends: then no registration
    // will be seen, as if the process had ended unregistered (a decision already made stands).
    let mut listening = true;
    let mut output_open = true;
    while output_open || !outbox.decided() {
        let ready = tokio::select! {
            biased;
            changed = gate.changed(), if listening => {
                let decision = match changed {
                    Ok(()) => *gate.borrow_and_update(),
                    Err(_) => {
                        listening = false;
                        Gate::Discard
                    }
                };
                let held = outbox.held();
                let ready = outbox.gate(decision);
                if decision == Gate::Discard && held > 0 {
                    debug!(worker = %worker_id, lines = held, "process ended unregistered; its held output is not shipped");
                }
                ready
            }
            line = lines.recv(), if output_open => match line {
                Some(line) => outbox.line(line),
                None => {
                    output_open = false;
                    continue;
                }
            },
        };
        for log in ready {
            if let Err(error) = nats.publish(subject.clone(), encode(&log)).await {
                debug!(%error, worker = %worker_id, "shipping an output line failed");
            }
        }
    }
}

/// Sends `signal` to the process group led by `pid`; a group already gone is not an error.
pub fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    if let Err(error) = killpg(Pid::from_raw(raw), signal) {
        debug!(%error, pid, ?signal, "signalling a process group failed");
    }
}

/// Stops the processes a previous run of this pool left behind on this machine (the pool
/// was killed before it could stop them): SIGTERM, then SIGKILL after `grace`.
///
/// They are found by the `DROVER_POOL_ID` and `DROVER_NATS_URL` the pool put in their
/// environment, so that a restarted pool does not run its workerIDs twice. Both must match:
/// a pool of the same name on another NATS system is another pool (and one on the same
/// system would have answered, and this one would not have started).
pub async fn stop_orphans(pool: &PoolId, nats_url: &str, grace: Duration) {
    let orphans = find_orphans(pool, nats_url);
    if orphans.is_empty() {
        return;
    }
    warn!(pool = %pool, pids = ?orphans, "stopping processes a previous run of this pool left behind");
    for pid in &orphans {
        signal_group(*pid, Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if orphans.iter().all(|pid| !is_running(*pid)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for pid in orphans.iter().filter(|pid| is_running(**pid)) {
        signal_group(*pid, Signal::SIGKILL);
    }
}

/// Group leaders whose environment names this pool and its NATS URL and that are not this
/// process's children.
fn find_orphans(pool: &PoolId, nats_url: &str) -> Vec<u32> {
    let markers = [
        format!("DROVER_POOL_ID={pool}"),
        format!("DROVER_NATS_URL={nats_url}"),
    ];
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name (which may hold spaces): state, ppid, pgrp.
            let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let (ppid, pgrp) = (fields.get(1), fields.get(2));
            pgrp == Some(&pid.to_string().as_str()) && ppid != Some(&me.to_string().as_str())
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                markers.iter().all(|marker| {
                    environ
                        .split(|byte| *byte == 0)
                        .any(|entry| entry == marker.as_bytes())
                })
            })
        })
        .collect()
}

fn is_running(pid: u32) -> bool {
    // A zombie has exited; only its parent's wait is missing.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// The resident memory of `pid` in bytes, from `/proc/<pid>/status`.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tpython3\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name:\tzombie\n"), None);
    }

    #[test]
    fn this_process_has_a_resident_size() {
        assert!(resident_bytes(std::process::id()).is_some_and(|bytes| bytes > 0));
    }
}
