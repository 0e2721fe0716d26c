//! Turns a validated [`Config`] into the runtime pieces the stages share: one HTTP client, one
//! token client and one API client (with its rate governor) per tenant, and the Kafka
//! settings. Nothing here touches the network: clients connect lazily, on first use.

use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::SecretString;

use crate::api::{ApiClient, ApiSettings, http_client};
use crate::auth::{self, TokenClient, TokenSettings};
use crate::config::{self, Config, TenantSettings};
use crate::kafka::{KafkaSettings, TransactionMode};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("tenant {tenant}: the HTTP client could not be built: {message}")]
    Http { tenant: String, message: String },
    #[error("tenant {tenant}: the token client could not be built: {message}")]
    Token { tenant: String, message: String },
}

/// One tenant ready to collect.
#[derive(Clone)]
pub struct TenantRuntime {
    pub settings: TenantSettings,
    pub api: Arc<ApiClient>,
}

/// Builds the API client of every tenant in the configuration.
pub fn build_tenants(cfg: &Config) -> Result<Vec<TenantRuntime>, BuildError> {
    cfg.tenants()
        .iter()
        .map(|t| {
            let api = build_api_client(t, cfg.consumer.max_blob_bytes)?;
            Ok(TenantRuntime {
                settings: t.clone(),
                api,
            })
        })
        .collect()
}

/// The API client of one tenant.
pub fn build_api_client(
    t: &TenantSettings,
    max_blob_bytes: u64,
) -> Result<Arc<ApiClient>, BuildError> {
    let http = http_client(t.ca_pem.as_deref()).map_err(|e| BuildError::Http {
        tenant: t.tenant_id.clone(),
        message: e.to_string(),
    })?;
    let credential = match &t.credential {
        config::Credential::ClientSecret(s) => auth::Credential::ClientSecret(s.clone()),
        config::Credential::Certificate {
            cert_pem,
            key_pem,
            alg,
            x5t,
            x5t_s256,
        } => auth::Credential::Certificate {
            cert_pem: cert_pem.clone(),
            key_pem: key_pem.clone(),
            alg: match alg {
                config::Alg::Rs256 => auth::SigningAlg::Rs256,
                config::Alg::Ps256 => auth::SigningAlg::Ps256,
            },
            x5t: *x5t,
            x5t_s256: *x5t_s256,
        },
    };
    let endpoint = match t.token_endpoint {
        crate::cloud::TokenEndpoint::V1 => auth::TokenEndpoint::V1,
        crate::cloud::TokenEndpoint::V2 => auth::TokenEndpoint::V2,
    };
    let tokens = TokenClient::new(
        TokenSettings {
            authority_base: t.endpoints.authority_base.clone(),
            tenant: t.tenant_id.clone(),
            client_id: t.client_id.clone(),
            credential,
            endpoint,
            resource: t.endpoints.resource.clone(),
        },
        http.clone(),
    )
    .map_err(|e| BuildError::Token {
        tenant: t.tenant_id.clone(),
        message: e.to_string(),
    })?;
    let mut settings = ApiSettings::new(t.endpoints.api_base.clone(), t.tenant_id.clone());
    settings.publisher_identifier = t.publisher_identifier.clone();
    settings.requests_per_minute = t.requests_per_minute;
    settings.max_blob_bytes = max_blob_bytes;
    Ok(Arc::new(ApiClient::new(settings, Arc::new(tokens), http)))
}

/// Kafka settings for `bootstrap_servers` (the configured ones, or the embedded broker's).
pub fn kafka_settings(cfg: &config::KafkaSettings, bootstrap_servers: &str) -> KafkaSettings {
    let properties: BTreeMap<String, SecretString> = cfg
        .properties
        .iter()
        .map(|(k, v)| (k.to_string(), SecretString::from(v.to_string())))
        .collect();
    KafkaSettings {
        bootstrap_servers: bootstrap_servers.to_string(),
        topic_prefix: cfg.topic_prefix.clone(),
        partitions: cfg.partitions,
        // -1 asks the broker for its default (KIP-464); the embedded broker has one node.
        replication_factor: cfg
            .replication_factor
            .unwrap_or(if cfg.bootstrap_servers.is_some() {
                -1
            } else {
                1
            }),
        transactions: match cfg.transactions {
            config::Transactions::Auto => TransactionMode::Auto,
            config::Transactions::On => TransactionMode::On,
            config::Transactions::Off => TransactionMode::Off,
        },
        properties,
        embedded: None,
    }
}

/// What a separate stage binary builds from its configuration file before it starts.
pub struct StageSetup {
    pub config: Config,
    pub tenants: Vec<TenantRuntime>,
    pub kafka: KafkaSettings,
}

/// Loads `path`, starts logging as it says, requires `kafka.bootstrap_servers` (only
/// `m365-devo` has an embedded broker) and builds every tenant's API client. An `Err` is the
/// message to print before exiting with code 2 (invalid configuration).
pub fn stage_setup(path: &std::path::Path, binary: &str) -> Result<StageSetup, String> {
    let config = config::load(path).map_err(|e| e.to_string())?;
    crate::telemetry::init_logging(&config.logging.level, config.logging.json);
    let Some(bootstrap) = config.kafka.bootstrap_servers.clone() else {
        return Err(format!(
            "kafka.bootstrap_servers: expected the Kafka brokers for {binary}, e.g. \"kafka-1:9092,kafka-2:9092\" (m365-devo runs an embedded broker when none is given; the separate binaries need a real one)"
        ));
    };
    let tenants = build_tenants(&config).map_err(|e| e.to_string())?;
    let kafka = kafka_settings(&config.kafka, &bootstrap);
    Ok(StageSetup {
        config,
        tenants,
        kafka,
    })
}
