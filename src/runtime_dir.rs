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

/// Why the runtime directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    /// It could not be created.
    #[error("cannot create {}: {source}", dir.display())]
    Create {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It exists but could not be inspected.
    #[error("cannot inspect {}: {source}", dir.display())]
    Inspect {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something other than a directory (a file, a symbolic link) is there.
    #[error("{} exists and is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// Another user owns it.
    #[error(
        "{} belongs to uid {owner}, not to this user ({uid}): another user could plant the pid \
         file or the upgrade socket; remove it or set server.pid_file and server.upgrade_sock",
        dir.display()
    )]
    NotOwned {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective user.
        uid: u32,
    },
    /// Other users may write into it.
    #[error("{} is writable by other users (mode {mode:o}); chmod 700 it", dir.display())]
    WritableByOthers {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Creates `dir` (mode 0700) or checks that the existing one is safe.
pub fn ensure(dir: &Path) -> Result<(), RuntimeDirError> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(RuntimeDirError::Create {
                dir: dir.into(),
                source,
            })
        }
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|source| RuntimeDirError::Inspect {
        dir: dir.into(),
        source,
    })?;
    let uid = rustix::process::geteuid().as_raw();
    if !meta.file_type().is_dir() {
        return Err(RuntimeDirError::NotADirectory(dir.into()));
    }
    if meta.uid() != uid {
        return Err(RuntimeDirError::NotOwned {
            dir: dir.into(),
            owner: meta.uid(),
            uid,
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(RuntimeDirError::WritableByOthers {
            dir: dir.into(),
            mode: meta.mode() & 0o777,
        });
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
        assert!(matches!(
            ensure(&open),
            Err(RuntimeDirError::WritableByOthers { mode: 0o777, .. })
        ));
        let link = parent.path().join("link");
        std::os::unix::fs::symlink(parent.path(), &link).unwrap();
        assert!(matches!(
            ensure(&link),
            Err(RuntimeDirError::NotADirectory(_))
        ));
        let file = parent.path().join("file");
        std::fs::write(&file, "").unwrap();
        let refused = ensure(&file).unwrap_err();
        assert!(refused
            .to_string()
            .ends_with("exists and is not a directory"));
    }
}
