//! The forwarder's runtime settings, built from the validated configuration (`devo`,
//! `health`, `consumer.fallback_tag` and `kafka` sections), and the [`Output`] they describe.
//!
//! Choices made here (design.md §6 leaves them open):
//! * the consumer group is `{topic_prefix}-forwarder` unless overridden (command line
//!   `--group-id` / `M365_FORWARDER_GROUP`): the configuration file has no key for it;
//! * records of `m365.events` without a usable `tag` header go to `consumer.fallback_tag`,
//!   the tag the consumer stage already uses for records without a `Workload`;
//! * `devo_tls` and `tcp` always run through a [`Pool`] (also for one connection), so a
//!   batch is queued without waiting for the socket and the stage loop keeps polling Kafka
//!   while Devo is slow or down;
//! * `devo.date_style: rfc3339` is refused: the Devo line format implements the SDK's
//!   constant date and RFC 3164 only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use m365_common::backlog::Backlog;
use m365_common::config::{self, Config, DevoSettings};

use crate::framing::{DateStyle, LineFormat, ZipBatcher};
use crate::output::{
    FileOutput, HttpOutput, HttpSettings, Output, OutputError, OutputStats, Pool, Sink,
    StdoutOutput, StreamSettings, TlsSettings,
};

/// Why the settings or the output could not be built. Exit code 2 (invalid configuration).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file has no `devo` section.
    #[error(
        "devo: missing: the forwarder needs an output section, e.g. {{\"devo\": {{\"type\": \"devo_tls\", \"address\": \"collector-eu.devo.io\", \"cert_file\": \"domain.crt\", \"key_file\": \"domain.key\", \"chain_file\": \"chain.crt\"}}}}"
    )]
    MissingDevo,
    /// A configured value the forwarder cannot honour.
    #[error("{key}: {message}")]
    Unsupported { key: &'static str, message: String },
    /// The output could not be built (unreadable or inconsistent TLS files …).
    #[error("devo: the output could not be built: {0}")]
    Output(#[from] OutputError),
}

/// How the stage loop batches, commits and stops.
#[derive(Debug, Clone)]
pub struct ForwarderSettings {
    /// Kafka consumer group.
    pub group_id: String,
    /// Topic of audit records (`{prefix}.events`).
    pub events_topic: String,
    /// Topic of status records (`{prefix}.health`).
    pub health_topic: String,
    /// Devo tag of every `m365.health` record.
    pub health_tag: String,
    /// Devo tag of events without a usable `tag` header.
    pub fallback_tag: String,
    /// Line format (needed to size batches exactly as framed).
    pub line: LineFormat,
    /// Seal a batch before it would exceed this many framed bytes.
    pub batch_max_bytes: usize,
    /// Seal a non-empty batch this long after its first record.
    pub batch_max_wait: Duration,
    /// Batches handed to the output and not yet delivered, at most.
    pub max_in_flight: usize,
    /// Delivered batches are committed only after this long without connection trouble
    /// (see `run` docs: a dropped connection can lose what sat in socket buffers).
    pub commit_delay: Duration,
    /// Bytes of batches held in memory (sealed, in flight, or delivered and waiting for
    /// their commit) before consumption pauses.
    pub max_held_bytes: usize,
    /// How long a stop may take to deliver and commit what is in flight.
    pub drain_timeout: Duration,
    /// How long reading may wait for room (with librdkafka's prefetch full and its fetches
    /// stopped) before the partitions are paused, so that rebalances are served again while
    /// Devo is slow or away. Pausing drops the prefetched records (they are fetched again
    /// on resume), so short waits only hold.
    pub pause_after: Duration,
    /// In one process with the embedded broker: told every events record read, so the
    /// consumer runs only so far ahead (see `m365_common::backlog`).
    pub read_progress: Option<Arc<Backlog>>,
}

impl ForwarderSettings {
    /// Defaults for `prefix`, a line format and batch limits; used by tests and by
    /// [`ForwarderSettings::from_config`].
    pub fn new(prefix: &str, line: LineFormat) -> Self {
        ForwarderSettings {
            group_id: default_group_id(prefix),
            events_topic: format!("{prefix}.events"),
            health_topic: format!("{prefix}.health"),
            health_tag: config::DEFAULT_HEALTH_TAG.to_owned(),
            fallback_tag: config::DEFAULT_FALLBACK_TAG.to_owned(),
            line,
            batch_max_bytes: 1 << 20,
            batch_max_wait: Duration::from_secs(1),
            max_in_flight: 2,
            commit_delay: Duration::from_millis(500),
            max_held_bytes: 256 << 20,
            drain_timeout: Duration::from_secs(30),
            pause_after: Duration::from_secs(3),
            read_progress: None,
        }
    }

    /// Settings of a validated configuration; `group_id` overrides the default group.
    pub fn from_config(cfg: &Config, group_id: Option<&str>) -> Result<Self, SettingsError> {
        let devo = cfg.devo.as_ref().ok_or(SettingsError::MissingDevo)?;
        let prefix = &cfg.kafka.topic_prefix;
        let line = line_format(&devo.line)?;
        let batch_max_bytes = usize::try_from(devo.batch_max_bytes).unwrap_or(usize::MAX);
        let connections = devo.connections.max(1) as usize;
        let mut s = ForwarderSettings::new(prefix, line);
        if let Some(g) = group_id.filter(|g| !g.trim().is_empty()) {
            s.group_id = g.trim().to_owned();
        }
        s.health_tag = cfg.health.tag.clone();
        s.fallback_tag = cfg.consumer.fallback_tag.clone();
        s.batch_max_bytes = batch_max_bytes;
        s.batch_max_wait = devo.batch_max_wait();
        // One batch being written and one queued per connection.
        s.max_in_flight = 2 * connections;
        // Written batches stay held for `commit_delay` (to be sent again if their connection
        // turns out lost), so this bound caps throughput near max_held / commit_delay: 64 MB
        // capped the benchmark at ~122k records/s of ~1 KB, 256 MB let it reach ~190k.
        let max_held =
            usize::try_from(devo.max_held_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        s.max_held_bytes = max_held.max(batch_max_bytes.saturating_mul(4 * connections + 4));
        Ok(s)
    }
}

/// `{prefix}-forwarder`.
pub fn default_group_id(prefix: &str) -> String {
    format!("{prefix}-forwarder")
}

/// The framing of the configured line settings.
pub fn line_format(l: &config::LineFormat) -> Result<LineFormat, SettingsError> {
    let date = match l.date_style {
        config::DateStyle::DevoSdk => DateStyle::Fixed,
        config::DateStyle::Rfc3164 => DateStyle::Rfc3164Now,
        config::DateStyle::Rfc3339 => {
            return Err(SettingsError::Unsupported {
                key: "devo.date_style",
                message: "rfc3339 is not supported by the forwarder; use \"devo_sdk\" (default) or \"rfc3164\"".into(),
            });
        }
    };
    Ok(LineFormat {
        facility: l.facility,
        severity: l.severity,
        date,
        hostname: l.hostname.clone().unwrap_or_else(local_hostname),
        multiline: l.multiline,
    })
}

/// This machine's host name (`/proc/sys/kernel/hostname`, `/etc/hostname`, `$HOSTNAME`),
/// else `localhost`.
pub fn local_hostname() -> String {
    let from_file = |p: &str| {
        std::fs::read_to_string(Path::new(p))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    from_file("/proc/sys/kernel/hostname")
        .or_else(|| from_file("/etc/hostname"))
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `host:port`, with brackets around IPv6 literals.
fn socket_addr(address: &str, port: u16) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// Builds the configured output, sharing `stats`. Reads TLS files now; connects nothing.
/// Must be called inside a tokio runtime (the pool starts its connection tasks).
pub fn build_output(devo: &DevoSettings, stats: Arc<OutputStats>) -> Result<Output, SettingsError> {
    let format = line_format(&devo.line)?;
    let stream = |addr: String, tls: Option<TlsSettings>| {
        let mut s = StreamSettings::new(addr);
        s.tls = tls;
        s.connect_timeout = devo.timeout();
        s.write_timeout = devo.timeout();
        s.max_idle = Duration::from_secs(devo.idle_reconnect_secs);
        s.max_age = Duration::from_secs(devo.max_connection_age_secs);
        s
    };
    let connections = devo.connections.max(1) as usize;
    let sink = match &devo.output {
        config::Output::DevoTls {
            address,
            port,
            sni,
            tls,
        } => {
            let t = TlsSettings::new(sni.clone(), &tls.chain_file, &tls.cert_file, &tls.key_file);
            Sink::Pool(Pool::new(
                stream(socket_addr(address, *port), Some(t)),
                connections,
                stats,
            )?)
        }
        config::Output::Tcp { address, port } => Sink::Pool(Pool::new(
            stream(socket_addr(address, *port), None),
            connections,
            stats,
        )?),
        config::Output::DevoHttp {
            endpoint,
            domain,
            token,
        } => {
            if devo.line.zip {
                tracing::warn!(
                    "devo.zip does not apply to devo_http, which gzips every request itself."
                );
            }
            let mut h = HttpSettings::new(
                endpoint.clone(),
                domain.clone(),
                token.clone(),
                &format.hostname,
            );
            h.request_timeout = devo.timeout().max(Duration::from_secs(10));
            h.connect_timeout = devo.timeout();
            Sink::Http(HttpOutput::new(h, stats)?)
        }
        config::Output::File { path } => Sink::File(FileOutput::new(path, false, stats)),
        config::Output::Stdout => Sink::Stdout(StdoutOutput::new(stats)),
    };
    let streams = matches!(sink, Sink::Pool(_));
    let output = Output::new(sink, format);
    Ok(if devo.line.zip && streams {
        output.with_zip(ZipBatcher::default())
    } else {
        output
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves IPv6 literals get brackets and names do not.
    #[test]
    fn socket_addresses() {
        assert_eq!(
            socket_addr("collector-eu.devo.io", 443),
            "collector-eu.devo.io:443"
        );
        assert_eq!(socket_addr("::1", 6514), "[::1]:6514");
        assert_eq!(socket_addr("[::1]", 6514), "[::1]:6514");
    }

    // Proves the memory bound for held batches defaults to 256 MB, follows devo.max_held_mb,
    // and never drops below what the batches in flight need; out of range is a config error.
    #[test]
    fn held_bytes_bound() {
        let load = |devo: &str| {
            let text =
                format!(r#"{{"devo":{{"type":"tcp","address":"127.0.0.1","port":6514{devo}}}}}"#);
            config::from_text(
                &text,
                config::Format::Json,
                std::path::Path::new("."),
                &config::LoadOptions::new().allow_no_tenants(),
            )
        };
        let held = |devo: &str| {
            ForwarderSettings::from_config(&load(devo).expect("valid"), None)
                .expect("settings")
                .max_held_bytes
        };
        assert_eq!(held(""), 256 << 20);
        assert_eq!(held(r#","max_held_mb":32"#), 32 << 20);
        assert_eq!(
            held(r#","max_held_mb":16,"batch_max_bytes":8388608,"connections":2"#),
            (8 << 20) * 12,
            "room for the batches in flight"
        );
        let e = load(r#","max_held_mb":8"#).expect_err("out of range");
        assert!(e.to_string().contains("devo.max_held_mb"), "{e}");
    }

    // Proves the configured line settings map onto the framing, and rfc3339 is refused.
    #[test]
    fn line_formats() {
        let mut l = config::LineFormat {
            hostname: Some("collector-1".into()),
            facility: 16,
            severity: 5,
            date_style: config::DateStyle::Rfc3164,
            multiline: true,
            zip: false,
        };
        let f = line_format(&l).expect("valid");
        assert_eq!(f.hostname, "collector-1");
        assert_eq!(f.pri(), 16 * 8 + 5);
        assert_eq!(f.date, DateStyle::Rfc3164Now);
        assert!(f.multiline);
        l.date_style = config::DateStyle::Rfc3339;
        let e = line_format(&l).expect_err("unsupported");
        assert!(e.to_string().starts_with("devo.date_style:"), "{e}");
        l.hostname = None;
        l.date_style = config::DateStyle::DevoSdk;
        assert!(!line_format(&l).expect("valid").hostname.is_empty());
    }
}
