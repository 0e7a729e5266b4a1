//! Image pre-processing exactly as the reference (PIL + the package manifest) does it: decode
//! the JPEG with libjpeg-turbo (as PIL does: accurate integer IDCT, fancy upsampling), resize
//! to the package's size with Pillow's resampling (separable convolution, 22-bit fixed-point
//! coefficients, a horizontal then a vertical pass, each rounded to 8 bits), then rescale and
//! normalise into a CHW `f32` planar buffer.

use super::manifest::{ImageSpec, Resample};

/// An 8-bit RGB image, rows top to bottom, pixels interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a readable JPEG: {0}")]
    Jpeg(String),
}

/// Decodes a JPEG file's bytes to RGB.
pub fn decode_jpeg(bytes: &[u8]) -> Result<Rgb8, DecodeError> {
    let img: turbojpeg::Image<Vec<u8>> =
        turbojpeg::decompress(bytes, turbojpeg::PixelFormat::RGB).map_err(|e| DecodeError::Jpeg(e.to_string()))?;
    let (w, h, pitch) = (img.width, img.height, img.pitch);
    let data = if pitch == w * 3 {
        img.pixels
    } else {
        img.pixels.chunks(pitch).flat_map(|row| row[..w * 3].iter().copied()).collect()
    };
    Ok(Rgb8 { width: w, height: h, data })
}

/// Encodes RGB as a JPEG (4:4:4) at `quality` (tests and fixtures).
pub fn encode_jpeg(img: &Rgb8, quality: i32) -> Result<Vec<u8>, DecodeError> {
    let view = turbojpeg::Image {
        pixels: img.data.as_slice(),
        width: img.width,
        pitch: img.width * 3,
        height: img.height,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(view, quality, turbojpeg::Subsamp::None)
        .map(|b| b.to_vec())
        .map_err(|e| DecodeError::Jpeg(e.to_string()))
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn bicubic(x: f64) -> f64 {
    // Pillow's a = -0.5.
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Per output pixel: the first input index and the fixed-point weights (Pillow's
/// `precompute_coeffs` + `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize, resample: Resample) -> Vec<(usize, Vec<i32>)> {
    let (filter, support): (fn(f64) -> f64, f64) = match resample {
        Resample::Bilinear => (bilinear, 1.0),
        Resample::Bicubic => (bicubic, 2.0),
    };
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = support * filterscale;
    let ss = 1.0 / filterscale;
    let mut out = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = (((center + support + 0.5) as i64).min(in_size as i64) as usize).saturating_sub(xmin);
        let mut k: Vec<f64> = (0..xmax).map(|x| filter((x as f64 + xmin as f64 - center + 0.5) * ss)).collect();
        let ww: f64 = k.iter().sum();
        if ww != 0.0 {
            for w in k.iter_mut() {
                *w /= ww;
            }
        }
        let fixed = k
            .iter()
            .map(|w| {
                let v = w * f64::from(1u32 << PRECISION_BITS);
                if *w < 0.0 {
                    (v - 0.5) as i32
                } else {
                    (v + 0.5) as i32
                }
            })
            .collect();
        out.push((xmin, fixed));
    }
    out
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes like Pillow's `Image.resize((width, height), resample)` on an RGB image: the same
/// fixed-point coefficients and passes (horizontal, then vertical), written so that the
/// compiler can vectorise the vertical pass (a whole row per tap).
pub fn resize(img: &Rgb8, width: usize, height: usize, resample: Resample) -> Rgb8 {
    let mut cur = img.clone();
    if width != cur.width {
        let coeffs = coefficients(cur.width, width, resample);
        let mut data = vec![0u8; width * cur.height * 3];
        for (row, out) in cur.data.chunks_exact(cur.width * 3).zip(data.chunks_exact_mut(width * 3)) {
            for ((xmin, k), px) in coeffs.iter().zip(out.chunks_exact_mut(3)) {
                let half: i32 = 1 << (PRECISION_BITS - 1);
                let (mut r, mut g, mut b) = (half, half, half);
                for (src, w) in row[xmin * 3..].chunks_exact(3).zip(k) {
                    r += i32::from(src[0]) * w;
                    g += i32::from(src[1]) * w;
                    b += i32::from(src[2]) * w;
                }
                px[0] = clip8(r);
                px[1] = clip8(g);
                px[2] = clip8(b);
            }
        }
        cur = Rgb8 { width, height: cur.height, data };
    }
    if height != cur.height {
        let coeffs = coefficients(cur.height, height, resample);
        let stride = cur.width * 3;
        let mut data = vec![0u8; stride * height];
        let mut acc = vec![0i32; stride];
        for ((ymin, k), out) in coeffs.iter().zip(data.chunks_exact_mut(stride)) {
            acc.fill(1 << (PRECISION_BITS - 1));
            for (src, w) in cur.data[ymin * stride..].chunks_exact(stride).zip(k) {
                for (a, v) in acc.iter_mut().zip(src) {
                    *a += i32::from(*v) * w;
                }
            }
            for (o, a) in out.iter_mut().zip(&acc) {
                *o = clip8(*a);
            }
        }
        cur = Rgb8 { width: cur.width, height, data };
    }
    cur
}

/// Resizes to the package's input size and writes `(v · rescale − mean) / std` per channel,
/// planar (C, H, W), into `out` (length 3 · height · width).
pub fn to_tensor(img: &Rgb8, spec: &ImageSpec, out: &mut [f32]) {
    let (w, h) = (spec.width as usize, spec.height as usize);
    let r = resize(img, w, h, spec.resample);
    let plane = w * h;
    for (c, dst) in out[..3 * plane].chunks_exact_mut(plane).enumerate() {
        let (mean, std) = (spec.mean[c], spec.std[c]);
        for (o, px) in dst.iter_mut().zip(r.data.chunks_exact(3)) {
            *o = (f32::from(px[c]) * spec.rescale - mean) / std;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Rgb8 {
        let (w, h) = (7usize, 5usize);
        let data = (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| (0..3).map(move |c| ((x * 37 + y * 11 + c * 83) % 256) as u8)))
            .collect();
        Rgb8 { width: w, height: h, data }
    }

    /// Literal outputs of Pillow 13.0.0's `Image.resize` on the same 7×5 image
    /// (`Image.frombytes("RGB", (7, 5), bytes((x*37 + y*11 + c*83) % 256 ...)))`).
    #[test]
    fn resize_matches_pillow_byte_for_byte() {
        let cases: &[(Resample, usize, usize, &[u8])] = &[
            (
                Resample::Bilinear,
                3,
                4,
                &[
                    35, 118, 201, 114, 182, 99, 193, 75, 103, 48, 131, 191, 127, 195, 87, 206, 88, 116, 60, 143, 171,
                    139, 172, 64, 218, 68, 128, 73, 156, 184, 152, 160, 77, 163, 58, 141,
                ][..],
            ),
            (
                Resample::Bilinear,
                10,
                8,
                &[
                    0, 83, 166, 20, 103, 186, 46, 129, 212, 72, 155, 238, 98, 181, 98, 124, 207, 34, 150, 220, 60, 176,
                    67, 86, 202, 29, 112, 222, 49, 132, 5, 88, 171, 25, 108, 191, 51, 134, 217, 77, 160, 243, 103, 186,
                    103, 129, 212, 39, 155, 225, 65, 181, 72, 91, 207, 34, 117, 227, 54, 137, 12, 95, 178, 32, 115,
                    198, 58, 141, 220, 84, 167, 235, 110, 193, 104, 136, 219, 46, 162, 232, 72, 188, 79, 98, 214, 41,
                    124, 234, 61, 144, 19, 102, 185, 39, 122, 205, 65, 148, 187, 91, 174, 90, 117, 200, 55, 143, 226,
                    53, 169, 239, 79, 195, 86, 105, 221, 48, 131, 241, 68, 151, 25, 108, 191, 45, 128, 211, 71, 154,
                    173, 97, 180, 20, 123, 206, 33, 149, 204, 59, 175, 170, 85, 201, 72, 111, 227, 54, 137, 247, 74,
                    157, 32, 115, 198, 52, 135, 218, 78, 161, 180, 104, 187, 27, 130, 213, 40, 156, 155, 66, 182, 25,
                    92, 208, 39, 118, 234, 61, 144, 254, 81, 164, 39, 122, 205, 59, 142, 225, 85, 168, 187, 111, 194,
                    34, 137, 220, 47, 163, 156, 73, 189, 16, 99, 215, 42, 125, 176, 68, 151, 117, 88, 171, 44, 127,
                    210, 64, 147, 230, 90, 173, 192, 116, 199, 39, 142, 225, 52, 168, 161, 78, 194, 21, 104, 220, 47,
                    130, 130, 73, 156, 10, 93, 176,
                ][..],
            ),
            (
                Resample::Bilinear,
                7,
                2,
                &[
                    11, 94, 177, 48, 131, 214, 85, 168, 181, 122, 205, 32, 159, 230, 69, 196, 23, 106, 233, 60, 143,
                    33, 116, 199, 70, 153, 236, 107, 190, 29, 144, 227, 54, 181, 78, 91, 218, 45, 128, 174, 82, 165,
                ][..],
            ),
            (
                Resample::Bicubic,
                3,
                4,
                &[
                    29, 113, 206, 113, 192, 100, 197, 70, 97, 42, 126, 196, 126, 209, 83, 210, 86, 114, 56, 145, 173,
                    140, 176, 50, 227, 63, 133, 69, 162, 189, 160, 159, 67, 158, 53, 146,
                ][..],
            ),
            (
                Resample::Bicubic,
                10,
                8,
                &[
                    0, 80, 163, 16, 99, 182, 45, 128, 217, 71, 154, 243, 97, 180, 88, 123, 216, 14, 149, 225, 59, 175,
                    54, 85, 204, 14, 114, 223, 50, 133, 3, 85, 168, 21, 104, 186, 50, 133, 225, 76, 159, 255, 102, 185,
                    97, 128, 221, 18, 154, 230, 64, 180, 59, 90, 209, 19, 119, 228, 55, 138, 10, 93, 176, 29, 112, 195,
                    58, 141, 228, 84, 167, 246, 110, 193, 97, 136, 229, 27, 162, 238, 72, 188, 67, 98, 217, 27, 127,
                    236, 63, 146, 16, 100, 183, 36, 119, 214, 65, 148, 194, 91, 174, 77, 117, 198, 41, 143, 242, 47,
                    169, 255, 79, 195, 78, 105, 224, 32, 134, 243, 70, 153, 23, 106, 189, 42, 125, 227, 71, 154, 181,
                    97, 180, 0, 123, 212, 17, 149, 218, 61, 175, 182, 85, 201, 65, 111, 234, 45, 140, 255, 76, 159, 30,
                    113, 196, 49, 132, 232, 78, 161, 192, 104, 187, 21, 130, 232, 30, 156, 162, 66, 182, 13, 92, 208,
                    31, 118, 241, 64, 147, 255, 83, 166, 38, 121, 204, 57, 140, 240, 86, 169, 200, 112, 195, 29, 138,
                    241, 38, 164, 162, 74, 190, 0, 100, 227, 34, 126, 173, 73, 155, 101, 91, 174, 43, 126, 209, 62,
                    145, 245, 91, 174, 205, 117, 200, 34, 143, 245, 43, 169, 171, 79, 195, 16, 105, 240, 42, 131, 121,
                    77, 160, 0, 96, 179,
                ][..],
            ),
            (
                Resample::Bicubic,
                7,
                2,
                &[
                    9, 92, 175, 46, 129, 212, 83, 166, 189, 120, 203, 30, 157, 241, 67, 194, 21, 104, 239, 58, 141, 35,
                    118, 201, 72, 155, 238, 109, 192, 18, 146, 229, 56, 183, 70, 93, 220, 47, 130, 168, 84, 167,
                ][..],
            ),
        ];
        for (resample, w, h, want) in cases {
            let got = resize(&sample(), *w, *h, *resample);
            assert_eq!(got.data.as_slice(), *want, "{resample:?} {w}x{h}");
        }
        assert_eq!(resize(&sample(), 7, 5, Resample::Bicubic), sample(), "same size is the identity");
    }

    #[test]
    fn tensors_are_planar_and_normalised() {
        let img = Rgb8 { width: 1, height: 1, data: vec![255, 0, 51] };
        let spec = ImageSpec {
            height: 2,
            width: 2,
            resize: "squash".into(),
            resample: Resample::Bilinear,
            rescale: 1.0 / 255.0,
            mean: [0.5, 0.5, 0.5],
            std: [0.5, 0.5, 0.5],
        };
        let mut out = vec![0f32; 12];
        to_tensor(&img, &spec, &mut out);
        for (i, want) in [1.0f32, -1.0, -0.6].iter().enumerate() {
            assert!(out[i * 4..(i + 1) * 4].iter().all(|v| (v - want).abs() < 1e-6), "channel {i}: {out:?}");
        }
    }

    #[test]
    fn jpeg_round_trip_and_refusal() {
        let img = sample();
        let jpeg = turbojpeg::compress(
            turbojpeg::Image {
                pixels: img.data.as_slice(),
                width: 7,
                pitch: 21,
                height: 5,
                format: turbojpeg::PixelFormat::RGB,
            },
            95,
            turbojpeg::Subsamp::None,
        )
        .expect("compress");
        let back = decode_jpeg(&jpeg).expect("decode");
        assert_eq!((back.width, back.height, back.data.len()), (7, 5, 105));
        let close = back.data.iter().zip(&img.data).all(|(a, b)| (i16::from(*a) - i16::from(*b)).abs() <= 24);
        assert!(close, "{:?} vs {:?}", back.data, img.data);
        assert!(decode_jpeg(b"not a jpeg").is_err());
    }
}
