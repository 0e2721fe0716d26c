//! The one size-capped gzip reader of the workspace.
//!
//! Everything that inflates gzip goes through [`capped_gunzip`] (clippy.toml bans the raw
//! flate2 decoders elsewhere), so a small compressed input can never expand into unbounded
//! memory or disk use (a "decompression bomb"). Concatenated gzip members are decoded as one
//! stream, as `gunzip` does.

use std::io::{self, Read};

/// Error carried inside the `io::Error` when the decompressed size passes the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Decompressed data exceeds the limit of {limit} bytes.")]
pub struct SizeLimitExceeded {
    /// The cap, in decompressed bytes.
    pub limit: u64,
}

/// Failure of [`gunzip_to_vec`].
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    /// The output would be larger than allowed.
    #[error(transparent)]
    TooLarge(SizeLimitExceeded),
    /// Corrupt or truncated gzip data, or a read error of the input.
    #[error("Gzip data could not be decoded: {0}.")]
    Io(#[source] io::Error),
}

/// A reader that inflates gzip and fails once more than `max` bytes have come out.
pub struct CappedGunzip<R: Read> {
    #[allow(clippy::disallowed_types)] // the single sanctioned use (style.md §12)
    inner: flate2::read::MultiGzDecoder<R>,
    produced: u64,
    max: u64,
}

impl<R: Read> CappedGunzip<R> {
    /// Decompressed bytes produced so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }
}

impl<R: Read> Read for CappedGunzip<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Allow reading one byte past the cap so "exactly max" is fine and "max + 1" fails.
        let allowed = self.max.saturating_add(1).saturating_sub(self.produced);
        let len = usize::try_from(allowed)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..len])?;
        self.produced += n as u64;
        if self.produced > self.max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                SizeLimitExceeded { limit: self.max },
            ));
        }
        Ok(n)
    }
}

/// Wraps `input` (gzip bytes) in a reader that yields at most `max` decompressed bytes; one
/// more byte makes `read` fail with an `InvalidData` error wrapping [`SizeLimitExceeded`]
/// (test with [`is_size_limit_error`]).
#[allow(clippy::disallowed_types)] // the single sanctioned use (style.md §12)
pub fn capped_gunzip<R: Read>(input: R, max: u64) -> CappedGunzip<R> {
    CappedGunzip {
        inner: flate2::read::MultiGzDecoder::new(input),
        produced: 0,
        max,
    }
}

/// True when `err` came from the cap of a [`CappedGunzip`].
pub fn is_size_limit_error(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.is::<SizeLimitExceeded>())
}

/// Inflates all of `input` into memory, failing if it exceeds `max` bytes.
pub fn gunzip_to_vec(input: impl Read, max: u64) -> Result<Vec<u8>, DecompressError> {
    let mut out = Vec::new();
    match capped_gunzip(input, max).read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) if is_size_limit_error(&e) => {
            Err(DecompressError::TooLarge(SizeLimitExceeded { limit: max }))
        }
        Err(e) => Err(DecompressError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    // Proves data up to exactly the cap comes through unchanged.
    #[test]
    fn within_cap_roundtrips() {
        let data = vec![b'a'; 10_000];
        assert_eq!(gunzip_to_vec(&gzip(&data)[..], 10_000).unwrap(), data);
    }

    // Proves a small bomb is stopped at the cap instead of inflating fully.
    #[test]
    fn bomb_is_capped() {
        let bomb = gzip(&vec![0u8; 5_000_000]);
        assert!(bomb.len() < 20_000);
        match gunzip_to_vec(&bomb[..], 1_000_000) {
            Err(DecompressError::TooLarge(e)) => assert_eq!(e.limit, 1_000_000),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    // Proves concatenated gzip members decode as one stream.
    #[test]
    fn multi_member() {
        let mut both = gzip(b"hello ");
        both.extend(gzip(b"world"));
        assert_eq!(gunzip_to_vec(&both[..], 100).unwrap(), b"hello world");
    }

    // Proves truncated gzip is an I/O error, not silently short data.
    #[test]
    fn truncated_is_error() {
        let data = gzip(&vec![7u8; 100_000]);
        let cut = &data[..data.len() / 2];
        assert!(matches!(
            gunzip_to_vec(cut, 1_000_000),
            Err(DecompressError::Io(_))
        ));
    }
}
