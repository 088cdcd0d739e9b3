//! What `schedule install` writes, as pure text: a systemd service and timer for a project,
//! or a cron line; and the private record of what was written, so that `schedule remove`
//! removes that and nothing else.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What runs the night's backup: the installed binary, the project's options, the catalog,
/// and `create --wait-lock` with the user's create arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub project: String,
    pub exe: PathBuf,
    pub project_dir: PathBuf,
    pub compose_files: Vec<PathBuf>,
    pub catalog: PathBuf,
    pub create_args: Vec<String>,
}

/// How long the night's run waits for a manual run's lock before it fails (exit 9).
pub const WAIT_LOCK: &str = "6h";

impl Job {
    /// The command's words.
    pub fn argv(&self) -> Vec<String> {
        let mut v = vec![
            self.exe.display().to_string(),
            "--project-directory".into(),
            self.project_dir.display().to_string(),
        ];
        for f in &self.compose_files {
            v.push("-f".into());
            v.push(f.display().to_string());
        }
        v.extend([
            "-p".into(),
            self.project.clone(),
            "--catalog".into(),
            self.catalog.display().to_string(),
            "create".into(),
            "--wait-lock".into(),
            WAIT_LOCK.into(),
        ]);
        v.extend(self.create_args.iter().cloned());
        v
    }

    /// The command line for a shell (cron), every word quoted.
    pub fn shell_line(&self) -> String {
        self.argv()
            .iter()
            .map(|w| sh_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The command line for systemd's `ExecStart=` (its own quoting rules: double quotes,
    /// `\\` and `\"` escaped, `%` doubled, `$` doubled).
    pub fn exec_start(&self) -> String {
        let quote = |w: &str| {
            let e = w
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('%', "%%")
                .replace('$', "$$");
            format!("\"{e}\"")
        };
        self.argv()
            .iter()
            .map(|w| quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn sh_quote(w: &str) -> String {
    if !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:+,@".contains(&b))
    {
        return w.to_string();
    }
    format!("'{}'", w.replace('\'', "'\\''"))
}

/// The unit name: `nuwaxbackup-<project>` (Compose's project names are already safe).
pub fn unit_name(project: &str) -> String {
    format!("nuwaxbackup-{project}")
}

/// The service unit.
pub fn service_unit(job: &Job) -> String {
    format!(
        "# Written by docker-nuwax-backup `schedule install`; `schedule remove` removes it.\n\
         [Unit]\n\
         Description=Cold backup of the compose project {project}\n\
         Wants=network-online.target docker.service\n\
         After=network-online.target docker.service\n\n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={exec}\n",
        project = job.project,
        exec = job.exec_start()
    )
}

/// The timer: `on_calendar` (systemd's calendar syntax), a run missed while the host was off
/// made at boot (`Persistent=true`), spread by `randomized_delay` when given.
pub fn timer_unit(project: &str, on_calendar: &str, randomized_delay: Option<&str>) -> String {
    let mut t = format!(
        "# Written by docker-nuwax-backup `schedule install`; `schedule remove` removes it.\n\
         [Unit]\n\
         Description=Cold backups of the compose project {project}\n\n\
         [Timer]\n\
         OnCalendar={on_calendar}\n\
         Persistent=true\n"
    );
    if let Some(d) = randomized_delay {
        t.push_str(&format!("RandomizedDelaySec={d}\n"));
    }
    t.push_str("\n[Install]\nWantedBy=timers.target\n");
    t
}

/// A cron line (`/etc/cron.d` lines name the user; a crontab's do not), marked with the
/// project so that `schedule remove` finds exactly it.
pub fn cron_line(job: &Job, expr: &str, user: Option<&str>) -> String {
    let who = user.map(|u| format!("{u} ")).unwrap_or_default();
    // cron reads an unescaped `%` as a newline.
    let command = job.shell_line().replace('%', "\\%");
    format!("{expr} {who}{command} # nuwaxbackup:{}\n", job.project)
}

/// The 5-field cron expression of a systemd calendar keyword; `None` for any other spec.
pub fn cron_of(on_calendar: &str) -> Option<&'static str> {
    Some(match on_calendar {
        "hourly" => "0 * * * *",
        "daily" => "0 0 * * *",
        "weekly" => "0 0 * * 1",
        "monthly" => "0 0 1 * *",
        _ => return None,
    })
}

/// What `schedule install` wrote, kept privately beside the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub project: String,
    /// `systemd`, `systemd-user`, `cron.d` or `crontab`.
    pub kind: String,
    /// The files written (units, a cron.d file); none for a crontab line.
    pub files: Vec<PathBuf>,
    /// `OnCalendar=` or the cron expression.
    pub when: String,
    pub command: String,
}

/// Where the record of project `project`'s schedule is.
pub fn record_path(catalog_dir: &Path, project: &str) -> PathBuf {
    catalog_dir
        .join("schedules")
        .join(format!("{project}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            project: "shop".into(),
            exe: "/usr/local/bin/docker-nuwax-backup".into(),
            project_dir: "/srv/my shop".into(),
            compose_files: vec!["/srv/my shop/compose.yaml".into()],
            catalog: "/root/.local/share/nuwax-backup/catalog.db".into(),
            create_args: vec!["--stop".into(), "--remote".into(), "s3://b/p%1".into()],
        }
    }

    #[test]
    fn the_unit_runs_the_installed_binary_with_the_project_and_waits_for_the_lock() {
        let unit = service_unit(&job());
        let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert_eq!(
            exec,
            "ExecStart=\"/usr/local/bin/docker-nuwax-backup\" \"--project-directory\" \"/srv/my shop\" \"-f\" \"/srv/my shop/compose.yaml\" \"-p\" \"shop\" \"--catalog\" \"/root/.local/share/nuwax-backup/catalog.db\" \"create\" \"--wait-lock\" \"6h\" \"--stop\" \"--remote\" \"s3://b/p%%1\""
        );
        let timer = timer_unit("shop", "daily", Some("30m"));
        assert!(timer.contains("OnCalendar=daily\nPersistent=true\nRandomizedDelaySec=30m\n"));
        let line = cron_line(&job(), "0 0 * * *", Some("root"));
        assert!(line.starts_with("0 0 * * * root /usr/local/bin/docker-nuwax-backup --project-directory '/srv/my shop' -f"));
        assert!(line.ends_with(" # nuwaxbackup:shop\n"));
        assert_eq!(cron_of("daily"), Some("0 0 * * *"));
        assert_eq!(cron_of("Mon *-*-* 03:00"), None);
    }
}
