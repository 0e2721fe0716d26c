//! A downloaded content blob, consumed as a stream of chunks so a 300 MB blob never has to
//! sit in memory, with the `max_blob_bytes` cap enforced on the decoded bytes as they arrive
//! (a decompression-bomb guard). A body that breaks off surfaces as a transient
//! [`ApiError::Transport`] of kind [`TransportKind::Body`].

use bytes::{Bytes, BytesMut};

use super::error::{ApiError, Endpoint, TransportKind};

/// The body of a blob GET.
pub struct BlobBody {
    response: reqwest::Response,
    tenant: String,
    url: String,
    limit: u64,
    read: u64,
    done: bool,
}

impl std::fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBody")
            .field("url", &self.url)
            .field("read", &self.read)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl BlobBody {
    // The error is large but this runs once per blob, next to a network round trip.
    #[allow(clippy::result_large_err)]
    pub(crate) fn new(
        response: reqwest::Response,
        tenant: String,
        url: String,
        limit: u64,
    ) -> Result<Self, ApiError> {
        // A declared length (identity encoding) over the cap fails before reading anything.
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(ApiError::BlobTooLarge {
                tenant,
                content_type: None,
                url,
                limit,
            });
        }
        Ok(BlobBody {
            response,
            tenant,
            url,
            limit,
            read: 0,
            done: false,
        })
    }

    /// The next piece of the (decompressed) body, `None` at the end. Fails with
    /// [`ApiError::BlobTooLarge`] once more than the cap has arrived, and with a transient
    /// [`ApiError::Transport`] when the body breaks off.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        if self.done {
            return Ok(None);
        }
        match self.response.chunk().await {
            Ok(Some(chunk)) => {
                self.read += chunk.len() as u64;
                if self.read > self.limit {
                    self.done = true;
                    return Err(ApiError::BlobTooLarge {
                        tenant: self.tenant.clone(),
                        content_type: None,
                        url: self.url.clone(),
                        limit: self.limit,
                    });
                }
                Ok(Some(chunk))
            }
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            Err(e) => {
                self.done = true;
                let kind = match TransportKind::of(&e) {
                    TransportKind::Other => TransportKind::Body,
                    k => k,
                };
                Err(ApiError::Transport {
                    tenant: self.tenant.clone(),
                    content_type: None,
                    endpoint: Endpoint::FetchBlob,
                    url: self.url.clone(),
                    kind,
                    source: e.without_url(),
                })
            }
        }
    }

    /// Collects the whole body (still capped). For small blobs and tests.
    pub async fn bytes(mut self) -> Result<Bytes, ApiError> {
        let mut out = BytesMut::new();
        while let Some(chunk) = self.chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }

    /// Decoded bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// The blob URL (as requested, with `PublisherIdentifier`).
    pub fn url(&self) -> &str {
        &self.url
    }
}
