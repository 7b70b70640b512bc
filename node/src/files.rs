//! The node's files beside its database: the identity key and the subscribed topics, each
//! replaced atomically.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use canopy_crdt::Signer;
use canopy_transport::Keypair;

/// A file of the data directory that could not be read or written.
#[derive(Debug)]
pub(crate) struct FileError {
    /// The file, or the directory.
    pub path: PathBuf,
    /// What failed.
    pub message: String,
}

/// The identity key as a block signer.
pub(crate) fn identity_signer(keypair: &Keypair, path: &Path) -> Result<Signer, FileError> {
    let ed25519 = keypair.clone().try_into_ed25519().map_err(|_| FileError {
        path: path.to_path_buf(),
        message: "the identity key is not an ed25519 key, which blocks are signed with".into(),
    })?;
    let secret: [u8; 32] = ed25519.secret().as_ref().try_into().expect("an ed25519 secret key is 32 bytes");
    Ok(Signer::from_secret(secret))
}

pub(crate) fn load_or_create_identity(path: &Path) -> Result<Keypair, FileError> {
    let error = |message: String| FileError { path: path.to_path_buf(), message };
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            error(format!("identity key does not decode ({e}); restore it or remove it to get a new identity"))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair.to_protobuf_encoding().map_err(|e| error(e.to_string()))?;
            write_atomically(path, &bytes, true).map_err(|e| error(e.to_string()))?;
            Ok(keypair)
        }
        Err(e) => Err(error(e.to_string())),
    }
}

fn subscriptions_path(data_dir: &Path) -> PathBuf {
    data_dir.join("subscriptions")
}

/// The topics the node subscribed, one name a line. A line that is no topic name is skipped
/// with a warning naming it; a file that is not text is refused, naming the file.
pub(crate) fn read_subscriptions(data_dir: &Path) -> Result<BTreeSet<String>, FileError> {
    let path = subscriptions_path(data_dir);
    let text = match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|e| FileError {
            path: path.clone(),
            message: format!(
                "the subscribed topics' file is not text ({e}); restore it, or remove it and subscribe the topics again"
            ),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(FileError { path, message: e.to_string() }),
    };
    let mut topics = BTreeSet::new();
    for (number, line) in text.lines().enumerate().map(|(index, line)| (index + 1, line.trim())) {
        match canopy_crdt::validate_topic_name(line) {
            Ok(()) => {
                topics.insert(line.to_string());
            }
            Err(_) if line.is_empty() => {}
            Err(error) => {
                tracing::warn!(file = %path.display(), line = number, %error, "skipping a line that names no topic")
            }
        }
    }
    Ok(topics)
}

pub(crate) fn write_subscriptions(data_dir: &Path, topics: &BTreeSet<String>) -> Result<(), FileError> {
    let text: String = topics.iter().map(|t| format!("{t}\n")).collect();
    write_atomically(&subscriptions_path(data_dir), text.as_bytes(), false)
        .map_err(|e| FileError { path: data_dir.to_path_buf(), message: e.to_string() })
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file: written
/// to a temporary file, synced, then renamed over. A `private` file is readable by its owner
/// only (the node's identity key).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}
