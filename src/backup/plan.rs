//! The backup plan: what is archived where, what is skipped and why, what must stop, how much
//! space it needs. Pure: built from the project and facts gathered beforehand.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::archive::manifest::Skipped;
use crate::archive::Codec;
use crate::compose::{Kind, Project, Role, Volume};
use crate::crypto::Recipients;
use crate::records::{BackupType, Io};

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub backup_type: BackupType,
    pub service_version: Option<String>,
    pub codec: Codec,
    pub storage: Option<PathBuf>,
    pub stop: bool,
    pub include_external_binds: bool,
    /// `--recipient`/`--recipients-file`: replace the compose file's `encrypt` when given.
    pub recipients: Option<Recipients>,
    /// `--capture`: copy the volumes while stopped, then start, then compress.
    pub capture: CaptureMode,
    /// `--no-hooks`.
    pub no_hooks: bool,
}

/// `--capture auto|copy|direct`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureMode {
    /// Reflink clones where the filesystem has them, else a copy; direct when nothing fits.
    #[default]
    Auto,
    /// A copy even where reflinks would work.
    Copy,
    /// Archive while the services are stopped (no capture).
    Direct,
}

/// How one volume is captured while the services are stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum How {
    /// Cloned file by file (`FICLONE`): no data copied.
    Reflink,
    /// Copied by the kernel (`copy_file_range`) into one tar file (see `pack.rs`).
    Copy,
    /// The engine's `docker cp` tar stream, into a file.
    Stream,
}

/// Where one volume's capture goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Place {
    pub archive_path: String,
    /// The folder the capture is made in (beside the volume, or the storage folder).
    pub folder: PathBuf,
    pub how: How,
}

/// A filesystem a capture could go to, looked at before planning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureFs {
    pub device: u64,
    pub free_bytes: u64,
    pub reflink: bool,
}

/// What a host path is, looked at before planning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Missing,
    Dir,
    File,
    /// A socket, fifo or device.
    Special,
}

/// What the plan needs to know about the world.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub existing_volumes: HashSet<String>,
    pub volume_sizes: HashMap<String, u64>,
    /// Driver, options and labels of existing named volumes, as the engine reports them.
    pub volume_details: HashMap<String, VolumeDetails>,
    pub paths: HashMap<PathBuf, (PathKind, u64)>,
    /// Entries under each host folder walked (binds, named volumes' folders): a pack needs a
    /// header and up to a block of padding for each.
    pub entries: HashMap<PathBuf, u64>,
    /// Binds this process cannot read completely (another user's private folder): the
    /// engine reads them.
    pub unreadable: HashSet<PathBuf>,
    /// Local image IDs by reference, of the services' images the engine has.
    pub image_ids: HashMap<String, String>,
    /// The folders of named volumes this process can read directly (a local engine).
    pub volume_dirs: HashMap<String, PathBuf>,
    /// A storage folder set by `migrate-storage` for this project.
    pub catalog_storage: Option<PathBuf>,
    /// The recipients `x-nuwax-backup.encrypt` names (read, with its file, beforehand).
    pub recipients: Recipients,
    /// Folders a capture could be made in (beside volumes, the storage folder): their
    /// filesystems.
    pub capture_fs: HashMap<PathBuf, CaptureFs>,
    /// Binds (by source) that are mount points: never captured inside or beside.
    pub mount_points: HashSet<PathBuf>,
    /// Folders another user could write (group- or world-writable, or not this user's): no
    /// capture tree is built there (it is built by path), the storage folder is used.
    pub shared_folders: HashSet<PathBuf>,
    pub cwd: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct VolumeDetails {
    pub driver: String,
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

/// One volume to archive.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub kind: &'static str,
    pub volume: String,
    pub role: Role,
    pub archive_path: String,
    pub size_bytes: u64,
    /// Who reads it: this process from disk, or the engine (`docker cp`).
    pub io: Io,
    pub reason: &'static str,
    #[serde(skip)]
    pub decl: Volume,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub project: String,
    pub project_dir: PathBuf,
    pub backup_type: BackupType,
    pub service_version: String,
    pub compression: &'static str,
    pub storage: PathBuf,
    pub archive_name: String,
    pub created_at: String,
    /// Containers that will be stopped (with `--stop`) or that block the backup (without).
    pub running: Vec<String>,
    pub volumes: Vec<Item>,
    pub skipped: Vec<Skipped>,
    /// Uncompressed bytes of all volumes: the free space required.
    pub bytes_needed: u64,
    /// Encrypted with age to `recipients` (public keys; the archive name ends in `.age`).
    pub encrypted: bool,
    pub recipients: Vec<String>,
    /// `reflink`, `copy`, `stream` or `direct`: how the volumes are read while stopped.
    pub capture: crate::records::Capture,
    /// Where each volume is captured (empty: direct).
    pub capture_places: Vec<Place>,
    /// Why the capture is not made, when it was asked for and is not.
    pub capture_note: Option<String>,
    /// Where the archive is copied once the services run again (`s3://…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The hooks each phase would run, in order (none with `--no-hooks`).
    pub hooks: Vec<crate::hooks::Hook>,
    #[serde(skip)]
    pub at: DateTime<Utc>,
    #[serde(skip)]
    pub codec: Codec,
    #[serde(skip)]
    pub volume_details: HashMap<String, VolumeDetails>,
    #[serde(skip)]
    pub image_ids: HashMap<String, String>,
    #[serde(skip)]
    pub volume_dirs: HashMap<String, PathBuf>,
}

impl Plan {
    /// Where a volume's content is on this host, whoever may read it: a bind's source, a
    /// local named volume's folder.
    pub fn place_of<'a>(&'a self, item: &'a Item) -> Option<&'a Path> {
        item.decl
            .host_path(|name| self.volume_dirs.get(name).map(PathBuf::as_path))
    }

    /// The same, for a volume this process reads from disk; `None` for those the engine reads.
    pub fn host_dir<'a>(&'a self, item: &'a Item) -> Option<&'a Path> {
        self.place_of(item).filter(|_| item.io == Io::Host)
    }

    /// [`Plan::host_dir`] where the plan relies on one (a capture copies it, a hand-over
    /// reads it): an error naming the volume when there is none.
    pub fn needed_host_dir<'a>(&'a self, item: &'a Item) -> anyhow::Result<&'a Path> {
        self.host_dir(item)
            .ok_or_else(|| anyhow::anyhow!("the folder of {} is not on this host", item.volume))
    }
}

/// Paths no backup should read: the host's own system folders and the docker socket.
const SYSTEM_PATHS: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/var/run",
    "/var/lib/docker",
    "/boot",
];

/// Builds the plan. `now` names the archive.
pub fn build(project: &Project, opts: &Options, facts: &Facts, now: DateTime<Utc>) -> Plan {
    let version = resolve_version(project, opts);
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    let mut used_paths = HashSet::new();
    for v in &project.volumes {
        match decide(project, opts, facts, v) {
            Ok(d) => items.push(Item {
                kind: d.kind,
                volume: v.label(),
                role: v.role(),
                archive_path: unique(&mut used_paths, d.base),
                size_bytes: d.size,
                io: d.io,
                reason: d.reason,
                decl: v.clone(),
            }),
            Err(reason) => skipped.push(Skipped {
                volume: v.label(),
                reason,
            }),
        }
    }
    let recipients = opts
        .recipients
        .clone()
        .unwrap_or_else(|| facts.recipients.clone());
    let running: Vec<String> = project
        .all_containers()
        .filter(|c| c.is_live())
        .map(|c| c.name.clone())
        .collect();
    let storage = resolve_storage(project, opts.storage.as_deref(), facts);
    let bytes_needed = items.iter().map(|i| i.size_bytes).sum();
    let stops = opts.stop && !running.is_empty();
    let (capture_places, capture_note) = capture_places(
        project,
        opts.capture,
        stops,
        &items,
        facts,
        &storage,
        bytes_needed,
    );
    Plan {
        capture: capture_label(&capture_places),
        capture_places,
        capture_note,
        remote: None,
        hooks: match opts.no_hooks {
            true => Vec::new(),
            false => project.hooks.listed(&crate::hooks::Phase::CREATE),
        },
        project: project.name.clone(),
        project_dir: project.dir.clone(),
        backup_type: opts.backup_type,
        archive_name: crate::storage::archive_name(
            opts.backup_type.as_str(),
            &version,
            now,
            &extension(opts.codec, &recipients),
        ),
        service_version: version,
        compression: opts.codec.name(),
        storage,
        created_at: now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        running,
        bytes_needed,
        encrypted: !recipients.is_empty(),
        recipients: recipients.0,
        volumes: items,
        skipped,
        at: now,
        codec: opts.codec,
        volume_details: facts.volume_details.clone(),
        image_ids: facts.image_ids.clone(),
        volume_dirs: facts.volume_dirs.clone(),
    }
}

/// How one volume is archived.
struct Decision {
    kind: &'static str,
    size: u64,
    /// The archive folder, before it is made unique.
    base: String,
    io: Io,
    reason: &'static str,
}

const FROM_DISK: &str = "read from disk";
const FROM_VOLUME_DIR: &str = "read from the volume's folder on this host";
const THROUGH_ENGINE: &str = "read through the engine (docker cp from a stopped container)";
const NOT_READABLE: &str =
    "not readable by this user: read through the engine (docker cp from a stopped container)";

/// How a volume is archived, or why it is skipped.
fn decide(
    project: &Project,
    opts: &Options,
    facts: &Facts,
    v: &Volume,
) -> Result<Decision, String> {
    if v.excluded() {
        return Err("excluded by x-nuwax-backup".into());
    }
    match v {
        Volume::Volume { name, key, .. } => {
            if !facts.existing_volumes.contains(name) {
                return Err(
                    "the volume does not exist on this engine yet (nothing to back up)".into(),
                );
            }
            let (io, reason) = if facts.volume_dirs.contains_key(name) {
                (Io::Host, FROM_VOLUME_DIR)
            } else {
                (Io::Engine, THROUGH_ENGINE)
            };
            Ok(Decision {
                kind: "volume",
                size: facts.volume_sizes.get(name).copied().unwrap_or(0),
                base: format!("volumes/{}", slug(key)),
                io,
                reason,
            })
        }
        Volume::Bind {
            source,
            inside_project,
            ..
        } => {
            if SYSTEM_PATHS.iter().any(|s| source.starts_with(s)) || source == Path::new("/") {
                return Err("a system path, never backed up".into());
            }
            if !inside_project && !opts.include_external_binds {
                return Err(
                    "outside the project directory (pass --include-external-binds to include it)"
                        .into(),
                );
            }
            let (kind, size) = facts
                .paths
                .get(source)
                .copied()
                .unwrap_or((PathKind::Missing, 0));
            match kind {
                PathKind::Missing => Err("the path does not exist".into()),
                PathKind::Special => {
                    Err("a socket, fifo or device, which cannot be backed up".into())
                }
                PathKind::Dir | PathKind::File => {
                    let rel = source.strip_prefix(&project.dir).unwrap_or(source);
                    let base = if *inside_project {
                        slug(&rel.to_string_lossy())
                    } else {
                        format!("external{}", slug(&source.to_string_lossy()))
                    };
                    let (io, reason) = if facts.unreadable.contains(source) {
                        (Io::Engine, NOT_READABLE)
                    } else {
                        (Io::Host, FROM_DISK)
                    };
                    Ok(Decision {
                        kind: "bind",
                        size,
                        base: format!("binds/{base}"),
                        io,
                        reason,
                    })
                }
            }
        }
    }
}

/// Where each volume is captured, or why nothing is (`None` when not asked for or nothing
/// stops). Every capture, with the archive itself, must fit on its filesystem; otherwise the
/// backup is made directly, and the note says so.
fn capture_places(
    project: &Project,
    mode: CaptureMode,
    stops: bool,
    items: &[Item],
    facts: &Facts,
    storage: &Path,
    archive_bytes: u64,
) -> (Vec<Place>, Option<String>) {
    if mode == CaptureMode::Direct || !stops || items.is_empty() {
        return (Vec::new(), None);
    }
    let places: Vec<Place> = items
        .iter()
        .map(|i| place(project, mode, i, facts, storage))
        .collect();
    let mut need: HashMap<u64, (u64, u64, &Path)> = HashMap::new();
    let storage_fs = facts.capture_fs.get(storage).copied().unwrap_or_default();
    need.insert(
        storage_fs.device,
        (archive_bytes, storage_fs.free_bytes, storage),
    );
    for (p, i) in places.iter().zip(items) {
        let fs = facts.capture_fs.get(&p.folder).copied().unwrap_or_default();
        let n = need
            .entry(fs.device)
            .or_insert((0, fs.free_bytes, &p.folder));
        n.0 += capture_bytes(p.how, i, facts);
    }
    if let Some((_, (n, free, at))) = need.iter().find(|(_, (n, free, _))| n > free) {
        let note = format!(
            "the capture does not fit on the filesystem of {} ({} needed, {} free): archiving directly while the services are stopped",
            at.display(),
            crate::output::human_bytes(*n),
            crate::output::human_bytes(*free)
        );
        return (Vec::new(), Some(note));
    }
    (places, None)
}

/// The room a volume's capture takes: none for clones; its bytes, and for a tar (a pack, a
/// stream) two blocks per entry (a header, padding) and a margin for long names.
fn capture_bytes(how: How, i: &Item, facts: &Facts) -> u64 {
    let folder = i
        .decl
        .host_path(|name| facts.volume_dirs.get(name).map(PathBuf::as_path));
    let entries = folder
        .and_then(|f| facts.entries.get(f))
        .copied()
        .unwrap_or(0);
    match how {
        How::Reflink => 0,
        How::Copy | How::Stream => i.size_bytes + entries * 1024 + (1 << 20),
    }
}

/// Beside the volume on its own filesystem (a clone there costs nothing), unless that folder
/// is a mount point's, inside another bind of the project (a restarted container would see
/// it) or writable by another user: then the storage folder. Volumes the engine reads are captured as their stream.
fn place(project: &Project, mode: CaptureMode, i: &Item, facts: &Facts, storage: &Path) -> Place {
    let beside = match &i.decl {
        _ if i.io == Io::Engine => None,
        Volume::Bind { source, .. } => source
            .parent()
            .filter(|_| !facts.mount_points.contains(source))
            .filter(|p| !inside_another_bind(project, source, p)),
        Volume::Volume { name, .. } => facts.volume_dirs.get(name).and_then(|d| d.parent()),
    }
    .filter(|p| !facts.shared_folders.contains(*p));
    let folder = beside.unwrap_or(storage).to_path_buf();
    let reflink = facts.capture_fs.get(&folder).is_some_and(|f| f.reflink);
    let how = if i.io == Io::Engine {
        How::Stream
    } else if reflink && mode == CaptureMode::Auto {
        How::Reflink
    } else {
        How::Copy
    };
    Place {
        archive_path: i.archive_path.clone(),
        folder,
        how,
    }
}

fn inside_another_bind(project: &Project, source: &Path, folder: &Path) -> bool {
    project.volumes.iter().any(|v| match v {
        Volume::Bind { source: other, .. } => other != source && folder.starts_with(other),
        _ => false,
    })
}

/// The capture in one word: `direct` without one, else the slowest way any volume takes.
fn capture_label(places: &[Place]) -> crate::records::Capture {
    use crate::records::Capture;
    if places.is_empty() {
        Capture::Direct
    } else if places.iter().any(|p| p.how == How::Copy) {
        Capture::Copy
    } else if places.iter().any(|p| p.how == How::Stream) {
        Capture::Stream
    } else {
        Capture::Reflink
    }
}

/// `tar.gz`, `tar.zst`, with `.age` when encrypted.
pub fn extension(codec: Codec, recipients: &Recipients) -> String {
    if recipients.is_empty() {
        codec.extension().to_string()
    } else {
        format!("{}.age", codec.extension())
    }
}

/// A path or key as one archive folder name: `data/app` → `data_app`, `` → `_project`.
fn slug(s: &str) -> String {
    let t: String = s
        .trim_matches('/')
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    if t.is_empty() || t == "." {
        "_project".into()
    } else {
        t
    }
}

fn unique(used: &mut HashSet<String>, base: String) -> String {
    let mut candidate = base.clone();
    let mut n = 2;
    while !used.insert(candidate.clone()) {
        candidate = format!("{base}-{n}");
        n += 1;
    }
    candidate
}

/// `--service-version`, else `x-nuwax-backup.version`, else the image tag of the first
/// persistent service (`latest` when the image has no tag), else `unknown`.
pub fn resolve_version(project: &Project, opts: &Options) -> String {
    if let Some(v) = opts
        .service_version
        .clone()
        .or_else(|| project.extension.version.clone())
    {
        return v;
    }
    project
        .services
        .iter()
        .filter(|s| s.kind == Kind::Persistent)
        .find_map(|s| s.image.as_deref())
        .map(image_tag)
        .unwrap_or_else(|| "unknown".into())
}

fn image_tag(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        Some((_, tag)) if !tag.is_empty() => tag.to_string(),
        _ => "latest".to_string(),
    }
}

/// `--storage` (relative to the current folder), else the catalog's folder for the project
/// (`migrate-storage`), else `x-nuwax-backup.storage` (relative to the project directory),
/// else `<project dir>/backups`.
pub fn resolve_storage(project: &Project, explicit: Option<&Path>, facts: &Facts) -> PathBuf {
    let p = if let Some(s) = explicit {
        facts.cwd.join(s)
    } else if let Some(s) = &facts.catalog_storage {
        s.clone()
    } else if let Some(s) = &project.extension.storage {
        project.dir.join(s)
    } else {
        project.dir.join("backups")
    };
    crate::compose::classify::normalize(&p)
}

/// Parses docker's human sizes (`0B`, `4.096kB`, `1.2GB`; decimal units).
pub fn parse_docker_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "B" => 1e0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "PB" => 1e15,
        _ => return None,
    };
    Some((n * mult).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::{ConfigJson, Project};
    use chrono::TimeZone;

    fn project(json: &str) -> Project {
        let cfg: ConfigJson = serde_json::from_str(json).unwrap();
        let dir = PathBuf::from("/proj");
        let (by, others) = crate::compose::classify::containers_by_service(&[], &cfg.services);
        Project {
            name: cfg.name.clone(),
            services: crate::compose::classify::services(&cfg, &by),
            volumes: crate::compose::classify::volumes(&cfg, &dir, &|p: &Path| {
                p.ends_with("f.conf")
            }),
            dir,
            compose_files: vec![],
            others,
            hooks: Default::default(),
            extension: cfg.extension,
        }
    }

    const P: &str = r#"{"name": "p",
      "services": {"db": {"image": "reg:5000/pg:15.4", "restart": "always", "volumes": [
          {"type": "volume", "source": "dbdata", "target": "/d"},
          {"type": "volume", "source": "gone", "target": "/g"},
          {"type": "bind", "source": "/proj/data/app", "target": "/a"},
          {"type": "bind", "source": "/proj/f.conf", "target": "/f.conf"},
          {"type": "bind", "source": "/proj", "target": "/all"},
          {"type": "bind", "source": "/srv/shared", "target": "/s"},
          {"type": "bind", "source": "/var/run/docker.sock", "target": "/var/run/docker.sock"},
          {"type": "bind", "source": "/proj/missing", "target": "/m"}]}},
      "volumes": {"dbdata": {"name": "p_dbdata"}, "gone": {"name": "p_gone"}}}"#;

    fn opts() -> Options {
        Options {
            backup_type: BackupType::Manual,
            service_version: None,
            codec: Codec::Gzip { level: 6 },
            storage: None,
            stop: false,
            include_external_binds: false,
            recipients: None,
            capture: CaptureMode::Auto,
            no_hooks: false,
        }
    }

    fn facts() -> Facts {
        let mut f = Facts {
            cwd: "/work".into(),
            ..Default::default()
        };
        f.existing_volumes.insert("p_dbdata".into());
        f.volume_sizes.insert("p_dbdata".into(), 1000);
        f.paths.insert("/proj/data/app".into(), (PathKind::Dir, 20));
        f.paths.insert("/proj/f.conf".into(), (PathKind::File, 3));
        f.paths.insert("/proj".into(), (PathKind::Dir, 1023));
        f.paths.insert("/srv/shared".into(), (PathKind::Dir, 7));
        f
    }

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 10, 0, 0).unwrap()
    }

    #[test]
    fn plan_archives_what_exists_and_says_why_the_rest_is_skipped() {
        let plan = build(&project(P), &opts(), &facts(), at());
        let got: Vec<(&str, &str)> = plan
            .volumes
            .iter()
            .map(|i| (i.volume.as_str(), i.archive_path.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("p_dbdata", "volumes/dbdata"),
                ("/proj", "binds/_project"),
                ("/proj/data/app", "binds/data_app"),
                ("/proj/f.conf", "binds/f.conf")
            ]
        );
        let skipped: BTreeMap<&str, &str> = plan
            .skipped
            .iter()
            .map(|s| (s.volume.as_str(), s.reason.as_str()))
            .collect();
        assert!(skipped["p_gone"].contains("does not exist"));
        assert!(skipped["/srv/shared"].contains("--include-external-binds"));
        assert!(skipped["/var/run/docker.sock"].contains("system path"));
        assert!(skipped["/proj/missing"].contains("does not exist"));
        assert_eq!(plan.bytes_needed, 1000 + 1023 + 20 + 3);
        assert_eq!(
            plan.archive_name,
            "backup_manual_v15.4_2026-11-26_10-00-00.tar.gz"
        );
        assert_eq!(plan.storage, PathBuf::from("/proj/backups"));
    }

    #[test]
    fn what_this_user_cannot_read_is_read_by_the_engine() {
        let mut f = facts();
        f.unreadable.insert("/proj/data/app".into());
        f.volume_dirs.insert(
            "p_dbdata".into(),
            "/var/lib/docker/volumes/p_dbdata/_data".into(),
        );
        let plan = build(&project(P), &opts(), &f, at());
        let io: BTreeMap<&str, Io> = plan
            .volumes
            .iter()
            .map(|i| (i.volume.as_str(), i.io))
            .collect();
        assert_eq!(io["/proj/data/app"], Io::Engine);
        assert_eq!(io["/proj/f.conf"], Io::Host);
        assert_eq!(io["p_dbdata"], Io::Host);
        let j = serde_json::to_value(&plan.volumes[0]).unwrap();
        assert_eq!(j["io"], "host");
        assert!(j["reason"].as_str().unwrap().contains("folder"));
    }

    #[test]
    fn captures_go_beside_each_volume_unless_a_container_would_see_them() {
        let running = r#"{"name": "p",
          "services": {"db": {"image": "pg:15", "restart": "always", "volumes": [
              {"type": "volume", "source": "dbdata", "target": "/d"},
              {"type": "bind", "source": "/proj/data/app", "target": "/a"},
              {"type": "bind", "source": "/proj/mnt", "target": "/m"},
              {"type": "bind", "source": "/srv/x", "target": "/x"},
              {"type": "bind", "source": "/srv/x/in", "target": "/xi"}]}},
          "volumes": {"dbdata": {"name": "p_dbdata"}}}"#;
        let mut proj = project(running);
        proj.services[0].containers.push(crate::compose::Container {
            name: "p-db-1".into(),
            state: "running".into(),
            service: "db".into(),
            oneoff: false,
        });
        let mut f = facts();
        f.paths.insert("/proj/mnt".into(), (PathKind::Dir, 5));
        f.paths.insert("/srv/x".into(), (PathKind::Dir, 5));
        f.paths.insert("/srv/x/in".into(), (PathKind::Dir, 5));
        f.mount_points.insert("/proj/mnt".into());
        f.volume_dirs
            .insert("p_dbdata".into(), "/vol/p_dbdata/_data".into());
        let fs = |device, free_bytes, reflink| CaptureFs {
            device,
            free_bytes,
            reflink,
        };
        f.capture_fs
            .insert("/proj/data".into(), fs(1, 1 << 30, true));
        f.capture_fs
            .insert("/proj/backups".into(), fs(1, 1 << 30, true));
        f.capture_fs
            .insert("/vol/p_dbdata".into(), fs(2, 1 << 30, false));
        f.capture_fs.insert("/srv".into(), fs(3, 1 << 30, false));
        let o = Options {
            stop: true,
            include_external_binds: true,
            ..opts()
        };
        let plan = build(&proj, &o, &f, at());
        let got: Vec<(&str, &str, How)> = plan
            .capture_places
            .iter()
            .map(|p| (p.archive_path.as_str(), p.folder.to_str().unwrap(), p.how))
            .collect();
        assert_eq!(
            got,
            [
                ("volumes/dbdata", "/vol/p_dbdata", How::Copy),
                ("binds/data_app", "/proj/data", How::Reflink),
                ("binds/mnt", "/proj/backups", How::Reflink),
                ("binds/externalsrv_x", "/srv", How::Copy),
                ("binds/externalsrv_x_in", "/proj/backups", How::Reflink),
            ],
            "a mount point's and one inside another bind go to the storage folder"
        );
        assert_eq!(plan.capture, crate::records::Capture::Copy);
        // A folder another user can write gets no capture tree: the storage folder does.
        let mut shared = f.clone();
        shared.shared_folders.insert("/srv".into());
        let plan = build(&proj, &o, &shared, at());
        let srv = plan
            .capture_places
            .iter()
            .find(|p| p.archive_path == "binds/externalsrv_x")
            .unwrap();
        assert_eq!(
            (srv.folder.to_str().unwrap(), srv.how),
            ("/proj/backups", How::Reflink)
        );
        let copy = build(
            &proj,
            &Options {
                capture: CaptureMode::Copy,
                ..o.clone()
            },
            &f,
            at(),
        );
        assert!(copy.capture_places.iter().all(|p| p.how == How::Copy));
        let direct = build(
            &proj,
            &Options {
                capture: CaptureMode::Direct,
                ..o.clone()
            },
            &f,
            at(),
        );
        assert_eq!(
            (direct.capture, direct.capture_note),
            (crate::records::Capture::Direct, None)
        );
        let idle = build(
            &proj,
            &Options {
                stop: false,
                ..o.clone()
            },
            &f,
            at(),
        );
        assert!(
            idle.capture_places.is_empty(),
            "nothing stops: nothing to capture"
        );
        f.capture_fs.insert("/srv".into(), fs(3, 4, false));
        let full = build(&proj, &o, &f, at());
        assert_eq!(full.capture, crate::records::Capture::Direct);
        assert!(full.capture_note.unwrap().contains("/srv"));
        // A pack holds a header (and padding) per entry: a million tiny files need 1 GiB.
        f.capture_fs.insert("/srv".into(), fs(3, 1 << 30, false));
        f.entries.insert("/srv/x".into(), 1 << 20);
        let many = build(&proj, &o, &f, at());
        assert_eq!(many.capture, crate::records::Capture::Direct);
        assert!(many.capture_note.unwrap().contains("/srv"));
        f.entries.insert("/srv/x".into(), 1000);
        assert_eq!(
            build(&proj, &o, &f, at()).capture,
            crate::records::Capture::Copy
        );
    }

    #[test]
    fn external_binds_are_included_on_request() {
        let o = Options {
            include_external_binds: true,
            ..opts()
        };
        let plan = build(&project(P), &o, &facts(), at());
        assert!(plan
            .volumes
            .iter()
            .any(|i| i.archive_path == "binds/externalsrv_shared"));
    }

    #[test]
    fn version_and_storage_follow_their_precedence() {
        let p = project(P);
        assert_eq!(resolve_version(&p, &opts()), "15.4");
        let o = Options {
            service_version: Some("9".into()),
            storage: Some("out".into()),
            ..opts()
        };
        assert_eq!(resolve_version(&p, &o), "9");
        assert_eq!(
            resolve_storage(&p, o.storage.as_deref(), &facts()),
            PathBuf::from("/work/out")
        );
        let f = Facts {
            catalog_storage: Some("/migrated".into()),
            ..facts()
        };
        assert_eq!(resolve_storage(&p, None, &f), PathBuf::from("/migrated"));
        assert_eq!(image_tag("busybox"), "latest");
        assert_eq!(image_tag("reg:5000/app"), "latest");
        assert_eq!(image_tag("app:1.2@sha256:abc"), "1.2");
        let none = project(r#"{"name": "q", "services": {"job": {"image": "x:1"}}}"#);
        assert_eq!(resolve_version(&none, &opts()), "unknown");
    }

    #[test]
    fn docker_sizes_parse() {
        assert_eq!(parse_docker_size("0B"), Some(0));
        assert_eq!(parse_docker_size("4.096kB"), Some(4096));
        assert_eq!(parse_docker_size("1.2GB"), Some(1_200_000_000));
        assert_eq!(parse_docker_size("N/A"), None);
    }
}
