//! The blocking side of the file sink: open the target, append one batch, and undo a
//! batch that was only partly written. Called from a blocking thread, never from the
//! async runtime.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where the lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    pub(crate) fn new(path: &Path) -> Target {
        if path == Path::new("-") {
            Target::Stdout
        } else {
            Target::File(path.to_path_buf())
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Stdout => f.write_str("standard output"),
            Target::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// An open target.
pub(crate) enum Writer {
    Stdout,
    File {
        file: File,
        /// The file's length after the last batch that was written whole: a failed batch
        /// is cut back to it, so a retry does not leave half a batch (or half a line)
        /// in front of the whole one.
        len: u64,
    },
}

impl Writer {
    /// Open `target` for appending, creating the file and its missing parent directories.
    pub(crate) fn open(target: &Target) -> io::Result<Writer> {
        let path = match target {
            Target::Stdout => return Ok(Writer::Stdout),
            Target::File(path) => path,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Writer::File { file, len })
    }

    /// Append `bytes` (whole lines) with one write, then fsync if asked. On an error the
    /// file is cut back to where it was before (best effort) and the error returned; the
    /// caller drops this writer and opens a new one for the retry.
    pub(crate) fn append(&mut self, bytes: &[u8], fsync: bool) -> io::Result<()> {
        match self {
            Writer::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Writer::File { file, len } => {
                let written =
                    file.write_all(bytes)
                        .and_then(|()| if fsync { file.sync_data() } else { Ok(()) });
                match written {
                    Ok(()) => {
                        *len += bytes.len() as u64;
                        Ok(())
                    }
                    Err(e) => {
                        // The batch will be retried whole; what reached the file of it
                        // would be a torn or duplicated prefix.
                        let _ = file.set_len(*len);
                        Err(e)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sluice-file-writer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn dash_is_stdout() {
        assert_eq!(Target::new(Path::new("-")), Target::Stdout);
        assert_eq!(
            Target::new(Path::new("./-")),
            Target::File(PathBuf::from("./-"))
        );
    }

    #[test]
    fn opening_creates_parents_and_appends() {
        let dir = scratch("append");
        let path = dir.join("a/b/out.jsonl");
        let target = Target::File(path.clone());
        let mut w = Writer::open(&target).unwrap();
        w.append(b"1\n", false).unwrap();
        drop(w);
        let mut w = Writer::open(&target).unwrap();
        assert!(matches!(w, Writer::File { len: 2, .. }));
        w.append(b"2\n3\n", true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n3\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_parent_that_is_a_file_is_an_error() {
        let dir = scratch("parent");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("plain"), "x").unwrap();
        let e = Writer::open(&Target::File(dir.join("plain/out.jsonl")))
            .err()
            .unwrap();
        assert!(e.kind() != io::ErrorKind::NotFound, "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
