//! Read-only inspection for tools that compare a pipeline's output with the truth (the demo,
//! benchmarks): the exact records of a blob, without going through the API (no request is
//! logged and no download is counted).

use super::Simulator;

/// One record of a blob as the simulator serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordView {
    /// The record's `Id` (empty when the record has none).
    pub id: String,
    /// The exact bytes served.
    pub bytes: String,
}

impl Simulator {
    /// The records of blob `content_id` exactly as a download would serve them, or `None`
    /// for an unknown id.
    pub fn blob_records(&self, content_id: &str) -> Option<Vec<RecordView>> {
        let (records, ct, ctx) = {
            let st = self.shared.lock();
            let &idx = st.by_id.get(content_id)?;
            let b = &st.blobs[idx];
            (
                b.records.clone(),
                b.ct,
                self.shared.env.ctxs[b.tenant].clone(),
            )
        };
        Some(
            records
                .iter()
                .map(|r| RecordView {
                    id: r.id(),
                    bytes: r.render(&ctx, ct),
                })
                .collect(),
        )
    }
}
