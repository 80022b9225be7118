//! NPY v1.0 headers, written and read by hand: the format is ten bytes of preamble plus a Python
//! dict literal, and owning both sides lets the reader refuse anything it did not expect without
//! allocating on the file's say-so.
//!
//! Image shards put their data at [`PAGE`] (the header is padded with spaces), so every record of a
//! 192×192 shard starts on a page boundary and `madvise` ranges line up with records.

use std::io::Read;
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";
/// Data offset of image shards: one page. numpy reads headers up to 10 000 bytes by default.
pub const PAGE: usize = 4096;
/// Data offset of small arrays (labels): numpy's own 64-byte alignment.
pub const ALIGN: usize = 64;
/// v1.0 stores the header length in a u16.
const MAX_HEADER: usize = 10 + u16::MAX as usize;

/// A parsed header: element type, C-order shape and where the data starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub descr: String,
    pub shape: Vec<u64>,
    pub data_offset: u64,
}

impl Header {
    /// Bytes of data the header promises, `None` when the product overflows.
    pub fn data_bytes(&self) -> Option<u64> {
        let item = match self.descr.as_str() {
            "|u1" => 1u64,
            "<i8" => 8,
            _ => return None,
        };
        self.shape
            .iter()
            .try_fold(item, |acc, &d| acc.checked_mul(d))
    }

    /// The exact length of a well-formed file with this header.
    pub fn file_bytes(&self) -> Option<u64> {
        self.data_bytes()?.checked_add(self.data_offset)
    }
}

/// A v1.0 header of exactly a multiple of `align` bytes (`align` ≥ 64 and a multiple of 64).
pub fn header(descr: &str, shape: &[u64], align: usize) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    let unpadded = 10 + dict.len() + 1;
    let total = unpadded.div_ceil(align) * align;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&((total - 10) as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

/// Parses a header from the start of a file (`bytes` may hold more than the header).
pub fn parse(bytes: &[u8]) -> Result<Header, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not an NPY file (bad magic)".into());
    }
    if bytes[6] != 1 {
        return Err(format!(
            "NPY version {}.{}, expected 1.0",
            bytes[6], bytes[7]
        ));
    }
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    if bytes.len() < 10 + len {
        return Err("header cut short".into());
    }
    let text =
        std::str::from_utf8(&bytes[10..10 + len]).map_err(|_| "header is not ASCII".to_string())?;
    let descr = field(text, "descr")?
        .trim_matches(|c| c == '\'' || c == '"')
        .to_string();
    match field(text, "fortran_order")? {
        "False" => {}
        other => return Err(format!("fortran_order {other}, expected False")),
    }
    let dims = field(text, "shape")?;
    let inner = dims
        .strip_prefix('(')
        .and_then(|d| d.strip_suffix(')'))
        .ok_or_else(|| format!("shape `{dims}` is not a tuple"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<u64>().map_err(|_| format!("bad dimension `{d}`")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Header {
        descr,
        shape,
        data_offset: (10 + len) as u64,
    })
}

/// The value text of `'key': value` in the header dict (a tuple kept whole).
fn field<'a>(text: &'a str, key: &str) -> Result<&'a str, String> {
    let pat = format!("'{key}':");
    let start = text
        .find(&pat)
        .map(|i| i + pat.len())
        .ok_or_else(|| format!("header has no `{key}`"))?;
    let rest = text[start..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1)
    } else {
        rest.find([',', '}'])
    }
    .ok_or_else(|| format!("header's `{key}` is not closed"))?;
    Ok(rest[..end].trim())
}

/// Reads and checks the header of the file at `path`: its element type and that the file is exactly
/// as long as the header says (a truncated or padded file is refused). At most one header's worth
/// of bytes is read.
pub fn check_file(path: &Path, descr: &str) -> Result<Header, String> {
    let (f, len) = crate::data::files::open_regular(path).map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(PAGE);
    f.take(MAX_HEADER as u64)
        .read_to_end(&mut head)
        .map_err(|e| e.to_string())?;
    let h = parse(&head)?;
    if h.descr != descr {
        return Err(format!("dtype {}, expected {descr}", h.descr));
    }
    let want = h
        .file_bytes()
        .ok_or_else(|| format!("shape {:?} overflows", h.shape))?;
    if len != want {
        return Err(format!(
            "{len} bytes, but its header promises {want} (shape {:?})",
            h.shape
        ));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_alignment() {
        for (shape, align) in [
            (vec![3u64, 192, 192, 3], PAGE),
            (vec![7], ALIGN),
            (vec![0, 8, 8, 3], PAGE),
        ] {
            let h = header("|u1", &shape, align);
            assert_eq!(h.len() % align, 0);
            assert_eq!(*h.last().unwrap(), b'\n');
            let p = parse(&h).unwrap();
            assert_eq!(p.shape, shape);
            assert_eq!(p.data_offset as usize, h.len());
        }
        assert_eq!(
            parse(&header("<i8", &[5], ALIGN)).unwrap().data_bytes(),
            Some(40)
        );
    }

    #[test]
    fn refuses_what_it_did_not_write() {
        let mut h = header("|u1", &[2, 2], ALIGN);
        h[6] = 2;
        assert!(parse(&h).unwrap_err().contains("version"));
        assert!(parse(b"PK\x03\x04 not npy").is_err());
        let mut f = header("|u1", &[2, 2], ALIGN);
        let pos = f.windows(5).position(|w| w == b"False").unwrap();
        f[pos..pos + 5].copy_from_slice(b"True ");
        assert!(parse(&f).unwrap_err().contains("fortran_order"));
        let big = Header {
            descr: "|u1".into(),
            shape: vec![u64::MAX, 2],
            data_offset: 64,
        };
        assert_eq!(big.data_bytes(), None);
    }

    #[test]
    fn parses_numpy_style_headers() {
        let text = "{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }";
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(text.len() as u16).to_le_bytes());
        b.extend_from_slice(text.as_bytes());
        let h = parse(&b).unwrap();
        assert_eq!((h.descr.as_str(), h.shape.as_slice()), ("<i8", &[4u64][..]));
    }
}
