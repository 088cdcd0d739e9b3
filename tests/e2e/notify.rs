//! Notifications (issue 30, part 2) against receivers started on 127.0.0.1: a webhook, the
//! Healthchecks ping protocol, ntfy, and one that never answers.
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::harness::{app_running, app_with, running_app};

/// A receiver logging every request as a JSON line (method, path, headers, body); it answers
/// 200 at once, or never when `hang`.
struct Receiver {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

const RECEIVER: &str = r#"
import http.server, json, sys, time
log, hang = sys.argv[1], sys.argv[2] == "hang"
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode("utf-8", "replace")
        with open(log, "a") as f:
            f.write(json.dumps({"path": self.path, "headers": dict(self.headers), "body": body}) + "\n")
        if hang:
            time.sleep(3600)
        self.send_response(200)
        self.end_headers()
    do_GET = do_POST
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

impl Receiver {
    fn start(hang: bool) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let mode = if hang { "hang" } else { "answer" };
        let mut child = Command::new("python3")
            .args(["-c", RECEIVER, log.to_str().unwrap(), mode])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Receiver {
            child,
            port: line.trim().parse().unwrap(),
            log,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn paths(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_webhook_gets_the_outcome_of_a_success_and_of_a_failure() {
    let Some(p) = running_app("notify-hook") else {
        return;
    };
    let hook = Receiver::start(false);
    let url = hook.url("/hook/secret-token");
    let ok = p
        .plugin(&[
            "create",
            "--stop",
            "--notify",
            &url,
            "--notify-on",
            "always",
            "--format",
            "json",
        ])
        .success()
        .json();
    // Refused while it runs (exit 8): the notification says so, the exit code is the run's.
    let refused = p.plugin(&["create", "--notify", &url]).failure(8);
    let got = hook.requests();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["path"], "/hook/secret-token");
    assert_eq!(got[0]["headers"]["content-type"], "application/json");
    let success: serde_json::Value =
        serde_json::from_str(got[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(success["command"], "create");
    assert_eq!(success["project"], p.name.as_str());
    assert_eq!(success["status"], "succeeded");
    assert_eq!(success["exit_code"], 0);
    assert_eq!(success["error"], serde_json::Value::Null);
    assert_eq!(success["backup"]["id"], ok["id"]);
    assert_eq!(success["backup"]["location"], "local");
    assert_eq!(success["downtime_ms"], ok["downtime_ms"]);
    assert!(success["duration_ms"].as_u64().unwrap() > 0);
    let failure: serde_json::Value =
        serde_json::from_str(got[1]["body"].as_str().unwrap()).unwrap();
    assert_eq!(failure["status"], "failed");
    assert_eq!(failure["exit_code"], 8);
    assert_eq!(failure["error"].as_str().unwrap(), refused.error_line());
    assert_eq!(failure["backup"], serde_json::Value::Null);
    // Failures only (the default): a success is not told.
    p.plugin(&["create", "--stop", "--notify", &url]).success();
    assert_eq!(hook.requests().len(), 2);
    assert!(!refused.stderr.contains("secret-token"));
    app_running(&p);
}

#[test]
fn healthchecks_hears_start_then_success_start_then_fail_and_a_killed_run_only_starts() {
    let Some(p) = running_app("notify-hc") else {
        return;
    };
    let hc = Receiver::start(false);
    let url = format!("hc+{}", hc.url("/ping/0a1b-uuid"));
    p.plugin(&["create", "--stop", "--notify", &url]).success();
    assert_eq!(hc.paths(), ["/ping/0a1b-uuid/start", "/ping/0a1b-uuid"]);
    p.plugin(&["create", "--notify", &url]).failure(8);
    assert_eq!(
        hc.paths()[2..],
        ["/ping/0a1b-uuid/start", "/ping/0a1b-uuid/fail"]
    );
    let fail_body = hc.requests()[3]["body"].as_str().unwrap().to_string();
    assert!(
        fail_body.starts_with(&format!("create {} on ", p.name)),
        "{fail_body}"
    );
    assert!(fail_body.contains("cold backup refused"), "{fail_body}");
    // Killed mid-run: /start and nothing else, which is how Healthchecks notices.
    let env = [("NUWAX_BACKUP_TEST_KILL_AT", "create-archiving")];
    let killed = p.plugin_env(
        &env,
        &["create", "--stop", "--capture", "direct", "--notify", &url],
    );
    assert_ne!(killed.code, 0);
    assert_eq!(hc.paths()[4..], ["/ping/0a1b-uuid/start"]);
    p.plugin(&["recover"]).success();
    app_running(&p);
}

#[test]
fn ntfy_gets_a_title_and_a_high_priority_failure_from_the_compose_file() {
    let Some(p) = running_app("notify-ntfy") else {
        return;
    };
    let ntfy = Receiver::start(false);
    let topic = format!("ntfy+{}", ntfy.url("/backups"));
    let yaml =
        app_with("\"./data:/data\"") + &format!("x-nuwax-backup:\n  notify: [\"{topic}\"]\n");
    p.write_compose(&yaml);
    p.plugin(&["create"]).failure(8);
    let got = ntfy.requests();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["path"], "/backups");
    assert_eq!(
        got[0]["headers"]["title"],
        format!("create of {} failed", p.name)
    );
    assert_eq!(got[0]["headers"]["priority"], "high");
    assert!(
        got[0]["body"].as_str().unwrap().contains("(exit 8, on "),
        "{got:?}"
    );
}

#[test]
fn a_receiver_that_never_answers_is_a_warning_and_the_exit_code_stays_the_runs() {
    let Some(p) = running_app("notify-hang") else {
        return;
    };
    let dead = Receiver::start(true);
    let url = dead.url("/hook?token=s3cr3t");
    let begun = std::time::Instant::now();
    let run = p
        .plugin(&[
            "create",
            "--stop",
            "--notify",
            &url,
            "--notify-on",
            "always",
        ])
        .success();
    // Not a timing assertion: a hang would wait an hour.
    assert!(begun.elapsed() < std::time::Duration::from_secs(120));
    let warning = format!(
        "warning: notification not delivered: http://127.0.0.1:{}: no answer in 10 s",
        dead.port
    );
    assert!(run.stderr.lines().any(|l| l == warning), "{}", run.stderr);
    assert!(!run.stderr.contains("s3cr3t"));
    let bad = p.plugin(&["list", "--notify", &url]).failure(2);
    assert_eq!(
        bad.error_line(),
        "--notify applies to create, rollback, prune, push and recover"
    );
    app_running(&p);
}
