//! What each field of [`MetricsSnapshot`](crate::MetricsSnapshot) is to an exporter: a counter
//! or a gauge, and its Prometheus name and unit.
//!
//! The rules work from the field's name, so a counter added to the engine's `counters!` list is
//! exported without touching the exporter:
//! - gauges are the fields named `*_last` or `*_max` and those in [`GAUGES`]; every other field
//!   is a counter (Prometheus adds `_total`);
//! - a `_us` part means microseconds: the value is exported in seconds, the base unit;
//! - a `bytes` part becomes the `_bytes` unit suffix (`bytes_in` is `bettong_input_bytes_total`).

use prometheus_client::registry::Unit;

/// The base units fields are exported in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseUnit {
    /// Seconds (the engine counts microseconds).
    Seconds,
    /// Bytes.
    Bytes,
}

impl BaseUnit {
    /// The Prometheus unit.
    pub fn unit(self) -> Unit {
        match self {
            BaseUnit::Seconds => Unit::Seconds,
            BaseUnit::Bytes => Unit::Bytes,
        }
    }
}

/// Fields that are gauges without a `_last` or `_max` suffix.
pub const GAUGES: &[&str] = &["keys", "state_bytes", "connections_open", "sink_connected"];

/// Whether the snapshot field `field` is a counter (only grows) or a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows over a run: exporters give its rate.
    Counter,
    /// A level: exporters give its value.
    Gauge,
}

/// The kind of the snapshot field `field`.
pub fn kind(field: &str) -> Kind {
    if GAUGES.contains(&field) || field.ends_with("_last") || field.ends_with("_max") {
        Kind::Gauge
    } else {
        Kind::Counter
    }
}

/// How a snapshot field is exported to Prometheus.
#[derive(Debug, Clone, PartialEq)]
pub struct PromField {
    /// The name without the `bettong_` prefix, the unit and `_total` (the encoder adds them).
    pub name: String,
    /// Counter or gauge.
    pub kind: Kind,
    /// Seconds or bytes, if any.
    pub unit: Option<BaseUnit>,
    /// What to multiply the field's value by to get the unit (1e-6 for microseconds).
    pub scale: f64,
}

/// The Prometheus form of the snapshot field `field`.
///
/// ```
/// use bettong_engine::monitor::names::{prom_field, Kind};
/// let f = prom_field("checkpoint_pause_us_total");
/// assert_eq!((f.name.as_str(), f.kind, f.scale), ("checkpoint_pause", Kind::Counter, 1e-6));
/// assert_eq!(prom_field("bytes_in").name, "input");
/// assert_eq!(prom_field("checkpoint_bytes_last").name, "checkpoint_last");
/// assert_eq!(prom_field("keys").kind, Kind::Gauge);
/// ```
pub fn prom_field(field: &str) -> PromField {
    let kind = kind(field);
    let mut parts: Vec<&str> = field.split('_').collect();
    let mut unit = None;
    let mut scale = 1.0;
    if let Some(i) = parts.iter().position(|p| *p == "us") {
        parts.remove(i);
        unit = Some(BaseUnit::Seconds);
        scale = 1e-6;
    } else if let Some(i) = parts.iter().position(|p| *p == "bytes") {
        parts.remove(i);
        unit = Some(BaseUnit::Bytes);
    }
    // A counter's `_total` is added by the encoder.
    if kind == Kind::Counter && parts.last() == Some(&"total") {
        parts.pop();
    }
    let name = match parts.join("_").as_str() {
        "in" => "input".to_string(),
        "out" => "output".to_string(),
        other => other.to_string(),
    };
    PromField {
        name,
        kind,
        unit,
        scale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MetricsSnapshot;

    /// Every field gets a distinct name that is a valid Prometheus name, with its unit last.
    #[test]
    fn every_field_has_a_distinct_valid_name() {
        let mut seen = std::collections::HashSet::new();
        for (field, _) in MetricsSnapshot::default().fields() {
            let f = prom_field(field);
            let full = match &f.unit {
                Some(u) => format!("bettong_{}_{}", f.name, u.unit().as_str()),
                None => format!("bettong_{}", f.name),
            };
            assert!(
                full.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()),
                "{field} -> {full}"
            );
            assert!(
                !f.name.is_empty() && !f.name.ends_with('_'),
                "{field} -> {full}"
            );
            assert!(seen.insert(full.clone()), "{field} gives {full} twice");
        }
    }

    #[test]
    fn kinds_follow_the_rules() {
        assert_eq!(kind("frames_in"), Kind::Counter);
        assert_eq!(kind("checkpoint_pause_us_total"), Kind::Counter);
        assert_eq!(kind("checkpoint_pause_us_max"), Kind::Gauge);
        assert_eq!(kind("checkpoint_in_flight_last"), Kind::Gauge);
        assert_eq!(kind("connections_open"), Kind::Gauge);
        let f = prom_field("checkpoint_pause_us_last");
        assert_eq!(f.name, "checkpoint_pause_last");
        assert_eq!(f.unit, Some(BaseUnit::Seconds));
        let f = prom_field("sink_bytes_at_risk");
        assert_eq!(
            (f.name.as_str(), f.unit),
            ("sink_at_risk", Some(BaseUnit::Bytes))
        );
    }
}
