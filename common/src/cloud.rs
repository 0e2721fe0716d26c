//! Microsoft cloud presets and explicit hosts (management-activity-api.md §2).
//!
//! A tenant lives in one Microsoft cloud. The cloud fixes three things: the Management
//! Activity API host, the Entra ID authority host that issues tokens, and the token
//! `resource` (v1) / `scope` (v2). [`CloudPreset`] holds the four published clouds;
//! [`CloudEndpoints`] is the resolved triple every stage uses, built either from a preset
//! or from explicit URLs (e.g. the local simulator).
//!
//! Nothing here touches the network: these are names and URL arithmetic only.

use std::fmt;

use url::Url;

/// One of the Microsoft clouds that host the Management Activity API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloudPreset {
    /// Enterprise (commercial) plans: `manage.office.com`.
    Commercial,
    /// Government Community Cloud: `manage-gcc.office.com`, commercial authority.
    Gcc,
    /// GCC High: `manage.office365.us`, US Government authority.
    GccHigh,
    /// Department of Defense: `manage.protection.apps.mil`, US Government authority.
    Dod,
}

impl CloudPreset {
    /// Every preset, in the order of the reference table.
    pub const ALL: [CloudPreset; 4] = [
        CloudPreset::Commercial,
        CloudPreset::Gcc,
        CloudPreset::GccHigh,
        CloudPreset::Dod,
    ];

    /// The configuration name: `commercial`, `gcc`, `gcc_high` or `dod`.
    pub fn name(self) -> &'static str {
        match self {
            CloudPreset::Commercial => "commercial",
            CloudPreset::Gcc => "gcc",
            CloudPreset::GccHigh => "gcc_high",
            CloudPreset::Dod => "dod",
        }
    }

    /// Parses a configuration name. Case-insensitive; `-` is accepted for `_`
    /// (`GCC-High` → [`CloudPreset::GccHigh`]).
    pub fn from_name(name: &str) -> Option<CloudPreset> {
        let wanted = name.trim().to_ascii_lowercase().replace('-', "_");
        CloudPreset::ALL.into_iter().find(|p| p.name() == wanted)
    }

    /// Host of the Management Activity API.
    pub fn api_host(self) -> &'static str {
        match self {
            CloudPreset::Commercial => "manage.office.com",
            CloudPreset::Gcc => "manage-gcc.office.com",
            CloudPreset::GccHigh => "manage.office365.us",
            CloudPreset::Dod => "manage.protection.apps.mil",
        }
    }

    /// Host of the Entra ID authority that issues tokens for this cloud.
    pub fn authority_host(self) -> &'static str {
        match self {
            CloudPreset::Commercial | CloudPreset::Gcc => "login.microsoftonline.com",
            CloudPreset::GccHigh | CloudPreset::Dod => "login.microsoftonline.us",
        }
    }

    /// The v1 token `resource` (the API audience): `https://{api_host}`.
    pub fn resource(self) -> String {
        format!("https://{}", self.api_host())
    }

    /// The resolved endpoints of this preset.
    pub fn endpoints(self) -> CloudEndpoints {
        // Invariant: both strings are `https://` plus a constant, valid host name.
        let api_base = Url::parse(&format!("https://{}", self.api_host()))
            .expect("preset API host is a valid URL");
        let authority_base = Url::parse(&format!("https://{}", self.authority_host()))
            .expect("preset authority host is a valid URL");
        CloudEndpoints {
            api_base,
            authority_base,
            resource: self.resource(),
        }
    }
}

impl fmt::Display for CloudPreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which Entra ID token endpoint to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TokenEndpoint {
    /// `/{tenant}/oauth2/token` with `resource=`.
    V1,
    /// `/{tenant}/oauth2/v2.0/token` with `scope={resource}/.default` (the default).
    #[default]
    V2,
}

impl TokenEndpoint {
    /// The configuration name: `v1` or `v2`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenEndpoint::V1 => "v1",
            TokenEndpoint::V2 => "v2",
        }
    }

    /// Parses `v1` / `v2` (case-insensitive).
    pub fn from_name(name: &str) -> Option<TokenEndpoint> {
        match name.trim().to_ascii_lowercase().as_str() {
            "v1" => Some(TokenEndpoint::V1),
            "v2" => Some(TokenEndpoint::V2),
            _ => None,
        }
    }
}

impl fmt::Display for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three things a tenant's cloud decides, resolved.
///
/// `api_base` and `authority_base` are origins, optionally with a path prefix (a local
/// simulator may mount both under one port); helpers below join paths onto them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEndpoints {
    /// Base of the Management Activity API, e.g. `https://manage.office.com`.
    pub api_base: Url,
    /// Base of the token authority, e.g. `https://login.microsoftonline.com`.
    pub authority_base: Url,
    /// Token audience (v1 `resource`), e.g. `https://manage.office.com`; the v2 scope is
    /// this plus `/.default`.
    pub resource: String,
}

impl CloudEndpoints {
    /// The v2 `scope` parameter: `{resource}/.default`.
    pub fn scope(&self) -> String {
        format!("{}/.default", self.resource.trim_end_matches('/'))
    }

    /// The token URL of `tenant` (GUID or verified domain) for the chosen endpoint version.
    pub fn token_url(&self, tenant: &str, version: TokenEndpoint) -> Result<Url, url::ParseError> {
        let suffix = match version {
            TokenEndpoint::V1 => "oauth2/token",
            TokenEndpoint::V2 => "oauth2/v2.0/token",
        };
        Url::parse(&format!(
            "{}/{tenant}/{suffix}",
            trimmed(&self.authority_base)
        ))
    }

    /// The activity feed root of `tenant_id`, ending in `/`:
    /// `{api_base}/api/v1.0/{tenant_id}/activity/feed/`. Operations (`subscriptions/list`,
    /// `subscriptions/content` …) are joined onto it.
    pub fn feed_base(&self, tenant_id: &str) -> Result<Url, url::ParseError> {
        Url::parse(&format!(
            "{}/api/v1.0/{tenant_id}/activity/feed/",
            trimmed(&self.api_base)
        ))
    }
}

/// A base URL as text without its trailing `/`, ready for appending `/path`.
fn trimmed(url: &Url) -> &str {
    url.as_str().trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    // Names round-trip and tolerate case and dashes, so `GCC-High` is understood.
    #[test]
    fn preset_names_round_trip() {
        for p in CloudPreset::ALL {
            assert_eq!(CloudPreset::from_name(p.name()), Some(p));
        }
        assert_eq!(
            CloudPreset::from_name("GCC-High"),
            Some(CloudPreset::GccHigh)
        );
        assert_eq!(CloudPreset::from_name("azure"), None);
    }

    // Token and feed URLs are joined without double slashes, even when the base has a path.
    #[test]
    fn urls_join_cleanly() {
        let e = CloudEndpoints {
            api_base: Url::parse("https://127.0.0.1:8443/sim/").unwrap(),
            authority_base: Url::parse("https://127.0.0.1:8443/sim").unwrap(),
            resource: "https://127.0.0.1:8443/".into(),
        };
        assert_eq!(
            e.token_url("t1", TokenEndpoint::V2).unwrap().as_str(),
            "https://127.0.0.1:8443/sim/t1/oauth2/v2.0/token"
        );
        assert_eq!(
            e.feed_base("t1").unwrap().as_str(),
            "https://127.0.0.1:8443/sim/api/v1.0/t1/activity/feed/"
        );
        assert_eq!(e.scope(), "https://127.0.0.1:8443/.default");
    }
}
