//! Which archived volumes a rollback replaces and which it keeps. Pure.
use std::path::Path;

use serde::Serialize;

use crate::archive::manifest::{Manifest, VolumeRecord};
use crate::compose::classify::normalize;

#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    pub volume: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Selection {
    pub restore: Vec<VolumeRecord>,
    pub kept: Vec<Kept>,
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

pub fn select(m: &Manifest, data_only: bool, excludes: &[String], project_dir: &Path) -> Selection {
    let mut sel = Selection {
        restore: Vec::new(),
        kept: Vec::new(),
    };
    for v in &m.volumes {
        let reason = if excluded(v, excludes, project_dir) {
            Some("--exclude")
        } else if data_only && v.role != "data" {
            Some("--data-only keeps app files")
        } else {
            None
        };
        match reason {
            Some(r) => sel.kept.push(Kept {
                volume: label(v),
                reason: r.into(),
            }),
            None => sel.restore.push(v.clone()),
        }
    }
    sel
}

/// Names in `excludes` that match no archived volume (a typo must not go unnoticed).
pub fn unknown_excludes(m: &Manifest, excludes: &[String], project_dir: &Path) -> Vec<String> {
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

    fn vol(name: Option<&str>, source: Option<&str>, role: &str, path: &str) -> VolumeRecord {
        VolumeRecord {
            kind: if name.is_some() { "volume" } else { "bind" }.into(),
            name: name.map(String::from),
            key: name.map(|n| n.trim_start_matches("p_").to_string()),
            source: source.map(Into::into),
            external: false,
            is_file: false,
            role: role.into(),
            driver: None,
            driver_opts: Default::default(),
            labels: Default::default(),
            mounts: vec![],
            archive_path: path.into(),
            root: RootAttrs::default(),
            file_count: 0,
            bytes: 0,
        }
    }

    fn manifest() -> Manifest {
        serde_json::from_value(serde_json::json!({
            "format_version": 1, "tool": "t", "tool_version": "0", "created_at": "x", "project": "p",
            "project_dir": "/p", "backup_type": "manual", "service_version": "1", "compression": "gzip",
            "compose_sha256": "", "compose_files": [], "services": [], "skipped": [],
            "volumes": [
                serde_json::to_value(vol(Some("p_db"), None, "data", "volumes/db")).unwrap(),
                serde_json::to_value(vol(None, Some("/p/data"), "data", "binds/data")).unwrap(),
                serde_json::to_value(vol(None, Some("/p/conf"), "app", "binds/conf")).unwrap(),
            ]
        }))
        .unwrap()
    }

    fn names(v: &[VolumeRecord]) -> Vec<String> {
        v.iter().map(label).collect()
    }

    #[test]
    fn full_rollback_restores_everything() {
        let s = select(&manifest(), false, &[], Path::new("/p"));
        assert_eq!(names(&s.restore), ["p_db", "/p/data", "/p/conf"]);
        assert!(s.kept.is_empty());
    }

    #[test]
    fn data_only_keeps_app_volumes() {
        let s = select(&manifest(), true, &[], Path::new("/p"));
        assert_eq!(names(&s.restore), ["p_db", "/p/data"]);
        assert_eq!(s.kept[0].volume, "/p/conf");
    }

    #[test]
    fn excludes_match_names_keys_and_paths() {
        let m = manifest();
        for x in ["p_db", "db", "volumes/db"] {
            assert_eq!(
                names(&select(&m, false, &[x.into()], Path::new("/p")).restore),
                ["/p/data", "/p/conf"],
                "{x}"
            );
        }
        for x in ["./data", "data", "/p/data", "data/"] {
            assert_eq!(
                names(&select(&m, false, &[x.into()], Path::new("/p")).restore),
                ["p_db", "/p/conf"],
                "{x}"
            );
        }
        assert_eq!(
            unknown_excludes(&m, &["nope".into(), "db".into()], Path::new("/p")),
            ["nope"]
        );
    }
}
