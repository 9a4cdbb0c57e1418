//! The served directory: turning a requested path into a file inside it,
//! listing its files, and serving a file's bytes to kwik.
//!
//! Requests come from anyone who can reach the primary, so a path is
//! checked twice: lexically (no `..`, no absolute path) and after the
//! operating system resolved it (the canonical path must stay under the
//! canonical root, which catches symbolic links leading out). Digests are
//! computed once per file version (size and modification time) and kept
//! in memory: hashing a large file is the slow part of answering.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use kwik_tokio::{Bytes, Resource};
use sha2::{Digest, Sha256};

use crate::protocol::Descriptor;

/// Why a requested path gives no file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Nothing (or no regular file) there.
    NotFound(String),
    /// The path leads outside the served directory.
    Forbidden(String),
    /// The path is malformed.
    BadRequest(String),
}

/// A file's digest, valid while its size and modification time are these.
type Digested = (u64, Option<SystemTime>, [u8; 32]);

/// A directory whose regular files are served.
#[derive(Debug)]
pub struct ServedDir {
    root: PathBuf,
    digests: Mutex<HashMap<PathBuf, Digested>>,
}

impl ServedDir {
    /// Opens `dir`, checking that it is a readable directory.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let fail = |e: io::Error| format!("cannot read directory {}: {e}", dir.display());
        let root = dir.canonicalize().map_err(fail)?;
        if !root.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
        std::fs::read_dir(&root).map_err(fail)?;
        Ok(Self {
            root,
            digests: Mutex::default(),
        })
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file `request` names: a relative, `/`-separated path. Returns the
    /// normalised relative path and the file's canonical path.
    pub fn resolve(&self, request: &str) -> Result<(String, PathBuf), Lookup> {
        if request.is_empty() {
            return Err(Lookup::BadRequest("empty path".into()));
        }
        if request.contains('\0') {
            return Err(Lookup::BadRequest("path contains NUL".into()));
        }
        let mut parts = Vec::new();
        for component in Path::new(request).components() {
            match component {
                Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(Lookup::Forbidden(format!("{request}: '..' is not allowed")));
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(Lookup::Forbidden(format!(
                        "{request}: absolute paths are not allowed"
                    )));
                }
            }
        }
        if parts.is_empty() {
            return Err(Lookup::BadRequest(format!("{request}: names no file")));
        }
        let relative = parts.join("/");
        let real = match self.root.join(&relative).canonicalize() {
            Ok(real) => real,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Lookup::NotFound(format!("{relative}: no such file")));
            }
            Err(e) => return Err(Lookup::NotFound(format!("{relative}: {e}"))),
        };
        if !real.starts_with(&self.root) {
            return Err(Lookup::Forbidden(format!(
                "{relative}: leads outside the served directory"
            )));
        }
        if !real.is_file() {
            return Err(Lookup::NotFound(format!("{relative}: not a regular file")));
        }
        Ok((relative, real))
    }

    /// Every regular file under the root (following symbolic links to files
    /// that stay inside; symbolic links to directories are not entered), as
    /// relative paths, sorted.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut pending = vec![String::new()];
        while let Some(prefix) = pending.pop() {
            for entry in std::fs::read_dir(self.root.join(&prefix))? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let relative = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    pending.push(relative);
                } else if self.resolve(&relative).is_ok() {
                    out.push(relative);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Opens the file at canonical path `real` (known as `relative`) and
    /// describes it, hashing it unless its digest is cached. Blocking.
    pub fn open_file(&self, relative: &str, real: &Path) -> io::Result<(Descriptor, FileResource)> {
        let file = File::open(real)?;
        let meta = file.metadata()?;
        let (size, modified) = (meta.len(), meta.modified().ok());
        let cached = self
            .digests
            .lock()
            .expect("digest cache")
            .get(real)
            .filter(|(s, m, _)| *s == size && *m == modified)
            .map(|(_, _, d)| *d);
        let sha256 = match cached {
            Some(digest) => digest,
            None => {
                let digest = sha256_of(&file)?;
                self.digests
                    .lock()
                    .expect("digest cache")
                    .insert(real.to_path_buf(), (size, modified, digest));
                digest
            }
        };
        let descriptor = Descriptor {
            path: relative.to_string(),
            size,
            sha256,
        };
        Ok((descriptor, FileResource { file, len: size }))
    }
}

/// SHA-256 of a whole file.
fn sha256_of(mut file: &File) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// A file served by kwik: ranges are read on demand with positioned reads,
/// so concurrent transfers of one file share one handle.
#[derive(Debug)]
pub struct FileResource {
    file: File,
    len: u64,
}

impl FileResource {
    /// As a kwik resource.
    pub fn shared(self) -> Arc<dyn Resource> {
        Arc::new(self)
    }
}

impl Resource for FileResource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, offset: u64, len: usize) -> Bytes {
        let len = len.min(self.len.saturating_sub(offset) as usize);
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match self
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A file that shrank or failed is served short; the client's
                // length and digest checks catch it.
                Err(_) => break,
            }
        }
        buf.truncate(filled);
        Bytes::from(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        let served = ServedDir::open(dir.path()).unwrap();
        assert!(served.resolve("a").is_ok());
        assert!(served.resolve("./a").is_ok());
        assert!(matches!(served.resolve("../a"), Err(Lookup::Forbidden(_))));
        assert!(matches!(
            served.resolve("/etc/passwd"),
            Err(Lookup::Forbidden(_))
        ));
        assert!(matches!(served.resolve("link"), Err(Lookup::Forbidden(_))));
        assert!(matches!(served.resolve("nope"), Err(Lookup::NotFound(_))));
        assert_eq!(served.list().unwrap(), vec!["a".to_string()]);
    }
}
