//! Re-files the tar stream of `docker cp CTR:/path/. -` into a [`Collector`].
use std::io::Read;

use anyhow::{Context, Result};

use super::collector::Collector;
use super::writer::Attrs;

/// `./a/b` → `a/b`; `./` and `.` → `` (the root).
fn relative(p: &[u8]) -> Vec<u8> {
    let mut p = p;
    while let Some(rest) = p.strip_prefix(b"./") {
        p = rest;
    }
    if p == b"." {
        p = b"";
    }
    p.strip_suffix(b"/").unwrap_or(p).to_vec()
}

/// Reads every entry of `stream`; devices and fifos are skipped through `warn`.
pub fn collect<R: Read>(
    stream: R,
    c: &mut Collector<'_>,
    warn: &mut dyn FnMut(String),
) -> Result<()> {
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, stream));
    for entry in archive
        .entries()
        .context("reading the tar stream from docker cp")?
    {
        let entry = entry.context("reading the tar stream from docker cp")?;
        crate::cancel::check()?;
        let h = entry.header();
        let rel = relative(&entry.path_bytes());
        let a = Attrs {
            mode: h.mode().unwrap_or(0o644),
            uid: h.uid().unwrap_or(0),
            gid: h.gid().unwrap_or(0),
            mtime: h.mtime().unwrap_or(0),
        };
        match h.entry_type() {
            tar::EntryType::Directory => c.dir(&rel, &a)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                c.file(&rel, &a, size, entry)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                c.symlink(&rel, &a, &target)?;
            }
            tar::EntryType::Link => {
                let target = relative(&entry.link_name_bytes().unwrap_or_default());
                c.hardlink(&rel, &a, &target)?;
            }
            other => warn(format!(
                "skipped {} ({other:?} entries cannot be backed up)",
                String::from_utf8_lossy(&rel)
            )),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::relative;

    #[test]
    fn docker_cp_prefixes_are_removed() {
        assert_eq!(relative(b"./"), b"");
        assert_eq!(relative(b"."), b"");
        assert_eq!(relative(b"./sub/"), b"sub");
        assert_eq!(relative(b"./sub/f"), b"sub/f");
    }
}
