//! A model package: one tar file holding a model directory (`model.toml`, the model
//! file, `selftest.json` and anything else the spec reads), as the registry ships it.
//!
//! Packing is deterministic (sorted names, zero times and owners, fixed modes), so the
//! same directory always gives the same bytes and the same hash: publishing twice
//! cannot produce two different targets for one version. Unpacking trusts nothing in
//! the archive even though its hash was checked, because a signed package can still be
//! wrong: only plain files and directories, relative names without `..`, bounded sizes.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use super::OtaError;
use crate::engine::spec::ModelSpec;

/// Name of the golden vectors file a package must carry.
pub const SELFTEST_FILE: &str = "selftest.json";
/// Files a package may hold.
const MAX_ENTRIES: usize = 256;
/// Bytes of all files together once unpacked.
const MAX_UNPACKED: u64 = 4 << 30;

/// Packs `dir` into tar bytes. The directory must hold a valid `model.toml`, its model
/// file and `selftest.json`. Returns the bytes and the spec's name and version.
pub fn pack(dir: &Path) -> Result<(Vec<u8>, ModelSpec), OtaError> {
    let spec = ModelSpec::load_dir(dir)
        .map_err(|e| OtaError::Package { path: dir.to_path_buf(), reason: format!("{e}") })?;
    if !dir.join(SELFTEST_FILE).is_file() {
        return Err(OtaError::Package {
            path: dir.to_path_buf(),
            reason: format!(
                "no {SELFTEST_FILE}: devices refuse a model without golden vectors; record them with `edge-agent model selftest --model {} --record INPUTS.json`",
                dir.display()
            ),
        });
    }
    let mut files = Vec::new();
    collect(dir, Path::new(""), &mut files)?;
    files.sort();
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    for rel in files {
        let full = dir.join(&rel);
        let bytes = std::fs::read(&full).map_err(|e| OtaError::io(&full, e))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, &rel, bytes.as_slice()).map_err(|e| OtaError::io(&full, e))?;
    }
    let bytes = builder.into_inner().map_err(|e| OtaError::io(dir, e))?;
    Ok((bytes, spec.spec))
}

/// Every regular file under `dir` (relative names), refusing symlinks: a package is
/// what is in the directory, not what a link happens to point at on the publisher's disk.
fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), OtaError> {
    let dir = root.join(rel);
    let entries = std::fs::read_dir(&dir).map_err(|e| OtaError::io(&dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| OtaError::io(&dir, e))?;
        let kind = entry.file_type().map_err(|e| OtaError::io(&entry.path(), e))?;
        let name = rel.join(entry.file_name());
        if kind.is_dir() {
            collect(root, &name, out)?;
        } else if kind.is_file() {
            out.push(name);
        } else {
            return Err(OtaError::Package {
                path: entry.path(),
                reason: "not a regular file (symlinks and devices cannot be packed); copy the file in".into(),
            });
        }
    }
    Ok(())
}

/// Unpacks a package into `dest` (created; must not exist), checking every entry, and
/// forces the files to storage. On error, `dest` is removed.
pub fn unpack(tar_path: &Path, dest: &Path) -> Result<(), OtaError> {
    let result = unpack_inner(tar_path, dest);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

fn unpack_inner(tar_path: &Path, dest: &Path) -> Result<(), OtaError> {
    let bad = |reason: String| OtaError::Package { path: tar_path.to_path_buf(), reason };
    std::fs::create_dir(dest).map_err(|e| OtaError::io(dest, e))?;
    let file = std::fs::File::open(tar_path).map_err(|e| OtaError::io(tar_path, e))?;
    let mut archive = tar::Archive::new(file);
    let mut total = 0u64;
    let mut count = 0usize;
    let mut dirs = vec![dest.to_path_buf()];
    for entry in archive.entries().map_err(|e| OtaError::io(tar_path, e))? {
        let mut entry = entry.map_err(|e| bad(format!("unreadable archive: {e}")))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries")));
        }
        let name = entry.path().map_err(|e| bad(format!("bad entry name: {e}")))?.into_owned();
        if name.components().any(|c| !matches!(c, Component::Normal(_))) || name.as_os_str().is_empty() {
            return Err(bad(format!("entry `{}` is not a plain relative name", name.display())));
        }
        let target = dest.join(&name);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(|e| OtaError::io(&target, e))?;
                dirs.push(target);
            }
            tar::EntryType::Regular => {
                let size = entry.header().size().map_err(|e| bad(format!("bad size: {e}")))?;
                total += size;
                if total > MAX_UNPACKED {
                    return Err(bad(format!("unpacks to more than {MAX_UNPACKED} bytes")));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| OtaError::io(parent, e))?;
                    if !dirs.iter().any(|d| d == parent) {
                        dirs.push(parent.to_path_buf());
                    }
                }
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|e| OtaError::io(&target, e))?;
                let copied = std::io::copy(&mut (&mut entry).take(size), &mut out)
                    .map_err(|e| OtaError::io(&target, e))?;
                if copied != size {
                    return Err(bad(format!("entry `{}` is cut short", name.display())));
                }
                out.flush().map_err(|e| OtaError::io(&target, e))?;
                out.sync_all().map_err(|e| OtaError::io(&target, e))?;
            }
            other => {
                return Err(bad(format!(
                    "entry `{}` is a {other:?}; packages hold only files and directories",
                    name.display()
                )));
            }
        }
    }
    for d in dirs.iter().rev() {
        crate::durable::sync_dir(d).map_err(|e| OtaError::io(d, e))?;
    }
    if !dest.join("model.toml").is_file() {
        return Err(bad("no model.toml in the package".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/models/vibration")
    }

    #[test]
    fn packing_is_deterministic_and_round_trips() {
        let (a, spec) = pack(&demo()).unwrap();
        let (b, _) = pack(&demo()).unwrap();
        assert_eq!(a, b, "the same directory must give the same bytes");
        assert_eq!(spec.name, "vibration");
        let tmp = tempfile::tempdir().unwrap();
        let tar_path = tmp.path().join("p.tar");
        std::fs::write(&tar_path, &a).unwrap();
        let dest = tmp.path().join("out");
        unpack(&tar_path, &dest).unwrap();
        for f in ["model.toml", "model.onnx", SELFTEST_FILE] {
            assert_eq!(std::fs::read(dest.join(f)).unwrap(), std::fs::read(demo().join(f)).unwrap(), "{f}");
        }
    }

    #[test]
    fn hostile_entries_are_refused_and_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        for (name, kind) in [("../escape", tar::EntryType::Regular), ("link", tar::EntryType::Symlink)] {
            let mut builder = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_entry_type(kind);
            // `set_path` refuses `..`, as it should; write the raw name as an attacker would.
            let raw = &mut header.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            builder.append(&header, &b"x"[..]).unwrap();
            let tar_path = tmp.path().join("evil.tar");
            std::fs::write(&tar_path, builder.into_inner().unwrap()).unwrap();
            let dest = tmp.path().join("out");
            let err = unpack(&tar_path, &dest).unwrap_err().to_string();
            assert!(err.contains("plain relative name") || err.contains("files and directories"), "{err}");
            assert!(!dest.exists(), "a refused package leaves no directory");
            assert!(!tmp.path().join("escape").exists());
        }
    }

    #[test]
    fn a_directory_without_golden_vectors_cannot_be_packed() {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["model.toml", "model.onnx"] {
            std::fs::copy(demo().join(f), tmp.path().join(f)).unwrap();
        }
        let err = pack(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("selftest.json") && err.contains("--record"), "{err}");
    }
}
