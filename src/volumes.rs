//! The engine's volume primitives both pipelines use: whether its `local` volumes are on this
//! machine (proven by a probe), a plain local volume's folder, the containers using a
//! volume, recreating one empty with its recorded driver, options and labels (the labels
//! Compose put there, so Compose sees its own volume), helper containers and their cleanup.
use anyhow::{Context as _, Result};

use crate::archive::manifest::VolumeRecord;
use crate::docker::Docker;

/// A container that uses a volume, as `docker ps -a --filter volume=…` reports it.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub project: String,
    pub service: String,
}

/// Every container (of any project) that mounts `volume`.
pub fn users(docker: &Docker, volume: &str) -> Result<Vec<User>> {
    let fmt = "{{.Names}}\t{{.Label \"com.docker.compose.project\"}}\t{{.Label \"com.docker.compose.service\"}}";
    let out = docker.output(&[
        "ps",
        "-a",
        "--filter",
        &format!("volume={volume}"),
        "--format",
        fmt,
    ])?;
    Ok(out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split('\t').map(String::from);
            User {
                name: f.next().unwrap_or_default(),
                project: f.next().unwrap_or_default(),
                service: f.next().unwrap_or_default(),
            }
        })
        .collect())
}

/// Removes helper containers and probe volumes left by a rollback that was killed (their
/// names carry the pid of the process that made them; a live one is left alone).
pub fn clean_stale(docker: &Docker) {
    let dead = |name: &str, prefix: &str| {
        let pid = name
            .trim_start_matches(prefix)
            .split('-')
            .next()
            .unwrap_or("");
        crate::storage::process_gone(pid)
    };
    if let Ok(names) = docker.output(&[
        "ps",
        "-a",
        "--filter",
        "name=nuwax-fill-",
        "--format",
        "{{.Names}}",
    ]) {
        for n in names
            .lines()
            .map(str::trim)
            .filter(|n| dead(n, "nuwax-fill-"))
        {
            let _ = docker.output(&["rm", "-f", n]);
        }
    }
    if let Ok(names) = docker.output(&["volume", "ls", "-q", "--filter", "name=nuwax-probe-"]) {
        for n in names
            .lines()
            .map(str::trim)
            .filter(|n| dead(n, "nuwax-probe-"))
        {
            let _ = docker.output(&["volume", "rm", "-f", n]);
        }
    }
}

/// Creates (never starts) helper container `name` from `image` with volume mount `mount`, no
/// network and no logs, replacing one of that name. Names start with `nuwax-fill-<pid>-`, so
/// [`clean_stale`] removes those a killed run left.
pub fn create_helper(docker: &Docker, name: &str, mount: &str, image: &str) -> Result<()> {
    let _ = docker.output(&["rm", "-f", name]);
    docker.output(&[
        "create",
        "--name",
        name,
        "--network",
        "none",
        "--log-driver",
        "none",
        "-v",
        mount,
        image,
        "/nuwax-never-started",
    ])?;
    Ok(())
}

pub fn exists(docker: &Docker, volume: &str) -> bool {
    docker.output(&["volume", "inspect", volume]).is_ok()
}

/// Removes `volume` (its containers must be removed first) and creates it again, empty.
pub fn recreate(docker: &Docker, rec: &VolumeRecord) -> Result<()> {
    let name = rec
        .name
        .as_deref()
        .context("a named volume without a name in the manifest")?;
    if exists(docker, name) {
        docker
            .output(&["volume", "rm", name])
            .with_context(|| format!("removing volume {name}"))?;
    }
    let mut args = vec!["volume".to_string(), "create".to_string()];
    if let Some(d) = &rec.driver {
        args.extend(["--driver".into(), d.clone()]);
    }
    for (k, v) in &rec.driver_opts {
        args.extend(["--opt".into(), format!("{k}={v}")]);
    }
    for (k, v) in &rec.labels {
        args.extend(["--label".into(), format!("{k}={v}")]);
    }
    args.push(name.to_string());
    docker
        .output(&args)
        .with_context(|| format!("creating volume {name}"))?;
    Ok(())
}

/// A staging path's parent folder and file name.
pub fn split(p: &std::path::Path) -> Result<(&std::path::Path, String)> {
    let parent = p
        .parent()
        .context("a staging path without a parent folder")?;
    let name = p.file_name().context("a staging path without a name")?;
    Ok((parent, name.to_string_lossy().into_owned()))
}

/// Removes `path` (a tree this process may not be allowed to delete) as root, in a container
/// of `image` that mounts its parent folder; the image must have `rm`.
pub fn remove_tree(docker: &Docker, path: &std::path::Path, image: &str) -> Result<()> {
    let (parent, name) = split(path)?;
    let mount = format!("{}:/{PARENT_DIR}", parent.display());
    let inside = format!("/{PARENT_DIR}/{name}");
    docker
        .output(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--log-driver",
            "none",
            "--user",
            "0:0",
            "--entrypoint",
            "rm",
            "-v",
            &mount,
            image,
            "-rf",
            "--",
            &inside,
        ])
        .with_context(|| {
            format!(
                "removing {} through the engine; remove it as root: sudo rm -rf '{}'",
                path.display(),
                path.display()
            )
        })?;
    Ok(())
}

/// Whether the engine keeps its `local` volumes on this machine, where this process can read
/// and write them with the owners the containers see. Proven, not assumed, and without
/// touching any real volume: a throw-away volume's folder must appear here, owned by root,
/// when the engine creates it, and be gone once the engine removes it (a remote engine or a
/// VM never shows it; a rootless or user-namespaced engine's root is not root here; a user
/// who is not root cannot read the engine's folders). `NUWAX_BACKUP_VOLUME_IO=engine` turns
/// this off. Probed once per process (a rollback's safety backup, taken while the services
/// are stopped, reuses the answer). Fails when the engine cannot create a volume.
pub fn volumes_are_local(docker: &Docker) -> Result<bool> {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if std::env::var("NUWAX_BACKUP_VOLUME_IO").as_deref() == Ok("engine") {
        return Ok(false);
    }
    if let Some(a) = ANSWER.get() {
        return Ok(*a);
    }
    let answer = crate::access::Me::current().is_root() && probe(docker)?;
    Ok(*ANSWER.get_or_init(|| answer))
}

fn probe(docker: &Docker) -> Result<bool> {
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let volume = format!("nuwax-probe-{}-{nanos}", std::process::id());
    docker.output(&["volume", "create", &volume])?;
    let seen = docker
        .output(&["volume", "inspect", "--format", "{{.Mountpoint}}", &volume])
        .map(|mp| {
            let mp = std::path::PathBuf::from(mp.trim());
            let root_dir = rustix::fs::lstat(&mp).is_ok_and(|st| {
                st.st_uid == 0 && rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir()
            });
            (mp, root_dir)
        });
    let removed = docker.output(&["volume", "rm", "-f", &volume]);
    let (mp, root_dir) = seen?;
    removed?;
    let gone = rustix::fs::lstat(&mp).is_err();
    Ok(root_dir && gone && mp.is_absolute())
}

/// The folder of a plain `local` volume (no driver options, so no mount of its own), when
/// [`volumes_are_local`] holds.
pub fn local_mountpoint(docker: &Docker, volume: &str) -> Result<Option<std::path::PathBuf>> {
    let fmt = "{{.Driver}}|{{len .Options}}|{{.Mountpoint}}";
    let out = docker.output(&["volume", "inspect", "--format", fmt, volume])?;
    let mut parts = out.trim().splitn(3, '|');
    let (driver, options, mp) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    let mp = std::path::PathBuf::from(mp);
    Ok(plain_local_folder(
        driver.unwrap_or(""),
        options == Some("0"),
        mp,
    ))
}

/// `mountpoint`, when it is the folder of a plain `local` volume (driver `local`, no driver
/// options, so no mount of its own) and exists here: the volumes read and written from disk.
pub fn plain_local_folder(
    driver: &str,
    no_options: bool,
    mountpoint: std::path::PathBuf,
) -> Option<std::path::PathBuf> {
    (driver == "local" && no_options && mountpoint.is_dir()).then_some(mountpoint)
}

/// Where a bind's helper container mounts the bind's parent folder.
pub const PARENT_DIR: &str = ".nuwax-parent";
