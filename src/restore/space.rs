//! Free space for staging inside mount-point binds, checked before anything stops: such a
//! bind is staged on its own filesystem, which often cannot hold two copies. (An ordinary
//! bind that runs out of room while staging beside itself is undone, exit 13.)
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::archive::manifest::VolumeRecord;
use crate::exit_codes::{Code, UserError};
use crate::output::human_bytes;
use crate::storage::free_bytes;

/// What staging needs on one filesystem, named by a folder on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub filesystem: PathBuf,
    pub device: u64,
    pub needed_bytes: u64,
}

/// Bytes a volume takes once written: its data, plus a block per entry.
fn footprint(v: &VolumeRecord) -> u64 {
    v.bytes + v.file_count * 4096
}

/// The folder a bind is staged in when it is a mount point (the bind itself).
fn staging_folder(target: &Path) -> Option<PathBuf> {
    super::mount::is_mount_point(target).then(|| target.to_path_buf())
}

/// Sums what the mount-point binds of `restore` need per filesystem.
pub fn needs(restore: &[VolumeRecord]) -> Vec<Need> {
    let mut out: Vec<Need> = Vec::new();
    for v in restore.iter().filter(|v| v.kind == "bind") {
        let Some(folder) = v.source.as_deref().and_then(staging_folder) else {
            continue;
        };
        let Ok(dev) = std::fs::metadata(&folder).map(|m| m.dev()) else {
            continue;
        };
        match out.iter_mut().find(|n| n.device == dev) {
            Some(n) => n.needed_bytes += footprint(v),
            None => out.push(Need {
                filesystem: folder,
                device: dev,
                needed_bytes: footprint(v),
            }),
        }
    }
    out
}

/// Fails with `NoSpace` (exit 10), naming the filesystem, when staging does not fit.
pub fn check(restore: &[VolumeRecord]) -> Result<()> {
    for n in needs(restore) {
        let free = free_bytes(&n.filesystem)?;
        if free < n.needed_bytes {
            return Err(UserError::new(
                Code::NoSpace,
                format!(
                    "not enough space to stage the rollback on the filesystem of {}: {} free, {} needed (a copy of the archived content is staged there before the swap); free space there, or --exclude it; nothing was changed",
                    n.filesystem.display(),
                    human_bytes(free),
                    human_bytes(n.needed_bytes)
                ),
            )
            .into());
        }
    }
    Ok(())
}
