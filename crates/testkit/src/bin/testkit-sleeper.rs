//! A tiny stand-in service for testing the testkit's process handling.
//!
//! It prints `sleeper started pid=<pid>` to stdout and `sleeper stderr line` to stderr,
//! then waits. On SIGTERM it prints `sleeper got sigterm` and exits 0.
//!
//! Options:
//! - `--echo-env NAME`: print `env NAME=<value>` at start (repeatable).
//! - `--admin-addr ADDR`: serve HTTP on ADDR; `GET /readyz` answers 200 once ready.
//! - `--ready-after-ms N`: `/readyz` answers 503 for the first N ms.
//! - `--exit-after-ms N`: exit on its own after N ms, with `--exit-code` (default 0).
//! - `--ignore-sigterm`: keep running on SIGTERM (only SIGKILL stops it).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

#[derive(Default)]
struct Options {
    echo_env: Vec<String>,
    admin_addr: Option<String>,
    ready_after: Duration,
    exit_after: Option<Duration>,
    exit_code: i32,
    ignore_sigterm: bool,
}

fn parse() -> Result<Options, String> {
    let mut options = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        let ms = |v: String| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|e| e.to_string())
        };
        match arg.as_str() {
            "--echo-env" => options.echo_env.push(value("--echo-env")?),
            "--admin-addr" => options.admin_addr = Some(value("--admin-addr")?),
            "--ready-after-ms" => options.ready_after = ms(value("--ready-after-ms")?)?,
            "--exit-after-ms" => options.exit_after = Some(ms(value("--exit-after-ms")?)?),
            "--exit-code" => {
                options.exit_code = value("--exit-code")?.parse().map_err(|e| format!("{e}"))?;
            }
            "--ignore-sigterm" => options.ignore_sigterm = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let options = match parse() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("testkit-sleeper: {error}");
            std::process::exit(64);
        }
    };
    let started = Instant::now();
    let mut sigterm = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
    println!("sleeper started pid={}", std::process::id());
    eprintln!("sleeper stderr line");
    for name in &options.echo_env {
        println!("env {name}={}", std::env::var(name).unwrap_or_default());
    }
    if let Some(addr) = &options.admin_addr {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the admin address");
        println!(
            "sleeper admin on {}",
            listener.local_addr().expect("local address")
        );
        let ready_at = started + options.ready_after;
        tokio::spawn(serve(listener, ready_at));
    }
    let exit_after = async {
        match options.exit_after {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(exit_after);
    loop {
        tokio::select! {
            _ = sigterm.recv() => {
                println!("sleeper got sigterm");
                if !options.ignore_sigterm {
                    std::process::exit(0);
                }
            }
            () = &mut exit_after => {
                println!("sleeper exiting with {}", options.exit_code);
                std::process::exit(options.exit_code);
            }
        }
    }
}

async fn serve(listener: TcpListener, ready_at: Instant) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&request);
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, body) = match path.as_str() {
                "/readyz" if Instant::now() >= ready_at => ("200 OK", "ready"),
                "/readyz" => ("503 Service Unavailable", "starting"),
                "/healthz" => ("200 OK", "ok"),
                _ => ("404 Not Found", "not found"),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
