//! Exports of the store, in a form Python reads with numpy alone: for each sample
//! `NNNNNNNNNNNNNNNN.npy` (the window the model ran on, float32, in the model input's
//! shape), `NNNNNNNNNNNNNNNN.payload` when the raw payload was kept, and one line of
//! `index.jsonl` with its metadata and those file names. The same files go into a
//! directory (`edge-agent samples export`) or a tar archive (`samples/upload`).

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use super::{npy, store};

/// Which samples to export.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this model's.
    pub model: Option<String>,
    /// Only samples kept at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
}

impl Filter {
    fn keeps(&self, meta: &store::Meta) -> bool {
        self.model.as_ref().is_none_or(|m| *m == meta.model)
            && self.since_ms.is_none_or(|t| meta.time_ms >= t)
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    pub samples: u64,
    /// Files of the store that could not be read (damaged), left out.
    pub damaged: u64,
    /// Bytes of the files written.
    pub bytes: u64,
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot list the samples in {path}: {source}")]
    List { path: String, source: std::io::Error },
    #[error("cannot write {name}: {source}")]
    Write { name: String, source: std::io::Error },
}

/// One line of `index.jsonl`: the sample's metadata, its number and its files.
pub fn index_line(seq: u64, sample: &store::Sample) -> Value {
    let mut v = serde_json::to_value(&sample.meta).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut v {
        map.insert("id".into(), json!(seq));
        map.insert("input".into(), json!(format!("{seq:016}.npy")));
        if sample.payload.is_some() {
            map.insert("payload".into(), json!(format!("{seq:016}.payload")));
        }
    }
    v
}

/// The samples of the store in `dir` that `filter` keeps, oldest first, handed to `put`
/// as named files; `index.jsonl` last. `progress` is told how many of how many files
/// are done.
pub fn each(
    dir: &Path,
    filter: &Filter,
    put: &mut dyn FnMut(&str, &[u8]) -> std::io::Result<()>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Summary, ExportError> {
    let entries = store::entries(dir)
        .map_err(|source| ExportError::List { path: dir.display().to_string(), source })?;
    let mut summary = Summary::default();
    let mut index = Vec::new();
    let mut emit = |name: &str, bytes: &[u8], summary: &mut Summary| {
        summary.bytes += bytes.len() as u64;
        put(name, bytes).map_err(|source| ExportError::Write { name: name.to_string(), source })
    };
    for (i, e) in entries.iter().enumerate() {
        progress(i, entries.len());
        let sample = match store::read(&e.path) {
            Ok(s) => s,
            // A file removed by the agent's eviction since the listing is no damage.
            Err(_) if !e.path.exists() => continue,
            Err(reason) => {
                tracing::warn!(%reason, "a captured sample is damaged; left out of the export");
                summary.damaged += 1;
                continue;
            }
        };
        if !filter.keeps(&sample.meta) {
            continue;
        }
        let line = index_line(e.seq, &sample);
        emit(
            &format!("{:016}.npy", e.seq),
            &npy::write_f32(&sample.meta.shape, &sample.input),
            &mut summary,
        )?;
        if let Some(p) = &sample.payload {
            emit(&format!("{:016}.payload", e.seq), p, &mut summary)?;
        }
        index.extend_from_slice(line.to_string().as_bytes());
        index.push(b'\n');
        summary.samples += 1;
    }
    emit("index.jsonl", &index, &mut summary)?;
    progress(entries.len(), entries.len());
    Ok(summary)
}

/// Exports into the directory `out`, which must not exist or be empty.
pub fn to_dir(
    dir: &Path,
    out: &Path,
    filter: &Filter,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Summary, ExportError> {
    let err = |source| ExportError::Write { name: out.display().to_string(), source };
    std::fs::create_dir_all(out).map_err(err)?;
    let mut put = |name: &str, bytes: &[u8]| std::fs::write(out.join(name), bytes);
    each(dir, filter, &mut put, progress)
}

/// Exports into a tar archive written to `w` (plain files, fixed times and modes, so
/// the same samples always make the same bytes).
pub fn to_tar<W: Write>(
    dir: &Path,
    w: W,
    filter: &Filter,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Summary, W), ExportError> {
    let mut builder = tar::Builder::new(w);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut put = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(0);
        builder.append_data(&mut header, format!("samples/{name}"), bytes)
    };
    let summary = each(dir, filter, &mut put, progress)?;
    let w = builder
        .into_inner()
        .map_err(|source| ExportError::Write { name: "the archive's end".into(), source })?;
    Ok((summary, w))
}
