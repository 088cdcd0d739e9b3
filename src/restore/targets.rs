//! Where an archived volume goes comes from the project, never from the archive. Pure: each
//! archived volume is matched to a current declaration (a named volume by its compose key, a
//! bind by its path relative to the project folder, or its absolute source when it was
//! outside), and its record is rewritten with the current name, source, driver, options and
//! labels. An archived volume with no match is refused by name unless it is kept anyway.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::archive::manifest::{Manifest, VolumeRecord};
pub use crate::archive::reader::Counted;
use crate::compose::classify::normalize;
use crate::compose::Volume;
use crate::exit_codes::{Code, UserError};
use crate::records::VolumeKind;

use super::plan::{kept_reason, label, Request};

/// What the archive said and the project does not: shown as warnings in the plan.
pub type Warnings = Vec<String>;

/// The archived volumes of `m`, each bound to the current declaration it matches in
/// `declared`; `counted` (by archive folder) replaces the manifest's sizes. Fails (exit 2)
/// naming the first archived volume that matches no declaration and is not kept anyway.
pub fn rebind(
    m: &Manifest,
    project: &str,
    project_dir: &Path,
    declared: &[Volume],
    req: &Request,
    counted: &BTreeMap<String, Counted>,
) -> anyhow::Result<(Vec<VolumeRecord>, Warnings)> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for v in &m.volumes {
        let mut rec = match declared
            .iter()
            .find(|d| matches(v, d, &m.project_dir, project_dir))
        {
            Some(d) => bound(v, d, project, &mut warnings),
            None if kept_reason(v, req, project_dir).is_some() => v.clone(),
            None => return Err(unmatched(v, req.backup_id)),
        };
        let c = counted.get(&v.archive_path).copied().unwrap_or_default();
        rec.bytes = c.bytes;
        rec.file_count = c.files;
        out.push(rec);
    }
    Ok((out, warnings))
}

fn unmatched(v: &VolumeRecord, id: i64) -> anyhow::Error {
    let what = match v.kind {
        VolumeKind::Volume => "named volume",
        VolumeKind::Bind => "bind",
    };
    let shown = label(v);
    UserError::new(
        Code::Usage,
        format!(
            "backup #{id} holds {what} {shown}, which the project does not declare now: declare it again, or pass --exclude {shown}; nothing was changed"
        ),
    )
    .into()
}

/// Whether archived `v` is the volume `d` declares now.
fn matches(v: &VolumeRecord, d: &Volume, archived_dir: &Path, dir: &Path) -> bool {
    match (v.kind, d) {
        (VolumeKind::Volume, Volume::Volume { key, name, .. }) => match &v.key {
            Some(k) => k == key,
            None => v.name.as_ref() == Some(name),
        },
        (VolumeKind::Bind, Volume::Bind { source, .. }) => v
            .source
            .as_ref()
            .is_some_and(|s| normalize(source) == where_now(s, archived_dir, dir)),
        _ => false,
    }
}

/// Where an archived bind source is now: the same place relative to the project folder when
/// it was inside it, else the same absolute path.
fn where_now(source: &Path, archived_dir: &Path, dir: &Path) -> PathBuf {
    let source = normalize(source);
    match source.strip_prefix(normalize(archived_dir)) {
        Ok(rel) => normalize(&dir.join(rel)),
        Err(_) => source,
    }
}

/// `v` with everything that says where and how it is made taken from declaration `d`.
fn bound(v: &VolumeRecord, d: &Volume, project: &str, warnings: &mut Warnings) -> VolumeRecord {
    let mut rec = v.clone();
    rec.role = d.role();
    match d {
        Volume::Bind { source, .. } => {
            rec.source = Some(source.clone());
            rec.name = None;
            rec.key = None;
            rec.driver = None;
            rec.driver_opts.clear();
            rec.labels.clear();
        }
        Volume::Volume {
            name,
            key,
            external,
            driver,
            driver_opts,
            labels,
            ..
        } => {
            warn_differences(v, driver.as_deref(), driver_opts, labels, warnings);
            rec.source = None;
            rec.name = Some(name.clone());
            rec.key = Some(key.clone());
            rec.external = *external;
            rec.driver = driver.clone();
            rec.driver_opts = driver_opts.clone();
            rec.labels = with_compose_labels(labels, project, key, &v.labels);
        }
    }
    rec
}

/// The compose file's labels, plus those Compose itself puts on a volume it creates (so that
/// Compose takes the recreated volume for its own).
fn with_compose_labels(
    declared: &BTreeMap<String, String>,
    project: &str,
    key: &str,
    archived: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = declared.clone();
    out.insert("com.docker.compose.project".into(), project.into());
    out.insert("com.docker.compose.volume".into(), key.into());
    if let Some(v) = archived.get("com.docker.compose.version").filter(|v| {
        v.len() <= 32
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c))
    }) {
        out.insert("com.docker.compose.version".into(), v.clone());
    }
    out
}

fn warn_differences(
    v: &VolumeRecord,
    driver: Option<&str>,
    opts: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    warnings: &mut Warnings,
) {
    let name = label(v);
    let archived_driver = v.driver.as_deref().unwrap_or("local");
    if archived_driver != driver.unwrap_or("local") {
        warnings.push(format!(
            "volume {name}: archived with driver {archived_driver}, the compose file says {}: the compose file's is used",
            driver.unwrap_or("local")
        ));
    }
    if &v.driver_opts != opts {
        warnings.push(format!(
            "volume {name}: its archived driver options differ from the compose file's: the compose file's are used"
        ));
    }
    let own = |l: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        l.iter()
            .filter(|(k, _)| !k.starts_with("com.docker.compose."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    if own(&v.labels) != own(labels) {
        warnings.push(format!(
            "volume {name}: its archived labels differ from the compose file's: the compose file's are used"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::RootAttrs;
    use crate::records::Role;

    fn record(kind: VolumeKind, name: Option<&str>, source: Option<&str>) -> VolumeRecord {
        VolumeRecord {
            kind,
            name: name.map(|n| format!("old_{n}")),
            key: name.map(String::from),
            source: source.map(PathBuf::from),
            external: false,
            is_file: false,
            role: Role::Data,
            driver: Some("local".into()),
            driver_opts: BTreeMap::from([
                ("type".into(), "none".into()),
                ("device".into(), "/root".into()),
            ]),
            labels: BTreeMap::from([("com.docker.compose.project".into(), "evil".into())]),
            mounts: Vec::new(),
            archive_path: format!("x/{}", name.or(source).unwrap_or("")),
            root: RootAttrs::default(),
            file_count: 1_000_000,
            bytes: 1 << 50,
        }
    }

    fn bind(source: &str) -> Volume {
        Volume::Bind {
            source: source.into(),
            is_file: false,
            inside_project: true,
            role: Role::Data,
            excluded: false,
            used_by: Vec::new(),
            mounts: Vec::new(),
        }
    }

    fn volume(key: &str) -> Volume {
        Volume::Volume {
            name: format!("p_{key}"),
            key: key.into(),
            external: false,
            driver: None,
            driver_opts: BTreeMap::new(),
            labels: BTreeMap::new(),
            role: Role::Data,
            excluded: false,
            used_by: Vec::new(),
            mounts: Vec::new(),
        }
    }

    fn manifest(volumes: Vec<VolumeRecord>) -> Manifest {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "format_version": 1, "tool": "t", "tool_version": "0", "created_at": "x",
            "project": "p", "project_dir": "/old/proj", "backup_type": "manual",
            "service_version": "1", "compression": "gzip", "compose_sha256": "",
            "compose_files": [], "services": [], "volumes": [], "skipped": []
        }))
        .unwrap();
        m.volumes = volumes;
        m
    }

    fn req() -> Request {
        Request {
            backup_id: 7,
            ..Default::default()
        }
    }

    #[test]
    fn binds_follow_the_project_folder_and_take_the_current_source() {
        let m = manifest(vec![
            record(VolumeKind::Bind, None, Some("/old/proj/data")),
            record(VolumeKind::Bind, None, Some("/srv/shared")),
        ]);
        let declared = [bind("/new/proj/data"), bind("/srv/shared")];
        let counted = BTreeMap::from([(
            "x//old/proj/data".to_string(),
            Counted { bytes: 5, files: 2 },
        )]);
        let (out, _) =
            rebind(&m, "p", Path::new("/new/proj"), &declared, &req(), &counted).unwrap();
        assert_eq!(out[0].source.as_deref(), Some(Path::new("/new/proj/data")));
        assert_eq!((out[0].bytes, out[0].file_count), (5, 2));
        assert_eq!(out[1].source.as_deref(), Some(Path::new("/srv/shared")));
        assert_eq!((out[1].bytes, out[1].file_count), (0, 0));
    }

    #[test]
    fn an_undeclared_target_is_refused_by_name_unless_excluded() {
        let m = manifest(vec![record(VolumeKind::Bind, None, Some("/home"))]);
        let declared = [bind("/new/proj/data")];
        let err = rebind(
            &m,
            "p",
            Path::new("/new/proj"),
            &declared,
            &req(),
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "backup #7 holds bind /home, which the project does not declare now: declare it again, or pass --exclude /home; nothing was changed"
        );
        assert_eq!(crate::exit_codes::code_of(&err), Code::Usage);
        let excluded = Request {
            excludes: vec!["/home".into()],
            ..req()
        };
        let (out, _) = rebind(
            &m,
            "p",
            Path::new("/new/proj"),
            &declared,
            &excluded,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn named_volumes_take_name_driver_options_and_labels_from_the_compose_file() {
        let m = manifest(vec![record(VolumeKind::Volume, Some("db"), None)]);
        let (out, warnings) = rebind(
            &m,
            "p",
            Path::new("/p"),
            &[volume("db")],
            &req(),
            &BTreeMap::new(),
        )
        .unwrap();
        let v = &out[0];
        assert_eq!(v.name.as_deref(), Some("p_db"));
        assert_eq!(v.driver, None);
        assert!(v.driver_opts.is_empty());
        assert_eq!(v.labels["com.docker.compose.project"], "p");
        assert_eq!(v.labels["com.docker.compose.volume"], "db");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("driver options differ"),
            "{warnings:?}"
        );
        let other = manifest(vec![record(VolumeKind::Volume, Some("cache"), None)]);
        assert!(rebind(
            &other,
            "p",
            Path::new("/p"),
            &[volume("db")],
            &req(),
            &BTreeMap::new()
        )
        .is_err());
    }
}
