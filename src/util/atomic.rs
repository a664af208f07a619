//! Output files: a regular file (or a new one) is written to a temporary file in its directory,
//! then renamed over it, so an interrupted run never leaves a half-written output; `-` is
//! stdout; a path that is not a regular file (a FIFO such as `>(jq .)`, `/dev/stdout`,
//! `/dev/null`) is written through, never replaced; a symlink is followed and its target
//! updated, so the link stays. New files get the usual `0666 & !umask` mode, a replaced file
//! keeps its own.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` (see the module doc for what each kind of path gets).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |w| w.write_all(bytes))
}

/// Stream content into `path`: `fill` writes into a buffered temp file that is fsynced and
/// renamed over the target only if `fill` succeeds (stdout and non-regular files are written
/// through directly).
pub fn write_with<F>(path: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        fill(&mut out).map_err(|e| Error::io("<stdout>", e))?;
        return out.flush().map_err(|e| Error::io("<stdout>", e));
    }
    let target = follow_links(path)?;
    if let Ok(m) = std::fs::metadata(&target) {
        if m.is_dir() {
            return Err(Error::io(path, std::io::Error::other("is a directory")));
        }
        if !m.is_file() {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&target)
                .map_err(|e| Error::io(path, e))?;
            let mut w = std::io::BufWriter::new(f);
            fill(&mut w).map_err(|e| Error::io(path, e))?;
            return w.flush().map_err(|e| Error::io(path, e));
        }
    }
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(path, e))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file());
        fill(&mut w).map_err(|e| Error::io(path, e))?;
        w.flush().map_err(|e| Error::io(path, e))?;
    }
    set_mode(tmp.as_file(), &target).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(&target).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// The path a chain of symlinks ends at (a dangling link names the file to create).
fn follow_links(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&p).map_err(|e| Error::io(&p, e))?;
                p = if to.is_absolute() {
                    to
                } else {
                    p.parent().unwrap_or(Path::new(".")).join(to)
                };
            }
            _ => return Ok(p),
        }
    }
    Err(Error::io(
        path,
        std::io::Error::other("too many levels of symbolic links"),
    ))
}

/// The temp file's mode: the replaced file's, or `0666 & !umask` for a new one (tempfile
/// creates 0600).
#[cfg(unix)]
fn set_mode(tmp: &std::fs::File, target: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::metadata(target) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(_) => 0o666 & !umask(),
    };
    tmp.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &std::fs::File, _: &Path) -> std::io::Result<()> {
    Ok(())
}

/// The process umask, read without changing it (`/proc/self/status`), 022 where unknown.
#[cfg(unix)]
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_string()))
        })
        .and_then(|v| u32::from_str_radix(&v, 8).ok())
        .unwrap_or(0o022)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    #[test]
    fn regular_files_are_replaced_with_the_usual_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.json");
        write(&p, b"one").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o666 & !umask()
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640,
            "a replaced file keeps its mode"
        );
        // A failing fill leaves the old content and no temp file.
        assert!(write_with(&p, |_| Err(std::io::Error::other("boom"))).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlinks_stay_and_their_target_is_updated() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("real.txt");
        std::fs::write(&target, b"old").unwrap();
        let link = d.path().join("link.txt");
        std::os::unix::fs::symlink("real.txt", &link).unwrap();
        write(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // A dangling link creates its target.
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink("made.txt", &dangling).unwrap();
        write(&dangling, b"x").unwrap();
        assert_eq!(std::fs::read(d.path().join("made.txt")).unwrap(), b"x");
        assert!(std::fs::symlink_metadata(&dangling).unwrap().file_type().is_symlink());
    }

    #[test]
    fn fifos_and_devices_are_written_through() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        write(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        assert!(
            std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(),
            "the FIFO stays a FIFO"
        );
        write(Path::new("/dev/null"), b"gone").unwrap();
        assert!(std::fs::symlink_metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
        assert!(write(d.path(), b"x").unwrap_err().to_string().contains("directory"));
    }
}
