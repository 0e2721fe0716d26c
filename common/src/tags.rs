//! Devo tags for audit records (devo.md §3).

/// Prefix of every Microsoft 365 Management Activity tag in Devo.
pub const TAG_PREFIX: &str = "cloud.office365.management";

/// The tag Devo's parsers expect for a record of `workload`:
/// `cloud.office365.management.<lowercase workload>`.
pub fn tag_for_workload(workload: &str) -> String {
    let mut tag = String::with_capacity(TAG_PREFIX.len() + 1 + workload.len());
    tag.push_str(TAG_PREFIX);
    tag.push('.');
    tag.extend(workload.chars().flat_map(char::to_lowercase));
    tag
}

#[cfg(test)]
mod tests {
    use super::*;

    // Workloads map to the lower-cased fourth tag level Devo's tables use.
    #[test]
    fn workload_tags_are_lower_case() {
        assert_eq!(
            tag_for_workload("Exchange"),
            "cloud.office365.management.exchange"
        );
        assert_eq!(
            tag_for_workload("AzureActiveDirectory"),
            "cloud.office365.management.azureactivedirectory"
        );
        assert_eq!(
            tag_for_workload("MicrosoftTeams"),
            "cloud.office365.management.microsoftteams"
        );
    }
}
