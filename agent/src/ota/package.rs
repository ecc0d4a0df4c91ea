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
use edge_infer::engine::spec::ModelSpec;

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
    // Made here, so that only a directory this call made is removed on error.
    std::fs::create_dir(dest).map_err(|e| OtaError::io(dest, e))?;
    let result = unpack_inner(tar_path, dest);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

fn unpack_inner(tar_path: &Path, dest: &Path) -> Result<(), OtaError> {
    let bad = |reason: String| OtaError::Package { path: tar_path.to_path_buf(), reason };
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
        edge_spool::durable::sync_dir(d).map_err(|e| OtaError::io(d, e))?;
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
    fn unpacking_into_an_existing_directory_is_refused_and_leaves_it_alone() {
        let (bytes, _) = pack(&demo()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let tar_path = tmp.path().join("p.tar");
        std::fs::write(&tar_path, &bytes).unwrap();
        let dest = tmp.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("keep"), b"not ours").unwrap();
        assert!(unpack(&tar_path, &dest).is_err());
        assert_eq!(std::fs::read(dest.join("keep")).unwrap(), b"not ours");
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

/// Property tests of unpacking: well-formed packages come out exactly as packed, and no
/// archive, however hostile or damaged, makes the agent panic or write outside the
/// destination.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    use crate::testing::proptest_config as config;

    /// One path segment: anything a file name may be but `.` and `..`.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z0-9_.-]{1,12}", "[^/\\x00]{1,8}", Just("model.onnx".to_string())]
            .prop_filter("not . or ..", |s| s != "." && s != "..")
    }

    /// A package's files: `model.toml` and more, with no file where another needs a
    /// directory.
    fn tree() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
        let path = prop::collection::vec(segment(), 1..4).prop_map(|s| s.join("/"));
        prop::collection::btree_map(path, prop::collection::vec(any::<u8>(), 0..600), 0..8).prop_map(
            |mut files| {
                files.insert("model.toml".into(), b"name = \"m\"\n".to_vec());
                let names: Vec<String> = files.keys().cloned().collect();
                // A file whose path passes through another file cannot exist: drop it.
                files.retain(|name, _| !names.iter().any(|other| name.starts_with(&format!("{other}/"))));
                files
            },
        )
    }

    /// Every file and directory under `dir` (relative), refusing anything else.
    fn walk(dir: &Path, rel: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
        for entry in std::fs::read_dir(dir.join(rel)).expect("read_dir") {
            let entry = entry.expect("entry");
            let name = rel.join(entry.file_name());
            let kind = entry.file_type().expect("file type");
            let key = name.to_string_lossy().into_owned();
            if kind.is_dir() {
                out.insert(key, None);
                walk(dir, &name, out);
            } else {
                assert!(kind.is_file(), "{key} is neither a file nor a directory");
                out.insert(key, Some(std::fs::read(entry.path()).expect("read")));
            }
        }
    }

    proptest! {
        #![proptest_config(config(64))]

        #[test]
        fn well_formed_packages_unpack_exactly(files in tree(), with_dirs in any::<bool>()) {
            let mut builder = tar::Builder::new(Vec::new());
            builder.mode(tar::HeaderMode::Deterministic);
            if with_dirs {
                let dirs: std::collections::BTreeSet<String> = files
                    .keys()
                    .flat_map(|f| {
                        let parts: Vec<&str> = f.split('/').collect();
                        (1..parts.len()).map(move |n| parts[..n].join("/"))
                    })
                    .collect();
                for d in dirs {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    builder.append_data(&mut h, &d, &[][..]).expect("dir entry");
                }
            }
            for (name, data) in &files {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                builder.append_data(&mut h, name, data.as_slice()).expect("file entry");
            }
            let bytes = builder.into_inner().expect("tar");
            let tmp = tempfile::tempdir().expect("temp dir");
            let tar_path = tmp.path().join("p.tar");
            std::fs::write(&tar_path, &bytes).expect("write");
            let dest = tmp.path().join("out");
            unpack(&tar_path, &dest).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut got = BTreeMap::new();
            walk(&dest, Path::new(""), &mut got);
            let got_files: BTreeMap<String, Vec<u8>> =
                got.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
            prop_assert_eq!(got_files, files);
        }
    }

    /// A tar entry written byte by byte, as an attacker would: any name, type, link name
    /// and declared size, with any amount of data behind it.
    #[derive(Debug, Clone)]
    struct RawEntry {
        name: String,
        kind: u8,
        link: String,
        declared: u64,
        data: Vec<u8>,
    }

    /// Names that try to get out: `..` in every position, absolute names (into the test's
    /// own directory, `@OUTER@`), `.` and empty segments, and plain ones.
    fn hostile_name() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "model.toml",
                "a",
                "a/b",
                "dir/",
                "../x",
                "../../x",
                "../../../../x",
                "../../../../../x",
                "a/../../../../../x",
                "a/../b",
                "./model.toml",
                "@OUTER@/abs",
                "@OUTER@/sandbox/a/x",
                "a//b",
                "",
                "..",
                ".",
                "a/./b",
                "/",
                "model.toml/x",
                "link/x",
                "hard",
                "link",
            ])
            .prop_map(str::to_string),
            "[a-z./]{1,20}",
        ]
    }

    fn raw_entry() -> impl Strategy<Value = RawEntry> {
        // Regular (old and new style), hard link, symlink, char, block, directory, FIFO,
        // contiguous, GNU sparse, GNU long name/link, PAX headers.
        let kind = prop::sample::select(b"0\x0012345367SLKxgV".to_vec());
        let declared = prop_oneof![0u64..600, Just(1 << 40), Just(u64::from(u32::MAX)), any::<u64>()];
        (hostile_name(), kind, hostile_name(), declared, prop::collection::vec(any::<u8>(), 0..700))
            .prop_map(|(name, kind, link, declared, data)| RawEntry { name, kind, link, declared, data })
    }

    fn raw_tar(entries: &[RawEntry], outer: &Path, end_marker: bool) -> Vec<u8> {
        let outer = outer.to_string_lossy();
        let mut out = Vec::new();
        for e in entries {
            let mut h = tar::Header::new_gnu();
            let name = e.name.replace("@OUTER@", &outer);
            let link = e.link.replace("@OUTER@", &outer);
            let old = h.as_old_mut();
            let n = name.len().min(old.name.len());
            old.name[..n].copy_from_slice(&name.as_bytes()[..n]);
            let n = link.len().min(old.linkname.len());
            old.linkname[..n].copy_from_slice(&link.as_bytes()[..n]);
            old.linkflag[0] = e.kind;
            h.set_mode(0o644);
            // Octal fits 11 digits; a larger size goes in GNU's binary form.
            h.set_size(e.declared);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(&e.data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        if end_marker {
            out.extend_from_slice(&[0; 1024]);
        }
        out
    }

    /// Damage: bytes flipped at some offsets, and the archive cut somewhere.
    #[derive(Debug, Clone)]
    struct Damage {
        flips: Vec<(prop::sample::Index, u8)>,
        cut: Option<prop::sample::Index>,
    }

    fn damage() -> impl Strategy<Value = Damage> {
        let flips = prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4);
        (flips, prop::option::weighted(0.3, any::<prop::sample::Index>()))
            .prop_map(|(flips, cut)| Damage { flips, cut })
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn no_archive_escapes_the_destination_or_panics(
            entries in prop::collection::vec(raw_entry(), 0..6),
            end_marker in any::<bool>(),
            damage in damage(),
            valid_first in any::<bool>(),
        ) {
            let outer = tempfile::tempdir().expect("temp dir");
            let root = outer.path();
            let mut bytes = Vec::new();
            if valid_first {
                // A real package in front, so the hostile entries come after valid ones.
                let mut b = tar::Builder::new(Vec::new());
                let mut h = tar::Header::new_gnu();
                h.set_size(4);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, "model.toml", &b"x=1\n"[..]).expect("entry");
                bytes = b.into_inner().expect("tar");
                bytes.truncate(bytes.len() - 1024);
            }
            bytes.extend(raw_tar(&entries, root, end_marker));
            if !bytes.is_empty() {
                for (at, mask) in &damage.flips {
                    let i = at.index(bytes.len());
                    bytes[i] ^= mask;
                }
                if let Some(cut) = &damage.cut {
                    bytes.truncate(cut.index(bytes.len()));
                }
            }
            let tar_path = root.join("p.tar");
            std::fs::write(&tar_path, &bytes).expect("write");
            let dest = root.join("sandbox/a/b/c/dest");
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");

            let result = unpack(&tar_path, &dest);

            // Outside the destination, nothing changed: the only entries under the test's
            // directory are the archive and the path down to the destination.
            let mut seen = BTreeMap::new();
            walk(root, Path::new(""), &mut seen);
            let outside: Vec<&String> = seen
                .keys()
                .filter(|k| !k.starts_with("sandbox/a/b/c/dest/") && k.as_str() != "sandbox/a/b/c/dest")
                .collect();
            prop_assert_eq!(outside, vec!["p.tar", "sandbox", "sandbox/a", "sandbox/a/b", "sandbox/a/b/c"]);
            match result {
                Ok(()) => {
                    prop_assert!(dest.join("model.toml").is_file());
                    // Unpacked bytes come from the archive: never more than it holds.
                    let total: u64 = seen.values().flatten().map(|v| v.len() as u64).sum::<u64>() - bytes.len() as u64;
                    prop_assert!(total <= bytes.len() as u64, "{total} bytes out of a {}-byte archive", bytes.len());
                }
                Err(e) => {
                    prop_assert!(!dest.exists(), "a refused package leaves no directory ({e})");
                    prop_assert!(matches!(e, OtaError::Package { .. } | OtaError::Io { .. }), "{e}");
                }
            }
        }
    }
}
