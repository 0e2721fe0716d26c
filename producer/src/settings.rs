//! The producer's runtime settings (built from the `producer` section of the config, plus
//! the instance options of the `m365-producer` command line).
//!
//! # Several instances
//!
//! With [`Coordination::Group`] (the default) any number of `m365-producer` processes with the
//! same configuration share the streams: each stream belongs to exactly one of them at a time,
//! and the streams of an instance that stops or dies move to the others (see
//! [`crate::group`]). The instance options, given on the command line or in the environment
//! (the config file's `producer` section does not carry them):
//!
//! | option | environment | default | meaning |
//! |---|---|---|---|
//! | `--coordination group\|none` | `M365_PRODUCER_COORDINATION` | `group` | `none`: this process runs every stream, alone (the pre-group behaviour; never run two such processes on one configuration) |
//! | `--group-session-timeout-ms` | `M365_PRODUCER_GROUP_SESSION_TIMEOUT_MS` | 10000 | how long a silent instance keeps its streams: a killed instance's streams move after about this long |
//! | `--group-heartbeat-interval-ms` | `M365_PRODUCER_GROUP_HEARTBEAT_INTERVAL_MS` | 3000 | at most a third of the session timeout |
//! | `--stream-slots` | `M365_PRODUCER_STREAM_SLOTS` | 12 | partitions of `<prefix>.streams` when the producer creates it; an existing topic keeps its count |
//! | `--instance-id` | `M365_PRODUCER_INSTANCE` | `0` | names the instance in logs and health records |
//!
//! Good to know with `group`:
//! - a stream's `start`/`stop` records on `<prefix>.health` (input = tenant, service = content
//!   type, `job_id` = the process run) say which instance ran it when;
//! - an instance restarted after a crash waits until the group has dropped its previous run
//!   (about one session timeout) before its streams resume;
//! - the `<prefix>.streams` topic must exist or be creatable by the producer's Kafka user;
//! - slots are a hash of the stream, so streams are not spread exactly evenly: with few
//!   streams and many instances, some instances may run none.

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
    /// How this instance finds out which streams are its own.
    pub coordination: Coordination,
    /// Consumer-group session timeout (`session.timeout.ms`) of [`Coordination::Group`].
    pub group_session_timeout: StdDuration,
    /// Consumer-group heartbeat interval (`heartbeat.interval.ms`) of [`Coordination::Group`].
    pub group_heartbeat_interval: StdDuration,
    /// Partitions ("stream slots") of `<prefix>.streams` when this instance creates it.
    pub stream_slots: i32,
}

/// How a producer instance decides which streams it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Coordination {
    /// Join the consumer group `<prefix>-producer` on `<prefix>.streams` and run the streams
    /// whose slot (partition) the group assigns to this instance. Safe with any number of
    /// instances, including one.
    #[default]
    Group,
    /// Run every configured stream without asking anyone. Only for a single instance (or a
    /// broker without consumer groups): two such instances list every blob twice.
    None,
}

impl std::str::FromStr for Coordination {
    type Err = SettingsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "group" => Ok(Self::Group),
            "none" => Ok(Self::None),
            _ => Err(SettingsError::Coordination(s.to_string())),
        }
    }
}

impl std::fmt::Display for Coordination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Group => "group",
            Self::None => "none",
        })
    }
}

/// An invalid instance option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "producer coordination {0:?} is not known: expected `group` (share the streams with other instances) or `none` (run every stream alone), e.g. --coordination group"
    )]
    Coordination(String),
    #[error(
        "the group heartbeat interval ({heartbeat_ms} ms) must be at least 100 ms and at most a third of the session timeout ({session_ms} ms), e.g. --group-session-timeout-ms 10000 --group-heartbeat-interval-ms 3000"
    )]
    Heartbeat {
        heartbeat_ms: u128,
        session_ms: u128,
    },
    #[error(
        "the group session timeout ({0} ms) must be between 1000 ms and 300000 ms, e.g. --group-session-timeout-ms 10000"
    )]
    SessionTimeout(u128),
    #[error("the number of stream slots ({0}) must be between 1 and 1000, e.g. --stream-slots 12")]
    StreamSlots(i32),
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
            coordination: Coordination::Group,
            group_session_timeout: StdDuration::from_secs(10),
            group_heartbeat_interval: StdDuration::from_secs(3),
            stream_slots: m365_common::kafka::STREAM_SLOTS,
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
            coordination: match p.coordination {
                m365_common::config::ProducerCoordination::Group => Coordination::Group,
                m365_common::config::ProducerCoordination::None => Coordination::None,
            },
            group_session_timeout: StdDuration::from_millis(p.group_session_timeout_ms),
            group_heartbeat_interval: StdDuration::from_millis(p.group_heartbeat_interval_ms),
            ..Self::default()
        }
    }
}

impl ProducerSettings {
    /// Checks the instance options (the config-file part is validated with the config).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let session_ms = self.group_session_timeout.as_millis();
        let heartbeat_ms = self.group_heartbeat_interval.as_millis();
        if !(1000..=300_000).contains(&session_ms) {
            return Err(SettingsError::SessionTimeout(session_ms));
        }
        if heartbeat_ms < 100 || heartbeat_ms.saturating_mul(3) > session_ms {
            return Err(SettingsError::Heartbeat {
                heartbeat_ms,
                session_ms,
            });
        }
        if !(1..=1000).contains(&self.stream_slots) {
            return Err(SettingsError::StreamSlots(self.stream_slots));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The coordination switch accepts its two values in any case and names both when wrong.
    #[test]
    fn coordination_parses() {
        assert_eq!("group".parse::<Coordination>(), Ok(Coordination::Group));
        assert_eq!(" NONE ".parse::<Coordination>(), Ok(Coordination::None));
        let e = "leader".parse::<Coordination>().unwrap_err().to_string();
        assert!(
            e.contains("\"leader\"") && e.contains("`group`") && e.contains("`none`"),
            "{e}"
        );
    }

    // Defaults are valid; a heartbeat above a third of the session timeout, an absurd
    // session timeout or zero slots are refused with the option named.
    #[test]
    fn group_options_validated() {
        assert_eq!(ProducerSettings::default().validate(), Ok(()));
        let mut s = ProducerSettings {
            group_heartbeat_interval: StdDuration::from_secs(5),
            ..ProducerSettings::default()
        };
        let e = s.validate().unwrap_err();
        assert!(
            e.to_string().contains("--group-heartbeat-interval-ms"),
            "{e}"
        );
        s.group_heartbeat_interval = StdDuration::from_secs(1);
        s.group_session_timeout = StdDuration::from_millis(10);
        assert_eq!(s.validate(), Err(SettingsError::SessionTimeout(10)));
        s.group_session_timeout = StdDuration::from_secs(10);
        s.stream_slots = 0;
        assert_eq!(s.validate(), Err(SettingsError::StreamSlots(0)));
    }
}
