//! Named volumes: recreate the volume empty with its recorded driver, options and labels (the
//! labels Compose put there, so Compose sees its own volume), then fill it through the engine:
//! `docker cp` into a never-started helper container that mounts it with `nocopy`, so the
//! image's own files are never copied in and owners come from the archive.
use std::io::{BufWriter, Read, Write};

use anyhow::{bail, Context as _, Result};

use crate::archive::manifest::VolumeRecord;
use crate::archive::writer::header;
use crate::archive::xattrs;
use crate::docker::{Docker, Sink};

/// Where the helper container mounts the volume; entries are written below it, so that the
/// volume's root gets its recorded owner and mode too.
const FILL_DIR: &str = ".nuwax-fill";

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
fn split(p: &std::path::Path) -> Result<(&std::path::Path, String)> {
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
const PARENT_DIR: &str = ".nuwax-parent";

/// A tar stream into a helper container that mounts one volume (or a bind's parent folder).
pub struct Filler {
    docker: Docker,
    container: String,
    /// Where entries go inside the container: the volume's mount, or the staging folder.
    root: String,
    /// A host folder whose filesystem is synced once the stream is written (binds).
    sync: Option<std::path::PathBuf>,
    builder: Option<tar::Builder<BufWriter<std::process::ChildStdin>>>,
    sink: Option<Sink>,
}

impl Filler {
    /// Creates (never starts) a helper container from `image` mounting `volume` with `nocopy`.
    pub fn start(docker: &Docker, volume: &str, image: &str) -> Result<Filler> {
        let container = format!("nuwax-fill-{}-{}", std::process::id(), volume);
        create_helper(
            docker,
            &container,
            &format!("{volume}:/{FILL_DIR}:nocopy"),
            image,
        )
        .with_context(|| format!("creating a helper container from {image} to fill {volume}"))?;
        Filler::open(docker, container, FILL_DIR.into(), None)
    }

    /// Writes `staging`, a new folder or file beside a bind, as root through the engine (so
    /// owners this process cannot set are kept): the helper mounts the bind's parent folder.
    pub fn beside(docker: &Docker, staging: &std::path::Path, image: &str) -> Result<Filler> {
        let (parent, name) = split(staging)?;
        let safe: String = name
            .trim_start_matches('.')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let container = format!("nuwax-fill-{}-bind-{safe}", std::process::id());
        let mount = format!("{}:/{PARENT_DIR}", parent.display());
        create_helper(docker, &container, &mount, image).with_context(|| {
            format!(
                "creating a helper container from {image} to write {}",
                staging.display()
            )
        })?;
        let root = format!("{PARENT_DIR}/{name}");
        Filler::open(docker, container, root, Some(parent.to_path_buf()))
    }

    fn open(
        docker: &Docker,
        container: String,
        root: String,
        sync: Option<std::path::PathBuf>,
    ) -> Result<Filler> {
        let mut sink = docker.sink(&["cp", "-", &format!("{container}:/")])?;
        let stdin = sink.take_stdin();
        Ok(Filler {
            docker: docker.clone(),
            container,
            root,
            sync,
            builder: Some(tar::Builder::new(BufWriter::with_capacity(
                256 << 10,
                stdin,
            ))),
            sink: Some(sink),
        })
    }

    fn path(&self, rel: &[u8]) -> Vec<u8> {
        let mut p = self.root.as_bytes().to_vec();
        if !rel.is_empty() {
            p.push(b'/');
            p.extend_from_slice(rel);
        }
        p
    }

    fn builder(&mut self) -> Result<&mut tar::Builder<BufWriter<std::process::ChildStdin>>> {
        self.builder.as_mut().context("the fill stream is closed")
    }

    /// Appends one entry; `data` is read only for regular files.
    /// Extended attributes go as PAX records (the engine sets them; holes are written as zeros).
    pub fn entry(&mut self, e: &super::sink::Entry<'_>, data: &mut dyn Read) -> Result<()> {
        use std::io::Write as _;
        use std::os::unix::ffi::OsStrExt;
        let (rel, kind, a, size, link) = (e.rel, e.kind, &e.attrs, e.size, e.link);
        let path = self.path(rel);
        let hard_target =
            (kind == tar::EntryType::Link).then(|| self.path(link.unwrap_or_default()));
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(&path));
        let b = self.builder()?;
        if !e.xattrs.is_empty() {
            let block = xattrs::pax_block(&xattrs::pax_records(e.xattrs));
            b.get_mut().write_all(&block)?;
        }
        match kind {
            tar::EntryType::Directory => {
                b.append_data(&mut header(kind, a, 0), p, std::io::empty())?
            }
            tar::EntryType::Symlink => {
                let target = std::ffi::OsStr::from_bytes(link.unwrap_or_default());
                b.append_link(&mut header(kind, a, 0), p, target)?
            }
            tar::EntryType::Link => b.append_link(
                &mut header(kind, a, 0),
                p,
                std::ffi::OsStr::from_bytes(hard_target.as_deref().unwrap_or_default()),
            )?,
            _ => b.append_data(&mut header(tar::EntryType::Regular, a, size), p, data)?,
        }
        Ok(())
    }

    /// Ends the stream, waits for `docker cp`, removes the helper container, and for a bind
    /// flushes the filesystem, so the staged content is on disk before it is swapped in.
    pub fn finish(mut self) -> Result<()> {
        let result = self.close();
        let _ = self.docker.output(&["rm", "-f", &self.container]);
        result?;
        match self.sync.take() {
            Some(dir) => super::host::syncfs(&dir),
            None => Ok(()),
        }
    }

    fn close(&mut self) -> Result<()> {
        if let Some(b) = self.builder.take() {
            let mut w = b.into_inner().context("ending the fill stream")?;
            w.flush().context("ending the fill stream")?;
        }
        match self.sink.take() {
            Some(s) => s.finish(),
            None => bail!("the fill stream was already closed"),
        }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        if self.sink.is_some() {
            drop(self.builder.take());
            if let Some(s) = self.sink.take() {
                let _ = s.finish();
            }
            let _ = self.docker.output(&["rm", "-f", &self.container]);
        }
    }
}
