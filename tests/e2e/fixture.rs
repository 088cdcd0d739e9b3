//! An archive made by release 0.1 (before typed records) still verifies, imports and rolls
//! back, exactly: owners, modes, times, links and bytes.
use std::path::{Path, PathBuf};

use crate::harness::{describe_tree, Project};

const NAME: &str = "nwx-fixture-v1";
const ARCHIVE: &str = "backup_manual_v1.0.0_2026-11-28_06-00-25.tar.gz";

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/v1")
        .join(rel)
}

#[test]
fn an_archive_of_release_0_1_verifies_imports_and_rolls_back() {
    // The manifest names these paths: the project must live where it was made.
    let yaml = std::fs::read_to_string(fixture("compose.yaml")).unwrap();
    let Some(p) = Project::at(NAME, PathBuf::from("/tmp/nwx-fixture-v1"), &yaml) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/a.txt"), "changed since").unwrap();
    std::fs::write(p.path("data/new.txt"), "written later").unwrap();
    p.up();
    p.compose(&[
        "exec",
        "-T",
        "db",
        "sh",
        "-c",
        "echo later > /var/lib/db/rows",
    ])
    .success();
    std::fs::create_dir_all(p.path("backups")).unwrap();
    std::fs::copy(fixture(ARCHIVE), p.path("backups").join(ARCHIVE)).unwrap();

    let rows = p
        .plugin(&["import", "backups", "--format", "json"])
        .success()
        .json();
    assert_eq!(rows[0]["project"], NAME);
    assert_eq!(rows[0]["service_version"], "1.0.0");
    let id = rows[0]["id"].to_string();
    p.plugin(&["verify", &id]).success();
    p.plugin(&["rollback", &id, "--yes"]).success();

    let tree = describe_tree(&p.path("data"));
    let expected = [
        " dir 755 0:0",
        "a.txt file 16 bytes 644 0:0 1767323045",
        "link link->a.txt 777 0:0",
        "sub dir 750 0:0",
        "sub/b.txt file 7 bytes 600 999:999 1767323045",
    ];
    assert_eq!(tree.len(), expected.len(), "{tree:#?}");
    for (line, want) in tree.iter().zip(expected) {
        assert!(line.starts_with(want), "{line} does not start with {want}");
    }
    assert_eq!(
        std::fs::read_to_string(p.path("data/a.txt")).unwrap(),
        "fixture bind v1\n"
    );
    let vol = p.volume_tree(&format!("{NAME}_db"));
    assert!(
        vol.iter()
            .any(|l| l.starts_with("./rows|regular file|644|0:0|18|1767323045")),
        "{vol:#?}"
    );
    assert!(
        vol.iter()
            .any(|l| l.starts_with("./wal|directory|700|70:70")),
        "{vol:#?}"
    );
    assert_eq!(
        p.in_volume(&format!("{NAME}_db"), "cat /v/rows")
            .success()
            .stdout,
        "fixture volume v1\n"
    );
    assert_eq!(p.states("db"), [format!("{NAME}-db-1 running")]);
}
