//! Writes tar entries into a compressed, hashed archive file. Gzip is written as independent
//! members of 1 MiB input each (compressed in parallel, read by any gzip, decompressible in
//! parallel by us); zstd uses libzstd's own worker threads.
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};
use gzp::deflate::Mgzip;
use gzp::par::compress::{ParCompress, ParCompressBuilder};
use gzp::ZWriter;

use super::hashing::HashingWriter;
use super::sparse::DataMap;
use super::xattrs::Xattrs;
use crate::crypto::Recipients;

/// Input bytes per gzip member: large enough that the lost 32 KiB of history costs well
/// under 1% of size, small enough to keep both cores busy and memory flat.
const GZIP_BLOCK: usize = 1 << 20;
/// Input bytes per zstd worker job: bounds memory (jobs in flight × this). Measured on the
/// shared data set: 8 MiB (libzstd's default at level 3) peaks at 115 MiB RSS, 4 MiB at 62 MiB,
/// 3 MiB at 49 MiB with the same speed.
const ZSTD_JOB: u32 = 3 << 20;
/// Buffer between tar and the compressor; file data is read into it in reads this large.
const COPY_BUFFER: usize = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Gzip { level: u32 },
    Zstd { level: i32 },
}

impl Codec {
    pub fn extension(self) -> &'static str {
        match self {
            Codec::Gzip { .. } => "tar.gz",
            Codec::Zstd { .. } => "tar.zst",
        }
    }

    /// Fails when the level is outside what the codec takes (gzip 1-9, zstd 1-19).
    pub fn validate(self) -> Result<()> {
        match self {
            Codec::Gzip { level } if !(1..=9).contains(&level) => {
                anyhow::bail!("--compression-level {level} is not a gzip level: use 1-9")
            }
            Codec::Zstd { level } if !(1..=19).contains(&level) => {
                anyhow::bail!("--compression-level {level} is not a zstd level: use 1-19")
            }
            _ => Ok(()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip { .. } => "gzip",
            Codec::Zstd { .. } => "zstd",
        }
    }
}

/// `None` once finished. gzp's writer panics when dropped or finished after a failed write,
/// so an abandoned one (an error or a cancel mid-archive) is forgotten in `Drop`: its idle
/// threads are left to the end of the process, which is near on that path.
enum Compressor {
    Gzip(Option<ParCompress<'static, Mgzip, Sealed>>),
    Zstd(Option<zstd::Encoder<'static, Sealed>>),
}

/// Where the finished bytes of an archive go: a file (fsynced at the end), or a streaming
/// upload (completed at the end).
pub trait Output: Write + Send + 'static {
    /// Makes what was written durable; the archive is not complete before this returns.
    fn seal(self: Box<Self>) -> Result<()>;
}

impl Output for File {
    fn seal(self: Box<Self>) -> Result<()> {
        self.sync_all().context("syncing the archive to disk")
    }
}

/// Where the compressed stream goes: the hashed output, through age when encrypting (so no
/// plaintext archive ever leaves the process; the hash is of the bytes written).
enum Sealed {
    Plain(HashingWriter<Box<dyn Output>>),
    Age(age::stream::StreamWriter<HashingWriter<Box<dyn Output>>>),
}

impl Write for Sealed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealed::Plain(w) => w.write(buf),
            Sealed::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealed::Plain(w) => w.flush(),
            Sealed::Age(w) => w.flush(),
        }
    }
}

impl Sealed {
    fn new(output: Box<dyn Output>, recipients: &Recipients) -> Result<Sealed> {
        let out = HashingWriter::new(output);
        if recipients.is_empty() {
            return Ok(Sealed::Plain(out));
        }
        let w = recipients
            .encryptor()?
            .wrap_output(out)
            .context("starting the encrypted stream")?;
        Ok(Sealed::Age(w))
    }

    fn finish(self) -> Result<HashingWriter<Box<dyn Output>>> {
        match self {
            Sealed::Plain(w) => Ok(w),
            Sealed::Age(w) => w.finish().context("finishing the encrypted stream"),
        }
    }
}

fn finished() -> io::Error {
    io::Error::other("the archive stream is already finished")
}

impl Write for Compressor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(w) => w.as_mut().ok_or_else(finished)?.write(buf),
            Compressor::Zstd(w) => w.as_mut().ok_or_else(finished)?.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(w) => w.as_mut().ok_or_else(finished)?.flush(),
            Compressor::Zstd(w) => w.as_mut().ok_or_else(finished)?.flush(),
        }
    }
}

impl Compressor {
    fn finish(mut self) -> Result<Sealed> {
        match &mut self {
            Compressor::Gzip(w) => {
                let mut w = w.take().ok_or_else(finished)?;
                let result = w.finish();
                if result.is_err() {
                    std::mem::forget(w);
                }
                // An I/O error stays one (a full disk is exit 10, as anywhere else).
                result.map_err(|e| match e {
                    gzp::GzpError::Io(io) => {
                        anyhow::Error::new(io).context("finishing the gzip stream")
                    }
                    other => anyhow::anyhow!("finishing the gzip stream: {other}"),
                })
            }
            Compressor::Zstd(w) => w
                .take()
                .ok_or_else(finished)?
                .finish()
                .context("finishing the zstd stream"),
        }
    }
}

impl Drop for Compressor {
    fn drop(&mut self) {
        if let Compressor::Gzip(slot) = self {
            if let Some(w) = slot.take() {
                std::mem::forget(w);
            }
        }
    }
}

/// Numeric attributes of one entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

pub struct ArchiveWriter {
    /// The BufWriter lets `io::copy` read file data straight into its buffer in large reads.
    builder: tar::Builder<io::BufWriter<Compressor>>,
}

/// What a finished archive is: its size and the SHA-256 of its bytes.
pub struct Finished {
    pub size: u64,
    pub sha256: String,
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

impl ArchiveWriter {
    /// Starts an archive in `output` (a new empty file, or an upload), encrypted to
    /// `recipients` when there are any. Fails on a bad level.
    pub fn new(output: Box<dyn Output>, codec: Codec, recipients: &Recipients) -> Result<Self> {
        codec.validate()?;
        let out = Sealed::new(output, recipients)?;
        let compressor = match codec {
            Codec::Gzip { level } => {
                let par: ParCompressBuilder<Mgzip> = ParCompressBuilder::new();
                let par = par
                    .num_threads(threads())
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .buffer_size(GZIP_BLOCK)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .compression_level(gzp::Compression::new(level));
                Compressor::Gzip(Some(par.from_writer(out)))
            }
            Codec::Zstd { level } => {
                let mut enc = zstd::Encoder::new(out, level)?;
                enc.multithread(threads() as u32)?;
                enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB))?;
                // Each job starts from the full window of the data before it: smaller jobs then
                // cost no ratio (measured: smaller archives than `zstd -3 -T2`).
                enc.set_parameter(zstd::stream::raw::CParameter::OverlapSizeLog(9))?;
                enc.include_checksum(true)?;
                Compressor::Zstd(Some(enc))
            }
        };
        let mut builder = tar::Builder::new(io::BufWriter::with_capacity(COPY_BUFFER, compressor));
        builder.mode(tar::HeaderMode::Complete);
        builder.follow_symlinks(false);
        Ok(ArchiveWriter { builder })
    }

    pub fn append_dir(&mut self, path: &[u8], attrs: &Attrs, xattrs: &Xattrs) -> Result<()> {
        self.extended(path, xattrs)?;
        let mut h = header(tar::EntryType::Directory, attrs, 0);
        self.builder
            .append_data(&mut h, as_path(path), io::empty())
            .with_context(|| describe(path))
    }

    /// Appends a regular file of `size` bytes read from `data` (which must yield exactly that).
    /// With a `map`, the file has holes: `data` yields only the map's data ranges, stored
    /// under a GNU sparse header.
    pub fn append_file<R: Read>(
        &mut self,
        path: &[u8],
        (attrs, xattrs): (&Attrs, &Xattrs),
        size: u64,
        map: Option<&DataMap>,
        data: R,
    ) -> Result<()> {
        self.extended(path, xattrs)?;
        let mut h = header(tar::EntryType::Regular, attrs, size);
        let ext = match map {
            Some(m) => {
                let (sparse, ext) = m.gnu_header(&h);
                h = sparse;
                ext
            }
            None => Vec::new(),
        };
        self.builder
            .append_data(&mut h, as_path(path), io::Cursor::new(ext).chain(data))
            .with_context(|| describe(path))
    }

    pub fn append_symlink(
        &mut self,
        path: &[u8],
        (attrs, xattrs): (&Attrs, &Xattrs),
        target: &[u8],
    ) -> Result<()> {
        self.extended(path, xattrs)?;
        let mut h = header(tar::EntryType::Symlink, attrs, 0);
        self.builder
            .append_link(&mut h, as_path(path), as_path(target))
            .with_context(|| describe(path))
    }

    /// A hard link to `target`, an archive path appended before.
    pub fn append_hardlink(&mut self, path: &[u8], attrs: &Attrs, target: &[u8]) -> Result<()> {
        let mut h = header(tar::EntryType::Link, attrs, 0);
        self.builder
            .append_link(&mut h, as_path(path), as_path(target))
            .with_context(|| describe(path))
    }

    /// The PAX header carrying an entry's extended attributes, when it has any.
    fn extended(&mut self, path: &[u8], xattrs: &Xattrs) -> Result<()> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let block = super::xattrs::pax_block(&super::xattrs::pax_records(xattrs));
        self.builder
            .get_mut()
            .write_all(&block)
            .with_context(|| describe(path))
    }

    /// A small file made by us (the manifest, copies of compose files).
    pub fn append_bytes(&mut self, path: &str, data: &[u8], mtime: u64) -> Result<()> {
        let attrs = Attrs {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime,
        };
        let none = Xattrs::new();
        self.append_file(
            path.as_bytes(),
            (&attrs, &none),
            data.len() as u64,
            None,
            data,
        )
    }

    /// Writes the tar end, flushes the compressor, seals the output (fsync, or completion).
    pub fn finish(self) -> Result<Finished> {
        let buffered = self
            .builder
            .into_inner()
            .context("writing the end of the archive")?;
        let compressor = buffered
            .into_inner()
            .map_err(|e| e.into_error())
            .context("writing the end of the archive")?;
        let (output, size, sha256) = compressor.finish()?.finish()?.finish();
        output.seal()?;
        Ok(Finished { size, sha256 })
    }
}

/// A GNU header with numeric owner, mode, mtime and size (names are set by tar's append).
pub fn header(kind: tar::EntryType, attrs: &Attrs, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(attrs.mode & 0o7777);
    h.set_uid(attrs.uid);
    h.set_gid(attrs.gid);
    h.set_mtime(attrs.mtime);
    h.set_size(size);
    h
}

fn as_path(bytes: &[u8]) -> &Path {
    Path::new(std::ffi::OsStr::from_bytes(bytes))
}

fn describe(path: &[u8]) -> String {
    format!("writing {} into the archive", String::from_utf8_lossy(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(codec: Codec) -> Vec<(String, tar::EntryType, u64, u32)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        let none = Recipients::default();
        let mut w =
            ArchiveWriter::new(Box::new(File::create(&path).unwrap()), codec, &none).unwrap();
        let attrs = Attrs {
            mode: 0o700,
            uid: 999,
            gid: 998,
            mtime: 1_700_000_000,
        };
        let x = Xattrs::new();
        w.append_dir(b"v", &attrs, &x).unwrap();
        let big = vec![7u8; 3 * GZIP_BLOCK + 5];
        w.append_file(b"v/big", (&attrs, &x), big.len() as u64, None, &big[..])
            .unwrap();
        let long = format!("v/{}", "n".repeat(150));
        w.append_file(long.as_bytes(), (&attrs, &x), 1, None, &b"x"[..])
            .unwrap();
        w.append_symlink(b"v/s", (&attrs, &x), b"big").unwrap();
        w.append_hardlink(b"v/h", &attrs, b"v/big").unwrap();
        w.append_file(b"v/\xff\xfe", (&attrs, &x), 0, None, io::empty())
            .unwrap();
        let fin = w.finish().unwrap();
        assert_eq!(fin.size, std::fs::metadata(&path).unwrap().len());
        let file = File::open(&path).unwrap();
        let reader: Box<dyn Read> = match codec {
            Codec::Gzip { .. } => Box::new(flate2::read::MultiGzDecoder::new(file)),
            Codec::Zstd { .. } => Box::new(zstd::Decoder::new(file).unwrap()),
        };
        let mut ar = tar::Archive::new(reader);
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                    h.entry_type(),
                    h.uid().unwrap(),
                    h.mode().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn gzip_archives_keep_names_links_owners_and_modes() {
        let got = roundtrip(Codec::Gzip { level: 6 });
        assert_eq!(got.len(), 6);
        assert_eq!(got[0], ("v".into(), tar::EntryType::Directory, 999, 0o700));
        assert_eq!(got[2].0.len(), 152, "long names survive");
        assert_eq!(got[3].1, tar::EntryType::Symlink);
        assert_eq!(got[4].1, tar::EntryType::Link);
        assert_eq!(got[5].0, "v/\u{fffd}\u{fffd}");
    }

    #[test]
    fn zstd_archives_read_back_the_same() {
        assert_eq!(
            roundtrip(Codec::Zstd { level: 3 }),
            roundtrip(Codec::Gzip { level: 1 })
        );
    }

    #[test]
    fn bad_levels_are_refused() {
        let f = tempfile::tempfile().unwrap();
        assert!(ArchiveWriter::new(
            Box::new(f),
            Codec::Gzip { level: 0 },
            &Recipients::default()
        )
        .is_err());
    }
}
