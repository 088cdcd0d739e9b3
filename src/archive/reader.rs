//! Reads archives back: opens either codec, checks every entry is safe to extract, and
//! verifies the whole file against its manifest (and the catalog's SHA-256) in one pass.
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::manifest::{EntryKind, FileLine, Manifest, FILES_PATH, MANIFEST_PATH};
use super::safety::PathChecker;

/// Hashes the compressed bytes as they are read (shared, so the hash survives the decoder).
struct Sha256Reader<R> {
    inner: R,
    state: Arc<Mutex<(Sha256, u64)>>,
}

impl<R: Read> Read for Sha256Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.state.lock().expect("hash state");
        s.0.update(&buf[..n]);
        s.1 += n as u64;
        Ok(n)
    }
}

/// The decompressed tar stream of an archive, and the running SHA-256 of its file.
pub struct Opened {
    pub tar: Box<dyn Read>,
    digest: Arc<Mutex<(Sha256, u64)>>,
}

impl Opened {
    /// SHA-256 and size of the bytes read so far (all of them, once the tar is read to its end).
    pub fn file_digest(&self) -> (String, u64) {
        let s = self.digest.lock().expect("hash state");
        (hex::encode(s.0.clone().finalize()), s.1)
    }
}

/// Opens a `.tar.gz` or `.tar.zst` by its magic bytes. Our gzip archives (independent members
/// marked with gzp's `IG` extra field) are decompressed on all cores with CRC checks; any
/// other gzip is read as a plain multi-member stream.
pub fn open(path: &Path) -> Result<Opened> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 16];
    let mut n = 0;
    while n < magic.len() {
        match file.read(&mut magic[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let digest = Arc::new(Mutex::new((Sha256::new(), 0u64)));
    let head = io::Cursor::new(magic[..n].to_vec());
    let raw = Sha256Reader {
        inner: head.chain(file),
        state: digest.clone(),
    };
    let is_gzip = n >= 2 && magic[..2] == [0x1f, 0x8b];
    let is_mgzip = is_gzip && n >= 14 && magic[3] & 4 == 4 && &magic[12..14] == b"IG";
    let tar: Box<dyn Read> = if is_mgzip {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Box::new(
            gzp::par::decompress::ParDecompressBuilder::<gzp::deflate::Mgzip>::new()
                .num_threads(threads)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .from_reader(raw),
        )
    } else if is_gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(
            BufReader::with_capacity(1 << 20, raw),
        ))
    } else if n >= 4 && magic[..4] == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::Decoder::with_buffer(BufReader::with_capacity(
            1 << 20,
            raw,
        ))?)
    } else {
        bail!("{} is not a gzip or zstd archive", path.display())
    };
    Ok(Opened {
        tar: Box::new(BufReader::with_capacity(256 << 10, tar)),
        digest,
    })
}

/// What a verified archive holds.
pub struct Verified {
    pub manifest: Manifest,
    pub sha256: String,
    pub size: u64,
}

pub use super::safety::volume_of;

struct Seen {
    kind: EntryKind,
    size: u64,
    blake3: Option<String>,
}

/// Reads the whole archive once: every entry must be safe, every file must match the
/// manifest's size and BLAKE3, the manifest must be there and valid, and (when given) the
/// file's SHA-256 must equal `expected_sha256`. Fails with what is wrong.
pub fn verify(path: &Path, expected_sha256: Option<&str>) -> Result<Verified> {
    let mut opened = open(path)?;
    let mut seen: HashMap<Vec<u8>, Seen> = HashMap::new();
    let mut checker = PathChecker::default();
    let mut manifest_bytes = None;
    let mut lines_bytes = None;
    {
        let mut archive = tar::Archive::new(&mut opened.tar);
        for entry in archive.entries().context("reading the archive")? {
            let mut entry = entry.context("the archive is damaged or cut short")?;
            crate::cancel::check()?;
            let p = entry.path_bytes().into_owned();
            let kind = entry.header().entry_type();
            let link = entry.link_name_bytes().map(|l| l.into_owned());
            if let Some(why) = checker.check(&p, kind, link.as_deref()) {
                bail!("unsafe entry {why}");
            }
            if p == MANIFEST_PATH.as_bytes() || p == FILES_PATH.as_bytes() {
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .context("the archive is damaged or cut short")?;
                if p == MANIFEST_PATH.as_bytes() {
                    manifest_bytes = Some(buf)
                } else {
                    lines_bytes = Some(buf)
                }
                continue;
            }
            let record = seen_of(kind, &mut entry)?;
            seen.insert(p, record);
        }
    }
    io::copy(&mut opened.tar, &mut io::sink()).context("the archive is damaged or cut short")?;
    let (sha256, size) = opened.file_digest();
    if let Some(want) = expected_sha256 {
        if want != sha256 {
            bail!("checksum mismatch: the file's SHA-256 is {sha256}, the catalog recorded {want}");
        }
    }
    let manifest: Manifest = serde_json::from_slice(
        &manifest_bytes.context("no manifest.json: not a docker-nuwax-backup archive")?,
    )
    .context("manifest.json is not valid")?;
    if manifest.format_version > super::manifest::FORMAT_VERSION {
        bail!(
            "archive format {} is newer than this tool understands: upgrade docker-nuwax-backup",
            manifest.format_version
        );
    }
    check_lines(
        &lines_bytes.context("no manifest-files.jsonl in the archive")?,
        &seen,
    )?;
    Ok(Verified {
        manifest,
        sha256,
        size,
    })
}

/// What an entry holds, for comparison with its manifest line (files hashed with BLAKE3).
fn seen_of(kind: tar::EntryType, entry: &mut dyn Read) -> Result<Seen> {
    let plain = |kind| Seen {
        kind,
        size: 0,
        blake3: None,
    };
    Ok(match kind {
        tar::EntryType::Directory => plain(EntryKind::Dir),
        tar::EntryType::Symlink => plain(EntryKind::Symlink),
        tar::EntryType::Link => plain(EntryKind::Hardlink),
        _ => {
            let mut h = blake3::Hasher::new();
            let n =
                copy_into_hasher(entry, &mut h).context("the archive is damaged or cut short")?;
            Seen {
                kind: EntryKind::File,
                size: n,
                blake3: Some(h.finalize().to_hex().to_string()),
            }
        }
    })
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
        let l: FileLine = serde_json::from_slice(line)
            .with_context(|| format!("manifest-files.jsonl line {} is not valid", i + 1))?;
        let rel = match &l.entry.path_hex {
            Some(h) => hex::decode(h)
                .ok()
                .with_context(|| format!("bad path_hex on line {}", i + 1))?,
            None => l.entry.path.clone().into_bytes(),
        };
        let mut full = l.volume.clone().into_bytes();
        if !rel.is_empty() {
            full.push(b'/');
            full.extend_from_slice(&rel);
        }
        let shown = String::from_utf8_lossy(&full).into_owned();
        let got = seen
            .get(&full)
            .with_context(|| format!("{shown} is in the manifest but missing from the archive"))?;
        if got.kind != l.entry.kind {
            bail!(
                "{shown}: the archive holds a {:?}, the manifest a {:?}",
                got.kind,
                l.entry.kind
            );
        }
        if got.kind == EntryKind::File && (got.size != l.entry.size || got.blake3 != l.entry.blake3)
        {
            bail!("{shown}: content differs from the manifest (size or BLAKE3)");
        }
        listed += 1;
    }
    let in_volumes = seen.keys().filter(|k| volume_of(k).is_some()).count();
    if in_volumes != listed {
        bail!("the archive holds {in_volumes} volume entries but the manifest lists {listed}");
    }
    Ok(())
}

/// Hashes a reader in 128 KiB pieces: BLAKE3's SIMD paths need many 1 KiB chunks per call.
fn copy_into_hasher(r: &mut dyn Read, h: &mut blake3::Hasher) -> io::Result<u64> {
    let mut buf = vec![0u8; 128 << 10];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(total);
        }
        h.update(&buf[..filled]);
        total += filled as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_found_from_paths() {
        assert_eq!(volume_of(b"volumes/db/a/b"), Some(&b"volumes/db"[..]));
        assert_eq!(volume_of(b"binds/conf"), Some(&b"binds/conf"[..]));
        assert_eq!(volume_of(b"compose/compose.yaml"), None);
        assert_eq!(volume_of(b"manifest.json"), None);
    }
}
