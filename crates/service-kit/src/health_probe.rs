//! `--check-health`: a service binary asks a running copy of itself whether it is ready.
//!
//! Container healthchecks need a program inside the image that can make an HTTP request;
//! the Drover image has no curl, so every service binary is its own probe:
//! `drover-scheduler --check-health` reads the same settings the service would (flags,
//! `DROVER_ADMIN_ADDR`, the config file), sends `GET /readyz` to the admin address and
//! exits 0 when the answer is 200, 1 otherwise, printing one line saying which.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

/// Bound on the whole probe: a healthcheck that hangs is worse than one that fails.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The URL of `/readyz` for a service whose admin server binds `admin_addr`: an unspecified
/// bind address (`0.0.0.0`, `::`) is asked on the loopback of the same family.
pub fn readyz_url(admin_addr: &str) -> Result<String, String> {
    let addr: SocketAddr = admin_addr
        .parse()
        .map_err(|error| format!("admin address {admin_addr:?} is not host:port ({error})"))?;
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(format!(
        "http://{}/readyz",
        SocketAddr::new(ip, addr.port())
    ))
}

/// Probes `/readyz` of the service whose admin server binds `admin_addr`; prints the
/// outcome and returns the exit status.
pub async fn check_health(service_name: &str, admin_addr: &str) -> ExitCode {
    match probe(admin_addr).await {
        Ok(body) => {
            println!("{service_name}: ready ({})", body.trim());
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("{service_name}: not ready: {why}");
            ExitCode::FAILURE
        }
    }
}

async fn probe(admin_addr: &str) -> Result<String, String> {
    let url = readyz_url(admin_addr)?;
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .build()
        .map_err(|error| error.to_string())?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|error| format!("GET {url}: {error}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("GET {url} answered {status}: {}", body.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_bind_address_is_probed_on_the_loopback() {
        assert_eq!(
            readyz_url("0.0.0.0:9712").as_deref(),
            Ok("http://127.0.0.1:9712/readyz")
        );
        assert_eq!(
            readyz_url("[::]:9712").as_deref(),
            Ok("http://[::1]:9712/readyz")
        );
        assert_eq!(
            readyz_url("10.1.2.3:80").as_deref(),
            Ok("http://10.1.2.3:80/readyz")
        );
    }

    #[test]
    fn an_address_without_a_port_is_an_error() {
        let error = readyz_url("localhost").expect_err("no port");
        assert!(error.contains("not host:port"), "{error}");
    }

    #[tokio::test]
    async fn nothing_listening_is_not_ready() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let error = probe(&addr).await.expect_err("nothing listens");
        assert!(error.contains("/readyz"), "{error}");
    }

    #[tokio::test]
    async fn a_200_is_ready_and_a_503_is_not() {
        use axum::http::StatusCode;
        use axum::routing::get;
        for (status, ready) in [
            (StatusCode::OK, true),
            (StatusCode::SERVICE_UNAVAILABLE, false),
        ] {
            let app =
                axum::Router::new().route("/readyz", get(move || async move { (status, "x") }));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            let server = tokio::spawn(async move { axum::serve(listener, app).await });
            assert_eq!(probe(&addr).await.is_ok(), ready, "status {status}");
            server.abort();
        }
    }
}
