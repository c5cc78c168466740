//! The guest's initramfs: an uncompressed `newc` cpio archive (what the kernel unpacks into
//! its rootfs), written here rather than by a shell pipeline so its layout is reviewed and
//! tested like the rest.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

use crate::util::command;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Builds a newc archive in memory; parent directories are added as needed.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_owned());
        self.entry(path, S_IFDIR | 0o755, 2, (0, 0), &[]);
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parent(path);
        self.entry(
            path.trim_start_matches('/'),
            S_IFREG | mode,
            1,
            (0, 0),
            data,
        );
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entry(
            path.trim_start_matches('/'),
            S_IFLNK | 0o777,
            1,
            (0, 0),
            target.as_bytes(),
        );
    }

    /// A character device, for /dev/console: the kernel opens it for init before any
    /// devtmpfs is mounted, and without it init runs with no stdin, stdout or stderr.
    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) {
        self.parent(path);
        self.entry(
            path.trim_start_matches('/'),
            S_IFCHR | 0o600,
            1,
            (major, minor),
            &[],
        );
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.trim_matches('/').rsplit_once('/') {
            self.dir(parent);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the same inputs give the same archive
            u32::try_from(data.len()).expect("initramfs member over 4 GiB"),
            0,
            0,
            rdev.0,
            rdev.1,
            u32::try_from(namesize).expect("name length"),
            0, // check (only for the "070702" format)
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.buf
    }
}

/// The shared libraries `ldd` lists for `bin` (the loader included), by the paths the binary
/// will look for them at.
pub fn libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = command("ldd")
        .arg(bin)
        .output()
        .with_context(|| format!("could not run ldd {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "ldd {} failed: {}; is it a dynamically linked x86-64 binary?",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and `/lib64/ld-linux-x86-64.so.2
/// (0x...)`; the vDSO has no file.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// What goes into the guest.
pub struct Contents<'a> {
    /// The guest driver, run as /init.
    pub driver: &'a Path,
    pub netwatch: &'a Path,
    pub busybox: &'a Path,
    /// The host's nft, for the guest's netfilter ruleset.
    pub nft: &'a Path,
    /// Decompressed modules in load order (dependencies first).
    pub modules: &'a [PathBuf],
}

impl Contents<'_> {
    /// The dynamically linked programs, by where the guest finds them: each gets the
    /// libraries `ldd` names for it. (busybox is static and goes in on its own.)
    fn dynamic_programs(&self) -> [(&'static str, &Path); 3] {
        [
            ("init", self.driver),
            ("bin/netwatch", self.netwatch),
            ("bin/nft", self.nft),
        ]
    }
}

/// Writes the archive to `out`.
pub fn build(c: &Contents<'_>, out: &Path) -> Result<()> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("could not read {}", p.display()));
    let mut cpio = Cpio::new();
    for d in ["dev", "proc", "sys", "tmp", "run"] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &read(c.busybox)?);
    // For a human poking at a kept guest; the driver calls busybox by its full path.
    cpio.symlink("bin/sh", "busybox");
    let mut libs = BTreeSet::new();
    for (at, bin) in c.dynamic_programs() {
        cpio.file(at, 0o755, &read(bin)?);
        libs.extend(libraries(bin)?);
    }
    for lib in &libs {
        // Read through symlinks: the guest gets the file at the path the loader asks for.
        cpio.file(&lib.to_string_lossy(), 0o755, &read(lib)?);
    }
    let mut order = String::new();
    for (i, m) in c.modules.iter().enumerate() {
        let name = format!(
            "modules/{i:02}-{}",
            m.file_name().unwrap_or_default().to_string_lossy()
        );
        cpio.file(&name, 0o644, &read(m)?);
        order.push_str(&format!("/{name}\n"));
    }
    cpio.file("modules/order", 0o644, order.as_bytes());
    fs::write(out, cpio.finish()).with_context(|| format!("could not write {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_field(entry: &[u8], i: usize) -> u32 {
        let s = std::str::from_utf8(&entry[6 + 8 * i..14 + 8 * i]).unwrap();
        u32::from_str_radix(s, 16).unwrap()
    }

    #[test]
    fn newc_entries_are_aligned_with_parents_first() {
        let mut c = Cpio::new();
        c.file("/bin/x", 0o755, b"hello");
        c.symlink("bin/sh", "busybox");
        let a = c.finish();
        assert_eq!(a.len() % 4, 0);
        // First the implied directory "bin".
        assert_eq!(&a[..6], b"070701");
        assert_eq!(header_field(&a, 1), S_IFDIR | 0o755);
        assert_eq!(header_field(&a, 11), 4); // "bin\0"
        assert_eq!(&a[110..113], b"bin");
        // 110 + 4 = 114, padded to 116; no data.
        let file = &a[116..];
        assert_eq!(header_field(file, 1), S_IFREG | 0o755);
        assert_eq!(header_field(file, 6), 5);
        assert_eq!(&file[110..116], b"bin/x\0");
        // 110 + 6 = 116 (aligned), then the data padded to 8.
        assert_eq!(&file[116..121], b"hello");
        assert_eq!(&file[121..124], &[0, 0, 0]);
        let link = &file[124..];
        assert_eq!(header_field(link, 1), S_IFLNK | 0o777);
        let s = String::from_utf8_lossy(&a);
        assert!(s.contains("bin/sh\0"));
        assert!(s.contains("busybox"));
        assert!(
            s.ends_with("TRAILER!!!\0\0\0\0"),
            "{:?}",
            &s[s.len() - 16..]
        );
    }

    #[test]
    fn directories_are_written_once_and_devices_carry_their_numbers() {
        let mut c = Cpio::new();
        c.dir("a/b");
        c.dir("/a/b/");
        c.file("a/b/f", 0o644, b"");
        c.char_dev("dev/console", 5, 1);
        let a = c.finish();
        let s = String::from_utf8_lossy(&a);
        assert_eq!(s.matches("a/b\0").count(), 1);
        let dev = s
            .find("070701")
            .map(|_| s.rfind("dev/console").unwrap() - 110)
            .unwrap();
        assert_eq!(header_field(&a[dev..], 1), S_IFCHR | 0o600);
        assert_eq!(
            (header_field(&a[dev..], 9), header_field(&a[dev..], 10)),
            (5, 1)
        );
    }

    #[test]
    fn ldd_output_gives_every_file_and_skips_the_vdso() {
        let libs = parse_ldd(
            "\tlinux-vdso.so.1 (0x00007ffd)\n\
             \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f06)\n\
             \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f06)\n\
             \t/lib64/ld-linux-x86-64.so.2 (0x00007f06)\n",
        );
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }
}
