//! Where things are: the workspace, the built binaries, nats-server, free ports.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The workspace root (two levels above this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The directory that holds the workspace binaries.
///
/// `DROVER_BIN_DIR` wins. Otherwise it is derived from the running test binary, which cargo
/// puts in `<target>/<profile>/deps/`, so the binaries are in `<target>/<profile>/`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("DROVER_BIN_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut dir = exe
        .parent()
        .context("the running executable has no parent directory")?
        .to_path_buf();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The nats-server binary to run.
///
/// Looks at `DROVER_NATS_SERVER`, then `<workspace>/.tools/bin/nats-server`, then `PATH`.
pub fn nats_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("DROVER_NATS_SERVER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!(
            "DROVER_NATS_SERVER={} is not an executable file: run scripts/install-nats-server",
            path.display()
        );
    }
    let tools = workspace_root().join(".tools/bin/nats-server");
    if is_executable(&tools) {
        return Ok(tools);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    bail!("nats-server not found: run scripts/install-nats-server")
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for admin addresses).
///
/// # Panics
///
/// Panics when no port can be bound at all, which means the machine is out of ports.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
