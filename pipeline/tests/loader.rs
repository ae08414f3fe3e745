//! The streaming loader on shards ingested from real photos: determinism across worker
//! counts, exact resumption, rank sharding, epochs, bad data and bad shards.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::data::*;
use dino_pipeline::augment::{Rgb, ViewMaker, draw_view};
use dino_pipeline::batch::{Batch, Position};
use dino_pipeline::dataset::Verify;
use dino_pipeline::ingest::{self, IngestConfig, Quiet};
use dino_pipeline::jpeg::{JpegDecoder, Pixels};
use dino_pipeline::loader::{Loader, LoaderConfig};
use dino_pipeline::manifest::Manifest;
use dino_pipeline::rng;

/// Shards of the 120 sample photos, in small row groups (several per shuffle window).
fn shards(at: &Path) -> PathBuf {
    let out = at.join("shards");
    let mut cfg = IngestConfig::new(samples("crops", 120), &out);
    cfg.row_group_bytes = 300 << 10;
    cfg.shard_bytes = 1 << 20;
    ingest::ingest(&cfg, &Quiet).unwrap();
    out
}

/// Small views keep the tests quick; the recipe's sizes are exercised by the benchmark.
fn config(dir: &Path) -> LoaderConfig {
    let mut cfg = LoaderConfig::new(dir, "train");
    cfg.global[0].size = 48;
    cfg.global[1].size = 48;
    cfg.local.size = 24;
    cfg.local_crops = 3;
    cfg.batch_size = 8;
    cfg.workers = 2;
    cfg.seed = 42;
    cfg
}

fn collect(cfg: LoaderConfig, batches: usize) -> Vec<Batch> {
    Loader::start(cfg)
        .unwrap()
        .take(batches)
        .map(|b| (*b.unwrap()).clone())
        .collect()
}

#[test]
fn batches_are_identical_for_any_worker_count_and_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = shards(tmp.path());
    let mut cfg = config(&dir);
    cfg.end_epoch = Some(2);
    cfg.workers = 1;
    let one = collect(cfg.clone(), usize::MAX);
    assert_eq!(
        one.len(),
        2 * 15,
        "120 samples / 8 = 15 batches per epoch, 2 epochs"
    );
    cfg.workers = 5;
    cfg.buffers = 3;
    let five = collect(cfg.clone(), usize::MAX);
    assert!(one == five, "1 and 5 workers give different batches");

    // Resume from a batch's `next` position: mid-epoch, and at an epoch boundary.
    for k in [3usize, 14, 20] {
        let mut resumed = cfg.clone();
        resumed.start = one[k].next;
        let rest = collect(resumed, usize::MAX);
        assert!(rest == one[k + 1..], "resuming after batch {k} differs");
    }
    assert_eq!(
        one[14].next,
        Position {
            epoch: 1,
            consumed: 0
        }
    );
}

#[test]
fn epochs_visit_each_sample_once_in_new_orders() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = shards(tmp.path());
    let mut cfg = config(&dir);
    cfg.end_epoch = Some(2);
    let batches = collect(cfg, usize::MAX);
    let epoch = |e: u64| -> Vec<u64> {
        batches
            .iter()
            .filter(|b| b.epoch == e)
            .flat_map(|b| b.indices.clone())
            .collect()
    };
    let (e0, e1) = (epoch(0), epoch(1));
    assert_eq!(e0.iter().collect::<BTreeSet<_>>().len(), 120);
    assert_eq!(e1.iter().collect::<BTreeSet<_>>().len(), 120);
    assert_ne!(e0, e1);
    // The first batch already mixes classes (labels), thanks to the window shuffle.
    let labels: BTreeSet<i32> = batches[0].labels.iter().copied().collect();
    assert!(labels.len() >= 5, "{labels:?}");
}

#[test]
fn ranks_get_disjoint_samples_and_equal_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = shards(tmp.path());
    let world = 3;
    let mut seen = BTreeSet::new();
    for rank in 0..world {
        let mut cfg = config(&dir);
        cfg.world = world;
        cfg.rank = rank;
        cfg.end_epoch = Some(1);
        let loader = Loader::start(cfg).unwrap();
        assert_eq!(loader.batches_per_epoch(), 5, "120 / 3 / 8 = 5 batches");
        let batches: Vec<Batch> = loader.map(|b| (*b.unwrap()).clone()).collect();
        assert_eq!(batches.len(), 5);
        for b in &batches {
            for &i in &b.indices {
                assert!(seen.insert(i), "sample {i} given to two ranks");
            }
        }
    }
    assert_eq!(seen.len(), 120);
}

#[test]
fn each_view_is_the_augmentation_of_its_sample_in_its_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = shards(tmp.path());
    let cfg = config(&dir);
    let batch = collect(cfg.clone(), 1).remove(0);
    let rows: Vec<ShardRow> = Manifest::load(&dir).unwrap().unwrap().splits["train"]
        .shards
        .iter()
        .flat_map(|s| read_shard(&dir.join(&s.file)))
        .collect();
    let mut maker = ViewMaker::new();
    for slot in [0, 5] {
        let index = batch.indices[slot];
        let row = &rows[index as usize];
        assert_eq!(batch.labels[slot], row.label);
        let mut px = Vec::new();
        let d = JpegDecoder::new()
            .unwrap()
            .decode(&row.jpeg, Pixels::Rgb, &mut px)
            .unwrap();
        let src = Rgb {
            pixels: &px,
            width: d.width,
            height: d.height,
        };
        let mut r = rng::sample_rng(cfg.seed, 0, index);
        for v in 0..2 {
            let view = draw_view(&mut r, &cfg.global[v], d.width, d.height);
            let mut out = vec![0; 48 * 48 * 3];
            maker.make_view(src, &view, 48, &mut out).unwrap();
            assert!(out == batch.global(v, slot), "global {v} of slot {slot}");
        }
        for v in 0..3 {
            let view = draw_view(&mut r, &cfg.local, d.width, d.height);
            let mut out = vec![0; 24 * 24 * 3];
            maker.make_view(src, &view, 24, &mut out).unwrap();
            assert!(out == batch.local(v, slot), "local {v} of slot {slot}");
        }
    }
}

/// The views of slot `i` of a batch: its two globals and its locals, view-major.
fn slot_views(b: &Batch, i: usize) -> Vec<&[u8]> {
    let (g, l) = (b.shape.global_view_bytes(), b.shape.local_view_bytes());
    let n = b.shape.batch_size;
    let globals = (0..2).map(|v| &b.globals[(v * n + i) * g..][..g]);
    let locals = (0..b.shape.local_crops).map(|v| &b.locals[(v * n + i) * l..][..l]);
    globals.chain(locals).collect()
}

#[test]
fn undecodable_samples_are_counted_and_replaced_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    // A folder where photos are damaged after ingest would have caught them: write the
    // shards from good photos, then swap rows' bytes for every kind of broken JPEG.
    let src = samples("crops", 120);
    let photos = jpeg_files(&src);
    let root = tmp.path().join("root/a");
    fs::create_dir_all(&root).unwrap();
    for (i, p) in photos.iter().take(48).enumerate() {
        fs::copy(p, root.join(format!("{i:02}.JPEG"))).unwrap();
    }
    let dir = tmp.path().join("shards");
    let cfg = IngestConfig::new(tmp.path().join("root"), &dir);
    ingest::ingest(&cfg, &Quiet).unwrap();
    let mut lcfg = config(&dir);
    lcfg.end_epoch = Some(1);
    let clean = collect(lcfg.clone(), usize::MAX);
    let broken = crate::corrupt::corrupt_rows(&dir);

    // 1 worker meets every broken file and then the next valid one; 4 share them out
    for workers in [1, 4] {
        lcfg.workers = workers;
        let mut loader = Loader::start(lcfg.clone()).unwrap();
        let batches: Vec<Batch> = loader.by_ref().map(|b| (*b.unwrap()).clone()).collect();
        assert_eq!(loader.stats().decode_failures, broken.len() as u64);
        let mut replaced = BTreeSet::new();
        for (batch, clean) in batches.iter().zip(&clean) {
            assert_eq!(batch.indices, clean.indices);
            for i in 0..batch.indices.len() {
                if batch.replaced[i] {
                    replaced.insert(batch.indices[i]);
                } else {
                    // not poisoned by an earlier failure: the views of the clean shards
                    assert!(
                        slot_views(batch, i) == slot_views(clean, i),
                        "{workers} worker(s): sample {} differs from the clean run",
                        batch.indices[i]
                    );
                }
            }
        }
        assert_eq!(replaced, broken, "{workers} worker(s)");
    }
    let again = collect(lcfg.clone(), usize::MAX);
    lcfg.workers = 1;
    assert!(
        again == collect(lcfg, usize::MAX),
        "replacement is deterministic"
    );
}

#[test]
fn missing_or_altered_shards_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = shards(tmp.path());
    let manifest = Manifest::load(&dir).unwrap().unwrap();
    let files: Vec<String> = manifest.splits["train"]
        .shards
        .iter()
        .map(|s| s.file.clone())
        .collect();

    let victim = dir.join(&files[1]);
    let mut bytes = fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::write(&victim, &bytes).unwrap();
    let err = Loader::start(config(&dir))
        .err()
        .expect("a flipped byte is caught")
        .to_string();
    assert!(err.contains(&files[1]) && err.contains("SHA-256"), "{err}");
    // Without checksums the footer checks still pass for a flipped data byte.
    let mut quick = config(&dir);
    quick.verify = Verify::Footers;
    assert!(Loader::start(quick).is_ok());

    fs::remove_file(&victim).unwrap();
    let err = Loader::start(config(&dir))
        .err()
        .expect("a missing shard is caught")
        .to_string();
    assert!(
        err.contains(&files[1]) && err.contains("cannot open"),
        "{err}"
    );

    let err = Loader::start(LoaderConfig::new(&dir, "val"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no split 'val'") && err.contains("train"),
        "{err}"
    );
}

#[test]
fn dct_scaled_decoding_keeps_views_close_and_deterministic() {
    // 512 px photos with small views: every crop box is at least 4x its output size, so the
    // decoder can work at 1/4 of the size.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shards");
    ingest::ingest(&IngestConfig::new(samples("imagenet20", 20), &dir), &Quiet).unwrap();
    let mut cfg = config(&dir);
    cfg.batch_size = 4;
    cfg.end_epoch = Some(1);
    let full = collect(cfg.clone(), usize::MAX);
    cfg.dct_scaling = true;
    let scaled = collect(cfg.clone(), usize::MAX);
    cfg.workers = 3;
    assert!(
        collect(cfg, usize::MAX) == scaled,
        "deterministic with DCT scaling"
    );
    assert_eq!(full.len(), 5);
    let mut total = 0.0;
    for (a, b) in full.iter().zip(&scaled) {
        assert_eq!((&a.indices, &a.labels), (&b.indices, &b.labels));
        assert_ne!(a.globals, b.globals, "scaling took effect");
        let mad = mean_abs_diff(&a.globals, &b.globals);
        assert!(mad < 4.0, "globals differ by {mad:.2} levels on average");
        total += mad;
    }
    println!(
        "mean abs diff of DCT-scaled globals: {:.3}",
        total / full.len() as f64
    );
}
