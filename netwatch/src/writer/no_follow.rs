//! Output paths resolved without following any symlink, in the directory part as well as at
//! the file itself.
//!
//! netwatch runs as root and writes where `--output` says. A symlink anywhere on that path
//! that someone else could plant (in sticky /tmp, in a directory another user owns) would
//! redirect the trace of the whole host into their file. So the directory is opened with
//! `openat2(RESOLVE_NO_SYMLINKS)` (Linux 5.6+), or, where the kernel lacks it, one component
//! at a time with `O_NOFOLLOW | O_DIRECTORY`; the file is then created relative to that
//! directory's descriptor with `O_NOFOLLOW`. Both are atomic per component: nothing can be
//! swapped in between the check and the use.
//!
//! What this does not cover: the current directory a relative path starts from (it is where
//! the user already is) and `..` (never a link). A symlink on the path is refused with its
//! name and target, never resolved for the user: whoever controls the link controls where it
//! points.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// A symlink found in the directory part of an output path.
#[derive(Debug, Error)]
#[error(
    "{} is a symlink{}; netwatch follows no symlink in an output path (another user's link \
     would redirect a root-owned trace); give a path without links{}",
    link.display(),
    target.as_ref().map(|t| format!(" (to {})", t.display())).unwrap_or_default(),
    suggestion(path, link, target.as_deref())
)]
pub struct LinkInPath {
    /// The output path as given.
    pub path: PathBuf,
    /// The first component of it that is a symlink.
    pub link: PathBuf,
    /// Where the link points, as it says.
    pub target: Option<PathBuf>,
}

/// The path the user may have meant, when the link's target is absolute: said as a
/// suggestion to check, never used.
fn suggestion(path: &Path, link: &Path, target: Option<&Path>) -> String {
    match (target, path.strip_prefix(link)) {
        (Some(t), Ok(rest)) if t.is_absolute() => format!(
            ", such as {} if that directory is yours to trust",
            t.join(rest).display()
        ),
        _ => String::new(),
    }
}

impl LinkInPath {
    /// The `LinkInPath` an I/O error carries, if it is one.
    pub fn of(e: &io::Error) -> Option<&LinkInPath> {
        e.get_ref()?.downcast_ref::<LinkInPath>()
    }
}

/// How a directory is opened without following links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// One `openat2` call with `RESOLVE_NO_SYMLINKS` (Linux 5.6+).
    Openat2,
    /// One `openat(O_NOFOLLOW | O_DIRECTORY)` per component, for older kernels.
    Walk,
}

/// The directory part and the file name of `path` ("." for a bare name).
fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

fn c_path(p: &OsStr) -> io::Result<CString> {
    CString::new(p.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a path with a NUL byte in it cannot be opened",
        )
    })
}

/// `openat` returning an owned descriptor.
fn openat(
    dir: RawFd,
    name: &CString,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: a NUL-terminated name and a descriptor the caller keeps open.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                libc::c_uint::from(mode),
            )
        };
        if fd >= 0 {
            // SAFETY: a descriptor just returned by the kernel, owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

const DIR_FLAGS: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// Opens directory `dir` with `openat2(RESOLVE_NO_SYMLINKS)`; ENOSYS where the kernel (or a
/// seccomp filter) lacks it.
fn open_dir_openat2(dir: &Path) -> io::Result<OwnedFd> {
    let c = c_path(dir.as_os_str())?;
    // SAFETY: open_how is plain data; zeroed is a valid value of it.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (DIR_FLAGS | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS;
    loop {
        // SAFETY: a NUL-terminated path and an open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                libc::AT_FDCWD,
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a descriptor just returned by the kernel, owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// What `name` in directory `dir` is, without following it: its target if it is a symlink.
fn link_target(dir: RawFd, name: &CString) -> Option<PathBuf> {
    // SAFETY: stat is plain data; fstatat fills it or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated name, a descriptor the caller keeps open, a stat to fill.
    let r = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r != 0 || st.st_mode & libc::S_IFMT != libc::S_IFLNK {
        return None;
    }
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: a buffer of the length passed.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    // The link exists even when its target cannot be read (it may be gone already).
    buf.truncate(usize::try_from(n).unwrap_or(0));
    Some(PathBuf::from(OsStr::from_bytes(&buf)))
}

/// Opens directory `dir` one component at a time, refusing the first that is a symlink.
/// `path` is the whole output path, for the message.
fn open_dir_walk(dir: &Path, path: &Path) -> io::Result<OwnedFd> {
    let start = if dir.is_absolute() { "/" } else { "." };
    let mut fd = openat(libc::AT_FDCWD, &c_path(OsStr::new(start))?, DIR_FLAGS, 0)?;
    let mut walked = PathBuf::new();
    for comp in dir.components() {
        let name = match comp {
            Component::RootDir | Component::CurDir => {
                walked.push(comp);
                continue;
            }
            Component::Prefix(_) => continue,
            Component::ParentDir => OsStr::new(".."),
            Component::Normal(n) => n,
        };
        walked.push(name);
        let c = c_path(name)?;
        match openat(fd.as_raw_fd(), &c, DIR_FLAGS, 0) {
            Ok(next) => fd = next,
            Err(e) => {
                return Err(match link_target(fd.as_raw_fd(), &c) {
                    Some(target) => io::Error::other(LinkInPath {
                        path: path.to_owned(),
                        link: walked,
                        target: Some(target).filter(|t| !t.as_os_str().is_empty()),
                    }),
                    None => e,
                })
            }
        }
    }
    Ok(fd)
}

/// Opens the directory part of `path` without following any symlink in it.
pub fn open_dir_of(path: &Path, resolver: Resolver) -> io::Result<(OwnedFd, CString)> {
    let (dir, name) = split(path)?;
    let name = c_path(name)?;
    let fd = match resolver {
        Resolver::Walk => open_dir_walk(dir, path)?,
        Resolver::Openat2 => match open_dir_openat2(dir) {
            Ok(fd) => fd,
            // No openat2 here (before 5.6, or filtered by seccomp): the walk does the same.
            // A link on the way (ELOOP; ENOTDIR for the last directory, opened as the link
            // itself): the walk finds which, for the message.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS | libc::EPERM | libc::ELOOP | libc::ENOTDIR)
                ) =>
            {
                return open_dir_of(path, Resolver::Walk)
            }
            Err(e) => return Err(e),
        },
    };
    Ok((fd, name))
}

/// Opens (or creates) the file `path` for writing with the open(2) `flags` given (O_CREAT,
/// O_EXCL, O_TRUNC, O_NONBLOCK...), following no symlink anywhere on the path: a link at the
/// file itself fails with ELOOP as `O_NOFOLLOW` has it, a link in its directory part with a
/// [`LinkInPath`] naming it.
pub fn open_file(path: &Path, flags: libc::c_int, resolver: Resolver) -> io::Result<File> {
    let (dir, name) = open_dir_of(path, resolver)?;
    let fd = openat(
        dir.as_raw_fd(),
        &name,
        libc::O_WRONLY | libc::O_NOFOLLOW | flags,
        0o666,
    )?;
    Ok(File::from(fd))
}

/// Deletes the file `path`, following no symlink in its directory part (the link itself is
/// what would be deleted at the last component, as `unlink` does).
pub fn remove_file(path: &Path, resolver: Resolver) -> io::Result<()> {
    let (dir, name) = open_dir_of(path, resolver)?;
    // SAFETY: a NUL-terminated name and a descriptor held open for the call.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A directory of the test's own, removed when the test ends (also on failure).
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir()
                .join(format!("netwatch-nofollow-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const CREATE: libc::c_int = libc::O_CREAT | libc::O_EXCL;

    #[test]
    fn both_resolvers_create_through_real_directories() {
        let s = Scratch::new("real");
        std::fs::create_dir_all(s.0.join("a/b")).unwrap();
        for (i, r) in [Resolver::Openat2, Resolver::Walk].into_iter().enumerate() {
            let p = s.0.join(format!("a/./b/../b/t{i}.jsonl"));
            open_file(&p, CREATE, r).unwrap();
            assert!(s.0.join(format!("a/b/t{i}.jsonl")).is_file(), "{r:?}");
            assert_eq!(
                open_file(&p, CREATE, r).unwrap_err().kind(),
                io::ErrorKind::AlreadyExists
            );
            remove_file(&p, r).unwrap();
            assert!(!p.exists());
        }
    }

    #[test]
    fn a_link_in_the_directory_part_is_named_and_not_followed() {
        let s = Scratch::new("dirlink");
        let victim = s.0.join("victim");
        std::fs::create_dir(&victim).unwrap();
        symlink(&victim, s.0.join("share")).unwrap();
        for r in [Resolver::Openat2, Resolver::Walk] {
            let p = s.0.join("share/trace.jsonl");
            let e = open_file(&p, CREATE, r).unwrap_err();
            let link = LinkInPath::of(&e).unwrap_or_else(|| panic!("{r:?}: {e}"));
            assert_eq!(link.link, s.0.join("share"));
            assert_eq!(link.target.as_deref(), Some(victim.as_path()));
            let msg = e.to_string();
            assert!(msg.contains("share is a symlink"), "{msg}");
            assert!(
                msg.contains(&victim.join("trace.jsonl").display().to_string()),
                "{msg}"
            );
            assert!(
                !victim.join("trace.jsonl").exists(),
                "{r:?} followed the link"
            );
            assert!(remove_file(&p, r).is_err());
        }
    }

    #[test]
    fn a_link_at_the_file_itself_is_eloop_as_before() {
        let s = Scratch::new("filelink");
        std::fs::write(s.0.join("target"), b"").unwrap();
        symlink(s.0.join("target"), s.0.join("t.jsonl")).unwrap();
        for r in [Resolver::Openat2, Resolver::Walk] {
            let e = open_file(&s.0.join("t.jsonl"), libc::O_CREAT | libc::O_TRUNC, r).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{r:?}");
        }
    }

    #[test]
    fn a_relative_link_is_named_with_no_suggestion() {
        let s = Scratch::new("rel");
        std::fs::create_dir(s.0.join("real")).unwrap();
        symlink("real", s.0.join("rel")).unwrap();
        let e = open_file(&s.0.join("rel/x"), CREATE, Resolver::Walk).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("(to real)") && !msg.contains("such as"),
            "{msg}"
        );
    }

    #[test]
    fn paths_without_a_file_name_are_refused() {
        assert_eq!(
            open_file(Path::new("/"), CREATE, Resolver::Walk)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
