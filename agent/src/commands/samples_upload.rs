//! `samples/upload {url, model?}`: packs the samples `[capture]` kept into one tar
//! archive (the export format of docs/monitoring.md, under `samples/`) and uploads it to
//! `url` by `PUT`, resuming across lost connections (`upload.rs` has the protocol), with
//! `running` replies as it goes and the archive's size and SHA-256 at the end.
//!
//! The archive is written to `<state_dir>/uploads/` first (so a resumed upload sends the
//! same bytes, and the digest is known before the first byte goes), within the free-space
//! margin of `capture.min_free_mb`, and removed when the command ends.

use std::io::Write;
use std::path::{Path, PathBuf};

use reqwest::Url;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use super::args::Args;
use super::{Context, Outcome, Progress};
use crate::capture::export;
use crate::upload::{self, Uploader};

/// Arguments of `samples/upload`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplesUploadArgs {
    /// Where to `PUT` the archive: an http(s) URL, typically pre-signed by an object store.
    #[serde(default)]
    pub url: Option<String>,
    /// Only this model's samples; all by default.
    #[serde(default)]
    pub model: Option<String>,
}

impl Args for SamplesUploadArgs {
    const COMMAND: &'static str = "samples/upload";
}

/// An upload that can start: the URL read, the store found, the client built.
pub struct Checked {
    url: Url,
    model: Option<String>,
    store: PathBuf,
    work: PathBuf,
    min_free: u64,
    uploader: Uploader,
}

/// Checks the URL, the model name, that this device has a store, and the TLS setup.
pub fn prepare(args: SamplesUploadArgs, ctx: &Context) -> Result<Checked, String> {
    let Some(text) = args.url else {
        return Err("samples/upload needs `args.url`, an http(s) URL to PUT the archive to".into());
    };
    let url = upload::parse_url(&text).map_err(|e| format!("`args.url`: {e}"))?;
    if let Some(m) = &args.model
        && !crate::config::is_valid_id(m)
    {
        return Err(format!("`args.model` is not a model name: {}", crate::mqtt::excerpt(m, 64)));
    }
    let store = crate::capture::dir(&ctx.state_dir);
    if !store.is_dir() {
        return Err(format!(
            "no captured samples on this device: {} does not exist; turn [capture] on first",
            store.display()
        ));
    }
    let uploader = Uploader::new(&url, ctx.capture.ca_file.as_deref(), upload::Limits::default())
        .map_err(|e| e.to_string())?
        .counting_in(ctx.usage.counter(crate::usage::Dest::Uploads));
    Ok(Checked {
        url,
        model: args.model,
        store,
        work: ctx.state_dir.join("uploads"),
        min_free: ctx.capture.min_free_mb.saturating_mul(1024 * 1024),
        uploader,
    })
}

/// The packed archive.
struct Packed {
    samples: u64,
    bytes: u64,
    sha256: String,
}

/// Writes the archive to `path`, refusing when it would eat into the disk margin.
fn pack(store: &Path, path: &Path, filter: &export::Filter, min_free: u64) -> Result<Packed, String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // Commands run one at a time, so an archive already here is a crashed run's leftover.
    if let Ok(old) = std::fs::read_dir(dir) {
        for e in old.filter_map(Result::ok) {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("samples-") && name.ends_with(".tar") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    // The archive is about the size of the store's files (.npy and .cap hold the same
    // values); a tenth more covers the tar headers.
    let stored: u64 = crate::capture::store::entries(store)
        .map_err(|e| format!("cannot list {}: {e}", store.display()))?
        .iter()
        .map(|e| e.bytes + 1536)
        .sum();
    let need = stored + stored / 10 + min_free;
    let free = crate::telemetry::free_space(dir)
        .map_err(|e| format!("cannot read the free space of {}: {e}", dir.display()))?;
    if free < need {
        return Err(format!(
            "the disk is tight: packing needs about {} bytes and capture.min_free_mb free, but {free} bytes are free",
            stored + stored / 10
        ));
    }
    let file = std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let w = upload::Hashing::new(std::io::BufWriter::new(file), u64::MAX);
    let (summary, mut w) =
        export::to_tar(store, w, filter, &mut |_, _| {}).map_err(|e| format!("packing the samples: {e}"))?;
    w.flush().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    w.inner.get_ref().sync_all().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let bytes = w.bytes;
    let (_, sha256) = w.finish();
    Ok(Packed { samples: summary.samples, bytes, sha256 })
}

/// Packs, uploads, reports.
pub async fn run(checked: Checked, progress: &Progress<'_>) -> Outcome {
    progress.report(0.0).await;
    let Checked { url, model, store, work, min_free, uploader } = checked;
    let archive = work.join(format!("samples-{}.tar", progress.id()));
    let filter = export::Filter { model, since_ms: None };
    let path = archive.clone();
    let packed = match tokio::task::spawn_blocking(move || pack(&store, &path, &filter, min_free)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let _ = std::fs::remove_file(&archive);
            return Outcome::Failed(e);
        }
        Err(e) => return Outcome::Failed(format!("packing the samples stopped: {e}")),
    };
    let shown = upload::redacted(&url);
    if packed.samples == 0 {
        let _ = std::fs::remove_file(&archive);
        return Outcome::Succeeded(json!({"url": shown, "samples": 0, "uploaded": false}));
    }
    tracing::info!(url = %shown, samples = packed.samples, bytes = packed.bytes, "uploading captured samples");
    let result = put_with_progress(&uploader, &url, &archive, packed.bytes, Some(progress)).await;
    let _ = std::fs::remove_file(&archive);
    match result {
        Ok(done) => Outcome::Succeeded(json!({
            "url": shown,
            "samples": packed.samples,
            "bytes": packed.bytes,
            "sha256": packed.sha256,
            "resumed": done.resumed,
        })),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Uploads `archive` (`bytes` long), with a `running` reply (when there is `progress`
/// to report to) per tenth sent: enough to see it move, few enough for a slow link.
/// Also used by `logs/upload` and `diagnostics/bundle` (and the API's, without replies).
pub(super) async fn put_with_progress(
    uploader: &Uploader,
    url: &Url,
    archive: &Path,
    bytes: u64,
    progress: Option<&Progress<'_>>,
) -> Result<upload::Done, upload::UploadError> {
    let (tx, mut rx) = watch::channel(0u64);
    let upload = uploader.put_file(url, archive, &tx);
    tokio::pin!(upload);
    let mut reported = 0.0f64;
    loop {
        tokio::select! {
            r = &mut upload => break r,
            Ok(()) = rx.changed() => {
                let fraction = *rx.borrow_and_update() as f64 / bytes.max(1) as f64;
                if fraction >= reported + 0.1 && fraction < 1.0 {
                    reported = fraction;
                    if let Some(p) = progress {
                        p.report((fraction * 100.0).round() / 100.0).await;
                    }
                }
            }
        }
    }
}
