//! Checks of a model spec: each table against itself, the tables against each other and
//! against the inputs, and the `[[stage]]` list. The checks sit above the spec's types
//! ([`super::spec`], [`super::dsp_spec`], [`super::post_spec`]) and the stages' own checks
//! ([`crate::stages`]), so every dependency runs one way: the types know nothing of what
//! checks them. Each problem says what is wrong and how to fix it, with the line of its
//! key where the text is at hand, and every problem of a spec is reported at once.

use std::path::{Component, Path, PathBuf};

use super::budget;
use super::dsp_spec::DspSpec;
use super::error::SpecError;
use super::spec::{
    ChannelOrder, ImageLayout, ImageSpec, InputFrom, InputSpec, LoadedSpec, ModelSpec, PayloadFormat,
    PostKind, PostSpec, ResizeMode, SPEC_FILE, image_axes,
};
use crate::locate::{line_of, line_of_path};

impl ModelSpec {
    /// Reads and checks `DIR/model.toml`. Checks against the ONNX graph itself happen
    /// when the model is loaded.
    pub fn load_dir(dir: &Path) -> Result<LoadedSpec, SpecError> {
        let path = dir.join(SPEC_FILE);
        let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => SpecError::Missing { path: path.clone() },
            _ => SpecError::Read { path: path.clone(), source },
        })?;
        let spec = Self::parse_bytes(&bytes, &path)?;
        let model_path = contained_file(dir, &spec.file, &path)?;
        Ok(LoadedSpec { spec, path, model_path })
    }

    /// Parses and checks a spec file's bytes, which must be UTF-8; `path` is only used
    /// in messages.
    pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<ModelSpec, SpecError> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let offset = e.valid_up_to();
            SpecError::NotUtf8 {
                path: path.to_path_buf(),
                offset,
                byte: bytes.get(offset).copied().unwrap_or_default(),
                line: 1 + bytes[..offset].iter().filter(|b| **b == b'\n').count(),
            }
        })?;
        Self::parse(text, path)
    }

    /// Parses and checks a spec; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<ModelSpec, SpecError> {
        let spec: ModelSpec = toml::from_str(text).map_err(|e| SpecError::Syntax {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(0),
            message: e.message().trim().to_string(),
        })?;
        let mut problems = spec.problems();
        problems.extend(spec.located_problems(text));
        if problems.is_empty() {
            Ok(spec)
        } else {
            Err(SpecError::Invalid { path: path.to_path_buf(), problems: problems.join("\n  ") })
        }
    }

    /// Every inconsistency of the spec on its own, each with its fix.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            out.push(format!(
                "name `{}` must be non-empty and use only A-Z a-z 0-9 . _ - (it appears in topics and paths)",
                self.name
            ));
        }
        if self.version.is_empty() {
            out.push("version must not be empty".into());
        }
        let m = &self.monitor;
        // Fewer than 100 results give histograms too noisy to tell drift (docs/monitoring.md).
        if !(100..=1_000_000).contains(&m.window) || !(1..=m.window).contains(&m.every) {
            out.push(format!(
                "monitor: window = {} and every = {} must satisfy 100 <= window <= 1000000 and 1 <= every <= window",
                m.window, m.every
            ));
        }
        if !(m.clear > 0.0 && m.clear < m.raise && m.raise <= 1.0) || m.reference < m.window {
            out.push(format!(
                "monitor: need 0 < clear ({}) < raise ({}) <= 1 and reference ({}) >= window ({})",
                m.clear, m.raise, m.reference, m.window
            ));
        }
        let data: Vec<_> = self.inputs.iter().filter(|i| i.from == InputFrom::Data).collect();
        if data.len() != 1 {
            out.push(format!(
                "exactly one input must have from = \"data\" (found {}); mark the others \"state\" or \"const\"",
                data.len()
            ));
        }
        for input in &self.inputs {
            match input.from {
                InputFrom::State if input.state_output.is_none() => out.push(format!(
                    "input `{}` has from = \"state\" but no state_output; name the output that feeds it",
                    input.name
                )),
                InputFrom::Const => match &input.value {
                    None => out.push(format!(
                        "input `{}` has from = \"const\" but no value; add value = [...]",
                        input.name
                    )),
                    Some(v) if v.len() != input.len().max(1) => out.push(format!(
                        "input `{}`: value has {} numbers but shape {:?} holds {}",
                        input.name,
                        v.len(),
                        input.shape,
                        input.len().max(1)
                    )),
                    _ => {}
                },
                _ => {}
            }
            if input.shape.contains(&0) {
                out.push(format!("input `{}`: shape {:?} has a zero dimension", input.name, input.shape));
            } else if input.bytes().is_none() {
                // A wrapped product would let a huge shape pass as a small one.
                out.push(format!(
                    "input `{}`: shape {:?} of {} is too large to count (its size overflows); no device can hold it: declare the shape the model runs at",
                    input.name,
                    input.shape,
                    input.dtype.name()
                ));
            }
        }
        if let Some(why) = outside_reason(&self.file) {
            out.push(format!(
                "file `{}` {why}: a model may only read files that travel with it in its directory; put the model file there and name it relative to model.toml (file = \"model.onnx\")",
                self.file
            ));
        }
        if let (Some(w), Some(d)) = (&self.pre.window, data.first()) {
            if w.size == 0 || w.hop == 0 {
                out.push("pre.window: size and hop must be at least 1".into());
            } else if w.context.checked_add(w.size) != Some(d.len()) {
                let hint = if d.len() > w.size {
                    format!("set pre.window.context = {}", d.len() - w.size)
                } else {
                    format!("set pre.window.size = {} and context = 0", d.len())
                };
                out.push(format!(
                    "pre.window: context {} + size {} = {} samples, but input `{}` {:?} holds {}; {hint}",
                    w.context,
                    w.size,
                    w.context.saturating_add(w.size),
                    d.name,
                    d.shape,
                    d.len()
                ));
            }
        }
        if let Some(img) = &self.pre.image {
            if img.channels != 1 && img.channels != 3 {
                out.push(format!("pre.image.channels is {}; use 1 (grey) or 3 (RGB)", img.channels));
            }
            for (key, v) in [("mean", &img.mean), ("std", &img.std)] {
                if !v.is_empty() && v.len() != img.channels {
                    out.push(format!(
                        "pre.image.{key} has {} values; give one per channel ({})",
                        v.len(),
                        img.channels
                    ));
                }
            }
            if img.std.contains(&0.0) {
                out.push("pre.image.std contains 0; a standard deviation must not be zero".into());
            }
        }
        if self.pre.format == PayloadFormat::Image && self.pre.image.is_none() {
            out.push("pre.format = \"image\" needs a [pre.image] table (width, height, ...)".into());
        }
        if let Some(s) = &self.post.segments
            && s.off > s.on
        {
            out.push(format!(
                "post.segments: off ({}) is above on ({}); hysteresis needs off <= on",
                s.off, s.on
            ));
        }
        if self.post.top_k == Some(0) {
            out.push("post.top_k must be at least 1".into());
        }
        if self.limits.max_payload_bytes == 0 {
            out.push("limits.max_payload_bytes must be at least 1".into());
        }
        out
    }

    /// Checks of ranges, images, audio and the post-processing kind; each problem starts
    /// with the line of the key it is about.
    fn located_problems(&self, text: &str) -> Vec<String> {
        let at = |key: &str| line_of_path(text, key).map(|l| format!("line {l}: ")).unwrap_or_default();
        let mut out = Vec::new();
        let mut ranges = 0;
        for (ix, input) in self.inputs.iter().enumerate() {
            let key = format!("input.{ix}.shape");
            if !input.ranges.is_empty() && input.from != InputFrom::Data {
                out.push(format!(
                    "{}input `{}`: only the data input may have a range dimension; state and constant inputs need fixed sizes",
                    at(&key),
                    input.name
                ));
            }
            for (axis, r) in &input.ranges {
                ranges += 1;
                if r.min == 0 || r.max < r.min || r.multiple_of == 0 {
                    out.push(format!(
                        "{}input `{}` dimension {axis}: {{ min = {}, max = {}, multiple_of = {} }} needs 1 <= min <= max and multiple_of >= 1",
                        at(&key),
                        input.name,
                        r.min,
                        r.max,
                        r.multiple_of
                    ));
                } else if r.lowest().is_none() {
                    out.push(format!(
                        "{}input `{}` dimension {axis}: no multiple of {} lies between {} and {}; widen the range or change multiple_of",
                        at(&key),
                        input.name,
                        r.multiple_of,
                        r.min,
                        r.max
                    ));
                }
            }
        }
        if ranges > 1 && !self.image_sides_vary() {
            out.push(format!(
                "only one dimension may be a range (found {ranges}): the engine tells its size from the number of values; give the others fixed sizes"
            ));
        }
        let data = self.inputs.iter().position(|i| i.from == InputFrom::Data);
        let data_input = data.map(|ix| (ix, &self.inputs[ix]));
        if let Some((_, d)) = data_input
            && !d.ranges.is_empty()
            && self.pre.window.is_some()
        {
            out.push(format!(
                "{}pre.window cuts windows of one size, but input `{}` is {}; give it a fixed size",
                at("pre.window"),
                d.name,
                d.shape_text()
            ));
        }
        if let Some(rate) = self.pre.sample_rate {
            if rate == 0 {
                out.push(format!(
                    "{}pre.sample_rate is 0; write the rate the model was trained at, in Hz (for example 16000)",
                    at("pre.sample_rate")
                ));
            }
            if self.pre.format == PayloadFormat::Image {
                out.push(format!(
                    "{}pre.sample_rate is for audio, and this model takes images; remove it",
                    at("pre.sample_rate")
                ));
            }
        }
        if let Some(dsp) = &self.pre.dsp {
            dsp_problems(self, dsp, data_input.map(|(_, d)| d), &at, &mut out);
        }
        if let (Some(img), Some((ix, d))) = (&self.pre.image, data_input) {
            image_problems(img, ix, d, &at, &mut out);
        }
        post_family_problems(&self.post, &at, &mut out);
        if self.post.kind == PostKind::Detection {
            let post = &self.post;
            out.extend(post.detection.clone().unwrap_or_default().problems(post.labels.len(), &at));
            let unused = [
                ("softmax", post.softmax),
                ("top_k", post.top_k.is_some()),
                ("threshold", post.threshold.is_some()),
                ("segments", post.segments.is_some()),
            ];
            let fix = "; remove it (post.detection.score_threshold sets the lowest score)";
            unused_keys("detection", &unused, fix, &at, &mut out);
        } else if self.post.detection.is_some() {
            out.push(format!(
                "{}post.detection applies only to kind = \"detection\"; add kind = \"detection\", or remove it",
                at("post.detection")
            ));
        }
        if self.post.kind == PostKind::None {
            let post = &self.post;
            let unused = [
                ("softmax", post.softmax),
                ("labels", !post.labels.is_empty()),
                ("top_k", post.top_k.is_some()),
                ("threshold", post.threshold.is_some()),
                ("segments", post.segments.is_some()),
            ];
            let fix = " (results hold the raw outputs); remove it, or remove kind = \"none\" to read the output as scores";
            unused_keys("none", &unused, fix, &at, &mut out);
        }
        out.extend(crate::stages::post_problems(&self.post, &at));
        out.extend(crate::stages::stage_problems(self, &at, &own_problems));
        // Keys the OCR kinds do not read are refused rather than silently ignored.
        if let Some(kind) = match self.post.kind {
            PostKind::TextBoxes => Some("text_boxes"),
            PostKind::Ctc => Some("ctc"),
            _ => None,
        } {
            let post = &self.post;
            let unused = [
                ("softmax", post.softmax),
                ("labels", !post.labels.is_empty()),
                ("top_k", post.top_k.is_some()),
                ("threshold", post.threshold.is_some() && post.kind != PostKind::Ctc),
                ("segments", post.segments.is_some()),
            ];
            unused_keys(kind, &unused, "; remove it", &at, &mut out);
        }
        out
    }
}

/// A problem for each key of `[post]` that is set (`keys`: name, whether set) and that
/// `post.kind = "{kind}"` does not read, each told `fix` after the kind: a key that is
/// silently ignored would hide a mistake in the spec.
fn unused_keys(
    kind: &str,
    keys: &[(&str, bool)],
    fix: &str,
    at: &dyn Fn(&str) -> String,
    out: &mut Vec<String>,
) {
    for (key, _) in keys.iter().filter(|(_, set)| *set) {
        out.push(format!(
            "{}post.{key} does nothing with post.kind = \"{kind}\"{fix}",
            at(&format!("post.{key}"))
        ));
    }
}

/// The problems of a stage's spec, checked as a model's (written out and parsed, as the
/// stage's tables would be on their own), joined; `None` if it has none.
fn own_problems(own: &ModelSpec) -> Option<String> {
    match toml::to_string(own)
        .map_err(|e| SpecError::Invalid { path: "".into(), problems: e.to_string() })
        .and_then(|text| ModelSpec::parse(&text, Path::new("stage")).map(|_| ()))
    {
        Err(SpecError::Invalid { problems, .. }) => Some(problems),
        _ => None,
    }
}

/// Checks `[pre.image]` against itself and the data input `d` (the `ix`th input).
fn image_problems(
    img: &ImageSpec,
    ix: usize,
    d: &InputSpec,
    at: &dyn Fn(&str) -> String,
    out: &mut Vec<String>,
) {
    let letterbox = img.resize == ResizeMode::Letterbox;
    for (key, set) in [("pad", img.pad.is_some()), ("position", img.position.is_some())] {
        if set && !letterbox {
            out.push(format!(
                "{}pre.image.{key} applies only to resize = \"letterbox\"; add resize = \"letterbox\", or remove {key}",
                at(&format!("pre.image.{key}"))
            ));
        }
    }
    if let Some(p) = img.pad
        && !(p.is_finite() && (0.0..=255.0).contains(&p))
    {
        out.push(format!(
            "{}pre.image.pad is {p}; give a pixel value from 0 to 255 (it is scaled and normalised like the image)",
            at("pre.image.pad")
        ));
    }
    if img.channel_order == ChannelOrder::Bgr && img.channels != 3 {
        out.push(format!(
            "{}pre.image.channel_order = \"bgr\" needs channels = 3 (a grey image has no channel order)",
            at("pre.image.channel_order")
        ));
    }
    let input_key = format!("input.{ix}.shape");
    let layout = match img.layout {
        ImageLayout::Nchw => "nchw: [N, C, H, W]",
        ImageLayout::Nhwc => "nhwc: [N, H, W, C]",
    };
    let Some((c, h, w)) = image_axes(img.layout, d) else {
        // A flat or batched input: the image's size cannot be read from it, so the spec
        // gives it and only the number of values is checked.
        if !d.ranges.is_empty() {
            out.push(format!(
                "{}input `{}` {}: a range dimension with [pre.image] needs an image-shaped input, [1, C, H, W] or [1, H, W, C]",
                at(&input_key),
                d.name,
                d.shape_text()
            ));
            return;
        }
        let (Some(width), Some(height)) = (img.width, img.height) else {
            out.push(format!(
                "{}pre.image needs width and height: input `{}` {:?} does not show the image's size",
                at("pre.image"),
                d.name,
                d.shape
            ));
            return;
        };
        let want = budget::elements(&[img.channels, width as usize, height as usize]);
        if want != Some(d.len()) {
            let want = want.map_or_else(|| "too many".to_string(), |n| n.to_string());
            out.push(format!(
                "{}pre.image gives {}x{height}x{width} = {want} values but input `{}` {:?} holds {}",
                at("pre.image"),
                img.channels,
                d.name,
                d.shape,
                d.len()
            ));
        }
        return;
    };
    for (axis, _) in &d.ranges {
        if *axis != w && *axis != h {
            out.push(format!(
                "{}input `{}` {}: only the image's width and height may vary (axes {w} and {h} in {layout})",
                at(&input_key),
                d.name,
                d.shape_text()
            ));
        }
    }
    let sides_vary = [h, w].iter().all(|axis| d.ranges.iter().any(|(a, _)| a == axis));
    if d.ranges.len() == 1 && d.ranges[0].0 == h {
        out.push(format!(
            "{}input `{}` {}: the height may vary only with the width (an image keeps its aspect ratio at a fixed height); give the width a range too",
            at(&input_key),
            d.name,
            d.shape_text()
        ));
    }
    if img.limit_side == Some(0) {
        out.push(format!(
            "{}pre.image.limit_side is 0; give a side length in pixels",
            at("pre.image.limit_side")
        ));
    }
    if (img.limit_side.is_some() || img.limit_type.is_some()) && !sides_vary {
        out.push(format!(
            "{}pre.image.limit_side and limit_type apply when the input's height and width both vary; input `{}` is {}",
            at("pre.image.limit_side"),
            d.name,
            d.shape_text()
        ));
    }
    if d.shape[c] != img.channels {
        out.push(format!(
            "{}pre.image.channels is {} but input `{}` {} has {} at the channel axis ({layout}); set channels = {} (or change layout)",
            at("pre.image.channels"),
            img.channels,
            d.name,
            d.shape_text(),
            d.shape[c],
            d.shape[c]
        ));
    }
    for (key, given, axis) in [("height", img.height, h), ("width", img.width, w)] {
        let Some(given) = given else { continue };
        if d.ranges.iter().any(|(a, _)| *a == axis) {
            out.push(format!(
                "{}pre.image.{key}: input `{}` takes any {key} in {}; remove {key} (images keep their aspect ratio within the range)",
                at(&format!("pre.image.{key}")),
                d.name,
                d.shape_text()
            ));
        } else if given as usize != d.shape[axis] {
            out.push(format!(
                "{}pre.image.{key} is {given} but input `{}` {} has {key} {} ({layout}); set {key} = {}, or leave it out",
                at(&format!("pre.image.{key}")),
                d.name,
                d.shape_text(),
                d.shape[axis],
                d.shape[axis]
            ));
        }
    }
}

/// Why `file` cannot name a file inside the model directory, if it cannot. Links are
/// followed later, by [`contained_file`], when the directory is at hand.
fn outside_reason(file: &str) -> Option<&'static str> {
    let path = Path::new(file);
    let mut named = false;
    for c in path.components() {
        match c {
            Component::Normal(_) => named = true,
            Component::CurDir => {}
            Component::ParentDir => return Some("leaves the model directory with `..`"),
            Component::RootDir | Component::Prefix(_) => return Some("is an absolute path"),
        }
    }
    (!named).then_some("names no file")
}

/// `dir/file`, after checking that it does not lead out of `dir` through a link (the
/// spec's own text was checked by [`outside_reason`]). A model directory, and above all
/// a package from a registry, must not make the agent read files elsewhere on the
/// device. A file that does not exist is left for the load to report.
fn contained_file(dir: &Path, file: &str, spec: &Path) -> Result<PathBuf, SpecError> {
    let joined = dir.join(file);
    let outside =
        |target: PathBuf| SpecError::Outside { path: spec.to_path_buf(), file: file.into(), target };
    let Ok(root) = dir.canonicalize() else { return Ok(joined) };
    match joined.canonicalize() {
        Ok(real) if real.starts_with(&root) => Ok(joined),
        Ok(real) => Err(outside(real)),
        // A link to nowhere: what it names may be created later, so judge the link's own
        // target (a relative name without `..` stays inside; the load reports it missing).
        Err(_) => match std::fs::read_link(&joined) {
            Ok(target) if outside_reason(&target.to_string_lossy()).is_some() => Err(outside(target)),
            _ => Ok(joined),
        },
    }
}

/// Checks `[pre.dsp]` against itself (by building it) and against the rest of the spec.
fn dsp_problems(
    spec: &ModelSpec,
    dsp: &DspSpec,
    data: Option<&InputSpec>,
    at: &dyn Fn(&str) -> String,
    out: &mut Vec<String>,
) {
    if spec.pre.window.is_some() {
        out.push(format!(
            "{}pre.window and pre.dsp both cut the stream; remove [pre.window] (pre.dsp.frames and frame_hop say how frames make a model input)",
            at("pre.window")
        ));
    }
    if spec.pre.format == PayloadFormat::Image {
        out.push(format!(
            "{}pre.dsp works on samples, and this model takes images; remove it",
            at("pre.dsp")
        ));
    }
    match crate::pipeline::dsp::Dsp::new(dsp, spec.pre.sample_rate) {
        Err(e) => {
            let key = if e.key == "sample_rate" {
                "pre.sample_rate".to_string()
            } else {
                format!("pre.dsp.{}", e.key)
            };
            let line = if e.key == "sample_rate" { at("pre.dsp") } else { at(&key) };
            out.push(format!("{line}{key}: {}", e.message));
        }
        Ok(built) => {
            if let Some(d) = data
                && d.ranges.is_empty()
                && d.len() != built.input_len()
            {
                out.push(format!(
                    "{}pre.dsp makes {} frames of {} features = {} values, but input `{}` {:?} holds {}; change frames (or the features) to fill it",
                    at("pre.dsp.frames"),
                    dsp.frames,
                    built.features(),
                    built.input_len(),
                    d.name,
                    d.shape,
                    d.len()
                ));
            }
        }
    }
}

/// Checks the tables of `kind = "multilabel"`, `"regression"` and `"anomaly"` against `post.kind` and each other.
fn post_family_problems(post: &PostSpec, at: &dyn Fn(&str) -> String, out: &mut Vec<String>) {
    let kind = match post.kind {
        PostKind::Multilabel => "multilabel",
        PostKind::Regression => "regression",
        PostKind::Anomaly => "anomaly",
        PostKind::Scores | PostKind::None | PostKind::Detection | PostKind::TextBoxes | PostKind::Ctc => "",
    };
    for (table, set) in [
        ("multilabel", post.multilabel.is_some()),
        ("regression", post.regression.is_some()),
        ("anomaly", post.anomaly.is_some()),
    ] {
        if set && table != kind {
            out.push(format!(
                "{}[post.{table}] applies only to post.kind = \"{table}\"; set kind = \"{table}\" or remove the table",
                at(&format!("post.{table}"))
            ));
        }
    }
    if kind.is_empty() {
        return;
    }
    // Keys of the scores family that mean nothing here.
    let unused: &[(&str, bool)] = &[
        ("softmax", post.softmax),
        ("top_k", post.top_k.is_some()),
        ("segments", post.segments.is_some()),
        ("labels", !post.labels.is_empty() && post.kind != PostKind::Multilabel),
        ("threshold", post.threshold.is_some() && post.kind == PostKind::Regression),
    ];
    unused_keys(kind, unused, "; remove it", at, out);
    if let Some(t) = post.threshold
        && !t.is_finite()
    {
        out.push(format!("{}post.threshold is {t}; give a finite number", at("post.threshold")));
    }
    match post.kind {
        PostKind::Multilabel => {
            if post.labels.is_empty() {
                out.push(format!(
                    "{}post.kind = \"multilabel\" needs labels = [...], one per output value",
                    at("post.kind")
                ));
            }
            let ml = post.multilabel.clone().unwrap_or_default();
            if !ml.thresholds.is_empty() && ml.thresholds.len() != post.labels.len() {
                out.push(format!(
                    "{}post.multilabel.thresholds has {} values for {} labels; give one per label",
                    at("post.multilabel.thresholds"),
                    ml.thresholds.len(),
                    post.labels.len()
                ));
            }
            if let Some(t) = ml.thresholds.iter().find(|t| !t.is_finite()) {
                out.push(format!(
                    "{}post.multilabel.thresholds holds {t}; give finite numbers",
                    at("post.multilabel.thresholds")
                ));
            }
        }
        PostKind::Regression => {
            let r = post.regression.clone().unwrap_or_default();
            for (key, n) in [("units", r.units.len()), ("scale", r.scale.len()), ("offset", r.offset.len())] {
                if n > 0 && !r.names.is_empty() && n != r.names.len() {
                    out.push(format!(
                        "{}post.regression.{key} has {n} values for {} names; give one per name",
                        at(&format!("post.regression.{key}")),
                        r.names.len()
                    ));
                }
            }
            if r.scale.iter().chain(&r.offset).any(|v| !v.is_finite()) {
                out.push(format!(
                    "{}post.regression.scale and offset must be finite numbers",
                    at("post.regression")
                ));
            }
        }
        PostKind::Anomaly => {
            if let Some(t) = post.threshold
                && t < 0.0
            {
                out.push(format!(
                    "{}post.threshold is {t}; a reconstruction error is never negative, give 0 or more",
                    at("post.threshold")
                ));
            }
        }
        PostKind::Scores | PostKind::None | PostKind::Detection | PostKind::TextBoxes | PostKind::Ctc => {}
    }
}
