//! Where a volume's entries are written: a host folder, or a helper container of the engine.
//! Every entry passes the archive's path checker at the moment of writing, on top of the
//! verify pass before (defence in depth: a verified archive could be swapped underneath).
use std::io::Read;

use anyhow::{bail, Result};

use super::engine::Filler;
use super::host::{Body, HostWriter};
use crate::archive::safety::PathChecker;
use crate::archive::writer::Attrs;
use crate::archive::xattrs::{self, Xattrs};

/// One archive entry, by its path below the volume's root.
pub struct Entry<'a> {
    pub rel: &'a [u8],
    pub kind: tar::EntryType,
    pub attrs: Attrs,
    pub size: u64,
    /// A symlink's target as stored, or a hard link's target below the volume's root.
    pub link: Option<&'a [u8]>,
    pub xattrs: &'a Xattrs,
}

/// Writes the entries of one volume.
pub trait Sink {
    fn write(&mut self, e: &Entry<'_>, data: &mut dyn Read) -> Result<()>;
    /// Applies what must come last (folder attributes) and flushes.
    fn finish(self: Box<Self>) -> Result<()>;
}

impl Sink for HostWriter {
    fn write(&mut self, e: &Entry<'_>, data: &mut dyn Read) -> Result<()> {
        let link = e.link.unwrap_or_default();
        let meta = (&e.attrs, e.xattrs);
        match e.kind {
            tar::EntryType::Directory => self.dir(e.rel, meta),
            tar::EntryType::Symlink => self.symlink(e.rel, meta, link),
            tar::EntryType::Link => self.hardlink(e.rel, link),
            tar::EntryType::GNUSparse => self.file(e.rel, meta, Body::Sparse(data)),
            _ => self.file(e.rel, meta, Body::Dense(data)),
        }
    }

    fn finish(self: Box<Self>) -> Result<()> {
        HostWriter::finish(*self)
    }
}

impl Sink for Filler {
    fn write(&mut self, e: &Entry<'_>, data: &mut dyn Read) -> Result<()> {
        self.entry(e, data)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        Filler::finish(*self)
    }
}

/// One volume's folder in the archive (`binds/data`) and the sink its entries go to.
pub struct VolumeOut {
    pub folder: Vec<u8>,
    checker: PathChecker,
    sink: Box<dyn Sink>,
}

impl VolumeOut {
    pub fn new(folder: &[u8], sink: Box<dyn Sink>) -> VolumeOut {
        VolumeOut {
            folder: folder.to_vec(),
            checker: PathChecker::default(),
            sink,
        }
    }

    /// Checks and writes one archive entry of this volume.
    pub fn write<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let path = entry.path_bytes().into_owned();
        let h = entry.header();
        let kind = h.entry_type();
        let attrs = Attrs {
            mode: h.mode()?,
            uid: h.uid()?,
            gid: h.gid()?,
            mtime: h.mtime()?,
        };
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let size = entry.size();
        let x = xattrs::of_entry(entry)?;
        self.write_parts(&path, (kind, attrs, &x), link.as_deref(), size, entry)
    }

    /// Checks and writes one entry given by its parts (`path` is the full archive path).
    pub fn write_parts(
        &mut self,
        path: &[u8],
        (kind, attrs, xattrs): (tar::EntryType, Attrs, &Xattrs),
        link: Option<&[u8]>,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<()> {
        if let Some(why) = self.checker.check(path, kind, link) {
            bail!("refusing to write unsafe entry {why}");
        }
        let Some(rel) = below(&self.folder, path) else {
            bail!(
                "refusing to write {}: not in {}",
                String::from_utf8_lossy(path),
                String::from_utf8_lossy(&self.folder)
            );
        };
        let link = match kind {
            tar::EntryType::Link => link.and_then(|l| below(&self.folder, l)),
            _ => link,
        };
        let e = Entry {
            rel,
            kind,
            attrs,
            size,
            link,
            xattrs,
        };
        self.sink.write(&e, data)
    }

    pub fn finish(self) -> Result<()> {
        self.sink.finish()
    }
}

/// `path` below archive folder `folder` (empty for the folder itself), or `None` when it is
/// not in it.
fn below<'a>(folder: &[u8], path: &'a [u8]) -> Option<&'a [u8]> {
    let rest = path.strip_prefix(folder)?;
    match rest {
        [] | [b'/'] => Some(&[]),
        [b'/', r @ ..] => Some(r.strip_suffix(b"/").unwrap_or(r)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};

    use proptest::prelude::*;

    use super::*;

    /// A sentinel folder: `outside/` holds a secret file and a folder; the restore root is
    /// `parent/root`. Nothing outside `parent/root` may change.
    struct Sentinel {
        _dir: tempfile::TempDir,
        base: PathBuf,
    }

    impl Sentinel {
        fn new() -> Sentinel {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path().to_path_buf();
            fs::create_dir_all(base.join("outside/sub")).unwrap();
            fs::write(base.join("outside/secret"), "secret").unwrap();
            fs::create_dir_all(base.join("parent/root")).unwrap();
            Sentinel { _dir: dir, base }
        }

        fn root(&self) -> PathBuf {
            self.base.join("parent/root")
        }

        /// Every path outside the root, with its kind, size, link count and content.
        fn outside(&self) -> Vec<String> {
            let root = self.root();
            let mut v: Vec<String> = walkdir::WalkDir::new(&self.base)
                .into_iter()
                .flatten()
                .filter(|e| !e.path().starts_with(&root))
                .map(|e| {
                    let m = fs::symlink_metadata(e.path()).unwrap();
                    let body = if m.is_file() {
                        fs::read(e.path()).unwrap()
                    } else {
                        Vec::new()
                    };
                    format!(
                        "{} {:o} {} {} {body:?}",
                        e.path().display(),
                        m.mode(),
                        m.nlink(),
                        m.len()
                    )
                })
                .collect();
            v.sort();
            v
        }
    }

    /// A path below the volume folder, spelled in one of many ways (some not canonical).
    fn spelling() -> impl Strategy<Value = Vec<u8>> {
        let part = prop_oneof![
            Just(b"a".to_vec()),
            Just(b"b".to_vec()),
            Just(b"ln".to_vec()),
            Just(b".".to_vec()),
            Just(b"..".to_vec()),
            Just(b"".to_vec()),
            Just(b"\xff".to_vec()),
        ];
        (prop::collection::vec(part, 1..4), any::<bool>()).prop_map(|(parts, slash)| {
            let mut p = b"binds/v".to_vec();
            for c in parts {
                p.push(b'/');
                p.extend(c);
            }
            if slash {
                p.push(b'/');
            }
            p
        })
    }

    fn link_target(base: &Path) -> impl Strategy<Value = Vec<u8>> {
        let outside = base
            .join("outside")
            .to_string_lossy()
            .into_owned()
            .into_bytes();
        let secret = base
            .join("outside/secret")
            .to_string_lossy()
            .into_owned()
            .into_bytes();
        prop_oneof![
            Just(outside),
            Just(secret),
            Just(b"../../outside".to_vec()),
            Just(b"../../../outside/secret".to_vec()),
            Just(b"a".to_vec()),
            Just(b"/".to_vec()),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Dir(Vec<u8>),
        File(Vec<u8>),
        Symlink(Vec<u8>, Vec<u8>),
        Hard(Vec<u8>, Vec<u8>),
    }

    fn op(base: &Path) -> impl Strategy<Value = Op> {
        let outside_hard = prop_oneof![
            spelling(),
            Just(b"binds/v/../../../outside/secret".to_vec()),
            Just(b"binds/v/ln/secret".to_vec()),
            Just(b"binds/v/./ln/secret".to_vec()),
        ];
        prop_oneof![
            spelling().prop_map(Op::Dir),
            spelling().prop_map(Op::File),
            (spelling(), link_target(base)).prop_map(|(p, t)| Op::Symlink(p, t)),
            (spelling(), outside_hard).prop_map(|(p, t)| Op::Hard(p, t)),
        ]
    }

    static NONE: Xattrs = Vec::new();

    fn attrs() -> Attrs {
        Attrs {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
        }
    }

    /// Writes `ops` with the real writer; with `checked`, through the archive's path checker
    /// too (without it, the kernel alone must keep every write inside).
    fn write_all(s: &Sentinel, ops: &[Op], checked: bool) {
        let w = HostWriter::new(&s.root()).unwrap();
        let mut out = VolumeOut::new(b"binds/v", Box::new(w));
        let none = Xattrs::new();
        let _ = out.write_parts(
            b"binds/v",
            (tar::EntryType::Directory, attrs(), &none),
            None,
            0,
            &mut &b""[..],
        );
        for o in ops {
            let (p, kind, link) = match o {
                Op::Dir(p) => (p, tar::EntryType::Directory, None),
                Op::File(p) => (p, tar::EntryType::Regular, None),
                Op::Symlink(p, t) => (p, tar::EntryType::Symlink, Some(t.as_slice())),
                Op::Hard(p, t) => (p, tar::EntryType::Link, Some(t.as_slice())),
            };
            let _ = if checked {
                out.write_parts(p, (kind, attrs(), &none), link, 6, &mut &b"hacked"[..])
            } else {
                let rel = below(b"binds/v", p).unwrap_or(b"x");
                let link = match kind {
                    tar::EntryType::Link => link.map(|l| below(b"binds/v", l).unwrap_or(l)),
                    _ => link,
                };
                let e = Entry {
                    rel,
                    kind,
                    attrs: attrs(),
                    size: 6,
                    link,
                    xattrs: &none,
                };
                out.sink.write(&e, &mut &b"hacked"[..])
            };
        }
        let _ = out.finish();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn no_entry_sequence_changes_anything_outside_the_root(
            seed_ops in prop::collection::vec(op(Path::new("/SENTINEL")), 1..14),
            checked in any::<bool>(),
        ) {
            let s = Sentinel::new();
            let sentinel = b"/SENTINEL";
            let real = s.base.to_string_lossy().into_owned().into_bytes();
            let swap = |v: &Vec<u8>| -> Vec<u8> {
                match v.strip_prefix(&sentinel[..]) {
                    Some(rest) => [real.as_slice(), rest].concat(),
                    None => v.clone(),
                }
            };
            let ops: Vec<Op> = seed_ops.iter().map(|o| match o {
                Op::Symlink(p, t) => Op::Symlink(p.clone(), swap(t)),
                other => other.clone(),
            }).collect();
            let before = s.outside();
            write_all(&s, &ops, checked);
            prop_assert_eq!(s.outside(), before);
        }
    }

    #[test]
    fn the_kernel_refuses_what_the_checker_would_have() {
        let s = Sentinel::new();
        let out = s.base.join("outside");
        let mut w = HostWriter::new(&s.root()).unwrap();
        w.dir(b"", (&attrs(), &NONE)).unwrap();
        w.symlink(b"ln", (&attrs(), &NONE), out.as_os_str().as_encoded_bytes())
            .unwrap();
        let through = w
            .file(b"ln/x", (&attrs(), &NONE), Body::Dense(&mut &b"x"[..]))
            .unwrap_err();
        assert!(format!("{through:#}").contains("ln/x"), "{through:#}");
        let same = w
            .file(b"ln", (&attrs(), &NONE), Body::Dense(&mut &b"x"[..]))
            .unwrap_err();
        assert!(format!("{same:#}").contains("File exists"), "{same:#}");
        assert!(w.dir(b"ln/sub", (&attrs(), &NONE)).is_err());
        assert!(w.hardlink(b"h", b"ln/secret").is_err());
        assert!(w
            .file(b"../escape", (&attrs(), &NONE), Body::Dense(&mut &b"x"[..]))
            .is_err());
        assert!(w
            .file(
                b"a/../../escape",
                (&attrs(), &NONE),
                Body::Dense(&mut &b"x"[..])
            )
            .is_err());
        assert!(!s.base.join("outside/x").exists() && !s.base.join("parent/escape").exists());
        assert_eq!(
            fs::metadata(s.base.join("outside/secret")).unwrap().nlink(),
            1
        );
    }

    #[test]
    fn the_component_walk_refuses_the_same_without_openat2() {
        std::env::set_var("NUWAX_BACKUP_TEST_NO_OPENAT2", "1");
        let s = Sentinel::new();
        let out = s.base.join("outside");
        let mut w = HostWriter::new(&s.root()).unwrap();
        std::env::remove_var("NUWAX_BACKUP_TEST_NO_OPENAT2");
        w.dir(b"", (&attrs(), &NONE)).unwrap();
        w.dir(b"d", (&attrs(), &NONE)).unwrap();
        w.file(b"d/ok", (&attrs(), &NONE), Body::Dense(&mut &b"ok"[..]))
            .unwrap();
        w.symlink(
            b"d/ln",
            (&attrs(), &NONE),
            out.as_os_str().as_encoded_bytes(),
        )
        .unwrap();
        assert!(w
            .file(b"d/ln/x", (&attrs(), &NONE), Body::Dense(&mut &b"x"[..]))
            .is_err());
        assert!(w.hardlink(b"h", b"d/ln/secret").is_err());
        w.hardlink(b"h2", b"d/ok").unwrap();
        w.finish().unwrap();
        assert_eq!(fs::read(s.root().join("h2")).unwrap(), b"ok");
        assert!(!s.base.join("outside/x").exists());
    }
}
