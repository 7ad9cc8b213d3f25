//! Teams app packages: a small ZIP reader (stored and deflated entries, which is what app
//! packages use) and writer (stored), PNG dimension checks, and a PNG maker for sample icons.
//! No unsafe code and no extra archive dependency: the format parts used are tiny.

use std::collections::BTreeMap;

/// Why a package cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    /// Not a ZIP archive, or a damaged one.
    #[error("the app package is not a valid zip archive: {0}")]
    NotZip(&'static str),
    /// An entry uses a compression method other than stored or deflate.
    #[error("the app package uses an unsupported compression method {0}")]
    Method(u16),
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Reads every file of a ZIP archive into memory (app packages are small).
///
/// # Errors
/// [`PackageError`] for anything that is not a readable archive.
pub fn read_zip(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, PackageError> {
    let damaged = PackageError::NotZip("damaged central directory");
    // End of central directory: the last PK\5\6 within the final 64 KiB + 22 bytes.
    let search_from = bytes.len().saturating_sub(65_557);
    let eocd = (search_from..bytes.len().saturating_sub(21))
        .rev()
        .find(|&i| bytes[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or(PackageError::NotZip("no end of central directory"))?;
    let entries = u16_at(bytes, eocd + 10).ok_or(damaged.clone())?;
    let mut at = u32_at(bytes, eocd + 16).ok_or(damaged.clone())? as usize;
    let mut files = BTreeMap::new();
    for _ in 0..entries {
        if u32_at(bytes, at) != Some(0x0201_4b50) {
            return Err(damaged);
        }
        let method = u16_at(bytes, at + 10).ok_or(damaged.clone())?;
        let compressed = u32_at(bytes, at + 20).ok_or(damaged.clone())? as usize;
        let name_len = u16_at(bytes, at + 28).ok_or(damaged.clone())? as usize;
        let extra_len = u16_at(bytes, at + 30).ok_or(damaged.clone())? as usize;
        let comment_len = u16_at(bytes, at + 32).ok_or(damaged.clone())? as usize;
        let local = u32_at(bytes, at + 42).ok_or(damaged.clone())? as usize;
        let name = String::from_utf8_lossy(
            bytes
                .get(at + 46..at + 46 + name_len)
                .ok_or(damaged.clone())?,
        )
        .into_owned();
        at += 46 + name_len + extra_len + comment_len;
        if u32_at(bytes, local) != Some(0x0403_4b50) {
            return Err(damaged);
        }
        let local_name = u16_at(bytes, local + 26).ok_or(damaged.clone())? as usize;
        let local_extra = u16_at(bytes, local + 28).ok_or(damaged.clone())? as usize;
        let start = local + 30 + local_name + local_extra;
        let data = bytes
            .get(start..start + compressed)
            .ok_or(damaged.clone())?;
        let content = match method {
            0 => data.to_vec(),
            8 => miniz_oxide::inflate::decompress_to_vec(data)
                .map_err(|_| PackageError::NotZip("bad deflate data"))?,
            other => return Err(PackageError::Method(other)),
        };
        if !name.ends_with('/') {
            files.insert(name, content);
        }
    }
    Ok(files)
}

/// CRC-32 (IEEE), as ZIP and PNG use it.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Writes a ZIP archive with stored (uncompressed) entries.
pub fn write_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let offset = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let crc = crc32(data);
        let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&name_len.to_le_bytes());
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let central_offset = u32::try_from(out.len()).unwrap_or(u32::MAX);
    let central_len = u32::try_from(central.len()).unwrap_or(u32::MAX);
    let count = u16::try_from(files.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&central_len.to_le_bytes());
    out.extend_from_slice(&central_offset.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

/// Width and height of a PNG image.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.get(..8)? != b"\x89PNG\r\n\x1a\n" || bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes(bytes.get(16..20)?.try_into().ok()?);
    let height = u32::from_be_bytes(bytes.get(20..24)?.try_into().ok()?);
    Some((width, height))
}

/// A valid single-colour RGBA PNG of the given size (for sample app packages).
pub fn make_png(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(0).to_be_bytes());
        let mut tagged = kind.to_vec();
        tagged.extend_from_slice(data);
        out.extend_from_slice(&tagged);
        out.extend_from_slice(&crc32(&tagged).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 6, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &header);
    let row = 1 + 4 * width as usize;
    let mut raw = vec![0u8; row * height as usize];
    for line in raw.chunks_mut(row) {
        for pixel in line[1..].chunks_mut(4) {
            pixel.copy_from_slice(&[0x46, 0x4E, 0xB8, 0xFF]);
        }
    }
    chunk(
        &mut out,
        b"IDAT",
        &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6),
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zips_round_trip_and_pngs_report_their_size() {
        let color = make_png(192, 192);
        assert_eq!(png_size(&color), Some((192, 192)));
        let zip = write_zip(&[("manifest.json", b"{}"), ("color.png", &color)]);
        let files = read_zip(&zip).expect("reads");
        assert_eq!(files["manifest.json"], b"{}");
        assert_eq!(png_size(&files["color.png"]), Some((192, 192)));
        assert!(read_zip(b"not a zip").is_err());
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn deflated_entries_are_read() {
        // A one-entry archive with a deflated "hello hello hello" made by hand from its parts.
        let content = b"hello hello hello";
        let deflated = miniz_oxide::deflate::compress_to_vec(content, 6);
        let mut zip = write_zip(&[("a.txt", &deflated)]);
        // Flip the method of both headers from 0 (stored) to 8 (deflate).
        zip[8] = 8;
        let central = zip
            .windows(4)
            .position(|w| w == [0x50, 0x4b, 0x01, 0x02])
            .unwrap();
        zip[central + 10] = 8;
        let files = read_zip(&zip).expect("reads");
        assert_eq!(files["a.txt"], content);
    }
}
