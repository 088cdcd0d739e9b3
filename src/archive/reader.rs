//! Reads archives back: opens either codec, checks every entry is safe to extract, and
//! verifies the whole file against its manifest (and the catalog's SHA-256) in one pass.
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};

use super::hashing::Sha256;
use crate::crypto::{self, Keyring};
use crate::exit_codes::{Code, UserError};

/// Hashes the compressed bytes as they are read (shared, so the hash survives the decoder).
struct Sha256Reader<R> {
    inner: R,
    state: Arc<Mutex<(Sha256, u64)>>,
}

impl<R: Read> Read for Sha256Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Every codec reads through here: a cancel is heard within one read, whatever the
        // decoder above is doing.
        if crate::cancel::requested() {
            return Err(crate::cancel::as_io_error());
        }
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
        (s.0.clone().hex(), s.1)
    }
}

/// The archive file a verify read, kept open: extraction reads these same bytes again from
/// the descriptor (a file swapped in by name afterwards is never read) and checks them
/// against `sha256` once more as it goes.
#[derive(Debug, Clone)]
pub struct VerifiedFile {
    pub file: Arc<File>,
    pub path: std::path::PathBuf,
    pub sha256: String,
}

impl VerifiedFile {
    /// Opens the verified bytes from their start.
    pub fn open(&self, keys: Option<&Keyring>) -> Result<Opened> {
        open_file(At::new(self.file.clone()), &self.path, keys)
    }
}

/// Reads a shared open file from its own offset (`pread`), so that each pass starts at 0
/// whatever another pass did with the descriptor.
pub struct At {
    file: Arc<File>,
    pos: u64,
}

impl At {
    pub fn new(file: Arc<File>) -> At {
        At { file, pos: 0 }
    }
}

impl Read for At {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Opens a `.tar.gz` or `.tar.zst` by its magic bytes, decrypting it first when it is an age
/// file (which needs `keys`: exit 15 without them, or when they do not open it). Our gzip
/// archives (independent members marked with gzp's `IG` extra field) are decompressed on all
/// cores with CRC checks; any other gzip is read as a plain multi-member stream.
pub fn open_file(file: At, path: &Path, keys: Option<&Keyring>) -> Result<Opened> {
    let digest = Arc::new(Mutex::new((Sha256::new(), 0u64)));
    let mut raw = BufReader::with_capacity(
        1 << 20,
        Sha256Reader {
            inner: file,
            state: digest.clone(),
        },
    );
    let encrypted = crypto::is_encrypted(raw.fill_buf()?);
    let plain: Box<dyn BufRead + Send> = match (encrypted, keys) {
        (false, _) => Box::new(raw),
        (true, Some(keys)) => Box::new(BufReader::with_capacity(1 << 20, keys.decrypt(raw)?)),
        (true, None) => {
            return Err(UserError::new(
                Code::Identity,
                format!(
                    "{} is encrypted: pass --identity FILE (or set NUWAX_BACKUP_IDENTITY) with a key it is encrypted to",
                    path.display()
                ),
            )
            .into())
        }
    };
    Ok(Opened {
        tar: Box::new(BufReader::with_capacity(
            256 << 10,
            decompress(plain, path)?,
        )),
        digest,
    })
}

fn decompress(mut r: Box<dyn BufRead + Send>, path: &Path) -> Result<Box<dyn Read>> {
    let magic = r.fill_buf()?;
    let n = magic.len();
    let is_gzip = n >= 2 && magic[..2] == [0x1f, 0x8b];
    let is_zstd = n >= 4 && magic[..4] == [0x28, 0xb5, 0x2f, 0xfd];
    Ok(if super::gunzip::is_ours(magic) {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Box::new(super::gunzip::ParGunzip::new(Box::new(r), threads))
    } else if is_gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(r))
    } else if is_zstd {
        Box::new(zstd::Decoder::with_buffer(r)?)
    } else {
        bail!("{} is not a gzip or zstd archive", path.display())
    })
}

/// Hashes a reader in pieces of `buf` (128 KiB: BLAKE3's SIMD paths need many 1 KiB chunks
/// per call; one buffer reused for every file, not one allocation each).
pub(super) fn copy_into_hasher(
    r: &mut dyn Read,
    h: &mut blake3::Hasher,
    buf: &mut [u8],
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let filled = read_full(r, buf)?;
        if filled == 0 {
            return Ok(total);
        }
        h.update(&buf[..filled]);
        total += filled as u64;
    }
}

/// Reads until `buf` is full or the input ends; how many bytes came.
pub(super) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

pub use super::safety::volume_of;
pub use super::verify::{verify, Counted, Verified};

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
