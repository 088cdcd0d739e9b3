//! What a rollback will do, decided before anything changes. Pure: facts in, plan out.
//! `build` turns the verified manifest, the options and the facts gathered from the engine
//! and the disks into one typed action per archived volume, the services to stop and start,
//! the space staging needs and the images that changed since the backup.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::manifest::{Manifest, ServiceRecord, VolumeRecord};
use crate::compose::classify::normalize;
use crate::exit_codes::{Code, UserError};
pub use crate::records::Io;
use crate::records::{Role, VolumeKind};
use crate::services::Running;

/// How one archived volume is put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// A bind: staged beside it on the same filesystem, then exchanged in one step.
    SwapBind,
    /// A bind that is a mount point: staged inside it, moved in entry by entry under a journal.
    StageInMount,
    /// A mount-point bind with `--in-place`: emptied, then written; undone from the safety backup.
    InPlace,
    /// A named volume whose folder this process can reach: staged beside it and exchanged.
    SwapVolume,
    /// A named volume written through a helper container of the engine (recreated first).
    EngineRefill,
    /// Left as it is (`--exclude`, `--data-only`).
    Keep,
}

/// One archived volume and what happens to it.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub target: String,
    pub kind: VolumeKind,
    pub role: Role,
    pub action: Action,
    pub io: Io,
    pub reason: String,
    #[serde(skip)]
    pub record: VolumeRecord,
    /// The image of the helper container that fills a named volume.
    #[serde(skip)]
    pub image: Option<String>,
}

/// What staging needs on one filesystem, named by a folder on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Space {
    pub filesystem: PathBuf,
    pub needed_bytes: u64,
    pub free_bytes: u64,
    /// Staging there must fit before anything stops (inside mount points); elsewhere a
    /// full disk is undone like any other failure.
    #[serde(skip)]
    pub required: bool,
    /// A mount point written in place: `free_bytes` is its room once emptied.
    #[serde(skip)]
    pub in_place: bool,
}

/// A service whose image is not the one that wrote the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageChange {
    pub service: String,
    pub backup_image: String,
    pub current_image: String,
    /// The same reference now names another image (a re-pulled tag).
    pub same_tag: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Full,
    DataOnly,
}

crate::records::words!(Action {
    SwapBind => "swap-bind",
    StageInMount => "stage-in-mount",
    InPlace => "in-place",
    SwapVolume => "swap-volume",
    EngineRefill => "engine-refill",
    Keep => "keep",
});

crate::records::words!(Mode { Full => "full", DataOnly => "data-only" });

#[derive(Debug, Clone, Serialize)]
pub struct RollbackPlan {
    pub backup_id: i64,
    pub mode: Mode,
    pub actions: Vec<Step>,
    pub stop: Vec<String>,
    pub start: Vec<String>,
    pub space: Vec<Space>,
    pub image_changes: Vec<ImageChange>,
    #[serde(skip)]
    pub running: Running,
    /// The public keys the safety backup is encrypted to (none: not encrypted).
    #[serde(skip)]
    pub safety_recipients: Vec<String>,
    /// `stage-first`: the archive is staged beside every target while the services run, then
    /// they stop only for the swap; `stop-first` (the engine writes, or targets are emptied or
    /// recreated): stopped for the whole restore.
    pub order: Order,
    pub order_reason: String,
    /// What the archive said that the compose file overrides (drivers, options, labels).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The hooks each phase would run, in order (none with `--no-hooks`).
    pub hooks: Vec<crate::hooks::Hook>,
    /// The archive file verify read, kept open: the restore reads it from this descriptor.
    #[serde(skip)]
    pub archive: Option<crate::archive::reader::VerifiedFile>,
    /// Holds the backup against `delete` and `prune` for as long as the plan lives.
    #[serde(skip)]
    pub pin: Option<std::sync::Arc<crate::lock::Pin>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    StageFirst,
    StopFirst,
}

crate::records::words!(Order { StageFirst => "stage-first", StopFirst => "stop-first" });

impl RollbackPlan {
    /// The steps that change something, in archive order.
    pub fn restoring(&self) -> impl Iterator<Item = &Step> {
        self.actions.iter().filter(|s| s.action != Action::Keep)
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub backup_id: i64,
    pub data_only: bool,
    pub excludes: Vec<String>,
    pub in_place: bool,
    pub no_start: bool,
    pub no_safety_backup: bool,
}

/// The image a service runs now, as the current compose config names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrentImage {
    pub reference: Option<String>,
    /// The local image ID of `reference`, when the engine has it.
    pub id: Option<String>,
    /// The service is built from source (`build:`): its image is not compared.
    pub built: bool,
}

/// One filesystem that staging would use: a folder on it, its device and free bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fs {
    pub device: u64,
    pub free_bytes: u64,
}

/// Everything the plan depends on, read from the engine and the disks beforehand.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub project_dir: PathBuf,
    /// Binds (by source) that are mount points.
    pub mount_points: BTreeSet<PathBuf>,
    /// Per mount-point bind: the bytes it can hold once emptied (for `--in-place`).
    pub mount_room: BTreeMap<PathBuf, u64>,
    /// Named volumes can be written on this host (their folders are the engine's).
    pub volumes_local: bool,
    /// The folder that would hold the staging of each host-written target, and its filesystem.
    pub filesystems: BTreeMap<PathBuf, Fs>,
    /// Named volumes the engine does not have now (after `docker compose down -v`).
    pub missing_volumes: BTreeSet<String>,
    /// Per named volume: a container of another project that uses it.
    pub foreign_users: BTreeMap<String, String>,
    /// Per named volume (and bind written by the engine), by label: the helper image, when
    /// one of the project's images is on the engine.
    pub helper_images: BTreeMap<String, String>,
    /// Binds (by source) whose archived owners this process cannot set (it is not root):
    /// the engine writes them.
    pub foreign_owned: BTreeSet<PathBuf>,
    /// Of those, binds whose parent folder this process cannot write (so cannot swap in).
    pub parent_closed: BTreeSet<PathBuf>,
    pub current_images: BTreeMap<String, CurrentImage>,
    pub running: Running,
    /// The storage folder (a bind that holds it is never staged first), and its free bytes
    /// (the safety backup, written after the swap when staged first, must fit there).
    pub storage: PathBuf,
    pub storage_free: u64,
}

fn user(msg: String) -> anyhow::Error {
    UserError::new(Code::Usage, msg).into()
}

/// Builds the rollback plan, or refuses (exit 2) what cannot be done: an `--exclude` that
/// matches nothing, nothing left to restore, a named volume another project uses or that no
/// image here can fill, `--in-place` without a safety backup to undo it.
pub fn build(m: &Manifest, req: &Request, facts: &Facts) -> anyhow::Result<RollbackPlan> {
    let unknown = unknown_excludes(m, &req.excludes, &facts.project_dir);
    if !unknown.is_empty() {
        return Err(user(format!(
            "--exclude {} matches no volume of backup #{}",
            unknown.join(", "),
            req.backup_id
        )));
    }
    let mut actions = Vec::new();
    for v in &m.volumes {
        actions.push(step(v, req, facts)?);
    }
    if actions.iter().all(|s| s.action == Action::Keep) {
        return Err(user(format!(
            "nothing to restore from backup #{}: {}",
            req.backup_id,
            if m.volumes.is_empty() {
                "it holds no volume"
            } else {
                "every volume is kept"
            }
        )));
    }
    let stop = facts.running.names();
    let (order, order_reason) = order(&actions, facts, req.no_safety_backup);
    Ok(RollbackPlan {
        hooks: Vec::new(),
        backup_id: req.backup_id,
        mode: if req.data_only {
            Mode::DataOnly
        } else {
            Mode::Full
        },
        space: space(&actions, facts),
        image_changes: image_changes(&m.services, &facts.current_images),
        start: if req.no_start {
            Vec::new()
        } else {
            stop.clone()
        },
        stop,
        order,
        order_reason: order_reason.into(),
        actions,
        running: facts.running.clone(),
        safety_recipients: Vec::new(),
        warnings: Vec::new(),
        archive: None,
        pin: None,
    })
}

/// Stage first (the services stop only for the swap) when every restored target is swapped
/// in on this host; otherwise stop first, saying why.
fn order(actions: &[Step], facts: &Facts, no_safety_backup: bool) -> (Order, &'static str) {
    let restoring = || actions.iter().filter(|s| s.action != Action::Keep);
    let host_swap = |s: &Step| {
        matches!(s.action, Action::SwapBind | Action::SwapVolume)
            && s.io == Io::Host
            && !s
                .record
                .name
                .as_ref()
                .is_some_and(|n| facts.missing_volumes.contains(n))
    };
    let holds_storage = |s: &Step| {
        s.record
            .source
            .as_ref()
            .is_some_and(|src| facts.storage.starts_with(src))
    };
    // The previous content is about the archived size: its safety backup must fit before
    // anything is swapped, or the order that writes it first (and fails before any change).
    let safety_bytes: u64 = restoring().map(|s| s.record.bytes).sum();
    if !no_safety_backup && safety_bytes > facts.storage_free {
        return (
            Order::StopFirst,
            "the safety backup might not fit in the storage folder: it is written first, before anything changes",
        );
    }
    if restoring().all(|s| host_swap(s) && !holds_storage(s)) {
        (
            Order::StageFirst,
            "every target is staged beside it while the services run; they stop only for the swap",
        )
    } else {
        (
            Order::StopFirst,
            "a target is written through the engine, emptied in place, created again, or holds the storage folder: the services stop for the whole restore",
        )
    }
}

/// Why `v` is kept as it is, or `None` when it is restored.
pub fn kept_reason(v: &VolumeRecord, req: &Request, project_dir: &Path) -> Option<&'static str> {
    if excluded(v, &req.excludes, project_dir) {
        Some("--exclude")
    } else if req.data_only && v.role != Role::Data {
        Some("--data-only keeps app files")
    } else {
        None
    }
}

fn step(v: &VolumeRecord, req: &Request, facts: &Facts) -> anyhow::Result<Step> {
    let keep = kept_reason(v, req, &facts.project_dir);
    let (action, io, reason, image) = match (keep, v.kind) {
        (Some(why), _) => (Action::Keep, Io::Host, why.to_string(), None),
        (None, VolumeKind::Bind) => bind_action(v, req, facts)?,
        (None, VolumeKind::Volume) => volume_action(v, facts)?,
    };
    Ok(Step {
        target: label(v),
        kind: v.kind,
        role: v.role,
        action,
        io,
        reason,
        record: v.clone(),
        image,
    })
}

type Decided = (Action, Io, String, Option<String>);

fn bind_action(v: &VolumeRecord, req: &Request, facts: &Facts) -> anyhow::Result<Decided> {
    let mount = v
        .source
        .as_ref()
        .is_some_and(|s| facts.mount_points.contains(s));
    if let Some(source) = v
        .source
        .as_ref()
        .filter(|s| facts.foreign_owned.contains(*s))
    {
        return engine_bind_action(source, mount, &label(v), facts);
    }
    let (action, reason) = match (mount, req.in_place) {
        (true, true) => (
            Action::InPlace,
            "a mount point, --in-place: emptied, then written",
        ),
        (true, false) => (
            Action::StageInMount,
            "a mount point: staged inside it, moved in under a journal",
        ),
        (false, _) => (Action::SwapBind, "staged beside it, exchanged in one step"),
    };
    Ok((action, Io::Host, reason.into(), None))
}

/// A bind holding files of other users, restored by a user who is not root: the engine
/// writes the staging beside it, this process exchanges the two.
fn engine_bind_action(
    source: &Path,
    mount: bool,
    label: &str,
    facts: &Facts,
) -> anyhow::Result<Decided> {
    let as_root = "run the rollback as root, or --exclude it";
    let shown = source.display();
    if mount {
        return Err(user(format!(
            "bind {shown} is a mount point holding files of other users, which only root can restore: {as_root}"
        )));
    }
    if facts.parent_closed.contains(source) {
        return Err(user(format!(
            "bind {shown} holds files of other users and this user cannot write its parent folder (to swap it in): {as_root}"
        )));
    }
    let image = facts.helper_images.get(label).cloned().ok_or_else(|| {
        user(format!(
            "bind {shown} holds files of other users and no image of the project that mounts it is on this engine (to write it): pull or build it first, {as_root}"
        ))
    })?;
    let why = "holds files of other users: staged beside it by a helper container of the engine, exchanged in one step";
    Ok((Action::SwapBind, Io::Engine, why.into(), Some(image)))
}

fn volume_action(v: &VolumeRecord, facts: &Facts) -> anyhow::Result<Decided> {
    let name = v.name.clone().unwrap_or_default();
    if let Some(c) = facts.foreign_users.get(&name) {
        return Err(user(format!(
            "volume {name} is also used by container {c} (not of this project): remove it, or --exclude {name}"
        )));
    }
    let image = facts.helper_images.get(&name).cloned().ok_or_else(|| {
        user(format!(
            "no image of the project that mounts volume {name} is on this engine (to fill it): pull or build it first, or --exclude {name}"
        ))
    })?;
    let missing = if facts.missing_volumes.contains(&name) {
        "missing: created again with its recorded driver, options and labels; "
    } else {
        ""
    };
    Ok(if facts.volumes_local {
        let why = "its folder is on this host: staged beside it, exchanged in one step";
        (
            Action::SwapVolume,
            Io::Host,
            format!("{missing}{why}"),
            Some(image),
        )
    } else {
        let why = "recreated and filled through a helper container";
        (
            Action::EngineRefill,
            Io::Engine,
            format!("{missing}{why}"),
            Some(image),
        )
    })
}

/// The step that writes `v` straight into its (emptied) target: for recovery from a safety
/// backup after a killed `--in-place` rollback.
pub fn in_place_step(v: &VolumeRecord) -> Step {
    Step {
        target: label(v),
        kind: v.kind,
        role: v.role,
        action: Action::InPlace,
        io: Io::Host,
        reason: "put back from the safety backup".into(),
        record: v.clone(),
        image: None,
    }
}

/// Bytes a volume takes once written: its data, plus a block per entry.
pub fn footprint(v: &VolumeRecord) -> u64 {
    v.bytes + v.file_count * 4096
}

/// The folder that holds a host-written target's staging: the mount point itself, or the
/// folder beside a bind. Named volumes' folders are known only at run time.
pub fn staging_folder(step: &Step) -> Option<PathBuf> {
    let source = step.record.source.as_ref()?;
    match step.action {
        Action::StageInMount => bind_staging_folder(source, true),
        Action::SwapBind => bind_staging_folder(source, false),
        _ => None,
    }
}

/// Where a bind's staging goes: inside it when it is a mount point, else beside it.
pub fn bind_staging_folder(source: &Path, mount_point: bool) -> Option<PathBuf> {
    if mount_point {
        Some(source.to_path_buf())
    } else {
        source.parent().map(Path::to_path_buf)
    }
}

/// What staging needs per filesystem (by device), with what is free there; and for each
/// mount point written in place, the archived bytes against its room once emptied.
fn space(actions: &[Step], facts: &Facts) -> Vec<Space> {
    let mut out: Vec<(u64, Space)> = Vec::new();
    for s in actions.iter().filter(|s| s.action == Action::InPlace) {
        let source = s.record.source.clone().unwrap_or_default();
        if let Some(room) = facts.mount_room.get(&source) {
            let needed_bytes = s.record.bytes;
            let space = Space {
                filesystem: source,
                needed_bytes,
                free_bytes: *room,
                required: true,
                in_place: true,
            };
            out.push((u64::MAX - out.len() as u64, space));
        }
    }
    for s in actions {
        let Some(folder) = staging_folder(s) else {
            continue;
        };
        let Some(fs) = facts.filesystems.get(&folder) else {
            continue;
        };
        let required = s.action == Action::StageInMount;
        match out.iter_mut().find(|(dev, _)| *dev == fs.device) {
            Some((_, n)) => {
                n.needed_bytes += footprint(&s.record);
                n.required |= required;
            }
            None => out.push((
                fs.device,
                Space {
                    filesystem: folder,
                    needed_bytes: footprint(&s.record),
                    free_bytes: fs.free_bytes,
                    required,
                    in_place: false,
                },
            )),
        }
    }
    out.into_iter().map(|(_, s)| s).collect()
}

/// Services whose image differs from the backup's: another reference, or the same reference
/// now naming another local image. Built services and archives without image IDs are skipped.
fn image_changes(
    backup: &[ServiceRecord],
    now: &BTreeMap<String, CurrentImage>,
) -> Vec<ImageChange> {
    let mut out = Vec::new();
    for b in backup {
        let (Some(b_ref), Some(b_id)) = (&b.image, &b.image_id) else {
            continue;
        };
        let Some(cur) = now.get(&b.name) else {
            continue;
        };
        let Some(c_ref) = cur.reference.as_ref().filter(|_| !cur.built) else {
            continue;
        };
        let same_tag = c_ref == b_ref;
        let changed = !same_tag || cur.id.as_ref().is_some_and(|id| id != b_id);
        if changed {
            out.push(ImageChange {
                service: b.name.clone(),
                backup_image: b_ref.clone(),
                current_image: c_ref.clone(),
                same_tag,
            });
        }
    }
    out
}

/// How a user names a volume record: the engine name, or the host path.
pub fn label(v: &VolumeRecord) -> String {
    v.name
        .clone()
        .or_else(|| v.source.as_ref().map(|s| s.display().to_string()))
        .unwrap_or_else(|| v.archive_path.clone())
}

/// `--exclude X` matches a volume's engine name, compose key, host path (absolute or relative
/// to the project directory) or folder in the archive.
fn excluded(v: &VolumeRecord, excludes: &[String], project_dir: &Path) -> bool {
    excludes.iter().any(|x| {
        let as_path = normalize(&project_dir.join(x));
        v.name.as_deref() == Some(x.as_str())
            || v.key.as_deref() == Some(x.as_str())
            || v.archive_path == *x
            || v.source.as_deref().is_some_and(|s| normalize(s) == as_path)
    })
}

/// Names in `excludes` that match no archived volume (a typo must not go unnoticed).
fn unknown_excludes(m: &Manifest, excludes: &[String], project_dir: &Path) -> Vec<String> {
    excludes
        .iter()
        .filter(|x| {
            !m.volumes
                .iter()
                .any(|v| excluded(v, std::slice::from_ref(x), project_dir))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::RootAttrs;

    fn vol(name: Option<&str>, source: Option<&str>, role: Role, path: &str) -> VolumeRecord {
        VolumeRecord {
            kind: if name.is_some() {
                VolumeKind::Volume
            } else {
                VolumeKind::Bind
            },
            name: name.map(String::from),
            key: name.map(|n| n.trim_start_matches("p_").to_string()),
            source: source.map(Into::into),
            external: false,
            is_file: false,
            role,
            driver: None,
            driver_opts: Default::default(),
            labels: Default::default(),
            mounts: vec![],
            archive_path: path.into(),
            root: RootAttrs::default(),
            file_count: 1,
            bytes: 1000,
        }
    }

    fn manifest() -> Manifest {
        serde_json::from_value(serde_json::json!({
            "format_version": 1, "tool": "t", "tool_version": "0", "created_at": "x", "project": "p",
            "project_dir": "/p", "backup_type": "manual", "service_version": "1", "compression": "gzip",
            "compose_sha256": "", "compose_files": [], "skipped": [],
            "services": [
                {"name": "db", "kind": "persistent", "restart_policy": "always", "image": "mariadb:10.11", "image_id": "sha256:a"},
                {"name": "web", "kind": "persistent", "restart_policy": "always", "image": "web:1", "image_id": "sha256:w"},
                {"name": "old", "kind": "persistent", "restart_policy": "always", "image": "x:1"}
            ],
            "volumes": [
                serde_json::to_value(vol(Some("p_db"), None, Role::Data, "volumes/db")).unwrap(),
                serde_json::to_value(vol(None, Some("/p/data"), Role::Data, "binds/data")).unwrap(),
                serde_json::to_value(vol(None, Some("/p/conf"), Role::App, "binds/conf")).unwrap(),
            ]
        }))
        .unwrap()
    }

    fn facts() -> Facts {
        let mut f = Facts {
            project_dir: "/p".into(),
            volumes_local: true,
            running: Running {
                services: vec!["db".into()],
                containers: vec![],
            },
            ..Default::default()
        };
        f.helper_images
            .insert("p_db".into(), "mariadb:10.11".into());
        f.filesystems.insert(
            "/p".into(),
            Fs {
                device: 1,
                free_bytes: 1 << 30,
            },
        );
        f
    }

    fn req() -> Request {
        Request {
            backup_id: 7,
            ..Default::default()
        }
    }

    fn actions(p: &RollbackPlan) -> Vec<(String, Action)> {
        p.actions
            .iter()
            .map(|s| (s.target.clone(), s.action))
            .collect()
    }

    #[test]
    fn each_layout_gets_its_action() {
        use Action::*;
        type Case = (&'static str, fn(&mut Request, &mut Facts), [Action; 3]);
        let cases: [Case; 7] = [
            ("plain", |_, _| {}, [SwapVolume, SwapBind, SwapBind]),
            (
                "engine volumes",
                |_, f| f.volumes_local = false,
                [EngineRefill, SwapBind, SwapBind],
            ),
            (
                "mount point",
                |_, f| {
                    f.mount_points.insert("/p/data".into());
                },
                [SwapVolume, StageInMount, SwapBind],
            ),
            (
                "in place",
                |r, f| {
                    r.in_place = true;
                    f.mount_points.insert("/p/data".into());
                },
                [SwapVolume, InPlace, SwapBind],
            ),
            (
                "--in-place leaves ordinary binds",
                |r, _| r.in_place = true,
                [SwapVolume, SwapBind, SwapBind],
            ),
            (
                "data only",
                |r, _| r.data_only = true,
                [SwapVolume, SwapBind, Keep],
            ),
            (
                "exclude",
                |r, _| r.excludes = vec!["db".into(), "./conf".into()],
                [Keep, SwapBind, Keep],
            ),
        ];
        for (name, change, want) in cases {
            let (mut r, mut f) = (req(), facts());
            change(&mut r, &mut f);
            let p = build(&manifest(), &r, &f).unwrap();
            let got: Vec<Action> = p.actions.iter().map(|s| s.action).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_missing_volume_is_created_again_then_filled() {
        let mut f = facts();
        f.missing_volumes.insert("p_db".into());
        for local in [true, false] {
            f.volumes_local = local;
            let p = build(&manifest(), &req(), &f).unwrap();
            let s = &p.actions[0];
            assert!(
                s.reason.starts_with("missing: created again"),
                "{}",
                s.reason
            );
            let want = if local {
                Action::SwapVolume
            } else {
                Action::EngineRefill
            };
            assert_eq!(s.action, want);
        }
    }

    #[test]
    fn engine_volumes_are_written_by_the_engine_and_kept_ones_say_why() {
        let mut f = facts();
        f.volumes_local = false;
        let p = build(
            &manifest(),
            &Request {
                data_only: true,
                ..req()
            },
            &f,
        )
        .unwrap();
        assert_eq!(p.actions[0].io, Io::Engine);
        assert_eq!(p.actions[0].image.as_deref(), Some("mariadb:10.11"));
        assert_eq!(p.actions[2].reason, "--data-only keeps app files");
        assert_eq!(p.mode, Mode::DataOnly);
        assert_eq!(p.stop, ["db"]);
        assert_eq!(p.start, ["db"]);
        assert_eq!(actions(&p)[1], ("/p/data".to_string(), Action::SwapBind));
    }

    #[test]
    fn binds_of_other_users_are_written_by_the_engine_or_refused_before_any_change() {
        let mut f = facts();
        f.foreign_owned.insert("/p/data".into());
        let err = build(&manifest(), &req(), &f).unwrap_err().to_string();
        assert!(
            err.contains("bind /p/data") && err.contains("no image"),
            "{err}"
        );
        f.helper_images
            .insert("/p/data".into(), "mariadb:10.11".into());
        let p = build(&manifest(), &req(), &f).unwrap();
        let data = p.actions.iter().find(|s| s.target == "/p/data").unwrap();
        assert_eq!((data.action, data.io), (Action::SwapBind, Io::Engine));
        assert_eq!(data.image.as_deref(), Some("mariadb:10.11"));
        let conf = p.actions.iter().find(|s| s.target == "/p/conf").unwrap();
        assert_eq!(
            conf.io,
            Io::Host,
            "a bind of this user's own files stays on the host"
        );
        f.parent_closed.insert("/p/data".into());
        let err = build(&manifest(), &req(), &f).unwrap_err().to_string();
        assert!(err.contains("cannot write its parent folder"), "{err}");
        f.parent_closed.clear();
        f.mount_points.insert("/p/data".into());
        let err = build(&manifest(), &req(), &f).unwrap_err().to_string();
        assert!(
            err.contains("mount point") && err.contains("as root"),
            "{err}"
        );
    }

    #[test]
    fn staging_first_needs_host_swaps_and_room_for_the_safety_backup() {
        let mut f = facts();
        f.storage = "/backups".into();
        f.storage_free = 1 << 40;
        let order = |r: &Request, f: &Facts| build(&manifest(), r, f).unwrap().order;
        for o in [Order::StageFirst, Order::StopFirst] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        assert_eq!(
            serde_json::to_value(Mode::DataOnly).unwrap(),
            Mode::DataOnly.as_str()
        );
        assert_eq!(order(&req(), &f), Order::StageFirst);
        let small = Facts {
            storage_free: 1,
            ..f.clone()
        };
        assert_eq!(order(&req(), &small), Order::StopFirst);
        let unsafe_ok = Request {
            no_safety_backup: true,
            ..req()
        };
        assert_eq!(order(&unsafe_ok, &small), Order::StageFirst);
        let engine = Facts {
            volumes_local: false,
            ..f.clone()
        };
        assert_eq!(order(&req(), &engine), Order::StopFirst);
        let mut missing = f.clone();
        missing.missing_volumes.insert("p_db".into());
        assert_eq!(order(&req(), &missing), Order::StopFirst);
        let inside = Facts {
            storage: "/p/data/backups".into(),
            ..f.clone()
        };
        assert_eq!(order(&req(), &inside), Order::StopFirst);
        let data_only = Request {
            data_only: true,
            excludes: vec!["p_db".into()],
            ..req()
        };
        assert_eq!(
            order(&data_only, &engine),
            Order::StageFirst,
            "only the bind is restored"
        );
    }

    #[test]
    fn refusals_name_the_cause() {
        let m = manifest();
        let err = |r: &Request, f: &Facts| build(&m, r, f).unwrap_err().to_string();
        let e = err(
            &Request {
                excludes: vec!["nope".into()],
                ..req()
            },
            &facts(),
        );
        assert!(
            e.contains("--exclude nope matches no volume of backup #7"),
            "{e}"
        );
        let all = vec!["db".into(), "data".into(), "conf".into()];
        let e = err(
            &Request {
                excludes: all,
                ..req()
            },
            &facts(),
        );
        assert!(e.contains("every volume is kept"), "{e}");
        let mut f = facts();
        f.foreign_users.insert("p_db".into(), "other-1".into());
        assert!(err(&req(), &f).contains("also used by container other-1"));
        let mut f = facts();
        f.helper_images.clear();
        let e = err(&req(), &f);
        assert!(
            e.contains("no image of the project that mounts volume p_db"),
            "{e}"
        );
        // A missing helper image does not matter when the volume is kept.
        build(
            &m,
            &Request {
                excludes: vec!["p_db".into()],
                ..req()
            },
            &f,
        )
        .unwrap();
    }

    #[test]
    fn space_is_summed_per_filesystem_and_required_inside_mount_points() {
        let mut f = facts();
        let p = build(&manifest(), &req(), &f).unwrap();
        assert_eq!(p.space.len(), 1);
        assert_eq!(p.space[0].needed_bytes, 2 * (1000 + 4096));
        assert!(!p.space[0].required);
        f.mount_points.insert("/p/data".into());
        f.filesystems.insert(
            "/p/data".into(),
            Fs {
                device: 2,
                free_bytes: 10,
            },
        );
        let p = build(&manifest(), &req(), &f).unwrap();
        let inside = p
            .space
            .iter()
            .find(|s| s.filesystem == Path::new("/p/data"))
            .unwrap();
        assert!(inside.required);
        assert_eq!((inside.needed_bytes, inside.free_bytes), (5096, 10));
    }

    #[test]
    fn image_changes_compare_references_then_ids() {
        let mut f = facts();
        let now = |r: &str, id: &str, built: bool| CurrentImage {
            reference: Some(r.into()),
            id: Some(id.into()),
            built,
        };
        f.current_images
            .insert("db".into(), now("mariadb:11.4", "sha256:b", false));
        f.current_images
            .insert("web".into(), now("web:1", "sha256:w2", false));
        f.current_images
            .insert("old".into(), now("x:2", "sha256:x", false));
        let p = build(&manifest(), &req(), &f).unwrap();
        assert_eq!(
            p.image_changes,
            [
                ImageChange {
                    service: "db".into(),
                    backup_image: "mariadb:10.11".into(),
                    current_image: "mariadb:11.4".into(),
                    same_tag: false
                },
                ImageChange {
                    service: "web".into(),
                    backup_image: "web:1".into(),
                    current_image: "web:1".into(),
                    same_tag: true
                },
            ],
            "`old` has no image ID in the backup (an older archive): skipped"
        );
        f.current_images
            .insert("db".into(), now("mariadb:11.4", "sha256:b", true));
        f.current_images
            .insert("web".into(), now("web:1", "sha256:w", false));
        assert!(build(&manifest(), &req(), &f)
            .unwrap()
            .image_changes
            .is_empty());
    }

    #[test]
    fn plan_json_has_the_documented_shape() {
        let p = build(&manifest(), &req(), &facts()).unwrap();
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(j["backup_id"], 7);
        assert_eq!(j["mode"], "full");
        assert_eq!(
            j["actions"][1],
            serde_json::json!({"target": "/p/data", "kind": "bind", "role": "data",
                "action": "swap-bind", "io": "host", "reason": "staged beside it, exchanged in one step"})
        );
        assert_eq!(j["space"][0]["filesystem"], "/p");
        assert!(j["image_changes"].as_array().unwrap().is_empty());
    }
}
