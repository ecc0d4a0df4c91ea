use super::*;
use crate::engine::spec::{ModelSpec, PostSpec, SegmentSpec, WindowSpec};
use std::path::Path;

fn spec(extra: &str) -> ModelSpec {
    let text = format!(
        "name = \"m\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = [1, 4]\n{extra}"
    );
    ModelSpec::parse(&text, Path::new("model.toml")).expect("valid spec")
}

#[test]
fn windows_carry_context_from_the_previous_window() {
    let mut w = Windower::new(&WindowSpec { size: 4, hop: 4, context: 2 });
    let out = w.push(&[1.0, 2.0, 3.0]);
    assert!(out.is_empty());
    let out = w.push(&[4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].data, vec![0.0, 0.0, 1.0, 2.0, 3.0, 4.0], "zeros before the stream");
    assert_eq!(out[1].data, vec![3.0, 4.0, 5.0, 6.0, 7.0, 8.0], "last 2 of the previous window");
    assert_eq!((out[1].index, out[1].offset), (1, 4));
    assert_eq!(w.pending(), 1);
}

#[test]
fn windows_overlap_and_skip_by_hop() {
    let mut w = Windower::new(&WindowSpec { size: 4, hop: 2, context: 0 });
    let data: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let out = w.push(&data);
    let starts: Vec<f32> = out.iter().map(|w| w.data[0]).collect();
    assert_eq!(starts, vec![0.0, 2.0, 4.0]);
    // A hop larger than the window leaves gaps, even across pushes.
    let mut w = Windower::new(&WindowSpec { size: 2, hop: 5, context: 0 });
    let mut starts = Vec::new();
    for chunk in (0..20).map(|i| i as f32).collect::<Vec<_>>().chunks(3) {
        starts.extend(w.push(chunk).iter().map(|w| (w.data[0], w.offset)));
    }
    assert_eq!(starts, vec![(0.0, 0), (5.0, 5), (10.0, 10), (15.0, 15)]);
}

#[test]
fn json_payloads_flat_nested_and_object() {
    let s = spec("");
    assert_eq!(decode(&s, Payload::Bytes(b"[1,2,3,4]".to_vec())).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(decode(&s, Payload::Bytes(b"[[1,2,3,4]]".to_vec())).unwrap().len(), 4);
    assert_eq!(decode(&s, Payload::Bytes(br#"{"data":[1,2,3,4]}"#.to_vec())).unwrap().len(), 4);
    assert!(matches!(decode(&s, Payload::Bytes(b"[[1,2],[3,4]]".to_vec())), Err(InputError::Shape { .. })));
    assert!(matches!(
        decode(&s, Payload::Bytes(br#"{"values":[1]}"#.to_vec())),
        Err(InputError::Json { .. })
    ));
    assert!(matches!(decode(&s, Payload::Bytes(b"[[1],2]".to_vec())), Err(InputError::Json { .. })));
    assert!(matches!(decode(&s, Payload::Bytes(Vec::new())), Err(InputError::Empty)));
}

#[test]
fn raw_samples_are_scaled_and_checked() {
    let s = spec("[pre]\nformat = \"i16le\"\nscale = 2.0\n");
    let bytes: Vec<u8> = [16384i16, -32768].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(decode(&s, Payload::Bytes(bytes)).unwrap(), vec![1.0, -2.0]);
    assert!(matches!(decode(&s, Payload::Bytes(vec![1, 2, 3])), Err(InputError::Alignment { width: 2, .. })));
    let s = spec("[pre]\nformat = \"f32le\"\n");
    let bytes: Vec<u8> = [1.0f32, f32::INFINITY].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(matches!(decode(&s, Payload::Bytes(bytes)), Err(InputError::NotFinite { index: 1, .. })));
    let s = spec("[limits]\nmax_payload_bytes = 8\n");
    assert!(matches!(
        decode(&s, Payload::Samples(vec![0.0; 3])),
        Err(InputError::TooLarge { bytes: 12, max: 8 })
    ));
}

#[test]
fn classifier_post_processing() {
    let post = PostProcessor::new(&PostSpec {
        softmax: true,
        labels: vec!["a".into(), "b".into(), "c".into()],
        top_k: Some(2),
        threshold: Some(0.9),
        ..PostSpec::default()
    });
    let out = post.apply(&[1.0, 3.0, 2.0], 0, None);
    assert_eq!(out["label"], "b");
    assert_eq!(out["class"], 1);
    let score = out["score"].as_f64().unwrap();
    assert!((score - 0.665_240_9).abs() < 1e-5, "{score}");
    assert_eq!(out["confident"], false);
    assert_eq!(out["top"][1]["label"], "c");
    assert_eq!(out["top"].as_array().unwrap().len(), 2);
    let probs: f64 = out["probs"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).sum();
    assert!((probs - 1.0).abs() < 1e-6);
}

#[test]
fn segments_follow_hysteresis() {
    let post = PostProcessor::new(&PostSpec {
        threshold: Some(0.5),
        labels: vec!["off".into(), "on".into()],
        segments: Some(SegmentSpec { on: 0.5, off: 0.35 }),
        ..PostSpec::default()
    });
    let mut state = SegmentState::default();
    let scores = [0.1, 0.6, 0.4, 0.45, 0.3, 0.2, 0.5];
    let events: Vec<Option<String>> = scores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let out = post.apply(&[*s], i as u64, Some(&mut state));
            out.get("segment").map(|seg| format!("{}@{}", seg["event"].as_str().unwrap(), i))
        })
        .collect();
    // 0.4 and 0.45 stay inside the segment (above `off`), 0.3 ends it.
    assert_eq!(
        events.into_iter().flatten().collect::<Vec<_>>(),
        vec!["start@1".to_string(), "end@4".to_string(), "start@6".to_string()]
    );
}

/// A spec whose data input is `shape`, with `[pre.image]` holding `image` (TOML lines).
fn image_spec(shape: &str, image: &str) -> ModelSpec {
    let text = format!(
        "name = \"m\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = {shape}\n[pre]\nformat = \"image\"\n[pre.image]\n{image}"
    );
    ModelSpec::parse(&text, Path::new("model.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn to_tensor(spec: &ModelSpec, img: &::image::DynamicImage) -> Vec<f32> {
    let geo = spec.image_geometry().expect("image geometry");
    super::image::tensor_from_image(img, spec.pre.image.as_ref().unwrap(), &geo).unwrap()
}

/// A 4x2 image whose every pixel and channel differ: (10x+1, 10y+2, 100+x+y).
fn gradient_4x2() -> ::image::DynamicImage {
    let img = ::image::RgbImage::from_fn(4, 2, |x, y| {
        ::image::Rgb([(10 * x + 1) as u8, (10 * y + 2) as u8, (100 + x + y) as u8])
    });
    ::image::DynamicImage::ImageRgb8(img)
}

#[test]
fn letterbox_pads_around_the_image_in_bgr_order() {
    // A 4x2 image into a 4x4 frame: scale 1 (no resampling), one row of padding above
    // and below. BGR: the model's channel 0 is the image's blue.
    let s = image_spec(
        "[1, 3, 4, 4]",
        "scale = 1.0\nmean = [1, 2, 3]\nstd = [1, 1, 2]\nresize = \"letterbox\"\npad = 100\nchannel_order = \"bgr\"\n",
    );
    let out = to_tensor(&s, &gradient_4x2());
    assert_eq!(out.len(), 3 * 4 * 4);
    let at = |c: usize, y: usize, x: usize| out[c * 16 + y * 4 + x];
    // Hand-computed corners: padding is (100 - mean) / std in each channel.
    assert_eq!(at(0, 0, 0), 99.0);
    assert_eq!(at(1, 0, 3), 98.0);
    assert_eq!(at(2, 3, 2), 48.5);
    // Row 1 is the image's row 0: pixel (x=2, y=0) is (21, 2, 102) in RGB.
    assert_eq!(at(0, 1, 2), 102.0 - 1.0, "blue first");
    assert_eq!(at(1, 1, 2), 2.0 - 2.0, "green second");
    assert_eq!(at(2, 1, 2), (21.0 - 3.0) / 2.0, "red last");
    // Every value, from the formula.
    for c in 0..3 {
        for y in 0..4 {
            for x in 0..4 {
                let (mean, std) = ([1.0, 2.0, 3.0][c], [1.0, 1.0, 2.0][c]);
                let raw = if y == 0 || y == 3 {
                    100.0
                } else {
                    let (ix, iy) = (x as f32, (y - 1) as f32);
                    [100.0 + ix + iy, 10.0 * iy + 2.0, 10.0 * ix + 1.0][c]
                };
                assert_eq!(at(c, y, x), (raw - mean) / std, "c {c} y {y} x {x}");
            }
        }
    }
}

#[test]
fn letterbox_top_left_and_nhwc() {
    // A 4x2 image into a 2x4 (w x h) frame: halved to 2x1, placed at the top, the rest
    // padded with 0; nhwc keeps each pixel's channels together.
    let s = image_spec(
        "[1, 4, 2, 3]",
        "scale = 1.0\nlayout = \"nhwc\"\nresize = \"letterbox\"\nposition = \"top-left\"\n",
    );
    let solid =
        ::image::DynamicImage::ImageRgb8(::image::RgbImage::from_pixel(4, 2, ::image::Rgb([7, 8, 9])));
    let out = to_tensor(&s, &solid);
    assert_eq!(out.len(), 4 * 2 * 3);
    assert_eq!(&out[..6], &[7.0, 8.0, 9.0, 7.0, 8.0, 9.0], "row 0: the image");
    assert!(out[6..].iter().all(|v| *v == 0.0), "rows 1-3: padding {out:?}");
}

#[test]
fn a_range_width_keeps_the_aspect_ratio() {
    let s = image_spec("[1, 3, 8, { min = 8, max = 64, multiple_of = 4 }]", "scale = 1.0\n");
    let geo = s.image_geometry().unwrap();
    assert_eq!((geo.height, geo.width), (8, 64));
    let spec = s.pre.image.as_ref().unwrap();
    let frame = |w, h| super::image::place(w, h, spec, &geo).frame;
    assert_eq!(frame(20, 8), (20, 8), "already the right height");
    assert_eq!(frame(40, 16), (20, 8), "halved");
    assert_eq!(frame(22, 8), (24, 8), "rounded up to a multiple of 4");
    assert_eq!(frame(1, 100), (8, 8), "at least min");
    assert_eq!(frame(1000, 2), (64, 8), "at most max");
    // The tensor has the chosen width, and the engine's shape check takes it.
    let img = ::image::DynamicImage::ImageRgb8(::image::RgbImage::new(40, 16));
    let out = to_tensor(&s, &img);
    assert_eq!(out.len(), 3 * 8 * 20);
    assert_eq!(s.data_input().shape_for(out.len()), Some(vec![1, 3, 8, 20]));
    // Letterbox in a range: a too-wide image is scaled to the largest width and padded
    // below (centred).
    let s = image_spec(
        "[1, 1, 8, { min = 8, max = 16 }]",
        "channels = 1\nscale = 1.0\nresize = \"letterbox\"\npad = 5\n",
    );
    let geo = s.image_geometry().unwrap();
    let p = super::image::place(64, 8, s.pre.image.as_ref().unwrap(), &geo);
    assert_eq!((p.frame, p.size, p.offset), ((16, 8), (16, 2), (0, 3)));
}

#[test]
fn json_shapes_within_a_range_are_accepted() {
    let text = "name = \"m\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = [1, 2, { min = 1, max = 4 }]\n";
    let s = ModelSpec::parse(text, Path::new("model.toml")).unwrap();
    assert_eq!(decode(&s, Payload::Bytes(b"[[1,2,3],[4,5,6]]".to_vec())).unwrap().len(), 6);
    assert_eq!(decode(&s, Payload::Bytes(b"[[[1],[2]]]".to_vec())).unwrap().len(), 2);
    let err = decode(&s, Payload::Bytes(b"[[1,2,3,4,5],[1,2,3,4,5]]".to_vec())).unwrap_err();
    assert!(matches!(err, InputError::ShapeRange { .. }), "{err}");
    assert!(err.to_string().contains("[1, 2, 1..=4]"), "{err}");
}

#[test]
fn json_with_a_byte_order_mark_is_read() {
    let s = spec("");
    let bytes = b"\xEF\xBB\xBF[1,2,3,4]".to_vec();
    assert_eq!(decode(&s, Payload::Bytes(bytes)).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    let bytes = b"\xEF\xBB\xBF {\"data\": [1,2,3,4]}".to_vec();
    assert_eq!(decode(&s, Payload::Bytes(bytes)).unwrap().len(), 4);
    // Only a leading mark: one in the middle is still an error.
    assert!(decode(&s, Payload::Bytes(b"[1,\xEF\xBB\xBF2]".to_vec())).is_err());
}

#[test]
fn post_kind_none_reports_no_scores() {
    let s = spec("[post]\nkind = \"none\"\n");
    let post = PostProcessor::new(&s.post);
    assert!(post.apply(&[0.1, 0.9, 0.3], 0, None).is_empty(), "no argmax over raw outputs");
    assert_eq!(post.confidence(&[0.1, 0.9]), None);
    assert!(s.post.wants_raw());
    assert!(!spec("").post.wants_raw());
}

mod image_props {
    use super::*;
    use proptest::prelude::*;

    /// Quick by default; `PROPTEST_CASES` raises it for a longer run.
    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
    }

    /// Image sizes: small, and extreme aspect ratios both ways.
    fn sizes() -> impl Strategy<Value = (u32, u32)> {
        prop_oneof![(1..=48u32, 1..=48u32), (1..=3000u32, 1..=3u32), (1..=3u32, 1..=3000u32)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        /// Whatever the image's size and the spec's resize, padding, order and layout,
        /// pre-processing gives exactly a tensor the engine takes, and each value is the
        /// image's (solid) colour or the padding, normalised.
        #[test]
        fn image_tensors_have_the_declared_size(
            (iw, ih) in sizes(),
            colour in any::<[u8; 3]>(),
            grey in any::<bool>(),
            nhwc in any::<bool>(),
            letterbox in any::<bool>(),
            top_left in any::<bool>(),
            bgr in any::<bool>(),
            pad in 0u8..=255,
            (fh, fw) in (1..=32usize, 1..=32usize),
            range in proptest::option::of((1..=16usize, 0..=48usize, 1..=8usize)),
        ) {
            let c = if grey { 1 } else { 3 };
            let w = match range {
                Some((min, extra, m)) => format!("{{ min = {min}, max = {}, multiple_of = {m} }}", min + extra + m),
                None => fw.to_string(),
            };
            let shape = if nhwc { format!("[1, {fh}, {w}, {c}]") } else { format!("[1, {c}, {fh}, {w}]") };
            let mut keys = format!("channels = {c}\nscale = 1.0\nmean = [{}]\nstd = [{}]\n",
                vec!["10"; c].join(", "), vec!["2"; c].join(", "));
            if nhwc { keys.push_str("layout = \"nhwc\"\n"); }
            if letterbox {
                keys.push_str(&format!("resize = \"letterbox\"\npad = {pad}\n"));
                if top_left { keys.push_str("position = \"top-left\"\n"); }
            }
            if bgr && !grey { keys.push_str("channel_order = \"bgr\"\n"); }
            let s = image_spec(&shape, &keys);
            let img = ::image::DynamicImage::ImageRgb8(::image::RgbImage::from_pixel(iw, ih, ::image::Rgb(colour)));
            let out = to_tensor(&s, &img);

            let shape = s.data_input().shape_for(out.len());
            prop_assert!(shape.is_some(), "{} values fit no shape of {}", out.len(), s.data_input().shape_text());
            if range.is_none() {
                prop_assert_eq!(out.len(), c * fh * fw);
            }
            let norm = |v: f32| (v - 10.0) / 2.0;
            let grey_level = f32::from(img.to_luma8().get_pixel(0, 0).0[0]);
            let p = super::super::image::place(iw, ih, s.pre.image.as_ref().unwrap(), &s.image_geometry().unwrap());
            let content = (p.size.0 * p.size.1) as usize * c;
            let mut inside = 0;
            for (ix, v) in out.iter().enumerate() {
                prop_assert!(v.is_finite());
                let ch = if nhwc { ix % c } else { ix / (out.len() / c) };
                let src = if bgr && !grey { 2 - ch } else { ch };
                let want = if grey { grey_level } else { f32::from(colour[src]) };
                // Resampling a solid image may round a level by one.
                if (v - norm(want)).abs() <= 0.5 + f32::EPSILON {
                    inside += 1;
                } else {
                    prop_assert!(letterbox && *v == norm(f32::from(pad)), "value {v} at {ix} is neither the colour {want} nor the padding {pad}");
                }
            }
            prop_assert!(inside >= content, "{inside} image values, {content} expected");
        }
    }
}
