//! Key files: a node's identity key and a private network's key on disk.
//!
//! An identity key file ([`common::identity::Identity::to_file_text`]) is
//! created on first start with mode 0600 and refused, with a message that
//! says how to fix it, when its group or others may read it or its content
//! is not a key. A network key file holds 32 bytes as libp2p's swarm.key
//! does: `/key/swarm/psk/1.0.0/`, `/base16/`, then 64 hex digits.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::identity::{Identity, IdentityError};
use common::secure::NETWORK_KEY_LEN;
use tracing::info;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot create key file {path}: {error}")]
    Create {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("key file {path} may be read by others (mode {mode:o}): run `chmod 600 {path}` (and make sure nobody copied it)")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path}: {error}; move it away to create a new identity, or point --key at the right file")]
    Content { path: PathBuf, error: IdentityError },
    #[error("network key file {path} is not a network key: expected 32 bytes, or the lines \"/key/swarm/psk/1.0.0/\", \"/base16/\" and 64 hex digits (make one with `head -c 32 /dev/urandom > FILE; chmod 600 FILE`)")]
    NetworkKey { path: PathBuf },
    #[error("--insecure runs in clear text without keys: drop --key and --network-key, or drop --insecure")]
    Conflict,
}

/// Refuses a secret file that group or others may read.
fn check_private(path: &Path, file: &std::fs::File) -> Result<(), KeyFileError> {
    let mode = file
        .metadata()
        .map_err(|error| KeyFileError::Read {
            path: path.into(),
            error,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.into(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

/// Reads the identity at `path`, or creates one there (mode 0600, parent
/// folders made) when no file exists.
pub fn load_or_create_identity(path: &Path) -> Result<Identity, KeyFileError> {
    match std::fs::File::open(path) {
        Ok(file) => {
            check_private(path, &file)?;
            let text = std::fs::read_to_string(path).map_err(|error| KeyFileError::Read {
                path: path.into(),
                error,
            })?;
            Identity::from_file_text(&text).map_err(|error| KeyFileError::Content {
                path: path.into(),
                error,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let create = |error| KeyFileError::Create {
                path: path.into(),
                error,
            };
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(create)?;
            }
            let identity = Identity::generate();
            // Written whole under a temporary name, then linked into place
            // (never over a file): a process starting at the same moment
            // reads either no file or a whole one, and one key wins.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut file| {
                    file.write_all(identity.to_file_text().as_bytes())?;
                    file.sync_all()
                })
                .and_then(|()| std::fs::hard_link(&tmp, path));
            let _ = std::fs::remove_file(&tmp);
            match written {
                Ok(()) => {
                    info!(key = %path.display(), peer_id = %identity.peer_id(), "created a new node key");
                    Ok(identity)
                }
                // Another process made it first: use that one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create_identity(path)
                }
                Err(e) => Err(create(e)),
            }
        }
        Err(error) => Err(KeyFileError::Read {
            path: path.into(),
            error,
        }),
    }
}

/// The text of a network key file for `key`.
pub fn network_key_text(key: &[u8; NETWORK_KEY_LEN]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n")
}

/// Reads a network key file (refused when others may read it).
pub fn load_network_key(path: &Path) -> Result<[u8; NETWORK_KEY_LEN], KeyFileError> {
    let read = |error| KeyFileError::Read {
        path: path.into(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    check_private(path, &file)?;
    let bytes = std::fs::read(path).map_err(read)?;
    if let Ok(raw) = <[u8; NETWORK_KEY_LEN]>::try_from(bytes.as_slice()) {
        return Ok(raw);
    }
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(parse_network_key)
        .ok_or_else(|| KeyFileError::NetworkKey { path: path.into() })
}

/// The default identity key file of a node whose state lives in `dir`.
pub fn default_key_path(dir: &Path) -> PathBuf {
    dir.join("node.key")
}

/// How a node secures its connections, from its flags: clear text with
/// `insecure` (refused together with `key` or `network_key`, which would
/// then be ignored); else its identity from `key` (created there when
/// missing) or, without a file, a key made for this run only, in the
/// private network of `network_key` when given.
pub fn security(
    insecure: bool,
    key: Option<&Path>,
    network_key: Option<&Path>,
) -> Result<common::secure::Security, KeyFileError> {
    if insecure {
        if key.is_some() || network_key.is_some() {
            return Err(KeyFileError::Conflict);
        }
        return Ok(common::secure::Security::insecure());
    }
    let identity = match key {
        Some(path) => load_or_create_identity(path)?,
        None => Identity::generate(),
    };
    let network = network_key.map(load_network_key).transpose()?;
    Ok(common::secure::Security::new(identity, network))
}

fn parse_network_key(text: &str) -> Option<[u8; NETWORK_KEY_LEN]> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next()? != "/key/swarm/psk/1.0.0/" || lines.next()? != "/base16/" {
        return None;
    }
    let hex = lines.next()?;
    if lines.next().is_some() || hex.len() != 2 * NETWORK_KEY_LEN {
        return None;
    }
    let mut key = [0u8; NETWORK_KEY_LEN];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

/// Writes a new random network key to `path` (mode 0600; refuses to
/// overwrite a file).
pub fn create_network_key(path: &Path) -> Result<[u8; NETWORK_KEY_LEN], KeyFileError> {
    let create = |error| KeyFileError::Create {
        path: path.into(),
        error,
    };
    let key: [u8; NETWORK_KEY_LEN] = rand::random();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(create)?;
    file.write_all(network_key_text(&key).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(create)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_files_are_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.key");
        let made = load_or_create_identity(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            load_or_create_identity(&path).unwrap().peer_id(),
            made.peer_id()
        );
    }

    #[test]
    fn readable_or_wrong_key_files_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        load_or_create_identity(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_identity(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Permissions { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");

        std::fs::write(&path, "not a key\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_or_create_identity(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Content { .. }), "{err:?}");
        assert!(err.to_string().contains("not a p2pshare key file"), "{err}");
    }

    #[test]
    fn network_keys_round_trip_and_refuse_other_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.key");
        let key = create_network_key(&path).unwrap();
        assert_eq!(load_network_key(&path).unwrap(), key);
        assert!(create_network_key(&path).is_err(), "never overwritten");
        let other = dir.path().join("other.key");
        std::fs::write(&other, "/key/swarm/psk/1.0.0/\n/base16/\nabc\n").unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_network_key(&other),
            Err(KeyFileError::NetworkKey { .. })
        ));
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            load_network_key(&other),
            Err(KeyFileError::Permissions { .. })
        ));
    }
}
