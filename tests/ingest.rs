//! `dino-stream ingest` and `inspect` end to end, on real photos and on a corpus of broken
//! and unusual files built here.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::corrupt;
use crate::common::*;
use dino_pipeline::jpeg::{JpegColor, JpegDecoder, Pixels};
use dino_pipeline::manifest::Manifest;
use parquet::basic::{Compression, Encoding};
use parquet::file::reader::{FileReader, SerializedFileReader};

fn decode(jpeg: &[u8], pixels: Pixels) -> (Vec<u8>, u32, u32) {
    let mut out = Vec::new();
    let d = JpegDecoder::new()
        .unwrap()
        .decode(jpeg, pixels, &mut out)
        .unwrap();
    assert_eq!(d.warning, None);
    (out, d.width, d.height)
}

fn encode(pixels: &[u8], w: u32, h: u32, format: turbojpeg::PixelFormat) -> Vec<u8> {
    let mut c = turbojpeg::Compressor::new().unwrap();
    c.set_quality(95).unwrap();
    let subsamp = if format == turbojpeg::PixelFormat::GRAY {
        turbojpeg::Subsamp::Gray
    } else {
        turbojpeg::Subsamp::None
    };
    c.set_subsamp(subsamp).unwrap();
    let image = turbojpeg::Image {
        pixels,
        width: w as usize,
        pitch: w as usize * format.size(),
        height: h as usize,
        format,
    };
    c.compress_to_vec(image).unwrap()
}

/// Overwrites the frame size in a baseline JPEG's SOF0 segment.
fn claim_size(jpeg: &mut [u8], width: u16, height: u16) {
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline JPEG has SOF0");
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
}

/// What the broken-corpus test expects of each file: `None` = stored as is, else the
/// outcome ("converted"/"rejected") and a word its reason must contain.
type Expect = BTreeMap<String, Option<(&'static str, &'static str)>>;

struct Corpus {
    root: PathBuf,
    expect: Expect,
    /// Pixels the converted PNG and CMYK inputs should decode to.
    png_rgb: Vec<u8>,
    cmyk_rgb: Vec<u8>,
    gray_jpeg: Vec<u8>,
}

fn build_broken_corpus(at: &Path) -> Corpus {
    let photos = jpeg_files(&samples("crops", 120));
    let root = at.join("root");
    let mut expect = Expect::new();
    for class in ["cats", "dogs"] {
        fs::create_dir_all(root.join(class)).unwrap();
    }
    // 24 real photos, stored as is.
    for (i, photo) in photos.iter().take(24).enumerate() {
        let key = format!("{}/real_{i:02}.JPEG", ["cats", "dogs"][i % 2]);
        fs::copy(photo, root.join(&key)).unwrap();
        expect.insert(key, None);
    }
    let real = fs::read(&photos[30]).unwrap();
    let (rgb, w, h) = decode(&real, Pixels::Rgb);
    let mut put = |key: &str, bytes: &[u8], outcome| {
        fs::write(root.join(key), bytes).unwrap();
        expect.insert(key.to_owned(), outcome);
    };
    put(
        "cats/truncated.JPEG",
        &real[..real.len() / 2],
        Some(("rejected", "truncated")),
    );
    put("cats/empty.JPEG", b"", Some(("rejected", "empty")));
    put(
        "dogs/text.JPEG",
        b"this is a text file, not a photo\n",
        Some(("rejected", "not an image")),
    );
    let mut huge = real.clone();
    claim_size(&mut huge, 65_000, 65_000);
    put(
        "dogs/huge.JPEG",
        &huge,
        Some(("rejected", "absurd dimensions")),
    );
    let mut png = Vec::new();
    image::RgbImage::from_raw(w, h, rgb.clone())
        .unwrap()
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    put("cats/png.JPEG", &png, Some(("converted", "PNG")));
    // Adobe CMYK is stored inverted: (r, g, b, 255) is the CMYK of (r, g, b).
    let cmyk: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect();
    let cmyk_jpeg = encode(&cmyk, w, h, turbojpeg::PixelFormat::CMYK);
    let header = JpegDecoder::new().unwrap().header(&cmyk_jpeg).unwrap();
    assert!(matches!(header.color, JpegColor::Ycck | JpegColor::Cmyk));
    put("dogs/cmyk.JPEG", &cmyk_jpeg, Some(("converted", "CMYK")));
    let (gray, _, _) = decode(&real, Pixels::Gray);
    let gray_jpeg = encode(&gray, w, h, turbojpeg::PixelFormat::GRAY);
    put("dogs/gray.JPEG", &gray_jpeg, None);
    put(
        "stray.txt",
        b"notes",
        Some(("rejected", "outside any class folder")),
    );
    std::os::unix::fs::symlink("/nonexistent/photo.JPEG", root.join("cats/ghost.JPEG")).unwrap();
    expect.insert("cats/ghost.JPEG".into(), Some(("rejected", "unreadable")));
    fs::write(root.join("cats/.DS_Store"), b"\0\0\0\x01Bud1").unwrap();
    Corpus {
        root,
        expect,
        png_rgb: rgb.clone(),
        cmyk_rgb: rgb,
        gray_jpeg,
    }
}

fn load_manifest(dir: &Path) -> Manifest {
    Manifest::load(dir).unwrap().expect("manifest written")
}

fn all_rows(dir: &Path, split: &str) -> Vec<ShardRow> {
    let m = load_manifest(dir);
    m.splits[split]
        .shards
        .iter()
        .flat_map(|s| read_shard(&dir.join(&s.file)))
        .collect()
}

#[test]
fn every_input_is_stored_converted_or_rejected_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = build_broken_corpus(tmp.path());
    let out = tmp.path().join("shards");
    let stdout = dino_stream_ok(&[
        "ingest",
        "--src",
        path_str(&corpus.root),
        "--out",
        path_str(&out),
        "--shard-bytes",
        "200KiB",
        "--workers",
        "3",
    ]);
    assert!(stdout.contains("rejected 6"), "{stdout}");

    let m = load_manifest(&out);
    assert_eq!(m.classes, ["cats", "dogs"]);
    let split = &m.splits["train"];
    let c = &split.counts;
    let files = corpus.expect.len() as u64;
    assert_eq!((c.found, c.skipped_hidden), (files + 1, 1));
    assert_eq!(
        c.stored + c.converted + c.rejected + c.skipped_hidden,
        c.found
    );
    assert_eq!((c.stored, c.converted, c.rejected), (25, 2, 6));
    assert_eq!(split.skipped, ["cats/.DS_Store"]);
    assert!(split.shards.len() > 1, "200 KiB shards split the corpus");

    let rows = all_rows(&out, "train");
    assert_eq!(rows.len() as u64, split.rows);
    assert_eq!(split.rows, c.stored + c.converted);
    let mut seen = BTreeMap::new();
    for row in &rows {
        assert!(
            seen.insert(row.key.clone(), "stored").is_none(),
            "{} twice",
            row.key
        );
    }
    for note in &split.converted {
        assert!(
            seen.contains_key(&note.key),
            "converted {} is in a shard",
            note.key
        );
        seen.insert(note.key.clone(), "converted");
    }
    for note in &split.rejected {
        assert!(seen.insert(note.key.clone(), "rejected").is_none());
    }
    assert_eq!(seen.len(), corpus.expect.len(), "every file accounted once");
    for (key, expected) in &corpus.expect {
        let outcome = seen[key];
        let notes = split.converted.iter().chain(&split.rejected);
        let reason = notes
            .filter(|n| &n.key == key)
            .map(|n| n.reason.as_str())
            .next();
        match expected {
            None => assert_eq!((outcome, reason), ("stored", None), "{key}"),
            Some((want, word)) => {
                assert_eq!(outcome, *want, "{key}: {reason:?}");
                assert!(
                    reason.unwrap().contains(word),
                    "{key}: {reason:?} lacks {word:?}"
                );
            }
        }
    }

    // Labels follow the class folders; stored JPEGs are the input bytes, untouched.
    let by_key: BTreeMap<_, _> = rows.iter().map(|r| (r.key.as_str(), r)).collect();
    for row in &rows {
        let class = row.key.split('/').next().unwrap();
        assert_eq!(
            row.label,
            m.classes.iter().position(|c| c == class).unwrap() as i32
        );
        if seen[&row.key] == "stored" {
            assert_eq!(
                row.jpeg,
                fs::read(corpus.root.join(&row.key)).unwrap(),
                "{}",
                row.key
            );
        }
    }
    assert_eq!(by_key["dogs/gray.JPEG"].jpeg, corpus.gray_jpeg);

    // Converted images hold the input's pixels (PNG: one lossy step; CMYK: two).
    for (key, want, tolerance) in [
        ("cats/png.JPEG", &corpus.png_rgb, 2.0),
        ("dogs/cmyk.JPEG", &corpus.cmyk_rgb, 3.0),
    ] {
        let row = by_key[key];
        let (got, w, h) = decode(&row.jpeg, Pixels::Rgb);
        assert_eq!((w as i32, h as i32), (row.width, row.height));
        let mad = mean_abs_diff(&got, want);
        assert!(mad < tolerance, "{key}: mean abs diff {mad:.2} levels");
    }

    // --strict refuses the same corpus, naming a rejected file.
    let err = dino_stream_err(&[
        "ingest",
        "--src",
        path_str(&corpus.root),
        "--out",
        path_str(&tmp.path().join("strict")),
        "--strict",
    ]);
    let named = corpus.expect.iter().any(|(key, e)| {
        matches!(e, Some(("rejected", _))) && err.contains(&format!("{key} rejected"))
    });
    assert!(err.contains("--strict") && named, "{err}");
}

fn ingest_args<'a>(src: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["ingest", "--src", path_str(src), "--out", path_str(out)];
    args.extend_from_slice(extra);
    args
}

/// What ingest makes of each kind of the hostile corpus: rejected or converted, with a word
/// of the reason.
fn ingest_outcome(expect: corrupt::Expect, bytes: &[u8]) -> (&'static str, &'static str) {
    match expect {
        _ if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) => ("rejected", "not an image"),
        corrupt::Expect::Error(_) => ("rejected", "corrupt JPEG"),
        corrupt::Expect::Warning("Premature end of JPEG file") => ("rejected", "truncated JPEG"),
        corrupt::Expect::Warning(_) => ("converted", "re-encoded after decoder warning"),
        corrupt::Expect::TooLarge => ("rejected", "absurd dimensions"),
    }
}

/// 120 real photos with the hostile corpus (made from one of them) spread among them, as
/// `src/CLASS/...`; returns the corrupt files' keys with their expected outcome.
fn photos_with_corrupt_ones(
    at: &Path,
) -> (PathBuf, BTreeMap<String, (&'static str, &'static str)>) {
    let photos = samples("crops", 120);
    let src = at.join("src");
    let mut expected = BTreeMap::new();
    for (i, photo) in jpeg_files(&photos).iter().enumerate() {
        let class = photo.parent().unwrap().file_name().unwrap();
        fs::create_dir_all(src.join(class)).unwrap();
        fs::copy(photo, src.join(class).join(photo.file_name().unwrap())).unwrap();
        if i == 0 {
            let valid = fs::read(photo).unwrap();
            for (k, bad) in corrupt::corpus(&valid).into_iter().enumerate() {
                // a few in each class folder, between the valid ones in any order
                let key = format!("{}/bad_{k:02}.JPEG", class.to_str().unwrap());
                fs::write(src.join(&key), &bad.bytes).unwrap();
                expected.insert(key, ingest_outcome(bad.expect, &bad.bytes));
            }
        }
    }
    (src, expected)
}

#[test]
fn output_is_byte_identical_whatever_the_worker_count() {
    // Corrupt JPEGs of every kind between the valid photos: a worker's decoder must come out
    // of each one clean, so every photo is stored as is, whichever worker meets it after
    // which broken file.
    let tmp = tempfile::tempdir().unwrap();
    let (src, corrupt_keys) = photos_with_corrupt_ones(tmp.path());
    let sizes = ["--shard-bytes", "500KiB", "--row-group-bytes", "100KiB"];
    let mut outputs = Vec::new();
    for workers in ["1", "2", "5"] {
        let out = tmp.path().join(format!("w{workers}"));
        let mut args = ingest_args(&src, &out, &sizes);
        args.extend(["--workers", workers]);
        dino_stream_ok(&args);
        outputs.push(dir_bytes(&out));
    }
    assert!(outputs[0].len() > 5, "several shards: {}", outputs[0].len());
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0], outputs[2]);
    let out = tmp.path().join("w1");
    let split = &load_manifest(&out).splits["train"];
    let converted = split.converted.iter().map(|n| (n, "converted"));
    let notes: BTreeMap<&str, (&str, &str)> = split
        .rejected
        .iter()
        .map(|n| (n, "rejected"))
        .chain(converted)
        .map(|(n, what)| (n.key.as_str(), (what, n.reason.as_str())))
        .collect();
    for (key, (what, word)) in &corrupt_keys {
        let (got, reason) = notes[key.as_str()];
        assert!(
            got == *what && reason.contains(word),
            "{key}: {got} {reason}"
        );
    }
    assert_eq!(
        notes.len(),
        corrupt_keys.len(),
        "only the corrupt files: {notes:?}"
    );
    for row in all_rows(&out, "train") {
        if !corrupt_keys.contains_key(&row.key) {
            assert_eq!(
                row.jpeg,
                fs::read(src.join(&row.key)).unwrap(),
                "{}",
                row.key
            );
        }
    }

    // The shuffled order mixes classes: no shard is a single class, and a new seed
    // changes the layout.
    let m = load_manifest(&out);
    for shard in &m.splits["train"].shards {
        let labels: std::collections::BTreeSet<i32> = read_shard(&out.join(&shard.file))
            .iter()
            .map(|r| r.label)
            .collect();
        assert!(
            labels.len() > 3,
            "{} holds {} classes",
            shard.file,
            labels.len()
        );
    }
    let reseeded = tmp.path().join("seed1");
    let mut args = ingest_args(&src, &reseeded, &sizes);
    args.extend(["--seed", "1"]);
    dino_stream_ok(&args);
    assert_ne!(dir_bytes(&reseeded), outputs[0]);
}

#[test]
fn shards_follow_the_format() {
    let src = samples("crops", 120);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    dino_stream_ok(&ingest_args(
        &src,
        &out,
        &["--shard-bytes", "1MiB", "--row-group-bytes", "200KiB"],
    ));
    let m = load_manifest(&out);
    let split = &m.splits["train"];
    let mut largest_image = 0;
    for path in jpeg_files(&src) {
        largest_image = largest_image.max(fs::metadata(path).unwrap().len() as i64);
    }
    for shard in &split.shards {
        let path = out.join(&shard.file);
        assert!(
            shard.bytes <= (1 << 20) + largest_image as u64 + 65_536,
            "{shard:?}"
        );
        let reader = SerializedFileReader::new(fs::File::open(&path).unwrap()).unwrap();
        let meta = reader.metadata();
        assert_eq!(meta.num_row_groups(), shard.row_groups);
        if shard.bytes > 900 * 1024 {
            assert!(shard.row_groups >= 4, "{} row groups", shard.row_groups);
        }
        for rg in meta.row_groups() {
            let jpeg = rg
                .columns()
                .iter()
                .find(|c| c.column_path().string() == "jpeg")
                .unwrap();
            assert_eq!(jpeg.compression(), Compression::UNCOMPRESSED);
            assert!(jpeg.dictionary_page_offset().is_none());
            assert!(
                !jpeg
                    .encodings()
                    .any(|e| e == Encoding::RLE_DICTIONARY || e == Encoding::PLAIN_DICTIONARY)
            );
            assert!(jpeg.statistics().is_none());
            let data = jpeg.compressed_size();
            assert!(
                data <= 200 * 1024 + largest_image,
                "row group of {data} bytes"
            );
        }
    }
    // Shard files hold every sample once.
    let rows = all_rows(&out, "train");
    assert_eq!(rows.len(), jpeg_files(&src).len());
}

/// Starts an ingest and SIGKILLs it once `shards` shard files exist (or it is writing one).
fn kill_after(args: &[&str], out: &Path, shards: usize) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dino-stream"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let done = fs::read_dir(out)
            .map(|d| {
                d.filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    name.to_string_lossy().ends_with(".parquet")
                })
                .count()
            })
            .unwrap_or(0);
        if done >= shards {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the ingest finished before {shards} shards were seen; make the test corpus larger"
        );
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

fn inode_and_mtime(path: &Path) -> (u64, i64, i64) {
    let m = fs::metadata(path).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

#[test]
fn a_killed_ingest_resumes_to_the_same_bytes_without_redoing_shards() {
    let tmp = tempfile::tempdir().unwrap();
    // Three copies of the photos make a run long enough to kill in the middle.
    let src = tmp.path().join("src");
    for (i, photo) in jpeg_files(&samples("crops", 120)).iter().enumerate() {
        for copy in 0..3 {
            let class = src.join(format!("class{}", (i + copy) % 7));
            fs::create_dir_all(&class).unwrap();
            fs::copy(photo, class.join(format!("{copy}_{i:03}.JPEG"))).unwrap();
        }
    }
    let opts = [
        "--workers",
        "1",
        "--max-side",
        "160",
        "--quality",
        "95",
        "--shard-bytes",
        "64KiB",
    ];
    let reference = tmp.path().join("reference");
    dino_stream_ok(&ingest_args(&src, &reference, &opts));

    let out = tmp.path().join("killed");
    let args = ingest_args(&src, &out, &opts);
    kill_after(&args, &out, 2);
    assert!(
        !out.join("manifest.json").exists(),
        "killed before the commit point"
    );
    kill_after(&args, &out, 5);
    let kept: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| (inode_and_mtime(&p), p))
        .collect();
    assert!(kept.len() >= 5);

    let stdout = dino_stream_ok(&args);
    let resumed = format!("resumed: {} shard(s)", kept.len());
    assert!(stdout.contains(&resumed), "{stdout}");
    for (before, path) in &kept {
        assert_eq!(
            &inode_and_mtime(path),
            before,
            "{} was rewritten",
            path.display()
        );
    }
    assert_eq!(dir_bytes(&out), dir_bytes(&reference));

    // Killed between the last shard and the manifest: the rerun only writes the manifest.
    fs::remove_file(out.join("manifest.json")).unwrap();
    let stdout = dino_stream_ok(&args);
    let shards = load_manifest(&out).splits["train"].shards.len();
    assert!(
        stdout.contains(&format!("resumed: {shards} shard(s)")),
        "{stdout}"
    );
    assert_eq!(dir_bytes(&out), dir_bytes(&reference));
}

#[test]
fn max_side_downscales_with_antialiasing() {
    let src = samples("imagenet20", 20);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    dino_stream_ok(&ingest_args(&src, &out, &["--max-side", "128"]));
    let m = load_manifest(&out);
    let split = &m.splits["train"];
    assert_eq!(split.counts.converted, 20);
    assert!(
        split
            .converted
            .iter()
            .all(|n| n.reason.contains("downscaled from"))
    );
    let (mut lanczos_total, mut point_total) = (0.0, 0.0);
    for row in all_rows(&out, "train") {
        let original = fs::read(src.join(&row.key)).unwrap();
        let (full, w, h) = decode(&original, Pixels::Rgb);
        let (small, sw, sh) = decode(&row.jpeg, Pixels::Rgb);
        assert_eq!(sw.max(sh), 128, "{}", row.key);
        assert_eq!((sw as i32, sh as i32), (row.width, row.height));
        assert!(((sw as f64 / sh as f64) - (w as f64 / h as f64)).abs() < 0.02);
        // Against an area average, the antialiased result is closer than point sampling.
        let boxed = area_downscale(&full, w, h, sw, sh);
        lanczos_total += mean_abs_diff(&small, &boxed);
        point_total += mean_abs_diff(&point_downscale(&full, w, h, sw, sh), &boxed);
    }
    // Measured: 0.52 of point sampling's distance over these photos.
    assert!(
        lanczos_total < 0.65 * point_total,
        "lanczos {lanczos_total:.1} vs point {point_total:.1}"
    );
}

fn point_downscale(px: &[u8], w: u32, h: u32, ow: u32, oh: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for oy in 0..oh {
        for ox in 0..ow {
            let (x, y) = ((2 * ox + 1) * w / (2 * ow), (2 * oy + 1) * h / (2 * oh));
            out.extend_from_slice(&px[((y * w + x) * 3) as usize..][..3]);
        }
    }
    out
}

/// Area-average downscale of packed RGB (each output pixel = mean of its source box).
fn area_downscale(px: &[u8], w: u32, h: u32, ow: u32, oh: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity((ow * oh * 3) as usize);
    for oy in 0..oh {
        let (y0, y1) = (oy * h / oh, ((oy + 1) * h / oh).max(oy * h / oh + 1));
        for ox in 0..ow {
            let (x0, x1) = (ox * w / ow, ((ox + 1) * w / ow).max(ox * w / ow + 1));
            for c in 0..3 {
                let mut sum = 0u64;
                for y in y0..y1 {
                    for x in x0..x1 {
                        sum += u64::from(px[((y * w + x) * 3 + c) as usize]);
                    }
                }
                out.push((sum / u64::from((y1 - y0) * (x1 - x0))) as u8);
            }
        }
    }
    out
}

#[test]
fn splits_share_a_directory_and_a_class_list() {
    let src = samples("imagenet20", 20);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    dino_stream_ok(&ingest_args(&src, &out, &[]));

    // A flat validation folder labeled by CSV, as ImageNet's is shipped.
    let flat = tmp.path().join("flat");
    fs::create_dir_all(&flat).unwrap();
    let mut csv = String::from("file,class\n");
    for path in jpeg_files(&src) {
        let class = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        fs::copy(&path, flat.join(name)).unwrap();
        csv.push_str(&format!("{name},{class}\n"));
    }
    let labels = tmp.path().join("labels.csv");
    fs::write(&labels, &csv).unwrap();
    dino_stream_ok(&ingest_args(
        &flat,
        &out,
        &["--split", "val", "--labels", path_str(&labels)],
    ));
    let m = load_manifest(&out);
    let train: BTreeMap<String, i32> = all_rows(&out, "train")
        .into_iter()
        .map(|r| (r.key.rsplit('/').next().unwrap().to_owned(), r.label))
        .collect();
    let val = all_rows(&out, "val");
    assert_eq!(val.len(), 20);
    for row in &val {
        assert_eq!(train[&row.key], row.label, "{} keeps its label", row.key);
    }
    assert!(m.splits["val"].labeled);

    // Unlabeled flat folder: label -1.
    dino_stream_ok(&ingest_args(&flat, &out, &["--split", "unlabeled"]));
    assert!(all_rows(&out, "unlabeled").iter().all(|r| r.label == -1));

    // A split with other classes does not go into the same directory.
    let other = tmp.path().join("other");
    fs::create_dir_all(other.join("zebra")).unwrap();
    fs::copy(&jpeg_files(&src)[0], other.join("zebra/a.JPEG")).unwrap();
    let err = dino_stream_err(&ingest_args(&other, &out, &["--split", "extra"]));
    assert!(
        err.contains("classes differ") && err.contains("zebra"),
        "{err}"
    );
}

#[test]
fn reruns_and_bad_destinations_are_explained() {
    let src = samples("imagenet20", 20);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    dino_stream_ok(&ingest_args(&src, &out, &[]));
    let before = dir_bytes(&out);
    let stdout = dino_stream_ok(&ingest_args(&src, &out, &["--workers", "1"]));
    assert!(stdout.contains("already up to date"), "{stdout}");
    assert_eq!(dir_bytes(&out), before);

    let err = dino_stream_err(&ingest_args(&src, &out, &["--seed", "9"]));
    assert!(err.contains("--overwrite"), "{err}");
    dino_stream_ok(&ingest_args(&src, &out, &["--seed", "9", "--overwrite"]));
    assert_eq!(load_manifest(&out).splits["train"].options.seed, 9);

    let missing = tmp.path().join("no-such-folder");
    let err = dino_stream_err(&ingest_args(&missing, &out, &[]));
    assert!(err.contains(path_str(&missing)), "{err}");

    let foreign = tmp.path().join("foreign");
    fs::create_dir_all(&foreign).unwrap();
    fs::write(
        foreign.join("manifest.json"),
        r#"{"name": "another dataset"}"#,
    )
    .unwrap();
    let err = dino_stream_err(&ingest_args(&src, &foreign, &[]));
    assert!(err.contains("not a dino-stream manifest"), "{err}");

    let file = tmp.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let err = dino_stream_err(&ingest_args(&src, &file.join("out"), &[]));
    assert!(err.contains(path_str(&file)), "{err}");
}

#[test]
fn inspect_verify_catches_a_flipped_byte() {
    let src = samples("crops", 120);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    dino_stream_ok(&ingest_args(&src, &out, &["--shard-bytes", "1MiB"]));
    let ok = dino_stream_ok(&["inspect", path_str(&out), "--verify"]);
    assert!(
        ok.contains("all shards verified") && ok.contains("120 rows"),
        "{ok}"
    );

    let shards = load_manifest(&out).splits["train"].shards.clone();
    let victim = out.join(&shards[1].file);
    let mut bytes = fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&victim, bytes).unwrap();
    let out_err = dino_stream(&["inspect", path_str(&out), "--verify"]);
    assert!(!out_err.status.success());
    let stdout = String::from_utf8_lossy(&out_err.stdout);
    assert!(
        stdout.contains(&format!("FAILED  {}: SHA-256", shards[1].file)),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("ok      {}", shards[0].file)));
}

#[test]
fn shards_open_in_pyarrow() {
    let src = samples("crops", 120);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    dino_stream_ok(&ingest_args(&src, &out, &["--shard-bytes", "2MiB"]));
    let python = std::env::var("DINO_STREAM_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/read_shards.py");
    let result = Command::new(&python)
        .arg(&script)
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}; set DINO_STREAM_PYTHON (tools/test.sh does)"));
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{} failed (needs pyarrow; tools/test.sh installs it):\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(stdout.contains("pyarrow read 120 rows"), "{stdout}");
}
