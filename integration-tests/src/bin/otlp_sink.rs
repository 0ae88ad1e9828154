//! `drover-test-otlp-sink`: stands in for Jaeger in the container tests. It keeps every
//! OTLP/HTTP export request it is sent and hands them back to the test, which decodes them.
//!
//! ```text
//! drover-test-otlp-sink ADDR [ADDR...]      e.g. 0.0.0.0:4318 0.0.0.0:16686
//! ```
//!
//! Every address serves the same routes:
//! - `POST /v1/traces`: kept as it came (any content type); answers 200 with an empty
//!   `ExportTraceServiceResponse`;
//! - `GET /received`: every kept request, in arrival order, each framed as a big-endian
//!   `u32` length and the content type, then a `u32` length and the body;
//! - `GET /`: a line saying what this is.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::routing::{get, post};
use axum::Router;

type Kept = Arc<Mutex<Vec<(String, Bytes)>>>;

async fn keep(
    State(kept): State<Kept>,
    headers: HeaderMap,
    body: Bytes,
) -> impl axum::response::IntoResponse {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    kept.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((content_type, body));
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        Bytes::new(),
    )
}

async fn received(State(kept): State<Kept>) -> Vec<u8> {
    let kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = Vec::new();
    for (content_type, body) in kept.iter() {
        for part in [content_type.as_bytes(), body.as_ref()] {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap().to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

#[tokio::main]
async fn main() {
    let addrs: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        !addrs.is_empty(),
        "usage: drover-test-otlp-sink ADDR [ADDR...]"
    );
    let kept = Kept::default();
    let app = Router::new()
        .route("/v1/traces", post(keep))
        .route("/received", get(received))
        .route(
            "/",
            get(|| async { "drover-test-otlp-sink: an OTLP/HTTP sink for tests\n" }),
        )
        .with_state(kept);
    let mut servers = tokio::task::JoinSet::new();
    for addr in addrs {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .unwrap_or_else(|error| panic!("bind {addr}: {error}"));
        eprintln!("drover-test-otlp-sink listening on {addr}");
        let app = app.clone();
        servers.spawn(async move { axum::serve(listener, app).await });
    }
    // As a container's first process it must stop on SIGTERM itself.
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    tokio::select! {
        Some(ended) = servers.join_next() => panic!("a listener ended: {ended:?}"),
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
