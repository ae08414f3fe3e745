//! A hostile JPEG corpus, made from one valid baseline JPEG: files that libjpeg-turbo rejects
//! in its header reader, in its frame or scan, files it decodes only with a warning, and
//! files whose header asks for an absurd allocation. Shared by the tests of both crates
//! (`pipeline/tests` includes this file by path).
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use dino_pipeline::manifest::Manifest;
use dino_pipeline::shard::{self, Row, ShardWriter};

/// What a decoder must make of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The decode fails, with a message containing this.
    Error(&'static str),
    /// The decode completes with a libjpeg warning containing this (the library made up
    /// the damaged part).
    Warning(&'static str),
    /// The header parses, but the image is over the default pixel limit.
    TooLarge,
}

#[derive(Debug, Clone)]
pub struct Corrupt {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub expect: Expect,
}

/// The offset of the first `FF code` segment of `jpeg`'s header (before the scan).
fn segment(jpeg: &[u8], code: u8) -> usize {
    let mut i = 2;
    while i + 4 <= jpeg.len() {
        assert_eq!(jpeg[i], 0xFF, "a marker at {i}");
        if jpeg[i + 1] == code {
            return i;
        }
        assert_ne!(
            jpeg[i + 1],
            0xDA,
            "no FF {code:02X} segment before the scan"
        );
        i += 2 + usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
    }
    panic!("no FF {code:02X} segment");
}

/// The frame header (SOF0) with its height and width replaced.
fn with_size(jpeg: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let sof = segment(jpeg, 0xC0);
    out[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    out[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    out
}

/// Every kind of corrupt file, made from `valid` (a baseline JPEG, as `JpegEncoder` writes,
/// of at least a few kilobytes).
pub fn corpus(valid: &[u8]) -> Vec<Corrupt> {
    assert!(valid.len() > 2000 && valid.ends_with(&[0xFF, 0xD9]));
    let junk = {
        let mut b = vec![0xFF, 0xD8, 0xFF];
        b.extend(std::iter::repeat_n(b'j', 64));
        b
    };
    let bogus_length = {
        // the frame header's length disagrees with its component count
        let mut b = valid.to_vec();
        let sof = segment(valid, 0xC0);
        let len = u16::from_be_bytes([b[sof + 2], b[sof + 3]]) + 3;
        b[sof + 2..sof + 4].copy_from_slice(&len.to_be_bytes());
        b
    };
    let bogus_dqt = {
        let mut b = valid.to_vec();
        b[segment(valid, 0xDB) + 4] = 0x07; // precision 0, table index 7 (of 0-3)
        b
    };
    let extraneous = {
        // more than the entropy decoder's look-ahead swallows
        let mut b = valid[..valid.len() - 2].to_vec();
        b.extend([0x00; 64]);
        b.extend([0xFF, 0xD9]);
        b
    };
    vec![
        Corrupt {
            name: "junk after the start marker",
            bytes: junk,
            expect: Expect::Error("Unsupported marker type 0x6a"),
        },
        Corrupt {
            name: "bogus marker length",
            bytes: bogus_length,
            expect: Expect::Error("Bogus marker length"),
        },
        Corrupt {
            name: "bogus DQT index",
            bytes: bogus_dqt,
            expect: Expect::Error("Bogus DQT index 7"),
        },
        Corrupt {
            name: "cut to 100 bytes, before the frame",
            bytes: valid[..100].to_vec(),
            expect: Expect::Error("JPEG datastream contains no image"),
        },
        Corrupt {
            name: "start marker only",
            bytes: valid[..2].to_vec(),
            expect: Expect::Error("JPEG datastream contains no image"),
        },
        Corrupt {
            name: "zero width",
            bytes: with_size(valid, 0, 64),
            expect: Expect::Error("Empty JPEG image"),
        },
        Corrupt {
            name: "cut in the middle of the scan",
            bytes: valid[..valid.len() / 2].to_vec(),
            expect: Expect::Warning("Premature end of JPEG file"),
        },
        Corrupt {
            name: "extraneous bytes before the end marker",
            bytes: extraneous,
            expect: Expect::Warning("extraneous bytes before marker 0xd9"),
        },
        Corrupt {
            name: "65500x65500 declared in 6 kB",
            bytes: with_size(valid, 65500, 65500),
            expect: Expect::TooLarge,
        },
    ]
}

/// Rewrites the `train` split's only shard in `dir` with rows swapped for the hostile corpus (made from
/// the first row's photo), every few rows, updating the manifest's checksum; returns their
/// global indices.
pub fn corrupt_rows(dir: &Path) -> BTreeSet<u64> {
    let mut manifest = Manifest::load(dir).unwrap().unwrap();
    let split = manifest.splits.get_mut("train").unwrap();
    assert_eq!(split.shards.len(), 1);
    let path = dir.join(&split.shards[0].file);
    let record = shard::read_record(&path, &shard::read_footer(&path).unwrap()).unwrap();
    let rows = super::data::read_shard(&path);
    let kinds = corpus(&rows[0].jpeg);
    let bad_at = |i: usize| (i % 5 == 3).then(|| &kinds[(i / 5) % kinds.len()]);
    let tmp = dir.join("rewrite.parquet");
    let mut writer = ShardWriter::create(&tmp, 64 << 20).unwrap();
    let mut broken = BTreeSet::new();
    for (i, r) in rows.iter().enumerate() {
        let jpeg = match bad_at(i) {
            Some(bad) => {
                broken.insert(i as u64);
                bad.bytes.clone()
            }
            None => r.jpeg.clone(),
        };
        writer
            .push(&Row {
                key: r.key.clone(),
                label: r.label,
                jpeg,
                width: r.width as u32,
                height: r.height as u32,
            })
            .unwrap();
    }
    assert!(broken.len() >= kinds.len(), "every kind is in the shard");
    let written = writer.finish(&record).unwrap();
    fs::rename(&tmp, &path).unwrap();
    split.shards[0].bytes = written.bytes;
    split.shards[0].sha256 = written.sha256;
    manifest.save(dir).unwrap();
    broken
}
