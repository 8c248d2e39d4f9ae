//! The Kubernetes manifests in `deploy/kubernetes/` (issue 12). Their schema is
//! checked by `kubernetes-validate --strict` in `scripts/test`; these tests check
//! what a schema cannot — the rules between fields and files:
//!
//! - one Deployment, Service, PodDisruptionBudget, HorizontalPodAutoscaler
//!   (`autoscaling/v2`), ConfigMap and Secret, all found by the names they refer to;
//! - readiness on `/health`, liveness on `/health/live`, both on the container port
//!   that the ConfigMap's `PORT` names; the `METRICS_ADDR` port is a container port
//!   and the scrape annotation's port;
//! - `terminationGracePeriodSeconds` above the `preStop` delay plus the ConfigMap's
//!   `SHUTDOWN_GRACE_SECS`;
//! - the Deployment's, Service's and PodDisruptionBudget's selectors match the pod
//!   labels; the budget leaves pods to evict at the HPA's minimum;
//! - non-root security context, CPU requests (the HPA's utilisation needs them);
//! - every ConfigMap key is a setting the binary knows (`--help`), and the real binary
//!   started with the ConfigMap's settings becomes ready.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize as _;
use serde_yaml_ng::Value;

use crate::support::{app::wait_healthy, ServerProcess, TestRedis};

/// Every document of every `deploy/kubernetes/*.yaml`, by `kind`.
fn manifests() -> BTreeMap<String, Vec<Value>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            if value.is_null() {
                continue;
            }
            let kind = value["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: a document without kind", path.display()))
                .to_owned();
            by_kind.entry(kind).or_default().push(value);
        }
    }
    by_kind
}

/// The one resource of `kind`.
fn one<'a>(all: &'a BTreeMap<String, Vec<Value>>, kind: &str) -> &'a Value {
    match all.get(kind).map(Vec::as_slice) {
        Some([only]) => only,
        other => panic!(
            "expected exactly one {kind}, found {}",
            other.map_or(0, <[Value]>::len)
        ),
    }
}

fn name(resource: &Value) -> &str {
    resource["metadata"]["name"].as_str().unwrap()
}

/// A YAML mapping of strings (labels, selectors, ConfigMap data) as a map.
fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .unwrap_or_else(|| panic!("not a mapping: {value:?}"))
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => {
                    panic!("{k:?}: ConfigMap values and labels must be strings, got {other:?}")
                }
            };
            (k.as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// Whether every `key: value` of `selector` is among `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The container port number that a probe's `port` (a name or a number) means.
fn probe_port(container: &Value, port: &Value) -> u64 {
    match port {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(port_name) => container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(port_name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {port_name}")),
        other => panic!("bad probe port {other:?}"),
    }
}

/// Seconds a `preStop` hook delays SIGTERM: `exec: sleep N` or `sleep: {seconds: N}`.
fn pre_stop_secs(container: &Value) -> u64 {
    let hook = &container["lifecycle"]["preStop"];
    if let Some(secs) = hook["sleep"]["seconds"].as_u64() {
        return secs;
    }
    let command: Vec<&str> = hook["exec"]["command"]
        .as_sequence()
        .expect("the container needs a preStop delay (exec sleep or sleep.seconds)")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    match command.as_slice() {
        ["sleep", secs] | ["/bin/sleep", secs] => secs.parse().unwrap(),
        other => panic!("preStop should be `sleep N`, got {other:?}"),
    }
}

#[test]
fn manifests_agree_with_each_other_and_the_server() {
    let all = manifests();
    let deployment = one(&all, "Deployment");
    let service = one(&all, "Service");
    let pdb = one(&all, "PodDisruptionBudget");
    let hpa = one(&all, "HorizontalPodAutoscaler");
    let config_map = one(&all, "ConfigMap");
    let secret = one(&all, "Secret");
    let config = string_map(&config_map["data"]);

    let pod = &deployment["spec"]["template"];
    let labels = string_map(&pod["metadata"]["labels"]);
    let containers = pod["spec"]["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1, "one sse-fanout container per pod");
    let container = &containers[0];

    // Selectors.
    assert!(
        selects(
            &string_map(&deployment["spec"]["selector"]["matchLabels"]),
            &labels
        ),
        "the Deployment's selector must match its pod labels {labels:?}"
    );
    assert!(
        selects(&string_map(&service["spec"]["selector"]), &labels),
        "the Service's selector must match the pod labels {labels:?}"
    );
    assert!(
        selects(
            &string_map(&pdb["spec"]["selector"]["matchLabels"]),
            &labels
        ),
        "the PodDisruptionBudget's selector must match the pod labels {labels:?}"
    );

    // Probes on the right paths and port.
    let port: u64 = config["PORT"].parse().unwrap();
    let readiness = &container["readinessProbe"]["httpGet"];
    assert_eq!(
        readiness["path"].as_str(),
        Some("/health"),
        "readiness probe"
    );
    assert_eq!(probe_port(container, &readiness["port"]), port);
    let liveness = &container["livenessProbe"]["httpGet"];
    assert_eq!(
        liveness["path"].as_str(),
        Some("/health/live"),
        "liveness probe: not /health, or a Redis outage would restart every pod"
    );
    assert_eq!(probe_port(container, &liveness["port"]), port);
    let service_target = &service["spec"]["ports"][0]["targetPort"];
    assert_eq!(
        probe_port(container, service_target),
        port,
        "Service targetPort"
    );

    // The private metrics port.
    let metrics_addr: std::net::SocketAddr = config["METRICS_ADDR"].parse().unwrap();
    assert_eq!(
        probe_port(container, &Value::String("metrics".to_owned())),
        u64::from(metrics_addr.port()),
        "container port `metrics` must be METRICS_ADDR's port"
    );
    let annotations = string_map(&pod["metadata"]["annotations"]);
    assert_eq!(
        annotations.get("prometheus.io/port"),
        Some(&metrics_addr.port().to_string())
    );
    assert!(
        !service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["targetPort"].as_str() == Some("metrics")
                || p["targetPort"].as_u64() == Some(u64::from(metrics_addr.port()))),
        "the Service must not expose the metrics port"
    );

    // Shutdown: preStop, then SIGTERM and the drain, all within the grace period.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let drain: u64 = config["SHUTDOWN_GRACE_SECS"].parse().unwrap();
    let pre_stop = pre_stop_secs(container);
    assert!(pre_stop >= 1, "preStop must wait for the endpoint removal");
    assert!(
        grace > pre_stop + drain,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} s + SHUTDOWN_GRACE_SECS {drain} s"
    );

    // Env from the ConfigMap and Secret that exist; SERVER_ID per pod.
    let env_from = container["envFrom"].as_sequence().unwrap();
    let refers = |key: &str, wanted: &str| {
        env_from
            .iter()
            .any(|e| e[key]["name"].as_str() == Some(wanted))
    };
    assert!(
        refers("configMapRef", name(config_map)),
        "envFrom the ConfigMap"
    );
    assert!(refers("secretRef", name(secret)), "envFrom the Secret");
    let server_id = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("SERVER_ID"))
        .expect("SERVER_ID must be set per pod");
    assert_eq!(
        server_id["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.name")
    );
    let secret_data = string_map(&secret["stringData"]);
    assert!(
        secret_data.contains_key("REDIS_URL"),
        "the Secret holds REDIS_URL"
    );
    assert!(
        !config.contains_key("REDIS_URL") && !config.contains_key("PUBLISH_TOKEN"),
        "secrets belong in the Secret, not the ConfigMap"
    );

    // Security and resources.
    let pod_security = &pod["spec"]["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"].as_bool(), Some(true));
    assert_ne!(pod_security["runAsUser"].as_u64(), Some(0));
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    assert!(
        container["resources"]["requests"]["cpu"].is_string(),
        "CPU requests are needed for the HPA's utilisation target"
    );

    // Autoscaling and disruption budget.
    assert_eq!(hpa["apiVersion"].as_str(), Some("autoscaling/v2"));
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"].as_str(), Some("Deployment"));
    assert_eq!(target["name"].as_str(), Some(name(deployment)));
    let min_replicas = hpa["spec"]["minReplicas"].as_u64().unwrap();
    assert!(
        min_replicas >= 2,
        "at least two pods, so clients have somewhere to resume"
    );
    if let Some(min_available) = pdb["spec"]["minAvailable"].as_u64() {
        assert!(
            min_available < min_replicas,
            "minAvailable {min_available} would block every drain at {min_replicas} pods"
        );
    } else {
        assert!(pdb["spec"]["maxUnavailable"].as_u64().unwrap() >= 1);
    }
    let max_unavailable = &deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"];
    assert_eq!(
        max_unavailable.as_u64(),
        Some(0),
        "rolling updates keep every pod until its replacement is ready"
    );

    // Every ConfigMap key is a setting the binary knows.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_sse-fanout"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for key in config.keys() {
        assert!(
            key == "RUST_LOG" || help.contains(&format!("[env: {key}")),
            "ConfigMap key {key} is not a setting of sse-fanout (--help)"
        );
    }
}

/// The binary accepts the ConfigMap's settings as they are (only the addresses are
/// moved to loopback and free ports) and becomes ready on a real Redis.
#[tokio::test]
async fn the_config_map_settings_start_a_ready_server() {
    let all = manifests();
    let config = string_map(&one(&all, "ConfigMap")["data"]);
    let redis = TestRedis::start();
    let url = redis.url();
    let mut env: Vec<(&str, &str)> = config
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "HOST" | "PORT" | "METRICS_ADDR"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.extend([("METRICS_ADDR", "127.0.0.1:0"), ("REDIS_URL", url.as_str())]);
    let empty = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn_in(empty.path(), &env).await;
    wait_healthy(&server.base()).await;
    let page = reqwest::get(server.base()).await.unwrap();
    assert_eq!(page.status(), 200, "the embedded page in the pod's image");
}
