//! Checks of the packaging files that need no install: the Grafana dashboard, the Prometheus
//! rules (with the real `promtool`) and the DaemonSet manifest use only the metrics, labels and
//! values of [`super::metrics`], cover what issue 13 asks of them, and agree with the systemd
//! unit on capabilities and port.

use std::{collections::BTreeSet, fs, path::Path};

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

use super::{
    layout::UNIT_SOURCE,
    metrics::{metric_of, names_in, ALERT_KINDS, METRICS, TARGET_LABELS},
    unit::Unit,
};
use crate::util::{command, which, workspace_root};

const DASHBOARD: &str = "packaging/grafana/netwatch.json";
const RULES: &str = "packaging/prometheus/netwatch-rules.yml";
const RULES_TEST: &str = "packaging/prometheus/netwatch-rules.test.yml";
const DAEMONSET: &str = "packaging/kubernetes/daemonset.yaml";

fn read(path: &str) -> String {
    let path = workspace_root().join(path);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn unit() -> Unit {
    Unit::parse(&read(UNIT_SOURCE)).unwrap()
}

/// Label names a PromQL expression uses: in matchers `{name="v"}` and in `by (...)`,
/// `without (...)`, `on (...)`, `ignoring (...)`.
fn labels_in(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut in_quotes = false;
    let mut depth = 0;
    let mut current = String::new();
    for c in expr.chars() {
        match c {
            '"' if depth > 0 => in_quotes = !in_quotes,
            '{' if !in_quotes => depth += 1,
            '}' | ',' if !in_quotes && depth > 0 => {
                let name = current.split(['=', '!']).next().unwrap_or("").trim();
                if !name.is_empty() {
                    labels.insert(name.to_string());
                }
                current.clear();
                if c == '}' {
                    depth -= 1;
                }
            }
            _ if depth > 0 && !in_quotes => current.push(c),
            _ => {}
        }
    }
    for keyword in ["by", "without", "on", "ignoring"] {
        let mut rest = expr;
        while let Some(at) = rest.find(keyword) {
            let before = rest[..at].chars().next_back();
            let after = rest[at + keyword.len()..].trim_start();
            rest = &rest[at + keyword.len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(list) = after.strip_prefix('(').and_then(|l| l.split(')').next()) {
                labels.extend(
                    list.split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                );
            }
        }
    }
    labels
}

/// `name="value"` matchers of an expression, for one label.
fn values_of<'a>(expr: &'a str, label: &str) -> Vec<&'a str> {
    let mut values = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find(label) {
        let after = &rest[at + label.len()..];
        rest = after;
        let Some(quoted) = after
            .strip_prefix("=~\"")
            .or_else(|| after.strip_prefix("=\""))
        else {
            continue;
        };
        let end = quoted.find('"').unwrap_or(quoted.len());
        values.extend(quoted[..end].split('|'));
    }
    values
}

/// Every metric, label and label value `expr` uses must be one netwatch exposes.
fn check_expr(expr: &str, whence: &str) {
    let names = names_in(expr);
    assert!(
        !names.is_empty(),
        "{whence}: uses no netwatch metric: {expr}"
    );
    let mut known_labels: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    for name in names {
        let metric = metric_of(name).unwrap_or_else(|| {
            panic!("{whence}: {name} is not among the metrics netwatch exposes: {expr}")
        });
        known_labels.extend(metric.labels);
    }
    for label in labels_in(expr) {
        assert!(
            known_labels.contains(label.as_str()),
            "{whence}: label {label:?} is not one of its metrics' ({known_labels:?}): {expr}"
        );
    }
    for state in values_of(expr, "state") {
        assert!(
            netwatch_common::state::from_name(state).is_some(),
            "{whence}: {state:?} is no TCP state: {expr}"
        );
    }
    for kind in values_of(expr, "kind") {
        assert!(
            ALERT_KINDS.contains(&kind),
            "{whence}: {kind:?} is no alert kind netwatch has: {expr}"
        );
    }
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is not JSON")
}

/// The dashboard's queries, with the title of the panel each is in.
fn dashboard_queries(dash: &Json) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dash["panels"]
        .as_array()
        .expect("the dashboard has no panels")
    {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target without expr");
            let title = panel["title"].as_str().unwrap_or("?");
            queries.push((format!("panel {title:?}"), expr.to_string()));
        }
    }
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(query) = var["definition"].as_str() {
            queries.push((format!("variable {}", var["name"]), query.to_string()));
        }
    }
    queries
}

#[test]
fn dashboard_queries_only_what_netwatch_exposes() {
    for (whence, expr) in dashboard_queries(&dashboard()) {
        check_expr(&expr, &whence);
    }
}

#[test]
fn dashboard_shows_what_the_issue_asks() {
    let queries: Vec<String> = dashboard_queries(&dashboard())
        .into_iter()
        .map(|(_, q)| q)
        .collect();
    let any = |pred: &dyn Fn(&str) -> bool| queries.iter().any(|q| pred(q));
    for state in ["TIME_WAIT", "FIN_WAIT2", "SYN_RECV"] {
        assert!(
            any(&|q| q.contains("histogram_quantile")
                && q.contains("netwatch_tcp_state_dwell_seconds_bucket")
                && q.contains(&format!("state=\"{state}\""))),
            "no {state} dwell quantile on the dashboard"
        );
    }
    assert!(any(&|q| q.contains("netwatch_tcp_sockets")
        && labels_in(q).contains("netns")
        && labels_in(q).contains("container")));
    assert!(any(
        &|q| q.contains("netwatch_alerts_total") && labels_in(q).contains("kind")
    ));
    // Every metric has a panel: the dashboard is where each is read.
    for metric in METRICS {
        assert!(
            any(&|q| names_in(q)
                .iter()
                .any(|n| metric_of(n).is_some_and(|m| m.name == metric.name))),
            "no panel shows {}",
            metric.name
        );
    }
}

#[test]
fn dashboard_panels_are_well_formed() {
    let dash = dashboard();
    let panels = dash["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids missing or repeated");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = &panel["title"];
        assert!(panel["gridPos"]["w"].as_u64().is_some_and(|w| w <= 24));
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        assert!(
            panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "{title}"
        );
        assert!(panel["description"].as_str().is_some_and(|d| !d.is_empty()));
    }
}

fn rules() -> Vec<Yaml> {
    let doc: Yaml = serde_yaml_ng::from_str(&read(RULES)).expect("the rules are not YAML");
    doc["groups"]
        .as_sequence()
        .expect("the rules have no groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn rules_query_only_what_netwatch_exposes_and_say_what_to_do() {
    for rule in rules() {
        let name = rule["alert"].as_str().expect("a rule without alert:");
        let expr = rule["expr"].as_str().expect("a rule without expr:");
        check_expr(expr, &format!("rule {name}"));
        let severity = rule["labels"]["severity"].as_str().unwrap_or("");
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "rule {name}: severity {severity:?}"
        );
        for annotation in ["summary", "description"] {
            assert!(
                rule["annotations"][annotation]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "rule {name} has no {annotation}"
            );
        }
    }
}

#[test]
fn rules_cover_every_incident_of_the_context_documents() {
    let rules = rules();
    let exprs: Vec<&str> = rules.iter().filter_map(|r| r["expr"].as_str()).collect();
    for kind in ALERT_KINDS {
        assert!(
            exprs.iter().any(|e| values_of(e, "kind").contains(kind)),
            "no rule alerts on kind {kind}"
        );
    }
    for (state, what) in [
        ("TIME_WAIT", "TIME_WAIT pile-up"),
        ("FIN_WAIT2", "FIN_WAIT2 accumulation"),
        ("CLOSE_WAIT", "CLOSE_WAIT accumulation"),
        ("SYN_RECV", "SYN_RECV stuck"),
    ] {
        assert!(
            exprs.iter().any(|e| values_of(e, "state").contains(&state)),
            "no rule for {what}"
        );
    }
    for own in [
        "netwatch_records_lost_total",
        "netwatch_conntrack_entries",
        "netwatch_conntrack_max",
    ] {
        assert!(exprs.iter().any(|e| names_in(e).contains(&own)), "{own}");
    }
}

/// Under CI a missing tool fails the test; elsewhere it is a skip said on stderr.
fn tool(name: &str, package: &str) -> Option<std::path::PathBuf> {
    let found = which(name);
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        assert!(
            !ci,
            "{name} is missing (Debian package {package}; `cargo xtask setup` installs it)"
        );
        eprintln!("skipping: {name} is missing (install {package}: `cargo xtask setup`)");
    }
    found
}

#[test]
fn promtool_accepts_the_rules() {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let out = command(promtool)
        .args(["check", "rules"])
        .arg(workspace_root().join(RULES))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each rule fires on the series of its incident, and not on a quiet host (promtool's own
/// rule unit tests; each expected alert's description is taken from the rules file).
#[test]
fn promtool_fires_each_alert_on_its_incident() {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let descriptions: Vec<(String, Yaml)> = rules()
        .iter()
        .map(|r| {
            let name = r["alert"].as_str().unwrap_or("").to_string();
            (name, r["annotations"]["description"].clone())
        })
        .collect();
    let mut tests: Yaml = serde_yaml_ng::from_str(&read(RULES_TEST)).unwrap();
    let mut expected = 0;
    for test in tests["tests"].as_sequence_mut().unwrap() {
        for case in test["alert_rule_test"].as_sequence_mut().unwrap() {
            let name = case["alertname"].as_str().unwrap_or("").to_string();
            let (_, description) = descriptions
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("{RULES_TEST} tests {name}, which has no rule"));
            for alert in case["exp_alerts"].as_sequence_mut().unwrap() {
                alert["exp_annotations"]["description"] = description.clone();
                expected += 1;
            }
        }
    }
    assert!(
        expected >= 6,
        "the rule tests expect only {expected} alerts"
    );
    let dir = std::env::temp_dir().join(format!("netwatch-rules-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    fs::copy(workspace_root().join(RULES), dir.join("netwatch-rules.yml")).unwrap();
    let file = dir.join("netwatch-rules.test.yml");
    fs::write(&file, serde_yaml_ng::to_string(&tests).unwrap()).unwrap();
    let out = command(promtool)
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn daemonset() -> Yaml {
    read(DAEMONSET)
        .split("\n---\n")
        .map(|doc| serde_yaml_ng::from_str::<Yaml>(doc).expect("the manifest is not YAML"))
        .find(|doc| doc["kind"] == "DaemonSet")
        .expect("the manifest has no DaemonSet")
}

#[test]
fn daemonset_runs_serve_on_every_node_as_the_unit_does() {
    let ds = daemonset();
    let unit = unit();
    assert_eq!(ds["apiVersion"], "apps/v1");
    let pod = &ds["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["hostPID"], true);
    assert!(spec["tolerations"][0]["operator"] == "Exists");
    let selector = &ds["spec"]["selector"]["matchLabels"];
    for (key, value) in selector.as_mapping().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][key], value, "selector {key:?}");
    }
    let container = &spec["containers"][0];

    // The same capabilities as the unit, nothing more.
    let security = &container["securityContext"];
    let added: Vec<String> = security["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().unwrap()))
        .collect();
    assert_eq!(added, unit.ambient);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);

    // The unit's port, announced to Prometheus.
    let port = unit
        .exec_start
        .iter()
        .skip_while(|w| *w != "--listen")
        .nth(1)
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap();
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(args[..2], ["serve", "--listen"]);
    assert!(args[2].ends_with(&format!(":{port}")), "{args:?}");
    assert_eq!(container["ports"][0]["containerPort"].as_u64(), Some(port));
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string().as_str());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"], "/healthz", "{probe}");
    }
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !container["resources"][kind][resource].is_null(),
                "no {kind}.{resource}"
            );
        }
    }

    // What netwatch reads on the host, each mounted.
    let volumes = spec["volumes"].as_sequence().unwrap();
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    for path in [
        "/sys/kernel/btf",
        "/sys/fs/bpf",
        "/sys/fs/cgroup",
        "/run/netns",
    ] {
        let volume = volumes
            .iter()
            .find(|v| v["hostPath"]["path"] == path)
            .unwrap_or_else(|| panic!("no hostPath volume {path}"));
        assert!(
            mounts
                .iter()
                .any(|m| m["name"] == volume["name"] && m["mountPath"] == path),
            "{path} is not mounted at the same place"
        );
    }
}

#[test]
fn the_checks_catch_what_they_are_for() {
    assert_eq!(
        labels_in(r#"sum by (state, netns) (x{state=~"A|B",kind!="c"}) and on (instance) y"#),
        ["instance", "kind", "netns", "state"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        values_of(r#"x{state=~"TIME_WAIT|FIN_WAIT2"}"#, "state"),
        ["TIME_WAIT", "FIN_WAIT2"]
    );
    let bad = std::panic::catch_unwind(|| check_expr("rate(netwatch_tcp_socket[5m])", "t"));
    assert!(bad.is_err());
    let bad_label = std::panic::catch_unwind(|| {
        check_expr("sum by (pid) (netwatch_tcp_sockets)", "t");
    });
    assert!(bad_label.is_err(), "pid is never a label");
    let bad_state = std::panic::catch_unwind(|| {
        check_expr(r#"netwatch_tcp_sockets{state="TIMEWAIT"}"#, "t");
    });
    assert!(bad_state.is_err());
    assert!(Path::new(&workspace_root().join(RULES_TEST)).is_file());
}
