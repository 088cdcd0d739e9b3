//! The one spelling an archive entry's name may have. Verify and the writer share this rule,
//! so a name the check passes is the name the kernel resolves: no empty, `.` or `..`
//! component, no leading or doubled `/`, and only folders may end in one `/`.

/// Why `path` is not in canonical form, or `None` when it is. `is_dir`: the entry is a folder
/// (the only kind whose name may end in `/`).
pub fn noncanonical(path: &[u8], is_dir: bool) -> Option<&'static str> {
    if path.is_empty() {
        return Some("an empty name");
    }
    if path.contains(&0) {
        return Some("a NUL byte in the name");
    }
    if path[0] == b'/' {
        return Some("an absolute path");
    }
    let body = match path.strip_suffix(b"/") {
        Some(_) if !is_dir => return Some("a name ending in `/` that is not a folder"),
        Some(b) => b,
        None => path,
    };
    for c in body.split(|b| *b == b'/') {
        match c {
            b"" => return Some("an empty component (`//` or a second trailing `/`)"),
            b"." => return Some("a `.` component"),
            b".." => return Some("a `..` component"),
            _ => {}
        }
    }
    None
}

/// `path` without its one trailing `/` (folders may carry it): the key two spellings of one
/// folder share.
pub fn key(path: &[u8]) -> &[u8] {
    path.strip_suffix(b"/").unwrap_or(path)
}

/// Whether `name` can be one component of a path: not empty, `.` or `..`, no `/` or NUL.
pub fn is_component(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.iter().any(|b| *b == b'/' || *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass() {
        for p in [&b"binds/d"[..], b"binds/d/a b", b"volumes/v/x/\xff/y", b"a"] {
            assert_eq!(noncanonical(p, false), None, "{p:?}");
        }
        assert_eq!(noncanonical(b"binds/d/sub/", true), None);
        assert_eq!(noncanonical(b"binds/d/.hidden/..x/...", false), None);
    }

    #[test]
    fn every_other_spelling_is_refused() {
        let cases: [(&[u8], bool, &str); 10] = [
            (b"", false, "empty name"),
            (b"/etc/passwd", false, "absolute"),
            (b"binds/d/./ln/file", false, "`.` component"),
            (b"binds/d/../x", false, "`..` component"),
            (b"binds/d/..", true, "`..` component"),
            (b"binds//d", false, "empty component"),
            (b"binds/d/sub//", true, "empty component"),
            (b"binds/d/f/", false, "not a folder"),
            (b"./binds/d", false, "`.` component"),
            (b"binds/d\0x", false, "NUL"),
        ];
        for (p, dir, why) in cases {
            let got = noncanonical(p, dir).unwrap_or("passed");
            assert!(got.contains(why), "{p:?}: {got}");
        }
    }

    #[test]
    fn components_and_keys() {
        assert!(is_component(b"a.b"));
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(!is_component(bad), "{bad:?}");
        }
        assert_eq!(key(b"binds/d/sub/"), b"binds/d/sub");
        assert_eq!(key(b"binds/d/sub"), b"binds/d/sub");
    }
}
