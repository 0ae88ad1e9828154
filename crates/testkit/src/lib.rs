//! Test support for Drover: the one place that owns real processes in tests.
//!
//! - [`NatsServer`] runs a real `nats-server` with JetStream on a free port and a
//!   temporary store, and can be killed, stopped and restarted on the same port and store.
//! - [`ServiceProcess`] runs a workspace binary (a Drover service) as a child process with
//!   its output in a log file.
//! - [`Stack`] starts a NATS server plus any set of Drover services and waits until each
//!   one reports ready on its admin port.
//! - [`call`], [`list_workers`] and [`count_workers`] make requests to Drover's services
//!   as an outside client does.
//! - [`Proxy`] sits between clients and nats-server and cuts every connection on demand,
//!   or at a chosen point of a start-up, until restored.
//! - [`Fleet`] simulates many workers over a few connections, for scale tests and the
//!   benchmark.
//! - [`TestPki`] generates a CA, a server and a client certificate for TLS tests, and
//!   [`NatsOptions::tls`] serves clients over TLS (optionally mutual) with them.
//! - Several [`NatsServer`]s started together form a cluster when their
//!   [`NatsOptions::config`] holds `server_name` and a `cluster` block with fixed route
//!   ports ([`free_port`]); [`NatsOptions::ready_when_connected`] starts a node that is
//!   expected to stay out of its cluster.
//! - [`ProcStats`] reads a process's CPU time and memory, for tests and benchmarks that
//!   report them.
//! - [`wait_until`], [`wait_for`] and [`assert_eventually!`] wait on conditions instead of
//!   sleeping, and [`hold_for`] holds through a window in which nothing may happen; all
//!   of them scale with `DROVER_TEST_PATIENCE`.
//!
//! Every process is killed (SIGKILL, then reaped) when its handle is dropped. When the drop
//! happens during a panic, or when `DROVER_TEST_DUMP_LOGS` is set, the tail of each process
//! log is printed to stderr so that failures can be diagnosed from the test output. Set
//! `DROVER_TEST_KEEP_DIRS` to keep the temporary directories (their paths are printed).
//!
//! No mocks: the broker and the services are the real programs that users run.

mod fleet;
mod http;
mod logfile;
mod nats;
mod observed;
mod paths;
mod proc_stats;
mod process;
mod proxy;
mod request;
mod stack;
mod supervised;
mod tls;
mod wait;

pub use fleet::Fleet;
pub use http::http_get;
pub use nats::{NatsOptions, NatsServer, NatsTls};
pub use observed::Observed;
pub use paths::{bin_dir, free_port, nats_server_binary, workspace_root};
pub use proc_stats::ProcStats;
pub use process::ServiceProcess;
pub use proxy::{CutPoint, Proxy};
pub use request::{call, count_workers, list_workers, REQUEST_TIMEOUT};
pub use stack::{Stack, StackBuilder, HEARTBEAT_MONITOR, LOG_COLLECTOR, REGISTRY, SCHEDULER};
pub use tls::TestPki;
pub use wait::{hold_for, patience, patient, wait_for, wait_until, DEFAULT_TIMEOUT};
