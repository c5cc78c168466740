//! Alerts folded by kind and subject (a listener, a destination, a namespace): how often
//! each was raised, when first and last, how many events its alerts counted in all, and
//! what the latest one said. The dashboard's alerts pane keeps one through the whole trace
//! (an alert must not vanish at the next refresh); the report builds one from the trace's
//! alert records, so both show the same rows.

use std::cmp::Reverse;

use serde::Serialize;
use serde_json::Value;

use super::alert_catalogue::{self as catalogue, Severity};
use super::signals::Alert;

/// Distinct kind + subject pairs kept; further ones are only counted (a PAWS storm from
/// thousands of addresses must not grow the pane without bound).
pub const MAX_ENTRIES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertEntry {
    /// The kind's name, as in the trace.
    pub kind: String,
    pub severity: Severity,
    /// What the alerts are about (see [`catalogue::subject`]).
    pub subject: String,
    /// Alerts raised.
    pub count: u64,
    /// Their headline evidence added up (failures, overflows, ...), for kinds that count.
    pub total: Option<u64>,
    /// When first and last raised: CLOCK_MONOTONIC live, the offset into the trace in a
    /// report.
    pub first_ns: u64,
    pub last_ns: u64,
    /// The latest alert's message: its evidence in words.
    pub message: String,
}

impl AlertEntry {
    /// The catalogue's title, or the kind's name for a kind this netwatch does not know.
    pub fn title(&self) -> &str {
        catalogue::lookup(&self.kind).map_or(&self.kind, |k| k.title)
    }

    /// What to change, from the catalogue (empty for an unknown kind).
    pub fn advice(&self) -> &'static str {
        catalogue::lookup(&self.kind).map_or("", |k| k.advice)
    }

    /// `27 accept-queue overflows`, for kinds that count.
    pub fn total_text(&self) -> Option<String> {
        let (_, what) = catalogue::counted(&self.kind).first()?;
        Some(format!("{} {what}", self.total?))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AlertHistory {
    entries: Vec<AlertEntry>,
    /// Alerts of pairs beyond [`MAX_ENTRIES`].
    pub unlisted: u64,
}

impl AlertHistory {
    /// Folds one alert in, given its kind, its record's fields (by name), its message and its
    /// time.
    pub fn record(
        &mut self,
        kind: &str,
        evidence: &dyn Fn(&str) -> Option<Value>,
        message: &str,
        at: u64,
    ) {
        let subject = catalogue::subject(kind, evidence);
        let headline = catalogue::headline(kind, evidence);
        let entry = match self
            .entries
            .iter_mut()
            .position(|e| e.kind == kind && e.subject == subject)
        {
            Some(i) => &mut self.entries[i],
            None if self.entries.len() >= MAX_ENTRIES => {
                self.unlisted += 1;
                return;
            }
            None => {
                self.entries.push(AlertEntry {
                    kind: kind.to_owned(),
                    severity: catalogue::severity(kind),
                    subject,
                    count: 0,
                    total: None,
                    first_ns: at,
                    last_ns: at,
                    message: String::new(),
                });
                self.entries.last_mut().expect("just pushed")
            }
        };
        entry.count += 1;
        if let Some(h) = headline {
            entry.total = Some(entry.total.unwrap_or(0).saturating_add(h));
        }
        entry.first_ns = entry.first_ns.min(at);
        if at >= entry.last_ns {
            entry.last_ns = at;
            message.clone_into(&mut entry.message);
        }
    }

    /// Folds in an alert the engine raised at `at`, in the namespace named `netns_name`
    /// where it has a name.
    pub fn record_alert(&mut self, alert: &Alert, at: u64, netns_name: Option<&str>) {
        let mut fields = alert.evidence();
        if let Some(n) = netns_name {
            fields.insert("netns_name".into(), n.into());
        }
        self.record(
            alert.kind().name,
            &|f| fields.get(f).cloned(),
            &alert.message(),
            at,
        );
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Most urgent first, then the most recently raised.
    pub fn by_severity(&self) -> Vec<&AlertEntry> {
        let mut v: Vec<&AlertEntry> = self.entries.iter().collect();
        v.sort_by_key(|e| (e.severity, Reverse(e.last_ns), e.kind.clone()));
        v
    }

    /// The most recently raised first (what the banner shows).
    pub fn by_recency(&self) -> Vec<&AlertEntry> {
        let mut v: Vec<&AlertEntry> = self.entries.iter().collect();
        v.sort_by_key(|e| (Reverse(e.last_ns), e.severity));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::signals::tests::one_of_each;

    #[test]
    fn alerts_fold_by_kind_and_subject_with_counts_totals_and_times() {
        let mut h = AlertHistory::default();
        let all = one_of_each();
        for (i, a) in all.iter().enumerate() {
            h.record_alert(a, 10 + i as u64, None);
        }
        let exhaustion = all
            .iter()
            .find(|a| a.kind().name == "port_exhaustion")
            .unwrap();
        h.record_alert(exhaustion, 100, None);
        assert_eq!(h.len(), all.len());
        let e = h.by_severity()[0];
        assert_eq!(
            (e.kind.as_str(), e.subject.as_str()),
            ("port_exhaustion", "10.0.0.2:5774")
        );
        assert_eq!(
            (e.count, e.total, e.first_ns, e.last_ns),
            (2, Some(10), 16, 100)
        );
        assert_eq!(
            e.total_text().unwrap(),
            "10 connect() failures (EADDRNOTAVAIL)"
        );
        assert!(e.advice().contains("ip_local_port_range"));
        assert_eq!(e.title(), "Ephemeral ports exhausted");
        assert_eq!(h.by_recency()[0].kind, "port_exhaustion");
        let paws = h.by_severity().last().copied().unwrap();
        assert_eq!((paws.kind.as_str(), paws.total), ("paws_reject", None));
        assert_eq!(paws.subject, "10.0.0.2:80");
    }

    #[test]
    fn an_early_alert_read_late_keeps_the_latest_message() {
        let mut h = AlertHistory::default();
        let none = |_: &str| None;
        h.record("from_the_future", &none, "second", 20);
        h.record("from_the_future", &none, "first", 10);
        let e = h.by_recency()[0];
        assert_eq!(
            (e.first_ns, e.last_ns, e.message.as_str()),
            (10, 20, "second")
        );
        assert_eq!((e.title(), e.advice()), ("from_the_future", ""));
        assert_eq!(e.severity, Severity::Warning);
    }

    #[test]
    fn distinct_subjects_are_bounded() {
        let mut h = AlertHistory::default();
        for port in 0..(MAX_ENTRIES as u64 + 10) {
            let fields = |f: &str| match f {
                "daddr" => Some("10.0.0.2".into()),
                "dport" => Some((port + 1).into()),
                _ => None,
            };
            h.record("port_exhaustion", &fields, "x", port);
        }
        assert_eq!((h.len(), h.unlisted), (MAX_ENTRIES, 10));
    }
}
