//! The CLI against hostile but realistic input: corrupt JPEGs among valid ones, manifests
//! that point out of their folder, special files, names that are not UTF-8, concurrent
//! runs, absurd values, tampered checkpoints, a full disk. Each test asserts the exact
//! message or outcome.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::corrupt::{self, Expect};
use crate::common::*;
use crate::eval::ARCH;
use crate::train::{Run, TINY, final_checkpoint, losses, run_dir, shards, train_args};
use dino_pipeline::manifest::{Manifest, try_lock_dir};
use dino_stream::checkpoint::{self, HostTensors};

/// A copy of the tiny training shards that a test may damage.
fn shards_copy(at: &Path) -> PathBuf {
    let dir = at.join("shards");
    fs::create_dir_all(&dir).unwrap();
    for entry in fs::read_dir(shards()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    dir
}

/// The shard keys of `indices` (global sample indices of a one-shard split).
fn keys_of(dir: &Path, indices: &BTreeSet<u64>) -> BTreeSet<String> {
    let manifest = Manifest::load(dir).unwrap().unwrap();
    let rows = read_shard(&dir.join(&manifest.splits["train"].shards[0].file));
    indices
        .iter()
        .map(|&i| rows[i as usize].key.clone())
        .collect()
}

/// A run of the tiny config, `steps` steps long.
fn trained(steps: u64) -> Run {
    let run = run_dir(TINY);
    let max = format!("run.max_steps={steps}");
    dino_stream_ok(&train_args(&run, &["--set", &max]));
    run
}

fn knn_json(run: &Run, val: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "knn",
        "--checkpoint",
        path_str(&run.out),
        "--train",
        path_str(shards()),
        "--val",
        path_str(val),
        "--val-split",
        "train",
        "--k",
        "5",
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&dino_stream_ok(&args)).unwrap()
}

#[test]
fn knn_leaves_out_exactly_the_corrupt_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let val = shards_copy(tmp.path());
    let broken = keys_of(&val, &corrupt::corrupt_rows(&val));
    let run = trained(1);
    for workers in ["1", "3"] {
        let report = knn_json(&run, &val, &["--workers", workers]);
        let skipped: BTreeSet<String> = report["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap().to_owned())
            .collect();
        // a poisoned decoder would lose the valid samples after a broken one as well
        assert_eq!(skipped, broken, "{workers} worker(s)");
        assert_eq!(report["val_samples"], 48 - broken.len());
        assert!(
            report["skipped"][0]["why"]
                .as_str()
                .unwrap()
                .starts_with("does not decode")
        );
    }
}

#[test]
fn attention_reports_each_corrupt_kind_and_reads_cmyk() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained(1);
    let photo = jpeg_files(&samples("crops", 48))[0].clone();
    let valid = fs::read(&photo).unwrap();
    let attention = |image: &Path| {
        dino_stream(&[
            "attention",
            "--checkpoint",
            path_str(&run.out),
            "--image",
            path_str(image),
            "--out",
            path_str(&tmp.path().join("maps")),
            "--size",
            "32",
        ])
    };
    for (k, bad) in corrupt::corpus(&valid).into_iter().enumerate() {
        let file = tmp.path().join(format!("bad_{k}.jpg"));
        fs::write(&file, &bad.bytes).unwrap();
        let out = attention(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match bad.expect {
            Expect::Error(text) => {
                assert!(!out.status.success(), "{}", bad.name);
                assert!(
                    stderr.contains("not a decodable JPEG") && stderr.contains(text),
                    "{}: {stderr}",
                    bad.name
                );
            }
            Expect::Warning(text) => {
                assert!(out.status.success(), "{}: {stderr}", bad.name);
                assert!(
                    stderr.contains("warning:") && stderr.contains(text),
                    "{}: {stderr}",
                    bad.name
                );
            }
            Expect::TooLarge => {
                assert!(
                    stderr.contains("over the limit of"),
                    "{}: {stderr}",
                    bad.name
                )
            }
        }
    }
    // a CMYK JPEG, which ingest accepts, is read too
    let (w, h) = (40u32, 40u32);
    let cmyk: Vec<u8> = (0..w * h).flat_map(|i| [i as u8, 0, 255, 128]).collect();
    let mut c = turbojpeg::Compressor::new().unwrap();
    c.set_subsamp(turbojpeg::Subsamp::None).unwrap();
    let jpeg = c
        .compress_to_vec(turbojpeg::Image {
            pixels: cmyk.as_slice(),
            width: w as usize,
            pitch: w as usize * 4,
            height: h as usize,
            format: turbojpeg::PixelFormat::CMYK,
        })
        .unwrap();
    let file = tmp.path().join("cmyk.jpg");
    fs::write(&file, jpeg).unwrap();
    let out = attention(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_samples_in_training_are_logged_counted_and_kept_in_the_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards_copy(tmp.path());
    let broken = corrupt::corrupt_rows(&data);
    let run = run_dir(TINY);
    // one epoch: 48 samples in 6 batches, each sample once
    let mut args = train_args(&run, &["--set", "run.max_steps=6"]);
    args[4] = path_str(&data);
    let out = dino_stream(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let log = fs::read_to_string(run.out.join("train.log")).unwrap();
    for index in &broken {
        let said = format!("sample {index} (");
        assert!(stderr.contains(&said), "terminal lacks {said}: {stderr}");
        assert!(log.contains(&said), "train.log lacks {said}: {log}");
    }
    assert!(stderr.contains("warning: sample"), "{stderr}");
    let last = metrics_lines(&run.out).pop().unwrap();
    assert_eq!(last["decode_failures"], broken.len());
}

/// The copy's manifest with the first shard's file name (and size) replaced.
fn point_shard_at(dir: &Path, file: &str, bytes: u64) {
    let mut manifest = Manifest::load(dir).unwrap().unwrap();
    let shard = &mut manifest.splits.get_mut("train").unwrap().shards[0];
    shard.file = file.to_owned();
    shard.bytes = bytes;
    manifest.save(dir).unwrap();
}

#[test]
fn manifest_shard_names_stay_in_their_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained(1);
    for (name, bytes) in [("../x.parquet", 10), ("/etc/passwd", 10), ("/dev/zero", 0)] {
        let dir = tmp.path().join(format!("case-{}", name.len()));
        fs::create_dir_all(&dir).unwrap();
        let data = shards_copy(&dir);
        point_shard_at(&data, name, bytes);
        let expected = format!("lists shard {name:?}, which is not a plain file name");
        let fresh = run_dir(TINY);
        let mut train = train_args(&fresh, &[]);
        train[4] = path_str(&data);
        let knn = [
            "knn",
            "--checkpoint",
            path_str(&run.out),
            "--train",
            path_str(&data),
            "--val",
            path_str(&data),
            "--val-split",
            "train",
        ];
        let inspect = ["inspect", "--verify", path_str(&data)];
        for args in [&train[..], &knn[..], &inspect[..]] {
            let err = dino_stream_err(args);
            assert!(err.contains(&expected), "{args:?}: {err}");
        }
    }
    // a plain name that is a link to a device
    let data = shards_copy(&tmp.path().join("link"));
    std::os::unix::fs::symlink("/dev/zero", data.join("link.parquet")).unwrap();
    point_shard_at(&data, "link.parquet", 0);
    let out = dino_stream(&["inspect", "--verify", path_str(&data)]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("FAILED  link.parquet") && said.contains("not a regular file"),
        "{said}"
    );
    let fresh = run_dir(TINY);
    let mut train = train_args(&fresh, &[]);
    train[4] = path_str(&data);
    let err = dino_stream_err(&train);
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn ingest_reads_regular_files_only_and_sniffs_before_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let class = tmp.path().join("src/a");
    fs::create_dir_all(&class).unwrap();
    let photo = jpeg_files(&samples("crops", 48))[0].clone();
    fs::copy(&photo, class.join("photo.JPEG")).unwrap();
    let status = Command::new("mkfifo")
        .arg(class.join("fifo.JPEG"))
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo");
    std::os::unix::fs::symlink("/dev/zero", class.join("zero.JPEG")).unwrap();
    // 2 GiB that are not an image: only the first bytes may be read (a sparse file)
    let big = fs::File::create(class.join("big.JPEG")).unwrap();
    big.set_len(2 << 30).unwrap();
    // a "JPEG" larger than any image within the pixel limit can be
    let mut huge = fs::read(&photo).unwrap();
    huge.resize(3 << 20, 0);
    fs::write(class.join("huge.JPEG"), huge).unwrap();
    let out = tmp.path().join("out");
    let split = &ingest_train(&tmp.path().join("src"), &out, &["--max-pixels", "250000"]);
    assert_eq!(split.rows, 1);
    let reason = |key: &str| {
        split
            .rejected
            .iter()
            .find(|n| n.key == key)
            .unwrap_or_else(|| panic!("{key} not rejected"))
            .reason
            .clone()
    };
    assert_eq!(
        reason("a/fifo.JPEG"),
        "not a regular file (a device, FIFO or socket)"
    );
    assert_eq!(
        reason("a/zero.JPEG"),
        "not a regular file (a device, FIFO or socket)"
    );
    assert_eq!(
        reason("a/big.JPEG"),
        "not an image (content is no known image format)"
    );
    assert!(
        reason("a/huge.JPEG").contains("larger than any image within the pixel limit"),
        "{}",
        reason("a/huge.JPEG")
    );
}

#[test]
fn names_that_are_not_utf8_are_rejected_never_merged() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let photos = jpeg_files(&samples("crops", 48));
    let name = |bytes: &[u8]| OsStr::from_bytes(bytes).to_owned();
    for (i, class) in [name(b"cls\xff"), name(b"cls\xfe"), name(b"ok")]
        .iter()
        .enumerate()
    {
        fs::create_dir_all(src.join(class)).unwrap();
        fs::copy(&photos[i], src.join(class).join("p.JPEG")).unwrap();
    }
    fs::copy(&photos[3], src.join("ok").join(name(b"\xff.JPEG"))).unwrap();
    fs::copy(&photos[4], src.join("ok").join(name(b"\xfe.JPEG"))).unwrap();
    let out = tmp.path().join("out");
    dino_stream_ok(&["ingest", "--src", path_str(&src), "--out", path_str(&out)]);
    let manifest = Manifest::load(&out).unwrap().unwrap();
    assert_eq!(manifest.classes, ["ok"]);
    let split = &manifest.splits["train"];
    assert_eq!(split.rows, 1, "only ok/p.JPEG");
    let rejected: Vec<(&str, &str)> = split
        .rejected
        .iter()
        .map(|n| (n.key.as_str(), n.reason.as_str()))
        .collect();
    assert_eq!(
        rejected,
        [
            (
                "cls\\xfe/p.JPEG",
                "in a class folder whose name is not valid UTF-8; rename it"
            ),
            (
                "cls\\xff/p.JPEG",
                "in a class folder whose name is not valid UTF-8; rename it"
            ),
            (
                "ok/\\xfe.JPEG",
                "its name is not valid UTF-8 (keys are UTF-8); rename it"
            ),
            (
                "ok/\\xff.JPEG",
                "its name is not valid UTF-8 (keys are UTF-8); rename it"
            ),
        ]
    );
}

#[test]
fn a_run_folder_takes_one_training_at_a_time() {
    let run = run_dir(TINY);
    fs::create_dir_all(&run.out).unwrap();
    let lock = try_lock_dir(&run.out).unwrap().expect("the lock is free");
    let err = dino_stream_err(&train_args(&run, &["--set", "run.max_steps=1"]));
    assert!(
        err.contains("another training run is writing here"),
        "{err}"
    );
    assert!(!run.out.join("checkpoints").exists());
    drop(lock);
    dino_stream_ok(&train_args(&run, &["--set", "run.max_steps=1"]));
}

#[test]
fn export_never_overwrites_a_checkpoint() {
    let run = trained(1);
    let ckpt = checkpoint::latest(&run.out.join("checkpoints"))
        .unwrap()
        .unwrap();
    let target = ckpt.join("teacher.safetensors");
    let before = fs::read(&target).unwrap();
    let err = dino_stream_err(&[
        "export",
        "--checkpoint",
        path_str(&run.out),
        "--out",
        path_str(&target),
    ]);
    assert!(err.contains("is inside the checkpoint folder"), "{err}");
    assert_eq!(fs::read(&target).unwrap(), before);
}

#[test]
fn a_failed_overwrite_keeps_the_old_split() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let good = samples("crops", 48);
    dino_stream_ok(&["ingest", "--src", path_str(&good), "--out", path_str(&out)]);
    let before = Manifest::load(&out).unwrap().unwrap();
    // the same classes, every file broken
    for class in &before.classes {
        let dir = tmp.path().join("bad").join(class);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("x.JPEG"), b"not a photo").unwrap();
    }
    let err = dino_stream_err(&[
        "ingest",
        "--src",
        path_str(&tmp.path().join("bad")),
        "--out",
        path_str(&out),
        "--overwrite",
    ]);
    assert!(err.contains("no image could be stored"), "{err}");
    assert_eq!(Manifest::load(&out).unwrap().unwrap(), before);
    dino_stream_ok(&["inspect", "--verify", path_str(&out)]);
    assert!(!out.join(".overwrite-train").exists());
    // a replacement that works replaces (another seed: another layout)
    dino_stream_ok(&[
        "ingest",
        "--src",
        path_str(&good),
        "--out",
        path_str(&out),
        "--overwrite",
        "--seed",
        "1",
    ]);
    let after = Manifest::load(&out).unwrap().unwrap();
    assert_eq!(after.splits["train"].options.seed, 1);
    assert_ne!(after.splits["train"].plan, before.splits["train"].plan);
    dino_stream_ok(&["inspect", "--verify", path_str(&out)]);
    let shards: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    assert_eq!(
        shards.len(),
        after.splits["train"].shards.len(),
        "{shards:?}"
    );
}

#[test]
fn absurd_values_are_errors_that_name_the_key() {
    let run = run_dir(TINY);
    for (set, key) in [
        ("model.img_size=0", "model.img_size"),
        ("data.workers=100000", "data.workers"),
        ("data.global_crop_size=37840", "data.global_crop_size"),
        ("optim.epochs=1537228672809129302", "optim.epochs"),
        ("optim.clip_grad=nan", "optim.clip_grad"),
        ("optim.min_lr=inf", "optim.min_lr"),
        ("loss.student_temp=inf", "loss.student_temp"),
        ("model.depth=0", "model.depth"),
        ("model.num_heads=0", "model.num_heads"),
        ("model.out_dim=1", "model.out_dim"),
        ("model.head_bottleneck_dim=0", "model.head_bottleneck_dim"),
        ("optim.weight_decay_end=-1", "optim.weight_decay_end"),
        ("loss.teacher_temp=0", "loss.teacher_temp"),
        ("model.head_hidden_dim=0", "model.head_hidden_dim"),
        ("optim.weight_decay=-1", "optim.weight_decay"),
        ("loss.warmup_teacher_temp=0", "loss.warmup_teacher_temp"),
    ] {
        let err = dino_stream_err(&train_args(&run, &["--set", set]));
        assert!(
            err.contains(&format!("invalid value for `{key}`")),
            "{set}: {err}"
        );
    }
    // an unknown key in an override is blamed on the override, not the file
    let err = dino_stream_err(&train_args(&run, &["--set", "optim.warmup_epoch=3"]));
    assert!(
        err.contains("--set optim.warmup_epoch=3: unknown field `warmup_epoch`"),
        "{err}"
    );

    let trained = trained(1);
    let knn = |extra: &[&str]| {
        let mut args = vec![
            "knn",
            "--checkpoint",
            path_str(&trained.out),
            "--train",
            path_str(shards()),
            "--val",
            path_str(shards()),
            "--val-split",
            "train",
        ];
        args.extend_from_slice(extra);
        dino_stream_err(&args)
    };
    for t in ["0", "-1", "nan"] {
        let err = knn(&[&format!("--temperature={t}")]);
        assert!(
            err.contains("the temperature must be a positive number"),
            "{t}: {err}"
        );
    }
    let err = knn(&["--workers", "0"]);
    assert!(err.contains("--workers"), "{err}");
    let err = knn(&["--k", "5,1000"]);
    assert!(
        err.contains("--k 1000 exceeds the 48 train samples"),
        "{err}"
    );
}

/// Rewrites a checkpoint's `file` with `edit` applied to its tensors.
fn edit_tensors(ckpt: &Path, file: &str, edit: impl FnOnce(&mut HostTensors)) {
    let path = ckpt.join(file);
    let mut tensors = checkpoint::read_tensors(&path).unwrap();
    edit(&mut tensors);
    checkpoint::write_tensors(&path, &tensors).unwrap();
}

fn newest(run: &Run) -> PathBuf {
    checkpoint::latest(&run.out.join("checkpoints"))
        .unwrap()
        .unwrap()
}

#[test]
fn tampered_checkpoints_are_refused_with_the_tensor_or_field_named() {
    // an optimizer moment of the wrong length
    let run = trained(2);
    edit_tensors(&newest(&run), "optimizer.safetensors", |t| {
        let m = t.get_mut("m.backbone.cls_token").unwrap();
        m.1.truncate(3);
        m.0 = vec![3];
    });
    let err = dino_stream_err(&train_args(&run, &["--resume", "--set", "run.max_steps=3"]));
    assert!(
        err.contains("tensor `m.backbone.cls_token` has 3 values, the parameter has 24"),
        "{err}"
    );

    // a position that cannot exist
    let run = trained(2);
    let state_path = newest(&run).join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&state_path).unwrap()).unwrap();
    state["position"]["epoch"] = 1_000_000.into();
    fs::write(&state_path, state.to_string()).unwrap();
    let err = dino_stream_err(&train_args(&run, &["--resume", "--set", "run.max_steps=3"]));
    assert!(err.contains("step 2 does not match its position"), "{err}");
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_and_stray_folders_are_ignored() {
    let run = run_dir(TINY);
    dino_stream_ok(&train_args(
        &run,
        &[
            "--set",
            "run.max_steps=4",
            "--set",
            "run.checkpoint_every=2",
        ],
    ));
    let dir = run.out.join("checkpoints");
    // a stray folder that looks newest, and a damaged newest checkpoint
    fs::create_dir_all(dir.join("step-99999999")).unwrap();
    let step4 = dir.join("step-00000004");
    fs::write(step4.join("student.safetensors"), b"damaged").unwrap();
    let out = dino_stream(&train_args(&run, &["--resume", "--set", "run.max_steps=5"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("resuming from the older checkpoint")
            && stderr.contains("step-00000002")
            && stderr.contains("student.safetensors"),
        "{stderr}"
    );
    assert_eq!(final_checkpoint(&run).state.step, 5);
    // steps 3-5 were trained again from step 2: the log reads as one run
    let steps: Vec<u64> = losses(&run).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5]);
    // export and knn of the run folder take its newest complete checkpoint
    let file = run._tmp.path().join("b.safetensors");
    let said = dino_stream_ok(&[
        "export",
        "--checkpoint",
        path_str(&run.out),
        "--out",
        path_str(&file),
    ]);
    assert!(said.contains("step-00000005"), "{said}");

    // --resume CKPT picks one
    let picked = run_dir(TINY);
    let from = dir.join("step-00000002");
    let mut args = train_args(&picked, &["--set", "run.max_steps=3", "--resume-from"]);
    args.push(path_str(&from));
    dino_stream_ok(&args);
    assert_eq!(final_checkpoint(&picked).state.step, 3);
}

#[test]
fn plot_draws_absurd_values() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained(3);
    let path = run.out.join("metrics.jsonl");
    let mut lines = metrics_lines(&run.out);
    lines[0]["loss"] = 1e308.into();
    lines[1]["loss"] = (-1e308).into();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    fs::write(&path, text).unwrap();
    let out = tmp.path().join("plots");
    let said = dino_stream_ok(&["plot", path_str(&run.out), "--out", path_str(&out)]);
    assert!(said.contains("8 curves"), "{said}");
    assert!(out.join("loss.png").exists());
}

#[test]
fn names_are_printed_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let class = tmp.path().join("src/a");
    fs::create_dir_all(&class).unwrap();
    fs::copy(
        &jpeg_files(&samples("crops", 48))[0],
        class.join("photo.JPEG"),
    )
    .unwrap();
    fs::write(class.join("x\x1b[2J\nrejected forged.JPEG"), b"text").unwrap();
    let out = tmp.path().join("out");
    let stdout = dino_stream_ok(&[
        "ingest",
        "--src",
        path_str(&tmp.path().join("src")),
        "--out",
        path_str(&out),
    ]);
    assert!(!stdout.contains('\x1b'), "{stdout:?}");
    assert!(
        stdout.contains("rejected a/x\\u{1b}[2J\\u{a}rejected forged.JPEG: not an image"),
        "{stdout}"
    );
    let listed = dino_stream_ok(&["inspect", "--list", path_str(&out)]);
    assert!(
        !listed.contains('\x1b') && listed.contains("\\u{1b}"),
        "{listed}"
    );
}

#[test]
fn an_output_inside_the_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("a")).unwrap();
    let err = dino_stream_err(&[
        "ingest",
        "--src",
        path_str(&src),
        "--out",
        path_str(&src.join("shards/new")),
    ]);
    assert!(err.contains("is inside --src"), "{err}");
}

#[test]
fn knn_verifies_shard_checksums() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained(1);
    let val = shards_copy(tmp.path());
    let manifest = Manifest::load(&val).unwrap().unwrap();
    let file = val.join(&manifest.splits["train"].shards[0].file);
    let mut bytes = fs::read(&file).unwrap();
    bytes[1000] ^= 0x40;
    fs::write(&file, bytes).unwrap();
    let err = dino_stream_err(&[
        "knn",
        "--checkpoint",
        path_str(&run.out),
        "--train",
        path_str(shards()),
        "--val",
        path_str(&val),
        "--val-split",
        "train",
    ]);
    assert!(err.contains("differs from the manifest's"), "{err}");
}

#[test]
fn a_large_png_within_the_pixel_limit_is_converted() {
    // 13000 x 13000 RGBA decodes to 676 MB, over the image crate's default 512 MiB
    // allocation limit, yet within the pixel limit (169 M of 179 M)
    let tmp = tempfile::tempdir().unwrap();
    let class = tmp.path().join("src/a");
    fs::create_dir_all(&class).unwrap();
    let side = 13_000;
    let mut png = Vec::new();
    image::RgbaImage::from_pixel(side, side, image::Rgba([90, 120, 200, 255]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    fs::write(class.join("big.png"), png).unwrap();
    let out = tmp.path().join("out");
    let split = &ingest_train(&tmp.path().join("src"), &out, &["--max-side", "512"]);
    assert_eq!(
        (split.rows, split.counts.converted),
        (1, 1),
        "{:?}",
        split.rejected
    );
}

#[test]
fn inspect_checks_the_split_total_against_its_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards_copy(tmp.path());
    let path = data.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    manifest["splits"]["train"]["rows"] = 49.into();
    fs::write(&path, manifest.to_string()).unwrap();
    let err = dino_stream_err(&["inspect", "--verify", path_str(&data)]);
    assert!(
        err.contains("a damaged dino-stream manifest (split 'train' has 49 rows, but its shards add up to 48)"),
        "{err}"
    );
}

/// Runs the CLI with writes limited to `bytes` per file (RLIMIT_FSIZE): a full disk.
fn with_full_disk(args: &[&str], bytes: u64) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dino-stream"));
    cmd.args(args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{args:?} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

fn hidden_leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp") || n.starts_with(".import-"))
        .collect()
}

#[test]
fn a_full_disk_leaves_no_partial_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("shards");
    let err = with_full_disk(
        &[
            "ingest",
            "--src",
            path_str(&samples("crops", 48)),
            "--out",
            path_str(&out),
        ],
        64 << 10,
    );
    assert!(err.contains("File too large"), "{err}");
    assert_eq!(hidden_leftovers(&out), Vec::<String>::new());

    let run = trained(1);
    let file = tmp.path().join("backbone.safetensors");
    let err = with_full_disk(
        &[
            "export",
            "--checkpoint",
            path_str(&run.out),
            "--out",
            path_str(&file),
        ],
        1 << 10,
    );
    assert!(err.contains("File too large"), "{err}");
    assert!(!file.exists());
    assert_eq!(hidden_leftovers(tmp.path()), Vec::<String>::new());

    let weights = repo_root().join("tests/fixtures/import/backbone.pth");
    let imported = tmp.path().join("imported");
    let err = with_full_disk(
        &[
            &[
                "import",
                "--weights",
                path_str(&weights),
                "--out",
                path_str(&imported),
            ][..],
            &ARCH,
        ]
        .concat(),
        1 << 10,
    );
    assert!(err.contains("File too large"), "{err}");
    assert!(!imported.exists());
    assert_eq!(hidden_leftovers(tmp.path()), Vec::<String>::new());
}

#[test]
fn a_labels_csv_with_a_byte_order_mark() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("flat");
    fs::create_dir_all(&src).unwrap();
    let photos = jpeg_files(&samples("crops", 48));
    fs::copy(&photos[0], src.join("a.JPEG")).unwrap();
    fs::copy(&photos[1], src.join("b.JPEG")).unwrap();
    let csv = tmp.path().join("labels.csv");
    fs::write(&csv, "\u{feff}file,class\na.JPEG,x\nb.JPEG,y\n").unwrap();
    let out = tmp.path().join("out");
    dino_stream_ok(&[
        "ingest",
        "--src",
        path_str(&src),
        "--out",
        path_str(&out),
        "--labels",
        path_str(&csv),
    ]);
    assert_eq!(Manifest::load(&out).unwrap().unwrap().classes, ["x", "y"]);
}

#[test]
fn folders_that_cannot_be_walked_are_rejected_and_the_ingest_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let photos = jpeg_files(&samples("crops", 48));
    fs::create_dir_all(src.join("a")).unwrap();
    fs::copy(&photos[0], src.join("a/photo.JPEG")).unwrap();
    std::os::unix::fs::symlink(".", src.join("a/loop")).unwrap();
    std::os::unix::fs::symlink("..", src.join("a/up")).unwrap();
    let mut deep = src.join("b");
    for _ in 0..40 {
        deep = deep.join("d");
    }
    fs::create_dir_all(&deep).unwrap();
    fs::copy(&photos[1], deep.join("deep.JPEG")).unwrap();
    fs::copy(&photos[2], src.join("b/photo.JPEG")).unwrap();
    let out = tmp.path().join("out");
    let split = &ingest_train(&src, &out, &[]);
    assert_eq!(split.rows, 2, "a/photo.JPEG and b/photo.JPEG");
    let reasons: Vec<(&str, &str)> = split
        .rejected
        .iter()
        .map(|n| (n.key.as_str(), n.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0], ("a/loop", "a symlink loop back to a; not read"));
    assert_eq!(
        reasons[1],
        ("a/up", "a symlink loop back to the input folder; not read")
    );
    assert!(
        reasons[2].0.starts_with("b/d/d/") && reasons[2].1.contains("nested deeper than 32"),
        "{reasons:?}"
    );
}

#[test]
fn a_damaged_manifest_is_called_damaged_and_causes_are_said_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards_copy(tmp.path());
    let path = data.join("manifest.json");
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, &text[..text.len() / 2]).unwrap();
    let err = dino_stream_err(&["inspect", path_str(&data)]);
    assert!(
        err.contains("a damaged dino-stream manifest (invalid JSON"),
        "{err}"
    );
    assert!(!err.contains("use another output directory"), "{err}");
    // an error names its cause once: no "Caused by:" repeating what the message says
    assert_eq!(err.matches("invalid JSON").count(), 1, "{err}");
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    let err = dino_stream_err(&["inspect", path_str(&data)]);
    assert_eq!(err.matches("Is a directory").count(), 1, "{err}");
    assert!(!err.contains("Caused by"), "{err}");
}
