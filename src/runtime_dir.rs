//! The default home of the pid file and the upgrade socket: a directory only the service user
//! can write, created at start.
//!
//! A pid file or upgrade socket in a world-writable directory (`/tmp`) lets another local user
//! plant a file there first: a pid that `kill` then signals, or a socket that a `--upgrade`
//! hands the listeners to. The default directory is, in order: systemd's `$RUNTIME_DIRECTORY`
//! (`RuntimeDirectory=gantry`), `/run/gantry` as root, `$XDG_RUNTIME_DIR/gantry`, and
//! `/tmp/gantry-UID`. It is created with mode 0700; an existing one must be a real directory
//! (not a symlink) owned by the service user and writable by no one else, or Gantry refuses to
//! start.

use std::fs::DirBuilder;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The default directory for this process's user.
pub fn default_dir() -> PathBuf {
    let uid = rustix::process::geteuid().as_raw();
    let env_dir = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(systemd) = env_dir("RUNTIME_DIRECTORY") {
        // systemd lists several directories separated by `:`; the first is Gantry's.
        let first = systemd
            .to_string_lossy()
            .split(':')
            .next()
            .map(PathBuf::from);
        if let Some(dir) = first {
            return dir;
        }
    }
    if uid == 0 {
        return PathBuf::from("/run/gantry");
    }
    if let Some(xdg) = env_dir("XDG_RUNTIME_DIR") {
        return xdg.join("gantry");
    }
    PathBuf::from(format!("/tmp/gantry-{uid}"))
}

/// Creates `dir` (mode 0700) or checks that the existing one is safe.
pub fn ensure(dir: &Path) -> Result<(), String> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
    let uid = rustix::process::geteuid().as_raw();
    if !meta.file_type().is_dir() {
        return Err(format!("{} exists and is not a directory", dir.display()));
    }
    if meta.uid() != uid {
        return Err(format!(
            "{} belongs to uid {}, not to this user ({uid}): another user could plant the pid \
             file or the upgrade socket; remove it or set server.pid_file and server.upgrade_sock",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by other users (mode {:o}); chmod 700 it",
            dir.display(),
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_directory_is_private() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("gantry");
        ensure(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        ensure(&dir).expect("an existing private directory is fine");
    }

    #[test]
    fn unsafe_existing_paths_are_refused() {
        let parent = tempfile::tempdir().unwrap();
        let open = parent.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(ensure(&open)
            .unwrap_err()
            .contains("writable by other users"));
        let link = parent.path().join("link");
        std::os::unix::fs::symlink(parent.path(), &link).unwrap();
        assert!(ensure(&link).unwrap_err().contains("not a directory"));
        let file = parent.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(ensure(&file).unwrap_err().contains("not a directory"));
    }
}
