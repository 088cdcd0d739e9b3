//! A bucket reached over the S3 API (object_store), behind a blocking façade: the rest of
//! the tool is synchronous. Every error message is one line and carries no secret.
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, ClientOptions, ObjectStore, ObjectStoreExt, PutMultipartOptions,
    PutPayload, RetryConfig,
};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use super::config::Settings;
use super::url::RemoteUrl;
use crate::exit_codes::{Code, UserError};

/// One bucket, with the runtime its requests run on.
pub struct Store {
    s3: Arc<AmazonS3>,
    rt: Runtime,
    secrets: Arc<Vec<String>>,
    pub url: RemoteUrl,
}

impl Store {
    /// Connects lazily: nothing is sent until the first request.
    pub fn open(url: &RemoteUrl, settings: &Settings) -> Result<Store> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&url.bucket)
            .with_region(&settings.region)
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(300)),
            )
            // After the client options, which would reset it.
            .with_allow_http(settings.allow_http());
        if let Some(e) = &settings.endpoint {
            b = b.with_endpoint(e);
        }
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
            if let Some(t) = &settings.session_token {
                b = b.with_token(t);
            }
        }
        let secrets = settings.secrets();
        let s3 = b
            .build()
            .map_err(|e| remote_error(&secrets, format!("{url}: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the network runtime")?;
        Ok(Store {
            s3: Arc::new(s3),
            rt,
            secrets: Arc::new(secrets),
            url: url.clone(),
        })
    }

    /// A one-line error (exit 14) naming what failed, with every secret replaced by `***`.
    pub fn fail(&self, what: String, err: impl std::fmt::Display) -> anyhow::Error {
        remote_error(&self.secrets, format!("{what}: {err}"))
    }

    /// The object's size; none when there is no such object.
    pub fn head(&self, key: &str) -> Result<Option<u64>> {
        match self.rt.block_on(self.s3.head(&Key::from(key))) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail(format!("reading {}", self.url.object_url(key)), e)),
        }
    }

    /// Writes a small object (a sidecar) in one request.
    pub fn put_small(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.rt
            .block_on(self.s3.put(&Key::from(key), PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| self.fail(format!("writing {}", self.url.object_url(key)), e))
    }

    /// Reads a small object whole (a sidecar); none when missing.
    pub fn get_small(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let got = self.rt.block_on(async {
            match self.s3.get(&Key::from(key)).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map(|b| b.map(|b| b.to_vec()))
            .map_err(|e| self.fail(format!("reading {}", self.url.object_url(key)), e))
    }

    /// Streams an object into `out`, calling `progress` with the bytes written so far.
    pub fn download(&self, key: &str, out: &mut dyn Write, progress: &dyn Fn(u64)) -> Result<u64> {
        let url = self.url.object_url(key);
        self.rt.block_on(async {
            let got = self
                .s3
                .get(&Key::from(key))
                .await
                .map_err(|e| self.fail(format!("downloading {url}"), e))?;
            let mut stream = got.into_stream();
            let mut done = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.fail(format!("downloading {url}"), e))?;
                out.write_all(&chunk)?;
                done += chunk.len() as u64;
                progress(done);
                crate::cancel::check()?;
            }
            Ok(done)
        })
    }

    /// One cheap listing under `prefix`: proves the bucket exists and the keys are accepted
    /// (some servers accept uploads into a bucket that does not exist).
    pub fn probe(&self, prefix: &str) -> Result<()> {
        let p = Key::from(prefix);
        match self.rt.block_on(self.s3.list_with_delimiter(Some(&p))) {
            Ok(_) => Ok(()),
            // Some servers answer a missing bucket with an error object_store does not map.
            Err(e)
                if matches!(e, object_store::Error::NotFound { .. })
                    || e.to_string().contains("NoSuchBucket") =>
            {
                Err(self.fail(
                    format!("bucket {}", self.url.bucket),
                    "it does not exist (create it, or fix the URL)",
                ))
            }
            Err(e) => Err(self.fail(format!("listing {}", self.url), e)),
        }
    }

    /// Every object under `prefix` (its key and size).
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let p = (!prefix.is_empty()).then(|| Key::from(prefix));
        let metas: Vec<_> = self
            .rt
            .block_on(self.s3.list(p.as_ref()).try_collect::<Vec<_>>())
            .map_err(|e| self.fail(format!("listing {}", self.url), e))?;
        Ok(metas
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect())
    }

    /// Deletes an object (a missing one is fine).
    pub fn delete(&self, key: &str) -> Result<()> {
        match self.rt.block_on(self.s3.delete(&Key::from(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail(format!("deleting {}", self.url.object_url(key)), e)),
        }
    }

    /// Aborts an unfinished multipart upload, freeing its parts on the server.
    /// An upload the server no longer knows (completed, or cleaned by a lifecycle rule) is
    /// as good as aborted.
    pub fn abort(&self, key: &str, upload_id: &str) -> Result<()> {
        let k = Key::from(key);
        let id = upload_id.to_string();
        match self.rt.block_on(self.s3.abort_multipart(&k, &id)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
        .map_err(|e| {
            self.fail(
                format!("aborting the upload of {}", self.url.object_url(key)),
                e,
            )
        })
    }

    /// Starts a multipart upload of `key` (with `sha256` as object metadata when known).
    pub fn begin(&self, key: &str, sha256: Option<&str>, in_flight: usize) -> Result<Upload> {
        let mut attributes = Attributes::new();
        if let Some(sha) = sha256 {
            attributes.insert(Attribute::Metadata("sha256".into()), sha.to_string().into());
        }
        let opts = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let k = Key::from(key);
        let id = self
            .rt
            .block_on(self.s3.create_multipart_opts(&k, opts))
            .map_err(|e| {
                self.fail(
                    format!("starting the upload of {}", self.url.object_url(key)),
                    e,
                )
            })?;
        Ok(Upload {
            s3: self.s3.clone(),
            rt: self.rt.handle().clone(),
            secrets: self.secrets.clone(),
            url: self.url.object_url(key),
            key: k,
            id,
            tasks: JoinSet::new(),
            parts: Vec::new(),
            in_flight: in_flight.max(1),
            sent: 0,
        })
    }
}

/// A multipart upload in progress: parts are sent in parallel (at most `in_flight` at once,
/// which bounds memory), each checked against the MD5 the server returns as its ETag. It owns
/// what it needs (so a compressor thread can drive it); its `Store` must outlive it.
pub struct Upload {
    s3: Arc<AmazonS3>,
    rt: tokio::runtime::Handle,
    secrets: Arc<Vec<String>>,
    url: String,
    key: Key,
    id: String,
    tasks: JoinSet<Result<(usize, PartId)>>,
    parts: Vec<Option<PartId>>,
    in_flight: usize,
    sent: usize,
}

impl Upload {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sends the next part, after waiting for a free slot.
    pub fn send(&mut self, data: Vec<u8>) -> Result<()> {
        while self.tasks.len() >= self.in_flight {
            self.wait_one()?;
        }
        let idx = self.sent;
        self.sent += 1;
        self.parts.push(None);
        let (s3, key, id) = (self.s3.clone(), self.key.clone(), self.id.clone());
        self.tasks.spawn_on(
            async move {
                let md5 = hex::encode(<md5::Md5 as md5::Digest>::digest(&data));
                let part = s3
                    .put_part(&key, &id, idx, PutPayload::from(data))
                    .await
                    .map_err(|e| anyhow!("part {}: {e}", idx + 1))?;
                let etag = part.content_id.trim_matches('"').to_ascii_lowercase();
                if is_md5(&etag) && etag != md5 {
                    anyhow::bail!(
                        "part {}: the server stored other bytes (MD5 {etag}, sent {md5})",
                        idx + 1
                    );
                }
                Ok((idx, part))
            },
            &self.rt,
        );
        Ok(())
    }

    fn wait_one(&mut self) -> Result<()> {
        let Some(joined) = self.rt.block_on(self.tasks.join_next()) else {
            return Ok(());
        };
        let (idx, part) = joined
            .map_err(|e| anyhow!("{e}"))
            .and_then(|r| r)
            .map_err(|e| remote_error(&self.secrets, format!("uploading {}: {e:#}", self.url)))?;
        self.parts[idx] = Some(part);
        crate::cancel::check()
    }

    /// Waits for every part and completes the object.
    pub fn finish(mut self) -> Result<()> {
        while !self.tasks.is_empty() {
            self.wait_one()?;
        }
        let parts: Vec<PartId> = self.parts.drain(..).flatten().collect();
        self.rt
            .block_on(self.s3.complete_multipart(&self.key, &self.id, parts))
            .map(|_| ())
            .map_err(|e| remote_error(&self.secrets, format!("completing {}: {e}", self.url)))
    }
}

impl Upload {
    /// Gives the upload up on the server (best effort, ten seconds at most: a server that
    /// does not answer leaves it to the bucket's lifecycle rule).
    pub fn abort(mut self) {
        self.tasks.abort_all();
        let abort = self.s3.abort_multipart(&self.key, &self.id);
        let _ = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), abort).await });
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

fn is_md5(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The remote's exit code (14) with a one-line message, secrets replaced.
fn remote_error(secrets: &[String], text: String) -> anyhow::Error {
    UserError::new(Code::Remote, scrub(secrets, &text)).into()
}

/// `text` on one line, with every secret replaced by `***`.
pub fn scrub(secrets: &[String], text: &str) -> String {
    let mut out = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for s in secrets {
        out = out.replace(s.as_str(), "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_one_line_without_secrets() {
        let secrets = vec!["AKIDEXAMPLE".to_string(), "s3cr3t-key".to_string()];
        let text = "403 Forbidden:\n<Error><AWSAccessKeyId>AKIDEXAMPLE</AWSAccessKeyId>\n  s3cr3t-key</Error>";
        let out = scrub(&secrets, text);
        assert!(!out.contains('\n'));
        assert!(
            !out.contains("AKIDEXAMPLE") && !out.contains("s3cr3t"),
            "{out}"
        );
        assert!(
            out.contains("<AWSAccessKeyId>***</AWSAccessKeyId>"),
            "{out}"
        );
        assert!(is_md5("0123456789abcdef0123456789abcdef"));
        assert!(!is_md5("0123456789abcdef0123456789abcdef-3"));
    }
}
