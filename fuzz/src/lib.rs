//! What the fuzz targets share: splitting an input into length-prefixed parts, and writing
//! seeds.
//!
//! Targets whose seeds come from the code they fuzz (real pools, a live router's routes)
//! write them when started with `SHADOWLUN_FUZZ_SEEDS=<dir>` (and `-runs=0`, so nothing is
//! fuzzed): `scripts/ci.d/35-fuzz.sh` does that before each run, so the seeds always follow
//! the current formats.

use std::path::{Path, PathBuf};

/// The variable naming the directory a target writes its seeds to.
pub const SEEDS_VAR: &str = "SHADOWLUN_FUZZ_SEEDS";

/// The seed directory, when one was asked for.
pub fn seed_dir() -> Option<PathBuf> {
    std::env::var_os(SEEDS_VAR).map(PathBuf::from)
}

/// Writes seed `name` into `dir` (created if missing).
///
/// # Panics
/// If the file cannot be written: a seed run that writes nothing must not look successful.
pub fn write_seed(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

/// Reads an input as a sequence of parts, each a little-endian `u32` length and that many
/// bytes (a length past the end takes what is left).
#[derive(Debug)]
pub struct Parts<'a>(pub &'a [u8]);

impl<'a> Parts<'a> {
    /// The next part (empty once the input is used up).
    pub fn next_part(&mut self) -> &'a [u8] {
        let Some((len, rest)) = self.0.split_first_chunk::<4>() else {
            self.0 = &[];
            return &[];
        };
        let n = (u32::from_le_bytes(*len) as usize).min(rest.len());
        let (part, rest) = rest.split_at(n);
        self.0 = rest;
        part
    }

    /// A little-endian `u32` (zero-padded at the end of the input).
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let n = self.0.len().min(4);
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        u32::from_le_bytes(b)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Joins parts the way [`Parts`] reads them.
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// A temporary directory in memory (`/dev/shm` when there is one), so file-backed targets do
/// not wear a disk.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    if shm.is_dir() {
        b.tempdir_in(shm)
    } else {
        b.tempdir()
    }
    .expect("a temporary directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_read_back_what_join_wrote() {
        let j = join(&[b"abc", b"", b"de"]);
        let mut p = Parts(&j);
        assert_eq!(p.next_part(), b"abc");
        assert_eq!(p.next_part(), b"");
        assert_eq!(p.next_part(), b"de");
        assert!(p.is_empty());
        assert_eq!(p.next_part(), b"");
    }
}
