//! Turns the kernel's CLOCK_MONOTONIC stamps into wall-clock time for people and traces.

use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// Offset between CLOCK_REALTIME and CLOCK_MONOTONIC, taken once at start: a trace's
/// timestamps then stay mutually consistent even if NTP steps the wall clock mid-run.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    realtime_minus_mono_ns: i128,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub fn mono_now_ns() -> u64 {
    now_ns(libc::CLOCK_MONOTONIC) as u64
}

impl WallClock {
    pub fn now() -> Self {
        let mono = now_ns(libc::CLOCK_MONOTONIC);
        let real = now_ns(libc::CLOCK_REALTIME);
        Self {
            realtime_minus_mono_ns: real - mono,
        }
    }

    /// For tests and offline replays, where the offset is known.
    #[cfg(test)]
    pub fn with_offset(realtime_minus_mono_ns: i128) -> Self {
        Self {
            realtime_minus_mono_ns,
        }
    }

    /// Nanoseconds since the Unix epoch at a monotonic stamp.
    pub fn unix_ns(self, mono_ns: u64) -> i128 {
        mono_ns as i128 + self.realtime_minus_mono_ns
    }

    /// RFC 3339 of a wall-clock instant, for callers that cache by the second.
    pub fn rfc3339_at_unix_ns(self, unix_ns: i128) -> String {
        OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .format(&Rfc3339)
            .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
    }

    pub fn to_datetime(self, mono_ns: u64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(mono_ns as i128 + self.realtime_minus_mono_ns)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// RFC 3339 in UTC with nanoseconds, e.g. `2026-12-01T18:35:01.123456789Z`.
    pub fn rfc3339(self, mono_ns: u64) -> String {
        self.to_datetime(mono_ns)
            .format(&Rfc3339)
            .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_nanoseconds() {
        // 2026-12-01T18:35:01Z is 1796150101 s after the epoch.
        let c = WallClock::with_offset(1_796_150_101_000_000_000 - 5_000);
        assert_eq!(
            c.rfc3339(5_000 + 123_456_789),
            "2026-12-01T18:35:01.123456789Z"
        );
    }

    #[test]
    fn offset_matches_system_clock() {
        let c = WallClock::now();
        let wall = c.to_datetime(mono_now_ns());
        let diff = (OffsetDateTime::now_utc() - wall)
            .whole_milliseconds()
            .abs();
        assert!(diff < 1000, "wall clock off by {diff} ms");
    }
}
