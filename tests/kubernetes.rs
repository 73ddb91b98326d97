//! examples/kubernetes/, checked without a cluster: the manifests parse and agree with each
//! other, the ConfigMap's config passes `check` in every pod, and each pod name gives its shard.

mod common;

use common::*;
use std::path::Path;
use yaml_rust2::{Yaml, YamlLoader};

fn manifest(name: &str) -> Yaml {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{name} is not YAML: {e}")).remove(0)
}

fn s(y: &Yaml) -> &str {
    y.as_str().unwrap_or_else(|| panic!("not a string: {y:?}"))
}

fn list(y: &Yaml) -> &Vec<Yaml> {
    y.as_vec().unwrap_or_else(|| panic!("not a list: {y:?}"))
}

/// The container's environment as the pod would have it: plain values as written, a value
/// from a Secret as a stand-in of the right shape, HOSTNAME the pod's name.
fn pod_env(container: &Yaml, pod: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = list(&container["env"])
        .iter()
        .map(|e| {
            let name = s(&e["name"]).to_string();
            let value = match e["value"].as_str() {
                Some(v) => v.to_string(),
                None => {
                    assert!(!e["valueFrom"]["secretKeyRef"]["name"].is_badvalue(), "{name}: value or secret");
                    "postgres://logger:pw@db.example:5432/twitch".to_string()
                }
            };
            (name, value)
        })
        .collect();
    env.push(("HOSTNAME".into(), pod.into()));
    env
}

#[test]
fn the_statefulset_configmap_and_service_agree_and_every_pod_gets_its_shard() {
    let (sts, cm, svc) = (manifest("statefulset.yaml"), manifest("configmap.yaml"), manifest("service.yaml"));
    assert_eq!((s(&sts["kind"]), s(&cm["kind"]), s(&svc["kind"])), ("StatefulSet", "ConfigMap", "Service"));
    let spec = &sts["spec"];
    let pods = spec["replicas"].as_i64().unwrap();
    assert_eq!(pods, 3);
    let sts_name = s(&sts["metadata"]["name"]);

    // The headless Service is the StatefulSet's, and selects its pods.
    assert_eq!(s(&spec["serviceName"]), s(&svc["metadata"]["name"]));
    assert_eq!(s(&svc["spec"]["clusterIP"]), "None", "headless");
    let labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_hash().unwrap() {
        assert_eq!(&labels[s(k)], v, "the Service selects the pods");
        assert_eq!(&spec["selector"]["matchLabels"][s(k)], v);
    }

    // The config is the ConfigMap's, mounted as a directory (edits reach the pods), read-only.
    let pod = &spec["template"]["spec"];
    let c = &list(&pod["containers"])[0];
    let config_volume =
        list(&pod["volumes"]).iter().find(|v| !v["configMap"].is_badvalue()).expect("a configMap volume");
    assert_eq!(s(&config_volume["configMap"]["name"]), s(&cm["metadata"]["name"]));
    let mount =
        list(&c["volumeMounts"]).iter().find(|m| m["name"] == config_volume["name"]).expect("the config is mounted");
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    assert!(mount["subPath"].is_badvalue(), "a subPath mount never sees an edit");
    let args: Vec<&str> = list(&c["args"]).iter().map(s).collect();
    let config_arg = args.iter().skip_while(|a| **a != "--config").nth(1).expect("--config PATH");
    let file_name = config_arg.strip_prefix(&format!("{}/", s(&mount["mountPath"]))).expect("the file is in the mount");
    let text = s(&cm["data"][file_name]);
    // The spool and tokens are on a volume of each pod's own.
    let claim = &list(&spec["volumeClaimTemplates"])[0];
    let data = list(&c["volumeMounts"]).iter().find(|m| m["name"] == claim["metadata"]["name"]).expect("data mount");
    assert_eq!(s(&data["mountPath"]), "/app/data", "spool_dir and token_dir resolve under WORKDIR /app");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file_name);
    std::fs::write(&path, text).unwrap();
    let port_of = |p: &Yaml| match p.as_i64() {
        Some(n) => n,
        None => {
            list(&c["ports"]).iter().find(|q| q["name"] == *p).expect("a named port")["containerPort"].as_i64().unwrap()
        }
    };
    for ordinal in 0..pods {
        let name = format!("{sts_name}-{ordinal}");
        let env = pod_env(c, &name);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let cfg = twitch_chat_logger::config::load(Some(&path), &get).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(i64::from(cfg.live.cluster.shard.count), pods, "cluster.shards = the StatefulSet's replicas");
        assert_eq!(i64::from(cfg.live.cluster.shard.index), ordinal + 1, "{name}");

        // Probes: the paths the logger serves, on the port it listens on in that pod.
        let listen = cfg.startup.http.listen.expect("the listener is on");
        assert!(listen.ip().is_unspecified(), "the kubelet probes the pod IP, not loopback: {listen}");
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            assert_eq!(s(&c[probe]["httpGet"]["path"]), path, "{probe}");
            assert_eq!(port_of(&c[probe]["httpGet"]["port"]), i64::from(listen.port()), "{probe}");
        }
        assert_eq!(port_of(&svc["spec"]["ports"][0]["targetPort"]), i64::from(listen.port()));
        let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
        assert!(grace as u64 > cfg.live.batch.shutdown_timeout.as_secs(), "SIGKILL would cut the shutdown flush");

        // `check` in that pod: valid, and it names the shard.
        let mut cmd = logger_cmd(dir.path());
        cmd.env_remove("HTTP_LISTEN").envs(env.iter().cloned()).arg("--config").arg(&path).arg("check");
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {}{stdout}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("shard = \"{}/{pods}\"  # from HOSTNAME", ordinal + 1)), "{stdout}");
        assert!(stdout.contains(&format!("# shard {}/{pods}, replicas ", ordinal + 1)), "{stdout}");
    }
    // The file's own listen agrees with the variable the pod sets, whichever wins.
    let file_listen = text.lines().find_map(|l| l.trim().strip_prefix("listen = \"")).expect("[http] listen");
    assert!(file_listen.starts_with("0.0.0.0:8080\""), "{file_listen}");

    // One pod too many (replicas raised, shards not): it refuses to start, saying why.
    let env = pod_env(c, &format!("{sts_name}-{pods}"));
    let mut cmd = logger_cmd(dir.path());
    cmd.env_remove("HTTP_LISTEN").envs(env).arg("--config").arg(&path).arg("check");
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("environment variable HOSTNAME: `logger-3` is pod ordinal 3"), "{stderr}");
}
