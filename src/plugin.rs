//! Docker's CLI-plugin metadata: the checked-in JSON in plugin-metadata/ is the source of truth.

/// The metadata exactly as checked in (`plugin-metadata/metadata.json`).
pub const METADATA_JSON: &str = include_str!("../plugin-metadata/metadata.json");

/// The one-line JSON object printed for `docker-cli-plugin-metadata`. Pure: no daemon contact.
pub fn metadata_line() -> String {
    let value: serde_json::Value =
        serde_json::from_str(METADATA_JSON).expect("plugin-metadata/metadata.json is valid JSON");
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_has_what_docker_requires() {
        let v: serde_json::Value = serde_json::from_str(&metadata_line()).unwrap();
        assert_eq!(v["SchemaVersion"], "0.1.0");
        assert!(!v["Vendor"].as_str().unwrap().is_empty());
        assert!(!v["ShortDescription"].as_str().unwrap().is_empty());
    }

    #[test]
    fn metadata_version_is_the_crate_version() {
        let v: serde_json::Value = serde_json::from_str(METADATA_JSON).unwrap();
        assert_eq!(
            v["Version"],
            env!("CARGO_PKG_VERSION"),
            "bump plugin-metadata/metadata.json"
        );
    }
}
