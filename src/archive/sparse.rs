//! Files with holes: where their data lies (`SEEK_DATA`/`SEEK_HOLE`: the holes are never
//! read), the GNU sparse header that stores only that data (old GNU format, which GNU tar
//! and the `tar` crate both read back with the holes), and writing a sparse entry back with
//! holes where its blocks are zeros.
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use rustix::fs::SeekFrom;

/// Where a file's data is: `(offset, length)` in order, the rest holes; `size` is the
/// file's length. Data ranges start and end on 512-byte boundaries (but the last may end at
/// `size`), as the GNU format needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataMap {
    pub size: u64,
    pub data: Vec<(u64, u64)>,
}

const BLOCK: u64 = 512;

impl DataMap {
    /// Bytes of data (what the archive stores).
    pub fn stored(&self) -> u64 {
        self.data.iter().map(|(_, n)| n).sum()
    }

    /// The zeros to insert in the logical content: `(after this many data bytes, zeros)`,
    /// the holes before each data range and the one at the end.
    pub fn gaps(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let (mut end, mut stored) = (0u64, 0u64);
        for &(off, len) in &self.data {
            if off > end {
                out.push((stored, off - end));
            }
            end = off + len;
            stored += len;
        }
        if self.size > end {
            out.push((stored, self.size - end));
        }
        out
    }

    /// The GNU sparse header of a file of this map (`base` has the name, owner, mode and
    /// time), and the extension blocks that must follow it when more than four ranges are
    /// listed. A map ending in a hole lists a last range of no bytes at the end, as GNU tar
    /// writes it (readers check the ranges reach the size).
    pub fn gnu_header(&self, base: &tar::Header) -> (tar::Header, Vec<u8>) {
        let mut ranges = self.data.clone();
        if ranges.last().is_none_or(|(o, n)| o + n < self.size) {
            ranges.push((self.size, 0));
        }
        let mut h = base.clone();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(self.stored());
        let gnu = h.as_gnu_mut().expect("a GNU header");
        gnu.set_real_size(self.size);
        let (first, rest) = ranges.split_at(ranges.len().min(4));
        for (slot, &(o, n)) in gnu.sparse.iter_mut().zip(first) {
            slot.set_offset(o);
            slot.set_length(n);
        }
        gnu.set_is_extended(!rest.is_empty());
        let mut ext = Vec::new();
        let chunks: Vec<_> = rest.chunks(21).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut e = tar::GnuExtSparseHeader::new();
            for (slot, &(o, n)) in e.sparse_mut().iter_mut().zip(chunk.iter()) {
                slot.set_offset(o);
                slot.set_length(n);
            }
            e.set_is_extended(i + 1 < chunks.len());
            ext.extend_from_slice(e.as_bytes());
        }
        (h, ext)
    }
}

/// The PAX keyword under which a pack (this tool's private capture file, never an archive)
/// keeps a sparse file's map, beside a plain entry holding the data ranges.
pub const PACK_KEY: &str = "NUWAX.sparse";

impl DataMap {
    /// `size;offset+length,…` (the pack record's value).
    pub fn to_record(&self) -> String {
        let ranges: Vec<String> = self.data.iter().map(|(o, n)| format!("{o}+{n}")).collect();
        format!("{};{}", self.size, ranges.join(","))
    }

    /// The map of a pack record; `None` when it is not one (ranges out of order or past the size).
    pub fn from_record(value: &[u8]) -> Option<DataMap> {
        let text = std::str::from_utf8(value).ok()?;
        let (size, ranges) = text.split_once(';')?;
        let size: u64 = size.parse().ok()?;
        let mut data = Vec::new();
        let mut end = 0u64;
        for r in ranges.split(',').filter(|r| !r.is_empty()) {
            let (o, n) = r.split_once('+')?;
            let (o, n): (u64, u64) = (o.parse().ok()?, n.parse().ok()?);
            if o < end || o.checked_add(n)? > size {
                return None;
            }
            end = o + n;
            data.push((o, n));
        }
        Some(DataMap { size, data })
    }
}

/// Where `file` (of `size` bytes) holds data, when it has holes (`None`: it has none, or
/// the filesystem cannot say). Asked only of files with fewer blocks than bytes.
pub fn map_of(file: &File, size: u64) -> io::Result<Option<DataMap>> {
    let mut data: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))?.min(size);
        if start >= end {
            break;
        }
        let (start, end) = (start / BLOCK * BLOCK, end.div_ceil(BLOCK) * BLOCK);
        match data.last_mut() {
            Some((o, n)) if *o + *n >= start => *n = end.min(size) - *o,
            _ => data.push((start, end.min(size) - start)),
        }
        pos = end;
    }
    rustix::fs::seek(file, SeekFrom::Start(0))?;
    let map = DataMap { size, data };
    Ok((map.stored() < size).then_some(map))
}

/// The unit of holes written back: a block of this many zero bytes is skipped.
const HOLE_UNIT: usize = 4096;

/// Writes `data` (a sparse entry's whole content) into the new, empty `f`, leaving a hole
/// wherever a 4 KiB block is all zeros, and sets the length at the end. Returns the bytes of
/// content.
pub fn write_with_holes(data: &mut dyn Read, f: &File) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let filled = super::reader::read_full(data, &mut buf)?;
        if filled == 0 {
            break;
        }
        let mut run: Option<usize> = None;
        for start in (0..filled).step_by(HOLE_UNIT) {
            let block = &buf[start..(start + HOLE_UNIT).min(filled)];
            let zero = block.iter().all(|b| *b == 0);
            match (zero, run) {
                (false, None) => run = Some(start),
                (true, Some(from)) => {
                    f.write_all_at(&buf[from..start], pos + from as u64)?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(from) = run {
            f.write_all_at(&buf[from..filled], pos + from as u64)?;
        }
        pos += filled as u64;
    }
    f.set_len(pos)?;
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn sparse_file(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
        let p = dir.join("sparse");
        let f = File::create(&p).unwrap();
        let size = 64u64 << 20;
        f.set_len(size).unwrap();
        let mut logical = vec![0u8; size as usize];
        for (i, at) in [
            0u64,
            8 << 20,
            9 << 20,
            20 << 20,
            30 << 20,
            40 << 20,
            50 << 20,
        ]
        .iter()
        .enumerate()
        {
            let block = vec![i as u8 + 1; 5000];
            f.write_all_at(&block, *at).unwrap();
            logical[*at as usize..*at as usize + 5000].copy_from_slice(&block);
        }
        (p, logical)
    }

    #[test]
    fn a_sparse_file_round_trips_through_gnu_headers_with_its_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (p, logical) = sparse_file(dir.path());
        let f = File::open(&p).unwrap();
        let map = map_of(&f, logical.len() as u64).unwrap().expect("holes");
        assert!(map.data.len() >= 7, "{map:?}");
        assert!(map.stored() < 1 << 20);
        let mut base = tar::Header::new_gnu();
        base.set_mode(0o600);
        base.set_path("s").unwrap();
        let (mut h, ext) = map.gnu_header(&base);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend(ext);
        let mut data = Vec::new();
        for &(o, n) in &map.data {
            let mut part = vec![0u8; n as usize];
            f.read_exact_at(&mut part, o).unwrap();
            data.extend(part);
        }
        assert_eq!(data.len() as u64, map.stored());
        bytes.extend(&data);
        bytes.resize(bytes.len().div_ceil(512) * 512 + 1024, 0);
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut e = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.header().entry_type(), tar::EntryType::GNUSparse);
        let out = File::create(dir.path().join("back")).unwrap();
        assert_eq!(
            write_with_holes(&mut e, &out).unwrap(),
            logical.len() as u64
        );
        assert_eq!(std::fs::read(dir.path().join("back")).unwrap(), logical);
        let blocks = out.metadata().unwrap().blocks();
        assert!(blocks <= f.metadata().unwrap().blocks() + 16, "{blocks}");
    }

    #[test]
    fn gaps_put_the_holes_back_between_the_data() {
        let m = DataMap {
            size: 10_000,
            data: vec![(1024, 512), (4096, 1000)],
        };
        assert_eq!(m.gaps(), vec![(0, 1024), (512, 2560), (1512, 4904)]);
        assert_eq!(m.stored(), 1512);
    }
}
