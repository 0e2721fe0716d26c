//! The producer's runtime settings (built from the `producer` section of the config).

use std::time::Duration as StdDuration;

use chrono::Duration;

/// How the producer polls. Defaults suit a production tenant; tests shorten them.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    /// Pause between ticks of a stream once it has caught up.
    pub poll_interval: StdDuration,
    /// The newest part of the timeline that is not listed yet (`end = now − settle`), so a
    /// blob still being published is not missed by a window that closed just before it.
    pub settle: Duration,
    /// How far behind the cursor the late-content sweep re-lists (default 24 h, at most 7 d).
    pub sweep_horizon: Duration,
    /// How often the late-content sweep runs per stream.
    pub sweep_interval: Duration,
    /// Minimum time between two `subscriptions/start` calls for one stream (the API asks 15 min).
    pub subscription_cooldown: StdDuration,
    /// Safety margin kept from the 7-day listing horizon.
    pub horizon_margin: Duration,
    /// Period of heartbeat records on `m365.health`.
    pub heartbeat_interval: StdDuration,
    /// Longest pause after repeated errors on a stream.
    pub error_backoff_max: StdDuration,
    /// Names this producer instance; part of the Kafka transactional id.
    pub instance_id: String,
    /// This process run, stamped on health records.
    pub job_id: String,
    /// Start missing subscriptions (and restart disabled ones).
    pub manage_subscriptions: bool,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        Self {
            poll_interval: StdDuration::from_secs(60),
            settle: Duration::seconds(60),
            sweep_horizon: Duration::hours(24),
            sweep_interval: Duration::minutes(15),
            subscription_cooldown: StdDuration::from_secs(15 * 60),
            horizon_margin: Duration::minutes(10),
            heartbeat_interval: StdDuration::from_secs(60),
            error_backoff_max: StdDuration::from_secs(300),
            instance_id: "0".into(),
            job_id: m365_common::health::new_job_id(),
            manage_subscriptions: true,
        }
    }
}

impl ProducerSettings {
    /// The settings of the `producer` and `health` sections of a validated configuration.
    pub fn from_config(cfg: &m365_common::config::Config) -> Self {
        let p = &cfg.producer;
        let secs = |s: u64| Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000));
        Self {
            poll_interval: p.poll_interval(),
            settle: secs(p.settle_secs),
            sweep_horizon: secs(p.sweep_horizon_hours.saturating_mul(3600)),
            sweep_interval: secs(p.sweep_interval_secs),
            subscription_cooldown: StdDuration::from_secs(p.subscription_restart_cooldown_secs),
            heartbeat_interval: StdDuration::from_secs(cfg.health.heartbeat_secs.max(1)),
            ..Self::default()
        }
    }
}
