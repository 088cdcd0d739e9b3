//! Encryption at rest with age: archives and safety backups that only the private key opens,
//! read by Debian's `age`, and refused (exit 15, or 12 when tampered) before any change.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{describe_tree, wait_for_file, Project, Tmux};

const YAML: &str = r#"name: {name}
services:
  db:
    image: {image}
    command: {daemon}
    restart: always
    volumes:
      - ./data:/data
      - dbvol:/v
volumes:
  dbvol: {}
x-nuwax-backup:
  encrypt:
    recipients_file: recipients.txt
"#;

/// A key made by Debian's `age-keygen`, outside the project (keys do not live with backups).
struct Key {
    _dir: tempfile::TempDir,
    path: PathBuf,
    public: String,
}

fn keygen() -> Key {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.txt");
    let made = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .unwrap();
    assert!(made.status.success(), "age-keygen (Debian's age) is needed");
    let public = Command::new("age-keygen")
        .arg("-y")
        .arg(&path)
        .output()
        .unwrap();
    let public = String::from_utf8(public.stdout).unwrap().trim().to_string();
    Key {
        _dir: dir,
        path,
        public,
    }
}

fn project(test: &str, recipients: &[&Key]) -> Option<Project> {
    let p = Project::new(test, YAML)?;
    let lines: Vec<String> = recipients.iter().map(|k| k.public.clone()).collect();
    std::fs::write(
        p.path("recipients.txt"),
        format!("# who opens backups\n{}\n", lines.join("\n")),
    )
    .unwrap();
    std::fs::create_dir_all(p.path("data/db")).unwrap();
    // Incompressible, so the archive spans several 64 KiB age chunks.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..400_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(p.path("data/db/table"), noise).unwrap();
    std::fs::write(p.path("data/conf"), "v1").unwrap();
    p.up();
    p.in_volume(&format!("{}_dbvol", p.name), "echo v1 > /v/state")
        .success();
    Some(p)
}

fn id_arg(k: &Key) -> String {
    format!("--identity={}", k.path.display())
}

fn created(p: &Project, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["create", "--stop", "--format", "json"];
    args.extend_from_slice(extra);
    p.plugin(&args).success().json()
}

fn set_sha(p: &Project, id: i64, file: &Path) {
    let sum = crate::hex(&<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(file).unwrap(),
    ));
    let size = std::fs::metadata(file).unwrap().len() as i64;
    p.catalog_db()
        .execute(
            "UPDATE backups SET sha256 = ?1, size_bytes = ?2 WHERE id = ?3",
            rusqlite::params![sum, size, id],
        )
        .unwrap();
}

/// Everything a rollback could change: the bind's tree and bytes, the volume.
fn state(p: &Project) -> (Vec<String>, Vec<u8>, Vec<String>) {
    (
        describe_tree(&p.path("data")),
        std::fs::read(p.path("data/db/table")).unwrap(),
        p.volume_tree(&format!("{}_dbvol", p.name)),
    )
}

#[test]
fn encrypted_backups_open_only_with_the_key_and_age_reads_them() {
    let key = keygen();
    let other = keygen();
    let Some(p) = project("encrypt", &[&key]) else {
        return;
    };
    let row = created(&p, &[]);
    let file = PathBuf::from(row["file_path"].as_str().unwrap());
    assert!(file.to_string_lossy().ends_with(".tar.gz.age"), "{file:?}");
    assert_eq!(row["encrypted"], true);
    assert_eq!(row["recipients"], serde_json::json!([key.public]));
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
    let stored: Vec<String> = std::fs::read_dir(p.path("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        stored
            .iter()
            .all(|n| n.ends_with(".age") || n.ends_with(".age.json")),
        "{stored:?}"
    );
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}.json", file.display())).unwrap())
            .unwrap();
    assert_eq!(sidecar["encrypted"], true);
    assert_eq!(sidecar["sha256"], row["sha256"]);
    assert!(sidecar.get("file_path").is_none() && sidecar.get("project_dir").is_none());

    // Debian's age opens it with the key; plain tar lists the result.
    let listed = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i '{}' '{}' | tar -tzf -",
            key.path.display(),
            file.display()
        ))
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && names.contains("binds/data/db/table"),
        "{names}"
    );

    // Without a key: checksum only, which a prune does not count as verified; --full needs it.
    let id = row["id"].to_string();
    let v = p
        .plugin(&["verify", &id, "--format", "json"])
        .success()
        .json();
    assert_eq!(v[0]["result"], "checksum-only");
    p.plugin(&["verify", &id, "--full"]).failure(15);
    let v = p
        .plugin(&["verify", &id, &id_arg(&key), "--format", "json"])
        .success()
        .json();
    assert_eq!(v[0]["result"], "ok");

    // Rollback: refused before any change without the key or with another; exact with it.
    let before = state(&p);
    std::fs::write(p.path("data/db/table"), "damaged by an upgrade").unwrap();
    p.in_volume(&format!("{}_dbvol", p.name), "echo v2 > /v/state")
        .success();
    let changed = state(&p);
    let none = p.plugin(&["rollback", &id, "--yes"]).failure(15);
    assert_eq!(
        none.error_line(),
        format!(
            "{} is encrypted: pass --identity FILE (or set NUWAX_BACKUP_IDENTITY) with a key it is encrypted to",
            file.display()
        )
    );
    let wrong = p
        .plugin(&["rollback", &id, "--yes", &id_arg(&other)])
        .failure(15);
    assert_eq!(
        wrong.error_line(),
        format!(
            "the identity in {} does not open this backup: it is encrypted to other keys (see `list --format json`, field recipients)",
            other.path.display()
        )
    );
    assert_eq!(state(&p), changed, "a refused rollback changed something");
    p.plugin(&["rollback", &id, "--yes", &id_arg(&key)])
        .success();
    assert_eq!(state(&p), before);

    // The safety backup is encrypted too, and the same key opens it.
    let list = p.plugin(&["list", "--format", "json"]).success().json();
    let safety = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["backup_type"] == "pre-rollback")
        .cloned()
        .unwrap();
    assert_eq!(safety["encrypted"], true);
    let sfile = safety["file_path"].as_str().unwrap();
    assert!(std::fs::read(sfile)
        .unwrap()
        .starts_with(b"age-encryption.org/v1\n"));
    let sid = safety["id"].to_string();
    p.plugin(&["verify", &sid, &id_arg(&key)]).success();

    // A fresh catalog imports the folder from the sidecars, with no key.
    let fresh = p.path("fresh.db");
    let imported = p
        .plugin(&[
            "import",
            "backups",
            "--catalog",
            fresh.to_str().unwrap(),
            "--format",
            "json",
        ])
        .success()
        .json();
    let imported = imported.as_array().unwrap();
    assert_eq!(imported.len(), 2);
    assert!(imported
        .iter()
        .all(|r| r["encrypted"] == true && r["project"] == p.name.as_str()));
}

#[test]
fn an_identity_outside_the_current_recipients_is_refused_before_any_change() {
    let current = keygen();
    let old = keygen();
    let Some(p) = project("encrypt-rcpt", &[&current]) else {
        return;
    };
    // Made for another key (the flag replaces the compose file's recipients).
    let row = created(&p, &["--recipient", &old.public]);
    assert_eq!(row["recipients"], serde_json::json!([old.public]));
    std::fs::write(p.path("data/conf"), "v2").unwrap();
    let changed = state(&p);
    let out = p
        .plugin(&["rollback", &row["id"].to_string(), "--yes", &id_arg(&old)])
        .failure(15);
    assert!(
        out.stderr.contains("not among them") && out.stderr.contains(&current.public),
        "{}",
        out.stderr
    );
    assert_eq!(state(&p), changed);
    assert_eq!(p.states("db"), [format!("{}-db-1 running", p.name)]);
    // A passphrase-protected identity without a terminal: refused, naming it.
    let locked = p.path("locked.age");
    let secret = std::fs::read_to_string(&old.path).unwrap();
    let enc =
        age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from("pw".to_string()));
    let mut w = enc
        .wrap_output(std::fs::File::create(&locked).unwrap())
        .unwrap();
    std::io::Write::write_all(&mut w, secret.as_bytes()).unwrap();
    w.finish().unwrap();
    let out = p
        .plugin(&[
            "rollback",
            &row["id"].to_string(),
            "--yes",
            &format!("--identity={}", locked.display()),
        ])
        .failure(15);
    assert!(
        out.stderr.contains("passphrase") && out.stderr.contains("locked.age"),
        "{}",
        out.stderr
    );
    assert_eq!(state(&p), changed);
}

/// Where age's payload starts: after the header's `---` line and the 16-byte nonce.
fn payload_start(bytes: &[u8]) -> usize {
    let mac = bytes.windows(4).position(|w| w == b"\n---").unwrap() + 1;
    let end = mac + bytes[mac..].iter().position(|b| *b == b'\n').unwrap() + 1;
    end + 16
}

#[test]
fn tampering_only_age_can_catch_fails_verification_and_changes_nothing() {
    let key = keygen();
    let Some(p) = project("encrypt-tamper", &[&key]) else {
        return;
    };
    let row = created(&p, &[]);
    let id = row["id"].as_i64().unwrap();
    let file = PathBuf::from(row["file_path"].as_str().unwrap());
    let good = std::fs::read(&file).unwrap();
    std::fs::write(p.path("data/conf"), "v2").unwrap();
    let changed = state(&p);
    let start = payload_start(&good);
    const CHUNK: usize = 64 * 1024 + 16;
    assert!(
        good.len() > start + 3 * CHUNK,
        "the archive spans several chunks"
    );
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    let cut = good[..start + 2 * CHUNK].to_vec();
    for damaged in [flipped, cut] {
        std::fs::write(&file, &damaged).unwrap();
        set_sha(&p, id, &file);
        let out = p
            .plugin(&["verify", &id.to_string(), "--full", &id_arg(&key)])
            .failure(12);
        assert!(
            out.stdout.contains("damaged") || out.stderr.contains("verification failed"),
            "{}",
            out.stderr
        );
        p.plugin(&["rollback", &id.to_string(), "--yes", &id_arg(&key)])
            .failure(12);
        assert_eq!(state(&p), changed, "a damaged archive changed something");
    }
    assert_eq!(p.states("db"), [format!("{}-db-1 running", p.name)]);
}

#[test]
fn a_passphrase_protected_identity_is_asked_for_on_a_terminal() {
    let key = keygen();
    let Some(p) = project("encrypt-tty", &[&key]) else {
        return;
    };
    let row = created(&p, &[]);
    std::fs::write(p.path("data/conf"), "v2").unwrap();
    let locked = p.path("locked.age");
    let secret = std::fs::read_to_string(&key.path).unwrap();
    let enc = age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from(
        "correct horse".to_string(),
    ));
    let mut w = enc
        .wrap_output(std::fs::File::create(&locked).unwrap())
        .unwrap();
    std::io::Write::write_all(&mut w, secret.as_bytes()).unwrap();
    w.finish().unwrap();
    let exit_file = p.path("exit-code");
    let cmd = format!(
        "cd {} && env DOCKER_CONFIG={} docker nuwaxbackup rollback {} --yes --identity {}; echo $? > {}; sleep 60",
        p.dir.path().display(),
        p.catalog().parent().unwrap().parent().unwrap().display(),
        row["id"],
        locked.display(),
        exit_file.display()
    );
    let term = Tmux::start(&p.name, &cmd);
    term.wait_for("assphrase");
    assert_eq!(std::fs::read_to_string(p.path("data/conf")).unwrap(), "v2");
    term.send(&["correct horse", "Enter"]);
    assert_eq!(wait_for_file(&exit_file, 90).trim(), "0");
    assert_eq!(std::fs::read_to_string(p.path("data/conf")).unwrap(), "v1");
}

#[test]
fn an_ssh_ed25519_key_encrypts_and_opens_backups() {
    let Some(p) = project("encrypt-ssh", &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "nwx", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success(), "ssh-keygen (openssh-client) is needed");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let row = created(&p, &["--recipient", public.trim()]);
    assert_eq!(row["encrypted"], true);
    assert!(row["recipients"][0]
        .as_str()
        .unwrap()
        .starts_with("ssh-ed25519 "));
    let id = row["id"].to_string();
    let identity = format!("--identity={}", key.display());
    let v = p
        .plugin(&["verify", &id, "--full", &identity, "--format", "json"])
        .success()
        .json();
    assert_eq!(v[0]["result"], "ok");
    std::fs::write(p.path("data/conf"), "v2").unwrap();
    // The project names no recipients: the safety backup is never encrypted to keys that
    // came with the backup (an imported one's came from a sidecar anyone could write).
    let refused = p.plugin(&["rollback", &id, "--yes", &identity]).failure(2);
    assert_eq!(
        refused.error_line(),
        format!("backup #{id} is encrypted and the project names no recipients for the safety backup: pass --recipient KEY (or set x-nuwax-backup.encrypt), or --no-safety-backup")
    );
    assert_eq!(std::fs::read_to_string(p.path("data/conf")).unwrap(), "v2");
    p.plugin(&[
        "rollback",
        &id,
        "--yes",
        &identity,
        "--recipient",
        public.trim(),
    ])
    .success();
    assert_eq!(std::fs::read_to_string(p.path("data/conf")).unwrap(), "v1");
}
