//! Extended attributes (POSIX ACLs and file capabilities are ones too): read from the disk
//! without following links, carried in PAX records as GNU tar writes them
//! (`SCHILY.xattr.<name>`, the value's bytes as they are), and set again. ACLs are also
//! written in GNU tar's text form (`SCHILY.acl.access`, `SCHILY.acl.default`), so that
//! `tar --acls -x` restores them; this tool reads back only the attribute records.
//!
//! The `tar` crate splits PAX records at newlines instead of by their length, so a name or
//! value holding a newline (or a name holding `=`) would be misread, and could even be read
//! as another record (a `path`). Those go in libarchive's form instead
//! (`LIBARCHIVE.xattr.<name, %-encoded>=<value, base64>`), which bsdtar restores and GNU tar
//! skips with a warning.
use std::io;
use std::os::fd::BorrowedFd;

use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::Engine as _;

/// An entry's attributes by name (sorted), with their values.
pub type Xattrs = Vec<(String, Vec<u8>)>;

/// Left out when archiving: the engine relabels binds mounted with `:z`/`:Z`, and a label
/// from another host is wrong on this one.
pub const LEFT_OUT: &str = "security.selinux";
/// The PAX keyword prefix of an attribute.
pub const PAX_PREFIX: &str = "SCHILY.xattr.";
/// libarchive's prefix: the name %-encoded, the value in base64.
pub const ENCODED_PREFIX: &str = "LIBARCHIVE.xattr.";
const ACL_ACCESS: &str = "system.posix_acl_access";
const ACL_DEFAULT: &str = "system.posix_acl_default";

/// Where attributes are read or set: an open descriptor, or a path whose last name is not
/// followed (a symlink's own attributes).
#[derive(Clone, Copy)]
pub enum On<'a> {
    Fd(BorrowedFd<'a>),
    Link(&'a Path),
}

/// Whether an error means "this filesystem has no attributes of that kind".
pub fn unsupported(e: &io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::OPNOTSUPP)
    )
}

fn list(on: On<'_>) -> io::Result<Vec<u8>> {
    loop {
        let size = match on {
            On::Fd(fd) => rustix::fs::flistxattr_query(fd),
            On::Link(p) => rustix::fs::llistxattr_query(p),
        }?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        let got = match on {
            On::Fd(fd) => rustix::fs::flistxattr(fd, &mut buf[..]),
            On::Link(p) => rustix::fs::llistxattr(p, &mut buf[..]),
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            // Grew between the two calls: ask again.
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// One attribute's value; `None` when it went away meanwhile.
fn get(on: On<'_>, name: &str) -> io::Result<Option<Vec<u8>>> {
    loop {
        let size = match on {
            On::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
            On::Link(p) => rustix::fs::lgetxattr_query(p, name),
        };
        let size = match size {
            Err(rustix::io::Errno::NODATA) => return Ok(None),
            other => other?,
        };
        let mut buf = vec![0u8; size];
        let got = match on {
            On::Fd(fd) => rustix::fs::fgetxattr(fd, name, &mut buf[..]),
            On::Link(p) => rustix::fs::lgetxattr(p, name, &mut buf[..]),
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(rustix::io::Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Every attribute of the entry but [`LEFT_OUT`], sorted by name. A filesystem without
/// attributes has none; a name that is not UTF-8 (PAX keywords are) is an error naming it.
pub fn read(on: On<'_>) -> io::Result<Xattrs> {
    let names = match list(on) {
        Err(e) if unsupported(&e) => return Ok(Vec::new()),
        other => other?,
    };
    let mut out = Vec::new();
    for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(raw) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "extended attribute {:?} has a name that is not UTF-8, which an archive cannot carry",
                    String::from_utf8_lossy(raw)
                ),
            ));
        };
        if name == LEFT_OUT {
            continue;
        }
        if let Some(value) = get(on, name)? {
            out.push((name.to_string(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// Sets every attribute. One the filesystem refuses (no support, or not permitted for this
/// user: `trusted.*`, capabilities without `CAP_SETFCAP`) is returned, to be said as a
/// warning; any other failure is an error.
pub fn apply(on: On<'_>, xattrs: &Xattrs) -> io::Result<Vec<String>> {
    let mut refused = Vec::new();
    for (name, value) in xattrs {
        let set = match on {
            On::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, rustix::fs::XattrFlags::empty()),
            On::Link(p) => rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()),
        };
        match set.map_err(io::Error::from) {
            Ok(()) => {}
            Err(e) if unsupported(&e) || e.kind() == io::ErrorKind::PermissionDenied => {
                refused.push(format!("{name} ({e})"))
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("setting {name}: {e}"))),
        }
    }
    Ok(refused)
}

/// The PAX records of `xattrs`: one `SCHILY.xattr.` record each, and GNU tar's text form of
/// the ACLs. Empty when there are none.
pub fn pax_records(xattrs: &Xattrs) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in xattrs {
        if value.contains(&b'\n') || name.contains(['\n', '=']) {
            let encoded = base64::engine::general_purpose::STANDARD.encode(value);
            record(
                &mut out,
                &format!("{ENCODED_PREFIX}{}", url_encode(name)),
                encoded.as_bytes(),
            );
            continue;
        }
        record(&mut out, &format!("{PAX_PREFIX}{name}"), value);
        let text_key = match name.as_str() {
            ACL_ACCESS => Some("SCHILY.acl.access"),
            ACL_DEFAULT => Some("SCHILY.acl.default"),
            _ => None,
        };
        if let Some(text) = text_key.and_then(|k| acl_text(value).map(|t| (k, t))) {
            record(&mut out, text.0, text.1.as_bytes());
        }
    }
    out
}

/// `"<length> <key>=<value>\n"`, where the length counts the whole record, its own digits too.
pub fn record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A PAX extended header (type `x`) holding `records`, padded to whole blocks: written just
/// before the entry it describes.
pub fn pax_block(records: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.as_mut_bytes()[..14].copy_from_slice(b"././@PaxHeader");
    h.set_mode(0o644);
    h.set_size(records.len() as u64);
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(records);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// The attributes an entry's PAX records carry (none without records).
pub fn from_pax(ext: Option<tar::PaxExtensions<'_>>) -> Result<Xattrs> {
    let mut out: Xattrs = Vec::new();
    for r in ext.into_iter().flatten() {
        // A record the crate could not split is never one this tool wrote.
        let Ok(r) = r else { continue };
        let Ok(key) = r.key() else { continue };
        let (name, value) = if let Some(name) = key.strip_prefix(PAX_PREFIX) {
            (name.to_string(), r.value_bytes().to_vec())
        } else if let Some(name) = key.strip_prefix(ENCODED_PREFIX) {
            let name =
                url_decode(name).with_context(|| format!("a bad attribute name {name:?}"))?;
            let value = base64::engine::general_purpose::STANDARD
                .decode(r.value_bytes())
                .with_context(|| format!("a bad value of attribute {name:?}"))?;
            (name, value)
        } else {
            continue;
        };
        if name.is_empty() || out.iter().any(|(n, _)| *n == name) {
            bail!("extended attribute {name:?} is empty or repeated in the archive");
        }
        out.push((name, value));
    }
    out.sort();
    Ok(out)
}

/// libarchive's encoding of a name: bytes outside printable ASCII, `%` and `=` as `%XX`.
fn url_encode(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        match b {
            33..=126 if b != b'%' && b != b'=' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn url_decode(s: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hex = [bytes.next()?, bytes.next()?];
        out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
    }
    String::from_utf8(out).ok()
}

/// The attributes of an entry being read from an archive.
pub fn of_entry<R: io::Read>(entry: &mut tar::Entry<'_, R>) -> Result<Xattrs> {
    from_pax(entry.pax_extensions()?)
}

/// GNU tar's text form of a POSIX ACL attribute (`user::rwx,user:1234:r-x,…`, numeric ids),
/// or `None` when the value is not one.
fn acl_text(value: &[u8]) -> Option<String> {
    let (head, body) = value.split_at_checked(4)?;
    if head != 2u32.to_le_bytes() || body.len() % 8 != 0 {
        return None;
    }
    let mut parts = Vec::new();
    for e in body.chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let who = match tag {
            0x01 => "user:".to_string(),
            0x02 => format!("user:{id}"),
            0x04 => "group:".to_string(),
            0x08 => format!("group:{id}"),
            0x10 => "mask:".to_string(),
            0x20 => "other:".to_string(),
            _ => return None,
        };
        let bit = |b: u16, c: char| if perm & b != 0 { c } else { '-' };
        parts.push(format!(
            "{who}:{}{}{}",
            bit(4, 'r'),
            bit(2, 'w'),
            bit(1, 'x')
        ));
    }
    Some(parts.join(","))
}

/// Hex of a value, for the manifest.
pub fn manifest_map(xattrs: &Xattrs) -> Option<std::collections::BTreeMap<String, String>> {
    (!xattrs.is_empty()).then(|| {
        xattrs
            .iter()
            .map(|(n, v)| (n.clone(), hex::encode(v)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn records_count_their_own_length() {
        let mut out = Vec::new();
        record(&mut out, "SCHILY.xattr.user.x", b"hello");
        assert_eq!(out, b"29 SCHILY.xattr.user.x=hello\n");
        assert_eq!(out.len(), 29);
        let mut long = Vec::new();
        record(&mut long, "k", &[b'v'; 95]);
        assert_eq!(long.len(), 102);
        assert!(long.starts_with(b"102 k="));
    }

    #[test]
    fn acls_are_written_as_gnu_tar_text() {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 7u16, u32::MAX),
            (2, 7, 1234),
            (4, 5, u32::MAX),
            (0x10, 7, u32::MAX),
            (0x20, 4, u32::MAX),
        ] {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        assert_eq!(
            acl_text(&v).unwrap(),
            "user::rwx,user:1234:rwx,group::r-x,mask::rwx,other::r--"
        );
        assert_eq!(acl_text(b"junk"), None);
    }

    #[test]
    fn records_read_back_through_the_tar_crate() {
        let x: Xattrs = vec![
            ("security.capability".into(), vec![1, 0, 0, 2, 0, 0x20]),
            ("user.nl".into(), b"a\n25 path=../../etc/x\n".to_vec()),
            ("user.x".into(), b"a=b c".to_vec()),
            ("user.y=\n".into(), vec![0, 10, 255]),
        ];
        let mut bytes = pax_block(&pax_records(&x));
        let mut h = tar::Header::new_gnu();
        h.set_path("f").unwrap();
        h.set_size(0);
        h.set_cksum();
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend(vec![0u8; 1024]);
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut e = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(
            e.path_bytes().as_ref(),
            b"f",
            "no value is read as a record"
        );
        assert_eq!(of_entry(&mut e).unwrap(), x);
    }

    #[test]
    fn an_attribute_the_filesystem_refuses_is_returned_to_be_said_and_the_rest_is_set() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let x: Xattrs = vec![
            ("bogus.ns".into(), b"1".to_vec()),
            ("user.ok".into(), b"2".to_vec()),
        ];
        let fd = f.as_file().as_fd();
        let refused = apply(On::Fd(fd), &x).unwrap();
        assert!(refused[0].starts_with("bogus.ns ("), "{refused:?}");
        // tmpfs before Linux 6.6 has no user attributes: then both are refused.
        let back = read(On::Fd(fd)).unwrap();
        match refused.len() {
            1 => assert_eq!(back, vec![("user.ok".to_string(), b"2".to_vec())]),
            _ => assert!(back.is_empty() && refused[1].starts_with("user.ok (")),
        }
    }
}
