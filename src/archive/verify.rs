//! Verifies an archive in one pass, in memory that does not grow with the entry count: every
//! entry is checked for safety as it comes, every file hashed (BLAKE3), and a running digest
//! of what the entries hold is compared with one of what `manifest-files.jsonl` lists (the
//! writer puts both in the same order, so no table of paths is needed). Only when the two
//! digests differ does a second pass, with a table, name the first bad path.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::manifest::{EntryKind, FileLine, Manifest, FILES_PATH, MANIFEST_PATH};
use super::reader::{copy_into_hasher, open_file, volume_of, At, VerifiedFile};
use super::safety::PathChecker;
use super::xattrs::{self, Xattrs};
use crate::crypto::Keyring;

/// What a verified archive holds.
#[derive(Clone)]
pub struct Verified {
    pub manifest: Manifest,
    pub sha256: String,
    pub size: u64,
    /// The file that was read, still open: extraction reads these bytes, not the path again.
    pub file: VerifiedFile,
    /// Per volume folder (`binds/data`): what its entries hold, as read (not as the manifest
    /// says): space checks use these.
    pub counted: BTreeMap<String, Counted>,
    /// Per volume folder (`binds/data`): the distinct (uid, gid) of its entries, up to
    /// [`MAX_OWNERS`] (a restore as a user who is not root must know whom it cannot be).
    pub owners: BTreeMap<String, BTreeSet<(u64, u64)>>,
}

/// What the entries of one volume folder hold: bytes of file content and entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    pub bytes: u64,
    pub files: u64,
}

/// `manifest.json` is read whole: at most this many bytes.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// One line of `manifest-files.jsonl`: at most this many bytes (a 4 KiB name in hex is 8 KiB).
const MAX_LINE: usize = 1 << 20;
/// The second pass names the first difference from a table of every entry: at most this many
/// entries and this many bytes of listing; past that it says only that they differ.
const MAX_TABLE_ENTRIES: u64 = 2_000_000;
const MAX_TABLE_LINES: u64 = 512 << 20;

/// Owners remembered per volume: enough to decide, bounded whatever the archive holds.
pub const MAX_OWNERS: usize = 64;

fn note_owner(owners: &mut BTreeMap<String, BTreeSet<(u64, u64)>>, folder: &[u8], h: &tar::Header) {
    let folder = String::from_utf8_lossy(folder);
    let set = match owners.get_mut(folder.as_ref()) {
        Some(set) => set,
        None => owners.entry(folder.into_owned()).or_default(),
    };
    if set.len() < MAX_OWNERS {
        set.insert((h.uid().unwrap_or(0), h.gid().unwrap_or(0)));
    }
}

/// What one volume entry holds, as compared with its manifest line.
struct Seen {
    kind: EntryKind,
    size: u64,
    blake3: Option<String>,
    xattrs: Xattrs,
}

/// Running digests of the entries and of the manifest's lines, in the same encoding.
#[derive(Default)]
struct Tally {
    entries: blake3::Hasher,
    entry_count: u64,
    lines: blake3::Hasher,
    line_count: u64,
}

/// One record in the digests' encoding: path, type, and for files size and BLAKE3.
fn feed(h: &mut blake3::Hasher, full: &[u8], seen: &Seen) {
    h.update(&(full.len() as u64).to_le_bytes());
    h.update(full);
    h.update(&[seen.kind as u8]);
    if seen.kind == EntryKind::File {
        h.update(&seen.size.to_le_bytes());
        h.update(seen.blake3.as_deref().unwrap_or("").as_bytes());
    }
    // Format 1 entries have none: their encoding is unchanged.
    for (name, value) in &seen.xattrs {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&(value.len() as u64).to_le_bytes());
        h.update(value);
    }
}

/// Reads the whole archive: every entry must be safe, every file must match the manifest's
/// size and BLAKE3, the manifest must be there and valid, and (when given) the file's
/// SHA-256 must equal `expected_sha256`. Fails with what is wrong.
pub fn verify(
    path: &Path,
    expected_sha256: Option<&str>,
    keys: Option<&Keyring>,
) -> Result<Verified> {
    let file = Arc::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let (verified, tally) = first_pass(&file, path, expected_sha256, keys)?;
    let agree =
        tally.entry_count == tally.line_count && tally.entries.finalize() == tally.lines.finalize();
    if !agree {
        // Names the first difference; passes when only the order differs (another writer).
        if tally.entry_count > MAX_TABLE_ENTRIES || tally.line_count > MAX_TABLE_ENTRIES {
            bail!(
                "the archive's {} volume entries do not match the {} lines of {FILES_PATH} (too many to name the first difference)",
                tally.entry_count,
                tally.line_count
            );
        }
        second_pass(&file, path, keys)?;
    }
    Ok(verified)
}

fn damaged(e: impl Into<anyhow::Error>) -> anyhow::Error {
    e.into().context("the archive is damaged or cut short")
}

fn first_pass(
    file: &Arc<File>,
    path: &Path,
    expected_sha256: Option<&str>,
    keys: Option<&Keyring>,
) -> Result<(Verified, Tally)> {
    let mut opened = open_file(At::new(file.clone()), path, keys)?;
    let mut counted: BTreeMap<String, Counted> = BTreeMap::new();
    let mut checker = PathChecker::default();
    let mut tally = Tally::default();
    let mut manifest_bytes = None;
    let mut saw_lines = false;
    let mut owners = BTreeMap::new();
    let mut buf = vec![0u8; 128 << 10];
    {
        let mut archive = tar::Archive::new(&mut opened.tar);
        for entry in archive.entries().context("reading the archive")? {
            let mut entry = entry.map_err(damaged)?;
            crate::cancel::check()?;
            let p = entry.path_bytes().into_owned();
            let kind = entry.header().entry_type();
            let link = entry.link_name_bytes().map(|l| l.into_owned());
            if let Some(why) = checker.check(&p, kind, link.as_deref()) {
                bail!("unsafe entry {why}");
            }
            if p == MANIFEST_PATH.as_bytes() {
                manifest_bytes = Some(read_manifest(&mut entry)?);
            } else if p == FILES_PATH.as_bytes() {
                saw_lines = true;
                tally_lines(&mut entry, &mut tally)?;
            } else if let Some(folder) = volume_of(&p) {
                note_owner(&mut owners, folder, entry.header());
                let seen = seen_of(kind, &mut entry, &mut buf)?;
                let c = counted
                    .entry(String::from_utf8_lossy(folder).into_owned())
                    .or_default();
                c.bytes += seen.size;
                c.files += 1;
                feed(&mut tally.entries, &p, &seen);
                tally.entry_count += 1;
            }
        }
    }
    io::copy(&mut opened.tar, &mut io::sink()).map_err(damaged)?;
    let (sha256, size) = opened.file_digest();
    if let Some(want) = expected_sha256.filter(|w| *w != sha256) {
        bail!("checksum mismatch: the file's SHA-256 is {sha256}, the catalog recorded {want}");
    }
    let manifest = parse_manifest(manifest_bytes)?;
    if !saw_lines {
        bail!("no manifest-files.jsonl in the archive");
    }
    Ok((
        Verified {
            manifest,
            file: VerifiedFile {
                file: file.clone(),
                path: path.to_path_buf(),
                sha256: sha256.clone(),
            },
            sha256,
            size,
            owners,
            counted,
        },
        tally,
    ))
}

/// `manifest.json`, refused past [`MAX_MANIFEST`] bytes (its size is the header's word, so
/// the read is bounded too).
fn read_manifest(entry: &mut dyn Read) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    entry
        .take(MAX_MANIFEST + 1)
        .read_to_end(&mut bytes)
        .map_err(damaged)?;
    if bytes.len() as u64 > MAX_MANIFEST {
        bail!(
            "{MANIFEST_PATH} is larger than {} MiB: not an archive of this tool",
            MAX_MANIFEST >> 20
        );
    }
    Ok(bytes)
}

fn parse_manifest(bytes: Option<Vec<u8>>) -> Result<Manifest> {
    let manifest: Manifest = serde_json::from_slice(
        &bytes.context("no manifest.json: not a docker-nuwax-backup archive")?,
    )
    .context("manifest.json is not valid")?;
    if manifest.format_version > super::manifest::FORMAT_VERSION {
        bail!(
            "archive format {} is newer than this tool understands: upgrade docker-nuwax-backup",
            manifest.format_version
        );
    }
    Ok(manifest)
}

/// Feeds every line of `manifest-files.jsonl`, read as a stream, into the lines' digest.
fn tally_lines(r: &mut dyn Read, tally: &mut Tally) -> Result<()> {
    let mut reader = BufReader::with_capacity(256 << 10, r);
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(damaged)?;
        if read == 0 {
            return Ok(());
        }
        n += 1;
        if line.len() > MAX_LINE {
            bail!(
                "{FILES_PATH} line {n} is longer than {} KiB",
                MAX_LINE >> 10
            );
        }
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let (full, seen) = parse_line(&line, n)?;
        feed(&mut tally.lines, &full, &seen);
        tally.line_count += 1;
    }
}

/// A line's full archive path and what it says the entry holds.
fn parse_line(line: &[u8], n: usize) -> Result<(Vec<u8>, Seen)> {
    let l: FileLine = serde_json::from_slice(line)
        .with_context(|| format!("manifest-files.jsonl line {n} is not valid"))?;
    let rel = match &l.entry.path_hex {
        Some(h) => hex::decode(h)
            .ok()
            .with_context(|| format!("bad path_hex on line {n}"))?,
        None => l.entry.path.into_bytes(),
    };
    let mut full = l.volume.into_bytes();
    if !rel.is_empty() {
        full.push(b'/');
        full.extend_from_slice(&rel);
    }
    let mut xattrs = Xattrs::new();
    for (name, value) in l.entry.xattrs.unwrap_or_default() {
        let value = hex::decode(value)
            .ok()
            .with_context(|| format!("bad xattrs value of {name} on line {n}"))?;
        xattrs.push((name, value));
    }
    let seen = Seen {
        kind: l.entry.kind,
        size: l.entry.size,
        blake3: l.entry.blake3,
        xattrs,
    };
    Ok((full, seen))
}

/// What an entry holds, for comparison with its manifest line (files hashed with BLAKE3).
fn seen_of<R: Read>(
    kind: tar::EntryType,
    entry: &mut tar::Entry<'_, R>,
    buf: &mut [u8],
) -> Result<Seen> {
    let xattrs = xattrs::of_entry(entry).map_err(damaged)?;
    let plain = |kind| Seen {
        kind,
        size: 0,
        blake3: None,
        xattrs: xattrs.clone(),
    };
    Ok(match kind {
        tar::EntryType::Directory => plain(EntryKind::Dir),
        tar::EntryType::Symlink => plain(EntryKind::Symlink),
        tar::EntryType::Link => plain(EntryKind::Hardlink),
        _ => {
            let mut h = blake3::Hasher::new();
            let n = copy_into_hasher(entry, &mut h, buf).map_err(damaged)?;
            Seen {
                kind: EntryKind::File,
                size: n,
                blake3: Some(h.finalize().to_hex().to_string()),
                xattrs,
            }
        }
    })
}

/// The slow, exact comparison (a table of every entry): names the first path that differs.
fn second_pass(file: &Arc<File>, path: &Path, keys: Option<&Keyring>) -> Result<()> {
    let mut opened = open_file(At::new(file.clone()), path, keys)?;
    let mut seen: HashMap<Vec<u8>, Seen> = HashMap::new();
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 128 << 10];
    let mut archive = tar::Archive::new(&mut opened.tar);
    for entry in archive.entries().context("reading the archive")? {
        let mut entry = entry.map_err(damaged)?;
        crate::cancel::check()?;
        let p = entry.path_bytes().into_owned();
        if p == FILES_PATH.as_bytes() {
            (&mut entry)
                .take(MAX_TABLE_LINES + 1)
                .read_to_end(&mut lines)
                .map_err(damaged)?;
            if lines.len() as u64 > MAX_TABLE_LINES {
                bail!("the archive's entries do not match {FILES_PATH} (too large to name the first difference)");
            }
        } else if volume_of(&p).is_some() {
            let kind = entry.header().entry_type();
            seen.insert(p, seen_of(kind, &mut entry, &mut buf)?);
        }
    }
    check_lines(&lines, &seen)
}

/// Every line of the files list must match an entry read, and every volume entry read must
/// have its line.
fn check_lines(bytes: &[u8], seen: &HashMap<Vec<u8>, Seen>) -> Result<()> {
    let mut listed = 0usize;
    for (i, line) in bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let (full, want) = parse_line(line, i + 1)?;
        let shown = String::from_utf8_lossy(&full).into_owned();
        let got = seen
            .get(&full)
            .with_context(|| format!("{shown} is in the manifest but missing from the archive"))?;
        if got.kind != want.kind {
            bail!(
                "{shown}: the archive holds a {:?}, the manifest a {:?}",
                got.kind,
                want.kind
            );
        }
        if got.kind == EntryKind::File && (got.size != want.size || got.blake3 != want.blake3) {
            bail!("{shown}: content differs from the manifest (size or BLAKE3)");
        }
        if got.xattrs != want.xattrs {
            bail!("{shown}: extended attributes differ from the manifest");
        }
        listed += 1;
    }
    if seen.len() != listed {
        bail!(
            "the archive holds {} volume entries but the manifest lists {listed}",
            seen.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_of(version: u32) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "format_version": version, "tool": "t", "tool_version": "0", "created_at": "x",
            "project": "p", "project_dir": "/p", "backup_type": "manual", "service_version": "1",
            "compression": "gzip", "compose_sha256": "", "compose_files": [], "skipped": [],
            "services": [], "volumes": []
        }))
        .unwrap()
    }

    #[test]
    fn formats_up_to_this_one_are_read_and_a_newer_one_asks_for_an_upgrade() {
        for v in 1..=super::super::manifest::FORMAT_VERSION {
            assert_eq!(
                parse_manifest(Some(manifest_of(v))).unwrap().format_version,
                v
            );
        }
        let newer = super::super::manifest::FORMAT_VERSION + 1;
        let e = parse_manifest(Some(manifest_of(newer))).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("archive format {newer} is newer than this tool understands: upgrade docker-nuwax-backup")
        );
    }
}
