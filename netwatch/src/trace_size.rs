//! How big the trace file grows, said to the person who has to keep it: once while tracing,
//! when a plain (uncompressed) file passes [`GZ_HINT_BYTES`], that a `.gz` name would make it
//! about ten times smaller (80 s of churn made 392 MB of JSON); and at exit, the size of what
//! was saved. Pure decisions here; the tracer prints them.

use std::path::{Path, PathBuf};

use crate::config::OutputTarget;

/// Size of an uncompressed trace past which `.gz` is worth suggesting.
pub const GZ_HINT_BYTES: u64 = 64 << 20;

/// `512 B`, `3.4 KiB`, `392.0 MiB`, `1.2 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// The `.gz` name to suggest for a plain trace file.
fn gz_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".gz");
    PathBuf::from(name)
}

/// The hint for a plain trace file that has grown to `bytes`.
pub fn gz_hint(path: &Path, bytes: u64) -> String {
    format!(
        "the trace {} has grown to {} uncompressed; a name ending in .gz (--output {}) writes \
         it gzipped, about 10 times smaller, and --max-size/--max-files bound it",
        path.display(),
        human(bytes),
        gz_name(path).display()
    )
}

/// Watches the bytes handed to a plain trace file and says the hint once.
#[derive(Debug, Default)]
pub struct SizeWatch {
    /// The plain file being written; None for gzip, stdout or no output.
    plain: Option<PathBuf>,
    told: bool,
}

impl SizeWatch {
    pub fn new(output: Option<&OutputTarget>) -> Self {
        let plain = match output {
            Some(OutputTarget::File {
                path, gzip: false, ..
            }) => Some(path.clone()),
            _ => None,
        };
        Self { plain, told: false }
    }

    /// The hint, the first time `bytes` reaches [`GZ_HINT_BYTES`]; None otherwise.
    pub fn check(&mut self, bytes: u64) -> Option<String> {
        let path = self.plain.as_ref()?;
        if self.told || bytes < GZ_HINT_BYTES {
            return None;
        }
        self.told = true;
        Some(gz_hint(path, bytes))
    }
}

/// `412.3 MiB`, or `412.3 MiB in 3 files`: the saved trace's size at exit.
pub fn saved(sizes: &[u64]) -> String {
    let total = human(sizes.iter().sum());
    match sizes.len() {
        0 | 1 => total,
        n => format!("{total} in {n} files"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, gzip: bool) -> OutputTarget {
        OutputTarget::File {
            path: path.into(),
            gzip,
            rotation: None,
            force: false,
        }
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(3 * 1024 + 512), "3.5 KiB");
        assert_eq!(human(392 * 1024 * 1024), "392.0 MiB");
        assert_eq!(human(5 << 40), "5.0 TiB");
        assert_eq!(human(u64::MAX), "16777216.0 TiB");
        assert_eq!(saved(&[1024]), "1.0 KiB");
        assert_eq!(saved(&[1 << 20, 1 << 20, 1 << 20]), "3.0 MiB in 3 files");
        assert_eq!(saved(&[]), "0 B");
    }

    #[test]
    fn a_plain_file_is_told_once_past_the_threshold() {
        let mut w = SizeWatch::new(Some(&file("/var/tmp/t.jsonl", false)));
        assert_eq!(w.check(GZ_HINT_BYTES - 1), None);
        let hint = w.check(GZ_HINT_BYTES).unwrap();
        assert!(
            hint.contains("/var/tmp/t.jsonl has grown to 64.0 MiB"),
            "{hint}"
        );
        assert!(hint.contains("--output /var/tmp/t.jsonl.gz"), "{hint}");
        assert_eq!(w.check(10 * GZ_HINT_BYTES), None, "said once");
    }

    #[test]
    fn gzip_stdout_and_no_output_are_never_told() {
        for out in [
            Some(file("t.jsonl.gz", true)),
            Some(OutputTarget::Stdout),
            None,
        ] {
            let mut w = SizeWatch::new(out.as_ref());
            assert_eq!(w.check(u64::MAX), None);
        }
    }
}
