//! `s3://BUCKET[/PREFIX]` and where a project's archives live under it. No I/O.
use std::fmt;

use anyhow::{bail, Result};

/// A bucket and an optional key prefix (no leading or trailing slash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    pub bucket: String,
    pub prefix: String,
}

impl RemoteUrl {
    /// Parses `s3://BUCKET[/PREFIX]`; names what is wrong otherwise.
    pub fn parse(text: &str) -> Result<RemoteUrl> {
        let Some(rest) = text.strip_prefix("s3://") else {
            bail!("{text:?} is not a remote: write s3://BUCKET[/PREFIX]");
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !valid {
            bail!("{text:?}: {bucket:?} is not a bucket name (3-63 of a-z, 0-9, '-', '.')");
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
            bail!("{text:?}: the prefix may not hold empty, '.' or '..' parts");
        }
        Ok(RemoteUrl {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// `PREFIX/<project>/<name>` (the key of an archive, or of its sidecar with `.json`).
    pub fn key(&self, project: &str, name: &str) -> String {
        self.under(&format!("{project}/{name}"))
    }

    /// `PREFIX/<rest>`.
    pub fn under(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// The URL of one object in this bucket.
    pub fn object_url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Splits an object's URL (`s3://bucket/key`) into the bucket (prefix empty) and the key.
pub fn split_object(url: &str) -> Result<(RemoteUrl, String)> {
    let parsed = RemoteUrl::parse(url)?;
    if parsed.prefix.is_empty() {
        bail!("{url:?} names a bucket, not an object");
    }
    Ok((
        RemoteUrl {
            bucket: parsed.bucket,
            prefix: String::new(),
        },
        parsed.prefix,
    ))
}

/// The remote (bucket and prefix) an object of `project` was put under: its URL without the
/// trailing `<project>/<name>`.
pub fn remote_of(object_url: &str) -> Result<RemoteUrl> {
    let (mut bucket, key) = split_object(object_url)?;
    let mut parts: Vec<&str> = key.split('/').collect();
    if parts.len() < 2 {
        bail!("{object_url:?} is not PREFIX/<project>/<archive>");
    }
    parts.truncate(parts.len() - 2);
    bucket.prefix = parts.join("/");
    Ok(bucket)
}

/// `name` with `_N` before its archive extension (`p-….tar.gz.age` → `p-…_2.tar.gz.age`),
/// for an object name already taken by another host.
pub fn numbered(name: &str, n: u32) -> String {
    match name.find(".tar.") {
        Some(i) => format!("{}_{n}{}", &name[..i], &name[i..]),
        None => format!("{name}_{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_buckets_and_prefixes() {
        let u = RemoteUrl::parse("s3://backups/site/a/").unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.prefix.as_str()),
            ("backups", "site/a")
        );
        assert_eq!(u.key("shop", "x.tar.gz"), "site/a/shop/x.tar.gz");
        assert_eq!(u.to_string(), "s3://backups/site/a");
        let bare = RemoteUrl::parse("s3://backups").unwrap();
        assert_eq!(bare.key("shop", "x.tar.gz"), "shop/x.tar.gz");
        assert_eq!(bare.object_url("shop/x"), "s3://backups/shop/x");
        for bad in [
            "backups",
            "http://b/x",
            "s3://B",
            "s3://ab",
            "s3://b/../x",
            "s3://bb/a//b",
        ] {
            assert!(RemoteUrl::parse(bad).is_err(), "{bad}");
        }
        let (b, key) = split_object("s3://bkt/p/shop/x.tar.gz").unwrap();
        assert_eq!(
            (b.bucket.as_str(), key.as_str()),
            ("bkt", "p/shop/x.tar.gz")
        );
        assert!(split_object("s3://bkt").is_err());
        assert_eq!(
            remote_of("s3://bkt/p/q/shop/x.tar.gz").unwrap().to_string(),
            "s3://bkt/p/q"
        );
        assert_eq!(
            remote_of("s3://bkt/shop/x.tar.gz").unwrap().to_string(),
            "s3://bkt"
        );
    }

    #[test]
    fn a_taken_name_gets_a_number_before_the_extension() {
        assert_eq!(
            numbered("p-1-manual.tar.gz.age", 2),
            "p-1-manual_2.tar.gz.age"
        );
        assert_eq!(numbered("odd", 3), "odd_3");
    }
}
