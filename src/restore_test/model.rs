//! The throw-away copy's compose model, made from the archived one (`docker compose config
//! --format json` of the archived files): pure, so every rule is a unit test. Everything that
//! could collide with or reach the live project is removed or pointed at scratch copies.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value};

/// What becomes of a bind the backup did not archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindFate {
    /// Mounted from this scratch path (an archived bind restored there, or a scratch copy).
    Scratch(PathBuf),
    /// Kept as it is: read-only, a plain file or folder (`/etc/localtime:ro`).
    Keep,
    /// Left out: a socket, a device, or something that is not there.
    Drop,
}

/// The image a service of the copy runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// The image ID the backup recorded, still on this engine: never pulled.
    Id(String),
    /// A reference (the recorded one, whose ID is gone; or a built service's image).
    Ref(String),
}

/// How the live project maps onto the copy.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    /// `<project>-restoretest-<id>`.
    pub project: String,
    /// Per compose volume key: the scratch volume it is (archived ones are filled before).
    pub volumes: BTreeMap<String, String>,
    /// Per bind source (absolute, as compose resolved it).
    pub binds: BTreeMap<PathBuf, BindFate>,
    pub images: BTreeMap<String, Image>,
}

/// Every bind source of the model, with whether each mount of it is read-only.
pub fn bind_sources(model: &Value) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    for svc in model["services"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
    {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            if v["type"] == "bind" {
                if let Some(s) = v["source"].as_str() {
                    out.push((PathBuf::from(s), v["read_only"].as_bool().unwrap_or(false)));
                }
            }
        }
    }
    out
}

/// The volume name a key gets in the copy.
pub fn scratch_volume(project: &str, key: &str) -> String {
    format!("{project}_{key}")
}

/// The copy's model, and a line for each thing removed or remapped (for the operator).
pub fn throwaway(model: &Value, m: &Mapping) -> (Value, Vec<String>) {
    let mut out = model.clone();
    let mut said = Vec::new();
    out["name"] = m.project.clone().into();
    let external = networks(&mut out, &mut said);
    if let Some(vols) = out.get_mut("volumes").and_then(Value::as_object_mut) {
        for (key, v) in vols.iter_mut() {
            let name = m
                .volumes
                .get(key)
                .cloned()
                .unwrap_or_else(|| scratch_volume(&m.project, key));
            if v["external"].as_bool().unwrap_or(false) {
                said.push(format!(
                    "volume {key}: external, a scratch volume stands in"
                ));
            }
            *v = serde_json::json!({ "name": name });
        }
    }
    if let Some(services) = out.get_mut("services").and_then(Value::as_object_mut) {
        for (name, svc) in services.iter_mut() {
            if let Some(s) = svc.as_object_mut() {
                service(name, s, m, &external, &mut said);
            }
        }
    }
    (out, said)
}

/// Drops external networks (returned) and the fixed names of the others.
fn networks(out: &mut Value, said: &mut Vec<String>) -> Vec<String> {
    let mut external = Vec::new();
    if let Some(nets) = out.get_mut("networks").and_then(Value::as_object_mut) {
        for (key, n) in nets.iter() {
            if n["external"].as_bool().unwrap_or(false) {
                external.push(key.clone());
            }
        }
        for key in &external {
            nets.remove(key);
            said.push(format!("network {key}: external, left out"));
        }
        for n in nets.values_mut().filter_map(Value::as_object_mut) {
            n.remove("name");
        }
    }
    external
}

/// Keys of a service that bind it to the host or to other projects.
const HOST_BOUND: &[&str] = &[
    "container_name",
    "ports",
    "devices",
    "external_links",
    "mac_address",
];

fn service(
    name: &str,
    s: &mut Map<String, Value>,
    m: &Mapping,
    external: &[String],
    said: &mut Vec<String>,
) {
    for key in HOST_BOUND {
        if s.remove(*key).is_some() {
            said.push(format!("service {name}: {key} left out"));
        }
    }
    for key in ["pid", "ipc"] {
        if s.get(key).and_then(Value::as_str) == Some("host") {
            s.remove(key);
            said.push(format!("service {name}: {key}: host left out"));
        }
    }
    let mode = s.get("network_mode").and_then(Value::as_str).unwrap_or("");
    if mode == "host" || mode.starts_with("container:") {
        said.push(format!("service {name}: network_mode {mode} left out"));
        s.remove("network_mode");
    }
    if let Some(nets) = s.get_mut("networks").and_then(Value::as_object_mut) {
        nets.retain(|k, _| !external.iter().any(|e| e == k));
    }
    s.remove("build");
    match m.images.get(name) {
        Some(Image::Id(id)) => {
            s.insert("image".into(), id.clone().into());
            s.insert("pull_policy".into(), "never".into());
        }
        Some(Image::Ref(r)) => {
            s.insert("image".into(), r.clone().into());
        }
        None => {}
    }
    if let Some(vols) = s.get_mut("volumes").and_then(Value::as_array_mut) {
        vols.retain_mut(|v| bind(name, v, m, said));
    }
}

/// Points a bind mount at its scratch copy; false when it is left out.
fn bind(service: &str, v: &mut Value, m: &Mapping, said: &mut Vec<String>) -> bool {
    if v["type"] != "bind" {
        return true;
    }
    let source = PathBuf::from(v["source"].as_str().unwrap_or_default());
    match m.binds.get(&source).unwrap_or(&BindFate::Drop) {
        BindFate::Scratch(p) => {
            v["source"] = p.display().to_string().into();
            // Compose must not make a missing one on the host: it is made beside the rest.
            if let Some(b) = v.get_mut("bind").and_then(Value::as_object_mut) {
                b.remove("create_host_path");
            }
            true
        }
        BindFate::Keep => true,
        BindFate::Drop => {
            said.push(format!(
                "service {service}: bind {} left out",
                source.display()
            ));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: &str = r#"{
      "name": "shop",
      "services": {
        "db": {
          "image": "postgres:16", "container_name": "shop-db", "restart": "always",
          "ports": [{"target": 5432, "published": "5432", "protocol": "tcp"}],
          "networks": {"default": null, "shared": null},
          "volumes": [
            {"type": "volume", "source": "pgdata", "target": "/var/lib/postgresql/data"},
            {"type": "bind", "source": "/srv/shop/dumps", "target": "/dumps", "bind": {"create_host_path": true}},
            {"type": "bind", "source": "/etc/localtime", "target": "/etc/localtime", "read_only": true},
            {"type": "bind", "source": "/var/run/docker.sock", "target": "/var/run/docker.sock"}
          ]
        },
        "web": {"build": {"context": "."}, "network_mode": "host", "pid": "host", "devices": ["/dev/fuse"]}
      },
      "networks": {"default": {"name": "shop_default"}, "shared": {"name": "proxy", "external": true}},
      "volumes": {"pgdata": {"name": "shop_pgdata", "driver": "local"}, "cache": {"name": "shared-cache", "external": true}}
    }"#;

    fn mapping() -> Mapping {
        Mapping {
            project: "shop-restoretest-7".into(),
            volumes: [(
                "pgdata".to_string(),
                "shop-restoretest-7_pgdata".to_string(),
            )]
            .into(),
            binds: [
                (
                    PathBuf::from("/srv/shop/dumps"),
                    BindFate::Scratch("/scratch/binds/0".into()),
                ),
                (PathBuf::from("/etc/localtime"), BindFate::Keep),
                (PathBuf::from("/var/run/docker.sock"), BindFate::Drop),
            ]
            .into(),
            images: [
                ("db".to_string(), Image::Id("sha256:abc".into())),
                ("web".to_string(), Image::Ref("shop-web".into())),
            ]
            .into(),
        }
    }

    #[test]
    fn nothing_of_the_copy_can_collide_with_or_reach_the_live_project() {
        let live: Value = serde_json::from_str(LIVE).unwrap();
        let (copy, said) = throwaway(&live, &mapping());
        assert_eq!(copy["name"], "shop-restoretest-7");
        let db = &copy["services"]["db"];
        assert!(db.get("container_name").is_none() && db.get("ports").is_none());
        assert_eq!(db["image"], "sha256:abc");
        assert_eq!(db["pull_policy"], "never");
        assert_eq!(db["networks"], serde_json::json!({"default": null}));
        let sources: Vec<&str> = db["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["source"].as_str().unwrap())
            .collect();
        assert_eq!(sources, ["pgdata", "/scratch/binds/0", "/etc/localtime"]);
        assert!(db["volumes"][1]["bind"].get("create_host_path").is_none());
        let web = &copy["services"]["web"];
        assert!(web.get("build").is_none() && web.get("network_mode").is_none());
        assert!(web.get("pid").is_none() && web.get("devices").is_none());
        assert_eq!(web["image"], "shop-web");
        assert_eq!(copy["networks"], serde_json::json!({"default": {}}));
        assert_eq!(
            copy["volumes"],
            serde_json::json!({
                "pgdata": {"name": "shop-restoretest-7_pgdata"},
                "cache": {"name": "shop-restoretest-7_cache"}
            })
        );
        for line in [
            "service db: container_name left out",
            "service db: ports left out",
            "service db: bind /var/run/docker.sock left out",
            "network shared: external, left out",
            "volume cache: external, a scratch volume stands in",
            "service web: network_mode host left out",
        ] {
            assert!(said.iter().any(|s| s == line), "{line}: {said:?}");
        }
    }

    #[test]
    fn bind_sources_are_listed_with_their_read_only_flag() {
        let live: Value = serde_json::from_str(LIVE).unwrap();
        let got = bind_sources(&live);
        assert!(got.contains(&(PathBuf::from("/etc/localtime"), true)));
        assert!(got.contains(&(PathBuf::from("/srv/shop/dumps"), false)));
        assert_eq!(got.len(), 3);
    }
}
