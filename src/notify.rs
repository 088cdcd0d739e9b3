//! Telling a run's outcome to where an operator listens, in the conventions those services'
//! users know: a JSON POST to a webhook, Healthchecks' ping protocol (`/start` when the run
//! begins, so a run that is killed or never starts is noticed there; the plain URL on success,
//! `/fail` on failure) and ntfy (a short title and message, priority high on failure). Every
//! delivery has 10 s; one that fails is a warning naming the service by its host only (paths
//! and queries carry tokens), and never changes the run's exit code.
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::exit_codes::{Code, UserError};

/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Webhook,
    Healthchecks,
    Ntfy,
}

/// One place to tell: its kind, the URL to call, and how it is shown (scheme and host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    pub url: String,
    pub shown: String,
}

/// Reads a notification URL: `https://…` / `http://…` (a webhook, or Healthchecks when its
/// path has `/ping/`), `hc+https://…`, `ntfy+https://…` or `ntfy+http://…`.
pub fn parse(raw: &str) -> Result<Target> {
    let (kind, url) = if let Some(rest) = raw.strip_prefix("hc+") {
        (Kind::Healthchecks, rest)
    } else if let Some(rest) = raw.strip_prefix("ntfy+") {
        (Kind::Ntfy, rest)
    } else if raw.contains("/ping/") {
        (Kind::Healthchecks, raw)
    } else {
        (Kind::Webhook, raw)
    };
    let (scheme, after) = url.split_once("://").unwrap_or(("", ""));
    let host = after.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    if !matches!(scheme, "http" | "https") || host.is_empty() {
        return Err(UserError::new(
            Code::Usage,
            format!(
                "notification URL {}://{host}… is not one: use https://…, hc+https://HOST/ping/UUID, ntfy+https://HOST/TOPIC or ntfy+http://…",
                raw.split("://").next().unwrap_or("")
            ),
        )
        .into());
    }
    Ok(Target {
        kind,
        url: url.trim_end_matches('/').to_string(),
        shown: format!("{scheme}://{host}"),
    })
}

/// When to tell: only failures (the default), or every outcome. Healthchecks hears every
/// outcome whatever this says: its absence of a success ping is how it notices a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum When {
    #[default]
    Failure,
    Always,
}

/// What a webhook receives.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub command: String,
    pub project: String,
    pub host: String,
    /// `succeeded` or `failed`.
    pub status: &'static str,
    pub exit_code: u8,
    pub error: Option<String>,
    /// The backup the run made (create), as `list --format json` prints it.
    pub backup: Option<serde_json::Value>,
    pub duration_ms: u64,
    pub downtime_ms: Option<u64>,
}

/// The targets of one run.
pub struct Notifier {
    targets: Vec<Target>,
    when: When,
}

impl Notifier {
    pub fn new(targets: Vec<Target>, when: When) -> Notifier {
        Notifier { targets, when }
    }

    /// Healthchecks' `/start`: the run has begun.
    pub fn started(&self) {
        let calls = self
            .targets
            .iter()
            .filter(|t| t.kind == Kind::Healthchecks)
            .map(|t| {
                (
                    t.clone(),
                    with_suffix(&t.url, "/start"),
                    Vec::new(),
                    Vec::new(),
                )
            })
            .collect();
        deliver(calls);
    }

    /// Tells every target the outcome, at most [`TIMEOUT`] in all (they are told at once).
    pub fn finished(&self, o: &Outcome) {
        let ok = o.status == "succeeded";
        let mut calls = Vec::new();
        for t in &self.targets {
            if t.kind != Kind::Healthchecks && ok && self.when == When::Failure {
                continue;
            }
            calls.push(request(t, o, ok));
        }
        deliver(calls);
    }
}

/// One delivery: the target, the URL, its headers and its body.
type Call = (Target, String, Vec<(&'static str, String)>, Vec<u8>);

/// The request telling `t` the outcome `o`.
fn request(t: &Target, o: &Outcome, ok: bool) -> Call {
    let line = o.error.clone().unwrap_or_else(|| "completed".into());
    match t.kind {
        Kind::Webhook => {
            let body = serde_json::to_vec(o).unwrap_or_default();
            let headers = vec![("Content-Type", "application/json".to_string())];
            (t.clone(), t.url.clone(), headers, body)
        }
        Kind::Healthchecks => {
            let url = match ok {
                true => t.url.clone(),
                false => with_suffix(&t.url, "/fail"),
            };
            let body = format!("{} {} on {}: {line}", o.command, o.project, o.host);
            (t.clone(), url, Vec::new(), body.into_bytes())
        }
        Kind::Ntfy => {
            let verb = if ok { "succeeded" } else { "failed" };
            let title = format!("{} of {} {verb}", o.command, o.project);
            let priority = if ok { "default" } else { "high" };
            let tags = if ok { "white_check_mark" } else { "warning" };
            let headers = vec![
                ("Title", title),
                ("Priority", priority.to_string()),
                ("Tags", tags.to_string()),
            ];
            let body = format!("{line} (exit {}, on {})", o.exit_code, o.host);
            (t.clone(), t.url.clone(), headers, body.into_bytes())
        }
    }
}

/// Sends every call at once and waits for all (each at most [`TIMEOUT`]); says which failed.
fn deliver(calls: Vec<Call>) {
    if calls.is_empty() {
        return;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return crate::output::warn(format!("notifications not sent: {e}")),
    };
    let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => return crate::output::warn(format!("notifications not sent: {e}")),
    };
    let failures: Vec<String> = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (t, url, headers, body) in calls {
            let mut req = client.post(url).body(body);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            set.spawn(async move {
                let sent = tokio::time::timeout(TIMEOUT, req.send()).await;
                match sent {
                    Ok(Ok(r)) if r.status().is_success() => None,
                    Ok(Ok(r)) => Some(format!("{} answered {}", t.shown, r.status())),
                    Ok(Err(e)) => Some(format!("{}: {}", t.shown, short(&e))),
                    Err(_) => Some(format!("{}: no answer in {} s", t.shown, TIMEOUT.as_secs())),
                }
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.extend(r.ok().flatten());
        }
        out
    });
    rt.shutdown_background();
    for f in failures {
        crate::output::warn(format!("notification not delivered: {f}"));
    }
}

/// reqwest's error without the URL it carries (tokens live in URLs).
fn short(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("no answer in {} s", TIMEOUT.as_secs())
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "the request failed".to_string()
    }
}

/// Healthchecks' `/start` or `/fail` on a ping URL: after its path, before its query
/// (`…/ping/<uuid>/fail?rid=1`; after the query Healthchecks would read a success).
fn with_suffix(url: &str, suffix: &str) -> String {
    match url.split_once('?') {
        Some((path, query)) => format!("{}{suffix}?{query}", path.trim_end_matches('/')),
        None => format!("{}{suffix}", url.trim_end_matches('/')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthchecks_suffixes_go_before_the_query() {
        assert_eq!(
            with_suffix("http://h/ping/u?rid=1", "/fail"),
            "http://h/ping/u/fail?rid=1"
        );
        assert_eq!(
            with_suffix("http://h/ping/u", "/start"),
            "http://h/ping/u/start"
        );
        assert_eq!(
            with_suffix("http://h/ping/u/", "/fail"),
            "http://h/ping/u/fail"
        );
    }

    #[test]
    fn urls_choose_the_protocol_and_show_only_scheme_and_host() {
        let hc = parse("hc+https://hc-ping.com/ping/1234-uuid").unwrap();
        assert_eq!(
            (hc.kind, hc.url.as_str(), hc.shown.as_str()),
            (
                Kind::Healthchecks,
                "https://hc-ping.com/ping/1234-uuid",
                "https://hc-ping.com"
            )
        );
        assert_eq!(
            parse("https://hc.example/ping/x").unwrap().kind,
            Kind::Healthchecks
        );
        let ntfy = parse("ntfy+http://10.0.0.2:8080/backups").unwrap();
        assert_eq!(
            (ntfy.kind, ntfy.url.as_str()),
            (Kind::Ntfy, "http://10.0.0.2:8080/backups")
        );
        let hook = parse("https://user:secret@hooks.example/t/abc?token=x").unwrap();
        assert_eq!(
            (hook.kind, hook.shown.as_str()),
            (Kind::Webhook, "https://hooks.example")
        );
        let bad = parse("ftp://secret-host/x").unwrap_err().to_string();
        assert!(
            bad.starts_with("notification URL ftp://secret-host… is not one"),
            "{bad}"
        );
        assert!(parse("ntfy+ftp://x/y").is_err());
    }
}
