//! `schedule install|list|remove`: a project's backups from a systemd timer or a cron line.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::cli::{Format, ScheduleAction, ScheduleArgs, ScheduleInstallArgs};
use crate::exit_codes::{Code, UserError};
use crate::output::{note, print, table};
use crate::schedule::{self, Installed, Job};
use crate::Context;

pub fn run(ctx: &Context, args: &ScheduleArgs, out: &mut dyn Write) -> Result<()> {
    match &args.action {
        ScheduleAction::Install(a) => install(ctx, a, out),
        ScheduleAction::List(a) => list(ctx, a.format, out),
        ScheduleAction::Remove => remove(ctx),
    }
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UserError::new(Code::Usage, msg).into()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether systemd runs this machine (PID 1), as `sd_booted()` decides.
fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn catalog_dir(ctx: &Context) -> PathBuf {
    let path = ctx.catalog_path();
    let path = std::path::absolute(&path).unwrap_or(path);
    path.parent().unwrap_or(Path::new("/")).to_path_buf()
}

/// The job of this project: the installed binary, the project's folder and files, the catalog.
fn job(ctx: &Context, create_args: &[String]) -> Result<Job> {
    let mut words = vec!["docker-nuwax-backup".to_string(), "create".to_string()];
    words.extend(create_args.iter().cloned());
    if let Err(e) = <crate::cli::Cli as clap::Parser>::try_parse_from(&words) {
        let first = e.to_string().lines().next().unwrap_or_default().to_string();
        return Err(usage(format!("the create arguments are refused: {first}")));
    }
    let project = crate::compose::Project::load(&ctx.docker, &ctx.compose)?;
    let catalog = ctx.catalog_path();
    Ok(Job {
        project: project.name.clone(),
        exe: std::env::current_exe().context("finding this program's path")?,
        project_dir: project.dir.clone(),
        compose_files: project.compose_files.clone(),
        catalog: std::path::absolute(&catalog).unwrap_or(catalog),
        create_args: create_args.to_vec(),
    })
}

fn install(ctx: &Context, a: &ScheduleInstallArgs, out: &mut dyn Write) -> Result<()> {
    let job = job(ctx, &a.create_args)?;
    let record = schedule::record_path(&catalog_dir(ctx), &job.project);
    if record.exists() && !a.print {
        return Err(usage(format!(
            "project {} already has a schedule: `schedule remove` it first",
            job.project
        )));
    }
    let use_cron = a.cron || (!a.systemd && !systemd_runs());
    let installed = match use_cron {
        true => cron(&job, a, out)?,
        false => systemd(&job, a, out)?,
    };
    let Some(installed) = installed else {
        return Ok(());
    };
    crate::private::create_dir_all(record.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(&record, serde_json::to_vec_pretty(&installed)?)
        .with_context(|| format!("writing {}", record.display()))?;
    note(format!(
        "scheduled {} ({}: {})",
        job.project, installed.kind, installed.when
    ));
    Ok(())
}

/// Checks a calendar spec with `systemd-analyze calendar` where it exists.
fn check_calendar(spec: &str) -> Result<()> {
    let Ok(out) = Command::new("systemd-analyze")
        .args(["calendar", spec])
        .output()
    else {
        return Ok(());
    };
    if !out.status.success() {
        return Err(usage(format!(
            "--on-calendar {spec:?} is not a systemd calendar spec (systemd-analyze calendar refused it)"
        )));
    }
    Ok(())
}

fn unit_dir() -> Result<PathBuf> {
    if is_root() {
        return Ok(PathBuf::from("/etc/systemd/system"));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("no HOME to put user units in")?;
    Ok(base.join("systemd/user"))
}

fn systemd(job: &Job, a: &ScheduleInstallArgs, out: &mut dyn Write) -> Result<Option<Installed>> {
    check_calendar(&a.on_calendar)?;
    let name = schedule::unit_name(&job.project);
    let service = schedule::service_unit(job);
    let timer = schedule::timer_unit(&job.project, &a.on_calendar, a.randomized_delay.as_deref());
    if a.print {
        write!(out, "# {name}.service\n{service}\n# {name}.timer\n{timer}")?;
        return Ok(None);
    }
    let dir = unit_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = [
        dir.join(format!("{name}.service")),
        dir.join(format!("{name}.timer")),
    ];
    for (f, text) in files.iter().zip([&service, &timer]) {
        if f.exists() {
            return Err(usage(format!(
                "{} exists and was not written by `schedule install`: remove or rename it",
                f.display()
            )));
        }
        write_public(f, text)?;
    }
    let user = !is_root();
    if systemd_runs() {
        let ctl = |args: &[&str]| {
            let mut c = Command::new("systemctl");
            if user {
                c.arg("--user");
            }
            c.args(args).status().map(|s| s.success()).unwrap_or(false)
        };
        if !(ctl(&["daemon-reload"]) && ctl(&["enable", "--now", &format!("{name}.timer")])) {
            crate::output::warn(format!(
                "the units are written but systemctl did not enable {name}.timer"
            ));
        }
    } else {
        note("systemd does not run here: the units are written, not enabled");
    }
    Ok(Some(Installed {
        project: job.project.clone(),
        kind: if user { "systemd-user" } else { "systemd" }.into(),
        files: files.to_vec(),
        when: a.on_calendar.clone(),
        command: job.shell_line(),
    }))
}

fn write_public(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn cron(job: &Job, a: &ScheduleInstallArgs, out: &mut dyn Write) -> Result<Option<Installed>> {
    let expr = match (&a.cron_expr, schedule::cron_of(&a.on_calendar)) {
        (Some(e), _) if e.split_whitespace().count() == 5 => e.clone(),
        (Some(e), _) => return Err(usage(format!("--cron-expr {e:?} is not 5 fields"))),
        (None, Some(e)) => e.to_string(),
        (None, None) => {
            return Err(usage(format!(
                "--on-calendar {:?} has no cron form: pass --cron-expr 'MIN HOUR DOM MON DOW'",
                a.on_calendar
            )))
        }
    };
    let root = is_root();
    let line = schedule::cron_line(job, &expr, root.then_some("root"));
    if a.print {
        write!(out, "{line}")?;
        return Ok(None);
    }
    let files = if root {
        let f = PathBuf::from("/etc/cron.d").join(schedule::unit_name(&job.project));
        std::fs::create_dir_all("/etc/cron.d")?;
        write_public(
            &f,
            &format!("# Written by docker-nuwax-backup `schedule install`.\n{line}"),
        )?;
        vec![f]
    } else {
        let mut tab = crontab_lines(&job.project)?;
        tab.push_str(&line);
        set_crontab(&tab)?;
        Vec::new()
    };
    Ok(Some(Installed {
        project: job.project.clone(),
        kind: if root { "cron.d" } else { "crontab" }.into(),
        files,
        when: expr,
        command: job.shell_line(),
    }))
}

/// This user's crontab without the project's line.
fn crontab_lines(project: &str) -> Result<String> {
    let out = Command::new("crontab")
        .arg("-l")
        .output()
        .context("running crontab (install cron)")?;
    let marker = format!(" # nuwaxbackup:{project}");
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter(|l| !l.ends_with(&marker))
        .map(|l| format!("{l}\n"))
        .collect())
}

fn set_crontab(text: &str) -> Result<()> {
    let mut child = Command::new("crontab")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running crontab (install cron)")?;
    child
        .stdin
        .take()
        .context("crontab's input")?
        .write_all(text.as_bytes())?;
    anyhow::ensure!(child.wait()?.success(), "crontab refused the new table");
    Ok(())
}

fn remove(ctx: &Context) -> Result<()> {
    let project = ctx.project_name()?;
    let record = schedule::record_path(&catalog_dir(ctx), &project);
    let Ok(text) = std::fs::read(&record) else {
        return Err(usage(format!("project {project} has no schedule")));
    };
    let installed: Installed =
        serde_json::from_slice(&text).with_context(|| format!("reading {}", record.display()))?;
    if installed.kind.starts_with("systemd") && systemd_runs() {
        let mut c = Command::new("systemctl");
        if installed.kind == "systemd-user" {
            c.arg("--user");
        }
        let timer = format!("{}.timer", schedule::unit_name(&project));
        let _ = c.args(["disable", "--now", &timer]).status();
    }
    for f in &installed.files {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", f.display()))
            }
            _ => {}
        }
    }
    if installed.kind == "crontab" {
        set_crontab(&crontab_lines(&project)?)?;
    }
    std::fs::remove_file(&record).with_context(|| format!("removing {}", record.display()))?;
    note(format!("removed the schedule of {project}"));
    Ok(())
}

/// One line of `schedule list`.
#[derive(serde::Serialize)]
struct Listed {
    project: String,
    kind: String,
    when: String,
    next_run: Option<String>,
    last_result: Option<String>,
    last_run: Option<String>,
}

fn list(ctx: &Context, format: Format, out: &mut dyn Write) -> Result<()> {
    let dir = catalog_dir(ctx).join("schedules");
    let catalog = ctx.catalog()?;
    let mut rows = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    for path in names {
        let Ok(i) = serde_json::from_slice::<Installed>(&std::fs::read(&path)?) else {
            continue;
        };
        let newest = catalog.list(Some(&i.project))?.into_iter().next();
        rows.push(Listed {
            next_run: next_run(&i),
            last_result: newest.as_ref().map(|r| r.status.to_string()),
            last_run: newest.map(|r| r.created_at),
            project: i.project,
            kind: i.kind,
            when: i.when,
        });
    }
    print(out, format, &rows, |rows, out| {
        let lines = rows.iter().map(|r| {
            vec![
                r.project.clone(),
                r.kind.clone(),
                r.when.clone(),
                r.next_run.clone().unwrap_or_else(|| "-".into()),
                match (&r.last_result, &r.last_run) {
                    (Some(s), Some(t)) => format!("{s} ({})", super::list::local_time(t)),
                    _ => "-".into(),
                },
            ]
        });
        let headers = ["PROJECT", "BY", "WHEN", "NEXT RUN", "LAST RESULT"];
        Ok(write!(out, "{}", table(&headers, lines))?)
    })
}

/// The next run of a systemd schedule, as `systemd-analyze calendar` says it.
fn next_run(i: &Installed) -> Option<String> {
    if !i.kind.starts_with("systemd") {
        return None;
    }
    let out = Command::new("systemd-analyze")
        .args(["calendar", &i.when])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Next elapse: ").map(String::from))
}
