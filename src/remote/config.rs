//! Where the S3 endpoint is and who we are to it, read the way AWS tools read it: the
//! `AWS_*` environment first, then the profile (`AWS_PROFILE`, else `default`) in
//! `~/.aws/credentials` and `~/.aws/config` (static keys, region, `endpoint_url`). What is
//! not found here is left to object_store's own chain (web identity, ECS/EKS, EC2 metadata).
use std::path::{Path, PathBuf};

/// What was resolved. `Debug` hides the secrets.
#[derive(Clone, Default, PartialEq)]
pub struct Settings {
    pub region: String,
    /// An explicit endpoint (MinIO, Ceph, R2…); none: AWS itself.
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Which profile the keys came from, for messages (none: the environment or nothing).
    pub profile: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Plain http is allowed only for an endpoint given explicitly as `http://…`.
    pub fn allow_http(&self) -> bool {
        self.endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
    }

    /// The values that must never reach output: the secret key, the session token, and
    /// (to be safe) the key id.
    pub fn secrets(&self) -> Vec<String> {
        [
            &self.secret_access_key,
            &self.session_token,
            &self.access_key_id,
        ]
        .into_iter()
        .flatten()
        .filter(|s| s.len() >= 4)
        .cloned()
        .collect()
    }
}

/// Reads the environment and the profile files of this process.
pub fn from_environment() -> Settings {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    resolve(
        &|k| std::env::var(k).ok().filter(|v| !v.is_empty()),
        home.as_deref(),
    )
}

/// The settings from `env` (a lookup) and the profile files under `home`.
pub fn resolve(env: &dyn Fn(&str) -> Option<String>, home: Option<&Path>) -> Settings {
    let profile_name = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let aws_dir = home.map(|h| h.join(".aws"));
    let file = |var: &str, name: &str| {
        env(var)
            .map(PathBuf::from)
            .or(aws_dir.as_ref().map(|d| d.join(name)))
    };
    let creds =
        file("AWS_SHARED_CREDENTIALS_FILE", "credentials").and_then(|p| section(&p, &profile_name));
    let config_section = if profile_name == "default" {
        "default".to_string()
    } else {
        format!("profile {profile_name}")
    };
    let config = file("AWS_CONFIG_FILE", "config").and_then(|p| section(&p, &config_section));
    let from_profile = |key: &str| {
        creds
            .as_ref()
            .and_then(|c| c.get(key))
            .or_else(|| config.as_ref().and_then(|c| c.get(key)))
            .cloned()
    };
    let mut s = Settings {
        region: env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| from_profile("region"))
            .unwrap_or_else(|| "us-east-1".into()),
        endpoint: env("AWS_ENDPOINT_URL_S3")
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| from_profile("endpoint_url")),
        ..Settings::default()
    };
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        s.access_key_id = Some(id);
        s.secret_access_key = Some(secret);
        s.session_token = env("AWS_SESSION_TOKEN");
    } else if let (Some(id), Some(secret)) = (
        from_profile("aws_access_key_id"),
        from_profile("aws_secret_access_key"),
    ) {
        s.access_key_id = Some(id);
        s.secret_access_key = Some(secret);
        s.session_token = from_profile("aws_session_token");
        s.profile = Some(profile_name);
    }
    s
}

/// One section of an INI file (`[name]`) as key → value; none when the file or section
/// is missing or unreadable.
fn section(path: &Path, name: &str) -> Option<std::collections::HashMap<String, String>> {
    let ini = ini::Ini::load_from_file(path).ok()?;
    let sec = ini.section(Some(name))?;
    Some(
        sec.iter()
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn home_with(credentials: &str, config: &str) -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(home.path().join(".aws/credentials"), credentials).unwrap();
        std::fs::write(home.path().join(".aws/config"), config).unwrap();
        home
    }

    #[test]
    fn the_environment_wins_over_the_profile() {
        let home = home_with(
            "[default]\naws_access_key_id = P\naws_secret_access_key = PS\n",
            "",
        );
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "E"),
            ("AWS_SECRET_ACCESS_KEY", "ES"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9001"),
            ("AWS_DEFAULT_REGION", "eu-west-3"),
        ]);
        let s = resolve(&env, Some(home.path()));
        assert_eq!(s.access_key_id.as_deref(), Some("E"));
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9001"));
        assert_eq!(s.region, "eu-west-3");
        assert!(s.allow_http());
        assert_eq!(s.profile, None);
    }

    #[test]
    fn a_named_profile_gives_keys_region_and_endpoint() {
        let home = home_with(
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n[site]\naws_access_key_id = S\naws_secret_access_key = SS\n",
            "[profile site]\nregion = ca-central-1\nendpoint_url = https://s3.example.net\n",
        );
        let s = resolve(&env_of(&[("AWS_PROFILE", "site")]), Some(home.path()));
        assert_eq!(s.access_key_id.as_deref(), Some("S"));
        assert_eq!(s.secret_access_key.as_deref(), Some("SS"));
        assert_eq!(s.region, "ca-central-1");
        assert_eq!(s.endpoint.as_deref(), Some("https://s3.example.net"));
        assert!(!s.allow_http());
        assert_eq!(s.profile.as_deref(), Some("site"));
        let d = resolve(&env_of(&[]), Some(home.path()));
        assert_eq!(
            (d.access_key_id.as_deref(), d.region.as_str()),
            (Some("D"), "us-east-1")
        );
        assert!(!format!("{d:?}").contains("DS"), "Debug shows no secret");
    }
}
