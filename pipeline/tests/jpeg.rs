//! The JPEG decoder against a hostile corpus: every kind of corrupt file is reported as it
//! should be, and the same decoder then decodes the next valid file exactly as a fresh one
//! does (a failed or warned call must not leave state behind).

use dino_pipeline::jpeg::{JpegDecoder, JpegEncoder, Pixels};

use crate::corrupt::{Expect, corpus};

/// A 96x64 photo-like gradient, baseline 4:2:0 at quality 90.
pub fn valid_jpeg() -> Vec<u8> {
    let (w, h) = (96u32, 64u32);
    let pixels: Vec<u8> = (0..w * h)
        .flat_map(|i| {
            let (x, y) = (i % w, i / w);
            [(x * 2) as u8, (y * 3) as u8, ((x * y) % 251) as u8]
        })
        .collect();
    JpegEncoder::new(90)
        .unwrap()
        .encode(&pixels, w, h, false)
        .unwrap()
}

#[test]
fn every_corrupt_kind_is_reported_and_leaves_the_decoder_clean() {
    let valid = valid_jpeg();
    let mut fresh = Vec::new();
    let reference = JpegDecoder::new()
        .unwrap()
        .decode(&valid, Pixels::Rgb, &mut fresh)
        .unwrap();
    assert_eq!(reference.warning, None);

    let mut decoder = JpegDecoder::new().unwrap();
    let mut out = Vec::new();
    for corrupt in corpus(&valid) {
        let name = corrupt.name;
        let result = decoder.decode(&corrupt.bytes, Pixels::Rgb, &mut out);
        match (corrupt.expect, &result) {
            (Expect::Error(text), Err(e)) => {
                assert!(e.to_string().contains(text), "{name}: error {e}")
            }
            (Expect::Warning(text), Ok(d)) => {
                let warning = d.warning.as_deref().unwrap_or("no warning");
                assert!(warning.contains(text), "{name}: warning {warning}");
            }
            (Expect::TooLarge, Err(e)) => {
                assert!(e.to_string().contains("over the limit"), "{name}: {e}");
                let header = decoder.header(&corrupt.bytes).unwrap();
                assert_eq!((header.width, header.height), (65500, 65500), "{name}");
            }
            (expect, result) => panic!("{name}: expected {expect:?}, got {result:?}"),
        }
        // the next valid file, on the same decoder, scaled and at full size
        let header = decoder.header(&valid).unwrap();
        assert_eq!((header.width, header.height), (96, 64), "after {name}");
        let half = decoder
            .decode_scaled(&valid, Pixels::Rgb, 2, &mut out)
            .unwrap();
        assert_eq!((half.width, half.height, half.warning), (48, 32, None));
        let decoded = decoder.decode(&valid, Pixels::Rgb, &mut out).unwrap();
        assert_eq!(decoded, reference, "after {name}");
        assert!(
            out == fresh,
            "after {name}: pixels differ from a fresh decoder's"
        );
    }
}

#[test]
fn header_fields_are_never_those_of_the_previous_file() {
    // a stream that ends before its frame parses "successfully" as tables only; its size
    // must not be the previous file's
    let valid = valid_jpeg();
    let mut decoder = JpegDecoder::new().unwrap();
    decoder.header(&valid).unwrap();
    let err = decoder.header(&valid[..100]).unwrap_err();
    assert!(err.to_string().contains("no image"), "{err}");
}
