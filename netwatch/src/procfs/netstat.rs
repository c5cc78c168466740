//! The kernel's own TCP counters, `/proc/net/netstat` and `/proc/net/snmp`. They see what no
//! tracepoint shows: timewait sockets killed or refused (`TWKilled`, `TCPTimeWaitOverflow`),
//! SYNs dropped on a full accept queue (`ListenOverflows`, `ListenDrops`), PAWS rejections.
//! Both files are pairs of lines, `Section: Name1 Name2 ...` then `Section: 1 2 ...`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use super::netns;

/// `thread-self`, not `self`: `/proc/self/net` follows the main thread's namespace, and the
/// reading thread may have entered another one.
const NETSTAT: &str = "/proc/thread-self/net/netstat";
const SNMP: &str = "/proc/thread-self/net/snmp";

/// Section name -> counter name -> value.
type Sections = BTreeMap<String, BTreeMap<String, u64>>;

/// One reading of the counters of one network namespace: the `TcpExt`, `IpExt`, `MPTcpExt`...
/// sections of `/proc/net/netstat` and the `Ip`, `Icmp`, `Tcp`, `Udp`... sections of
/// `/proc/net/snmp` (the two files use distinct section names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Netstat {
    sections: Sections,
}

impl Netstat {
    /// None when this kernel does not have the counter (names come and go between versions) or
    /// its value was negative (`Tcp MaxConn` is -1: no limit).
    pub fn get(&self, section: &str, name: &str) -> Option<u64> {
        self.sections.get(section)?.get(name).copied()
    }

    /// How much a counter grew since `earlier`, which is what an incident shows: the absolute
    /// values count since boot (or since the namespace was made). It saturates at 0 rather than
    /// wrapping when the counter went down (a namespace recreated under the same name). Gauges
    /// such as `Tcp CurrEstab` are better read with [`Netstat::get`].
    pub fn delta(&self, earlier: &Netstat, section: &str, name: &str) -> Option<u64> {
        Some(
            self.get(section, name)?
                .saturating_sub(earlier.get(section, name)?),
        )
    }
}

/// Reads the counters of the network namespace at `netns` (`/run/netns/NAME`,
/// `/proc/PID/ns/net`), or of the calling thread's namespace when None. Another namespace is
/// entered by a short-lived thread, because these files answer for the reading thread's
/// namespace.
pub fn read_netstat(netns: Option<&Path>) -> Result<Netstat> {
    let place = netns
        .map(|path| format!(" of network namespace {}", path.display()))
        .unwrap_or_default();
    netns::run_in(netns, read_here)
        .and_then(|read| read)
        .with_context(|| format!("cannot read the kernel's TCP counters{place}"))
}

fn read_here() -> Result<Netstat> {
    let mut sections = Sections::new();
    for file in [NETSTAT, SNMP] {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {file} (is /proc mounted?)"))?;
        parse_into(&text, &mut sections).with_context(|| {
            format!("{file} is not pairs of `Section: names` / `Section: values` lines")
        })?;
    }
    Ok(Netstat { sections })
}

/// What is wrong with a counters file; line numbers count from 1, blank lines included.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum ParseError {
    #[error("line {line}: {text:?} does not start with a `Section:` word")]
    NoSection { line: usize, text: String },
    #[error("line {line}: the {section} names have no line of values after them")]
    MissingValues { line: usize, section: String },
    #[error("line {line}: values of {found} where values of {section} should be")]
    SectionMismatch {
        line: usize,
        section: String,
        found: String,
    },
    #[error("line {line}: {section} counter name {name:?} is not a name (a line of values where names should be?)")]
    BadName {
        line: usize,
        section: String,
        name: String,
    },
    #[error("line {line}: {section} has {names} names but {values} values")]
    CountMismatch {
        line: usize,
        section: String,
        names: usize,
        values: usize,
    },
    #[error("line {line}: {section} {name} is {value:?}, not an integer")]
    BadValue {
        line: usize,
        section: String,
        name: String,
        value: String,
    },
}

/// Adds the counters in `text` to `into`. A section may come in several pairs of lines
/// (`/proc/net/snmp` splits `IcmpMsg` every 16 names), so pairs merge into their section.
/// Anything that breaks the pairing is an error rather than skipped: a name matched to the
/// wrong value would be worse than no value.
fn parse_into(text: &str, into: &mut Sections) -> Result<(), ParseError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, text)| (i + 1, text))
        .filter(|(_, text)| !text.trim().is_empty());
    while let Some((line, header)) = lines.next() {
        let (section, names) = split_section(line, header)?;
        let Some((values_line, values)) = lines.next() else {
            return Err(ParseError::MissingValues {
                line,
                section: section.to_owned(),
            });
        };
        let (found, values) = split_section(values_line, values)?;
        if found != section {
            return Err(ParseError::SectionMismatch {
                line: values_line,
                section: section.to_owned(),
                found: found.to_owned(),
            });
        }
        let names: Vec<&str> = names.split_whitespace().collect();
        let values: Vec<&str> = values.split_whitespace().collect();
        if let Some(name) = names
            .iter()
            .find(|name| !name.starts_with(|c: char| c.is_ascii_alphabetic()))
        {
            return Err(ParseError::BadName {
                line,
                section: section.to_owned(),
                name: (*name).to_owned(),
            });
        }
        if names.len() != values.len() {
            return Err(ParseError::CountMismatch {
                line: values_line,
                section: section.to_owned(),
                names: names.len(),
                values: values.len(),
            });
        }
        let counters = into.entry(section.to_owned()).or_default();
        for (name, value) in names.into_iter().zip(values) {
            match value.parse::<u64>() {
                Ok(n) => {
                    counters.insert(name.to_owned(), n);
                }
                // Only settings are negative (MaxConn -1); no counter is, and u64 holds counters.
                Err(_) if value.parse::<i64>().is_ok() => {}
                Err(_) => {
                    return Err(ParseError::BadValue {
                        line: values_line,
                        section: section.to_owned(),
                        name: name.to_owned(),
                        value: value.to_owned(),
                    })
                }
            }
        }
    }
    Ok(())
}

fn split_section(line: usize, text: &str) -> Result<(&str, &str), ParseError> {
    let text = text.trim_start();
    match text.split_once(':') {
        Some((section, rest)) if !section.is_empty() && !section.contains(char::is_whitespace) => {
            Ok((section, rest))
        }
        _ => Err(ParseError::NoSection {
            line,
            text: text.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Netstat, ParseError> {
        let mut sections = Sections::new();
        parse_into(text, &mut sections)?;
        Ok(Netstat { sections })
    }

    /// Shaped like 6.18's files: trailing spaces, a negative setting, a split section.
    const NETSTAT_SAMPLE: &str = "\
TcpExt: SyncookiesSent TW TWRecycled TWKilled ListenOverflows ListenDrops 
TcpExt: 0 262168 0 5 12 14 
IpExt: InNoRoutes InOctets
IpExt: 0 930420313
MPTcpExt: MPCapableSYNRX
MPTcpExt: 0
";
    const SNMP_SAMPLE: &str = "\
IcmpMsg: InType3 OutType3
IcmpMsg: 1 1
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab
Tcp: 1 200 120000 -1 1317035 1317008 3 12 0
IcmpMsg: OutType8
IcmpMsg: 4
";

    #[test]
    fn reads_both_files_into_one_table() {
        let mut sections = Sections::new();
        parse_into(NETSTAT_SAMPLE, &mut sections).unwrap();
        parse_into(SNMP_SAMPLE, &mut sections).unwrap();
        let n = Netstat { sections };
        assert_eq!(n.get("TcpExt", "TW"), Some(262168));
        assert_eq!(n.get("TcpExt", "ListenDrops"), Some(14));
        assert_eq!(n.get("IpExt", "InOctets"), Some(930420313));
        assert_eq!(n.get("MPTcpExt", "MPCapableSYNRX"), Some(0));
        assert_eq!(n.get("Tcp", "ActiveOpens"), Some(1317035));
        assert_eq!(n.get("Tcp", "CurrEstab"), Some(0));
        assert_eq!(n.get("IcmpMsg", "InType3"), Some(1));
        assert_eq!(n.get("IcmpMsg", "OutType8"), Some(4));
    }

    #[test]
    fn negative_settings_and_unknown_names_are_absent() {
        let n = parse(SNMP_SAMPLE).unwrap();
        assert_eq!(n.get("Tcp", "MaxConn"), None);
        assert_eq!(n.get("Tcp", "RtoMin"), Some(200));
        assert_eq!(n.get("Tcp", "NoSuchCounter"), None);
        assert_eq!(n.get("NoSuchSection", "TW"), None);
    }

    #[test]
    fn blank_lines_and_surrounding_space_are_ignored() {
        let n = parse("\n\n  TcpExt: TW TWKilled\n\n\t\nTcpExt:   7\t9  \n\n").unwrap();
        assert_eq!(n.get("TcpExt", "TW"), Some(7));
        assert_eq!(n.get("TcpExt", "TWKilled"), Some(9));
        assert_eq!(parse("").unwrap(), Netstat::default());
        assert_eq!(
            parse("TcpExt:\nTcpExt:\n").unwrap().get("TcpExt", "TW"),
            None
        );
    }

    #[test]
    fn delta_saturates_and_needs_both_readings() {
        let earlier = parse("TcpExt: TW TWKilled\nTcpExt: 10 50\n").unwrap();
        let later = parse("TcpExt: TW TWKilled ListenOverflows\nTcpExt: 25 40 3\n").unwrap();
        assert_eq!(later.delta(&earlier, "TcpExt", "TW"), Some(15));
        assert_eq!(later.delta(&earlier, "TcpExt", "TWKilled"), Some(0));
        assert_eq!(later.delta(&earlier, "TcpExt", "ListenOverflows"), None);
        assert_eq!(earlier.delta(&later, "TcpExt", "ListenOverflows"), None);
    }

    #[test]
    fn mismatched_counts_are_an_error_naming_the_line() {
        let err = parse("IpExt: A B\nIpExt: 1 2\nTcpExt: TW TWKilled PAWSActive\nTcpExt: 1 2\n")
            .unwrap_err();
        assert_eq!(
            err,
            ParseError::CountMismatch {
                line: 4,
                section: "TcpExt".into(),
                names: 3,
                values: 2
            }
        );
        assert_eq!(err.to_string(), "line 4: TcpExt has 3 names but 2 values");
    }

    #[test]
    fn broken_pairing_is_an_error() {
        assert_eq!(
            parse("TcpExt: TW\nIpExt: 1\n").unwrap_err(),
            ParseError::SectionMismatch {
                line: 2,
                section: "TcpExt".into(),
                found: "IpExt".into()
            }
        );
        assert_eq!(
            parse("TcpExt: TW\nTcpExt: 1\nIpExt: InOctets\n\n").unwrap_err(),
            ParseError::MissingValues {
                line: 3,
                section: "IpExt".into()
            }
        );
        // Two lines of values in a row: the first would be taken for names.
        assert_eq!(
            parse("TcpExt: 1 2\nTcpExt: 3 4\n").unwrap_err(),
            ParseError::BadName {
                line: 1,
                section: "TcpExt".into(),
                name: "1".into()
            }
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(
            parse("TcpExt: TW\nTcpExt: 1\nhello world\n").unwrap_err(),
            ParseError::NoSection {
                line: 3,
                text: "hello world".into()
            }
        );
        assert!(matches!(
            parse(": TW\n: 1\n").unwrap_err(),
            ParseError::NoSection { line: 1, .. }
        ));
        assert_eq!(
            parse("TcpExt: TW TWKilled\nTcpExt: 1 x2\n").unwrap_err(),
            ParseError::BadValue {
                line: 2,
                section: "TcpExt".into(),
                name: "TWKilled".into(),
                value: "x2".into()
            }
        );
        assert!(matches!(
            parse("TcpExt: TW\nTcpExt: 1.5\n").unwrap_err(),
            ParseError::BadValue { .. }
        ));
    }
}
