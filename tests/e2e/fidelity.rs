//! What goes in comes back (issue 28): holes of sparse files, extended attributes, POSIX ACLs
//! and file capabilities, on a bind and a named volume, through each way a backup is read
//! (a capture and a direct read with `--stop`); and GNU tar reads our archives the same way.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{app_running, app_with, Project};
use crate::rollback::{archive_of, register};

/// `app` with the bind `./data` and the named volume `vol`.
fn yaml() -> String {
    app_with("\"./data:/data\", \"vol:/vol\"") + "volumes:\n  vol: {}\n"
}

fn sh(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The named volume's folder on this host.
fn volume_dir(p: &Project) -> PathBuf {
    let name = format!("{}_vol", p.name);
    let out = p
        .docker(&["volume", "inspect", "--format", "{{.Mountpoint}}", &name])
        .success();
    PathBuf::from(out.stdout.trim())
}

fn create(p: &Project, args: &[&str]) -> i64 {
    let mut all = vec!["create", "--format", "json"];
    all.extend_from_slice(args);
    p.plugin(&all).success().json()["id"].as_i64().unwrap()
}

/// A 2 GiB file with four written blocks, the rest holes.
fn make_sparse(f: &Path) {
    sh(&format!(
        "truncate -s 2G '{0}' && for at in 0 1000 300000 524287; do printf 'block %s' $at | dd of='{0}' bs=4096 seek=$at conv=notrunc status=none; done",
        f.display()
    ));
}

/// (allocated 512-byte blocks, SHA-256) of a file.
fn blocks_and_digest(f: &Path) -> (u64, String) {
    let blocks = sh(&format!("stat -c %b '{}'", f.display()));
    let sum = sh(&format!("sha256sum < '{}'", f.display()));
    (blocks.trim().parse().unwrap(), sum)
}

#[track_caller]
fn assert_same_file(before: &(u64, String), after: &(u64, String), what: &str) {
    assert_eq!(before.1, after.1, "{what}: content");
    assert!(
        after.0.abs_diff(before.0) <= 16,
        "{what}: {} blocks allocated, {} before",
        after.0,
        before.0
    );
}

#[test]
fn sparse_files_come_back_with_their_holes_through_a_capture_and_a_direct_read() {
    let Some(p) = Project::new("sparse", &yaml()) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    p.up();
    let (bind, vol) = (p.path("data/vm.img"), volume_dir(&p).join("db.img"));
    make_sparse(&bind);
    make_sparse(&vol);
    let want = (blocks_and_digest(&bind), blocks_and_digest(&vol));
    assert!(want.0 .0 < 200, "the test file is sparse: {want:?}");
    for how in [&["--stop"][..], &["--stop", "--capture", "direct"][..]] {
        let id = create(&p, how);
        std::fs::write(&bind, "overwritten").unwrap();
        std::fs::remove_file(&vol).unwrap();
        p.plugin(&["rollback", &id.to_string(), "--yes"]).success();
        assert_same_file(&want.0, &blocks_and_digest(&bind), &format!("bind {how:?}"));
        assert_same_file(
            &want.1,
            &blocks_and_digest(&vol),
            &format!("volume {how:?}"),
        );
        app_running(&p);
        // GNU tar extracts our archive's file with its holes too.
        let out = tempfile::tempdir().unwrap();
        let archive = archive_of(&p, id);
        sh(&format!(
            "tar -xzf '{}' -C '{}' binds/data/vm.img",
            archive.display(),
            out.path().display()
        ));
        let by_tar = blocks_and_digest(&out.path().join("binds/data/vm.img"));
        assert_same_file(&want.0, &by_tar, "GNU tar");
    }
}

/// Capabilities, a `user.` attribute, a `trusted.` one on a symlink, an access and a default
/// ACL on a folder, and a file below it without an ACL of its own.
fn decorate(root: &Path) {
    sh(&format!(
        r#"cd '{}' && printf '#!/bin/sh\n' > tool && chmod 755 tool && setcap cap_net_raw+ep tool \
        && echo data > f && setfattr -n user.x -v hello f && setfattr -n user.nl -v "$(printf 'a\nb')" f \
        && mkdir up && touch up/plain && setfacl -m u:1234:rwx up && setfacl -d -m u:1234:rwx up \
        && ln -s f link && setfattr -h -n trusted.t -v 1 link"#,
        root.display()
    ));
}

/// What `getcap`, `getfattr` and `getfacl` print of a tree, by relative path.
fn described(root: &Path) -> String {
    sh(&format!(
        "cd '{}' && getcap -r . | sort && getfattr -h -R -d -m - . && getfacl -R -p . 2>/dev/null",
        root.display()
    ))
}

fn undecorate(root: &Path) {
    sh(&format!(
        "cd '{}' && setcap -r tool && setfattr -x user.x f && setfacl -b -k up && setfattr -h -x trusted.t link",
        root.display()
    ));
}

#[test]
fn attributes_acls_and_capabilities_come_back_and_gnu_tar_restores_them_too() {
    let Some(p) = Project::new("xattrs", &yaml()) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    p.up();
    let (bind, vol) = (p.path("data"), volume_dir(&p));
    decorate(&bind);
    decorate(&vol);
    let want = (described(&bind), described(&vol));
    for needle in [
        "cap_net_raw=ep",
        "user.x=\"hello\"",
        "user:1234:rwx",
        "default:user:1234:rwx",
        "trusted.t",
    ] {
        assert!(want.0.contains(needle), "{needle} in {}", want.0);
    }
    for how in [&["--stop"][..], &["--stop", "--capture", "direct"][..]] {
        let id = create(&p, how);
        undecorate(&bind);
        undecorate(&vol);
        assert_ne!(described(&bind), want.0);
        p.plugin(&["rollback", &id.to_string(), "--yes"]).success();
        assert_eq!(described(&bind), want.0, "bind {how:?}");
        assert_eq!(described(&vol), want.1, "volume {how:?}");
        app_running(&p);
    }
    let out = tempfile::tempdir().unwrap();
    let archive = archive_of(&p, 1);
    sh(&format!(
        "tar --xattrs --xattrs-include='*' --acls -xzf '{}' -C '{}' binds/data 2>/dev/null",
        archive.display(),
        out.path().display()
    ));
    let by_tar = described(&out.path().join("binds/data"));
    // GNU tar reads the newline value's libarchive record as unknown: all the rest is there.
    let without_nl = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with("user.nl="))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(without_nl(&by_tar), without_nl(&want.0));
}

#[test]
fn a_tampered_attribute_value_fails_verify_even_with_the_checksum_recorded_again() {
    let Some(p) = Project::new("xattr-tamper", &yaml()) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/f"), "data").unwrap();
    sh(&format!(
        "setfattr -n user.x -v hello '{}'",
        p.path("data/f").display()
    ));
    p.up();
    let id = create(&p, &["--stop", "--capture", "direct"]);
    let original = archive_of(&p, id);
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(&original).unwrap())
        .read_to_end(&mut tar)
        .unwrap();
    let record = b"SCHILY.xattr.user.x=hello";
    let at = tar
        .windows(record.len())
        .position(|w| w == record)
        .expect("the attribute's PAX record");
    tar[at + record.len() - 5..at + record.len()].copy_from_slice(b"jello");
    let forged = original.with_file_name("forged.tar.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&forged).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap();
    let forged_id = register(&p, &forged);
    let run = p
        .plugin(&["verify", &forged_id.to_string(), "--format", "json"])
        .failure(12);
    assert!(
        run.error_line()
            .starts_with(&format!("verification failed for #{forged_id} (")),
        "{}",
        run.stderr
    );
    let result = run.json()[0]["result"].as_str().unwrap().to_string();
    assert!(
        result.ends_with("binds/data/f: extended attributes differ from the manifest"),
        "{result}"
    );
    p.plugin(&["verify", &id.to_string()]).success();
}

#[test]
fn attributes_come_back_through_the_engine_too() {
    let Some(p) = Project::new("xattrs-engine", &yaml()) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    p.up();
    let vol = volume_dir(&p);
    sh(&format!(
        "cd '{}' && echo data > f && setfattr -n user.x -v hello f && mkdir up && setfacl -m u:1234:rwx up && setfacl -d -m u:1234:rwx up",
        vol.display()
    ));
    let want = described(&vol);
    let id = create(&p, &["--stop"]);
    sh(&format!(
        "cd '{}' && setfattr -x user.x f && setfacl -b -k up",
        vol.display()
    ));
    p.plugin_env(
        &[("NUWAX_BACKUP_VOLUME_IO", "engine")],
        &["rollback", &id.to_string(), "--yes"],
    )
    .success();
    assert_eq!(described(&vol), want);
    app_running(&p);
}
