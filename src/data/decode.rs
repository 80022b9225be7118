//! Image decoding: format sniffed from content, EXIF orientation applied, everything to 8-bit RGB.

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Larger images are refused rather than risk exhausting memory on a hostile file.
pub const MAX_PIXELS: u64 = 100_000_000;
const MAX_SIDE: u32 = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an image (content is {what})")]
    NotImage { path: PathBuf, what: String },
    #[error("{path}: cannot decode {format:?} image: {msg}")]
    Decode {
        path: PathBuf,
        format: ImageFormat,
        msg: String,
    },
    #[error(
        "{path}: image too large ({width}x{height}); at most {MAX_PIXELS} pixels are accepted"
    )]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
    },
}

impl DecodeError {
    pub fn path(&self) -> &Path {
        match self {
            DecodeError::Io { path, .. }
            | DecodeError::NotImage { path, .. }
            | DecodeError::Decode { path, .. }
            | DecodeError::TooLarge { path, .. } => path,
        }
    }
}

/// The formats we train on (SPEC §1), recognised by magic bytes, never by extension.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    let f = image::guess_format(bytes).ok()?;
    matches!(
        f,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
            | ImageFormat::Tiff
    )
    .then_some(f)
}

fn describe(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "empty".into();
    }
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).to_ascii_lowercase();
    if head.contains("<html") || head.contains("<!doctype") {
        "HTML".into()
    } else if head.contains("<svg") {
        "SVG, which is not supported".into()
    } else {
        format!("unrecognised bytes {:02x?}", &bytes[..bytes.len().min(4)])
    }
}

pub fn decode_file(path: &Path) -> Result<RgbImage, DecodeError> {
    let bytes = std::fs::read(path).map_err(|source| DecodeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_bytes(path, &bytes)
}

/// Decodes `bytes` (named `path` in errors) into RGB8 with EXIF orientation applied and alpha
/// composited on white, as fastai/PIL users expect from `convert('RGB')` of a transparent logo.
pub fn decode_bytes(path: &Path, bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    let format = sniff(bytes).ok_or_else(|| DecodeError::NotImage {
        path: path.to_path_buf(),
        what: describe(bytes),
    })?;
    if format == ImageFormat::Jpeg && jpeg_truncated(bytes) {
        // The JPEG decoder fills a cut-off image with grey instead of failing; PIL (and so fastai's
        // verify_images) rejects such files, and so do we.
        return Err(DecodeError::Decode {
            path: path.to_path_buf(),
            format,
            msg: "file is truncated (no end-of-image marker)".into(),
        });
    }
    let err = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => DecodeError::TooLarge {
            path: path.to_path_buf(),
            width: 0,
            height: 0,
        },
        e => DecodeError::Decode {
            path: path.to_path_buf(),
            format,
            msg: e.to_string(),
        },
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(err)?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(DecodeError::TooLarge {
            path: path.to_path_buf(),
            width: w,
            height: h,
        });
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(err)?;
    img.apply_orientation(orientation);
    Ok(to_rgb(img))
}

/// A complete JPEG ends its last scan with an EOI marker (FF D9). Entropy-coded data never holds FF D9,
/// but an EXIF thumbnail has its own EOI, so the last EOI must come after the last start-of-scan (FF DA).
fn jpeg_truncated(b: &[u8]) -> bool {
    let last = |m: [u8; 2]| b.windows(2).rposition(|w| w == m);
    match (last([0xFF, 0xDA]), last([0xFF, 0xD9])) {
        (Some(sos), Some(eoi)) => eoi < sos,
        (Some(_), None) => true,
        _ => false,
    }
}

fn to_rgb(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        for c in 0..3 {
            o[c] = ((p[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}
