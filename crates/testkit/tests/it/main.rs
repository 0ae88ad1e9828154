//! Tests of the testkit against real processes: nats-server, the proxy in front of it, and the testkit-sleeper binary.

mod nats_server;
mod proxy;
mod service_process;
mod stack;
mod tls;

/// Whether a process with this pid exists (a reaped child leaves no `/proc` entry).
fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
