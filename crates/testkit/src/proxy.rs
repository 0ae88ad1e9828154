//! A TCP proxy between clients and a server (nats-server) that a test can cut.
//!
//! ```ignore
//! let proxy = Proxy::start(nats.addr()).await?;
//! // The service connects to proxy.url(); its fifth JetStream API request never arrives.
//! proxy.cut_at(CutPoint::BeforeJsRequest(5));
//! wait_until("the cut", timeout, || async { proxy.is_cut() }).await?;
//! proxy.restore();
//! ```
//!
//! [`Proxy::cut`] closes every live connection at once and closes each new one as soon as
//! it is accepted, until [`Proxy::restore`]: to a client it looks like a server that went
//! away and refuses reconnections, while the server keeps all its state. [`Proxy::cut_at`]
//! arms a cut at a chosen point of the traffic, so that a test can cut a start-up at a
//! given step: before a JetStream API request reaches the server, or before the reply to a
//! request reaches the client (the server acted on it; the client never learns). The
//! counters ([`Proxy::js_requests`], [`Proxy::replies`], [`Proxy::client_bytes`],
//! [`Proxy::connections`], ...) and [`Proxy::js_request_subjects`] let a test measure a
//! start-up first and then choose its cut points, and wait on progress with
//! [`wait_until`](crate::wait_until).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What marks a JetStream API request in the client-to-server traffic: the protocol line
/// `PUB $JS.API.<...>` (also found inside `HPUB $JS.API.<...>`, its form with headers).
const JS_REQUEST: &[u8] = b"PUB $JS.API.";
/// What marks the reply to a request in the server-to-client traffic: a message to the
/// client's request inbox, `MSG _INBOX.<...>` (or `HMSG _INBOX.<...>`).
const REPLY: &[u8] = b"MSG _INBOX.";

/// Bytes read from one side at a time.
const BUFFER: usize = 16 * 1024;
/// Request subjects kept for [`Proxy::js_request_subjects`].
const SUBJECTS_KEPT: usize = 10_000;

/// Where an armed cut happens, counted from the moment it is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutPoint {
    /// Once this many more bytes have gone from clients to the server: exactly that many
    /// are forwarded, then the cut. `AfterClientBytes(0)` cuts the first connection
    /// before the client says anything: the server seems unreachable from the start.
    AfterClientBytes(u64),
    /// Just before the n-th next JetStream API request (1 is the very next one): the bytes
    /// in front of it reach the server, the request and everything after it do not.
    BeforeJsRequest(u64),
    /// Just before the n-th next reply to a request reaches its client: the server has
    /// acted on the request, but the client never hears back.
    BeforeReply(u64),
}

/// A running proxy on 127.0.0.1; it stops, and closes every connection, when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("cut", &self.is_cut())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("bind the proxy to 127.0.0.1:0")?;
        let addr = listener.local_addr().context("the proxy's address")?;
        let root = CancellationToken::new();
        let shared = Arc::new(Shared {
            target,
            state: Mutex::new(State {
                cut: false,
                epoch: root.child_token(),
                armed: None,
                client_bytes: 0,
                server_bytes: 0,
                js_requests: 0,
                replies: 0,
                subjects: Vec::new(),
            }),
            root,
            connections: AtomicU64::new(0),
            live: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept(listener, Arc::clone(&shared)));
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy as a NATS URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Closes every live connection and refuses new ones (they are closed at once) until
    /// [`Proxy::restore`]. Disarms any armed cut.
    pub fn cut(&self) {
        if let Some(epoch) = self.shared.lock().begin_cut(&self.shared) {
            epoch.cancel();
        }
    }

    /// Arms a cut at `point` (replacing any armed one); it fires once, then the proxy stays
    /// cut until [`Proxy::restore`].
    pub fn cut_at(&self, point: CutPoint) {
        let mut state = self.shared.lock();
        let armed = match point {
            CutPoint::AfterClientBytes(n) => Armed::ClientBytes(state.client_bytes + n),
            CutPoint::BeforeJsRequest(n) => Armed::JsRequest(state.js_requests + n.max(1)),
            CutPoint::BeforeReply(n) => Armed::Reply(state.replies + n.max(1)),
        };
        state.armed = Some(armed);
    }

    /// Forgets an armed cut that has not fired.
    pub fn disarm(&self) {
        self.shared.lock().armed = None;
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        let mut state = self.shared.lock();
        if state.cut {
            state.cut = false;
            state.epoch = self.shared.root.child_token();
        }
    }

    /// Whether the proxy is cut (by hand or by an armed cut that fired).
    pub fn is_cut(&self) -> bool {
        self.shared.lock().cut
    }

    /// How many cuts there have been.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Bytes forwarded from clients to the server so far.
    pub fn client_bytes(&self) -> u64 {
        self.shared.lock().client_bytes
    }

    /// Bytes forwarded from the server to clients so far.
    pub fn server_bytes(&self) -> u64 {
        self.shared.lock().server_bytes
    }

    /// JetStream API requests (`PUB $JS.API.*`) forwarded to the server so far.
    pub fn js_requests(&self) -> u64 {
        self.shared.lock().js_requests
    }

    /// The subjects of the JetStream API requests forwarded so far, in order (the first
    /// ten thousand); a subject split across reads may be cut short.
    pub fn js_request_subjects(&self) -> Vec<String> {
        self.shared.lock().subjects.clone()
    }

    /// Replies to requests (`MSG _INBOX.*`) forwarded to clients so far.
    pub fn replies(&self) -> u64 {
        self.shared.lock().replies
    }

    /// Connections accepted and forwarded so far (refused ones not included).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn live_connections(&self) -> u64 {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Connections closed at once because the proxy was cut.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.root.cancel();
    }
}

/// What the accept loop and every connection share.
struct Shared {
    target: SocketAddr,
    state: Mutex<State>,
    /// Parent of every epoch; cancelled when the proxy is dropped.
    root: CancellationToken,
    connections: AtomicU64,
    live: AtomicU64,
    refused: AtomicU64,
    cuts: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Which way bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From a client to the server.
    Up,
    /// From the server to a client.
    Down,
}

impl Direction {
    fn marker(self) -> &'static [u8] {
        match self {
            Direction::Up => JS_REQUEST,
            Direction::Down => REPLY,
        }
    }
}

/// The decisions that must be taken together: the cut, the armed cut and what it counts.
struct State {
    cut: bool,
    /// Cancelled by a cut: every connection accepted since the last restore closes.
    epoch: CancellationToken,
    armed: Option<Armed>,
    client_bytes: u64,
    server_bytes: u64,
    js_requests: u64,
    replies: u64,
    subjects: Vec<String>,
}

/// An armed cut, as an absolute count.
#[derive(Debug, Clone, Copy)]
enum Armed {
    ClientBytes(u64),
    JsRequest(u64),
    Reply(u64),
}

/// What to do with a chunk read from one side.
struct Admitted {
    /// How many of its bytes to forward.
    forward: usize,
    /// The epoch to cancel once they are forwarded: an armed cut fired on this chunk.
    then_cut: Option<CancellationToken>,
    /// Whether to close this connection after forwarding.
    close: bool,
}

impl State {
    /// Marks the proxy cut and returns the epoch whose connections must now close (the
    /// caller cancels it), or `None` when it already was cut.
    fn begin_cut(&mut self, shared: &Shared) -> Option<CancellationToken> {
        self.armed = None;
        if self.cut {
            return None;
        }
        self.cut = true;
        shared.cuts.fetch_add(1, Ordering::SeqCst);
        Some(self.epoch.clone())
    }

    /// Counts a chunk of `len` bytes going `direction`, in which the direction's markers
    /// (requests or replies) start at `marks`, and says how much of it to forward.
    fn admit(
        &mut self,
        shared: &Shared,
        direction: Direction,
        len: usize,
        marks: &[Mark],
    ) -> Admitted {
        if self.cut {
            return Admitted {
                forward: 0,
                then_cut: None,
                close: true,
            };
        }
        let before_mark = |nth: u64, seen: u64| {
            let ahead = usize::try_from(nth.saturating_sub(seen + 1)).unwrap_or(usize::MAX);
            marks
                .get(ahead)
                .map_or((len, false), |mark| (mark.at, true))
        };
        let (forward, fire) = match (direction, self.armed) {
            (Direction::Up, Some(Armed::ClientBytes(limit)))
                if self.client_bytes + len as u64 >= limit =>
            {
                let left = usize::try_from(limit - self.client_bytes).unwrap_or(len);
                (left.min(len), true)
            }
            (Direction::Up, Some(Armed::JsRequest(nth))) => before_mark(nth, self.js_requests),
            (Direction::Down, Some(Armed::Reply(nth))) => before_mark(nth, self.replies),
            _ => (len, false),
        };
        let passed = marks.iter().filter(|mark| mark.at < forward);
        match direction {
            Direction::Up => {
                self.client_bytes += forward as u64;
                for mark in passed {
                    self.js_requests += 1;
                    if self.subjects.len() < SUBJECTS_KEPT {
                        self.subjects.push(mark.subject.clone());
                    }
                }
            }
            Direction::Down => {
                self.server_bytes += forward as u64;
                self.replies += passed.count() as u64;
            }
        }
        let then_cut = if fire { self.begin_cut(shared) } else { None };
        Admitted {
            forward,
            close: fire,
            then_cut,
        }
    }
}

/// Where a marker starts in a chunk, and the subject that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mark {
    /// Offset in the chunk; 0 also for a marker that began in an earlier chunk.
    at: usize,
    /// The subject, from the marker's `$JS.API.` or `_INBOX.` to the next space.
    subject: String,
}

/// Finds where a marker starts in a stream that arrives in chunks.
struct Scanner {
    marker: &'static [u8],
    /// The end of the previous chunks that could be the start of a marker.
    tail: Vec<u8>,
}

impl Scanner {
    fn new(marker: &'static [u8]) -> Self {
        Self {
            marker,
            tail: Vec::new(),
        }
    }

    /// The markers that start in `chunk` (or end in it, having begun in an earlier one).
    fn scan(&mut self, chunk: &[u8]) -> Vec<Mark> {
        let mut joined = std::mem::take(&mut self.tail);
        let carried = joined.len();
        joined.extend_from_slice(chunk);
        // The subject starts after the verb and its space ("PUB ", "MSG ").
        let verb = self
            .marker
            .iter()
            .position(|&b| b == b' ')
            .map_or(0, |i| i + 1);
        let marks = joined
            .windows(self.marker.len())
            .enumerate()
            .filter(|(_, window)| *window == self.marker)
            .map(|(at, _)| {
                let rest = &joined[at + verb..];
                let end = rest
                    .iter()
                    .position(|&b| b == b' ' || b == b'\r')
                    .unwrap_or(rest.len());
                // The header form (HPUB, HMSG) starts one byte earlier.
                let start = at - usize::from(at > 0 && joined[at - 1] == b'H');
                Mark {
                    at: start.saturating_sub(carried),
                    subject: String::from_utf8_lossy(&rest[..end]).into_owned(),
                }
            })
            .collect();
        let keep = (self.marker.len() - 1).min(joined.len());
        self.tail = joined[joined.len() - keep..].to_vec();
        marks
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let epoch = {
            let state = shared.lock();
            (!state.cut).then(|| state.epoch.clone())
        };
        let Some(epoch) = epoch else {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(connection(client, Arc::clone(&shared), epoch));
    }
}

/// Forwards one connection until either side closes it or the proxy is cut.
async fn connection(client: TcpStream, shared: Arc<Shared>, epoch: CancellationToken) {
    shared.live.fetch_add(1, Ordering::SeqCst);
    let connect = epoch.run_until_cancelled(TcpStream::connect(shared.target));
    if let Some(Ok(server)) = connect.await {
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::select! {
            () = epoch.cancelled() => {}
            () = pump(client_read, server_write, Direction::Up, &shared) => {}
            () = pump(server_read, client_write, Direction::Down, &shared) => {}
        }
    }
    shared.live.fetch_sub(1, Ordering::SeqCst);
}

/// Copies one way, chunk by chunk, as far as the proxy's state allows.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    direction: Direction,
    shared: &Shared,
) {
    let mut buffer = vec![0u8; BUFFER];
    let mut scanner = Scanner::new(direction.marker());
    loop {
        let len = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(len) => len,
        };
        let marks = scanner.scan(&buffer[..len]);
        let admitted = shared.lock().admit(shared, direction, len, &marks);
        let forward = &buffer[..admitted.forward];
        let written = forward.is_empty() || to.write_all(forward).await.is_ok();
        // Only now, so that what comes before the cut point is not lost with the connection.
        if let Some(epoch) = admitted.then_cut {
            epoch.cancel();
        }
        if !written || admitted.close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::wait_until;

    /// A server that echoes what it gets and keeps a copy of all of it.
    struct Echo {
        addr: SocketAddr,
        received: Arc<Mutex<Vec<u8>>>,
    }

    impl Echo {
        async fn start() -> Self {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("address");
            let received = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&received);
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let sink = Arc::clone(&sink);
                    tokio::spawn(async move {
                        let mut buffer = [0u8; 1024];
                        while let Ok(len @ 1..) = stream.read(&mut buffer).await {
                            sink.lock().expect("lock").extend_from_slice(&buffer[..len]);
                            if stream.write_all(&buffer[..len]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            Self { addr, received }
        }

        fn received(&self) -> String {
            String::from_utf8_lossy(&self.received.lock().expect("lock")).into_owned()
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    async fn echoes(stream: &mut TcpStream, text: &str) -> bool {
        if stream.write_all(text.as_bytes()).await.is_err() {
            return false;
        }
        let mut back = vec![0u8; text.len()];
        matches!(
            tokio::time::timeout(TIMEOUT, stream.read_exact(&mut back)).await,
            Ok(Ok(_)) if back == text.as_bytes()
        )
    }

    /// Whether the proxy closed `stream`: a read ends (EOF or reset) within the timeout.
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(TIMEOUT, stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn forwards_both_ways_and_counts() {
        let echo = Echo::start().await;
        let proxy = Proxy::start(echo.addr).await.expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(echoes(&mut stream, "hello").await);
        assert_eq!(echo.received(), "hello");
        assert_eq!(proxy.client_bytes(), 5);
        assert_eq!(proxy.server_bytes(), 5);
        assert_eq!(proxy.connections(), 1);
        assert_eq!(proxy.live_connections(), 1);
        drop(stream);
        wait_until("the connection ends", TIMEOUT, || async {
            proxy.live_connections() == 0
        })
        .await
        .expect("closed");
    }

    #[tokio::test]
    async fn a_cut_closes_live_connections_and_refuses_new_ones_until_restored() {
        let echo = Echo::start().await;
        let proxy = Proxy::start(echo.addr).await.expect("proxy");
        let mut live = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(echoes(&mut live, "before").await);

        proxy.cut();
        assert!(proxy.is_cut());
        assert!(closed(&mut live).await, "a live connection is closed");
        let mut refused = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(closed(&mut refused).await, "a new connection is closed");
        assert_eq!(proxy.refused(), 1);
        assert_eq!(proxy.cuts(), 1);

        proxy.restore();
        assert!(!proxy.is_cut());
        let mut again = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(echoes(&mut again, "after").await);
        assert_eq!(echo.received(), "beforeafter");
        assert_eq!(proxy.connections(), 2);
    }

    #[tokio::test]
    async fn an_armed_byte_cut_forwards_exactly_that_many_bytes() {
        let echo = Echo::start().await;
        let proxy = Proxy::start(echo.addr).await.expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(echoes(&mut stream, "abc").await);
        proxy.cut_at(CutPoint::AfterClientBytes(7));
        stream.write_all(b"0123456789").await.expect("write");
        wait_until("the armed cut", TIMEOUT, || async { proxy.is_cut() })
            .await
            .expect("cut");
        assert!(closed(&mut stream).await);
        assert_eq!(echo.received(), "abc0123456");
        assert_eq!(proxy.client_bytes(), 10);
    }

    #[tokio::test]
    async fn an_armed_request_cut_stops_just_before_that_request() {
        let echo = Echo::start().await;
        let proxy = Proxy::start(echo.addr).await.expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        let first = "PUB $JS.API.INFO _INBOX.a 0\r\n\r\n";
        assert!(echoes(&mut stream, first).await);
        assert_eq!(proxy.js_requests(), 1);
        proxy.cut_at(CutPoint::BeforeJsRequest(2));
        let traffic = "PING\r\nHPUB $JS.API.STREAM.INFO.A _INBOX.b 12 12\r\nNATS/1.0\r\n\r\n\r\n\
                       PUB $JS.API.STREAM.INFO.B _INBOX.c 0\r\n\r\nPUB other 0\r\n\r\n";
        stream.write_all(traffic.as_bytes()).await.expect("write");
        wait_until("the armed cut", TIMEOUT, || async { proxy.is_cut() })
            .await
            .expect("cut");
        assert!(closed(&mut stream).await);
        let expected = format!(
            "{first}PING\r\nHPUB $JS.API.STREAM.INFO.A _INBOX.b 12 12\r\nNATS/1.0\r\n\r\n\r\n"
        );
        assert_eq!(
            proxy.js_request_subjects(),
            vec!["$JS.API.INFO", "$JS.API.STREAM.INFO.A"]
        );
        assert_eq!(echo.received(), expected);
        assert_eq!(proxy.js_requests(), 2);
        assert_eq!(proxy.client_bytes(), expected.len() as u64);
    }

    #[tokio::test]
    async fn an_armed_cut_that_has_not_fired_can_be_disarmed() {
        let echo = Echo::start().await;
        let proxy = Proxy::start(echo.addr).await.expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        proxy.cut_at(CutPoint::AfterClientBytes(4));
        proxy.disarm();
        assert!(echoes(&mut stream, "more than four").await);
        assert!(!proxy.is_cut());
    }

    #[tokio::test]
    async fn an_armed_reply_cut_lets_the_request_through_but_not_its_reply() {
        let echo = Echo::start().await;
        let proxy = Proxy::start(echo.addr).await.expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        // The echo server sends back what it gets: a reply, as far as the proxy can tell.
        let first = "MSG _INBOX.a 1 0\r\n\r\n";
        assert!(echoes(&mut stream, first).await);
        assert_eq!(proxy.replies(), 1);
        proxy.cut_at(CutPoint::BeforeReply(1));
        let traffic = "+OK\r\nHMSG _INBOX.b 1 12 12\r\nNATS/1.0\r\n\r\n\r\n";
        stream.write_all(traffic.as_bytes()).await.expect("write");
        let mut back = Vec::new();
        let read = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut back)).await;
        assert!(matches!(read, Ok(Ok(_))), "the proxy closes the connection");
        assert!(proxy.is_cut());
        assert_eq!(String::from_utf8_lossy(&back), "+OK\r\n");
        assert_eq!(echo.received(), format!("{first}{traffic}"));
        assert_eq!(proxy.replies(), 1);
    }

    #[test]
    fn the_scanner_finds_markers_and_subjects_split_across_chunks() {
        let at = |marks: Vec<Mark>| marks.into_iter().map(|m| m.at).collect::<Vec<_>>();
        let mut scanner = Scanner::new(JS_REQUEST);
        assert!(scanner.scan(b"PING\r\nPUB $J").is_empty());
        let marks = scanner.scan(b"S.API.X _I 0\r\n\r\nPUB $JS.API.Y");
        assert_eq!(at(marks.clone()), vec![0, 16]);
        assert_eq!(marks[0].subject, "$JS.API.X");
        assert_eq!(
            marks[1].subject, "$JS.API.Y",
            "cut short at the end of the chunk"
        );
        assert!(scanner.scan(b" _I 0\r\n\r\n").is_empty());
        assert!(scanner.scan(b"P").is_empty());
        assert_eq!(at(scanner.scan(b"UB $JS.API.Z _I 0\r\n")), vec![0]);
        let mut replies = Scanner::new(REPLY);
        let marks = replies.scan(b"MSG a 1 0\r\n\r\nHMSG _INBOX.q.1 1 2 2\r\n");
        assert_eq!(at(marks.clone()), vec![13]);
        assert_eq!(marks[0].subject, "_INBOX.q.1");
    }

    #[tokio::test]
    async fn request_subjects_are_kept_in_order() {
        let echo = Echo::start().await;
        let proxy = Proxy::start(echo.addr).await.expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        let traffic =
            "PUB $JS.API.INFO _INBOX.a 0\r\n\r\nPUB $JS.API.STREAM.INFO.S _INBOX.b 0\r\n\r\n";
        assert!(echoes(&mut stream, traffic).await);
        assert_eq!(
            proxy.js_request_subjects(),
            vec!["$JS.API.INFO", "$JS.API.STREAM.INFO.S"]
        );
    }
}
