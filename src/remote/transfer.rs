//! Archives to and from a bucket: part sizing (pure), the upload of a completed local
//! archive, the streaming upload of `--remote-only`, downloads, and the cleanup of
//! multipart uploads a failure left open.
use std::io::Read;
use std::path::Path;

use anyhow::{Context as _, Result};

use super::store::{Store, Upload};
use super::url::{numbered, split_object};
use crate::archive::writer::Output;
use crate::catalog::{BackupRow, Catalog, RemoteState};
use crate::output::{note, warn};
use crate::records::RemoteStatus;
use crate::sidecar::Sidecar;

const MIB: u64 = 1 << 20;
/// The smallest part we send (S3's minimum is 5 MiB; 8 MiB is what AWS's own tools use).
pub const MIN_PART: u64 = 8 * MIB;
/// Parts in flight are held in memory: at most this many bytes of them, and at least two.
const IN_FLIGHT_BYTES: u64 = 48 * MIB;

/// How an object of `size` bytes is cut: `part` bytes a part, `in_flight` parts at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    pub part: u64,
    pub in_flight: usize,
}

/// part = max(8 MiB, ⌈size / max_parts⌉); in flight = 48 MiB of parts, 2 to 8 of them.
pub fn sizing(size: u64, max_parts: u64) -> Sizing {
    let part = MIN_PART.max(size.div_ceil(max_parts.max(1)));
    let in_flight = (IN_FLIGHT_BYTES / part).clamp(2, 8) as usize;
    Sizing { part, in_flight }
}

/// What a completed upload was, for messages and the row.
pub struct Uploaded {
    pub url: String,
    pub parts: u64,
    pub part_size: u64,
}

/// Uploads the local archive of `row` as `<prefix>/<project>/<name>` (a free name: another
/// host's object is never overwritten), then its sidecar, recording progress in the row so
/// a failure (exit 14) leaves it `failed` with the multipart upload id to abort later.
pub fn upload(
    store: &Store,
    catalog: &Catalog,
    row: &BackupRow,
    max_parts: u64,
) -> Result<Uploaded> {
    let key = match claim_key(store, &row.project, &file_name(row)) {
        Ok(k) => k,
        Err(e) => {
            let state = RemoteState {
                url: Some(
                    store
                        .url
                        .object_url(&store.url.key(&row.project, &file_name(row))),
                ),
                status: Some(RemoteStatus::Failed),
                error: Some(format!("{e:#}")),
                upload_id: None,
            };
            catalog.set_remote(row.id, &state)?;
            return Err(e);
        }
    };
    let url = store.url.object_url(&key);
    let mut state = RemoteState {
        url: Some(url.clone()),
        status: Some(RemoteStatus::Failed),
        error: Some("the upload did not finish".into()),
        upload_id: None,
    };
    catalog.set_remote(row.id, &state)?;
    let result = send_file(store, catalog, row, &key, max_parts, &mut state);
    match result {
        Ok(done) => {
            state.status = Some(RemoteStatus::Uploaded);
            state.error = None;
            state.upload_id = None;
            catalog.set_remote(row.id, &state)?;
            note(format!(
                "backup #{} uploaded to {} ({} part{} of {} MiB)",
                row.id,
                done.url,
                done.parts,
                if done.parts == 1 { "" } else { "s" },
                done.part_size >> 20
            ));
            Ok(done)
        }
        Err(err) => {
            if let Some(id) = state.upload_id.clone() {
                if store.abort(&key, &id).is_ok() {
                    state.upload_id = None;
                }
            }
            state.error = Some(format!("{err:#}"));
            catalog.set_remote(row.id, &state)?;
            Err(err)
        }
    }
}

/// `--remote-only`: the object is complete; writes its sidecar (last) and marks the copy
/// uploaded.
pub fn finish_streamed(store: &Store, catalog: &Catalog, row: &BackupRow) -> Result<()> {
    let url = row
        .remote_url
        .as_deref()
        .context("the backup has no remote copy")?;
    let key = split_object(url)?.1;
    let mut state = remote_state(row);
    let put = crate::fault::fail(crate::fault::Fault::UploadSidecar)
        .and_then(|()| sidecar_json(row, &key))
        .and_then(|json| store.put_small(&format!("{key}.json"), json));
    match put {
        Ok(()) => {
            state.status = Some(RemoteStatus::Uploaded);
            state.error = None;
            catalog.set_remote(row.id, &state)?;
            note(format!("backup #{} streamed to {url}", row.id));
            Ok(())
        }
        Err(e) => {
            state.error = Some(format!("its sidecar was not written: {e:#}"));
            catalog.set_remote(row.id, &state)?;
            Err(e)
        }
    }
}

/// Multipart upload of the file, size check, then the sidecar (last: its presence says the
/// archive is complete).
fn send_file(
    store: &Store,
    catalog: &Catalog,
    row: &BackupRow,
    key: &str,
    max_parts: u64,
    state: &mut RemoteState,
) -> Result<Uploaded> {
    let path = Path::new(&row.file_path);
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    let plan = sizing(size, max_parts);
    let mut up = store.begin(key, row.sha256.as_deref(), plan.in_flight)?;
    state.upload_id = Some(up.id().to_string());
    catalog.set_remote(row.id, state)?;
    let bar = crate::output::progress_bar(size);
    let parts = send_parts(&mut up, &mut file, plan.part, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    crate::fault::point(crate::fault::Fault::UploadCompleting);
    up.finish()?;
    state.upload_id = None;
    let url = store.url.object_url(key);
    let checked = match store.head(key) {
        Ok(Some(there)) if there == size => Ok(()),
        Ok(other) => Err(store.fail(
            format!("checking {url}"),
            format!("{} bytes there, {size} sent", other.unwrap_or(0)),
        )),
        Err(e) => Err(e),
    };
    let sidecar =
        checked.and_then(|()| store.put_small(&format!("{key}.json"), sidecar_json(row, key)?));
    if let Err(e) = sidecar {
        // Without its sidecar the object is not a backup: remove it so a retry finds the name free.
        let _ = store.delete(key);
        return Err(e);
    }
    Ok(Uploaded {
        url,
        parts,
        part_size: plan.part,
    })
}

/// Reads `part`-sized pieces of `input` and sends each; returns how many parts were sent.
pub fn send_parts(
    up: &mut Upload,
    input: &mut dyn Read,
    part: u64,
    progress: &dyn Fn(u64),
) -> Result<u64> {
    let mut n = 0;
    loop {
        let mut buf = Vec::with_capacity(part as usize);
        input.take(part).read_to_end(&mut buf)?;
        if buf.is_empty() && n > 0 {
            return Ok(n);
        }
        let len = buf.len() as u64;
        up.send(buf)?;
        n += 1;
        progress(len);
        if n == 2 {
            crate::fault::point(crate::fault::Fault::UploadParts);
        }
        if len < part {
            return Ok(n);
        }
    }
}

/// `--remote-only`: the archive's bytes cut into parts and uploaded as they are written;
/// `seal` completes the object. Dropped unsealed (an error, a cancel), it aborts the upload.
pub struct PartSink {
    upload: Option<Upload>,
    /// The object's URL.
    pub url: String,
    buf: Vec<u8>,
    part: usize,
    sent: usize,
}

impl PartSink {
    /// Starts the upload of a free name for archive `name` of `project`, parts sized for an
    /// archive of up to `expected` bytes; fails (exit 14) when the bucket cannot be written.
    pub fn begin(
        store: &Store,
        project: &str,
        name: &str,
        expected: u64,
        max_parts: u64,
    ) -> Result<PartSink> {
        let key = claim_key(store, project, name)?;
        let plan = sizing(expected, max_parts);
        Ok(PartSink {
            upload: Some(store.begin(&key, None, plan.in_flight)?),
            url: store.url.object_url(&key),
            buf: Vec::with_capacity(plan.part as usize),
            part: plan.part as usize,
            sent: 0,
        })
    }

    /// The upload's id on the server (to record, so a killed run's upload can be aborted).
    pub fn upload_id(&self) -> &str {
        self.upload.as_ref().map_or("", |u| u.id())
    }

    fn send_full(&mut self) -> std::io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part));
        let up = self
            .upload
            .as_mut()
            .ok_or_else(|| std::io::Error::other("upload finished"))?;
        up.send(data)
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        self.sent += 1;
        if self.sent == 2 {
            crate::fault::point(crate::fault::Fault::UploadParts);
        }
        Ok(())
    }
}

impl std::io::Write for PartSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(self.part - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.part {
            self.send_full()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Output for PartSink {
    fn seal(mut self: Box<Self>) -> Result<()> {
        if !self.buf.is_empty() {
            self.send_full()?;
        }
        crate::fault::point(crate::fault::Fault::UploadCompleting);
        self.upload.take().context("upload finished")?.finish()
    }
}

impl Drop for PartSink {
    fn drop(&mut self) {
        if let Some(up) = self.upload.take() {
            up.abort();
        }
    }
}

/// The sidecar of `row` as stored beside its object (named after the object).
pub fn sidecar_json(row: &BackupRow, key: &str) -> Result<Vec<u8>> {
    let mut side = Sidecar::of(row);
    side.file_name = key.rsplit('/').next().unwrap_or(key).to_string();
    let mut json = serde_json::to_vec_pretty(&side)?;
    json.push(b'\n');
    Ok(json)
}

/// The key for archive `name` of `project`: its own name, or `name_2`, `name_3`… when another
/// host's object (or sidecar) already holds it. Fails (exit 14) when the bucket cannot be
/// listed.
fn claim_key(store: &Store, project: &str, name: &str) -> Result<String> {
    // One listing first: proves the bucket exists and the keys are accepted.
    store.probe(&store.url.key(project, ""))?;
    let name = name.to_string();
    for n in 1..1000 {
        let candidate = if n == 1 {
            name.clone()
        } else {
            numbered(&name, n)
        };
        let key = store.url.key(project, &candidate);
        if store.head(&key)?.is_none() && store.head(&format!("{key}.json"))?.is_none() {
            return Ok(key);
        }
    }
    anyhow::bail!("no free object name for {name} under {}", store.url)
}

/// The archive's file name.
fn file_name(row: &BackupRow) -> String {
    Path::new(&row.file_path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether `row`'s remote copy is complete: the object has the row's size and the sidecar
/// is there and names the same SHA-256.
pub fn is_there(store: &Store, row: &BackupRow, key: &str) -> Result<bool> {
    let Some(there) = store.head(key)? else {
        return Ok(false);
    };
    let Some(bytes) = store.get_small(&format!("{key}.json"))? else {
        return Ok(false);
    };
    let side: Sidecar = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(_) => return Ok(false),
    };
    Ok(there == row.size_bytes
        && side.size_bytes == row.size_bytes
        && Some(&side.sha256) == row.sha256.as_ref())
}

/// Aborts the multipart uploads that failed runs left open (of `project`, or all), and
/// forgets them; a server still unreachable keeps them for next time.
pub fn abort_stale(catalog: &Catalog, project: Option<&str>) {
    let rows = match catalog.list(project) {
        Ok(r) => r,
        Err(_) => return,
    };
    for r in rows.iter().filter(|r| r.remote_upload_id.is_some()) {
        let (Some(url), Some(id)) = (&r.remote_url, &r.remote_upload_id) else {
            continue;
        };
        let aborted = abort_at(url, id);
        match aborted {
            Ok(()) => {
                note(format!(
                    "aborted the unfinished upload of backup #{} ({url})",
                    r.id
                ));
                let mut state = remote_state(r);
                state.upload_id = None;
                let _ = catalog.set_remote(r.id, &state);
            }
            Err(e) => warn(format!(
                "the unfinished upload of backup #{} ({url}) is still open: {e:#}",
                r.id
            )),
        }
    }
}

/// Aborts multipart upload `id` of the object at `url` (with this process's credentials).
pub fn abort_at(url: &str, id: &str) -> Result<()> {
    let (bucket, key) = split_object(url)?;
    super::open(&bucket)?.abort(&key, id)
}

/// The row's remote columns as a state to update.
pub fn remote_state(r: &BackupRow) -> RemoteState {
    RemoteState {
        url: r.remote_url.clone(),
        status: r.remote_status,
        error: r.remote_error.clone(),
        upload_id: r.remote_upload_id.clone(),
    }
}

/// Downloads `row`'s remote copy to `target` (private, complete or not at all): it is written
/// to a private partial file and renamed over `target` only once its size and SHA-256 are the
/// catalog's (a bucket anyone else can write never replaces a good local archive). The
/// caller verifies the content. A SHA-256 that differs is exit 12, nothing replaced.
pub fn download(row: &BackupRow, target: &Path) -> Result<()> {
    let url = row
        .remote_url
        .as_deref()
        .context("the backup has no remote copy")?;
    let (bucket, key) = split_object(url)?;
    let store = super::open(&bucket)?;
    let dir = target.parent().unwrap_or(Path::new("."));
    crate::private::create_dir_all(dir)?;
    // A partial name of the project: a killed download is removed by the next run.
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let tmp = crate::storage::partial_path(dir, &row.project, &name);
    note(format!("downloading backup #{} from {url}", row.id));
    let bar = crate::output::progress_bar(row.size_bytes);
    let got = (|| -> Result<(u64, String)> {
        let mut f = crate::private::create_new(&tmp)?;
        let mut out = Tee(&mut f, crate::archive::hashing::Sha256::new());
        let n = store.download(&key, &mut out, &|done| bar.set_position(done))?;
        let sha = out.1.hex();
        f.sync_all()?;
        Ok((n, sha))
    })();
    bar.finish_and_clear();
    let got = got.and_then(|(n, sha)| {
        anyhow::ensure!(
            n == row.size_bytes,
            "{url}: {n} bytes downloaded, {} expected",
            row.size_bytes
        );
        if let Some(want) = row.sha256.as_deref().filter(|w| *w != sha) {
            return Err(crate::exit_codes::UserError::new(
                crate::exit_codes::Code::VerifyFailed,
                format!(
                    "backup #{}: the copy at {url} has SHA-256 {sha}, the catalog recorded {want}; nothing was changed",
                    row.id
                ),
            )
            .into());
        }
        std::fs::rename(&tmp, target).with_context(|| format!("publishing {}", target.display()))
    });
    if got.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    got?;
    crate::storage::sync_dir(dir)
}

/// Writes to a file and a hash at once.
struct Tee<'a>(&'a mut std::fs::File, crate::archive::hashing::Sha256);

impl std::io::Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Removes each backup everywhere (see [`remove_backup`]), calling `removed` after each.
/// A bucket that cannot be reached does not stop the others: the last such error (exit 14)
/// is returned at the end, each one said as a warning. Any other error stops at once.
pub fn remove_backups(
    catalog: &Catalog,
    rows: &[BackupRow],
    removed: &dyn Fn(&BackupRow),
) -> Result<()> {
    let mut failed = None;
    for r in rows {
        match remove_backup(catalog, r) {
            Ok(()) => removed(r),
            Err(e) if crate::exit_codes::code_of(&e) == crate::exit_codes::Code::Remote => {
                warn(format!("{e:#}"));
                failed = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Removes a backup everywhere: its local archive and sidecar, then its remote copy (and an
/// unfinished upload), then the row. When the remote cannot be reached the row stays, says
/// why, and the error is returned (exit 14).
fn remove_backup(catalog: &Catalog, row: &BackupRow) -> Result<()> {
    crate::storage::remove_archive(Path::new(&row.file_path))?;
    if let Some(url) = &row.remote_url {
        let removed = split_object(url).and_then(|(bucket, key)| {
            let store = super::open(&bucket)?;
            if let Some(id) = &row.remote_upload_id {
                store.abort(&key, id)?;
            }
            store.delete(&key)?;
            store.delete(&format!("{key}.json"))
        });
        if let Err(e) = removed {
            let mut state = remote_state(row);
            state.error = Some(format!("delete failed: {e:#}"));
            catalog.set_remote(row.id, &state)?;
            return Err(e.context(format!(
                "backup #{}: the local archive is gone, the copy at {url} is not (the row is kept; delete it again)",
                row.id
            )));
        }
    }
    catalog.delete(row.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_at_least_8_mib_and_at_most_max_parts() {
        assert_eq!(
            sizing(0, 10_000),
            Sizing {
                part: MIN_PART,
                in_flight: 6
            }
        );
        assert_eq!(sizing(300 * MIB, 10_000).part, MIN_PART);
        let capped = sizing(300 * MIB, 10);
        assert_eq!(capped.part, 30 * MIB);
        assert_eq!(capped.in_flight, 2);
        let huge = sizing(50 << 30, 10_000);
        assert_eq!(huge.part, MIN_PART, "50 GiB fits 10,000 parts of 8 MiB");
        let fewer = sizing(50 << 30, 1_000);
        assert!(fewer.part * 1_000 >= 50 << 30 && fewer.part < 52 * MIB);
        assert!(sizing(1 << 40, 10_000).part * 10_000 >= 1 << 40);
    }
}
