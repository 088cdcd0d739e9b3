//! `__complete`: answers docker's completion requests the way cobra does (docker runs
//! `docker-nuwaxbackup __complete nuwaxbackup ARGS… CURRENT`): one `value\tdescription`
//! line per candidate, then `:N`, the directive (4 no file completion, 16 folders only,
//! 32 keep order). Candidates come from the clap model itself, plus backup IDs from the
//! catalog (read-only, never created, never waited on) and the project's volumes from
//! `docker compose config` (given one second). Never prints to stderr; on any problem: no
//! candidates and `:4`, exit 0.
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, Command, CommandFactory, ValueHint};

use crate::cli::{Cli, ComposeArgs};
use crate::compose::ConfigJson;
use crate::docker::Docker;
use crate::records::Status;

const NO_FILES: u32 = 4;
const FOLDERS: u32 = 16;
const KEEP_ORDER: u32 = 32;
const DEFAULT: u32 = 0;

/// What the user already typed that changes the answers: the compose project flags and
/// the catalog, in the same type the commands parse them into.
pub type Typed = ComposeArgs;

/// The answers that need the catalog or Compose.
pub trait Lookup {
    /// `(id, description)`, newest first; `None` when the project or catalog is unknown.
    fn backup_ids(&self, typed: &Typed) -> Option<Vec<(String, String)>>;
    /// Volume names and bind paths of the project.
    fn volumes(&self, typed: &Typed) -> Vec<String>;
}

/// The candidates and directive for `words` (after the plugin's name; the last one is the
/// word being completed).
pub fn answer(words: &[String], lookup: &dyn Lookup) -> (Vec<(String, String)>, u32) {
    let mut root = Cli::command();
    root.build();
    let Some((cur, before)) = words.split_last() else {
        return (Vec::new(), NO_FILES);
    };
    let line = read_line(&root, before);
    if line.lost {
        return (Vec::new(), NO_FILES);
    }
    let cmd = line.sub.unwrap_or(&root);
    if let Some(arg) = line.wants_value {
        return value_of(arg, &line.typed, lookup);
    }
    let matching = |c: Vec<(String, String)>| -> Vec<(String, String)> {
        c.into_iter()
            .filter(|(v, _)| v.starts_with(cur.as_str()))
            .collect()
    };
    if cur.starts_with('-') {
        return (matching(flags(cmd)), NO_FILES);
    }
    match line.sub {
        None => (matching(subcommands(&root)), NO_FILES),
        Some(sub) => positional(sub, &line.typed, lookup, matching),
    }
}

/// What the words before the current one say.
struct Line<'a> {
    sub: Option<&'a Command>,
    /// The flag whose value is being typed.
    wants_value: Option<&'a Arg>,
    typed: Typed,
    /// A word that is no subcommand came first: nothing sensible to offer.
    lost: bool,
}

fn read_line<'a>(root: &'a Command, words: &[String]) -> Line<'a> {
    let mut line = Line {
        sub: None,
        wants_value: None,
        typed: Typed::default(),
        lost: false,
    };
    for w in words {
        if let Some(arg) = line.wants_value.take() {
            remember(&mut line.typed, arg, w);
            continue;
        }
        let cmd = line.sub.unwrap_or(root);
        if let Some(arg) = flag_of(cmd, w) {
            match w.split_once('=') {
                Some((_, v)) if w.starts_with("--") => remember(&mut line.typed, arg, v),
                _ if takes_value(arg) && (w.starts_with("--") || w.len() == 2) => {
                    line.wants_value = Some(arg)
                }
                _ => {}
            }
        } else if line.sub.is_none() && !w.starts_with('-') {
            line.sub = root.find_subcommand(w);
            line.lost |= line.sub.is_none();
        }
    }
    line
}

fn flag_of<'a>(cmd: &'a Command, word: &str) -> Option<&'a Arg> {
    if let Some(long) = word.strip_prefix("--") {
        let name = long.split('=').next().unwrap_or(long);
        return cmd.get_arguments().find(|a| {
            a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|al| al.contains(&name))
        });
    }
    let short = word.strip_prefix('-')?.chars().next()?;
    cmd.get_arguments().find(|a| a.get_short() == Some(short))
}

fn takes_value(arg: &Arg) -> bool {
    arg.get_num_args().is_some_and(|n| n.takes_values())
}

fn remember(t: &mut Typed, arg: &Arg, value: &str) {
    let v = value.to_string();
    match arg.get_id().as_str() {
        "files" => t.files.push(v.into()),
        "project_name" => t.project_name = Some(v),
        "project_directory" => t.project_directory = Some(v.into()),
        "catalog" => t.catalog = Some(v.into()),
        _ => {}
    }
}

fn value_of(arg: &Arg, typed: &Typed, lookup: &dyn Lookup) -> (Vec<(String, String)>, u32) {
    let values: Vec<(String, String)> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| {
            let help = v.get_help().map(|h| h.to_string()).unwrap_or_default();
            (v.get_name().to_string(), help)
        })
        .collect();
    if !values.is_empty() {
        return (values, NO_FILES);
    }
    if arg.get_id() == "exclude" {
        let vols = lookup.volumes(typed);
        return (
            vols.into_iter().map(|v| (v, String::new())).collect(),
            NO_FILES,
        );
    }
    match arg.get_value_hint() {
        ValueHint::DirPath => (Vec::new(), FOLDERS),
        ValueHint::FilePath | ValueHint::AnyPath => (Vec::new(), DEFAULT),
        _ => (Vec::new(), NO_FILES),
    }
}

fn positional(
    sub: &Command,
    typed: &Typed,
    lookup: &dyn Lookup,
    matching: impl Fn(Vec<(String, String)>) -> Vec<(String, String)>,
) -> (Vec<(String, String)>, u32) {
    let Some(arg) = sub.get_positionals().next() else {
        return (Vec::new(), NO_FILES);
    };
    if matches!(arg.get_id().as_str(), "id" | "ids") {
        return match lookup.backup_ids(typed) {
            Some(ids) => (matching(ids), NO_FILES + KEEP_ORDER),
            None => (Vec::new(), NO_FILES),
        };
    }
    value_of(arg, typed, lookup)
}

fn subcommands(root: &Command) -> Vec<(String, String)> {
    root.get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| (c.get_name().to_string(), first_line(c.get_about())))
        .collect()
}

fn flags(cmd: &Command) -> Vec<(String, String)> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| Some((format!("--{}", a.get_long()?), first_line(a.get_help()))))
        .collect()
}

fn first_line(s: Option<&clap::builder::StyledStr>) -> String {
    let text = s.map(|s| s.to_string()).unwrap_or_default();
    text.lines()
        .next()
        .unwrap_or("")
        .trim_end_matches('.')
        .to_string()
}

/// Answers a completion request on stdout; always exit 0.
pub fn run(args: &[OsString]) -> std::process::ExitCode {
    // args: the plugin's name, then the words.
    let words: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // Quiet whatever happens: a panic prints nothing and answers no candidates.
    std::panic::set_hook(Box::new(|_| {}));
    let (candidates, directive) =
        std::panic::catch_unwind(|| answer(&words, &Live)).unwrap_or((Vec::new(), NO_FILES));
    let mut text = String::new();
    for (value, help) in candidates {
        text.push_str(&value);
        if !help.is_empty() {
            text.push('\t');
            text.push_str(&help);
        }
        text.push('\n');
    }
    text.push_str(&format!(":{directive}\n"));
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
    std::process::ExitCode::SUCCESS
}

/// The catalog and Compose on this machine.
struct Live;

impl Lookup for Live {
    fn backup_ids(&self, typed: &Typed) -> Option<Vec<(String, String)>> {
        let project = typed
            .project_name
            .clone()
            .or_else(|| std::env::var("COMPOSE_PROJECT_NAME").ok())
            .or_else(|| config(typed).map(|c| c.name))?;
        let catalog = typed
            .catalog
            .clone()
            .or_else(|| std::env::var_os("NUWAX_BACKUP_CATALOG").map(PathBuf::from));
        let path = crate::catalog::default_path(catalog.as_deref());
        let rows = crate::catalog::completions(&path, &project).ok()?;
        let ids = rows
            .into_iter()
            .filter(|r| r.status == Status::Completed)
            .map(|r| {
                let when = crate::commands::list::local_time(&r.created_at);
                let when = when.get(..16).unwrap_or(&when).to_string();
                let size = crate::output::human_bytes(r.size_bytes);
                let what = format!("{when} {} v{} {size}", r.backup_type, r.service_version);
                (r.id.to_string(), what)
            })
            .collect();
        Some(ids)
    }

    fn volumes(&self, typed: &Typed) -> Vec<String> {
        let Some(cfg) = config(typed) else {
            return Vec::new();
        };
        let mut out: Vec<String> = cfg.volumes.keys().cloned().collect();
        for s in cfg.services.values() {
            for v in s.volumes.iter().filter(|v| v.kind == "bind") {
                if let Some(src) = &v.source {
                    if !out.contains(src) {
                        out.push(src.clone());
                    }
                }
            }
        }
        out
    }
}

/// `docker compose … config --format json`, given one second.
fn config(typed: &Typed) -> Option<ConfigJson> {
    let docker = Docker::new(Vec::new()).ok()?;
    let mut args: Vec<OsString> = vec!["compose".into()];
    args.extend(typed.to_args());
    args.extend(["config", "--format", "json"].map(OsString::from));
    let text = docker.output_within(&args, Duration::from_secs(1))?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::path::Path;

    /// Remembers what it was asked with.
    #[derive(Default)]
    struct Fake {
        asked: RefCell<Vec<Typed>>,
    }

    impl Lookup for Fake {
        fn backup_ids(&self, typed: &Typed) -> Option<Vec<(String, String)>> {
            self.asked.borrow_mut().push(typed.clone());
            Some(vec![
                ("12".into(), "newest".into()),
                ("7".into(), "older".into()),
            ])
        }
        fn volumes(&self, typed: &Typed) -> Vec<String> {
            self.asked.borrow_mut().push(typed.clone());
            vec!["dbdata".into(), "/p/data".into()]
        }
    }

    fn ask(words: &[&str]) -> (Vec<String>, u32, Vec<Typed>) {
        let f = Fake::default();
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let (c, d) = answer(&words, &f);
        let values = c.into_iter().map(|(v, _)| v).collect();
        (values, d, f.asked.into_inner())
    }

    #[test]
    fn each_position_gets_its_candidates() {
        let cases: &[(&[&str], &[&str], u32)] = &[
            (&["ro"], &["rollback"], 4),
            (&["rollback", ""], &["12", "7"], 36),
            (&["rollback", "1"], &["12"], 36),
            (&["verify", "12", ""], &["12", "7"], 36),
            (&["create", "--compression", ""], &["gzip", "zstd"], 4),
            (&["list", "--format", ""], &["table", "json", "ids"], 4),
            (&["rollback", "--exclude", ""], &["dbdata", "/p/data"], 4),
            (
                &["rollback", "--no-s"],
                &["--no-start", "--no-safety-backup"],
                4,
            ),
            (&["migrate-storage", ""], &[], 16),
            (&["create", "--storage", ""], &[], 16),
            (&["import", ""], &[], 0),
            (&["status", ""], &[], 4),
            (&["nonsense", "--x", ""], &[], 4),
            (&[], &[], 4),
        ];
        for (words, want, directive) in cases {
            let (got, d, _) = ask(words);
            let got: Vec<&str> = got.iter().map(String::as_str).collect();
            assert_eq!((got.as_slice(), d), (*want, *directive), "{words:?}");
        }
    }

    #[test]
    fn project_flags_typed_on_the_line_are_passed_on() {
        let (_, _, asked) = ask(&[
            "-f",
            "a.yml",
            "--project-directory=/srv/app",
            "-p",
            "shop",
            "rollback",
            "--catalog",
            "/c.db",
            "",
        ]);
        assert_eq!(asked.len(), 1);
        assert_eq!(
            asked[0].to_args(),
            [
                "-f",
                "a.yml",
                "-p",
                "shop",
                "--project-directory",
                "/srv/app"
            ]
        );
        assert_eq!(asked[0].catalog.as_deref(), Some(Path::new("/c.db")));
    }

    #[test]
    fn hidden_aliases_are_not_offered() {
        let (flags, _, _) = ask(&["rollback", "--"]);
        assert!(flags.contains(&"--data-only".to_string()));
        assert!(
            !flags.iter().any(|f| f.contains("rollback-data")),
            "{flags:?}"
        );
        let (flags, _, _) = ask(&["list", "--"]);
        assert!(!flags.contains(&"--json".to_string()), "{flags:?}");
    }
}
