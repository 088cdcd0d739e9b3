//! Writes the archive of a plan: each volume (binds from disk, named volumes through
//! `docker cp` from a stopped container), the compose files, then the manifest.
use std::fs::OpenOptions;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::plan::{Item, Plan};
use super::reading::{self, Captured, Reading, Source};
use super::Written;
use crate::archive::collector::Collector;
use crate::archive::hashing::Sha256;
use crate::archive::manifest::{self, Manifest, ServiceRecord, Skipped, StoredFile, VolumeRecord};
use crate::archive::stream_source::{self, Origin, Scope};
use crate::archive::{fs_source, ArchiveWriter};
use crate::cli::ComposeArgs;
use crate::compose::{model, Project, Volume};
use crate::docker::Docker;
use crate::output::warn;
use crate::records::VolumeKind;
use crate::{cancel, storage, Context};

/// What reading through the engine needs of the [`Context`]: no more, so an archive can be
/// written on another thread.
#[derive(Clone, Copy)]
pub struct Engine<'a> {
    pub docker: &'a Docker,
    pub compose: &'a ComposeArgs,
}

impl<'a> From<&'a Context> for Engine<'a> {
    fn from(ctx: &'a Context) -> Engine<'a> {
        Engine {
            docker: &ctx.docker,
            compose: &ctx.compose,
        }
    }
}

/// Removes the partial archive unless it was published.
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where the archive goes.
pub enum Destination {
    /// A file in the plan's storage folder.
    Storage,
    /// Straight into a bucket as it is written (`--remote-only`): no local archive. The
    /// upload was begun (and recorded) before anything stopped; the archive takes it.
    Remote(Box<crate::remote::transfer::PartSink>),
}

/// Writes, fsyncs and publishes the archive (or streams it to the bucket and completes the
/// object). Fails on any read or write error, or on cancel; then no file is left under a
/// final name and no object is completed.
pub fn archive(
    ctx: Engine<'_>,
    project: &Project,
    plan: &Plan,
    reading: &Reading,
    dest: Destination,
) -> Result<Written> {
    let partial = Partial(storage::partial_path(
        &plan.storage,
        &project.name,
        &plan.archive_name,
    ));
    let codec = plan.codec;
    let recipients = crate::crypto::Recipients(plan.recipients.clone());
    let (output, remote_key): (Box<dyn crate::archive::writer::Output>, _) = match dest {
        Destination::Storage => (Box::new(crate::private::create_new(&partial.0)?), None),
        Destination::Remote(sink) => {
            let url = sink.url.clone();
            (sink as Box<dyn crate::archive::writer::Output>, Some(url))
        }
    };
    let mut writer = ArchiveWriter::new(output, codec, &recipients)?;
    let spill_path = Partial(partial.0.with_extension("files"));
    let mut spill = std::io::BufWriter::new(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&spill_path.0)
            .with_context(|| format!("creating {}", spill_path.0.display()))?,
    );
    let mut created = Vec::new();
    let result = fill(
        ctx,
        project,
        plan,
        reading,
        &mut writer,
        &mut spill,
        &mut created,
    );
    if !created.is_empty() {
        let mut args = vec!["rm".to_string(), "-f".to_string()];
        args.extend(created);
        let _ = ctx.docker.output(&args);
    }
    let in_storage = || format!("writing the archive in {}", plan.storage.display());
    let file_count = result.with_context(in_storage)?;
    let finished = writer.finish().with_context(in_storage)?;
    if let Some(url) = remote_key {
        return Ok(Written {
            path: plan.storage.join(&plan.archive_name),
            size: finished.size,
            sha256: finished.sha256,
            file_count,
            remote_url: Some(url),
        });
    }
    let ext = super::plan::extension(codec, &recipients);
    let path = storage::publish(&partial.0, &plan.storage, &plan.archive_name, &ext)?;
    std::mem::forget(partial);
    Ok(Written {
        path,
        size: finished.size,
        sha256: finished.sha256,
        file_count,
        remote_url: None,
    })
}

/// Appends every volume, the compose files and the manifest. Returns the file count.
#[allow(clippy::too_many_arguments)]
fn fill(
    ctx: Engine<'_>,
    project: &Project,
    plan: &Plan,
    reading: &Reading,
    writer: &mut ArchiveWriter,
    spill: &mut std::io::BufWriter<std::fs::File>,
    created: &mut Vec<String>,
) -> Result<u64> {
    let bar = crate::output::progress_bar(plan.bytes_needed);
    let on_read = |n: u64| -> io::Result<()> {
        bar.inc(n);
        if cancel::requested() {
            return Err(io::Error::other("cancelled"));
        }
        Ok(())
    };
    let mut skipped = plan.skipped.clone();
    let mut records = Vec::new();
    for item in &plan.volumes {
        crate::fault::fail(crate::fault::Fault::CreateWriting)?;
        crate::fault::point(crate::fault::Fault::CreateWriting);
        let mut warnings = Vec::new();
        let mut c = Collector::new(writer, &item.archive_path, spill, &on_read);
        match reading.source(&item.archive_path) {
            Source::Captured(captured) => {
                read_captured(plan, item, captured, &mut c, &mut warnings)
                    .with_context(|| format!("reading the capture of {}", item.volume))?
            }
            Source::Handover(h) => read_handed_over(plan, item, h, &mut c, &mut warnings)?,
            Source::Live => read_live(ctx, project, plan, item, created, &mut c, &mut warnings)?,
        }
        for w in &warnings {
            warn(format!("{}: {w}", item.volume));
        }
        records.push(record(item, plan, c));
        skipped.extend(warnings.into_iter().map(|reason| Skipped {
            volume: item.volume.clone(),
            reason,
        }));
    }
    bar.finish_and_clear();
    reading.read_all();
    let compose_files = store_compose_files(project, writer, plan.at.timestamp() as u64)?;
    let file_count = records.iter().map(|r| r.file_count).sum();
    append_spill(writer, spill, plan.at.timestamp() as u64)?;
    let m = manifest_of(project, plan, records, compose_files, skipped);
    let json = serde_json::to_vec_pretty(&m)?;
    writer.append_bytes(manifest::MANIFEST_PATH, &json, plan.at.timestamp() as u64)?;
    Ok(file_count)
}

/// Reads a volume as it is now: from its folder on this host, or through the engine.
fn read_live(
    ctx: Engine<'_>,
    project: &Project,
    plan: &Plan,
    item: &Item,
    created: &mut Vec<String>,
    c: &mut Collector<'_>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let mut said = |w: String| warnings.push(w);
    match plan.host_dir(item) {
        Some(dir) => fs_source::collect(dir, &plan.storage, None, c, &mut said)
            .with_context(|| format!("reading {} in {}", what(item), dir.display())),
        None => read_through_engine(ctx, project, plan, item, created, c, &mut said)
            .with_context(|| format!("reading {} through the engine", what(item))),
    }
}

fn what(item: &Item) -> String {
    match &item.decl {
        Volume::Bind { source, .. } => format!("bind mount {}", source.display()),
        Volume::Volume { name, .. } => format!("volume {name}"),
    }
}

/// Reads a volume from its folder until the hand-over, then from its capture; its warnings
/// are what the walk said, then what the capture left out beyond it.
fn read_handed_over(
    plan: &Plan,
    item: &Item,
    h: &crate::archive::handover::Handover,
    c: &mut Collector<'_>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let dir = plan.needed_host_dir(item)?;
    let mut said = |w: String| warnings.push(w);
    fs_source::collect(dir, &plan.storage, Some(h.clone()), c, &mut said)
        .with_context(|| format!("reading {} in {}", what(item), dir.display()))?;
    if let Some(left_out) = h.left_out.get() {
        reading::merge_left_out(warnings, left_out);
    }
    Ok(())
}

/// Reads a volume from its capture: the cloned tree or the pack (what either left out is said
/// as reading the original would have said it), or the engine's stream in a file.
fn read_captured(
    plan: &Plan,
    item: &Item,
    captured: &Captured,
    c: &mut Collector<'_>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let mut quiet = |w: String| warnings.push(w);
    match captured {
        Captured::Tree(path, skipped) => {
            fs_source::collect(path, &plan.storage, None, c, &mut quiet)?;
            warnings.extend(skipped.iter().cloned());
            Ok(())
        }
        Captured::Packed(path, skipped) => {
            read_tar_file(path, &Scope::Tree(None), Origin::Pack, c, &mut quiet)?;
            warnings.extend(skipped.iter().cloned());
            Ok(())
        }
        Captured::Stream(path) => {
            read_tar_file(path, &scope_of(plan, item), Origin::Engine, c, &mut quiet)
        }
    }
}

/// Reads the entries of the tar file at `path` within `scope` (a pack, a saved stream).
fn read_tar_file(
    path: &Path,
    scope: &Scope,
    origin: Origin,
    c: &mut Collector<'_>,
    warn: &mut dyn FnMut(String),
) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    stream_source::collect(file, scope, origin, c, warn)
}

/// Appends the per-entry lines collected in the spill file as `manifest-files.jsonl`.
fn append_spill(
    writer: &mut ArchiveWriter,
    spill: &mut std::io::BufWriter<std::fs::File>,
    mtime: u64,
) -> Result<()> {
    use std::io::{Seek, Write};
    spill.flush()?;
    let file = spill.get_mut();
    let len = file.stream_position()?;
    file.rewind()?;
    let attrs = crate::archive::writer::Attrs {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime,
    };
    writer.append_file(
        manifest::FILES_PATH.as_bytes(),
        (&attrs, &Default::default()),
        len,
        None,
        std::io::BufReader::new(&*file),
    )
}

/// Streams a named volume or a bind out of a stopped container of the project that mounts
/// it (the engine reads what this process may not).
fn read_through_engine(
    ctx: Engine<'_>,
    project: &Project,
    plan: &Plan,
    item: &Item,
    created: &mut Vec<String>,
    c: &mut Collector<'_>,
    warn_fn: &mut dyn FnMut(String),
) -> Result<()> {
    let src = engine_source(ctx, project, item, created)?;
    let mut stream = ctx.docker.stream(&["cp", src.as_str(), "-"])?;
    match stream_source::collect(
        &mut stream,
        &scope_of(plan, item),
        Origin::Engine,
        c,
        warn_fn,
    ) {
        Ok(()) => stream.finish(),
        Err(e) => {
            stream.kill();
            Err(e)
        }
    }
}

/// The `docker cp` source (`CTR:/path/.`, or `CTR:/path` for a file) that holds `item`: a
/// stopped container of the project that mounts it, or, when another mount is nested inside,
/// a never-started helper that mounts it alone.
pub(super) fn engine_source(
    ctx: Engine<'_>,
    project: &Project,
    item: &Item,
    created: &mut Vec<String>,
) -> Result<String> {
    let (container, target) = container_for(ctx, project, &item.decl, created)?;
    let nested = item
        .decl
        .mounts()
        .iter()
        .any(|m| m.target == target && project.has_nested_mount(&m.service, &target));
    let (container, target) = if nested {
        (
            alone(ctx, &container, &item.decl, created)?,
            format!("/{ALONE_DIR}"),
        )
    } else {
        (container, target)
    };
    Ok(match &item.decl {
        Volume::Bind { is_file: true, .. } => format!("{container}:{target}"),
        _ => format!("{container}:{}/.", target.trim_end_matches('/')),
    })
}

/// What a `docker cp` stream of `item` holds: one file, or a tree less the storage folder
/// (when a bind contains it, as reading from disk leaves it out).
fn scope_of(plan: &Plan, item: &Item) -> Scope {
    match &item.decl {
        Volume::Bind {
            source,
            is_file: true,
            ..
        } => Scope::File(source.file_name().unwrap_or_default().as_bytes().to_vec()),
        Volume::Bind { source, .. } => Scope::Tree(
            plan.storage
                .strip_prefix(source)
                .ok()
                .filter(|s| !s.as_os_str().is_empty())
                .map(|s| s.as_os_str().as_bytes().to_vec()),
        ),
        Volume::Volume { .. } => Scope::Tree(None),
    }
}

/// Where [`alone`]'s helper container mounts the volume.
const ALONE_DIR: &str = ".nuwax-read";

/// A never-started helper container, from the image of `container`, that mounts `volume` alone
/// (read-only, no copy of the image's files), so a nested mount is not read as the volume's.
fn alone(
    ctx: Engine<'_>,
    container: &str,
    volume: &Volume,
    created: &mut Vec<String>,
) -> Result<String> {
    let image = ctx
        .docker
        .output(&["inspect", "--format", "{{.Image}}", container])?
        .trim()
        .to_string();
    let name = format!("nuwax-fill-{}-read-{}", std::process::id(), created.len());
    let mount = match volume {
        Volume::Volume { name, .. } => format!("{name}:/{ALONE_DIR}:ro,nocopy"),
        Volume::Bind { source, .. } => format!("{}:/{ALONE_DIR}:ro", source.display()),
    };
    crate::volumes::create_helper(ctx.docker, &name, &mount, &image).with_context(|| {
        format!(
            "creating a helper container to read {} alone",
            volume.label()
        )
    })?;
    created.push(name.clone());
    Ok(name)
}

/// A container of the project that mounts `volume`, and where; created (not started) with
/// `docker compose create` when none exists. Containers made here are pushed to `created`.
fn container_for(
    ctx: Engine<'_>,
    project: &Project,
    volume: &Volume,
    created: &mut Vec<String>,
) -> Result<(String, String)> {
    for m in volume.mounts() {
        if let Some(c) = project
            .service(&m.service)
            .and_then(|s| s.containers.first())
        {
            return Ok((c.name.clone(), m.target.clone()));
        }
    }
    let m = volume
        .mounts()
        .first()
        .context("the volume is not mounted by any service")?;
    crate::services::create_missing(ctx.docker, ctx.compose, std::slice::from_ref(&m.service))?;
    let ps = ctx.docker.compose(
        ctx.compose,
        &["ps", "-a", "--format", "json", m.service.as_str()],
    )?;
    let mine = model::parse_ps(&ps)?
        .into_iter()
        .find(|p| p.service == m.service && !p.is_oneoff());
    let name = mine.map(|p| p.name).with_context(|| {
        format!(
            "no container for service {} after `docker compose create`",
            m.service
        )
    })?;
    created.push(name.clone());
    Ok((name, m.target.clone()))
}

fn record(item: &Item, plan: &Plan, c: Collector<'_>) -> VolumeRecord {
    let (kind, name, key, source, external, is_file) = match &item.decl {
        Volume::Volume {
            name,
            key,
            external,
            ..
        } => (
            VolumeKind::Volume,
            Some(name.clone()),
            Some(key.clone()),
            None,
            *external,
            false,
        ),
        Volume::Bind {
            source, is_file, ..
        } => (
            VolumeKind::Bind,
            None,
            None,
            Some(source.clone()),
            false,
            *is_file,
        ),
    };
    let details = name
        .as_ref()
        .and_then(|n| plan.volume_details.get(n))
        .cloned()
        .unwrap_or_default();
    VolumeRecord {
        kind,
        name,
        key,
        source,
        external,
        is_file,
        role: item.role,
        driver: (!details.driver.is_empty()).then_some(details.driver),
        driver_opts: details.options,
        labels: details.labels,
        mounts: item.decl.mounts().iter().map(ToString::to_string).collect(),
        archive_path: item.archive_path.clone(),
        root: c.root.unwrap_or_default(),
        file_count: c.file_count,
        bytes: c.bytes,
    }
}

/// Copies the compose files and `.env` into `compose/` for reference. Returns them with the
/// SHA-256 over the compose files' bytes in order (`.env` not included).
fn store_compose_files(
    project: &Project,
    writer: &mut ArchiveWriter,
    mtime: u64,
) -> Result<(Vec<StoredFile>, String)> {
    let mut compose_hash = Sha256::new();
    let mut sources: Vec<PathBuf> = project.compose_files.clone();
    let env = project.dir.join(".env");
    if env.is_file() {
        sources.push(env);
    }
    let mut stored = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let data = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        if i < project.compose_files.len() {
            compose_hash.update(&data);
        }
        let base = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("file{i}"));
        let name = if stored
            .iter()
            .any(|s: &StoredFile| s.archive_path == format!("compose/{base}"))
        {
            format!("compose/{i}-{base}")
        } else {
            format!("compose/{base}")
        };
        writer.append_bytes(&name, &data, mtime)?;
        stored.push(StoredFile {
            source: src.clone(),
            archive_path: name,
            sha256: Sha256::hex_of(&data),
        });
    }
    Ok((stored, compose_hash.hex()))
}

fn manifest_of(
    project: &Project,
    plan: &Plan,
    volumes: Vec<VolumeRecord>,
    (compose_files, compose_sha256): (Vec<StoredFile>, String),
    skipped: Vec<Skipped>,
) -> Manifest {
    Manifest {
        format_version: manifest::FORMAT_VERSION,
        tool: env!("CARGO_PKG_NAME").into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        created_at: plan.created_at.clone(),
        project: project.name.clone(),
        project_dir: project.dir.clone(),
        backup_type: plan.backup_type,
        service_version: plan.service_version.clone(),
        compression: plan.compression.into(),
        compose_sha256,
        compose_files,
        services: project
            .services
            .iter()
            .map(|s| ServiceRecord {
                name: s.name.clone(),
                kind: s.kind,
                restart_policy: s.restart_policy.clone(),
                image: s.image.clone(),
                image_id: s
                    .image
                    .as_ref()
                    .and_then(|i| plan.image_ids.get(i).cloned()),
            })
            .collect(),
        volumes,
        skipped,
        recipients: plan.recipients.clone(),
    }
}
