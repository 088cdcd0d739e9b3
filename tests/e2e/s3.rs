//! A real S3-compatible server for the tests: s3s-fs (installed by scripts/ensure-s3.sh)
//! on 127.0.0.1, one per test, with its own access keys and folder, so it refuses wrong
//! keys and keeps its state across a restart. boto3 is the independent client.
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    pub root: tempfile::TempDir,
    pub access_key: String,
    pub secret_key: String,
}

fn binary() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin/s3s-fs");
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "CI=true but {} is missing: run scripts/ensure-s3.sh",
            p.display()
        );
    }
    eprintln!("skipped: no s3s-fs (run scripts/ensure-s3.sh)");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl S3Server {
    /// A server with `buckets` made (through boto3); none when s3s-fs is not installed
    /// outside CI.
    pub fn start(test: &str, buckets: &[&str]) -> Option<S3Server> {
        binary()?;
        let mut s = S3Server {
            child: None,
            port: free_port(),
            root: tempfile::Builder::new()
                .prefix("nwx-s3-")
                .tempdir()
                .unwrap(),
            access_key: format!("AK{}{}", test.len(), std::process::id()),
            secret_key: format!("sk-{test}-{}-secret", std::process::id()),
        };
        s.restart();
        for b in buckets {
            s.boto3(&format!("s3.create_bucket(Bucket='{b}')"));
        }
        Some(s)
    }

    /// Starts (again) on the same port, folder and keys.
    pub fn restart(&mut self) {
        let child = Command::new(binary().unwrap())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--access-key",
                &self.access_key,
                "--secret-key",
                &self.secret_key,
            ])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "s3s-fs did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crashed server or a pulled cable.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment an operator sets for the plugin (and boto3).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
    }

    /// Runs a Python snippet with `s3` a boto3 client of this server; returns its stdout.
    pub fn boto3(&self, code: &str) -> String {
        let script = format!("import boto3, hashlib, json, sys\ns3 = boto3.client('s3')\n{code}\n");
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .envs(self.env())
            .env_remove("AWS_PROFILE")
            .output()
            .expect("python3 with boto3 (scripts/ensure-s3.sh)");
        assert!(
            out.status.success(),
            "boto3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// SHA-256 of an object, read by boto3.
    pub fn sha256_of(&self, bucket: &str, key: &str) -> String {
        self.boto3(&format!(
            "h = hashlib.sha256()\nfor c in s3.get_object(Bucket='{bucket}', Key='{key}')['Body'].iter_chunks(1 << 20): h.update(c)\nprint(h.hexdigest())"
        ))
        .trim()
        .to_string()
    }

    /// Every key in a bucket, by boto3.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let out = self.boto3(&format!(
            "for o in s3.list_objects_v2(Bucket='{bucket}').get('Contents', []): print(o['Key'])"
        ));
        out.lines().map(str::to_string).collect()
    }

    /// Multipart uploads open on the server. s3s-fs does not answer ListMultipartUploads;
    /// it keeps each open upload as `.upload-<id>.json` (and its parts) in its folder.
    pub fn open_uploads(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload-") || n.starts_with(".upload_id-"))
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
