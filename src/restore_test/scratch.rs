//! The backup restored into scratch storage, in one read of the verified archive: each named
//! volume into a fresh volume of the copy's project, each bind into a fresh folder (or file)
//! under the private scratch folder, the compose files beside them. Never the project's own.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::model::scratch_volume;
use crate::archive::manifest::Manifest;
use crate::archive::reader::Verified;
use crate::records::VolumeKind;
use crate::restore::apply::{extract_routed, Router};
use crate::restore::engine::Filler;
use crate::restore::host::HostWriter;
use crate::restore::sink::Sink;
use crate::Context;

/// Where the scratch copies are.
#[derive(Debug, Default)]
pub struct Restored {
    /// The archived compose files, in their order.
    pub compose_files: Vec<PathBuf>,
    /// Per compose volume key: the scratch volume.
    pub volumes: BTreeMap<String, String>,
    /// Per archived bind source: its scratch copy.
    pub binds: BTreeMap<PathBuf, PathBuf>,
}

/// Restores every archived volume of `verified` into scratch storage for project `copy`.
pub fn restore(ctx: &Context, verified: &Verified, scratch: &Path, copy: &str) -> Result<Restored> {
    for sub in ["binds", "compose"] {
        crate::private::create_dir_all(&scratch.join(sub))?;
    }
    let mut into = Into {
        ctx,
        manifest: &verified.manifest,
        scratch,
        copy,
        local: None,
        out: Restored::default(),
    };
    extract_routed(ctx, &verified.file, &mut into)?;
    let m = &verified.manifest;
    for (i, f) in m.compose_files.iter().enumerate() {
        let dest = compose_dest(scratch, i, &f.source);
        anyhow::ensure!(dest.is_file(), "the archive holds no {}", f.archive_path);
        into.out.compose_files.push(dest);
    }
    Ok(into.out)
}

fn compose_dest(scratch: &Path, i: usize, source: &Path) -> PathBuf {
    let base = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "compose.yaml".into());
    scratch.join("compose").join(format!("{i}-{base}"))
}

struct Into<'a> {
    ctx: &'a Context,
    manifest: &'a Manifest,
    scratch: &'a Path,
    copy: &'a str,
    /// Whether volumes are written from disk (asked once, when the first one comes).
    local: Option<bool>,
    out: Restored,
}

impl Router for Into<'_> {
    fn open(&mut self, folder: &[u8]) -> Result<Option<Box<dyn Sink>>> {
        let m = self.manifest;
        let Some((i, rec)) = m
            .volumes
            .iter()
            .enumerate()
            .find(|(_, v)| v.archive_path.as_bytes() == folder)
        else {
            return Ok(None);
        };
        if rec.kind == VolumeKind::Bind {
            let source = rec.source.clone().context("a bind without a source")?;
            let binds = self.scratch.join("binds");
            let fd = crate::hostfs::owned::open_dir(&binds)?;
            self.out.binds.insert(source, binds.join(i.to_string()));
            return Ok(Some(Box::new(HostWriter::in_dir(
                fd,
                &binds,
                &i.to_string(),
            )?)));
        }
        let key = rec
            .key
            .clone()
            .or_else(|| rec.name.clone())
            .context("a volume without a name")?;
        let name = scratch_volume(self.copy, &key);
        create_volume(self.ctx, &name, self.copy, &key)?;
        self.out.volumes.insert(key, name.clone());
        self.sink_of(&name)
    }

    fn other(&mut self, path: &[u8], data: &mut dyn Read) -> Result<()> {
        let m = self.manifest;
        if let Some((i, f)) = m
            .compose_files
            .iter()
            .enumerate()
            .find(|(_, f)| f.archive_path.as_bytes() == path)
        {
            let dest = compose_dest(self.scratch, i, &f.source);
            let mut file = crate::private::create_new(&dest)?;
            std::io::copy(data, &mut file)
                .with_context(|| format!("writing {}", dest.display()))?;
        }
        Ok(())
    }
}

impl Into<'_> {
    /// A scratch volume's sink: its folder when volumes are on this host, else a helper
    /// container of the engine (from an image the backup recorded).
    fn sink_of(&mut self, name: &str) -> Result<Option<Box<dyn Sink>>> {
        let docker = &self.ctx.docker;
        let local = match self.local {
            Some(l) => l,
            None => *self
                .local
                .insert(crate::volumes::volumes_are_local(docker)?),
        };
        if local {
            if let Some(dir) = crate::volumes::local_mountpoint(docker, name)? {
                return Ok(Some(Box::new(HostWriter::new(&dir)?)));
            }
        }
        let image = self
            .manifest
            .services
            .iter()
            .find_map(|s| s.image_id.clone().or_else(|| s.image.clone()))
            .context("no image of the backup to fill a scratch volume through the engine")?;
        Ok(Some(Box::new(Filler::start(docker, name, &image)?)))
    }
}

/// A fresh volume of the copy's project, labelled as compose labels its own (so `up` uses it
/// and the teardown finds it).
fn create_volume(ctx: &Context, name: &str, copy: &str, key: &str) -> Result<()> {
    anyhow::ensure!(
        !crate::volumes::exists(&ctx.docker, name),
        "scratch volume {name} exists already (a restore test kept with --keep?): remove it with `docker compose -p {copy} down -v`"
    );
    let project = format!("com.docker.compose.project={copy}");
    let volume = format!("com.docker.compose.volume={key}");
    ctx.docker
        .output(&[
            "volume", "create", "--label", &project, "--label", &volume, name,
        ])
        .with_context(|| format!("creating scratch volume {name}"))?;
    Ok(())
}
