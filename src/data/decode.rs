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
        source: super::files::ReadError,
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
        "{path}: image too large (the header claims {width}x{height} pixels); at most {MAX_PIXELS} pixels and {MAX_SIDE} per side are accepted"
    )]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
    },
}

impl DecodeError {
    /// The message without the leading path, for lists that show the path themselves.
    pub fn reason(&self) -> String {
        let full = self.to_string();
        let prefix = format!("{}: ", self.path().display());
        full.strip_prefix(&prefix).unwrap_or(&full).to_string()
    }

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

/// What non-image content looks like, for messages (`HTML`, `empty`, the first bytes).
pub fn describe(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "empty".into();
    }
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).to_ascii_lowercase();
    let t = head.trim_start();
    if head.contains("<html") || head.contains("<!doctype") {
        "HTML".into()
    } else if head.contains("<svg") {
        "SVG, which is not supported".into()
    } else if bytes.starts_with(b"%PDF") {
        "PDF".into()
    } else if bytes.starts_with(b"PK\x03\x04") {
        "a ZIP archive".into()
    } else if bytes.starts_with(b"\x1f\x8b") {
        "gzip data".into()
    } else if t.starts_with('{') || t.starts_with('[') {
        "JSON or text".into()
    } else if bytes.iter().all(|&b| b == 0) {
        "all zero bytes".into()
    } else {
        format!("unrecognised bytes {:02x?}", &bytes[..bytes.len().min(4)])
    }
}

/// Reads (at most `max_bytes`, see [`super::files::read_capped`]) and decodes one image file.
pub fn decode_file(path: &Path, max_bytes: u64) -> Result<RgbImage, DecodeError> {
    let bytes = super::files::read_capped(path, max_bytes).map_err(|source| DecodeError::Io {
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
        image::ImageError::Limits(_) => {
            // The limits stopped the decoder before it told us the size: read it from the header
            // alone (no pixel buffer is made) so the message shows what the file claims.
            let mut r = ImageReader::with_format(Cursor::new(bytes), format);
            r.no_limits();
            let (width, height) = r.into_dimensions().unwrap_or((0, 0));
            DecodeError::TooLarge {
                path: path.to_path_buf(),
                width,
                height,
            }
        }
        e => DecodeError::Decode {
            path: path.to_path_buf(),
            format,
            msg: e.to_string().trim().to_string(),
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
