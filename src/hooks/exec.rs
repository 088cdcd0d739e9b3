//! Runs one command the operator wrote (a hook, a restore test's check) under a timeout: in a
//! process group of its own, its output copied to stderr line by line behind a prefix, and
//! the whole group killed when the time is up or the run is cancelled.
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The first line a command run in a container writes on stderr: its shell's pid there, which
/// leads the process group a timeout kills (see [`in_container`]).
const PID_MARK: &str = "nuwax-hook-pid ";

/// The longest part of one output line that is kept (shown, remembered as the last line, and
/// so passed on in messages and `NUWAX_BACKUP_ERROR`); the rest is counted, never stored, so
/// memory stays flat whatever a command prints.
pub const MAX_LINE: usize = 4096;

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// Its exit code (`None`: killed by a signal, or by us).
    pub code: Option<i32>,
    pub timed_out: bool,
    /// The last line it wrote on stderr, else on stdout (for the error message).
    pub last_line: String,
}

impl Ran {
    pub fn succeeded(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// `failed: exit 3: <last line>`, `timed out after 2s and was killed`…
    pub fn describe(&self, timeout: Duration) -> String {
        let how = match (self.timed_out, self.code) {
            (true, _) => format!(
                "timed out after {} and was killed",
                humantime::format_duration(timeout)
            ),
            (false, Some(c)) => format!("failed: exit {c}"),
            (false, None) => "failed: killed by a signal".to_string(),
        };
        match self.last_line.trim() {
            "" => how,
            line => format!("{how}: {line}"),
        }
    }
}

/// The shell text run in a container: first says its pid (on stderr), then runs `command`.
pub fn in_container(command: &str) -> String {
    format!("echo \"{PID_MARK}$$\" >&2\n{command}")
}

/// What the output readers found.
#[derive(Default)]
struct Seen {
    last_err: String,
    last_out: String,
    inner_pid: Option<u32>,
}

/// Runs `cmd` (stdin closed) until it exits or `timeout` passes; then kills its process group
/// and calls `kill_inside` with the pid its in-container shell said (see [`in_container`]).
/// Fails only when it cannot be started, or when the run is cancelled (after the kill).
pub fn run(
    mut cmd: Command,
    prefix: &str,
    timeout: Duration,
    kill_inside: &dyn Fn(u32),
) -> Result<Ran> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let readers = [
        copy_lines(child.stdout.take(), prefix, seen.clone(), false),
        copy_lines(child.stderr.take(), prefix, seen.clone(), true),
    ];
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        let cancelled = crate::cancel::requested();
        if cancelled || started.elapsed() >= timeout {
            timed_out = !cancelled;
            if let Some(pid) = seen.lock().map(|s| s.inner_pid).ok().flatten() {
                kill_inside(pid);
            }
            kill_group(child.id());
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The group is gone, so the pipes close; a process that left the group and kept them
    // open does not hold the run: its readers are left behind after a grace second.
    let deadline = Instant::now() + Duration::from_secs(1);
    for r in readers {
        while !r.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    crate::cancel::check()?;
    let seen = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("an output reader panicked"))?;
    let last = match seen.last_err.is_empty() {
        true => seen.last_out.clone(),
        false => seen.last_err.clone(),
    };
    Ok(Ran {
        code: if timed_out { None } else { status.code() },
        timed_out,
        last_line: last,
    })
}

fn kill_group(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Copies `from` line by line to stderr behind `prefix`, remembering the last line (and, on
/// stderr, the in-container pid line, which is not shown).
fn copy_lines(
    from: Option<impl Read + Send + 'static>,
    prefix: &str,
    seen: Arc<Mutex<Seen>>,
    is_err: bool,
) -> std::thread::JoinHandle<()> {
    let prefix = prefix.to_string();
    std::thread::spawn(move || {
        let Some(from) = from else { return };
        each_line(from, |text| {
            let Ok(mut s) = seen.lock() else { return };
            if is_err && s.inner_pid.is_none() {
                if let Some(pid) = text
                    .strip_prefix(PID_MARK)
                    .and_then(|p| p.trim().parse().ok())
                {
                    s.inner_pid = Some(pid);
                    return;
                }
            }
            if !text.trim().is_empty() {
                let last = if is_err {
                    &mut s.last_err
                } else {
                    &mut s.last_out
                };
                *last = text.to_string();
            }
            drop(s);
            crate::output::stderr_line(format_args!("{prefix} {text}"));
        });
    })
}

/// Calls `f` with each line `from` writes: at most [`MAX_LINE`] bytes of it, NULs shown as
/// U+FFFD, a trailing CR dropped, and what was cut counted at its end. A last line without a
/// newline counts too.
fn each_line(from: impl Read, mut f: impl FnMut(&str)) {
    let mut r = BufReader::new(from);
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut cut = 0u64;
    let mut emit = |line: &mut Vec<u8>, cut: &mut u64| {
        let text = String::from_utf8_lossy(line).replace('\0', "\u{fffd}");
        let text = text.trim_end_matches('\r');
        match *cut {
            0 => f(text),
            n => f(&format!("{text}… ({n} more bytes of this line not shown)")),
        }
        line.clear();
        *cut = 0;
    };
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if buf.is_empty() {
            if !line.is_empty() || cut > 0 {
                emit(&mut line, &mut cut);
            }
            return;
        }
        let end = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..end.unwrap_or(buf.len())];
        let take = chunk.len().min(MAX_LINE.saturating_sub(line.len()));
        line.extend_from_slice(&chunk[..take]);
        cut += (chunk.len() - take) as u64;
        let used = end.map_or(chunk.len(), |i| i + 1);
        r.consume(used);
        if end.is_some() {
            emit(&mut line, &mut cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        each_line(input, |l| out.push(l.to_string()));
        out
    }

    #[test]
    fn lines_are_kept_up_to_their_bound_and_the_rest_is_counted() {
        assert_eq!(lines_of(b"a\r\nb\n\nc"), ["a", "b", "", "c"]);
        let long = vec![b'x'; 3 << 20];
        let got = lines_of(&long);
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with(&"x".repeat(MAX_LINE)));
        assert!(got[0].ends_with(&format!(
            "({} more bytes of this line not shown)",
            (3 << 20) - MAX_LINE
        )));
        assert!(got[0].len() < MAX_LINE + 100);
        assert_eq!(lines_of(b"a\0b\n"), ["a\u{fffd}b"]);
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn the_exit_code_and_the_last_stderr_line_are_kept() {
        let ran = run(
            sh("echo out; echo first >&2; echo last >&2; exit 3"),
            "t |",
            Duration::from_secs(10),
            &|_| {},
        )
        .unwrap();
        assert_eq!(ran.code, Some(3));
        assert_eq!(ran.last_line, "last");
        assert_eq!(ran.describe(Duration::from_secs(1)), "failed: exit 3: last");
        let ok = run(sh("echo only-out"), "t |", Duration::from_secs(10), &|_| {}).unwrap();
        assert!(ok.succeeded());
        assert_eq!(ok.last_line, "only-out");
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("child-pid");
        let script = format!("sleep 30 & echo $! > {}; wait", mark.display());
        let t0 = Instant::now();
        let ran = run(sh(&script), "t |", Duration::from_millis(300), &|_| {}).unwrap();
        assert!(ran.timed_out && !ran.succeeded());
        assert!(t0.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(&mark)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background child is gone too (a zombie reaped by init at most).
        std::thread::sleep(Duration::from_millis(200));
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(state.is_empty() || state.contains(") Z "), "{state}");
        assert_eq!(
            ran.describe(Duration::from_secs(2)),
            "timed out after 2s and was killed"
        );
    }

    #[test]
    fn the_in_container_pid_line_is_read_and_not_shown() {
        let ran = run(
            sh(&in_container("exit 0")),
            "t |",
            Duration::from_secs(10),
            &|_| {},
        )
        .unwrap();
        assert!(ran.succeeded());
        assert_eq!(ran.last_line, "");
    }
}
