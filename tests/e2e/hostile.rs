//! Hostile input, end to end: archives whose manifests agree with their entries yet try to
//! write outside the project's declared targets (through `import FILE`, `import s3://…` and
//! a catalog row made to trust the file), and a remote copy changed under a good local one.
//! Nothing outside the declared targets may change, no host file may gain a link, and the
//! data and services stay as they were.
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::harness::{describe_tree, Project, DAEMON, IMAGE};
use crate::s3::S3Server;

const YAML: &str = r#"
name: {name}
services:
  app:
    image: {image}
    command: {daemon}
    restart: always
    volumes: ["./data:/data", "vol:/vol"]
volumes:
  vol: {}
"#;

/// A host folder outside every project, with a secret file: it must never change.
pub struct Sentinel(pub PathBuf);

impl Sentinel {
    pub fn new(test: &str) -> Sentinel {
        let dir = PathBuf::from(format!("/tmp/nwx-sentinel-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("secret"), "secret").unwrap();
        Sentinel(dir)
    }

    /// Every entry with its kind, mode, owner, size and link count.
    pub fn snapshot(&self) -> Vec<String> {
        let mut out = describe_tree(&self.0);
        for e in walkdir::WalkDir::new(&self.0).into_iter().flatten() {
            let m = e.path().symlink_metadata().unwrap();
            out.push(format!("{} nlink {}", e.path().display(), m.nlink()));
        }
        out
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn project(test: &str) -> Option<Project> {
    let yaml = YAML.replace("{daemon}", DAEMON);
    let p = Project::new(test, &yaml)?;
    std::fs::create_dir_all(p.path("data/sub")).unwrap();
    std::fs::write(p.path("data/a.txt"), "bind content").unwrap();
    p.up();
    p.compose(&["exec", "-T", "app", "sh", "-c", "echo volume > /vol/v.txt"])
        .success();
    Some(p)
}

fn volume(p: &Project) -> String {
    format!("{}_vol", p.name)
}

/// What a user checks after a refused rollback: the bind, the volume and what runs.
fn state(p: &Project) -> (Vec<String>, Vec<String>, Vec<String>) {
    (
        describe_tree(&p.path("data")),
        p.volume_tree(&volume(p)),
        p.states("app"),
    )
}

/// One entry to add to an archive: its path below a volume folder, type, link and data.
pub struct Forged<'a> {
    pub bind: bool,
    pub rel: &'a str,
    pub kind: tar::EntryType,
    pub link: String,
    pub data: &'a [u8],
}

fn entry<'a>(bind: bool, rel: &'a str, kind: tar::EntryType, link: &str) -> Forged<'a> {
    Forged {
        bind,
        rel,
        kind,
        link: link.to_string(),
        data: if kind == tar::EntryType::Regular {
            b"owned"
        } else {
            b""
        },
    }
}

/// The entries of a gzip tar archive: (header, path, data).
fn read_entries(path: &Path) -> Vec<(tar::Header, Vec<u8>, Vec<u8>)> {
    let gz = flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap());
    let mut ar = tar::Archive::new(gz);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path_bytes().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((e.header().clone(), name, data));
    }
    out
}

fn raw_header(name: &[u8], kind: tar::EntryType, link: &[u8], size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_mtime(1_600_000_000);
    h.set_size(size);
    h.set_cksum();
    h
}

/// A copy of the good archive `good` at `out` with `extra` entries added to their volume
/// folders, their lines added to `manifest-files.jsonl` (true sizes and BLAKE3, so verify's
/// comparison agrees), and `manifest.json` changed by `edit`.
pub fn forge(good: &Path, out: &Path, extra: &[Forged], edit: &dyn Fn(&mut serde_json::Value)) {
    let entries = read_entries(good);
    let manifest = entries.iter().find(|e| e.1 == b"manifest.json").unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&manifest.2).unwrap();
    let folder = |bind: bool| -> String {
        let kind = if bind { "bind" } else { "volume" };
        m["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["kind"] == kind)
            .unwrap()["archive_path"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut lines = String::from_utf8(
        entries
            .iter()
            .find(|e| e.1 == b"manifest-files.jsonl")
            .unwrap()
            .2
            .clone(),
    )
    .unwrap();
    let mut added: Vec<(tar::Header, Vec<u8>)> = Vec::new();
    for f in extra {
        let dir = folder(f.bind);
        let full = format!("{dir}/{}", f.rel);
        let link = match f.kind {
            tar::EntryType::Link => format!("{dir}/{}", f.link),
            _ => f.link.clone(),
        };
        let h = raw_header(
            full.as_bytes(),
            f.kind,
            link.as_bytes(),
            f.data.len() as u64,
        );
        added.push((h, f.data.to_vec()));
        let kind = match f.kind {
            tar::EntryType::Directory => "dir",
            tar::EntryType::Symlink => "symlink",
            tar::EntryType::Link => "hardlink",
            _ => "file",
        };
        let mut line = serde_json::json!({
            "volume": dir, "path": f.rel, "type": kind, "mode": 420, "uid": 0, "gid": 0,
            "mtime": 1_600_000_000u64,
        });
        if kind == "file" {
            line["size"] = f.data.len().into();
            line["blake3"] = blake3::hash(f.data).to_hex().to_string().into();
        } else if kind != "dir" {
            line["link"] = f.link.clone().into();
        }
        lines.push_str(&format!("{line}\n"));
    }
    edit(&mut m);
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(out).unwrap(),
        flate2::Compression::fast(),
    );
    let mut b = tar::Builder::new(gz);
    for (h, name, data) in &entries {
        if name == b"manifest-files.jsonl" || name == b"manifest.json" {
            continue;
        }
        b.append(h, &data[..]).unwrap();
    }
    for (h, data) in &added {
        b.append(h, &data[..]).unwrap();
    }
    for (name, data) in [
        ("manifest-files.jsonl", lines.into_bytes()),
        ("manifest.json", serde_json::to_vec(&m).unwrap()),
    ] {
        let h = raw_header(
            name.as_bytes(),
            tar::EntryType::Regular,
            b"",
            data.len() as u64,
        );
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
}

fn archive_of(p: &Project, id: &str) -> PathBuf {
    crate::rollback::archive_of(p, id.parse().unwrap())
}

/// Registers `path` in the catalog with its true SHA-256, as if it were a backup made here.
fn trust(p: &Project, path: &Path) -> String {
    crate::rollback::register(p, path).to_string()
}

/// The cases that must fail verification, by name, with the reason each refusal names.
fn unsafe_cases<'a>(sentinel: &Path) -> Vec<(&'static str, Vec<Forged<'a>>, &'static str)> {
    use tar::EntryType::{Link, Regular, Symlink};
    let s = sentinel.display().to_string();
    vec![
        (
            "dot-through-symlink",
            vec![
                entry(true, "ln", Symlink, &s),
                entry(true, "./ln/planted", Regular, ""),
            ],
            "binds/data/./ln/planted: a `.` component",
        ),
        (
            "dot-hard-link",
            vec![
                entry(true, "ln", Symlink, &s),
                entry(true, "pw", Link, "./ln/secret"),
            ],
            "a `.` component",
        ),
        (
            "same-path-as-symlink",
            vec![
                entry(true, "f", Symlink, &format!("{s}/secret")),
                entry(true, "f", Regular, ""),
            ],
            "binds/data/f: repeats the path of an earlier entry",
        ),
        (
            "volume-dot-through-symlink",
            vec![
                entry(false, "ln", Symlink, &s),
                entry(false, "ln/./planted", Regular, ""),
            ],
            "a `.` component",
        ),
    ]
}

/// A project with one good backup (`good`), a sentinel folder as it was (`before`), and a
/// folder for the forged archives.
struct Scene {
    p: Project,
    sentinel: Sentinel,
    before: Vec<String>,
    good: PathBuf,
    evil: tempfile::TempDir,
}

fn scene(test: &str) -> Option<Scene> {
    let p = project(&format!("hostile-{test}"))?;
    let sentinel = Sentinel::new(test);
    let before = sentinel.snapshot();
    let id = p
        .plugin(&["create", "--stop", "--format", "json"])
        .success()
        .json()["id"]
        .to_string();
    let good = archive_of(&p, &id);
    let evil = tempfile::tempdir().unwrap();
    Some(Scene {
        p,
        sentinel,
        before,
        good,
        evil,
    })
}

#[test]
fn archives_that_write_outside_their_targets_are_refused_whichever_way_they_come() {
    let Some(Scene {
        p,
        sentinel,
        before,
        good,
        evil,
    }) = scene("entries")
    else {
        return;
    };
    std::fs::write(p.path("data/a.txt"), "changed since").unwrap();
    let state0 = state(&p);
    for (name, extra, why) in unsafe_cases(&sentinel.0) {
        let file = evil.path().join(format!(
            "backup_manual_v1_2026-01-01_00-00-0{}.tar.gz",
            name.len() % 10
        ));
        forge(&good, &file, &extra, &|_| {});
        // `import FILE` verifies before it records anything.
        let imported = p.plugin(&["import", file.to_str().unwrap()]).failure(12);
        assert!(
            imported.error_line().contains(why),
            "{name}: {}",
            imported.stderr
        );
        // A catalog row that trusts the file (its true checksum): rollback verifies first.
        let row = trust(&p, &file);
        let rolled = p.plugin(&["rollback", &row, "--yes"]).failure(12);
        let line = rolled.error_line();
        assert!(
            line.starts_with(&format!(
                "backup #{row} failed verification, nothing was changed: unsafe entry"
            )) && line.contains(why),
            "{name}: {line}"
        );
        assert_eq!(sentinel.snapshot(), before, "{name}: the sentinel changed");
        assert_eq!(state(&p), state0, "{name}: data or services changed");
        std::fs::remove_file(&file).unwrap();
    }
}

#[test]
fn targets_come_from_the_compose_file_never_from_the_manifest() {
    let Some(Scene {
        p,
        sentinel,
        before,
        good,
        evil,
    }) = scene("targets")
    else {
        return;
    };
    let s = sentinel.0.display().to_string();

    // A bind whose recorded source is an undeclared host folder: refused by name (exit 2).
    let moved = evil
        .path()
        .join("backup_manual_v1_2026-01-01_00-00-01.tar.gz");
    forge(&good, &moved, &[], &|m| {
        for v in m["volumes"].as_array_mut().unwrap() {
            if v["kind"] == "bind" {
                v["source"] = s.clone().into();
            }
        }
    });
    let row = p
        .plugin(&["import", moved.to_str().unwrap(), "--format", "json"])
        .success()
        .json()[0]["id"]
        .to_string();
    let state0 = state(&p);
    let refused = p.plugin(&["rollback", &row, "--yes"]).failure(2);
    assert_eq!(
        refused.error_line(),
        format!("backup #{row} holds bind {s}, which the project does not declare now: declare it again, or pass --exclude {s}; nothing was changed")
    );
    assert_eq!(state(&p), state0);
    assert_eq!(sentinel.snapshot(), before);

    // A named volume whose manifest says `type=none,o=bind,device=<host folder>`, restored
    // after the volume is gone: recreated as the compose file declares it (a warning says
    // the archive differs), filled, and the host folder untouched.
    let device = evil
        .path()
        .join("backup_manual_v1_2026-01-01_00-00-02.tar.gz");
    forge(&good, &device, &[], &|m| {
        for v in m["volumes"].as_array_mut().unwrap() {
            if v["kind"] == "volume" {
                v["driver_opts"] = serde_json::json!({"type": "none", "o": "bind", "device": s});
            }
        }
    });
    let row = trust(&p, &device);
    p.compose(&["rm", "-sf", "app"]).success();
    p.docker(&["volume", "rm", &volume(&p)]).success();
    let run = p.plugin(&["rollback", &row, "--yes"]).success();
    assert!(
        run.stderr.contains(&format!("warning: volume {}: its archived driver options differ from the compose file's: the compose file's are used", volume(&p))),
        "{}",
        run.stderr
    );
    let opts = p
        .docker(&[
            "volume",
            "inspect",
            "--format",
            "{{json .Options}}",
            &volume(&p),
        ])
        .success();
    assert!(
        matches!(opts.stdout.trim(), "null" | "{}"),
        "{}",
        opts.stdout
    );
    assert_eq!(
        p.in_volume(&volume(&p), "cat /v/v.txt").success().stdout,
        "volume\n"
    );
    assert_eq!(sentinel.snapshot(), before);
    let _ = IMAGE;
}

#[test]
fn a_bucket_written_by_someone_else_cannot_reach_outside_the_targets_nor_replace_a_good_archive() {
    let Some(s3) = S3Server::start("hostile", &["evil"]) else {
        return;
    };
    let Some(p) = project("hostile-bucket") else {
        return;
    };
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sentinel = Sentinel::new("bucket");
    let before = sentinel.snapshot();
    let row = p
        .plugin_env(
            &env,
            &[
                "create",
                "--stop",
                "--remote",
                "s3://evil/p",
                "--format",
                "json",
            ],
        )
        .success()
        .json();
    let id = row["id"].to_string();
    let good = archive_of(&p, &id);
    let good_bytes = std::fs::read(&good).unwrap();
    let key = row["remote_url"]
        .as_str()
        .unwrap()
        .strip_prefix("s3://evil/")
        .unwrap()
        .to_string();

    // The bucket's copy changed (same size): `rollback --from-remote` checks the download
    // against the catalog before it replaces anything.
    let mut bad = good_bytes.clone();
    let n = bad.len();
    bad[n / 2] ^= 0x40;
    let swapped = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(swapped.path(), &bad).unwrap();
    s3.boto3(&format!(
        "s3.upload_file('{}', 'evil', '{key}')",
        swapped.path().display()
    ));
    std::fs::write(p.path("data/a.txt"), "changed since").unwrap();
    let state0 = state(&p);
    let refused = p
        .plugin_env(&env, &["rollback", &id, "--yes", "--from-remote"])
        .failure(12);
    assert!(
        refused.error_line().starts_with(&format!(
            "backup #{id}: the copy at s3://evil/{key} has SHA-256 "
        )),
        "{}",
        refused.stderr
    );
    assert_eq!(
        std::fs::read(&good).unwrap(),
        good_bytes,
        "the local archive is as it was"
    );
    assert_eq!(state(&p), state0);

    // A forged archive and a sidecar that vouches for it, imported on a new host.
    let forged = tempfile::NamedTempFile::new().unwrap();
    let (_, extra, why) = unsafe_cases(&sentinel.0).remove(0);
    forge(&good, forged.path(), &extra, &|_| {});
    let forged_bytes = std::fs::read(forged.path()).unwrap();
    let sha = {
        use sha2::Digest;
        crate::hex(&sha2::Sha256::digest(&forged_bytes))
    };
    s3.boto3(&format!(
        "s3.upload_file('{}', 'evil', '{key}')\nside = json.loads(s3.get_object(Bucket='evil', Key='{key}.json')['Body'].read())\nside['sha256'] = '{sha}'\nside['size_bytes'] = {}\ns3.put_object(Bucket='evil', Key='{key}.json', Body=json.dumps(side).encode())",
        forged.path().display(),
        forged_bytes.len()
    ));
    std::fs::remove_dir_all(p.catalog().parent().unwrap()).unwrap();
    std::fs::remove_dir_all(p.path("backups")).unwrap();
    let imported = p
        .plugin_env(&env, &["import", "s3://evil/p", "--format", "json"])
        .success()
        .json();
    let new_id = imported[0]["id"].to_string();
    let rolled = p
        .plugin_env(&env, &["rollback", &new_id, "--yes"])
        .failure(12);
    assert!(rolled.error_line().contains(why), "{}", rolled.stderr);
    assert_eq!(sentinel.snapshot(), before);
    assert_eq!(state(&p), state0);
}
