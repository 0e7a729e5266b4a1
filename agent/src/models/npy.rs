//! NumPy `.npy` (format 1.0) for the bulk per-frame data the model stages keep in files under
//! the data root — all scores, embeddings — so `numpy.load` reads them directly. Little-endian
//! `f32`, C order, written atomically.

use std::io;
use std::path::Path;

/// The bytes of a `rows × cols` little-endian `f32` array in `.npy` format 1.0.
pub fn encode(rows: usize, cols: usize, data: &[f32]) -> io::Result<Vec<u8>> {
    if data.len() != rows * cols {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} values for a {rows}×{cols} array", data.len()),
        ));
    }
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Reads back what [`encode`] wrote (the agent's own files: a prior dedup's embeddings).
pub fn decode(bytes: &[u8]) -> io::Result<(usize, usize, Vec<f32>)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("not a 2-D <f4 .npy file: {m}"));
    if bytes.len() < 10 || &bytes[..8] != b"\x93NUMPY\x01\x00" {
        return Err(bad("magic"));
    }
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header =
        std::str::from_utf8(bytes.get(10..10 + hlen).ok_or_else(|| bad("header"))?).map_err(|_| bad("header"))?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        return Err(bad("dtype or order"));
    }
    let shape = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).ok_or_else(|| bad("shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("shape"))?;
    let [rows, cols] = dims[..] else { return Err(bad("not 2-D")) };
    let body = &bytes[10 + hlen..];
    if body.len() != rows * cols * 4 {
        return Err(bad("length"));
    }
    let data = body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok((rows, cols, data))
}

/// Writes the array to `path` atomically.
pub fn write(path: &Path, rows: usize, cols: usize, data: &[f32]) -> io::Result<()> {
    crate::stages::files::write_atomic(path, &encode(rows, cols, data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_aligned_header() {
        let data = [1.0f32, -2.5, 0.0, 3.25, f32::MIN_POSITIVE, 7.0];
        let bytes = encode(2, 3, &data).expect("encode");
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert_eq!(decode(&bytes).expect("decode"), (2, 3, data.to_vec()));
        assert!(encode(2, 2, &data).is_err());
        assert!(decode(b"\x93NUMPY\x01\x00\x05\x00{'x'}").is_err());
        let empty = encode(0, 4, &[]).expect("empty");
        assert_eq!(decode(&empty).expect("decode").0, 0);
    }
}
