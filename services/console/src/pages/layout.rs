//! The frame of every page, and the small pieces pages share.

use drover_protocol::{RunStatus, Timestamp, WorkerStatus};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

use crate::access::CanAct;
use crate::error::ConsoleError;

/// Which part of the navigation a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The overview.
    Overview,
    /// Runs.
    Runs,
    /// Workers.
    Workers,
    /// Pools.
    Pools,
    /// None (sign-in, errors).
    None,
}

/// A whole page: navigation, `body`, and the script when the page is live.
pub fn page(title: &str, section: Section, can_act: CanAct, body: Markup) -> Markup {
    let nav = [
        ("/", "Overview", Section::Overview),
        ("/runs", "Runs", Section::Runs),
        ("/workers", "Workers", Section::Workers),
        ("/pools", "Pools", Section::Pools),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Drover" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "Drover" }
                    nav {
                        @for (href, label, of) in nav {
                            a href=(href) class=[(of == section).then_some("active")] { (label) }
                        }
                    }
                    div.who {
                        @if can_act.0 {
                            a.button href="/runs/new" id="new-run" { "Submit a run" }
                            form method="post" action="/logout" { button.link type="submit" { "Sign out" } }
                        } @else {
                            a href="/login" id="sign-in" { "Sign in to act" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The page an error gets.
pub fn error_page(error: &ConsoleError) -> Markup {
    let body = html! {
        section.error-page {
            h1 { (error.status.as_u16()) " " (error.status.canonical_reason().unwrap_or("error")) }
            p.error id="error" { code { (error.code) } ": " (error.message) }
            p { a href="/" { "Back to the overview" } }
        }
    };
    page("Error", Section::None, CanAct(false), body)
}

/// A run's state as a coloured badge.
pub fn run_status(status: RunStatus) -> Markup {
    let class = match status {
        RunStatus::Succeeded => "ok",
        RunStatus::Failed => "bad",
        RunStatus::Cancelled => "muted",
        RunStatus::Running => "busy",
        RunStatus::Assigned | RunStatus::Pending => "wait",
    };
    html! { span class={ "badge " (class) } data-status=(status.as_str()) { (status.as_str()) } }
}

/// A worker's status as a coloured badge.
pub fn worker_status(status: WorkerStatus) -> Markup {
    let class = match status {
        WorkerStatus::Idle => "ok",
        WorkerStatus::Working | WorkerStatus::Hanging => "busy",
        WorkerStatus::Unresponsive | WorkerStatus::Lost => "bad",
        _ => "muted",
    };
    html! { span class={ "badge " (class) } data-status=(status.as_str()) { (status.as_str()) } }
}

/// A time, shown in UTC to the second, with the exact value on hover.
pub fn time(at: Timestamp) -> Markup {
    let text = at.to_string();
    let short = text.get(..19).unwrap_or(&text).replace('T', " ");
    html! { time datetime=(text) title=(text) { (short) } }
}

/// A time to the millisecond, for timelines.
pub fn precise_time(at: Timestamp) -> Markup {
    let text = at.to_string();
    let short = text.get(11..23).unwrap_or(&text).to_owned();
    html! { time datetime=(text) title=(text) { (short) } }
}

/// An optional time, or a dash.
pub fn maybe_time(at: Option<Timestamp>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { span.muted { "–" } },
    }
}

/// JSON shown pretty; folded when it is large.
pub fn json_block(id: &str, label: &str, value: &Value) -> Markup {
    const FOLD_ABOVE: usize = 2_000;
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    let large = text.len() > FOLD_ABOVE;
    html! {
        details.json id=(id) open[!large] {
            summary { (label) @if large { " (" (text.len()) " bytes)" } }
            pre { code { (text) } }
        }
    }
}

/// A duration between two times, for people.
pub fn duration(from: Timestamp, to: Timestamp) -> String {
    let ms = (to.as_millis() - from.as_millis()).max(0);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{}m {}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// A live region: the script replaces or extends it with what the stream at `source` sends.
pub fn live(source: &str) -> PreEscaped<String> {
    PreEscaped(format!(
        "<meta name=\"drover-live\" content=\"{}\">",
        maud::html! { (source) }.into_string()
    ))
}
